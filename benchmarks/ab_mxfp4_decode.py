"""A/B of moekit's inline-PTX mxfp4 weight decode (``moekit.quant.triton_moe.MX_PTX_DECODE``) against the
decode it replaces: ``tl.dot_scaled``'s upcast in the grouped GEMMs (M >= 16 for gpt-oss-20b), Triton integer
ops in the decode GEMVs (M <= 8). Whole forward (routing included) as CUDA-graph replay, the two arms
interleaved over several rounds in one process (best median per arm). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_mxfp4_decode.py [--m 16,64,256,1024,4096] [--rounds 3] [--out F.json]
        [--configs 32,64,32,1,4,4 ...]

``--configs``: more arms, each a kernel config (BLOCK_SIZE_M,N,K, GROUP_SIZE_M, num_warps, num_stages) forced
at every M, with the decode that ``mxfp4_ptx_decode`` picks for it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
import moekit.quant.triton_moe as tq  # noqa: E402
from moekit.configs import MoEKernelConfig  # noqa: E402
from bench_quant import ROTATE, make_quant_weights, quant_forward  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.quant import QuantScheme  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="gpt_oss_20b")
    ap.add_argument("--m", default="16,64,256,1024,4096")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--configs", nargs="*", default=[])
    args = ap.parse_args()
    real_config = tq.quant_config
    shape, scheme = SHAPES[args.shape], QuantScheme.mxfp4()
    weights = make_quant_weights(shape, scheme)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "shape": args.shape, "rounds": args.rounds, "points": []}
    for m in [int(v) for v in args.m.split(",")]:
        run, _, _ = quant_forward(shape, scheme, weights, None, m)
        best = {"ptx": float("inf"), "off": float("inf"), **{c: float("inf") for c in args.configs}}
        for _ in range(args.rounds):
            for arm in best:
                tq.MX_PTX_DECODE = arm != "off"
                if arm in args.configs:
                    cfg = MoEKernelConfig(*[int(v) for v in arm.split(",")])
                    tq.quant_config = lambda *a, **k: cfg  # noqa: E731 - benchmark-only override
                best[arm] = min(best[arm], _median_us(run) / ROTATE)
                tq.quant_config = real_config
        tq.MX_PTX_DECODE = True
        row = {"M": m, "ptx_us": best["ptx"], "off_us": best["off"], "speedup": best["off"] / best["ptx"],
               "configs_us": {c: best[c] for c in args.configs}}
        res["points"].append(row)
        print(f"M={m:5d}  ptx {row['ptx_us']:8.1f} us  off {row['off_us']:8.1f} us  "
              f"{row['speedup']:.3f}x" + "".join(f"  [{c}] {best[c]:8.1f}" for c in args.configs), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
