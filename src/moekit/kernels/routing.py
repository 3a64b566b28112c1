"""Triton kernel: softmax / sigmoid top-k routing in a single launch, every mode of :mod:`moekit.routing`.

One program handles ``BLOCK_T`` tokens; it scores all E experts of each token in float32, adds the correction
bias to get the choice scores, keeps the best groups (grouped top-k), then picks the best expert ``top_k``
times with ``tl.argmax`` (ties to the lower id), and writes float32 weights and int32 ids. Same contract as
:func:`moekit.routing.select_experts_torch`. Replaces the PyTorch grouped top-k on the GPU, which took 58.6 us
per DeepSeek-V3 decode step (M = 1, CUDA-graph replay, H100: a dozen sort / top-k / scatter launches). With
programmatic dependent launch (:mod:`moekit.kernels.pdl`) it lets the next kernel (the decode GEMV 1) start
at once; that kernel waits for these writes before it reads them.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from moekit.kernels import pdl, warps_for
from moekit.platform import programmatic_launch
from moekit.routing import grouped_routing

# One program holds a [BLOCK_T, E_PAD] tile of scores; keep it within a few thousand registers' worth.
MAX_SCORE_TILE = 8192  # [tokens, experts] float32 scores one routing program holds
_MAX_EXPERTS = 4096
#: Tokens one routing program scores. One: a program's reductions (a few dozen argmax / max / sum over the
#: token's experts, in sequence) then run in one warp's registers and shuffles, and programs run side by side.
#: Measured on the H100 (``benchmarks/bench_routing.py --tokens-per-program 1,2,4,16``,
#: ``bench_routing_tpp_H100_session13.json``, CUDA-graph replay): DeepSeek-V3 grouped top-k M=16 / 4096
#: 5.34 / 18.8 us with 1 token per program against 33.9 / 39.6 with 16; Qwen3 softmax top-8 3.44 / 7.56
#: against 14.05 / 14.48. 2 and 4 lie between at every M from 4 to 4096; all equal at M = 1. Then each top-k
#: step became one reduction (value and index together; ``bench_routing_maxidx_H100_session13.json``): Qwen3
#: M=1 / 16 / 4096 2.64 / 2.72 / 6.83 us, DeepSeek-V3 5.16 / 5.24 / 18.0.
TOKENS_PER_PROGRAM = 1


@triton.jit
def route_rows(logits_ptr, rows, M, E, TOP_K, stride_lm, SIGMOID: tl.constexpr, RENORMALIZE: tl.constexpr,
               E_PAD: tl.constexpr, K_PAD: tl.constexpr, bias_ptr, HAS_BIAS: tl.constexpr, GROUPS: tl.constexpr,
               G_PAD: tl.constexpr, TOPK_GROUP: tl.constexpr):
    """Top-k routing of the token rows ``rows`` [BLOCK_T]: returns (weights float32, ids int32), each
    [BLOCK_T, K_PAD] with columns >= TOP_K unspecified. Shared by the routing kernel and the fused
    route-and-align decode kernel (kernels/align.py).

    ``HAS_BIAS``: the choice score is the score plus ``bias_ptr[e]`` (float, [E]); the weights stay the scores.
    ``GROUPS`` > 1: grouped top-k (E / GROUPS experts per group, ``G_PAD`` = GROUPS padded to a power of two):
    each group is scored by the sum of its two best choice scores with a bias, by its best one without; the
    ``TOPK_GROUP`` best groups are kept (ties to the lower group) and the experts are chosen among them."""
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
    c = s
    if HAS_BIAS:
        c = s + tl.load(bias_ptr + cols, mask=cols < E, other=0.0).to(tl.float32)[None, :]
    c = tl.where(mask & (c == c), c, -float("inf"))  # -inf marks padding, NaN, dropped groups, taken experts
    if GROUPS > 1:
        gid = cols // (E // GROUPS)
        gcols = tl.arange(0, G_PAD)
        g_score = tl.full([rows.shape[0], G_PAD], -float("inf"), dtype=tl.float32)
        for g in tl.static_range(GROUPS):
            cg = tl.where((gid == g)[None, :], c, -float("inf"))
            top, first = tl.max(cg, axis=1, return_indices=True, return_indices_tie_break_left=True)
            if HAS_BIAS:  # plus the second best: the best with one occurrence of the first removed
                top += tl.max(tl.where(cols[None, :] == first[:, None], -float("inf"), cg), axis=1)
            g_score = tl.where(gcols[None, :] == g, top[:, None], g_score)
        g_taken = gcols[None, :] >= GROUPS  # padding groups are never kept
        keep = tl.zeros([rows.shape[0], E_PAD], dtype=tl.int1)
        for _ in tl.static_range(TOPK_GROUP):
            best_g = tl.argmax(tl.where(g_taken, -float("inf"), g_score), axis=1, tie_break_left=True)
            g_taken = g_taken | (gcols[None, :] == best_g[:, None])
            keep = keep | (gid[None, :] == best_g[:, None])
        c = tl.where(keep, c, -float("inf"))
    s = tl.where(mask & (s == s), s, 0.0)
    kcols = tl.arange(0, K_PAD)
    w_tile = tl.zeros([rows.shape[0], K_PAD], dtype=tl.float32)
    id_tile = tl.zeros([rows.shape[0], K_PAD], dtype=tl.int32)
    for j in range(TOP_K):  # value and index in one reduction; with a bias the weight is gathered from s
        best_c, best = tl.max(c, axis=1, return_indices=True, return_indices_tie_break_left=True)
        chosen = cols[None, :] == best[:, None]
        if HAS_BIAS:
            best_c = tl.sum(tl.where(chosen, s, 0.0), axis=1)
        w_tile = tl.where(kcols[None, :] == j, best_c[:, None], w_tile)
        id_tile = tl.where(kcols[None, :] == j, best[:, None].to(tl.int32), id_tile)
        c = tl.where(chosen, -float("inf"), c)
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
    BLOCK_T: tl.constexpr, E_PAD: tl.constexpr, K_PAD: tl.constexpr, bias_ptr, HAS_BIAS: tl.constexpr,
    GROUPS: tl.constexpr, G_PAD: tl.constexpr, TOPK_GROUP: tl.constexpr, PDL: tl.constexpr = False,
):
    pdl.launch_dependents(PDL)  # a kernel launched after this one with PDL may start (and wait for our writes)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    w_tile, id_tile = route_rows(logits_ptr, rows, M, E, TOP_K, stride_lm, SIGMOID, RENORMALIZE, E_PAD, K_PAD,
                                 bias_ptr, HAS_BIAS, GROUPS, G_PAD, TOPK_GROUP)
    store_routing(w_ptr, ids_ptr, rows, w_tile, id_tile, M, TOP_K, stride_wm, stride_im, K_PAD)


def routing_kernel_applicable(router_logits: torch.Tensor, top_k: int) -> bool:
    """The kernel runs on GPU tensors with E up to 4096 (float16/bfloat16/float32 logits)."""
    return (
        router_logits.is_cuda
        and router_logits.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and router_logits.shape[1] <= _MAX_EXPERTS
    )


def choice_args(num_expert_group: Optional[int], topk_group: Optional[int], correction_bias: Optional[torch.Tensor],
                dummy: torch.Tensor) -> dict:
    """The :func:`route_rows` arguments of the choice rule: correction bias (contiguous, or ``dummy`` when
    None) and grouped top-k (``GROUPS`` 0 when not grouped). Arguments as checked by
    :func:`moekit.routing.check_routing_args`."""
    groups = num_expert_group if grouped_routing(num_expert_group) else 0
    return dict(bias_ptr=dummy if correction_bias is None else correction_bias.contiguous(),
                HAS_BIAS=correction_bias is not None, GROUPS=groups,
                G_PAD=triton.next_power_of_2(groups) if groups else 1, TOPK_GROUP=topk_group if groups else 0)


def select_experts_triton(
    router_logits: torch.Tensor, top_k: int, *, renormalize: bool = True, scoring: str = "softmax",
    num_expert_group: Optional[int] = None, topk_group: Optional[int] = None,
    correction_bias: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the routing kernel. ``router_logits`` [M, E] -> (float32 [M, k], int32 [M, k]); grouped top-k
    and the correction bias as in :func:`moekit.select_experts` (arguments already checked)."""
    logits = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    m, e = logits.shape
    weights = torch.empty((m, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((m, top_k), dtype=torch.int32, device=logits.device)
    if m == 0:
        return weights, ids
    e_pad = triton.next_power_of_2(e)
    block_t = max(1, min(TOKENS_PER_PROGRAM, MAX_SCORE_TILE // e_pad, triton.next_power_of_2(m)))
    _routing_kernel[(triton.cdiv(m, block_t),)](
        logits, weights, ids, m, e, top_k,
        logits.stride(0), weights.stride(0), ids.stride(0),
        SIGMOID=scoring == "sigmoid", RENORMALIZE=renormalize,
        BLOCK_T=block_t, E_PAD=e_pad, K_PAD=triton.next_power_of_2(top_k),
        **choice_args(num_expert_group, topk_group, correction_bias, weights),
        num_warps=warps_for(e_pad * block_t, 32), PDL=programmatic_launch(logits.device),
    )
    return weights, ids
