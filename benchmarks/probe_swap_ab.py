"""Probe (GPU only): small-M fp8 grouped GEMMs with the operands swapped. With few rows per expert (Mixtral fp8 at
M = 16-256: 4-64 rows per expert) a tile of BLOCK_M = 16-32 token rows is below Hopper's fp8 warpgroup MMA (64
rows), so Triton upcasts the fp8 operands to fp16 for ``mma.sync``. Swapped, the weight rows are the MMA's M
(64-128) and the tokens its N (8-64), which fp8 wgmma takes as they are.

One GEMM, ``out[e, m, n] = sum_k x[e, m, k] * w[e, n, k]`` over E experts with R rows each (contiguous: no
gather), fp8 e4m3 operands, float32 sums, bf16 output; timed as CUDA-graph replay rotating over 4 weight copies
(the weights stream from HBM), against a kernel that only reads them (``probe_skinny_floor._read_kernel``).

    PYTHONPATH=src python3 benchmarks/probe_swap_ab.py [--out F.json]
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

ROT = 4


@triton.jit
def _gemm_plain(x_ptr, w_ptr, o_ptr, R, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                STAGES: tl.constexpr):
    e, pn = tl.program_id(1), tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    xp = x_ptr + (e * R + offs_m).to(tl.int64)[:, None] * K + offs_k[None, :]
    wp = w_ptr + e.to(tl.int64) * N * K + offs_n.to(tl.int64)[None, :] * K + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        acc = tl.dot(tl.load(xp + k0, mask=(offs_m < R)[:, None], other=0.0), tl.load(wp + k0), acc)
    op = o_ptr + (e * R + offs_m).to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(op, acc.to(tl.bfloat16), mask=(offs_m < R)[:, None])


@triton.jit
def _gemm_swapped(x_ptr, w_ptr, o_ptr, R, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    e, pn = tl.program_id(1), tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    xp = x_ptr + (e * R + offs_m).to(tl.int64)[None, :] * K + offs_k[:, None]  # x^T [BLOCK_K, BLOCK_M]
    wp = w_ptr + e.to(tl.int64) * N * K + offs_n.to(tl.int64)[:, None] * K + offs_k[None, :]  # [BLOCK_N, BLOCK_K]
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        acc = tl.dot(tl.load(wp + k0), tl.load(xp + k0, mask=(offs_m < R)[None, :], other=0.0), acc)
    op = o_ptr + (e * R + offs_m).to(tl.int64)[None, :] * N + offs_n[:, None]
    tl.store(op, acc.to(tl.bfloat16), mask=(offs_m < R)[None, :])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    E, N, K = 8, 28672, 4096  # Mixtral-8x7B GEMM 1 (gate and up rows)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "points": []}
    ws = [(torch.randn(E, N, K, device="cuda") * 0.05).to(torch.float8_e4m3fn) for _ in range(ROT)]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    sink = torch.empty(8 * sms, device="cuda")
    read = _median_us(lambda: [_read_kernel[(4 * sms,)](w.view(torch.int32), sink, w.numel(), BLOCK=1024,
                                                        num_warps=4) for w in ws]) / ROT
    res["read_us"] = read
    print(f"{torch.cuda.get_device_name()}: read {E * N * K / 1e6:.0f} MB {read:.1f} us", flush=True)
    for R in (16, 32, 64):
        x = (torch.randn(E * R, K, device="cuda")).to(torch.float8_e4m3fn)
        ref = torch.einsum("emk,enk->emn", x.float().view(E, R, K), ws[-1][:, :512].float())  # run() ends on it
        out = torch.empty(E * R, N, device="cuda", dtype=torch.bfloat16)
        cands = [("plain", _gemm_plain, bm, bn, bk, st, wp) for bm in (16, 32) if bm <= R or bm == 16
                 for (bn, bk, st, wp) in ((64, 256, 3, 4), (128, 256, 3, 8), (128, 128, 4, 4))]
        cands += [("swapped", _gemm_swapped, bm, bn, bk, st, wp) for bm in sorted({16, R})
                  for (bn, bk, st, wp) in ((64, 256, 3, 4), (128, 256, 3, 4), (128, 128, 4, 4), (64, 128, 4, 4))]
        for name, fn, bm, bn, bk, st, wp in cands:
            if bm < R and name == "plain" and False:
                continue
            grid_m = triton.cdiv(R, bm)
            if grid_m != 1:  # one M tile per expert keeps the probe simple
                continue

            def run():
                for w in ws:
                    fn[(N // bn, E)](x, w, out, R, N, K, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, STAGES=st, num_warps=wp)
            try:
                out.fill_(float("nan"))
                run()
                got = out.float().view(E, R, N)[:, :, :512]
                err = float((got - ref).norm() / ref.norm())
                t = _median_us(run) / ROT
            except Exception as exc:  # noqa: BLE001
                print(f"R={R} {name} {bm}x{bn}x{bk} s{st} w{wp}: failed {str(exc)[:160]}", flush=True)
                continue
            res["points"].append(dict(R=R, form=name, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, stages=st, warps=wp,
                                      us=t, err=err))
            print(f"R={R:3d} {name:8s} {bm}x{bn}x{bk} s{st} w{wp}: {t:7.1f} us ({100 * read / t:4.1f}% of read) "
                  f"err {err:.1e}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
