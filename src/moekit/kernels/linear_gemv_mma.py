"""The ``gemv_mma`` path of the dense GEMM router (:mod:`moekit.linear`): ``out[M, N] = x[M, K] @ w[N, K]^T
(+ bias)`` for a few tokens (1 <= M <= 16, decode of a small batch) on tensor cores, without split-K.

Why: at M = 4..16 the ``gemv`` form (CUDA-core FMAs, :mod:`moekit.kernels.linear_gemv`) does M times the
arithmetic per weight byte and re-reads every row of x per program, and the split-K ``skinny`` GEMM pays a
second pass over fp32 partial sums and few programs per SM when N is small (7-10 us on the H100 for weights that
read in 3.6-6 us). Here each program owns ``ROWS`` output rows over the whole K, like ``gemv``, and does the
products on tensor cores with the operands swapped:

    out^T[rows, :M] = w[rows, :] @ x[:M, :]^T

The weight is the MMA's left operand (``ROWS`` rows, any power of two: triton pads an operand narrower than
the instruction in registers), the tokens its right one, ``MP`` = the next power of two of M columns (so at
M = 4 the x tile is 4 columns wide, not 16). The K step is ``S`` (= ``num_warps``) slices of ``BLOCK_K``, one
batch of a 3-D ``tl.dot`` each (``[S, ROWS, BLOCK_K] x [S, BLOCK_K, MP]``): each warp streams its own K slice
of the same rows, and the slices are summed once, inside the program, at the end. No partial sums leave the
program and there is one launch.

Measured (``benchmarks/probe_decode_mma.py``, ``probe_decode_mma_H100_b.json``, H100, fp8 per-channel weights,
against ``F.linear`` on the bf16 weight): M = 4 at 1.40-1.97x where the ``skinny`` path was 1.04-1.70x
(DeepSeek-V3 kv_a 5.96 against 7.56 us); at M = 16 the x tile is four times wider and the gain is smaller, so
the tuner decides per (shape, bucket) between this path and ``skinny``.

fp8 weights are widened to x's dtype in registers (exact); scales (``W_SCALE`` 1: per output channel ``[N]``,
stride 0 for one per-tensor scale, applied to the fp32 sums at the end; 2: per ``(SCALE_BN, SCALE_BK)`` block,
applied to each slice's fp32 product, so ``SCALE_BK % BLOCK_K == 0``: the launcher lowers ``BLOCK_K`` to the
block). The K loop is software-pipelined ``LOOP_STAGES`` deep (cp.async into shared memory; triton 3.6 does
this only when the depth is given on the loop, see :mod:`moekit.kernels.linear_gemv`).

Layout: ``x`` [M, K], ``w`` [N, K] and ``out`` [M, N] with contiguous last dimensions. Every load is masked,
so N and K need not be multiples of the blocks; weight rows are addressed with 64-bit offsets.
"""
from __future__ import annotations

import triton
import triton.language as tl

from moekit.linear import gemv_mma_columns


@triton.jit
def _gemv_mma_kernel(
    x_ptr, w_ptr, out_ptr, bias_ptr, ws_ptr,
    M, N, K, stride_xm, stride_wn, stride_om, stride_wsn, stride_wsk,
    W_SCALE: tl.constexpr, SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ROWS: tl.constexpr, S: tl.constexpr, BLOCK_K: tl.constexpr,
    MP: tl.constexpr, LOOP_STAGES: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    r_ok = rows < N
    offs_s = tl.arange(0, S)
    offs_k = tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, MP)
    m_ok = offs_m < M
    k_a = offs_s[:, None, None] * BLOCK_K + offs_k[None, None, :]  # [S, 1, BLOCK_K]: the weight's K offsets
    k_b = offs_s[:, None, None] * BLOCK_K + offs_k[None, :, None]  # [S, BLOCK_K, 1]: x's
    w_ptrs = w_ptr + rows.to(tl.int64)[None, :, None] * stride_wn + k_a
    x_ptrs = x_ptr + offs_m[None, None, :] * stride_xm + k_b
    acc = tl.zeros((S, ROWS, MP), dtype=tl.float32)
    for k0 in tl.range(0, K, S * BLOCK_K, num_stages=LOOP_STAGES):
        w = tl.load(w_ptrs + k0, mask=r_ok[None, :, None] & (k_a < K - k0), other=0.0)
        x = tl.load(x_ptrs + k0, mask=m_ok[None, None, :] & (k_b < K - k0), other=0.0)
        w = w.to(x.dtype)  # no-op unquantized; exact widening of an fp8 weight
        if W_SCALE == 2:
            kb = (k0 + offs_s * BLOCK_K) // SCALE_BK  # each slice lies inside one scale block
            s_ok = k0 + offs_s * BLOCK_K < K
            if SCALE_BN % ROWS == 0:  # all rows of the program in one block row: one scale per slice, [S, 1]
                w_s = tl.load(ws_ptr + ((tl.program_id(0) * ROWS) // SCALE_BN) * stride_wsn + kb * stride_wsk,
                              mask=s_ok, other=0.0)[:, None]
            else:  # one per (slice, row), [S, ROWS]
                w_s = tl.load(ws_ptr + (rows // SCALE_BN)[None, :] * stride_wsn + kb[:, None] * stride_wsk,
                              mask=r_ok[None, :] & s_ok[:, None], other=0.0)
            acc += tl.dot(w, x, input_precision=DOT_PRECISION) * w_s[:, :, None]
        else:
            acc = tl.dot(w, x, acc, input_precision=DOT_PRECISION)
    out = tl.sum(acc, axis=0)  # [ROWS, MP]
    if W_SCALE == 1:
        out = out * tl.load(ws_ptr + rows * stride_wsn, mask=r_ok, other=0.0)[:, None]
    if HAS_BIAS:
        out += tl.load(bias_ptr + rows, mask=r_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(out_ptr + offs_m[None, :] * stride_om + rows[:, None], out.to(out_ptr.dtype.element_ty),
             mask=r_ok[:, None] & m_ok[None, :])


def gemv_mma(x, weight, bias, w_mode: int, w_scale, stride_wsn: int, stride_wsk: int, scale_block, rows: int,
             block_k: int, num_warps: int, num_stages: int):
    """Launch :func:`_gemv_mma_kernel`: ``x`` [M, K] with M <= ``moekit.linear.GEMV_MMA_MAX_M`` (16), ``weight``
    [N, K], ``bias`` [N] or None; ``w_mode``, ``w_scale`` and its strides as ``W_SCALE`` above, ``scale_block``
    (bn, bk); ``rows`` output rows per program, ``num_warps`` K slices of ``block_k`` per step (``block_k`` lowered
    to bk with block scales), ``num_stages`` the K loop's depth. Returns ``out`` [M, N] in x's dtype."""
    import torch

    M, K = x.shape
    N = weight.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    sbn, sbk = scale_block
    if w_mode == 2:
        block_k = min(block_k, sbk)
    _gemv_mma_kernel[(triton.cdiv(N, rows),)](
        x, weight, out, bias if bias is not None else out, w_scale,
        M, N, K, x.stride(0), weight.stride(0), out.stride(0), stride_wsn, stride_wsk,
        W_SCALE=w_mode, SCALE_BN=sbn, SCALE_BK=sbk, HAS_BIAS=bias is not None,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        ROWS=rows, S=num_warps, BLOCK_K=block_k, MP=gemv_mma_columns(M), LOOP_STAGES=num_stages,
        num_warps=num_warps,
    )
    return out
