"""Decode GEMV kernels vs the aligned grouped GEMMs, whole fused_moe (routing included) as CUDA-graph replay,
plus a sweep of the GEMV tile budget, K steps, warps and (``--stages``) the K loops' pipelining depth of
16-bit weights (``moe_gemv.GEMV_STAGES[16]``). GPU only.

    PYTHONPATH=src python3 benchmarks/bench_gemv.py [--out F.json] [--shapes qwen3_30b_a3b,mixtral8x7b]
        [--m 1,2,4,8] [--profile] [--stages]
"""
from __future__ import annotations

import argparse
import functools
import json
import os

import torch
import triton

import moekit.kernels.moe_gemv as gemv
import moekit.triton_experts as te
from moekit.bench import kernel_times, make_inputs, measure_ceilings, moekit_moe, time_moe
from moekit.shapes import SHAPES, moe_bytes_flops

# 16-bit GEMV_TILES entries (GEMV 1 tile, GEMV 2 tile, GEMV 1 K step, GEMV 2 K step) and num_warps; the shipped
# entry is timed first
VARIANTS = [(4096, 1024, 256, 128, 4), (4096, 1024, 256, 256, 4), (4096, 4096, 256, 128, 4),
            (4096, 2048, 512, 128, 4), (2048, 1024, 256, 128, 4)]
# --stages (session 12): the same entries plus a pipelining depth, the shipped tiles at every depth first
STAGE_VARIANTS = [(4096, 1024, 512, 256, 4, s) for s in (2, 3, 4)] + [
    (4096, 1024, 256, 256, 4, 3), (4096, 1024, 1024, 256, 4, 3), (2048, 1024, 512, 256, 4, 3),
    (8192, 1024, 512, 256, 4, 3), (4096, 2048, 512, 256, 4, 3), (4096, 512, 512, 128, 4, 3),
    (4096, 1024, 512, 256, 8, 3), (2048, 512, 256, 128, 4, 4)]


def print_point(label: str, row: dict) -> None:
    """One line per point: floor, grouped GEMMs, the best GEMV variant (``gemv_<variant>_us`` keys) and every
    variant, each with its share of the floor; ``applies``: whether the shipped rule takes the GEMV there."""
    floor, times = row["floor_us"], {k[5:-3]: v for k, v in row.items() if k.startswith("gemv_") and v}
    best = min(times, key=times.get)
    print(f"{label} M={row['M']:3d} floor {floor:7.1f}  grouped {row['grouped_us']:7.1f} us "
          f"({100 * floor / row['grouped_us']:4.1f}%)  gemv best {times[best]:7.1f} us "
          f"({100 * floor / times[best]:4.1f}%, {best})  applies={row['applies']}  "
          + " ".join(f"{k}={v:.1f}" for k, v in times.items()), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--shapes", default="qwen3_30b_a3b,mixtral8x7b,gpt_oss_20b")
    ap.add_argument("--m", default="1,2,4,8")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--stages", action="store_true", help="sweep STAGE_VARIANTS instead of VARIANTS")
    args = ap.parse_args()
    ceil = measure_ceilings()
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}: HBM "
          f"{ceil.hbm_bytes_per_s / 1e12:.2f} TB/s", flush=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "hbm_bytes_per_s": ceil.hbm_bytes_per_s, "points": []}
    real_gemv, shipped, shipped_stages = gemv.moe_gemv, dict(gemv.GEMV_TILES), dict(gemv.GEMV_STAGES)
    variants = [(*shipped[16], 4, shipped_stages[16])] + (
        STAGE_VARIANTS if args.stages else [(*v, shipped_stages[16]) for v in VARIANTS])
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        for m in [int(v) for v in args.m.split(",")]:
            inputs = make_inputs(shape, m)
            nbytes, _ = moe_bytes_flops(shape, m)
            floor = nbytes / ceil.hbm_bytes_per_s * 1e6
            row = {"shape": name, "M": m, "floor_us": floor, "applies": gemv.gemv_applies(m, shape.E, shape.top_k)}
            os.environ["MOEKIT_DECODE_GEMV"] = "0"
            row["grouped_us"] = time_moe(moekit_moe, shape, m, inputs)
            os.environ["MOEKIT_DECODE_GEMV"] = "1"
            te.gemv_applies = lambda *a, **k: True  # time the GEMV path even where the default would not take it
            for t1, t2, k1, k2, warps, stages in variants:
                gemv.GEMV_TILES = {**shipped, 16: (t1, t2, k1, k2)}
                gemv.GEMV_STAGES = {**shipped_stages, 16: stages}
                te.moe_gemv = functools.partial(real_gemv, num_warps=warps)
                key = f"gemv_t{t1}_{t2}_k{k1}_{k2}_w{warps}" + (f"_s{stages}" if args.stages else "") + "_us"
                try:
                    row[key] = time_moe(moekit_moe, shape, m, inputs)
                except Exception as e:  # noqa: BLE001 - record and go on
                    row[key] = None
                    print(f"  {key}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            gemv.GEMV_TILES, gemv.GEMV_STAGES = shipped, shipped_stages
            te.moe_gemv = real_gemv
            if args.profile and m == 1:
                w13, w2, xs, lgs, bias = inputs
                print(kernel_times(lambda: moekit_moe(xs[0], w13, w2, lgs[0], shape, bias)), flush=True)
            te.gemv_applies = gemv.gemv_applies
            print_point(f"{name:14s}", row)
            res["points"].append(row)
            del inputs
            torch.cuda.empty_cache()
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
