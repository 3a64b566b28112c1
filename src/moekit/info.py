"""``moekit info``: the platform, its arch predicates, and which backend runs which scheme (and why not).

Entry points: :func:`info_report` (a dict), :func:`run_info` (the text or JSON string), :func:`info_main`
(argv -> exit code) and :func:`add_info_parser` (registers the ``info`` subcommand on a CLI).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence, Union

import torch

from moekit import backends as _backends
from moekit import envs
from moekit import platform as _plat
from moekit.platform import Platform
from moekit.quant.scheme import QuantScheme, as_scheme


def _version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version(module)
    except PackageNotFoundError:
        return None


def _gib(n: int) -> str:
    return f"{n / _plat.GiB:.1f} GiB" if n else "?"


def info_report(platform: Union[None, str, Platform] = None,
                schemes: Optional[Sequence[Union[str, QuantScheme]]] = None) -> dict:
    """Everything ``moekit info`` shows, as plain data (the ``--json`` output)."""
    p = _plat.resolve_platform(platform)
    ss = [as_scheme(s, "schemes") for s in (QuantScheme.standard() if schemes is None else schemes)]
    smem = _plat.shared_memory_per_block(p)
    plat = {
        "vendor": p.vendor,
        "device_name": p.device_name,
        "config_device_name": _plat.device_name_for_configs(p),
        "capability": list(p.capability) if p.capability else None,
        "gcn_arch": p.gcn_arch,
        "arch": p.arch,
        "total_memory": p.total_memory,
        "multiprocessor_count": p.multiprocessor_count,
        "shared_memory_per_block": smem,
        "pci_device_id": None if p.pci_device_id is None else f"0x{p.pci_device_id:04x}",
        "runtime_version": p.runtime_version,
        "fake": p.fake,
        "fp8_dtype": str(_plat.fp8_dtype(p)).replace("torch.", ""),
        "fp8_max": _plat.fp8_max(p),
    }
    features = {}
    for name in _plat.FEATURES:
        ok, why = _plat.has_feature(name, p)
        features[name] = {"value": ok, "reason": why}
    backs = []
    for b in _backends.all_backends():
        av = b.available()
        dev = b.supports_device(p)
        backs.append({
            "name": b.name, "priority": b.priority, "description": b.description,
            "available": av.ok, "available_reason": av.reason,
            "device": dev.ok, "device_reason": dev.reason,
        })
    matrix = [r.to_dict() for r in _backends.backend_matrix(p, ss)]
    env_rows = []
    env_error = None
    for var in envs.registry:
        row = {"name": var.name, "raw": None, "value": None, "default": var.default, "error": None}
        try:
            row["raw"] = os.environ.get(var.name)
            value = envs.get(var.name)
            row["value"] = str(value) if value is not None and not isinstance(value, (bool, int)) else value
        except envs.EnvError as e:
            row["error"] = str(e)
            env_error = env_error or str(e)
        if row["default"] is not None and not isinstance(row["default"], (bool, int, str)):
            row["default"] = str(row["default"])
        env_rows.append(row)
    selected = {}
    for s in ss:
        try:
            selected[s.name] = {"backend": _backends.select_backend(s, p).name, "error": None}
        except (_backends.NoBackendError, envs.EnvError) as e:
            selected[s.name] = {"backend": None, "error": str(e)}
    return {
        "platform": plat,
        "predicates": _plat.predicates(p),
        "features": features,
        "backends": backs,
        "matrix": matrix,
        "selected": selected,
        "env": env_rows,
        "versions": {"torch": torch.__version__, "triton": _version("triton"), "moekit": _version("moekit")},
    }


def _table(rows: List[List[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_report(rep: dict) -> str:
    """The human-readable text of :func:`info_report`."""
    p = rep["platform"]
    out = ["Platform"]
    cap = ".".join(map(str, p["capability"])) if p["capability"] else "-"
    smem = f"{p['shared_memory_per_block'] // 1024} KiB" if p["shared_memory_per_block"] else "?"
    fields = [
        ["vendor", p["vendor"] + (" (fake)" if p["fake"] else "")],
        ["device", p["device_name"]],
        ["config name", p["config_device_name"]],
        ["capability", cap],
        ["gfx arch", p["gcn_arch"] or "-"],
        ["memory", _gib(p["total_memory"])],
        ["SMs / CUs", str(p["multiprocessor_count"] or "?")],
        ["smem / block", smem],
        ["fp8 format", f"{p['fp8_dtype']} (max {p['fp8_max']:g})"],
        ["runtime", p["runtime_version"] or "-"],
        ["versions", ", ".join(f"{k} {v or 'not installed'}" for k, v in rep["versions"].items())],
    ]
    out += _table(fields)
    out.append("")
    out.append("Predicates")
    preds = list(rep["predicates"].items())
    out += _table([[k, "yes" if v else "no"] for k, v in preds])
    out.append("")
    out.append("Hardware features")
    out += _table([[k, "yes" if v["value"] else "no", v["reason"]] for k, v in rep["features"].items()])
    out.append("")
    out.append("Backends")
    brows = []
    for b in rep["backends"]:
        if not b["available"]:
            state = f"not available: {b['available_reason']}"
        elif not b["device"]:
            state = f"device not supported: {b['device_reason']}"
        else:
            state = f"ok: {b['device_reason']}"
        brows.append([b["name"], f"priority {b['priority']}", state])
    out += _table(brows)
    out.append("")
    names = [b["name"] for b in rep["backends"]]
    out.append("Backend x scheme (* = picked by auto; selected = what runs with the current MOEKIT_BACKEND)")
    by = {(r["scheme"], r["backend"]): r for r in rep["matrix"]}
    schemes = list(dict.fromkeys(r["scheme"] for r in rep["matrix"]))
    grid = [["scheme", "selected", *names]]
    for s in schemes:
        sel = rep["selected"][s]["backend"] or "NONE"
        cells = []
        for n in names:
            r = by[(s, n)]
            cells.append(("yes" if r["supported"] else "no") + ("*" if r["selected"] else ""))
        grid.append([s, sel, *cells])
    out += _table(grid)
    out.append("")
    out.append('Reasons for every "no"')
    no_rows = []
    for n in names:
        rows = [r for r in rep["matrix"] if r["backend"] == n]
        nos = [r for r in rows if not r["supported"]]
        if len(rows) > 1 and len(nos) == len(rows) and len({r["reason"] for r in nos}) == 1:
            no_rows.append(["(all schemes)", n, nos[0]["reason"]])
        else:
            no_rows += [[r["scheme"], n, r["reason"]] for r in nos]
    out += _table(no_rows) if no_rows else ["  (none)"]
    errors = {s: v["error"] for s, v in rep["selected"].items() if v["error"]}
    if errors:
        out.append("")
        out.append("Selection errors")
        for s, e in errors.items():
            out.append(f"  {s}:")
            out += ["    " + line for line in e.splitlines()]
    out.append("")
    out.append("Environment")
    erows = []
    for e in rep["env"]:
        if e["error"]:
            val = f"INVALID: {e['error']}"
        elif e["raw"] is None or not str(e["raw"]).strip():
            val = f"{'unset' if e['value'] is None else e['value']} (default)"
        else:
            val = str(e["value"])
        erows.append([e["name"], val])
    out += _table(erows)
    return "\n".join(out) + "\n"


def run_info(as_json: bool = False, platform: Union[None, str, Platform] = None,
             schemes: Optional[Sequence[Union[str, QuantScheme]]] = None) -> str:
    """The ``moekit info`` output: text, or JSON when ``as_json``."""
    rep = info_report(platform, schemes)
    if as_json:
        return json.dumps(rep, indent=2, default=str) + "\n"
    return format_report(rep)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.add_argument(
        "--platform", choices=sorted(_plat.PRESETS), default=None,
        help="report for a preset fake platform instead of the detected device",
    )
    parser.add_argument(
        "--scheme", action="append", default=None, metavar="NAME",
        help="scheme(s) to show (e.g. fp8_block128x128, int4_weight_only_g64); repeatable; default: all standard",
    )


def _run_args(args: argparse.Namespace) -> int:
    try:
        schemes = [as_scheme(s, "--scheme") for s in args.scheme] if args.scheme else None
    except ValueError as e:
        print(f"moekit info: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(run_info(as_json=args.json, platform=args.platform, schemes=schemes))
    return 0


def add_info_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``info`` on an ``argparse`` subparsers object; ``args.func(args)`` returns the exit code."""
    parser = subparsers.add_parser(
        "info", help="platform, arch predicates and backend x scheme support with reasons",
        description=__doc__.splitlines()[0],
    )
    _add_arguments(parser)
    parser.set_defaults(func=_run_args)
    return parser


