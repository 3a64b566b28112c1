"""Token alignment: group the M*k (token, choice) slots by expert, each group padded to BLOCK_M.

``moe_align_block_size`` returns an :class:`AlignedSlots`:
  sorted_ids  int32 [max_blocks * block_m]  slot ids (slot = token * top_k + j) grouped by local expert in
              expert order, original order kept inside a group; padding entries hold ``M * top_k``;
              entries past ``num_padded`` are unspecified.
  expert_ids  int32 [max_blocks]  local expert of each tile of ``sorted_ids`` (tile t: rows [t * block_m,
              (t + 1) * block_m) without tail tiles); -1 past the used tiles.
  tile_rows   int32 [max_blocks] or None  with tail tiles only: tile t's first row plus log2(block_m / its
              rows); -1 past the used tiles.
  num_padded  int32 [1]  the used length of ``sorted_ids`` (a device scalar, so no host sync).
Slots whose expert ``expert_map`` maps to -1 are left out.

Tail tiles (``min_tile`` < ``block_m``): each expert's run is ``block_m``-row tiles and one last tile of the
fewest rows among ``block_m``, ``block_m / 2``, ..., ``min_tile`` that holds the rest, so an expert with
``block_m + 3`` slots is padded to ``block_m + min_tile`` rows, not ``2 * block_m``. The grouped GEMMs run
each tile at its own row count (:func:`moekit.kernels.moe_gemm.moe_gemm1`): fewer multiply-adds on padding
rows. Runs start at multiples of ``min_tile`` (a power of two, at least 16, dividing ``block_m``).

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
    tile_rows: Optional[torch.Tensor] = None
    min_tile: int = 0  # 0: no tail tiles (every tile block_m rows)


#: Smallest tail tile: 16 rows, the smallest BLOCK_SIZE_M the configs use (and the row granule of tile_rows).
MIN_TAIL_TILE = 16


def tail_rows(count: int, block_m: int, min_tile: int) -> int:
    """Rows of the last tile of a run of ``count`` >= 1 slots (see the module docstring)."""
    rest = count - (count - 1) // block_m * block_m
    rows = block_m
    while rows // 2 >= min_tile and rest <= rows // 2:
        rows //= 2
    return rows


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
                expert_map: Optional[torch.Tensor] = None, min_tile: Optional[int] = None) -> AlignedSlots:
    """PyTorch alignment (reference; host-synchronizing)."""
    device = topk_ids.device
    n = topk_ids.numel()
    tails = min_tile is not None and min_tile < block_m
    ids = local_expert_ids(topk_ids, expert_map, num_experts)
    nb = max_blocks(n, num_experts, block_m)
    sorted_ids = torch.full((nb * block_m,), n, dtype=torch.int32, device=device)
    expert_ids = torch.full((nb,), -1, dtype=torch.int32, device=device)
    tile_rows = torch.full((nb,), -1, dtype=torch.int32, device=device) if tails else None
    counts = torch.bincount(ids, minlength=num_experts + 1)[:num_experts]
    order = torch.argsort(ids, stable=True)
    pos = tile = start = 0
    for e in range(num_experts):
        c = int(counts[e])
        if c == 0:
            continue
        sorted_ids[pos:pos + c] = order[start:start + c].to(torch.int32)
        tiles = -(-c // block_m)
        expert_ids[tile:tile + tiles] = e
        last = tail_rows(c, block_m, min_tile) if tails else block_m
        if tails:
            for j in range(tiles):
                rows = last if j == tiles - 1 else block_m
                tile_rows[tile + j] = pos + j * block_m + (block_m // rows).bit_length() - 1
        pos += (tiles - 1) * block_m + last
        tile += tiles
        start += c
    return AlignedSlots(sorted_ids, expert_ids, torch.tensor([pos], dtype=torch.int32, device=device), block_m,
                        tile_rows, min_tile if tails else 0)


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                         expert_map: Optional[torch.Tensor] = None, *, use_triton: Optional[bool] = None,
                         min_tile: Optional[int] = None) -> AlignedSlots:
    """Align ``topk_ids`` [M, k] (int32) for experts ``0..num_experts-1`` (local ids after ``expert_map``).

    ``use_triton`` defaults to ``topk_ids.is_cuda``; pass True to run the kernels under TRITON_INTERPRET=1.
    ``min_tile``: with a value below ``block_m``, tail tiles (module docstring): a power of two, at least
    :data:`MIN_TAIL_TILE`, dividing ``block_m``; None or ``block_m``: every tile ``block_m`` rows.
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
    if min_tile is not None and min_tile != block_m:
        check_arg(isinstance(min_tile, int) and not isinstance(min_tile, bool) and min_tile >= MIN_TAIL_TILE
                  and min_tile & (min_tile - 1) == 0 and block_m % min_tile == 0, "min_tile",
                  f"None or a power of two >= {MIN_TAIL_TILE} dividing block_m={block_m}", repr(min_tile))
    else:
        min_tile = None
    if expert_map is not None:
        check_expert_map(expert_map, topk_ids.device, "topk_ids")
        expert_map = expert_map.contiguous()
    if use_triton is None:
        use_triton = topk_ids.is_cuda
    if not use_triton:
        return align_torch(topk_ids, num_experts, block_m, expert_map, min_tile)
    from moekit.kernels.align import align_triton

    nb = max_blocks(topk_ids.numel(), num_experts, block_m)
    sorted_ids, expert_ids, tile_rows, npp = align_triton(topk_ids, num_experts, block_m, nb, expert_map, min_tile)
    return AlignedSlots(sorted_ids, expert_ids, npp, block_m, tile_rows, min_tile or 0)


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
