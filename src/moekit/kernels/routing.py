"""Triton kernel: softmax / sigmoid top-k routing in a single launch.

One program handles ``BLOCK_T`` tokens; it scores all E experts of each token in float32, then picks the
best expert ``top_k`` times with ``tl.argmax`` (ties to the lower id), and writes float32 weights and int32
ids. Same contract as :func:`moekit.routing.select_experts_torch` for the non-grouped modes.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from moekit.kernels import warps_for

# One program holds a [BLOCK_T, E_PAD] tile of scores; keep it within a few thousand registers' worth.
MAX_SCORE_TILE = 8192  # [tokens, experts] float32 scores one routing program holds
_MAX_EXPERTS = 4096


@triton.jit
def route_rows(logits_ptr, rows, M, E, TOP_K, stride_lm, SIGMOID: tl.constexpr, RENORMALIZE: tl.constexpr,
               E_PAD: tl.constexpr, K_PAD: tl.constexpr):
    """Top-k routing of the token rows ``rows`` [BLOCK_T]: returns (weights float32, ids int32), each
    [BLOCK_T, K_PAD] with columns >= TOP_K unspecified. Shared by the routing kernel and the fused
    route-and-align decode kernel (kernels/align.py)."""
    cols = tl.arange(0, E_PAD)
    row_mask = rows < M
    mask = row_mask[:, None] & (cols[None, :] < E)
    x = tl.load(logits_ptr + rows.to(tl.int64)[:, None] * stride_lm + cols[None, :], mask=mask,
                other=-float("inf")).to(tl.float32)
    if SIGMOID:
        s = 1.0 / (1.0 + tl.exp(-x))
    else:
        x_max = tl.max(x, axis=1)
        x_max = tl.where(row_mask, x_max, 0.0)  # rows past M are all -inf: keep them NaN-free
        p = tl.exp(x - x_max[:, None])
        s = p / tl.where(row_mask, tl.sum(p, axis=1), 1.0)[:, None]
    # NaN policy: a row with a NaN score chooses in-range experts and gets NaN weights (NaN out, never a
    # silently plausible answer, never an out-of-range id).
    row_nan = tl.max(tl.where(mask & (s != s), 1, 0), axis=1) > 0
    s = tl.where(mask & (s == s), s, -1.0)  # scores are >= 0; -1 marks padding, NaN and taken experts
    kcols = tl.arange(0, K_PAD)
    w_tile = tl.zeros([rows.shape[0], K_PAD], dtype=tl.float32)
    id_tile = tl.zeros([rows.shape[0], K_PAD], dtype=tl.int32)
    for j in range(TOP_K):
        best = tl.argmax(s, axis=1, tie_break_left=True)
        best_val = tl.max(s, axis=1)
        w_tile = tl.where(kcols[None, :] == j, best_val[:, None], w_tile)
        id_tile = tl.where(kcols[None, :] == j, best[:, None].to(tl.int32), id_tile)
        s = tl.where(cols[None, :] == best[:, None], -1.0, s)
    if RENORMALIZE:
        w_tile = w_tile / tl.where(row_mask, tl.sum(w_tile, axis=1), 1.0)[:, None]
    w_tile = tl.where(row_nan[:, None], float("nan"), w_tile)
    id_tile = tl.where(id_tile < E, id_tile, 0)  # all-NaN rows: argmax may land on padding
    return w_tile, id_tile


@triton.jit
def store_routing(w_ptr, ids_ptr, rows, w_tile, id_tile, M, TOP_K, stride_wm, stride_im, K_PAD: tl.constexpr):
    kcols = tl.arange(0, K_PAD)
    out_mask = (rows < M)[:, None] & (kcols[None, :] < TOP_K)
    tl.store(w_ptr + rows.to(tl.int64)[:, None] * stride_wm + kcols[None, :], w_tile, mask=out_mask)
    tl.store(ids_ptr + rows.to(tl.int64)[:, None] * stride_im + kcols[None, :], id_tile, mask=out_mask)


@triton.jit
def _routing_kernel(
    logits_ptr, w_ptr, ids_ptr, M, E, TOP_K,
    stride_lm, stride_wm, stride_im,
    SIGMOID: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, E_PAD: tl.constexpr, K_PAD: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    w_tile, id_tile = route_rows(logits_ptr, rows, M, E, TOP_K, stride_lm, SIGMOID, RENORMALIZE, E_PAD, K_PAD)
    store_routing(w_ptr, ids_ptr, rows, w_tile, id_tile, M, TOP_K, stride_wm, stride_im, K_PAD)


def routing_kernel_applicable(router_logits: torch.Tensor, top_k: int) -> bool:
    """The kernel runs on GPU tensors with E up to 4096 (float16/bfloat16/float32 logits)."""
    return (
        router_logits.is_cuda
        and router_logits.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and router_logits.shape[1] <= _MAX_EXPERTS
    )


def select_experts_triton(
    router_logits: torch.Tensor, top_k: int, *, renormalize: bool = True, scoring: str = "softmax"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the routing kernel. ``router_logits`` [M, E] -> (float32 [M, k], int32 [M, k])."""
    logits = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    m, e = logits.shape
    weights = torch.empty((m, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((m, top_k), dtype=torch.int32, device=logits.device)
    if m == 0:
        return weights, ids
    e_pad = triton.next_power_of_2(e)
    block_t = max(1, min(16, MAX_SCORE_TILE // e_pad, triton.next_power_of_2(m)))
    _routing_kernel[(triton.cdiv(m, block_t),)](
        logits, weights, ids, m, e, top_k,
        logits.stride(0), weights.stride(0), ids.stride(0),
        SIGMOID=scoring == "sigmoid", RENORMALIZE=renormalize,
        BLOCK_T=block_t, E_PAD=e_pad, K_PAD=triton.next_power_of_2(top_k),
        num_warps=warps_for(e_pad * block_t, 32),
    )
    return weights, ids
