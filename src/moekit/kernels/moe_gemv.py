"""Decode kernels of the Triton backend: few tokens, so each top-k slot reads its expert's weight rows directly.

At decode (a handful of tokens, almost every slot on a different expert) the grouped GEMMs of
``moe_gemm.py`` pad every slot to a ``BLOCK_M``-row tile, need the alignment, and stream the weights at
2.2-2.5 TB/s of an H100's 3.1 (docs/PERF_NOTES.md). These two kernels are matrix-vector products on CUDA
cores instead, launched with enough small programs to keep every SM's loads in flight:

* GEMV 1, program (slot, ``BLOCK_N`` columns of I): ``inter[slot, n] = act(x[tok] . w13[e, n]) *
  (x[tok] . w13[e, I + n])``, ``tok = slot // top_k``, ``e = topk_ids[slot]`` (through ``expert_map``).
* GEMV 2, program (token, ``BLOCK_N`` columns of H): ``out[tok, n] = sum_j w_j * (inter[tok * top_k + j] .
  w2[e_j, n])``, all top-k experts' tiles loaded together (``[TOPK, BLOCK_N, BLOCK_K]``), so the top-k sum
  needs no kernel of its own and no ``[M * top_k, H]`` intermediate is written.

fp8 and int8 weights (``W_SCALE``; activations stay in x's dtype: fp8 w8a8 runs weight-only at decode): 1 one
scale per weight row (per channel ``[E, N]``, or per tensor ``[E]`` with row stride 0), applied after the K
loop; 2 one scale per (``GROUP_N`` rows, ``GROUP_K`` columns) block ``[E, cdiv(N, GROUP_N), cdiv(K,
GROUP_K)]``, applied per K step (``BLOCK_K`` divides ``GROUP_K``).

No alignment, no host synchronization (CUDA-graph safe). Products and sums are float32; GEMV 2 keeps the
weighted sum in float32 until the single rounding to the output dtype. Slots whose expert maps to -1
(expert parallelism) are skipped and contribute nothing. A slot's weights are read once per slot, so two
slots on one expert read it twice: :func:`gemv_applies` keeps this path to shapes where that is rare.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from moekit.kernels.moe_gemm import ACTIVATIONS, activate

#: Elements of the float32 product tile one program holds per K step (GEMV 1: per gate/up tile). On the
#: H100 4096 beat 2048, 8192 and 16384 at every measured point (more, smaller programs keep more loads in
#: flight); GEMV 2 (all top-k experts' tiles at once) is best at 1024: gpt-oss-20b M=1 79.1 vs 84.4 us,
#: qwen3 within 1 % (``benchmarks/results/bench_gemv_H100_round2.*``).
TILE_ELEMS = 4096
GEMV2_TILE_ELEMS = 1024
MIN_EXPERTS = 16  # see gemv_applies
_MAX_GRID_Y = 65535


def gemv_applies(m: int, e: int, top_k: int) -> bool:
    """Whether the decode GEMV kernels serve ``m`` tokens: at least :data:`MIN_EXPERTS` experts, and few enough
    slots (``m * top_k <= E / 4``) that two slots rarely share an expert (each slot streams its expert's
    weights). Measured on the H100, whole forward, with the shipped tiles: qwen3-30b-a3b (E=128, k=8) M=1/2
    39.0 -> 34.7 / 64.4 -> 59.1 us (M=4: 2 % faster, M=8: slower), gpt-oss-20b bf16 (E=32, k=4) M=1/2
    83.2 -> 79.1 / 139.2 -> 133.2 us; mixtral (E=8, k=2, I=14336) M=1 247.3 -> 249.1 us (270 with larger
    GEMV 2 tiles): few experts with long rows leave GEMV 2 few programs, hence the floor on E."""
    return m >= 1 and e >= MIN_EXPERTS and 4 * m * top_k <= e


@triton.jit
def _moe_gemv1_kernel(
    x_ptr, w_ptr, out_ptr, ids_ptr, map_ptr,
    I, K, top_k, stride_xm, stride_we, stride_wn, stride_om,
    HAS_MAP: tl.constexpr, ACTIVATION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    s_ptr=None, stride_se=0, stride_sn=0, stride_sk=0,
    W_SCALE: tl.constexpr = 0, GROUP_N: tl.constexpr = 1, GROUP_K: tl.constexpr = 1,
):
    slot = tl.program_id(0)
    e = tl.load(ids_ptr + slot)
    if HAS_MAP:
        e = tl.load(map_ptr + e)
    if e < 0:  # a remote expert: GEMV 2 skips this slot too
        return
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + (slot // top_k).to(tl.int64) * stride_xm + offs_k
    g_ptrs = w_ptr + e.to(tl.int64) * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    u_ptrs = g_ptrs + I * stride_wn
    acc_g = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        xk = tl.load(x_ptrs + k0, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        wmask = n_ok[:, None] & k_ok[None, :]
        g = tl.load(g_ptrs + k0, mask=wmask, other=0.0).to(tl.float32)
        u = tl.load(u_ptrs + k0, mask=wmask, other=0.0).to(tl.float32)
        pg = tl.sum(g * xk, axis=1)
        pu = tl.sum(u * xk, axis=1)
        if W_SCALE == 2:
            sk = s_ptr + e.to(tl.int64) * stride_se + (k0 // GROUP_K) * stride_sk
            pg *= tl.load(sk + (offs_n // GROUP_N) * stride_sn, mask=n_ok, other=0.0)
            pu *= tl.load(sk + ((offs_n + I) // GROUP_N) * stride_sn, mask=n_ok, other=0.0)
        acc_g += pg
        acc_u += pu
    if W_SCALE == 1:
        sr = s_ptr + e.to(tl.int64) * stride_se
        acc_g *= tl.load(sr + offs_n * stride_sn, mask=n_ok, other=0.0)
        acc_u *= tl.load(sr + (offs_n + I) * stride_sn, mask=n_ok, other=0.0)
    h = activate(acc_g, ACTIVATION) * acc_u
    tl.store(out_ptr + slot.to(tl.int64) * stride_om + offs_n, h.to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _moe_gemv2_kernel(
    a_ptr, w_ptr, out_ptr, ids_ptr, topk_w_ptr, map_ptr,
    N, K, top_k, stride_am, stride_we, stride_wn, stride_om,
    HAS_MAP: tl.constexpr, TOPK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    s_ptr=None, stride_se=0, stride_sn=0, stride_sk=0,
    W_SCALE: tl.constexpr = 0, GROUP_N: tl.constexpr = 1, GROUP_K: tl.constexpr = 1,
):
    token = tl.program_id(0)
    offs_j = tl.arange(0, TOPK)
    j_ok = offs_j < top_k
    slot = token * top_k + offs_j
    e = tl.load(ids_ptr + slot, mask=j_ok, other=0)
    if HAS_MAP:
        e = tl.load(map_ptr + e, mask=j_ok, other=-1)
    live = j_ok & (e >= 0)
    wt = tl.load(topk_w_ptr + slot, mask=live, other=0.0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + slot.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    w_ptrs = (w_ptr + tl.maximum(e, 0).to(tl.int64)[:, None, None] * stride_we
              + offs_n.to(tl.int64)[None, :, None] * stride_wn + offs_k[None, None, :])
    rows_ok = live[:, None, None] & n_ok[None, :, None]
    acc = tl.zeros([TOPK, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(a_ptrs + k0, mask=live[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptrs + k0, mask=rows_ok & k_ok[None, None, :], other=0.0).to(tl.float32)
        part = tl.sum(w * a[:, None, :], axis=2)
        if W_SCALE == 2:
            part *= tl.load(s_ptr + tl.maximum(e, 0).to(tl.int64)[:, None] * stride_se
                            + (offs_n // GROUP_N)[None, :] * stride_sn + (k0 // GROUP_K) * stride_sk,
                            mask=live[:, None] & n_ok[None, :], other=0.0)
        acc += part
    if W_SCALE == 1:
        acc *= tl.load(s_ptr + tl.maximum(e, 0).to(tl.int64)[:, None] * stride_se + offs_n[None, :] * stride_sn,
                       mask=live[:, None] & n_ok[None, :], other=0.0)
    y = tl.sum(acc * wt[:, None], axis=0)
    tl.store(out_ptr + token.to(tl.int64) * stride_om + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_ok)


def _blocks(k: int, rows: int, max_block_k: int, tile: Optional[int] = None) -> tuple:
    """(BLOCK_N, BLOCK_K): K steps of up to ``max_block_k`` elements, and as many weight rows per step as
    keep ``rows * BLOCK_N * BLOCK_K`` within ``tile`` elements (default :data:`TILE_ELEMS`)."""
    bk = min(max_block_k, triton.next_power_of_2(k))
    return max(1, min(64, (tile or TILE_ELEMS) // (rows * bk))), bk


def gemv_supports(scheme) -> bool:
    """Schemes the GEMV kernels run: unquantized; fp8 weights per tensor, channel or block (run weight-only:
    the activations are not quantized); int8 weight-only per channel (no zero point)."""
    if scheme is None or not scheme.is_quantized:
        return True
    if scheme.weight_dtype == "int8":
        return scheme.weight_only and scheme.granularity == "channel" and not scheme.zero_point
    if scheme.weight_dtype != "fp8" or scheme.granularity not in ("tensor", "channel", "block"):
        return False
    return scheme.granularity != "block" or all(b & (b - 1) == 0 for b in scheme.block_shape)  # powers of 2


def _scale_args(scheme, scale: Optional[torch.Tensor]) -> dict:
    """Kernel arguments of an fp8 weight's scale (see the module docstring); {} when unquantized."""
    if scheme is None or not scheme.is_quantized:
        return {}
    if scheme.granularity == "block":
        gn, gk = scheme.block_shape
        return dict(s_ptr=scale, stride_se=scale.stride(0), stride_sn=scale.stride(1), stride_sk=scale.stride(2),
                    W_SCALE=2, GROUP_N=gn, GROUP_K=gk)
    row = scale.stride(1) if scheme.granularity == "channel" else 0
    return dict(s_ptr=scale, stride_se=scale.stride(0), stride_sn=row, W_SCALE=1)


