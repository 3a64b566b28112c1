"""Routing alone (:func:`moekit.select_experts`), Triton kernel against the PyTorch implementation, as CUDA-graph
replay (median), for the routing of the benchmark shapes: DeepSeek-V3's grouped top-k with correction bias
(sigmoid, 8 groups, 4 kept, top-8 of 256) and Qwen3-30B-A3B's softmax top-8 of 128. GPU only.

    PYTHONPATH=src python3 benchmarks/bench_routing.py [--m 1,4,16,64,256,1024,4096] [--out F.json]
"""
from __future__ import annotations

import argparse
import json

import torch
import triton

from moekit.bench import _median_us
from moekit.kernels.routing import select_experts_triton
from moekit.routing import select_experts_torch
from moekit.shapes import SHAPES

ROTATE = 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,4,16,64,256,1024,4096")
    ap.add_argument("--shapes", default="dsv3,qwen3_30b_a3b")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "points": []}
    print(f"{res['device']} torch {res['torch']} triton {res['triton']}", flush=True)
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        bias = torch.randn(shape.E, device="cuda") * 0.1 if shape.num_expert_group else None
        kw = dict(correction_bias=bias, **shape.route_kwargs())
        for m in [int(v) for v in args.m.split(",")]:
            lgs = [torch.randn(m, shape.E, device="cuda") for _ in range(ROTATE)]
            for lg in lgs:  # the two implementations agree before they are timed
                w, ids = select_experts_triton(lg, shape.top_k, **kw)
                w_ref, ids_ref = select_experts_torch(lg, shape.top_k, **kw)
                assert torch.equal(ids, ids_ref), name
                torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
            us = {}
            for label, fn in (("triton", select_experts_triton), ("torch", select_experts_torch)):
                def run(fn=fn):
                    for lg in lgs:
                        fn(lg, shape.top_k, **kw)
                us[label] = _median_us(run) / ROTATE
            res["points"].append({"shape": name, "M": m, "us": us})
            print(f"{name:14s} M={m:5d}  triton {us['triton']:7.2f} us  torch {us['torch']:7.2f} us  "
                  f"{us['torch'] / us['triton']:.1f}x", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
