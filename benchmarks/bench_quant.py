"""Quantized fused MoE on GPU: the whole forward (routing + activation quant + experts) as CUDA-graph replay,
against the floor max(bytes / HBM, FLOPs / matmul peak) with the weights' real bytes (fp8: 1 B, mxfp4:
0.5 B + one e8m0 scale per 32) and ceilings measured in the same run (HBM, bf16 and fp8 torch._scaled_mm).

    PYTHONPATH=src python3 benchmarks/bench_quant.py [--out results.json] [--shapes dsv3,...] [--m 1,16,...]
        [--mxfp4-path auto|dot_scaled|decode]   (A/B of tl.dot_scaled against moekit's in-kernel decode)
        [--gpt-oss-epilogue]   (activation swigluoai + expert biases, as gpt-oss runs)
        [--scheme int4_weight_only|int8_weight_only|fp8_channel|int8_channel]   (instead of each shape's own)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

import torch

from moekit.bench import _median_us, kernel_times, measure_ceilings
from moekit.experts import fused_moe
from moekit.quant import QuantScheme, quantize_weights
from moekit.shapes import SHAPES, moe_bytes_flops

CASES = {  # shape -> scheme
    "dsv3": QuantScheme.fp8_block(128, 128),
    "qwen3_30b_a3b": QuantScheme.fp8_block(128, 128),
    "mixtral8x7b": QuantScheme.fp8_tensor(),
    "gpt_oss_20b": QuantScheme.mxfp4(),
    "gpt_oss_120b": QuantScheme.mxfp4(),  # not in the default run: a shape with no tuned file
}
WEIGHT_BYTES = {"fp8": 1.0, "mxfp4": 0.5 + 1 / 32, "int8": 1.0, "int4": 0.5 + 4 / 128}  # + fp32 group scales
SCHEMES = {"int8_weight_only": QuantScheme.int8_weight_only, "int4_weight_only": QuantScheme.int4_weight_only,
           "fp8_channel": QuantScheme.fp8_channel, "int8_channel": QuantScheme.int8_channel,
           "mxfp4_mma": lambda: QuantScheme.mxfp4("mma")}  # gpt-oss shapes: H, I multiples of 64
ROTATE = 4


def make_quant_weights(shape, scheme, chunk=8, seed=0):
    """Quantized w13, w2 (and scales), made a few experts at a time so full-size layers fit in memory."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    parts13, parts2 = [], []
    for e0 in range(0, shape.E, chunk):
        n = min(chunk, shape.E - e0)
        w13 = torch.randn(n, 2 * shape.I, shape.H, device="cuda", generator=g) / shape.H ** 0.5
        parts13.append(quantize_weights(w13, scheme))
        del w13
        w2 = torch.randn(n, shape.H, shape.I, device="cuda", generator=g) / shape.I ** 0.5
        parts2.append(quantize_weights(w2, scheme))
        del w2
    cat = lambda parts, j: torch.cat([p[j] for p in parts]) if parts[0][j].dim() > 0 else None  # noqa: E731
    return cat(parts13, 0), cat(parts13, 1), cat(parts2, 0), cat(parts2, 1)


def quant_forward(shape, scheme, weights, bias, m, **extra):
    """(run, once, lgs): ``run`` replays the whole forward over :data:`ROTATE` random inputs of ``m`` tokens
    (so decode reads weights from HBM, not L2), ``once`` one forward (for profiles), ``lgs`` the logits.
    ``extra``: more fused_moe keywords."""
    w13, s13, w2, s2 = weights
    xs = [torch.randn(m, shape.H, device="cuda", dtype=torch.bfloat16) for _ in range(ROTATE)]
    lgs = [torch.randn(m, shape.E, device="cuda") for _ in range(ROTATE)]

    def once(x=xs[0], lg=lgs[0]):
        return fused_moe(x, w13, w2, lg, shape.top_k, correction_bias=bias, quant=scheme, w13_scale=s13,
                         w2_scale=s2, **shape.route_kwargs(), **extra)

    def run():
        for x, lg in zip(xs, lgs):
            once(x, lg)

    return run, once, lgs


