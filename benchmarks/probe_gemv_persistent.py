"""Probe (GPU only): GEMV 1 of the decode path (Qwen3-30B-A3B bf16, M = 1: 8 slots reading 50 MB of w13) alone,
shipped (``moe_gemv._moe_gemv1_kernel``: one program per (slot, BLOCK_N rows), one wave) against a persistent
form (``P`` programs per SM walk the (slot, rows) items grid-stride, float32 [rows, K step] sums, the K loop
pipelined, optionally flattened with the item loop: ``tl.range(flatten=True)``), and a kernel that only reads
50 MB (``probe_skinny_floor._read_kernel``). CUDA-graph replay over ``ROT`` routings (no L2 reuse), us per call.

    PYTHONPATH=src python3 benchmarks/probe_gemv_persistent.py [--out F.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(__file__))
from probe_skinny_floor import _read_kernel  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.kernels.moe_gemm import gate_up  # noqa: E402
from moekit.kernels.moe_gemv import _moe_gemv1_kernel  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

ROT = 8
# (programs per SM, BLOCK_N, BLOCK_K, stages, flatten)
VARIANTS = [(4, 4, 512, 3, False), (4, 4, 512, 3, True), (6, 4, 512, 2, False), (4, 2, 1024, 3, False),
            (4, 2, 1024, 3, True), (8, 2, 512, 2, False), (2, 8, 512, 4, False), (4, 8, 256, 4, True)]


@triton.jit
def _gemv1_persistent(x_ptr, w_ptr, out_ptr, ids_ptr, I, K, top_k, n_items, n_tiles, stride_xm, stride_we,
                      stride_wn, stride_om, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
                      FLAT: tl.constexpr):
    offs_k = tl.arange(0, BLOCK_K)
    for item in tl.range(tl.program_id(0), n_items, tl.num_programs(0), flatten=FLAT):
        slot = item // n_tiles
        e = tl.load(ids_ptr + slot).to(tl.int64)
        offs_n = (item % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < I
        x_row = x_ptr + (slot // top_k).to(tl.int64) * stride_xm
        g_ptrs = w_ptr + e * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
        acc_g = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            k_ok = offs_k < K - k0
            xk = tl.load(x_row + k0 + offs_k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
            m = n_ok[:, None] & k_ok[None, :]
            acc_g += tl.load(g_ptrs + k0, mask=m, other=0.0).to(tl.float32) * xk
            acc_u += tl.load(g_ptrs + I * stride_wn + k0, mask=m, other=0.0).to(tl.float32) * xk
        h = gate_up(tl.sum(acc_g, axis=1), tl.sum(acc_u, axis=1), 0)
        tl.store(out_ptr + slot.to(tl.int64) * stride_om + offs_n, h.to(out_ptr.dtype.element_ty), mask=n_ok)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    s = SHAPES["qwen3_30b_a3b"]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "variants": {}}
    w13 = torch.randn(s.E, 2 * s.I, s.H, device="cuda", dtype=torch.bfloat16) / s.H ** 0.5
    x = torch.randn(1, s.H, device="cuda", dtype=torch.bfloat16)
    ids = [torch.randperm(s.E, device="cuda")[:s.top_k].int() for _ in range(ROT)]
    outs = [torch.empty(s.top_k, s.I, device="cuda", dtype=torch.bfloat16) for _ in range(ROT)]

    def shipped():
        for i, o in zip(ids, outs):
            _moe_gemv1_kernel[(s.top_k, triton.cdiv(s.I, 8))](
                x, w13, o, i, i, s.I, s.H, s.top_k, 0, s.E, x.stride(0), w13.stride(0), w13.stride(1), o.stride(0),
                HAS_MAP=False, ACTIVATION=0, BLOCK_N=8, BLOCK_K=512, STAGES=1, num_warps=4)

    shipped()
    ref = [o.float().clone() for o in outs]
    res["shipped"] = _median_us(shipped) / ROT
    print(f"shipped        {res['shipped']:7.2f} us", flush=True)
    buf = [torch.zeros(2 * s.I * s.H * s.top_k // 2, dtype=torch.int32, device="cuda") for _ in range(ROT)]
    sink = torch.empty(8 * sms, device="cuda")
    res["read_50"] = _median_us(lambda: [_read_kernel[(4 * sms,)](b, sink, b.numel() * 4, BLOCK=1024, num_warps=4)
                                         for b in buf]) / ROT
    print(f"read_50        {res['read_50']:7.2f} us", flush=True)
    del buf
    for p, bn, bk, st, flat in VARIANTS:
        n_tiles = triton.cdiv(s.I, bn)
        n_items = s.top_k * n_tiles

        def run():
            for i, o in zip(ids, outs):
                _gemv1_persistent[(min(p * sms, n_items),)](
                    x, w13, o, i, s.I, s.H, s.top_k, n_items, n_tiles, x.stride(0), w13.stride(0), w13.stride(1),
                    o.stride(0), BLOCK_N=bn, BLOCK_K=bk, STAGES=st, FLAT=flat, num_warps=4)
        name = f"P{p}_bn{bn}_bk{bk}_s{st}" + ("_flat" if flat else "")
        try:
            for o in outs:
                o.fill_(float("nan"))
            run()
            err = max(float((o.float() - r).norm() / r.norm()) for o, r in zip(outs, ref))
            t = _median_us(run) / ROT
        except Exception as exc:  # a variant that does not compile is reported, not fatal
            print(f"{name:24s} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            continue
        res["variants"][name] = {"us": t, "rel_err_vs_shipped": err}
        print(f"{name:24s} {t:7.2f} us  err {err:.1e}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
