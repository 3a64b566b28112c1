"""MoE backends, what each supports where, and the choice between them.

Each backend declares, once, ``available()`` (can it be imported), ``supports_device(platform)`` and
``supports_scheme(scheme, platform)``; each returns a :class:`Verdict` ``(ok, reason)`` that is also truthy
exactly when ``ok``. Device facts (which GPU has fp8 matrix cores, ``tl.dot_scaled`` ...) come from
:mod:`moekit.platform`, so no device rule is written here.

Rules
-----
* ``triton`` (priority 100): CUDA >= 8.0 and ROCm gfx908/gfx90a/gfx942/gfx950/gfx11xx/gfx12xx, triton importable.
  Unquantized: everywhere it runs. fp8 (w8a8): where the GPU has fp8 matrix cores (CUDA >= 8.9; gfx942,
  gfx950, gfx12xx). int8 w8a8: int8 matrix cores (CUDA >= 8.0; gfx90a/gfx942/gfx950). int8/int4 weight-only:
  every GPU it runs on (weights are dequantized inside the kernel). mxfp4: ``tl.dot_scaled`` (CUDA
  9.0 <= capability < 11.0; gfx9 and gfx1x).
* ``torch`` (priority 0): every scheme on every device, CPU included. Quantized weights are dequantized and
  multiplied with PyTorch matmuls: slow but correct. **fp8 on A100** (capability 8.0): triton declines
  (no fp8 matrix cores), torch accepts, so ``select_backend`` picks torch and ``moekit info`` says why.
* ``vllm`` (priority 50, optional): when ``vllm.model_executor.layers.fused_moe`` imports; its fused-MoE
  kernels are Triton kernels, so it follows the triton rules. Never picked over ``triton`` by ``auto``.

:func:`select_backend` honors ``prefer`` or else ``MOEKIT_BACKEND``; a named backend that declines raises
:class:`NoBackendError` (moekit never silently runs a different backend than the one asked for).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from moekit import envs
from moekit import platform as _plat
from moekit.errors import MoEInputError
from moekit.platform import Platform
from moekit.quant.scheme import QuantScheme, as_scheme

__all__ = [
    "Verdict", "Backend", "TritonBackend", "TorchBackend", "VllmBackend", "NoBackendError", "MatrixRow",
    "register_backend", "get_backend", "all_backends", "backend_names", "select_backend", "backend_matrix",
    "support_matrix_markdown",
]


class Verdict(NamedTuple):
    """``(ok, reason)``; truthy exactly when ``ok``."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return bool(self.ok)


@functools.lru_cache(maxsize=None)
def _import_status(module: str) -> Verdict:
    """Whether ``module`` imports (cached: imports are tried once per process)."""
    top = module.split(".", 1)[0]
    try:
        importlib.import_module(module)
    except ImportError as e:
        return Verdict(False, f"{top} not importable ({e})")
    except Exception as e:  # noqa: BLE001 - a broken install must not crash backend selection
        return Verdict(False, f"{top} failed to import ({type(e).__name__}: {e})")
    return Verdict(True, f"{top} importable")


def scheme_kind(scheme: QuantScheme) -> str:
    """'none', 'fp8' (w8a8), 'int8_w8a8', 'weight_only' (int8/int4) or 'mxfp4'."""
    if not scheme.is_quantized:
        return "none"
    if scheme.weight_dtype == "mxfp4":
        return "mxfp4"
    if scheme.weight_only:
        return "weight_only"
    return "fp8" if scheme.weight_dtype == "fp8" else "int8_w8a8"


class Backend:
    """Base class. Subclasses set ``name``, ``priority``, ``requires`` and override the two ``supports_*``."""

    name: str = ""
    priority: int = 0  # higher wins under MOEKIT_BACKEND=auto
    requires: Tuple[str, ...] = ()  # modules that must import
    description: str = ""

    def available(self) -> Verdict:
        for module in self.requires:
            v = _import_status(module)
            if not v:
                return v
        return Verdict(True, "available" if not self.requires else f"{', '.join(self.requires)} importable")

    def supports_device(self, platform: Platform) -> Verdict:  # pragma: no cover - abstract
        raise NotImplementedError

    def supports_scheme(self, scheme: QuantScheme, platform: Platform) -> Verdict:  # pragma: no cover
        raise NotImplementedError

    def check(self, scheme=None, platform=None, require_available: bool = True) -> Verdict:
        """available -> device -> scheme; the first refusal, or the scheme's 'yes' reason."""
        s = as_scheme(scheme)
        p = _plat.resolve_platform(platform)
        if require_available:
            v = self.available()
            if not v:
                return Verdict(False, f"not available: {v.reason}")
        v = self.supports_device(p)
        if not v:
            return Verdict(False, f"device: {v.reason}")
        v = self.supports_scheme(s, p)
        return Verdict(v.ok, v.reason if v else f"scheme: {v.reason}")

    def __repr__(self) -> str:
        return f"<moekit backend {self.name!r} priority={self.priority}>"


