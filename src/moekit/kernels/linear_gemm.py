"""Triton kernels of the dense GEMM router (:mod:`moekit.linear`): ``out[M, N] = a[M, K] @ w[N, K]^T (+ bias)``.

One GEMM kernel serves three router paths, picked by meta-parameters:

* ``skinny`` (decode, M <= 16): ``BLOCK_M = 16`` and split-K (runtime ``SPLIT_K > 1``, constexpr
  ``USE_WS``) so that ``N / BLOCK_N * SPLIT_K`` programs stream the weight with the whole GPU. Partial sums go to an fp32 workspace ``[SPLIT_K, M, N]``
  that the last-arriving program of each tile sums (``FUSED_REDUCE``: one launch, a per-(device, stream)
  tile counter that resets itself) or :func:`_splitk_reduce_kernel` sums (two launches, no atomics).
* ``triton``: a tiled GEMM (grouped launch order, ``SPLIT_K = 1``) with per-device tuned block sizes.
* ``triton_w8a8``: fp8 activations (quantized on the fly by :mod:`moekit.quant.ops`) times fp8 weights.

Scales (constexpr modes):

* ``A_SCALE``: 0 none, 1 per token ``[M]``, 2 per (token, ``SCALE_BK`` group) ``[M, cdiv(K, SCALE_BK)]``.
* ``W_SCALE``: 0 none, 1 per output channel ``[N]`` (stride 0 for one per-tensor scale), 2 per
  ``(SCALE_BN, SCALE_BK)`` block ``[cdiv(N, SCALE_BN), cdiv(K, SCALE_BK)]``.

With ``A_SCALE = 0`` and an fp8 weight the weight tile is widened to the activation dtype in registers
(weight-only: fp8 -> bf16/fp16 is exact) and the scale is applied to the fp32 partial products. Block
scales need ``SCALE_BK % BLOCK_K == 0`` so that one K step lies inside one scale block.

Every load is masked: M, N and K need not be multiples of the blocks. Rows/columns are addressed with
64-bit offsets; the last dimension of ``a``, ``w`` and ``out`` must be contiguous.
"""
from __future__ import annotations

import triton
import triton.language as tl

from moekit.kernels import tile_ids


@triton.jit
def _linear_kernel(
    a_ptr, w_ptr, out_ptr, bias_ptr, as_ptr, ws_ptr, part_ptr, lock_ptr,
    M, N, K, SPLIT_K,
    stride_am, stride_wn, stride_om, stride_split, stride_asm, stride_wsn, stride_wsk,
    A_SCALE: tl.constexpr, W_SCALE: tl.constexpr, SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr,
    HAS_BIAS: tl.constexpr, USE_WS: tl.constexpr, FUSED_REDUCE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_it in range(pid_k, tl.cdiv(K, BLOCK_K), SPLIT_K):
        k0 = k_it * BLOCK_K
        k_ok = offs_k < K - k0
        a = tl.load(a_ptrs + k0, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs + k0, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if A_SCALE == 0:
            w = w.to(a.dtype)  # no-op unquantized; exact widening of an fp8 weight (weight-only)
        if W_SCALE == 2:
            part = tl.dot(a, w, input_precision=DOT_PRECISION)
            w_s = tl.load(ws_ptr + (offs_n // SCALE_BN) * stride_wsn + (k0 // SCALE_BK) * stride_wsk,
                          mask=n_ok, other=0.0)
            if A_SCALE == 2:
                a_s = tl.load(as_ptr + offs_m * stride_asm + k0 // SCALE_BK, mask=m_ok, other=0.0)
                part = part * a_s[:, None]
            acc += part * w_s[None, :]
        else:
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    if W_SCALE == 1:
        acc = acc * tl.load(ws_ptr + offs_n * stride_wsn, mask=n_ok, other=0.0)[None, :]
    if A_SCALE == 1:
        acc = acc * tl.load(as_ptr + offs_m * stride_asm, mask=m_ok, other=0.0)[:, None]
    mask = m_ok[:, None] & n_ok[None, :]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    if not USE_WS:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:  # fp32 partials into the workspace [SPLIT_K, M, N]
        tile_off = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
        tl.store(part_ptr + pid_k * stride_split + tile_off, acc, mask=mask)
        if FUSED_REDUCE:
            # the last of the SPLIT_K programs of this tile sums the partials (one launch); its counter is
            # reset to 0 for the next call on this stream
            tl.debug_barrier()
            tile = pid_m * tl.cdiv(N, BLOCK_N) + pid_n
            count = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
            if count == SPLIT_K - 1:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for s in range(0, SPLIT_K):
                    total += tl.load(part_ptr + s * stride_split + tile_off, mask=mask, other=0.0,
                                     cache_modifier=".cg")
                if HAS_BIAS:
                    total += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
                tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=mask)
                tl.atomic_xchg(lock_ptr + tile, 0)


@triton.jit
def _splitk_reduce_kernel(
    ws_ptr, out_ptr, bias_ptr, M, N, SPLIT_K, stride_om,
    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[m, n] = sum_s ws[s, m, n] (+ bias[n]), cast to out's dtype."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M * N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    ptrs = ws_ptr + offs
    for _ in range(0, SPLIT_K):
        acc += tl.load(ptrs, mask=ok, other=0.0)
        ptrs += M * N
    n = offs % N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + (offs // N) * stride_om + n, acc.to(out_ptr.dtype.element_ty), mask=ok)


def splitk_reduce(part, out, bias=None) -> None:
    """``out`` [M, N] = the sum of the fp32 split-K partials ``part`` [S, M, N] in split order (+ ``bias`` [N]),
    cast to out's dtype: the second launch of every split-K GEMM here (:mod:`moekit.linear`'s tiled paths and
    :func:`moekit.kernels.moe_gemm_sm90.linear_fp8_block_sm90`), so all of them sum in the same order."""
    splits, m, n = part.shape
    blk = 1024
    _splitk_reduce_kernel[(triton.cdiv(m * n, blk),)](
        part, out, bias if bias is not None else out, m, n, splits, out.stride(0),
        HAS_BIAS=bias is not None, BLOCK=blk, num_warps=4,
    )
