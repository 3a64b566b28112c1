"""Routing: pick the top-k experts of every token and their weights.

Public entry point: :func:`select_experts`.

Scoring modes
-------------
* ``scoring="softmax"``  (Mixtral, Qwen3-MoE, OLMoE): ``p = softmax(logits)``; choose the k largest ``p``;
  weights are the chosen ``p`` (divided by their sum when ``renormalize``).
* ``scoring="sigmoid"``: ``p = sigmoid(logits)``; same choice and weights.
* grouped top-k (DeepSeek-V2/V3, ``num_expert_group`` and ``topk_group`` given): experts are split in
  ``num_expert_group`` equal groups; the choice score is ``p + correction_bias`` (bias optional); a group's
  score is the sum of its two best choice scores when a correction bias is given (DeepSeek-V3) and its best
  choice score otherwise (DeepSeek-V2), as in the reference implementations; the ``topk_group`` best groups
  are kept and the k best experts among them are chosen by choice score. The weights are the chosen ``p``
  **without** the bias (the bias steers the choice only), renormalized when asked.

Ties are broken towards the lower expert id on every backend.

NaN policy: router logits are not inspected on the fast path (that would cost a host synchronization).
A token whose scores contain NaN gets in-range expert ids and NaN weights, so its output is NaN, never a
plausible-looking wrong value. With ``MOEKIT_VALIDATE=1`` NaN/inf logits raise :class:`MoEInputError`.
-inf logits are valid input (an expert that is never chosen while others are finite; an all -inf row is NaN as
above). A +inf logit makes softmax NaN (inf / inf): its token's output is NaN on every backend.

The Triton kernel (``moekit.kernels.routing``) runs every mode in one launch on the GPU; CPU tensors use the
PyTorch code below, which is also the reference.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from moekit import envs
from moekit.errors import check_arg

SCORINGS = ("softmax", "sigmoid")


def _scores(logits: torch.Tensor, scoring: str) -> torch.Tensor:
    x = logits.float() if logits.dtype != torch.float64 else logits
    return torch.softmax(x, dim=-1) if scoring == "softmax" else torch.sigmoid(x)


def _topk_low_index_ties(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries per row, ties resolved towards the lower index (stable)."""
    return torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]


