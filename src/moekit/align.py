"""Token alignment: group the M*k (token, choice) slots by expert, each group padded to BLOCK_M.

``moe_align_block_size`` returns an :class:`AlignedSlots`:
  sorted_ids  int32 [max_blocks * block_m]  slot ids (slot = token * top_k + j) grouped by local expert in
              expert order, original order kept inside a group; padding entries hold ``M * top_k``;
              entries past ``num_padded`` are unspecified.
  expert_ids  int32 [max_blocks]  local expert of each block of ``sorted_ids``; -1 past the end.
  num_padded  int32 [1]  the used length of ``sorted_ids`` (a device scalar, so no host sync).
Slots whose expert ``expert_map`` maps to -1 are left out.

On GPU tensors the Triton kernels in ``moekit.kernels.align`` do the work with no host synchronization
(the whole forward can be captured in a CUDA graph); :func:`align_torch` is the PyTorch twin and reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from moekit.errors import check_arg


def check_expert_map(expert_map, device: torch.device, device_of: str) -> None:
    """An expert map: a 1-D int32 (or int64) tensor [E_global] on ``device`` (that of ``device_of``)."""
    check_arg(isinstance(expert_map, torch.Tensor) and expert_map.dim() == 1, "expert_map",
              "a 1-D int32 tensor [E_global]", getattr(expert_map, "shape", type(expert_map).__name__))
    check_arg(expert_map.dtype in (torch.int32, torch.int64), "expert_map", "dtype int32", expert_map.dtype)
    check_arg(expert_map.device == device, "expert_map", f"device {device} (that of {device_of})", expert_map.device)


@dataclass
class AlignedSlots:
    sorted_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_padded: torch.Tensor
    block_m: int


def max_blocks(num_slots: int, num_experts: int, block_m: int) -> int:
    """Upper bound on the blocks of the padded sort: each non-empty expert wastes at most block_m - 1 rows."""
    return -(-(num_slots + min(num_experts, num_slots) * (block_m - 1)) // block_m)


def local_expert_ids(topk_ids: torch.Tensor, expert_map: Optional[torch.Tensor], num_experts: int) -> torch.Tensor:
    """Flat int64 local expert id of each slot (``expert_map[id]``, or the id without a map), ``num_experts``
    for every slot not routed here: remote experts, ids outside the map (no index wrap-around) and local ids
    outside [0, num_experts). The PyTorch twin of the Triton kernels' one rule,
    :func:`moekit.kernels.align.local_expert`."""
    ids = topk_ids.reshape(-1).long()
    if expert_map is not None:
        n_map = expert_map.numel()
        ids = torch.where((ids >= 0) & (ids < n_map), expert_map.long()[ids.clamp(0, n_map - 1)], -1)
    return torch.where((ids >= 0) & (ids < num_experts), ids, num_experts)


def align_torch(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                expert_map: Optional[torch.Tensor] = None) -> AlignedSlots:
    """PyTorch alignment (reference; host-synchronizing)."""
    device = topk_ids.device
    n = topk_ids.numel()
    ids = local_expert_ids(topk_ids, expert_map, num_experts)
    nb = max_blocks(n, num_experts, block_m)
    sorted_ids = torch.full((nb * block_m,), n, dtype=torch.int32, device=device)
    expert_ids = torch.full((nb,), -1, dtype=torch.int32, device=device)
    counts = torch.bincount(ids, minlength=num_experts + 1)[:num_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    order = torch.argsort(ids, stable=True)
    pos = 0
    start = 0
    for e in range(num_experts):
        c, p = int(counts[e]), int(padded[e])
        sorted_ids[pos:pos + c] = order[start:start + c].to(torch.int32)
        expert_ids[pos // block_m:(pos + p) // block_m] = e
        pos += p
        start += c
    return AlignedSlots(sorted_ids, expert_ids, torch.tensor([pos], dtype=torch.int32, device=device), block_m)


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                         expert_map: Optional[torch.Tensor] = None, *, use_triton: Optional[bool] = None) -> AlignedSlots:
    """Align ``topk_ids`` [M, k] (int32) for experts ``0..num_experts-1`` (local ids after ``expert_map``).

    ``use_triton`` defaults to ``topk_ids.is_cuda``; pass True to run the kernels under TRITON_INTERPRET=1.
    ``expert_map`` (int32 [E_global]) maps ids to local experts (-1: not here); ids must be below its length
    and map entries below ``num_experts`` (values are not inspected: that would cost a host sync; ids past
    ``num_experts`` without a map are dropped).
    """
    check_arg(isinstance(topk_ids, torch.Tensor) and not topk_ids.is_floating_point()
              and not topk_ids.is_complex() and topk_ids.dtype != torch.bool, "topk_ids",
              "an integer tensor [M, k]", getattr(topk_ids, "dtype", type(topk_ids).__name__))
    check_arg(isinstance(num_experts, int) and not isinstance(num_experts, bool) and num_experts >= 0, "num_experts",
              "an int >= 0", repr(num_experts))
    check_arg(isinstance(block_m, int) and not isinstance(block_m, bool) and block_m >= 1, "block_m", "an int >= 1",
              repr(block_m))
    if expert_map is not None:
        check_expert_map(expert_map, topk_ids.device, "topk_ids")
        expert_map = expert_map.contiguous()
    if use_triton is None:
        use_triton = topk_ids.is_cuda
    if not use_triton:
        return align_torch(topk_ids, num_experts, block_m, expert_map)
    from moekit.kernels.align import align_triton

    nb = max_blocks(topk_ids.numel(), num_experts, block_m)
    sorted_ids, expert_ids, npp = align_triton(topk_ids, num_experts, block_m, nb, expert_map)
    return AlignedSlots(sorted_ids, expert_ids, npp, block_m)


def route_and_align(router_logits: torch.Tensor, top_k: int, renormalize: bool, scoring: str, num_experts: int,
                    block_m: int, expert_map: Optional[torch.Tensor] = None, num_expert_group: Optional[int] = None,
                    topk_group: Optional[int] = None, correction_bias: Optional[torch.Tensor] = None):
    """Decode fast path (Triton): routing (every mode of :func:`moekit.select_experts`) and the alignment in
    one launch.

    Returns ``(topk_weights, topk_ids, AlignedSlots)``, identical to :func:`moekit.select_experts` followed by
    :func:`moe_align_block_size`. Only for problems where
    :func:`moekit.kernels.align.route_align_applicable` holds (few tokens)."""
    from moekit.kernels.align import route_align_triton

    nb = max_blocks(router_logits.shape[0] * top_k, num_experts, block_m)
    w, ids, sorted_ids, expert_ids, npp = route_align_triton(router_logits, top_k, renormalize, scoring, num_experts,
                                                             block_m, nb, expert_map, num_expert_group, topk_group,
                                                             correction_bias)
    return w, ids, AlignedSlots(sorted_ids, expert_ids, npp, block_m)