def info_main(argv: Optional[Sequence[str]] = None) -> int:
    """``moekit info`` as a standalone program (also ``python -m moekit.info``)."""
    parser = argparse.ArgumentParser(prog="moekit info", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    args = parser.parse_args(list(argv) if argv is not None else None)
    return _run_args(args)


if __name__ == "__main__":
    raise SystemExit(info_main())


# ------------------------------------------------------------------------------------------------------------
# Generated markdown blocks (README / docs/envs.md)
# ------------------------------------------------------------------------------------------------------------

#: marker name -> generator. A block is the text between "<!-- moekit:NAME:begin -->" and "<!-- moekit:NAME:end -->".
def generated_blocks() -> dict:
    return {"envs": envs.markdown_table(), "support-matrix": _backends.support_matrix_markdown()}


def refresh_markdown(text: str) -> str:
    """``text`` with every generated block it contains replaced by the current content."""
    import re

    for name, body in generated_blocks().items():
        begin, end = f"<!-- moekit:{name}:begin -->", f"<!-- moekit:{name}:end -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _m: f"{begin}\n{body}{end}", text)
    return text


def refresh_docs(*paths: str, check: bool = False) -> List[str]:
    """Rewrite the generated blocks of the given markdown files; returns the paths that were stale.

    With ``check=True`` nothing is written (for tests and CI).
    """
    from pathlib import Path

    stale = []
    for path in paths:
        f = Path(path)
        old = f.read_text(encoding="utf-8")
        new = refresh_markdown(old)
        if new != old:
            stale.append(str(path))
            if not check:
                f.write_text(new, encoding="utf-8")
    return stale
