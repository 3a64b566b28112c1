"""Probe (GPU only): would Qwen3-30B-A3B fp8 block (M = 16-256, shipped H100 tiles 16 x 128) gain from narrower
tiles now that GEMM 2 can take K steps spanning several of GEMM 1's output groups (rule "ka" of
``moekit.quant.triton_moe.gemm2_split_config``; Qwen3's GEMM 2 has K = 768, 6 steps, under ``KA_MIN_STEPS``, so
the probe lowers it to 1)? Whole forward (routing + fused experts at a given config) as CUDA-graph replay
(``moekit.tune.GpuTimer``), arms interleaved over rounds, best kept.

    PYTHONPATH=src python3 benchmarks/probe_qwen3_fp8_block_bn64.py [--m 16,64,256] [--rounds 2] [--out F.json]
"""
from __future__ import annotations

import argparse
import json

import torch
import triton

import moekit.quant.triton_moe as tq
from moekit.configs import MoEKernelConfig
from moekit.quant.triton_moe import quant_config
from moekit.tune import GpuTimer, scheme_for_spec, spec_for_model

CANDIDATES = [MoEKernelConfig(16, 64, 128, 1, 4, 3), MoEKernelConfig(16, 64, 128, 1, 4, 4),
              MoEKernelConfig(16, 32, 128, 1, 4, 4)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="16,32,64,128,256")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    spec = spec_for_model("qwen3_30b_a3b", dtype="fp8_w8a8", block_shape=[128, 128])
    timer = GpuTimer(spec)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "points": []}
    tq.KA_MIN_STEPS = 1
    for m in [int(v) for v in args.m.split(",")]:
        shipped = quant_config(spec.E, spec.N, spec.K, spec.top_k, m, scheme_for_spec(spec))
        arms = [("shipped", shipped, "ka")] + [(f"{c.short()}_{r}", c, r) for c in CANDIDATES
                                               for r in ("none", "ka")]
        best = {}
        for _ in range(args.rounds):
            for name, c, rule in arms:
                tq.GEMM2_SPLIT_RULE = rule
                best[name] = min(best.get(name, float("inf")), timer(m, c, 300))
        tq.GEMM2_SPLIT_RULE = "ka"
        res["points"].append({"M": m, "shipped": shipped.short(), "us": best})
        print(f"M={m:4d} shipped {shipped.short()} {best['shipped']:.1f} us  "
              + "  ".join(f"{k} {v:.1f}" for k, v in best.items() if k != "shipped"), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
