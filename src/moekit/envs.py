"""Every environment variable moekit reads, declared once: name, type, default, one line of docs.

Read values with :func:`get` (it reads ``os.environ`` at call time, so tests can monkeypatch). A value
that does not parse raises :class:`EnvError` naming the variable, what was expected and what was found.
An unset or empty variable means its default. ``MOEKIT_*`` variables that are not declared here draw one
warning (a typo such as ``MOEKIT_BACKNED`` would otherwise be ignored silently).

The README table is :func:`markdown_table`; ``python -m moekit.envs`` prints it.

Logging: moekit logs through the logger named ``"moekit"`` (:func:`get_logger`), at the level from
``MOEKIT_LOG_LEVEL``. :func:`warn_once` logs a warning once per key and process: use it when an optional
dependency is missing and moekit falls back.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import Any, List, Optional, Tuple

from moekit.errors import MoEInputError

__all__ = [
    "EnvError", "EnvVar", "registry", "get", "is_set", "markdown_table", "get_logger", "log_level",
    "warn_once", "optional_import",
]


class EnvError(MoEInputError):
    """An environment variable moekit reads holds a value it cannot use."""


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _parse_bool(name: str, raw: str, choices) -> bool:
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise EnvError(f"{name}: expected a boolean (one of {', '.join(_TRUE + _FALSE)}), got {raw!r}")


def _parse_choice(name: str, raw: str, choices) -> str:
    v = raw.strip().lower()
    if v not in choices:
        raise EnvError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return v


def _parse_int(name: str, raw: str, choices) -> int:
    """An integer; ``choices`` (lo, hi), when given, bounds it (inclusive)."""
    try:
        v = int(raw.strip(), 0)
    except ValueError:
        raise EnvError(f"{name}: expected an integer, got {raw!r}") from None
    if choices and not choices[0] <= v <= choices[1]:
        raise EnvError(f"{name}: expected an integer in [{choices[0]}, {choices[1]}], got {raw!r}")
    return v


def _parse_dir(name: str, raw: str, choices) -> Path:
    p = Path(raw.strip()).expanduser()
    if p.exists() and not p.is_dir():
        raise EnvError(f"{name}: expected a directory, got {raw!r} (exists and is not a directory)")
    return p


def _parse_level(name: str, raw: str, choices) -> str:
    v = raw.strip().upper()
    if v == "WARN":
        v = "WARNING"
    if v not in _LEVELS:
        raise EnvError(f"{name}: expected a log level (one of {', '.join(_LEVELS)}), got {raw!r}")
    return v


_PARSERS: dict = {
    "bool": _parse_bool,
    "choice": _parse_choice,
    "int": _parse_int,
    "dir": _parse_dir,
    "loglevel": _parse_level,
}


@dataclasses.dataclass(frozen=True)
class EnvVar:
    name: str
    type: str  # a key of _PARSERS
    default: Any
    doc: str
    choices: Tuple[Any, ...] = ()  # choice: the allowed values; int: (lo, hi)

    def __post_init__(self) -> None:
        if self.type not in _PARSERS:
            raise MoEInputError(f"EnvVar.type: expected one of {sorted(_PARSERS)}, got {self.type!r}")

    def parse(self, raw: Optional[str]) -> Any:
        if raw is None or raw.strip() == "":
            return self.default
        return _PARSERS[self.type](self.name, raw, self.choices)

    @property
    def type_label(self) -> str:
        if self.type == "choice":
            return " \\| ".join(self.choices)
        return {"bool": "bool (0/1)", "dir": "path", "loglevel": "log level"}.get(self.type, self.type)


#: The registry. Add a variable here and nowhere else; then regenerate the README table.
registry: List[EnvVar] = [
    EnvVar(
        "MOEKIT_BACKEND", "choice", "auto",
        "Backend for MoE layers: `auto` picks the fastest one that supports the device and quantization "
        "scheme; a name forces that backend and fails with the reason when it cannot run.",
        choices=("auto", "triton", "torch", "vllm"),
    ),
    EnvVar(
        "MOEKIT_CONFIG_DIR", "dir", None,
        "Directory of tuned kernel-config JSON files, searched before the configs bundled with moekit.",
    ),
    EnvVar(
        "MOEKIT_LOG_LEVEL", "loglevel", "WARNING",
        "Level of the `moekit` logger (DEBUG, INFO, WARNING, ERROR, CRITICAL).",
    ),
    EnvVar(
        "MOEKIT_VALIDATE", "bool", False,
        "Check values too (NaN/inf router logits, expert ids out of range); costs a host sync per call.",
    ),
    EnvVar(
        "MOEKIT_TEST_SEED", "int", None,
        "Seed for `moekit.testing.seeded_generator` (replay a failing randomized test); unset: a fresh seed. "
        "0 to 2**63 - 1.", (0, 2 ** 63 - 1),
    ),
    EnvVar(
        "MOEKIT_DECODE_GEMV", "bool", True,
        "0 keeps the Triton backend's grouped GEMMs at the smallest decode batches instead of its GEMV kernels "
        "(tokens x top_k at most experts / 2, below experts / 4 with grouped top-k routing; 16-bit and mxfp4 "
        "weights: at least 16 experts; int4: at most 8 slots: moekit.kernels.moe_gemv.gemv_applies).",
    ),
    EnvVar(
        "MOEKIT_TAIL_TILES", "bool", True,
        "0 pads every expert of the Triton grouped GEMMs to whole BLOCK_SIZE_M tiles; 1 shrinks each expert's last "
        "tile to 64 / 32 / 16 rows where moekit.configs.tail_tile says (16 or more experts, BLOCK_SIZE_M >= 64; "
        "measured on the H100 and H200 only).",
    ),
    EnvVar(
        "MOEKIT_PDL", "bool", True,
        "0 launches every kernel plainly; 1 lets a kernel of a chain (the decode GEMVs after routing; the grouped "
        "forward's alignment, quantization, GEMMs and top-k sum up to 64 token slots per expert: "
        "moekit.kernels.pdl) start while the one before it finishes, on GPUs with programmatic dependent launch "
        "(sm_90 and later): moekit.platform.programmatic_launch.",
    ),
    EnvVar(
        "MOEKIT_LINEAR", "bool", True,
        "0 turns the dense GEMM router off: moekit.linear calls torch (F.linear / torch._scaled_mm) directly.",
    ),
]

_BY_NAME = {v.name: v for v in registry}


def _entry(name: str) -> EnvVar:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise MoEInputError(
            f"name: expected a registered moekit variable ({', '.join(_BY_NAME)}), got {name!r}"
        ) from None


_scanned_env_keys: Any = None


def _check_unknown() -> None:
    """Warn once per misspelled MOEKIT_* variable. Decoding the whole environment costs tens of
    microseconds a call, so the scan runs only when the set of variable names changed since the last one
    (compared on CPython's raw key set, a C-speed operation): a variable set later is still caught."""
    global _scanned_env_keys
    raw = getattr(os.environ, "_data", None)
    keys = frozenset(raw) if isinstance(raw, dict) else None
    if keys is not None and keys == _scanned_env_keys:
        return
    _scanned_env_keys = keys
    for key in os.environ:
        if key.startswith("MOEKIT_") and key not in _BY_NAME:
            warn_once(
                f"unknown-env:{key}",
                f"{key} is set but moekit does not read it (known: {', '.join(_BY_NAME)}); check the spelling.",
            )


def get(name: str) -> Any:
    """The parsed value of variable ``name`` now (its default when unset or empty); raises EnvError."""
    var = _entry(name)
    _check_unknown()
    return var.parse(os.environ.get(name))


def is_set(name: str) -> bool:
    """True when ``name`` is set to a non-empty value."""
    _entry(name)
    return bool(os.environ.get(name, "").strip())


def _default_label(var: EnvVar) -> str:
    if var.default is None:
        return "unset"
    if isinstance(var.default, bool):
        return "1" if var.default else "0"
    return str(var.default)


def markdown_table() -> str:
    """The README table of environment variables, generated from :data:`registry`."""
    lines = ["| Variable | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for v in registry:
        lines.append(f"| `{v.name}` | {v.type_label} | `{_default_label(v)}` | {v.doc} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------
# Logging and optional dependencies
# --------------------------------------------------------------------------------------------------------

_log_lock = threading.RLock()
_log_configured = False
_warned: set = set()


def _read_log_level() -> Tuple[int, Optional[str]]:
    try:
        name = _entry("MOEKIT_LOG_LEVEL").parse(os.environ.get("MOEKIT_LOG_LEVEL"))
    except EnvError as e:
        return logging.WARNING, str(e)
    return getattr(logging, name), None


def log_level() -> int:
    """MOEKIT_LOG_LEVEL as a ``logging`` level number (WARNING when the value is bad: logging must not fail)."""
    return _read_log_level()[0]


def get_logger() -> logging.Logger:
    """The ``moekit`` logger, its level set from MOEKIT_LOG_LEVEL on first use.

    It propagates to the root logger; when the root logger has no handler (a plain script) a stderr handler
    is attached to ``moekit`` as well, so warnings and, with MOEKIT_LOG_LEVEL=DEBUG, debug lines are seen.
    """
    global _log_configured
    logger = logging.getLogger("moekit")
    bad = None
    with _log_lock:
        if not _log_configured:
            _log_configured = True
            level, bad = _read_log_level()
            logger.setLevel(level)
            if not logging.getLogger().handlers and not logger.handlers:
                h = logging.StreamHandler()
                h.setFormatter(logging.Formatter("moekit %(levelname)s: %(message)s"))
                logger.addHandler(h)
    if bad:
        logger.warning("%s; using WARNING", bad)
    return logger


def warn_once(key: str, msg: str) -> bool:
    """Log ``msg`` as a warning on the ``moekit`` logger the first time ``key`` is seen; True if logged."""
    with _log_lock:
        if key in _warned:
            return False
        _warned.add(key)
    get_logger().warning(msg)
    return True


def _reset_for_tests() -> None:
    global _log_configured
    with _log_lock:
        _warned.clear()
        _log_configured = False


def optional_import(module: str, feature: str, fallback: str) -> Optional[Any]:
    """Import ``module`` or return None after one warning: '<feature> needs <module> (...); <fallback>'."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        warn_once(f"optional-import:{module}:{feature}", f"{feature} needs {module} ({e}); {fallback}")
        return None


def _main(argv: Optional[List[str]] = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--check":
        bad = 0
        for v in registry:
            try:
                get(v.name)
            except EnvError as e:
                print(e)
                bad += 1
        return 1 if bad else 0
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":  # python -m moekit.envs [--check]
    raise SystemExit(_main())
