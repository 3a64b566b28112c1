"""A/B of programmatic dependent launch in the decode forward (routing kernel -> GEMV 1 -> GEMV 2,
:mod:`moekit.kernels.pdl`): arms ``off`` (``MOEKIT_PDL=0``, plain launches), ``start`` and ``end`` (PDL on,
GEMV 1 letting GEMV 2 launch right after its own wait or after its K loop, for every weight format:
``moekit.kernels.moe_gemv.GEMV1_TRIGGER``), ``shipped`` (PDL on, the shipped per-format trigger). Whole fused_moe
(routing included) as CUDA-graph replay, arms interleaved over several rounds in one process (best median per
arm). GPU only (sm_90 or later for the PDL arms).

    PYTHONPATH=src python3 benchmarks/ab_pdl.py [--arms off,shipped,start,end] [--rounds 3] [--out F.json]
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
from ab_gemv_stages import CASES, SCHEMES, bf16_weights  # noqa: E402
from bench_quant import ROTATE, make_quant_weights, quant_forward  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

SHIPPED = dict(gemv.GEMV1_TRIGGER)


def set_arm(arm: str) -> None:
    """``off``: MOEKIT_PDL=0; ``start`` / ``end``: MOEKIT_PDL=1 and that GEMV 1 trigger; ``shipped``:
    MOEKIT_PDL=1 and the shipped triggers."""
    os.environ["MOEKIT_PDL"] = "0" if arm == "off" else "1"
    gemv.GEMV1_TRIGGER = dict(SHIPPED)
    if arm in ("start", "end"):
        gemv.GEMV1_TRIGGER = dict.fromkeys(gemv.GEMV_TILES, arm)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arms", default="off,shipped")
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
            res["points"].append({"case": f"{name}:{key}", "M": m, "us": best})
            print(f"{name:14s} {key:16s} M={m:3d}  " + "  ".join(f"{a} {best[a]:7.1f}" for a in arms)
                  + f"  best {min(best, key=best.get)} {best[arms[0]] / min(best.values()):.3f}x", flush=True)
        del weights
        torch.cuda.empty_cache()
    os.environ.pop("MOEKIT_PDL", None)
    gemv.GEMV1_TRIGGER = dict(SHIPPED)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
