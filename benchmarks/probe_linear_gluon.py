"""Probe: the dense block-fp8 GEMM through the MoE's Hopper Gluon kernel (``moe_gemm2_fp8_block_sm90`` with one
"expert", identity row order, no routing weight) against the router as shipped, on the dense router's shapes.

    PYTHONPATH=src python3 benchmarks/probe_linear_gluon.py [--m 256 1024 4096] [--out FILE.json]

Both arms include the activation quantization (per (token, 128) group); CUDA-graph replay, weights under 64 MB
rotated (``moekit.linear_tune.Problem``), arms interleaved over ``--rounds``, median.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch


def gluon_linear(x, w, ws, cache):
    """out [M, N] = x [M, K] @ dequant(w [N, K] fp8, ws [N/128, K/128])^T via the MoE GEMM 2 Gluon kernel."""
    from moekit.kernels import moe_gemm_sm90
    from moekit.kernels.quant import group_quant
    from moekit.quant.ops import _qparams

    M, K = x.shape
    N = w.shape[0]
    bm = moe_gemm_sm90.GEMM1_TILE[0]
    P = -(-M // bm) * bm
    key = (P, K)
    if key not in cache:
        cache[key] = (torch.empty((P, K), dtype=w.dtype, device=x.device),
                      torch.empty((P, K // 128), dtype=torch.float32, device=x.device),
                      torch.arange(P, dtype=torch.int32, device=x.device),
                      torch.zeros(P // bm, dtype=torch.int32, device=x.device),
                      torch.full((1,), P, dtype=torch.int32, device=x.device))
    q, s, sorted_ids, expert_ids, npp = cache[key]
    qkind, qmax, emin = _qparams(w.dtype)
    group_quant(x, q, s, 128, qkind, qmax, emin)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    moe_gemm_sm90.moe_gemm2_fp8_block_sm90(q, s, w.unsqueeze(0), ws.unsqueeze(0), out, out, sorted_ids, expert_ids,
                                           npp, 8, mul_weight=False)
    return out


def main() -> None:
    from moekit.linear import linear
    from moekit.linear_tune import SHAPES, Problem, time_us
    from moekit.quant.scheme import QuantScheme
    from moekit.testing import rel_frobenius_error

    ap = argparse.ArgumentParser()
    ap.add_argument("--m", nargs="+", type=int, default=[256, 1024, 4096])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    scheme = QuantScheme.fp8_block(128, 128)
    rows = []
    for name, (N, K) in SHAPES.items():
        if N % 128 or K % 256:
            print(f"{name}: N={N} K={K} not multiples of 128 / 256, skipped")
            continue
        prob = Problem(N, K, scheme)
        cache: dict = {}
        ws = prob.scale
        for M in args.m:
            x = prob.x(M)
            ref = linear(x, prob.weight, quant=scheme, weight_scale=prob.scale)
            got = gluon_linear(x, prob.weight, prob.scale, cache)
            err = rel_frobenius_error(got, ref)
            arms = {"shipped": prob.run_fn(M, lambda a, w: linear(a, w, quant=scheme, weight_scale=ws)),
                    "gluon": prob.run_fn(M, lambda a, w: gluon_linear(a, w, ws, cache))}
            times = {a: [] for a in arms}
            for _ in range(args.rounds):
                for a, fn in arms.items():
                    times[a].append(time_us(fn))
            med = {a: statistics.median(v) for a, v in times.items()}
            row = dict(shape=name, N=N, K=K, M=M, err_vs_router=err, **{f"{a}_us": v for a, v in med.items()},
                       speedup=med["shipped"] / med["gluon"])
            rows.append(row)
            print(f"{name:22s} M={M:5d} shipped {med['shipped']:9.2f} us  gluon {med['gluon']:9.2f} us  "
                  f"x{row['speedup']:.3f}  err {err:.1e}", flush=True)
        del prob
        torch.cuda.empty_cache()
    if args.out:
        from moekit.linear_tune import meta

        with open(args.out, "w") as f:
            json.dump({"meta": meta(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