def moe_gemv(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
             topk_ids: torch.Tensor, expert_map: Optional[torch.Tensor] = None, activation: str = "silu",
             num_warps: int = 4, scheme=None, w13_scale: Optional[torch.Tensor] = None,
             w2_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The decode forward of the experts: x [M, H], w13 [E, 2I, H], w2 [E, H, I], topk_weights float32
    [M, k] and topk_ids int32 [M, k] (contiguous) -> [M, H] in x's dtype. Two launches. ``scheme``: a
    QuantScheme that :func:`gemv_supports` (fp8 weights with ``w13_scale`` / ``w2_scale`` in the layouts of
    :mod:`moekit.quant.moe`), or None."""
    m, h = x.shape
    i = w13.shape[1] // 2
    top_k = topk_ids.shape[1]
    inter = torch.empty((m * top_k, i), dtype=x.dtype, device=x.device)
    out = torch.empty((m, h), dtype=x.dtype, device=x.device)
    has_map = expert_map is not None
    emap = expert_map if has_map else topk_ids
    cap_k = scheme.block_shape[1] if scheme is not None and scheme.granularity == "block" else 1 << 30
    bn, bk = _blocks(h, 1, min(512, cap_k))
    bn = max(bn, triton.next_power_of_2(triton.cdiv(i, _MAX_GRID_Y)))
    _moe_gemv1_kernel[(m * top_k, triton.cdiv(i, bn))](
        x, w13, inter, topk_ids, emap, i, h, top_k, x.stride(0), w13.stride(0), w13.stride(1), inter.stride(0),
        HAS_MAP=has_map, ACTIVATION=ACTIVATIONS[activation], BLOCK_N=bn, BLOCK_K=bk, num_warps=num_warps,
        **_scale_args(scheme, w13_scale),
    )
    topk_pad = triton.next_power_of_2(top_k)
    bn, bk = _blocks(i, topk_pad, min(256, cap_k), GEMV2_TILE_ELEMS)
    bn = max(bn, triton.next_power_of_2(triton.cdiv(h, _MAX_GRID_Y)))  # CUDA grid's y extent
    _moe_gemv2_kernel[(m, triton.cdiv(h, bn))](
        inter, w2, out, topk_ids, topk_weights, emap, h, i, top_k, inter.stride(0), w2.stride(0), w2.stride(1),
        out.stride(0), HAS_MAP=has_map, TOPK=topk_pad, BLOCK_N=bn, BLOCK_K=bk, num_warps=num_warps,
        **_scale_args(scheme, w2_scale),
    )
    return out