def experts_touched(shape, lgs, bias) -> float:
    """Mean distinct experts the routing of each logits tensor picks (grouped / biased routing touches fewer
    than the uniform routing :func:`moekit.shapes.moe_bytes_flops` assumes)."""
    from moekit.routing import select_experts

    return sum(int(torch.unique(select_experts(lg, shape.top_k, correction_bias=bias,
                                               **shape.route_kwargs())[1]).numel()) for lg in lgs) / len(lgs)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--shapes", default=",".join(c for c in CASES if c != "gpt_oss_120b"))
    ap.add_argument("--m", default="1,16,64,256,1024,4096")
    ap.add_argument("--profile", action="store_true", help="per-kernel times of one eager forward per point")
    ap.add_argument("--scheme", choices=sorted(SCHEMES), default=None, help="one scheme for every shape")
    ap.add_argument("--mxfp4-path", choices=("auto", "dot_scaled", "decode"), default="auto",
                    help="auto: inline-PTX decode where it applies, else tl.dot_scaled; dot_scaled: tl.dot_scaled "
                         "only; decode: moekit's Triton decode")
    ap.add_argument("--gpt-oss-epilogue", action="store_true",
                    help="gpt-oss's real expert epilogue: activation swigluoai and random expert biases")
    args = ap.parse_args(argv)
    if args.mxfp4_path != "auto":
        import moekit.quant.triton_moe as tq

        tq.mxfp4_dot_scaled = lambda x: args.mxfp4_path == "dot_scaled"  # noqa: E731 - benchmark-only override
        tq.MX_PTX_DECODE = False
    import triton

    ceil = measure_ceilings()
    print(f"ceilings: HBM {ceil.hbm_bytes_per_s / 1e12:.2f} TB/s, bf16 {ceil.bf16_flops_per_s / 1e12:.0f}, "
          f"fp8 {ceil.fp8_flops_per_s / 1e12:.0f} TFLOP/s", flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "ceilings": asdict(ceil), "rotate": ROTATE, "mxfp4_path": args.mxfp4_path,
              "gpt_oss_epilogue": args.gpt_oss_epilogue, "points": []}
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        scheme = SCHEMES[args.scheme]() if args.scheme else CASES[name]
        t0 = time.time()
        w13, s13, w2, s2 = make_quant_weights(shape, scheme)
        print(f"{name} {scheme.name}: weights ready in {time.time() - t0:.1f}s", flush=True)
        bias = torch.randn(shape.E, device="cuda") * 0.1 if shape.num_expert_group else None
        epi = {}
        if args.gpt_oss_epilogue:
            epi = dict(activation="swigluoai",
                       w13_bias=torch.randn(shape.E, 2 * shape.I, device="cuda", dtype=torch.bfloat16),
                       w2_bias=torch.randn(shape.E, shape.H, device="cuda", dtype=torch.bfloat16))
        wbytes = WEIGHT_BYTES[scheme.weight_dtype]
        peak = ceil.fp8_flops_per_s if scheme.act_dtype in ("fp8", "int8") else ceil.bf16_flops_per_s
        for m in [int(v) for v in args.m.split(",")]:
            run, once, lgs = quant_forward(shape, scheme, (w13, s13, w2, s2), bias, m, **epi)
            if args.profile:
                print(f"  M={m} kernels:", flush=True)
                print(kernel_times(once), flush=True)
            try:
                us = _median_us(run) / ROTATE
            except Exception as e:  # noqa: BLE001 - record and go on
                print(f"  M={m}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                result["points"].append({"shape": name, "scheme": scheme.name, "M": m, "error": str(e)[:500]})
                continue
            nbytes, flops = moe_bytes_flops(shape, m, weight_bytes=wbytes)
            # the floor counts the experts this run's routing really touches
            touched = experts_touched(shape, lgs, bias)
            per_expert = 3 * shape.H * shape.I * wbytes
            nbytes = touched * per_expert + 2 * m * shape.H * 2  # weights + bf16 input and output
            t_mem, t_math = nbytes / ceil.hbm_bytes_per_s * 1e6, flops / peak * 1e6
            floor = max(t_mem, t_math)
            p = {"shape": name, "scheme": scheme.name, "M": m, "us": us, "floor_us": floor, "experts_touched": touched,
                 "bound": "memory" if t_mem >= t_math else "compute", "frac_of_floor": floor / us,
                 "tflops": flops / us / 1e6, "frac_of_peak": flops / us / 1e6 / (peak / 1e12),
                 "peak": scheme.act_dtype if scheme.act_dtype in ("fp8", "int8") else "bf16"}
            result["points"].append(p)
            print(f"  M={m:5d} {us:9.1f} us  floor {floor:8.1f} us ({p['bound']})  {100 * p['frac_of_floor']:5.1f}% "
                  f"of floor  {p['tflops']:6.1f} TFLOP/s = {100 * p['frac_of_peak']:5.1f}% of {p['peak']} peak",
                  flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(result, f, indent=1)
            del run, once, lgs
        del w13, s13, w2, s2
        torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