#: The least K depth of a Triton ``tl.dot`` on 8-bit operands (fp8 / int8): Triton rejects shallower ones at compile
#: time on NVIDIA GPUs ("K >= 32"); moekit applies it on every device. Kernels that step K inside one scale block
#: need blocks at least this wide.
MMA_MIN_K_8BIT = 32


def triton_kernel_limits(scheme: QuantScheme, mma_8bit: bool = True) -> Verdict:
    """Scheme parameters moekit's Triton kernels cannot take on any device: a w8a8 block whose K side is not a
    power of two >= 32, or >= 16 without ``mma_8bit`` (each K step of the block-scaled GEMMs must lie inside one
    scale block, and a ``tl.dot`` is at least 16 deep; other blocks gave wrong results or compile errors).
    ``mma_8bit``: the kernels multiply 8-bit activations by the 8-bit weights in those K steps (the MoE GEMMs,
    the dense router's ``triton_w8a8``), so the K side must also be at least :data:`MMA_MIN_K_8BIT` (a 16-wide
    block compiled nowhere but in the interpreter: found by the property test on the H200, session 14); False
    for kernels that widen the weight to the activation dtype first."""
    if scheme.granularity == "block" and not scheme.weight_only:
        bk = scheme.block_shape[1]
        least = MMA_MIN_K_8BIT if mma_8bit else 16
        if bk < least or bk & (bk - 1):
            return Verdict(False, f"block_shape[1] = {bk}: the Triton block-scaled GEMMs need a power of two >= "
                                  f"{least} along K")
    return Verdict(True, "")


class TritonBackend(Backend):
    name = "triton"
    priority = 100
    requires = ("triton",)
    description = "moekit's fused Triton kernels (CUDA and ROCm GPUs)"

    def supports_device(self, platform: Platform) -> Verdict:
        if platform.vendor == "cpu":
            return Verdict(False, "no GPU: Triton kernels need a CUDA or ROCm GPU")
        if platform.vendor == "xpu":
            return Verdict(False, "Intel XPU: moekit's Triton kernels target CUDA and ROCm only")
        ok, why = _plat.has_feature("triton_target", platform)
        return Verdict(ok, why)

    def supports_scheme(self, scheme: QuantScheme, platform: Platform) -> Verdict:
        limits = triton_kernel_limits(scheme)
        if not limits:
            return limits
        kind = scheme_kind(scheme)
        if kind == "none":
            return Verdict(True, f"{scheme.weight_dtype} tl.dot")
        if kind == "weight_only":
            return Verdict(True, f"{scheme.weight_dtype} weights dequantized in the kernel (any GPU)")
        if kind == "mxfp4" and scheme.layout == "mma":  # never tl.dot_scaled: the words are decoded in the kernel
            return Verdict(True, "e2m1 words of the mma layout decoded in the kernel (inline PTX on NVIDIA sm_80+ "
                                 "in bf16)")
        if kind == "mxfp4":  # tl.dot_scaled where the device has it, moekit's in-kernel e2m1 decode elsewhere
            ok, why = _plat.has_feature("dot_scaled", platform)
            return Verdict(True, why if ok else "e2m1 weights decoded in the kernel (no tl.dot_scaled here: "
                                                 f"{why})")
        feature = {"fp8": "fp8_mma", "int8_w8a8": "int8_mma"}[kind]
        ok, why = _plat.has_feature(feature, platform)
        if ok and kind == "fp8":
            why += f"; fp8 format {str(_plat.fp8_dtype(platform)).replace('torch.', '')}"
            if scheme.granularity == "block" and _plat.on_sm90(platform):
                why += "; prefill (>= 32 rows per expert) in Gluon kernels with asynchronous wgmma"
        return Verdict(ok, why)


class TorchBackend(Backend):
    name = "torch"
    priority = 0
    description = "PyTorch reference path (any device, CPU included; slow)"

    def supports_device(self, platform: Platform) -> Verdict:
        return Verdict(True, f"PyTorch runs on {platform.vendor}")

    def supports_scheme(self, scheme: QuantScheme, platform: Platform) -> Verdict:
        if not scheme.is_quantized:
            return Verdict(True, f"PyTorch {scheme.weight_dtype} matmuls (reference path)")
        return Verdict(
            True, f"{scheme.weight_dtype} weights dequantized, PyTorch matmuls (reference path: slow but correct)"
        )


