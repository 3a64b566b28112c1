"""Triton kernels: the two grouped expert GEMMs of a fused MoE forward.

Layouts (row-major, last dim contiguous):
  x       [M, H]            hidden states
  w13     [E, 2I, H]        gate rows 0..I-1, then up rows I..2I-1
  w2      [E, H, I]
  sorted  [P] int32         padded, expert-sorted slot ids (slot = token * top_k + j; N = M*top_k marks padding)
  experts [P / BLOCK_M]     local expert of each block of ``sorted`` (-1 past the end)
  npp     [1] int32         true padded length (device scalar: no host sync)
  inter   [P, I]            activation output, in *sorted* order (rows of padding are zero)
  y       [M*top_k, H]      down-projection output per slot, routing weight applied

GEMM 1 computes, per block of sorted slots and per BLOCK_N columns of I, the gate and the up tiles in the
same program (two accumulators over one pass of K), applies ``act(gate) * up`` in the epilogue and writes
only the [P, I] result: the [M*k, 2I] intermediate never exists. GEMM 2 reads ``inter`` rows contiguously,
multiplies by the routing weight and scatters rows to their slots. Row offsets are 64-bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from moekit.activations import ACTIVATIONS as _NAMES

ACTIVATIONS = {name: code for code, name in enumerate(_NAMES)}  # kernel constexpr codes


@triton.jit
def _tile_ids(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped launch order: GROUP_M consecutive M-blocks share each weight tile while it is in L2."""
    width = GROUP_M * num_pid_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % width) % size_m)
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def _moe_gemm1_kernel(
    x_ptr, w_ptr, out_ptr, sorted_ptr, experts_ptr, npp_ptr,
    I, K, num_slots, top_k, num_pid_m,
    stride_xm, stride_we, stride_wn, stride_om, up_offset,
    ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(tl.program_id(0), num_pid_m, tl.cdiv(I, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(npp_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_ptr + offs_m)
    row_ok = slot < num_slots
    token = (slot // top_k).to(tl.int64)
    expert = tl.load(experts_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + token[:, None] * stride_xm + offs_k[None, :]
    g_ptrs = w_ptr + expert * stride_we + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]
    u_ptrs = g_ptrs + up_offset
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0)
            bg = tl.load(g_ptrs, mask=n_ok[None, :], other=0.0)
            bu = tl.load(u_ptrs, mask=n_ok[None, :], other=0.0)
        else:
            k_ok = offs_k < K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            bg = tl.load(g_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            bu = tl.load(u_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc_g = tl.dot(a, bg, acc_g, input_precision=DOT_PRECISION)
        acc_u = tl.dot(a, bu, acc_u, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    if ACTIVATION == 0:
        act = acc_g / (1.0 + tl.exp(-acc_g))
    else:
        act = 0.5 * acc_g * (1.0 + tl.erf(acc_g * 0.7071067811865476))
    h = (act * acc_u).to(out_ptr.dtype.element_ty)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, h, mask=n_ok[None, :])


@triton.jit
def _moe_gemm2_kernel(
    a_ptr, w_ptr, y_ptr, topk_w_ptr, sorted_ptr, experts_ptr, npp_ptr,
    N, K, num_slots, num_pid_m,
    stride_am, stride_we, stride_wn, stride_ym,
    MUL_WEIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(tl.program_id(0), num_pid_m, tl.cdiv(N, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(npp_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_ptr + offs_m)
    row_ok = slot < num_slots
    expert = tl.load(experts_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = w_ptr + expert * stride_we + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs, mask=n_ok[None, :], other=0.0)
        else:
            k_ok = offs_k < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if MUL_WEIGHT:
        acc = acc * tl.load(topk_w_ptr + slot, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    y_ptrs = y_ptr + slot.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs are multiplied exactly ("ieee"), not in tf32: users who pass float32 expect float32.
    return "ieee" if dtype == torch.float32 else "tf32"


def moe_gemm1(x, w13, out, sorted_ids, expert_ids, npp, top_k, config, activation="silu"):
    """out[P, I] = act(x[tok] @ w13[e, :I].T) * (x[tok] @ w13[e, I:].T) for each sorted slot's expert e."""
    i2, k = w13.shape[1], w13.shape[2]
    i = i2 // 2
    num_pid_m = expert_ids.shape[0]
    bm, bn, bk = config.BLOCK_SIZE_M, config.BLOCK_SIZE_N, config.BLOCK_SIZE_K
    grid = (num_pid_m * triton.cdiv(i, bn),)
    _moe_gemm1_kernel[grid](
        x, w13, out, sorted_ids, expert_ids, npp,
        i, k, x.shape[0] * top_k, top_k, num_pid_m,
        x.stride(0), w13.stride(0), w13.stride(1), out.stride(0), i * w13.stride(1),
        ACTIVATION=ACTIVATIONS[activation], DOT_PRECISION=_dot_precision(x.dtype), EVEN_K=k % bk == 0,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=config.GROUP_SIZE_M,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )


def moe_gemm2(inter, w2, y, topk_weights, sorted_ids, expert_ids, npp, config, mul_weight=True):
    """y[slot] = w_slot * (inter[row] @ w2[e].T) for each sorted row; y rows of dropped slots untouched."""
    n, k = w2.shape[1], w2.shape[2]
    num_pid_m = expert_ids.shape[0]
    bm, bn, bk = config.BLOCK_SIZE_M, config.BLOCK_SIZE_N, config.BLOCK_SIZE_K
    grid = (num_pid_m * triton.cdiv(n, bn),)
    _moe_gemm2_kernel[grid](
        inter, w2, y, topk_weights, sorted_ids, expert_ids, npp,
        n, k, y.shape[0], num_pid_m,
        inter.stride(0), w2.stride(0), w2.stride(1), y.stride(0),
        MUL_WEIGHT=mul_weight, DOT_PRECISION=_dot_precision(inter.dtype), EVEN_K=k % bk == 0,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=config.GROUP_SIZE_M,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
