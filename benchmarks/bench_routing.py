"""Routing alone (:func:`moekit.select_experts`), Triton kernel against the PyTorch implementation, as CUDA-graph
replay (median), for the routing of the benchmark shapes: DeepSeek-V3's grouped top-k with correction bias
(sigmoid, 8 groups, 4 kept, top-8 of 256) and Qwen3-30B-A3B's softmax top-8 of 128. GPU only.

* ``--tokens-per-program``: arms of ``moekit.kernels.routing.TOKENS_PER_PROGRAM`` (the kernel's tokens per
  program), timed interleaved.
* ``--fused``: also routing + alignment at decode sizes, fused (``moekit.align.route_and_align``, one program)
  against the routing kernel followed by ``moekit.align.moe_align_block_size`` (two steps).

    PYTHONPATH=src python3 benchmarks/bench_routing.py [--m 1,4,16,64,256,1024,4096] [--tokens-per-program 1,16]
        [--fused 1,2,4,8,16,32] [--fused-warps 1,4] [--out F.json]
"""
from __future__ import annotations

import argparse
import json

import torch
import triton

import moekit.kernels.align as ka
import moekit.kernels.routing as kr
from moekit.align import moe_align_block_size, route_and_align
from moekit.bench import _median_us
from moekit.routing import select_experts_torch
from moekit.shapes import SHAPES

ROTATE = 8
BLOCK_M = 16  # the alignment block of the fused arm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,4,16,64,256,1024,4096")
    ap.add_argument("--shapes", default="dsv3,qwen3_30b_a3b")
    ap.add_argument("--tokens-per-program", default=str(kr.TOKENS_PER_PROGRAM))
    ap.add_argument("--fused", default="", help="M values of the fused route-and-align comparison")
    ap.add_argument("--fused-warps", default="", help="also the fused kernel at these kernels.align.FUSED_WARPS")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    arms = [int(v) for v in args.tokens_per_program.split(",")]
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "points": [], "fused": []}
    print(f"{res['device']} torch {res['torch']} triton {res['triton']}", flush=True)
    shipped = kr.TOKENS_PER_PROGRAM
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        bias = torch.randn(shape.E, device="cuda") * 0.1 if shape.num_expert_group else None
        kw = dict(correction_bias=bias, **shape.route_kwargs())
        for m in [int(v) for v in args.m.split(",")]:
            lgs = [torch.randn(m, shape.E, device="cuda") for _ in range(ROTATE)]
            us = {}
            for t in arms:
                kr.TOKENS_PER_PROGRAM = t
                for lg in lgs:  # the two implementations agree before they are timed
                    w, ids = kr.select_experts_triton(lg, shape.top_k, **kw)
                    w_ref, ids_ref = select_experts_torch(lg, shape.top_k, **kw)
                    assert torch.equal(ids, ids_ref), name
                    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
            runs = {f"triton_t{t}": (t, kr.select_experts_triton) for t in arms}
            runs["torch"] = (shipped, select_experts_torch)
            for _ in range(2):
                for label, (t, fn) in runs.items():
                    kr.TOKENS_PER_PROGRAM = t

                    def run(fn=fn):
                        for lg in lgs:
                            fn(lg, shape.top_k, **kw)
                    us[label] = min(us.get(label, float("inf")), _median_us(run) / ROTATE)
            res["points"].append({"shape": name, "M": m, "us": us})
            print(f"{name:14s} M={m:5d}  " + "  ".join(f"{k} {v:7.2f}" for k, v in us.items()) + " us", flush=True)
        kr.TOKENS_PER_PROGRAM = shipped
        fkw = {k: v for k, v in kw.items() if k != "scoring"}
        for m in [int(v) for v in args.fused.split(",") if v]:
            lgs = [torch.randn(m, shape.E, device="cuda") for _ in range(ROTATE)]

            def fused():
                for lg in lgs:
                    route_and_align(lg, shape.top_k, True, shape.scoring, shape.E, BLOCK_M, **fkw)

            def two_step():
                for lg in lgs:
                    _, ids = kr.select_experts_triton(lg, shape.top_k, **kw)
                    moe_align_block_size(ids, shape.E, BLOCK_M, use_triton=True)
            ids = [kr.select_experts_triton(lg, shape.top_k, **kw)[1] for lg in lgs]

            def align():
                for i in ids:
                    moe_align_block_size(i, shape.E, BLOCK_M, use_triton=True)
            us = {"fused": _median_us(fused) / ROTATE, "two_step": _median_us(two_step) / ROTATE,
                  "align": _median_us(align) / ROTATE}
            shipped_warps = ka.FUSED_WARPS
            for w in filter(None, args.fused_warps.split(",")):
                ka.FUSED_WARPS = int(w)
                us[f"fused_w{w}"] = _median_us(fused) / ROTATE
            ka.FUSED_WARPS = shipped_warps
            res["fused"].append({"shape": name, "M": m, "us": us})
            print(f"{name:14s} M={m:5d}  route+align fused {us['fused']:7.2f} us  two steps {us['two_step']:7.2f} us"
                  f"  (align alone {us['align']:7.2f})"
                  + "".join(f"  {k} {v:7.2f}" for k, v in us.items() if k.startswith("fused_w")), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