def select_experts_torch(
    router_logits: torch.Tensor,
    top_k: int,
    *,
    renormalize: bool = True,
    scoring: str = "softmax",
    num_expert_group: Optional[int] = None,
    topk_group: Optional[int] = None,
    correction_bias: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """PyTorch routing (reference and CPU path). Same contract as :func:`select_experts`."""
    scores = _scores(router_logits, scoring)
    choice = scores if correction_bias is None else scores + correction_bias.to(scores.dtype)
    if num_expert_group is not None:
        m, e = choice.shape
        grouped = choice.view(m, num_expert_group, e // num_expert_group)
        if correction_bias is not None:
            group_score = grouped.topk(2, dim=-1).values.sum(-1)
        else:
            group_score = grouped.max(dim=-1).values
        keep_groups = _topk_low_index_ties(group_score, topk_group)
        group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep_groups, True)
        expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(m, e)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
    ids = _topk_low_index_ties(choice, top_k)
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    out_dtype = torch.float64 if router_logits.dtype == torch.float64 else torch.float32
    return weights.to(out_dtype), ids.to(torch.int32)


def grouped_routing(num_expert_group: Optional[int]) -> bool:
    """Whether ``num_expert_group`` asks for grouped top-k (one group is plain top-k)."""
    return num_expert_group is not None and num_expert_group > 1


def check_routing_args(router_logits, top_k, scoring, num_expert_group, topk_group, correction_bias) -> None:
    """Shape/dtype/value checks that need no host synchronization."""
    check_arg(isinstance(router_logits, torch.Tensor), "router_logits", "a torch.Tensor", type(router_logits).__name__)
    check_arg(router_logits.dim() == 2, "router_logits", "a 2-D tensor [M, E]", f"shape {tuple(router_logits.shape)}")
    check_arg(router_logits.is_floating_point(), "router_logits", "a floating-point dtype", router_logits.dtype)
    e = router_logits.shape[1]
    check_arg(isinstance(top_k, int) and not isinstance(top_k, bool) and 1 <= top_k <= e, "top_k",
              f"an int in [1, E={e}]", repr(top_k))
    check_arg(scoring in SCORINGS, "scoring", f"one of {SCORINGS}", scoring)
    check_arg((num_expert_group is None) == (topk_group is None), "num_expert_group/topk_group",
              "both set or both None", f"num_expert_group={num_expert_group}, topk_group={topk_group}")
    if num_expert_group is not None:
        check_arg(isinstance(num_expert_group, int) and num_expert_group >= 1 and e % num_expert_group == 0,
                  "num_expert_group", f"a positive divisor of E={e}", num_expert_group)
        check_arg(isinstance(topk_group, int) and 1 <= topk_group <= num_expert_group, "topk_group",
                  f"an int in [1, num_expert_group={num_expert_group}]", topk_group)
        per_group = e // num_expert_group
        check_arg(top_k <= topk_group * per_group, "top_k",
                  f"<= topk_group * experts per group = {topk_group * per_group}", top_k)
        if correction_bias is not None:
            check_arg(per_group >= 2, "num_expert_group", "groups of at least 2 experts when correction_bias is set",
                      f"{per_group} expert(s) per group")
    if correction_bias is not None:
        check_arg(isinstance(correction_bias, torch.Tensor) and correction_bias.shape == (e,), "correction_bias",
                  f"a tensor of shape ({e},)", getattr(correction_bias, "shape", type(correction_bias).__name__))
        check_arg(correction_bias.device == router_logits.device, "correction_bias",
                  f"device {router_logits.device}", correction_bias.device)


def validate_routing(router_logits, top_k, scoring, num_expert_group=None, topk_group=None,
                     correction_bias=None) -> None:
    """All routing argument checks; with MOEKIT_VALIDATE=1 also NaN/inf logits (a host sync)."""
    check_routing_args(router_logits, top_k, scoring, num_expert_group, topk_group, correction_bias)
    if envs.get("MOEKIT_VALIDATE"):
        bad = int((~torch.isfinite(router_logits)).sum())
        check_arg(bad == 0, "router_logits", "finite values (MOEKIT_VALIDATE=1)", f"{bad} NaN/inf entries")


def select_experts(
    router_logits: torch.Tensor,
    top_k: int,
    *,
    renormalize: bool = True,
    scoring: str = "softmax",
    num_expert_group: Optional[int] = None,
    topk_group: Optional[int] = None,
    correction_bias: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Choose ``top_k`` experts per token.

    Args:
        router_logits: ``[M, E]`` float tensor (any float dtype; scored in float32).
        top_k: experts per token, ``1 <= top_k <= E``.
        renormalize: divide the chosen weights by their sum.
        scoring: ``"softmax"`` or ``"sigmoid"``.
        num_expert_group, topk_group: grouped top-k (both or neither); ``E % num_expert_group == 0``.
        correction_bias: ``[E]`` float tensor added to the scores for the choice only (DeepSeek-V3).

    Returns:
        ``(topk_weights, topk_ids)``: float32 ``[M, top_k]`` and int32 ``[M, top_k]``, each row's ids distinct,
        ordered by decreasing choice score. (float64 logits give float64 weights, for references.)
    """
    validate_routing(router_logits, top_k, scoring, num_expert_group, topk_group, correction_bias)
    from moekit.kernels.routing import routing_kernel_applicable, select_experts_triton

    if routing_kernel_applicable(router_logits, top_k):
        return select_experts_triton(router_logits, top_k, renormalize=renormalize, scoring=scoring,
                                     num_expert_group=num_expert_group, topk_group=topk_group,
                                     correction_bias=correction_bias)
    return select_experts_torch(
        router_logits, top_k, renormalize=renormalize, scoring=scoring,
        num_expert_group=num_expert_group, topk_group=topk_group, correction_bias=correction_bias,
    )
