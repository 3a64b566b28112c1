"""Tuned vs default kernel configs, whole forward (routing + fused experts), for every shipped config file of
this GPU (or the files given). Each batch size of a file is timed as CUDA-graph replay with the file's
config and with the default heuristic (what users get without a file), interleaved twice, keeping the
better of the two medians for each.

Targets (issue 5): geometric-mean speed-up >= 1.15x, and no batch size slower than default by more than 2%.

Usage (GPU): PYTHONPATH=src python3 benchmarks/bench_configs.py [--files F.json ...] [--out benchmarks/results]
Writes configs_tuned_vs_default_<device>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform as _pyplatform
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from moekit.configs import (
    default_config, fit_shared_memory, load_config_file, package_config_dir, parse_config_file_name,
)
from moekit.platform import device_name_for_configs, shared_memory_per_block
from moekit.shapes import SHAPES
from moekit.tune import MODELS, CompilePool, GpuTimer, _workers, spec_for_model

TARGET_GEOMEAN = 1.15
WORST_ALLOWED = 0.98


def spec_for_file(path: Path):
    """The canonical model (and TP/EP slice) whose per-rank shape the file is for, or None."""
    parts = parse_config_file_name(path.name)
    if parts is None:
        return None
    dtype = parts["dtype"] or "bf16"
    for name in MODELS:
        s = SHAPES[name]
        for tp in (1, 2, 4, 8):
            for ep in (1, 2, 4, 8):
                if s.I % tp == 0 and s.E % ep == 0 and (s.E // ep, s.I // tp) == (parts["E"], parts["N"]):
                    return spec_for_model(name, tp, ep, dtype, parts["block_shape"])
    return None


def bench_file(path: Path, rep_ms: int, jobs: int, rounds: int = 3, log=print) -> dict:
    spec = spec_for_file(path)
    if spec is None:
        raise SystemExit(f"{path.name}: no canonical model has this shape")
    table = load_config_file(path)
    smem = shared_memory_per_block()
    elem = spec.elem_bytes
    pairs = {}
    for M, tuned in table.table:
        d = fit_shared_memory(default_config(M, spec.E, spec.N, spec.K, spec.top_k, spec.dtype, spec.block_shape), elem, smem)
        pairs[M] = (d, fit_shared_memory(tuned, elem, smem))
    pool = CompilePool(spec, jobs) if jobs else None
    if pool:
        for M, (d, t) in pairs.items():
            pool.submit(M, [d, t])
    timer = GpuTimer(spec)
    points = []
    try:
        for M, (d, t) in pairs.items():
            if pool:
                for c in (d, t):
                    f = pool.future(M, c)
                    if f is not None:
                        f.result()
            best = {"default": math.inf, "tuned": math.inf}
            if t == d:  # the same kernels: one timing stands for both (a difference would be noise)
                best["default"] = best["tuned"] = min(timer(M, d, rep_ms) for _ in range(rounds))
            else:
                for _ in range(rounds):
                    for label, c in (("default", d), ("tuned", t)):
                        best[label] = min(best[label], timer(M, c, rep_ms))
            sp = best["default"] / best["tuned"]
            points.append({"M": M, "default_config": d.to_dict(), "tuned_config": t.to_dict(), "same": t == d,
                           "default_us": best["default"], "tuned_us": best["tuned"], "speedup": sp})
            log(f"{spec.describe().split(':')[0]:22s} M={M:5d}  default {best['default']:9.1f} us ({d.short()})  "
                f"tuned {best['tuned']:9.1f} us ({t.short()})  {sp:5.2f}x")
    finally:
        if pool:
            pool.close()
    del timer
    torch.cuda.empty_cache()
    sps = [p["speedup"] for p in points]
    return {"file": path.name, "model": spec.describe(), "points": points,
            "geomean_speedup": math.exp(sum(math.log(s) for s in sps) / len(sps)), "worst_speedup": min(sps)}


def markdown(result: dict) -> str:
    lines = [f"# Tuned vs default kernel configs, {result['device']}", "",
             f"torch {result['torch']}, triton {result['triton']}. Whole forward (routing + fused experts; bf16 "
             f"activations, weights as the file's dtype) "
             f"as CUDA-graph replay, median of replays over {result['rep_ms']} ms, the best of {result['rounds']} "
             f"interleaved runs per config (where the file's config equals the default, the same kernels are timed "
             f"once per round and stand for both). Default = the heuristic used without a tuned file. Command: "
             f"`{result['command']}`.", ""]
    for f in result["files"]:
        lines += [f"## {f['model']}", "", f"`{f['file']}`", "",
                  "| M | default config | default (us) | tuned config | tuned (us) | speed-up |",
                  "|---|---|---|---|---|---|"]
        for p in f["points"]:
            d, t = (" ".join(f"{v}" for v in p[k].values()) for k in ("default_config", "tuned_config"))
            t = "= default" if p.get("same") else t
            lines.append(f"| {p['M']} | {d} | {p['default_us']:.1f} | {t} | {p['tuned_us']:.1f} | {p['speedup']:.2f}x |")
        lines += ["", f"Geometric mean {f['geomean_speedup']:.2f}x, worst {f['worst_speedup']:.3f}x.", ""]
    lines += ["Config columns: BLOCK_SIZE_M BLOCK_SIZE_N BLOCK_SIZE_K GROUP_SIZE_M num_warps num_stages.", "",
              f"**All files: geometric-mean speed-up {result['geomean_speedup']:.2f}x (target >= {TARGET_GEOMEAN}x), "
              f"worst batch size {result['worst_speedup']:.3f}x (target >= {WORST_ALLOWED}).**"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import triton

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", nargs="*", help="config files (default: shipped files for this GPU)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--rep-ms", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved default/tuned rounds (best of)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="merge earlier result files (same device) and rewrite "
                    "the markdown; no GPU needed")
    ap.add_argument("--repair", metavar="JSON", help="from an earlier result file: in each shipped file, replace "
                    "the entries whose measured default beat the tuned config by more than 2%% with the default "
                    "(stale files after a kernel change); no GPU needed")
    args = ap.parse_args(argv)
    if args.repair:
        return repair(json.loads(Path(args.repair).read_text()))
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        result = dict(parts[0], files=[f for r in parts for f in r["files"]],
                      command=" ; ".join(r["command"] for r in parts), seconds=sum(r["seconds"] for r in parts))
        sps = [p["speedup"] for r in result["files"] for p in r["points"]]
        result["geomean_speedup"] = math.exp(sum(math.log(s) for s in sps) / len(sps))
        result["worst_speedup"] = min(sps)
        return _write(result, args.out)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    device = device_name_for_configs()
    files = [Path(f) for f in args.files] if args.files else sorted(
        p for p in package_config_dir().glob("*.json") if (parse_config_file_name(p.name) or {}).get("device_name") == device)
    if not files:
        print(f"no config files for {device}", file=sys.stderr)
        return 1
    t0 = time.time()
    results = []
    for f in files:
        try:
            results.append(bench_file(f, args.rep_ms, _workers(args.jobs), args.rounds))
        except Exception as e:  # noqa: BLE001 - report and go on with the other files
            print(f"{f.name}: failed: {type(e).__name__}: {e}", file=sys.stderr)
    sps = [p["speedup"] for r in results for p in r["points"]]
    result = {
        "device": torch.cuda.get_device_name(), "device_name": device, "torch": torch.__version__,
        "triton": triton.__version__, "python": _pyplatform.python_version(), "rep_ms": args.rep_ms,
        "rounds": args.rounds,
        "command": "PYTHONPATH=src python3 benchmarks/bench_configs.py" + (f" --files {' '.join(map(str, files))}" if args.files else ""),
        "files": results, "seconds": time.time() - t0,
        "geomean_speedup": math.exp(sum(math.log(s) for s in sps) / len(sps)), "worst_speedup": min(sps),
    }
    return _write(result, args.out)


def repair(result: dict, directory: Optional[Path] = None) -> int:
    """Rewrite the shipped files named in ``result``: every batch size where the default measured more than
    2 % faster than the tuned entry gets the default config (the tuner keeps the default among its
    candidates, so this only undoes entries a later kernel change made stale)."""
    directory = directory or package_config_dir()
    for f in result["files"]:
        path = directory / f["file"]
        if not path.is_file():
            print(f"{f['file']}: not in {directory}; skipped")
            continue
        raw = json.loads(path.read_text())
        fixed = []
        for p in f["points"]:
            if not p.get("same") and p["speedup"] < 1 / 1.02 and str(p["M"]) in raw:
                raw[str(p["M"])] = dict(p["default_config"])
                fixed.append(f"M={p['M']} ({p['speedup']:.3f}x)")
        if fixed:
            path.write_text(json.dumps(raw, indent=4) + "\n")
        print(f"{f['file']}: {'default restored at ' + ', '.join(fixed) if fixed else 'nothing to repair'}")
    return 0


def _write(result: dict, out: str) -> int:
    md = markdown(result)
    print(md)
    os.makedirs(out, exist_ok=True)
    stem = Path(out) / f"configs_tuned_vs_default_{result['device_name']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(md)
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
