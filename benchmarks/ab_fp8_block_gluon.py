"""A/B of the Hopper Gluon fp8 block GEMMs (``moekit.kernels.moe_gemm_sm90``, rule
``moekit.quant.triton_moe.fp8_block_gluon``) against the Triton kernels they replace. Whole forward (routing,
activation quantization and alignment included) as CUDA-graph replay, the arms interleaved over several rounds
in one process (best median per arm), with the share of fp8 peak (``torch._scaled_mm`` 8192^3, same run).
The row threshold is lifted, so every M runs both arms. GPU only.

    PYTHONPATH=src python3 benchmarks/ab_fp8_block_gluon.py [--shapes dsv3,qwen3_30b_a3b] [--m 256,1024,4096]
        [--rounds 3] [--variants 4,4,256 3,4,128 ...] [--out F.json]

``--variants``: more Gluon arms, each ``GEMM1_STAGES,GEMM2_STAGES,GEMM2_BLOCK_N,GEMM2_WARPS``, or ``gm=N``: the
shipped kernels with GROUP_SIZE_M forced to N (the launch order; the tuned files' value otherwise), or
``ws2`` / ``ws``: GEMM 2 / both GEMMs replaced by the warp-specialized prototypes of
``benchmarks/proto_ws_fp8_block.py``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
import moekit.quant.triton_moe as tq  # noqa: E402
from ab_cases import interleaved_best  # noqa: E402
from bench_quant import make_quant_weights, quant_forward  # noqa: E402
from moekit.bench import measure_ceilings  # noqa: E402
from moekit.kernels import moe_gemm_sm90 as g  # noqa: E402
from moekit.quant import QuantScheme  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402


_SHIPPED = (g.GEMM1_STAGES, g.GEMM2_STAGES, g.GEMM2_BLOCK_N, g.GEMM2_WARPS)


_QUANT_CONFIG = tq.quant_config
_GEMMS = g.moe_gemm1_fp8_block_sm90, g.moe_gemm2_fp8_block_sm90


def _arm(name: str) -> None:
    """Set the module switches of arm ``name`` ('triton', 'gluon', 'gm=N', 'ws', 'ws2' or a variant 's1,s2,bn,w2')."""
    tq.FP8_BLOCK_GLUON = name != "triton"
    tq.quant_config = _QUANT_CONFIG
    g.moe_gemm1_fp8_block_sm90, g.moe_gemm2_fp8_block_sm90 = _GEMMS
    if name in ("ws", "ws2"):
        from proto_ws_fp8_block import moe_gemm1_ws, moe_gemm2_ws

        g.moe_gemm2_fp8_block_sm90 = moe_gemm2_ws
        if name == "ws":
            g.moe_gemm1_fp8_block_sm90 = moe_gemm1_ws
    if name.startswith("gm="):
        gm = int(name[3:])
        tq.quant_config = lambda *a, **k: dataclasses.replace(_QUANT_CONFIG(*a, **k), GROUP_SIZE_M=gm)
    v = tuple(int(v) for v in name.split(",")) if "," in name else _SHIPPED
    g.GEMM1_STAGES, g.GEMM2_STAGES, g.GEMM2_BLOCK_N, g.GEMM2_WARPS = v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="dsv3,qwen3_30b_a3b")
    ap.add_argument("--m", default="256,1024,2048,4096")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="*", default=[])
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", action="store_true", help="per-kernel times of one eager forward, both arms")
    args = ap.parse_args()
    tq.FP8_BLOCK_GLUON_MIN_ROWS = 0
    scheme = QuantScheme.fp8_block(128, 128)
    ceil = measure_ceilings()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "fp8_tflops": ceil.fp8_flops_per_s / 1e12, "rounds": args.rounds, "points": []}
    print(f"{res['device']}  torch {res['torch']}  triton {res['triton']}  fp8 peak {res['fp8_tflops']:.0f} TFLOP/s")
    arms = ["gluon", "triton", *args.variants]
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        weights = make_quant_weights(shape, scheme)
        for m in [int(v) for v in args.m.split(",")]:
            run, once, _ = quant_forward(shape, scheme, weights, None, m)
            best = interleaved_best(run, arms, _arm, args.rounds, "gluon")
            flops = 2 * m * shape.top_k * 3 * shape.H * shape.I
            row = {"shape": name, "M": m, "us": best, "speedup": best["triton"] / best["gluon"],
                   "pct_fp8_peak": {a: 100 * flops / (t * 1e-6) / ceil.fp8_flops_per_s for a, t in best.items()}}
            if args.profile:
                from moekit.bench import kernel_times

                for a in arms:
                    _arm(a)
                    row[f"kernels_{a}"] = kernel_times(once)
                    print(f"  [{a}]\n{row[f'kernels_{a}']}")
                _arm("gluon")
            res["points"].append(row)
            if args.out:  # after every point: a run cut short keeps what it measured
                with open(args.out, "w") as f:
                    json.dump(res, f, indent=1)
            print(f"{name:14s} M={m:5d}  " + "  ".join(f"{a} {t:8.1f} us ({row['pct_fp8_peak'][a]:4.1f}%)"
                                                     for a, t in best.items()) + f"  {row['speedup']:.3f}x", flush=True)
        del weights
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
