"""Triton kernel: fp8 weight dequantization in one pass, ``out[n, k] = float32(q[n, k]) * scale -> out dtype``.

Used by :mod:`moekit.linear`'s ``torch`` path for fp8 weights that no fp8 GEMM takes (block scales, or GPUs without
fp8 matrix cores): the weight is dequantized per call, then multiplied by F.linear. PyTorch ops do the same in
four or five passes over float32 copies (about 25 bytes moved per weight element, against 3 here: one read, one
16-bit write); the values are the same bit for bit (float32 product rounded to nearest, then rounded to
nearest-even in the output dtype), which :func:`moekit.quant.weights.dequantize_weights` gives on any device.

Scale modes (``S_MODE``): 0 one per-tensor scale ``[1]``, 1 per output channel ``[N]``, 2 per
``(SCALE_BN, SCALE_BK)`` block ``[cdiv(N, SCALE_BN), cdiv(K, SCALE_BK)]``. ``q`` and ``out`` [N, K] with a
contiguous last dimension; N and K need not be multiples of anything.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

#: a program's tile: 16 rows x 256 columns (4096 elements, 32 a thread at 4 warps)
TILE = (16, 256)


@triton.jit
def _dequant_fp8_kernel(q_ptr, s_ptr, out_ptr, N, K, stride_qn, stride_sn, stride_sk, stride_on,
                        S_MODE: tl.constexpr, SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok = rn < N
    mask = n_ok[:, None] & (rk < K)[None, :]
    q = tl.load(q_ptr + rn.to(tl.int64)[:, None] * stride_qn + rk[None, :], mask=mask, other=0.0).to(tl.float32)
    if S_MODE == 2:
        s = tl.load(s_ptr + (rn // SCALE_BN)[:, None] * stride_sn + (rk // SCALE_BK)[None, :] * stride_sk,
                    mask=mask, other=0.0)
    elif S_MODE == 1:
        s = tl.load(s_ptr + rn * stride_sn, mask=n_ok, other=0.0)[:, None]
    else:
        s = tl.load(s_ptr)
    tl.store(out_ptr + rn.to(tl.int64)[:, None] * stride_on + rk[None, :], (q * s).to(out_ptr.dtype.element_ty),
             mask=mask)


def dequant_fp8(q: torch.Tensor, scale: torch.Tensor, mode: int, block: tuple, dtype: torch.dtype) -> torch.Tensor:
    """[N, K] in ``dtype`` from fp8 ``q`` [N, K] and float32 ``scale`` (``mode`` as ``S_MODE``; ``block`` the
    (SCALE_BN, SCALE_BK) of mode 2, unused otherwise). Shapes are the caller's to check."""
    n, k = q.shape
    if q.stride(1) != 1:
        q = q.contiguous()
    out = torch.empty((n, k), dtype=dtype, device=q.device)
    if n == 0 or k == 0:
        return out
    s = scale if mode == 2 else scale.reshape(-1)
    bn, bk = TILE
    _dequant_fp8_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bk))](
        q, s, out, n, k, q.stride(0), s.stride(0), s.stride(1) if mode == 2 else 0, out.stride(0),
        S_MODE=mode, SCALE_BN=block[0], SCALE_BK=block[1], BLOCK_N=bn, BLOCK_K=bk, num_warps=4,
    )
    return out
