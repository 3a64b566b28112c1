"""A/B of the decode GEMVs' K-loop pipelining depth (``moekit.kernels.moe_gemv.GEMV_STAGES``, one depth for every
weight format per arm: 1 = plain loads, N > 1 = ``tl.range(num_stages=N)``, weight tiles staged through shared
memory by cp.async), whole fused_moe
(routing included) as CUDA-graph replay, arms interleaved over several rounds in one process (best median per
arm). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_gemv_stages.py [--stages 1,2,3,4] [--rounds 3] [--out F.json]
        [--cases qwen3_30b_a3b:bf16:1,2,4 gpt_oss_20b:mxfp4:1,2,4 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.moe_gemv as gemv  # noqa: E402
from bench_quant import ROTATE, make_quant_weights, quant_forward  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.quant import QuantScheme  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

SCHEMES = {"bf16": lambda: None, "fp8_block": lambda: QuantScheme.fp8_block(128, 128),
           "fp8_channel": QuantScheme.fp8_channel, "int8_weight_only": QuantScheme.int8_weight_only,
           "mxfp4": QuantScheme.mxfp4}
CASES = ["qwen3_30b_a3b:bf16:1,2,4", "gpt_oss_20b:bf16:1,2", "qwen3_30b_a3b:fp8_block:1,2", "dsv3:fp8_block:1,2,4",
         "qwen3_30b_a3b:fp8_channel:1", "qwen3_30b_a3b:int8_weight_only:1", "gpt_oss_20b:mxfp4:1,2,4"]


def bf16_weights(shape):
    g = torch.Generator(device="cuda").manual_seed(0)
    w13 = torch.randn(shape.E, 2 * shape.I, shape.H, device="cuda", generator=g, dtype=torch.bfloat16) / shape.H ** 0.5
    w2 = torch.randn(shape.E, shape.H, shape.I, device="cuda", generator=g, dtype=torch.bfloat16) / shape.I ** 0.5
    return w13, None, w2, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", default="1,2,3,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", nargs="*", default=CASES, help="shape:scheme:M,M,...")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    arms = [int(v) for v in args.stages.split(",")]
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "rounds": args.rounds, "stages": arms, "points": []}
    print(f"{res['device']} torch {res['torch']} triton {res['triton']}", flush=True)
    shipped = dict(gemv.GEMV_STAGES)
    for case in args.cases:
        name, key, ms = case.split(":")
        shape, scheme = SHAPES[name], SCHEMES[key]()
        weights = bf16_weights(shape) if scheme is None else make_quant_weights(shape, scheme)
        bias = torch.randn(shape.E, device="cuda") * 0.1 if shape.num_expert_group else None
        for m in [int(v) for v in ms.split(",")]:
            run, _, _ = quant_forward(shape, scheme, weights, bias, m)
            best = {s: float("inf") for s in arms}
            for _ in range(args.rounds):
                for s in arms:
                    gemv.GEMV_STAGES = dict.fromkeys(shipped, s)
                    best[s] = min(best[s], _median_us(run) / ROTATE)
            gemv.GEMV_STAGES = shipped
            res["points"].append({"case": f"{name}:{key}", "M": m, "us": {str(s): best[s] for s in arms}})
            print(f"{name:14s} {key:16s} M={m:3d}  " + "  ".join(f"s{s} {best[s]:7.1f}" for s in arms)
                  + f"  best s{min(best, key=best.get)} {best[arms[0]] / min(best.values()):.3f}x", flush=True)
        del weights
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
