"""A/B of the decode path choice (``moekit.triton_experts.use_decode_gemv``): arm ``shipped`` (the rule as
shipped) against ``gemv`` (the decode GEMV kernels forced, weight formats they support) and ``grouped`` (the
aligned grouped GEMMs forced), whole fused_moe (routing included) as CUDA-graph replay, arms interleaved over
several rounds in one process (best median per arm). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_gemv_path.py [--arms shipped,gemv,grouped] [--rounds 3] [--out F.json]
        [--cases mixtral8x7b:fp8_tensor:1,2,4 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
import moekit.triton_experts as te  # noqa: E402
from ab_gemv_stages import SCHEMES, bf16_weights  # noqa: E402
from bench_quant import ROTATE, make_quant_weights, quant_forward  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.kernels.moe_gemv import gemv_supports  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

SCHEMES = {**SCHEMES, "fp8_tensor": lambda: __import__("moekit").QuantScheme.fp8_tensor()}
CASES = ["mixtral8x7b:fp8_tensor:1,2,4", "mixtral8x7b:bf16:1,2", "qwen3_30b_a3b:fp8_block:4",
         "qwen3_30b_a3b:bf16:8"]
SHIPPED = te.use_decode_gemv


def set_arm(arm: str) -> None:
    if arm == "shipped":
        te.use_decode_gemv = SHIPPED
    elif arm == "gemv":
        te.use_decode_gemv = lambda m, e, k, quant=None, static=False: (
            m >= 1 and (quant is None or not quant.is_quantized or (gemv_supports(quant) and not static)))
    else:
        te.use_decode_gemv = lambda *a, **k: False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arms", default="shipped,gemv,grouped")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", nargs="*", default=CASES, help="shape:scheme:M,M,...")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    arms = args.arms.split(",")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "rounds": args.rounds, "arms": arms, "points": []}
    print(f"{res['device']} torch {res['torch']} triton {res['triton']}", flush=True)
    for case in args.cases:
        name, key, ms = case.split(":")
        shape, scheme = SHAPES[name], SCHEMES[key]()
        weights = bf16_weights(shape) if scheme is None else make_quant_weights(shape, scheme)
        bias = torch.randn(shape.E, device="cuda") * 0.1 if shape.num_expert_group else None
        for m in [int(v) for v in ms.split(",")]:
            run, _, _ = quant_forward(shape, scheme, weights, bias, m)
            best = {a: float("inf") for a in arms}
            for _ in range(args.rounds):
                for a in arms:
                    set_arm(a)
                    best[a] = min(best[a], _median_us(run) / ROTATE)
            set_arm("shipped")
            res["points"].append({"case": f"{name}:{key}", "M": m, "us": best})
            print(f"{name:14s} {key:16s} M={m:3d}  " + "  ".join(f"{a} {best[a]:7.1f}" for a in arms), flush=True)
        del weights
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
