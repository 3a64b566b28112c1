"""Quantized decode GEMV (fp8, int8 weight-only, mxfp4 weights) vs the aligned grouped GEMMs, whole fused_moe
(routing and, on the grouped path, activation quantization included) as CUDA-graph replay, with a sweep of
the GEMV tiles, K steps and warps. The GEMV path is forced at every point (also where
``gemv_applies`` would not take it), so the table shows where it should. GPU only.

    PYTHONPATH=src python3 benchmarks/bench_gemv_quant.py [--out F.json]
        [--cases qwen3_30b_a3b:fp8_block:1,2,4 gpt_oss_20b:mxfp4:1,2,4,8,16 ...]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.moe_gemv as gemv  # noqa: E402
import moekit.triton_experts as te  # noqa: E402
from bench_gemv import print_point  # noqa: E402
from bench_quant import ROTATE, WEIGHT_BYTES, experts_touched, make_quant_weights, quant_forward  # noqa: E402
from moekit.bench import _median_us, kernel_times, measure_ceilings  # noqa: E402
from moekit.quant import QuantScheme  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

SCHEMES = {"fp8_block": lambda: QuantScheme.fp8_block(128, 128), "fp8_channel": QuantScheme.fp8_channel,
           "fp8_tensor": QuantScheme.fp8_tensor, "int8_weight_only": QuantScheme.int8_weight_only,
           "mxfp4": QuantScheme.mxfp4}
DEFAULT_CASES = ["qwen3_30b_a3b:fp8_block:1,2,4", "gpt_oss_20b:mxfp4:1,2,4,8,16", "dsv3:fp8_block:1,2,4,8",
                 "qwen3_30b_a3b:int8_weight_only:1,2", "qwen3_30b_a3b:fp8_channel:1,2"]
# per weight format (moe_gemv._weight_bits): GEMV_TILES entries (GEMV 1 tile, GEMV 2 tile, GEMV 1 K step, GEMV 2
# K step) and num_warps; the shipped entry is timed first
# (8-bit, session 13: larger tiles, since an fp8 tile of 4096 elements moves half the bytes of a bf16 one)
VARIANTS = {8: [(8192, 1024, 512, 256, 4), (8192, 2048, 512, 256, 4), (4096, 2048, 512, 256, 4),
                (4096, 1024, 512, 256, 8), (8192, 1024, 1024, 256, 4), (2048, 1024, 256, 256, 4)],
            4: [(16384, 8192, 1024, 256, 4), (8192, 8192, 512, 128, 4), (16384, 8192, 512, 256, 4),
                (16384, 16384, 1024, 512, 4), (8192, 4096, 1024, 256, 4)]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--cases", nargs="*", default=DEFAULT_CASES, help="shape:scheme:M,M,...")
    ap.add_argument("--profile", action="store_true", help="per-kernel times of one eager forward at M=1")
    args = ap.parse_args()
    ceil = measure_ceilings()
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}: HBM "
          f"{ceil.hbm_bytes_per_s / 1e12:.2f} TB/s", flush=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "hbm_bytes_per_s": ceil.hbm_bytes_per_s, "variants": VARIANTS, "points": []}
    real_gemv, real_applies = gemv.moe_gemv, gemv.gemv_applies
    shipped = dict(gemv.GEMV_TILES)
    for case in args.cases:
        name, key, ms = case.split(":")
        shape, scheme = SHAPES[name], SCHEMES[key]()
        w13, s13, w2, s2 = make_quant_weights(shape, scheme)
        bias = torch.randn(shape.E, device="cuda") * 0.1 if shape.num_expert_group else None
        for m in [int(v) for v in ms.split(",")]:
            run, once, lgs = quant_forward(shape, scheme, (w13, s13, w2, s2), bias, m)
            touched = experts_touched(shape, lgs, bias)
            floor = (touched * 3 * shape.H * shape.I * WEIGHT_BYTES[scheme.weight_dtype] + 4 * m * shape.H) \
                / ceil.hbm_bytes_per_s * 1e6
            row = {"shape": name, "scheme": scheme.name, "M": m, "floor_us": floor,
                   "applies": te.use_decode_gemv(m, shape.E, shape.top_k, scheme)}
            os.environ["MOEKIT_DECODE_GEMV"] = "0"
            row["grouped_us"] = _median_us(run) / ROTATE
            os.environ["MOEKIT_DECODE_GEMV"] = "1"
            te.gemv_applies = lambda *a, **k: True  # time the GEMV path even where the default would not take it
            bits = gemv._weight_bits(scheme)
            for t1, t2, k1, k2, warps in [(*shipped[bits], 4)] + VARIANTS.get(bits, []):
                gemv.GEMV_TILES = {**shipped, bits: (t1, t2, k1, k2)}
                te.moe_gemv = functools.partial(real_gemv, num_warps=warps)
                k = f"gemv_t{t1}_{t2}_k{k1}_{k2}_w{warps}_us"
                try:
                    row[k] = _median_us(run) / ROTATE
                except Exception as e:  # noqa: BLE001 - record and go on
                    row[k] = None
                    print(f"  {k}: {type(e).__name__}: {str(e)[:300]}", flush=True)
            gemv.GEMV_TILES = shipped
            te.moe_gemv, te.gemv_applies = real_gemv, real_applies
            if args.profile and m == 1:
                print(kernel_times(once), flush=True)
            print_point(f"{name:14s} {scheme.name:18s}", row)
            res["points"].append(row)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(res, f, indent=1)
        del w13, s13, w2, s2
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
