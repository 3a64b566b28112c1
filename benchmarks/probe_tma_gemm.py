"""Probe (GPU, Hopper): the bf16 grouped expert GEMMs with the weight tiles loaded through TMA descriptors, and
with a persistent grid, against the shipped pointer-loaded kernels (``moekit.kernels.moe_gemm``).

Each GEMM is timed alone as CUDA-graph replay (``triton.testing.do_bench_cudagraph``) on the same aligned slots
(random softmax top-k routing), every arm once per round, rounds interleaved, best median kept; outputs checked
against the shipped kernels'. Variants (bf16 only, no quantization):

  ptr          the shipped kernels
  tma          weight tiles [BLOCK_N, BLOCK_K] by a host TMA descriptor over w viewed as [E * rows, K]
  tma_p        the same, persistent (one program per SM looping over the tiles that exist: npp / BLOCK_M
               row blocks, read on the device), ``flatten`` on
  ptr_p        pointer loads, persistent
A suffix ``:s<N>`` overrides num_stages, ``:k<N>`` BLOCK_K, ``:n<N>`` BLOCK_N, ``:m<N>`` BLOCK_M.

Usage: python benchmarks/probe_tma_gemm.py --shapes qwen3_30b_a3b mixtral8x7b --m 1024 4096 --out F.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from moekit.align import moe_align_block_size  # noqa: E402
from moekit.configs import get_config  # noqa: E402
from moekit.kernels import tile_ids  # noqa: E402
from moekit.kernels.moe_gemm import gate_up, moe_gemm1, moe_gemm2  # noqa: E402
from moekit.routing import select_experts  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402


@triton.jit
def _tile(tile, num_pid_m, num_pid_n, sorted_ptr, experts_ptr, GROUP_M: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m, pid_n = tile_ids(tile, num_pid_m, num_pid_n, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_ptr + offs_m)
    expert = tl.load(experts_ptr + pid_m)
    return pid_m, pid_n, offs_m, slot, expert


@triton.jit
def _gemm1_tile(tile, x_ptr, w_ptr, w_desc, out_ptr, sorted_ptr, experts_ptr, I, K, num_slots, top_k, used_m,
                stride_xm, stride_we, stride_wn, stride_om, TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n, offs_m, slot, expert = _tile(tile, used_m, tl.cdiv(I, BLOCK_N), sorted_ptr, experts_ptr, GROUP_M,
                                               BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = slot < num_slots
    token = (slot // top_k).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    x_ptrs = x_ptr + token[:, None] * stride_xm + offs_k[None, :]
    row_g = expert * (2 * I) + pid_n * BLOCK_N
    g_ptrs = w_ptr + expert.to(tl.int64) * stride_we + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(x_ptrs, mask=row_ok[:, None] & (offs_k < K - k * BLOCK_K)[None, :], other=0.0)
        if TMA:
            bg = w_desc.load([row_g, k * BLOCK_K]).T
            bu = w_desc.load([row_g + I, k * BLOCK_K]).T
        else:
            wm = (offs_k < K - k * BLOCK_K)[:, None] & n_ok[None, :]
            bg = tl.load(g_ptrs, mask=wm, other=0.0)
            bu = tl.load(g_ptrs + I * stride_wn, mask=wm, other=0.0)
        acc_g = tl.dot(a, bg, acc_g)
        acc_u = tl.dot(a, bu, acc_u)
        x_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
    h = gate_up(acc_g, acc_u, 0)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, h.to(out_ptr.dtype.element_ty), mask=n_ok[None, :])


@triton.jit
def _gemm1(x_ptr, w_ptr, w_desc, out_ptr, sorted_ptr, experts_ptr, npp_ptr, I, K, num_slots, top_k, num_pid_m,
           stride_xm, stride_we, stride_wn, stride_om,
           TMA: tl.constexpr, PERSISTENT: tl.constexpr, NUM_SMS: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    num_pid_n = tl.cdiv(I, BLOCK_N)
    npp = tl.load(npp_ptr)
    if PERSISTENT:
        used_m = npp // BLOCK_M
        for tile in tl.range(tl.program_id(0), used_m * num_pid_n, NUM_SMS, flatten=True):
            _gemm1_tile(tile, x_ptr, w_ptr, w_desc, out_ptr, sorted_ptr, experts_ptr, I, K, num_slots, top_k, used_m,
                        stride_xm, stride_we, stride_wn, stride_om, TMA, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    else:
        pm, _ = tile_ids(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
        if pm * BLOCK_M < npp:
            _gemm1_tile(tl.program_id(0), x_ptr, w_ptr, w_desc, out_ptr, sorted_ptr, experts_ptr, I, K, num_slots,
                        top_k, num_pid_m, stride_xm, stride_we, stride_wn, stride_om, TMA, BLOCK_M, BLOCK_N, BLOCK_K,
                        GROUP_M)


@triton.jit
def _gemm2_tile(tile, a_ptr, w_ptr, w_desc, y_ptr, topk_w_ptr, sorted_ptr, experts_ptr, N, K, num_slots, used_m,
                stride_am, stride_we, stride_wn, stride_ym, TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n, offs_m, slot, expert = _tile(tile, used_m, tl.cdiv(N, BLOCK_N), sorted_ptr, experts_ptr, GROUP_M,
                                               BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = slot < num_slots
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    row_b = expert * N + pid_n * BLOCK_N
    b_ptrs = w_ptr + expert.to(tl.int64) * stride_we + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_ptrs, mask=(offs_k < K - k * BLOCK_K)[None, :], other=0.0)
        if TMA:
            b = w_desc.load([row_b, k * BLOCK_K]).T
        else:
            b = tl.load(b_ptrs, mask=(offs_k < K - k * BLOCK_K)[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    acc = acc * tl.load(topk_w_ptr + slot, mask=row_ok, other=0.0)[:, None]
    y_ptrs = y_ptr + slot.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _gemm2(a_ptr, w_ptr, w_desc, y_ptr, topk_w_ptr, sorted_ptr, experts_ptr, npp_ptr, N, K, num_slots, num_pid_m,
           stride_am, stride_we, stride_wn, stride_ym,
           TMA: tl.constexpr, PERSISTENT: tl.constexpr, NUM_SMS: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    num_pid_n = tl.cdiv(N, BLOCK_N)
    npp = tl.load(npp_ptr)
    if PERSISTENT:
        used_m = npp // BLOCK_M
        for tile in tl.range(tl.program_id(0), used_m * num_pid_n, NUM_SMS, flatten=True):
            _gemm2_tile(tile, a_ptr, w_ptr, w_desc, y_ptr, topk_w_ptr, sorted_ptr, experts_ptr, N, K, num_slots,
                        used_m, stride_am, stride_we, stride_wn, stride_ym, TMA, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    else:
        pm, _ = tile_ids(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
        if pm * BLOCK_M < npp:
            _gemm2_tile(tl.program_id(0), a_ptr, w_ptr, w_desc, y_ptr, topk_w_ptr, sorted_ptr, experts_ptr, N, K,
                        num_slots, num_pid_m, stride_am, stride_we, stride_wn, stride_ym, TMA, BLOCK_M, BLOCK_N,
                        BLOCK_K, GROUP_M)


def _parse(arm: str, config):
    name, *mods = arm.split(":")
    over = {}
    for mod in mods:
        key = {"s": "num_stages", "k": "BLOCK_SIZE_K", "n": "BLOCK_SIZE_N", "m": "BLOCK_SIZE_M", "w": "num_warps"}
        over[key[mod[0]]] = int(mod[1:])
    return name, dataclasses.replace(config, **over)


def _launch(name, cfg, x, w13, w2, inter, y, topk_w, al, top_k, num_sms):
    e, i2, h = w13.shape
    i = i2 // 2
    bm, bn, bk = cfg.BLOCK_SIZE_M, cfg.BLOCK_SIZE_N, cfg.BLOCK_SIZE_K
    num_pid_m = al.expert_ids.shape[0]
    tma, pers = name.startswith("tma"), name.endswith("_p")
    d13 = TensorDescriptor.from_tensor(w13.view(e * i2, h), [bn, bk]) if tma else None
    d2 = TensorDescriptor.from_tensor(w2.view(e * h, i), [bn, bk]) if tma else None
    g1 = (num_sms,) if pers else (num_pid_m * triton.cdiv(i, bn),)
    g2 = (num_sms,) if pers else (num_pid_m * triton.cdiv(h, bn),)
    kw = dict(TMA=tma, PERSISTENT=pers, NUM_SMS=num_sms, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
              GROUP_M=cfg.GROUP_SIZE_M, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    def g1run():
        _gemm1[g1](x, w13, d13, inter, al.sorted_ids, al.expert_ids, al.num_padded, i, h, x.shape[0] * top_k, top_k,
                   num_pid_m, x.stride(0), w13.stride(0), w13.stride(1), inter.stride(0), **kw)

    def g2run():
        _gemm2[g2](inter, w2, d2, y, topk_w, al.sorted_ids, al.expert_ids, al.num_padded, h, i, y.shape[0],
                   num_pid_m, inter.stride(0), w2.stride(0), w2.stride(1), y.stride(0), **kw)
    return g1run, g2run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=["qwen3_30b_a3b", "mixtral8x7b"])
    ap.add_argument("--m", nargs="*", type=int, default=[1024, 4096])
    ap.add_argument("--arms", default="ptr,tma,ptr_p,tma_p")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.cuda.get_device_name()
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "points": []}
    print(res, flush=True)
    arms = args.arms.split(",")
    for sname in args.shapes:
        s = SHAPES[sname]
        g = torch.Generator(device="cuda").manual_seed(0)
        w13 = torch.randn(s.E, 2 * s.I, s.H, device="cuda", generator=g, dtype=torch.bfloat16) / s.H ** 0.5
        w2 = torch.randn(s.E, s.H, s.I, device="cuda", generator=g, dtype=torch.bfloat16) / s.I ** 0.5
        for m in args.m:
            x = torch.randn(m, s.H, device="cuda", dtype=torch.bfloat16)
            tw, ti = select_experts(torch.randn(m, s.E, device="cuda"), s.top_k)
            base = get_config(s.E, s.I, s.H, s.top_k, m, torch.bfloat16)
            flops1 = 2 * m * s.top_k * s.H * 2 * s.I
            flops2 = 2 * m * s.top_k * s.I * s.H
            ref = None
            best = {}
            runs = {}
            for arm in arms:
                name, cfg = _parse(arm, base)
                al = moe_align_block_size(ti, s.E, cfg.BLOCK_SIZE_M, None, use_triton=True)
                inter = torch.full((al.sorted_ids.numel(), s.I), float("nan"), device="cuda", dtype=torch.bfloat16)
                y = torch.full((m * s.top_k, s.H), float("nan"), device="cuda", dtype=torch.bfloat16)
                if name == "ptr":
                    def r1(inter=inter, al=al, cfg=cfg):
                        moe_gemm1(x, w13, inter, al.sorted_ids, al.expert_ids, al.num_padded, s.top_k, cfg)

                    def r2(inter=inter, y=y, al=al, cfg=cfg):
                        moe_gemm2(inter, w2, y, tw, al.sorted_ids, al.expert_ids, al.num_padded, cfg)
                else:
                    r1, r2 = _launch(name, cfg, x, w13, w2, inter, y, tw, al, s.top_k, num_sms)
                try:
                    r1()
                    r2()
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported and skipped
                    print(f"{sname} M={m} {arm}: {type(e).__name__}: {str(e)[:100]}", flush=True)
                    continue
                if ref is None:
                    ref = y.float().clone()
                    err = 0.0
                else:
                    err = ((y.float() - ref).norm() / ref.norm()).item()
                runs[arm] = (r1, r2, err)
            for _ in range(args.rounds):
                for arm in runs:
                    r1, r2, _ = runs[arm]
                    t1 = triton.testing.do_bench_cudagraph(r1, rep=100, return_mode="median")
                    t2 = triton.testing.do_bench_cudagraph(r2, rep=100, return_mode="median")
                    b = best.get(arm, (1e9, 1e9))
                    best[arm] = (min(b[0], t1 * 1e3), min(b[1], t2 * 1e3))
            for arm in runs:
                t1, t2 = best[arm]
                err = runs[arm][2]
                pt = {"shape": sname, "M": m, "arm": arm, "gemm1_us": t1, "gemm2_us": t2,
                      "gemm1_tflops": flops1 / t1 / 1e6, "gemm2_tflops": flops2 / t2 / 1e6, "rel_err_vs_ptr": err}
                res["points"].append(pt)
                print(f"{sname:14s} M={m:5d} {arm:14s} gemm1 {t1:8.1f} us ({pt['gemm1_tflops']:5.0f} TF)  "
                      f"gemm2 {t2:8.1f} us ({pt['gemm2_tflops']:5.0f} TF)  sum {t1 + t2:8.1f}  err {err:.1e}",
                      flush=True)
            del runs
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
