"""A/B of mxfp4 weights in the plain layout (arm ``plain``: the shipped path) against the "mma" layout
(:func:`moekit.quant.weights.mma_layout`, arm ``mma``), and the "mma" layout under other kernel configs (arms
``mma:BMxBNxBKxWARPSxSTAGES``, every M of the case). Whole fused_moe (routing included) as CUDA-graph replay
over ``bench_quant.ROTATE`` random inputs, every arm once per round, rounds interleaved, best median per arm.
Prints each point's relative error of ``mma`` against ``plain`` (the same codes, so only the summation
order differs). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_mxfp4_layout.py [--rounds 3] [--out F.json]
        [--arms plain,mma,mma:64x64x128x4x3] [--cases gpt_oss_20b:mxfp4:16,64,256]
"""
from __future__ import annotations

import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
import moekit.quant.triton_moe as tm  # noqa: E402
from ab_cases import parser  # noqa: E402
from bench_quant import ROTATE, make_quant_weights, quant_forward  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.configs import MoEKernelConfig  # noqa: E402
from moekit.quant import QuantScheme  # noqa: E402
from moekit.quant.weights import mma_layout  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

SHIPPED_CONFIG = tm.quant_config


def _set_config(spec: str) -> None:
    if not spec:
        tm.quant_config = SHIPPED_CONFIG
        return
    bm, bn, bk, w, s = (int(v) for v in spec.split("x"))
    tm.quant_config = lambda *a, **k: MoEKernelConfig(bm, bn, bk, 1, w, s)


def main() -> None:
    ap = parser(__doc__, "plain,mma", ["gpt_oss_20b:mxfp4:16,64,256,1024,4096"])
    args = ap.parse_args()
    arms = args.arms.split(",")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "rounds": args.rounds, "arms": arms, "points": []}
    print(f"{res['device']} torch {res['torch']} triton {res['triton']}", flush=True)
    plain_s, mma_s = QuantScheme.mxfp4(), QuantScheme.mxfp4("mma")
    for case in args.cases:
        name, _, ms = case.split(":")
        shape = SHAPES[name]
        w13, s13, w2, s2 = make_quant_weights(shape, plain_s)
        mma_w = (mma_layout(w13), s13, mma_layout(w2), s2)
        for m in [int(v) for v in ms.split(",")]:
            torch.manual_seed(m)
            runs = {}
            for a in arms:
                torch.manual_seed(m)  # the same inputs for every arm
                if a == "plain":
                    runs[a] = quant_forward(shape, plain_s, (w13, s13, w2, s2), None, m)
                else:
                    runs[a] = quant_forward(shape, mma_s, mma_w, None, m)
            _set_config("")
            ref = runs["plain"][1]().double() if "plain" in runs else None
            err = {}
            for a in arms:
                if a != "plain" and ref is not None:
                    _set_config(a.partition(":")[2])
                    out = runs[a][1]().double()
                    err[a] = ((out - ref).norm() / ref.norm()).item() if out.isfinite().all() else float("nan")
            best = {a: float("inf") for a in arms}
            for _ in range(args.rounds):
                for a in arms:
                    _set_config(a.partition(":")[2])
                    best[a] = min(best[a], _median_us(runs[a][0]) / ROTATE)
            _set_config("")
            res["points"].append({"case": case.rpartition(":")[0], "M": m, "us": best, "rel_err_vs_plain": err})
            print(f"{name:14s} M={m:5d}  " + "  ".join(f"{a} {best[a]:7.1f}" for a in arms)
                  + f"  best {min(best, key=best.get)} {best[arms[0]] / min(best.values()):.3f}x"
                  + "  err " + " ".join(f"{v:.1e}" for v in err.values()), flush=True)
        del w13, w2, mma_w
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