class VllmBackend(TritonBackend):
    """vLLM's fused-MoE kernels; Triton kernels too, so the triton device and scheme rules apply."""

    name = "vllm"
    priority = 50
    requires = ("vllm.model_executor.layers.fused_moe",)
    description = "vLLM fused_moe kernels (optional; needs vllm installed)"


_REGISTRY: Dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a backend; returns it."""
    if not isinstance(backend, Backend) or not backend.name:
        raise MoEInputError(f"backend: expected a named moekit.backends.Backend, got {backend!r}")
    _REGISTRY[backend.name] = backend
    return backend


for _b in (TritonBackend(), TorchBackend(), VllmBackend()):
    register_backend(_b)
BUILTIN_BACKENDS = ("triton", "torch")


def all_backends() -> List[Backend]:
    """Every registered backend, highest priority first."""
    return sorted(_REGISTRY.values(), key=lambda b: -b.priority)


def backend_names() -> List[str]:
    return [b.name for b in all_backends()]


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise MoEInputError(f"name: expected one of {', '.join(backend_names())}, got {name!r}")
    return _REGISTRY[name]


class NoBackendError(RuntimeError):
    """No backend (or not the requested one) can run ``scheme`` on ``platform``; the message says why."""

    def __init__(self, scheme: QuantScheme, platform: Platform, verdicts: Dict[str, Verdict],
                 requested: Optional[str] = None, source: Optional[str] = None) -> None:
        self.scheme = scheme
        self.platform = platform
        self.reasons = {name: v.reason for name, v in verdicts.items()}
        self.verdicts = verdicts
        self.requested = requested
        lines = []
        if requested is not None:
            lines.append(
                f"Backend {requested!r} ({source}) cannot run quantization scheme {scheme.name} "
                f"on {platform.describe()}: {verdicts[requested].reason}."
            )
        else:
            lines.append(f"No moekit backend supports quantization scheme {scheme.name} on {platform.describe()}.")
        lines.append("Backends:")
        for name, v in verdicts.items():
            lines.append(f"  - {name}: {'yes' if v else 'no'}: {v.reason}")
        ok = [name for name, v in verdicts.items() if v]
        if requested is not None and ok:
            lines.append(f"Set MOEKIT_BACKEND=auto (or prefer='auto') to let moekit pick {ok[0]!r}.")
        elif not ok:
            lines.append("Use another quantization scheme; `moekit info` prints the full support matrix.")
        super().__init__("\n".join(lines))


_VERDICT_CACHE: Dict[tuple, Dict[str, Verdict]] = {}
_VERDICT_CACHE_MAX = 512


def _verdicts(scheme: QuantScheme, platform: Platform, backends: Sequence[Backend],
              require_available: bool = True) -> Dict[str, Verdict]:
    """Each backend's verdict, memoized: a verdict depends only on the (frozen) scheme and platform, the
    backend objects and what imports, so repeated calls (every fused_moe call selects a backend) skip
    rebuilding the reason strings. The key holds the import probe itself, so replacing it (tests do)
    never returns a stale verdict; :func:`clear_verdict_cache` empties the memo."""
    key = (scheme, platform, tuple(backends), require_available, _import_status)
    hit = _VERDICT_CACHE.get(key)
    if hit is None:
        hit = {b.name: b.check(scheme, platform, require_available=require_available) for b in backends}
        if len(_VERDICT_CACHE) >= _VERDICT_CACHE_MAX:
            _VERDICT_CACHE.clear()
        _VERDICT_CACHE[key] = hit
    return dict(hit)


def clear_verdict_cache() -> None:
    """Forget memoized backend verdicts (after changing what a backend's check depends on in place)."""
    _VERDICT_CACHE.clear()


def select_backend(scheme: Union[None, str, QuantScheme] = None,
                   platform: Union[None, str, Platform] = None,
                   prefer: Optional[str] = None) -> Backend:
    """The backend to run ``scheme`` (None: unquantized) on ``platform`` (None: the current one).

    ``prefer`` names a backend; when it is None or 'auto', ``MOEKIT_BACKEND`` is used the same way. A named
    backend is returned if it supports device and scheme, else :class:`NoBackendError` says why. Under
    'auto' the highest-priority backend that supports both is returned (triton before torch on GPUs).
    """
    s = as_scheme(scheme)
    p = _plat.resolve_platform(platform)
    if prefer is not None and not isinstance(prefer, str):
        raise MoEInputError(f"prefer: expected None or a backend name, got {type(prefer).__name__}")
    requested, source = None, None
    if prefer is not None and prefer.strip().lower() != "auto":
        requested, source = prefer.strip().lower(), f"prefer={prefer!r}"
        if requested not in _REGISTRY:
            raise MoEInputError(f"prefer: expected auto or one of {', '.join(backend_names())}, got {prefer!r}")
    else:
        env = envs.get("MOEKIT_BACKEND")
        if env != "auto":
            requested, source = env, f"MOEKIT_BACKEND={env}"
            if requested not in _REGISTRY:
                raise envs.EnvError(
                    f"MOEKIT_BACKEND: expected auto or one of {', '.join(backend_names())}, got {env!r}"
                )
    backends = all_backends()
    verdicts = _verdicts(s, p, backends)
    if requested is not None:
        if verdicts[requested]:
            chosen = _REGISTRY[requested]
        else:
            raise NoBackendError(s, p, verdicts, requested, source)
    else:
        chosen = next((b for b in backends if verdicts[b.name]), None)
        if chosen is None:
            raise NoBackendError(s, p, verdicts)
    logger = envs.get_logger()
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("backend %s for %s on %s: %s", chosen.name, s.name, p.describe(), verdicts[chosen.name].reason)
    return chosen


@dataclasses.dataclass(frozen=True)
class MatrixRow:
    scheme: str
    backend: str
    supported: bool
    reason: str
    selected: bool  # the backend auto-selection (ignoring MOEKIT_BACKEND) picks for this scheme

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def backend_matrix(platform: Union[None, str, Platform] = None,
                   schemes: Optional[Sequence[Union[str, QuantScheme]]] = None,
                   backends: Optional[Sequence[str]] = None,
                   require_available: bool = True) -> List[MatrixRow]:
    """One row per (scheme, backend) with the verdict and its reason; used by ``moekit info``."""
    p = _plat.resolve_platform(platform)
    ss = [as_scheme(x, "schemes") for x in (QuantScheme.standard() if schemes is None else schemes)]
    bs = all_backends() if backends is None else [get_backend(n) for n in backends]
    rows = []
    for s in ss:
        verdicts = _verdicts(s, p, bs, require_available)
        pick = next((name for name, v in verdicts.items() if v), None)
        rows.extend(MatrixRow(s.name, name, v.ok, v.reason, name == pick) for name, v in verdicts.items())
    return rows


#: Platforms and column labels of the README support matrix.
README_PLATFORMS = (
    ("h100", "H100"), ("b200", "B200"), ("rtx_pro_6000", "RTX PRO 6000"), ("a100", "A100"),
    ("mi300x", "MI300X"), ("mi355", "MI355X"), ("r9700", "R9700"), ("rx7900", "RX 7900 XTX"),
    ("gfx1030", "RX 6900 XT"), ("gfx906", "MI50"), ("cpu", "CPU"),
)


def support_matrix_markdown() -> str:
    """README support matrix: the backend ``auto`` picks per scheme and reference platform, then why triton
    declined where it did. Built-in backends only, triton assumed installed."""
    plats = [(_plat.PRESETS[k], label) for k, label in README_PLATFORMS]
    schemes = QuantScheme.standard()
    header = "| Scheme | " + " | ".join(f"{label}<br>`{p.arch}`" for p, label in plats) + " |"
    lines = [header, "|" + " --- |" * (len(plats) + 1)]
    for s in schemes:
        cells = []
        for p, label in plats:
            rows = backend_matrix(p, [s], BUILTIN_BACKENDS, require_available=False)
            cells.append(next(r.backend for r in rows if r.selected))
        lines.append(f"| `{s.name}` | " + " | ".join(cells) + " |")
    declined: Dict[Tuple[str, str], List[str]] = {}
    triton = get_backend("triton")
    for p, label in plats:
        if p.vendor == "cpu":
            continue
        for s in schemes:
            v = triton.check(s, p, require_available=False)
            if not v:
                declined.setdefault((label, v.reason), []).append(s.name)
    lines.append("")
    lines.append("Where triton declines (torch runs instead):")
    lines.append("")
    for (label, reason), names in declined.items():
        which = "all schemes" if len(names) == len(schemes) else ", ".join(f"`{n}`" for n in names)
        lines.append(f"- {label}, {which}: {reason}")
    return "\n".join(lines) + "\n"
