"""Probe (GPU only): what the kernel boundaries of the decode forward cost. Qwen3-30B-A3B bf16 at M = 1 runs
three kernels (routing, GEMV 1 reading 50 MB, GEMV 2 reading 25 MB); would one kernel that streams all 75 MB
be much faster? Timed as CUDA-graph replay, per call, over ``ROT`` rotated buffers / inputs (no L2 reuse):

* ``read_75``, ``read_50``, ``read_25``: one kernel that only reads that many bytes (``probe_skinny_floor``'s);
  ``read_50+25``: two such kernels in a row; ``empty``: a kernel that writes one number;
* ``routing``: the routing kernel alone; ``gemv``: the two GEMVs on given ids; ``forward``: ``fused_moe``.

    PYTHONPATH=src python3 benchmarks/probe_decode_boundaries.py [--out F.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
from probe_skinny_floor import _empty_kernel, _read_kernel  # noqa: E402
from moekit import fused_moe  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.kernels.moe_gemv import moe_gemv  # noqa: E402
from moekit.kernels.routing import select_experts_triton  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

ROT = 8


READ_SHAPES = [(2, 2048), (4, 1024), (8, 1024), (4, 2048)]  # (programs per SM, int32 words per step); best kept


def read(buf, out, n_bytes, shape):
    grid = shape[0] * torch.cuda.get_device_properties(0).multi_processor_count
    _read_kernel[(grid,)](buf, out, n_bytes, BLOCK=shape[1], num_warps=4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    s = SHAPES["qwen3_30b_a3b"]
    b13, b2 = 8 * 2 * s.I * s.H * 2, 8 * s.H * s.I * 2
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    bufs = [torch.zeros((b13 + b2) // 4, dtype=torch.int32, device="cuda") for _ in range(ROT)]  # words
    out = torch.empty(4096, device="cuda")
    res["empty"] = _median_us(lambda: [_empty_kernel[(1,)](out) for _ in bufs]) / ROT
    print(f"empty        {res['empty']:7.2f} us", flush=True)
    per = {
        "read_75": lambda b, r: read(b, out, b13 + b2, r),
        "read_50": lambda b, r: read(b, out, b13, r),
        "read_25": lambda b, r: read(b[b13 // 4:], out, b2, r),
        "read_50+25": lambda b, r: (read(b, out, b13, r), read(b[b13 // 4:], out, b2, r)),
    }
    for name, fn in per.items():
        times = {f"{r[0]}x{r[1]}": _median_us(lambda: [fn(b, r) for b in bufs]) / ROT for r in READ_SHAPES}
        res[name] = min(times.values())
        print(f"{name:12s} {res[name]:7.2f} us  " + " ".join(f"{k} {v:.2f}" for k, v in times.items()), flush=True)
    del bufs
    w13 = torch.randn(s.E, 2 * s.I, s.H, device="cuda", dtype=torch.bfloat16) / s.H ** 0.5
    w2 = torch.randn(s.E, s.H, s.I, device="cuda", dtype=torch.bfloat16) / s.I ** 0.5
    xs = [torch.randn(1, s.H, device="cuda", dtype=torch.bfloat16) for _ in range(ROT)]
    lgs = [torch.randn(1, s.E, device="cuda") for _ in range(ROT)]
    routed = [select_experts_triton(lg, s.top_k) for lg in lgs]
    cases = {
        "routing": lambda: [select_experts_triton(lg, s.top_k) for lg in lgs],
        "gemv": lambda: [moe_gemv(x, w13, w2, tw, ti) for x, (tw, ti) in zip(xs, routed)],
        "forward": lambda: [fused_moe(x, w13, w2, lg, s.top_k) for x, lg in zip(xs, lgs)],
    }
    for name, fn in cases.items():
        res[name] = _median_us(fn) / ROT
        print(f"{name:12s} {res[name]:7.2f} us", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
