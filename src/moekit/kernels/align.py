"""Triton kernels: sort the M*k token slots by expert, each expert's run padded to a multiple of BLOCK_M.

No host synchronization: buffer sizes are upper bounds computed from shapes, and the true padded length is
written to a device scalar that the GEMM kernels read. Deterministic: slots of one expert keep their
original order (a stable sort), so repeated runs are bitwise identical.

Where the slots fit one program (:func:`align_single_applicable`) it does everything (one launch, up to 1024
slots): it sorts the slots by (expert, slot). Above that, three launches: per-chunk expert histograms [chunks,
E_PAD]; a scan down each expert's column (programs of ``SCAN_COLS`` experts each: every chunk's offset inside
its expert's run, and the expert totals); then each chunk computes the experts' padded starts from the totals
(an E_PAD-wide cumsum), sorts its slots the same way and scatters them, chunk 0 also writing the used length
and the padding. Every used block holds at least one
real slot, so the slots also write their block's owner expert: no block x expert search.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from moekit.kernels import pdl
from moekit.kernels.routing import MAX_SCORE_TILE, choice_args, route_rows, store_routing
from moekit.platform import programmatic_launch

#: Up to this many slots one program does the whole alignment (a sort of the slots by expert, :func:`_align_lanes`);
#: above, the three launches. H100, CUDA-graph replay (``benchmarks/bench_align.py --single-max 0 --single-warps
#: 1,2,4,8``, ``bench_align_single_H100_session18.log``, ``bench_align_warps_H100_session18.log``), one program
#: (best warps) against the three launches: Qwen3 (E=128, k=8) M=1 / 16 / 64 / 128 / 256 2.6 / 3.0 / 4.6 / 7.3 /
#: 18.7 against 9.2 / 10.3 / 11.1 / 11.2 / 11.5 us; DeepSeek-V3 (E=256) M=64 / 128 / 256 5.4 / 8.4 / 20.0 against
#: 11.0 / 11.2 / 11.1; Mixtral (E=8, k=2) M=1 / 256 1.6 / 3.8 against 8.6 / 8.3. Before (one program with [slots,
#: slots] rank and [slots, bins] lookup tiles, up to 256 slots and 16384 tile elements): Qwen3 M=16 11.0, M=8 6.6.
SINGLE_MAX = 1024
#: Warps of the one-program alignment: ``SINGLE_WARPS`` up to ``SINGLE_WARPS_SLOTS`` slots, 8 above (same runs:
#: Qwen3 M=16 1 / 2 / 4 / 8 warps 5.5 / 3.8 / 3.0 / 3.2 us, M=128 26.8 / 14.7 / 9.9 / 7.3).
SINGLE_WARPS = 4
SINGLE_WARPS_SLOTS = 256
#: Warps of the fused route-and-align kernel (measured above).
FUSED_WARPS = 4
CHUNK = 128  # slots per program in the multi-program path
#: The column scan's tile: ``SCAN_ROWS`` chunks x ``SCAN_COLS`` experts per step, E_PAD / SCAN_COLS programs. It
#: replaced one program that ran through the whole [chunks, E_PAD] table twice (totals, then offsets). The three
#: launches, H100, CUDA-graph replay (``benchmarks/bench_align.py``, ``bench_align_H100_session14.json``), before
#: -> after: Qwen3 (E=128, k=8) M=1024 / 4096 / 16384 13.3 / 30.1 / 103.3 -> 11.8 / 14.2 / 43.0 us; DeepSeek-V3
#: (E=256) 16.3 / 33.9 / 107.9 -> 12.4 / 14.9 / 44.3; Mixtral (E=8, k=2) 10.0 / 10.2 / 15.2 -> 8.4 / 8.5 / 11.7.
SCAN_ROWS = 256
SCAN_COLS = 16
#: The scatter's warps. Each chunk ranks its slots by a sort (:func:`_sorted_lanes`); it replaced a [CHUNK, CHUNK]
#: comparison tile (session 18). H100, the three launches alone with tail tiles, CUDA-graph replay
#: (``benchmarks/bench_align.py``, ``bench_align_scatter_H100_session18.json``), comparison tile -> sort at 8 warps:
#: Qwen3 M=256 / 1024 / 4096 11.6 / 12.3 / 17.5 -> 7.6 / 8.2 / 10.5 us; DeepSeek-V3 11.2 / 12.4 / 16.7 -> 7.9 / 9.6 /
#: 12.1; Mixtral 9.9 / 10.0 / 10.3 -> 6.1 / 6.3 / 6.4 (4 warps: within 0.6 us either way).
SCATTER_WARPS = 8
#: The fused route-and-align kernel routes all tokens in its one program: at most this many [tokens, experts]
#: score elements, grouped top-k counted ``GROUPED_ROUTE_COST`` times (its per-group reductions). H100, with the
#: sorted alignment (``benchmarks/bench_routing.py --fused 1,2,4,8,16 --fused-warps 1,4``,
#: ``bench_routing_fused_qwen3_H100_session18.json``): Qwen3 (softmax, 128 experts) fused at 4 warps against the
#: routing kernel + the one-program alignment M=1 / 2 / 4 / 8 / 16 4.8 / 4.8 / 4.8 / 6.3 / 10.2 against 5.3 / 5.3 /
#: 5.4 / 5.6 / 5.8 us (1 warp: 6.3 / 7.0 / 9.5 / 21.9 / 42.5); DeepSeek-V3 (grouped, 256) at M=1 10.0 against 9.0
#: (``bench_routing_fused_warps_H100_session18.log``). Before the sorted alignment (session 13) the limit was 2048.
FUSED_ROUTE_TILE = 512
GROUPED_ROUTE_COST = 8


def expert_bins(num_experts: int) -> int:
    """Histogram width (E_PAD) for ``num_experts`` local experts: the next power of two, at least 4.

    The floor keeps one- and two-expert problems off 1- and 2-bin histograms and scans. Commit 19eff51
    dropped the spare bin (E_PAD = E for a power-of-two E), and after that the H100 property test hit an
    illegal address. Widths 1 and 2 are the only ones that commit introduced which no GPU test had run;
    with this floor the full H100 suite, the property test and 300 replayed problems of its space
    (``benchmarks/repro_property.py``) pass (``benchmarks/results/gpu_tests_H100_full_suite_0042894.log``)."""
    return max(4, triton.next_power_of_2(num_experts))


@triton.jit
def local_expert(ids_ptr, map_ptr, offs, valid, E, n_map, HAS_MAP: tl.constexpr):
    """The one rule for which local expert a top-k slot goes to, shared by the alignment, the top-k sum and the
    decode GEMVs (PyTorch twin: :func:`moekit.align.local_expert_ids`). ``offs``: slot indices (a tensor or a
    scalar), ``valid``: which of them exist. Returns (local id int32, routed here): a slot is routed here when
    it is valid, its id is inside the ``n_map`` entries of the expert map (without a map: inside [0, E)) and
    the local id is in [0, E); remote experts (mapped to -1) and map values past the local experts are not.
    Ids are compared in their own dtype before narrowing, so int64 ids never wrap."""
    raw = tl.load(ids_ptr + offs, mask=valid, other=-1)
    if HAS_MAP:
        e = tl.load(map_ptr + raw, mask=valid & (raw >= 0) & (raw < n_map), other=-1).to(tl.int32)
    else:
        e = tl.where((raw >= 0) & (raw < E), raw, -1).to(tl.int32)
    return e, valid & (e >= 0) & (e < E)


@triton.jit
def _mapped_ids(ids_ptr, map_ptr, offs, N, E, n_map, HAS_MAP: tl.constexpr):
    """Local expert id of each of the N slots (:func:`local_expert`), E (the bin of slots not routed here)
    for padding lanes and slots not routed here."""
    e, live = local_expert(ids_ptr, map_ptr, offs, offs < N, E, n_map, HAS_MAP)
    return tl.where(live, e, E)


@triton.jit
def _sorted_lanes(ids, lanes, counts, E, LANES: tl.constexpr):
    """The lanes sorted by (expert, lane): ``ids`` [LANES] local experts (E: not routed here), ``lanes`` [LANES]
    the lane numbers (< LANES), ``counts`` [E_PAD] the lanes of each expert among them. A bitonic sort of LANES
    keys (``tl.sort``), so the order inside each expert's run is the lanes' (stable) and the k-th sorted lane is at
    rank k - (lanes of lower experts) in its run: no [LANES, LANES] rank or [LANES, E_PAD] lookup tiles (which
    made 256 slots over 128 experts cost 16 us). Returns (expert, lane, rank, expert or 0 where unrouted: a safe
    index for ``tl.gather``), each [LANES], in sorted order."""
    keys = tl.sort(ids * LANES + lanes)
    sid = keys // LANES
    own = tl.where(sid < E, sid, 0)
    return sid, keys % LANES, tl.arange(0, LANES) - tl.gather(tl.cumsum(counts, axis=0) - counts, own, 0), own


@triton.jit
def _tile_rows(counts, BLOCK_M: tl.constexpr, MIN_TILE: tl.constexpr):
    """Rows of the last tile of runs of ``counts`` (>= 1) slots: the smallest of BLOCK_M, BLOCK_M / 2, ...,
    MIN_TILE that holds the run's remainder past its full BLOCK_M tiles (BLOCK_M when MIN_TILE == BLOCK_M)."""
    rest = counts - (tl.maximum(counts - 1, 0) // BLOCK_M) * BLOCK_M
    rows = tl.zeros_like(counts) + BLOCK_M
    for s in tl.static_range(1, 8):
        if (BLOCK_M >> s) >= MIN_TILE:
            rows = tl.where(rest <= (BLOCK_M >> s), BLOCK_M >> s, rows)
    return rows


@triton.jit
def _store_slots(sorted_ptr, expert_ids_ptr, tiles_ptr, dest, start, tile0, count, ids, slots, E,
                 BLOCK_M: tl.constexpr, MIN_TILE: tl.constexpr):
    """Each routed lane writes its slot at ``dest`` and, for the tile holding ``dest`` (of its expert's run at
    ``start``, ``count`` slots, tiles from ``tile0``), the tile's owner expert and, with tail tiles
    (MIN_TILE < BLOCK_M), its first row plus log2(BLOCK_M / its rows). Lanes of one tile write the same values.
    Without tail tiles tile ``tile0 + j`` is block ``dest // BLOCK_M``: runs start at multiples of BLOCK_M."""
    valid = ids < E
    tl.store(sorted_ptr + dest, slots, mask=valid)
    j = (dest - start) // BLOCK_M
    tl.store(expert_ids_ptr + tile0 + j, ids, mask=valid)
    if MIN_TILE < BLOCK_M:
        last = j == (count - 1) // BLOCK_M
        rows = tl.where(last, _tile_rows(count, BLOCK_M, MIN_TILE), BLOCK_M)
        code = tl.zeros_like(rows)
        for s in tl.static_range(1, 8):
            if (BLOCK_M >> s) >= MIN_TILE:
                code = tl.where(rows == (BLOCK_M >> s), s, code)
        tl.store(tiles_ptr + tile0 + j, start + j * BLOCK_M + code, mask=valid)


@triton.jit
def _padded_starts(counts, E, BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, MIN_TILE: tl.constexpr):
    """From per-expert slot counts [E_PAD]: each expert's run padded (full BLOCK_M tiles, the last one shrunk to
    :func:`_tile_rows`), its start, the used length, each expert's first tile and the tiles used."""
    e_idx = tl.arange(0, E_PAD)
    used = (e_idx < E) & (counts > 0)
    tiles = tl.where(used, tl.cdiv(counts, BLOCK_M), 0)
    if MIN_TILE < BLOCK_M:
        padded = tl.where(used, (tiles - 1) * BLOCK_M + _tile_rows(counts, BLOCK_M, MIN_TILE), 0)
    else:
        padded = tiles * BLOCK_M
    return (padded, tl.cumsum(padded, axis=0) - padded, tl.sum(padded, axis=0), tl.cumsum(tiles, axis=0) - tiles,
            tl.sum(tiles, axis=0))


@triton.jit
def _write_offsets(counts, sorted_ptr, expert_ids_ptr, tiles_ptr, npp_ptr, N, E, max_blocks,
                   BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, MIN_TILE: tl.constexpr):
    """From per-expert counts: padded offsets, the used length, -1 for the unused tail of the tile->expert
    table (and of the tile rows), padding slots set to N. Returns the runs' starts and first tiles. The owners
    of used tiles are written by the lanes themselves (:func:`_store_slots`): every tile holds a real slot."""
    e_idx = tl.arange(0, E_PAD)
    padded, pad_off, total, tile_off, used_tiles = _padded_starts(counts, E, BLOCK_M, E_PAD, MIN_TILE)
    tl.store(npp_ptr, total)
    for b0 in range(used_tiles, max_blocks, 64):
        b = b0 + tl.arange(0, 64)
        tl.store(expert_ids_ptr + b, tl.full([64], -1, tl.int32), mask=b < max_blocks)
        if MIN_TILE < BLOCK_M:
            tl.store(tiles_ptr + b, tl.full([64], -1, tl.int32), mask=b < max_blocks)
    # padding slots of each expert's last tile
    fill = tl.where(e_idx < E, padded - counts, 0)
    for j0 in range(0, BLOCK_M, 16):
        j = j0 + tl.arange(0, 16)
        pos = (pad_off + counts)[:, None] + j[None, :]
        tl.store(sorted_ptr + pos, tl.zeros([E_PAD, 16], dtype=tl.int32) + N, mask=j[None, :] < fill[:, None])
    return pad_off, tile_off


@triton.jit
def _align_lanes(ids, slots, sorted_ptr, expert_ids_ptr, tiles_ptr, npp_ptr, N, E, max_blocks,
                 BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, LANES: tl.constexpr, MIN_TILE: tl.constexpr):
    """Whole alignment in one program. ``ids`` [LANES]: local expert of each lane (E: not routed here);
    ``slots`` [LANES]: the slot id each lane stands for (< LANES); the lanes are ranked by
    :func:`_sorted_lanes`."""
    counts = tl.histogram(ids, E_PAD, mask=ids < E)
    pad_off, tile_off = _write_offsets(counts, sorted_ptr, expert_ids_ptr, tiles_ptr, npp_ptr, N, E, max_blocks,
                                       BLOCK_M, E_PAD, MIN_TILE)
    sid, slot, rank, own = _sorted_lanes(ids, slots, counts, E, LANES)
    start = tl.gather(pad_off, own, 0)
    _store_slots(sorted_ptr, expert_ids_ptr, tiles_ptr, start + rank, start, tl.gather(tile_off, own, 0),
                 tl.gather(counts, own, 0), sid, slot, E, BLOCK_M, MIN_TILE)


@triton.jit
def _align_single_kernel(ids_ptr, map_ptr, sorted_ptr, expert_ids_ptr, tiles_ptr, npp_ptr, N, E, n_map, max_blocks,
                         HAS_MAP: tl.constexpr, BLOCK_M: tl.constexpr, E_PAD: tl.constexpr,
                         CHUNK_: tl.constexpr, MIN_TILE: tl.constexpr, PDL: tl.constexpr = False):
    pdl.chain(PDL)
    offs = tl.arange(0, CHUNK_)
    ids = _mapped_ids(ids_ptr, map_ptr, offs, N, E, n_map, HAS_MAP)
    _align_lanes(ids, offs, sorted_ptr, expert_ids_ptr, tiles_ptr, npp_ptr, N, E, max_blocks, BLOCK_M, E_PAD, CHUNK_,
                 MIN_TILE)


@triton.jit
def _route_align_kernel(logits_ptr, map_ptr, w_ptr, ids_ptr, sorted_ptr, expert_ids_ptr, npp_ptr,
                        M, E_ROUTE, E, TOP_K, stride_lm, max_blocks,
                        HAS_MAP: tl.constexpr, SIGMOID: tl.constexpr, RENORMALIZE: tl.constexpr,
                        T_PAD: tl.constexpr, E_ROUTE_PAD: tl.constexpr, K_PAD: tl.constexpr,
                        BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, bias_ptr, HAS_BIAS: tl.constexpr,
                        GROUPS: tl.constexpr, G_PAD: tl.constexpr, TOPK_GROUP: tl.constexpr, PDL: tl.constexpr = False):
    """Decode fast path: routing of all M tokens and their alignment in one launch. The first kernel of a forward
    (launched plainly): with PDL it lets the next kernel launch at once (:mod:`moekit.kernels.pdl`).

    The alignment reads the routed ids back from ``ids_ptr`` as one vector of slots (after a barrier: the
    program's own stores are then visible to all its threads), the layout :func:`_align_single_kernel` loads,
    rather than flattening the [T_PAD, K_PAD] id tile with ``tl.reshape``. The flattened tile's layout holds each
    element in many lanes, and Triton 3.6's ``tl.histogram`` over-counts it on the GPU: H100, T_PAD 16 / 32 with
    K_PAD 1 and 16 or more bins counted every slot 2-4 times (``benchmarks/repro_histogram.py``,
    ``route_align_histogram_H100_session26.log``), so forwards at top_k = 1 of 9-32 tokens over 16 experts (a
    Llama-4-Scout-sized router), or 9-16 over 32 where the decode GEMVs do not take them, got wrong sorted ids.
    The interpreter cannot show it (it has no layouts)."""
    pdl.launch_dependents(PDL)
    rows = tl.arange(0, T_PAD)
    w_tile, id_tile = route_rows(logits_ptr, rows, M, E_ROUTE, TOP_K, stride_lm, SIGMOID, RENORMALIZE,
                                 E_ROUTE_PAD, K_PAD, bias_ptr, HAS_BIAS, GROUPS, G_PAD, TOPK_GROUP)
    store_routing(w_ptr, ids_ptr, rows, w_tile, id_tile, M, TOP_K, TOP_K, TOP_K, K_PAD)
    tl.debug_barrier()
    slots = tl.arange(0, T_PAD * K_PAD)
    ids = _mapped_ids(ids_ptr, map_ptr, slots, M * TOP_K, E, E_ROUTE, HAS_MAP)
    _align_lanes(ids, slots, sorted_ptr, expert_ids_ptr, expert_ids_ptr, npp_ptr, M * TOP_K, E, max_blocks, BLOCK_M,
                 E_PAD, T_PAD * K_PAD, BLOCK_M)


@triton.jit
def _align_count_kernel(ids_ptr, map_ptr, counts_ptr, N, E, n_map, HAS_MAP: tl.constexpr, E_PAD: tl.constexpr,
                        CHUNK_: tl.constexpr, PDL: tl.constexpr = False):
    pdl.chain(PDL)
    pid = tl.program_id(0)
    offs = pid * CHUNK_ + tl.arange(0, CHUNK_)
    ids = _mapped_ids(ids_ptr, map_ptr, offs, N, E, n_map, HAS_MAP)
    tl.store(counts_ptr + pid * E_PAD + tl.arange(0, E_PAD), tl.histogram(ids, E_PAD, mask=ids < E))


@triton.jit
def _align_scan_kernel(counts_ptr, base_ptr, totals_ptr, num_chunks, E_PAD: tl.constexpr, ROWS: tl.constexpr,
                       COLS: tl.constexpr, PDL: tl.constexpr = False):
    """Program p scans experts [p COLS, (p + 1) COLS) down the chunks: ``base[c, e]`` = slots of expert e in
    chunks before c (the chunk's offset inside the expert's run), ``totals[e]`` = all of expert e's slots."""
    pdl.chain(PDL)
    cols = tl.program_id(0) * COLS + tl.arange(0, COLS)
    running = tl.zeros([COLS], dtype=tl.int32)
    for c0 in range(0, num_chunks, ROWS):
        c = c0 + tl.arange(0, ROWS)
        cmask = c[:, None] < num_chunks
        offs = c[:, None] * E_PAD + cols[None, :]
        tile = tl.load(counts_ptr + offs, mask=cmask, other=0)
        tl.store(base_ptr + offs, running[None, :] + tl.cumsum(tile, axis=0) - tile, mask=cmask)
        running += tl.sum(tile, axis=0)
    tl.store(totals_ptr + cols, running)


@triton.jit
def _align_scatter_kernel(ids_ptr, map_ptr, base_ptr, totals_ptr, sorted_ptr, expert_ids_ptr, tiles_ptr, npp_ptr, N,
                          E, n_map, max_blocks, HAS_MAP: tl.constexpr, BLOCK_M: tl.constexpr, E_PAD: tl.constexpr,
                          CHUNK_: tl.constexpr, MIN_TILE: tl.constexpr, PDL: tl.constexpr = False):
    pdl.chain(PDL)
    pid = tl.program_id(0)
    counts = tl.load(totals_ptr + tl.arange(0, E_PAD))
    if pid == 0:  # the used length, the unused tiles' owners, the padding slots
        pad_off, tile_off = _write_offsets(counts, sorted_ptr, expert_ids_ptr, tiles_ptr, npp_ptr, N, E, max_blocks,
                                           BLOCK_M, E_PAD, MIN_TILE)
    else:
        _, pad_off, _, tile_off, _ = _padded_starts(counts, E, BLOCK_M, E_PAD, MIN_TILE)
    lane = tl.arange(0, CHUNK_)
    ids = _mapped_ids(ids_ptr, map_ptr, pid * CHUNK_ + lane, N, E, n_map, HAS_MAP)
    ids, lane, rank, own = _sorted_lanes(ids, lane, tl.histogram(ids, E_PAD, mask=ids < E), E, CHUNK_)
    valid = ids < E
    start = tl.gather(pad_off, own, 0)
    base = start + tl.load(base_ptr + pid * E_PAD + ids, mask=valid, other=0)
    _store_slots(sorted_ptr, expert_ids_ptr, tiles_ptr, base + rank, start, tl.gather(tile_off, own, 0),
                 tl.gather(counts, own, 0), ids, pid * CHUNK_ + lane, E, BLOCK_M, MIN_TILE)


def align_triton(topk_ids: torch.Tensor, num_experts: int, block_m: int, max_blocks: int,
                 expert_map: torch.Tensor | None = None, min_tile: int | None = None):
    """Launch the alignment kernels. See :func:`moekit.align.moe_align_block_size` for the contract. Returns
    (sorted_ids, expert_ids, tile_rows or None without tail tiles, num_padded)."""
    device = topk_ids.device
    n = topk_ids.numel()
    flat = topk_ids.reshape(-1)
    min_tile = block_m if min_tile is None else min_tile
    sorted_ids = torch.empty((max_blocks * block_m,), dtype=torch.int32, device=device)
    expert_ids = torch.empty((max_blocks,), dtype=torch.int32, device=device)
    tiles = torch.empty((max_blocks,), dtype=torch.int32, device=device) if min_tile < block_m else expert_ids
    npp = torch.empty((1,), dtype=torch.int32, device=device)
    e_pad = expert_bins(num_experts)
    has_map = expert_map is not None
    emap = expert_map if has_map else flat
    n_map = expert_map.numel() if has_map else 0
    chained = pdl.chained_launch(device)
    if align_single_applicable(n):
        chunk = _single_chunk(n)
        _align_single_kernel[(1,)](flat, emap, sorted_ids, expert_ids, tiles, npp, n, num_experts, n_map, max_blocks,
                                   HAS_MAP=has_map, BLOCK_M=block_m, E_PAD=e_pad, CHUNK_=chunk, MIN_TILE=min_tile,
                                   num_warps=single_warps(n), **chained)
    else:
        num_chunks = triton.cdiv(n, CHUNK)
        counts = torch.empty((num_chunks, e_pad), dtype=torch.int32, device=device)
        base = torch.empty_like(counts)
        _align_count_kernel[(num_chunks,)](flat, emap, counts, n, num_experts, n_map, HAS_MAP=has_map,
                                           E_PAD=e_pad, CHUNK_=CHUNK, num_warps=4, **chained)
        totals = torch.empty((e_pad,), dtype=torch.int32, device=device)
        cols = min(SCAN_COLS, e_pad)
        _align_scan_kernel[(e_pad // cols,)](counts, base, totals, num_chunks, E_PAD=e_pad, ROWS=SCAN_ROWS, COLS=cols,
                                             num_warps=4, **chained)
        _align_scatter_kernel[(num_chunks,)](flat, emap, base, totals, sorted_ids, expert_ids, tiles, npp, n,
                                             num_experts, n_map, max_blocks, HAS_MAP=has_map, BLOCK_M=block_m,
                                             E_PAD=e_pad, CHUNK_=CHUNK, MIN_TILE=min_tile,
                                             num_warps=SCATTER_WARPS, **chained)
    return sorted_ids, expert_ids, tiles if min_tile < block_m else None, npp


def single_warps(num_slots: int) -> int:
    """Warps of the one-program alignment of ``num_slots`` slots (see SINGLE_WARPS)."""
    return SINGLE_WARPS if num_slots <= SINGLE_WARPS_SLOTS else 8


def _single_chunk(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def align_single_applicable(num_slots: int) -> bool:
    """Whether one program aligns ``num_slots`` slots (see SINGLE_MAX). Only the slot count bounds it: the sort's
    work grows with the slots, and the number of experts only sizes [bins] vectors."""
    return num_slots <= SINGLE_MAX


def route_align_applicable(m: int, num_logit_experts: int, top_k: int, grouped: bool = False) -> bool:
    """Whether the fused kernel routes all ``m`` tokens (over ``num_logit_experts`` logits; ``grouped``: grouped
    top-k) and aligns their slots in one program, and is the faster way (FUSED_ROUTE_TILE, SINGLE_MAX)."""
    t_pad = triton.next_power_of_2(max(m, 1))
    scores = t_pad * triton.next_power_of_2(num_logit_experts) * (GROUPED_ROUTE_COST if grouped else 1)
    return (scores <= min(FUSED_ROUTE_TILE, MAX_SCORE_TILE)
            and align_single_applicable(t_pad * triton.next_power_of_2(top_k)))


def route_align_triton(router_logits: torch.Tensor, top_k: int, renormalize: bool, scoring: str, num_experts: int,
                       block_m: int, max_blocks: int, expert_map: torch.Tensor | None = None,
                       num_expert_group: int | None = None, topk_group: int | None = None,
                       correction_bias: torch.Tensor | None = None):
    """Fused decode path: (topk_weights, topk_ids, sorted_ids, expert_ids, num_padded) in one launch.
    Same results as select_experts_triton (every routing mode) followed by align_triton (tested)."""
    logits = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    m, e_route = logits.shape
    device = logits.device
    weights = torch.empty((m, top_k), dtype=torch.float32, device=device)
    ids = torch.empty((m, top_k), dtype=torch.int32, device=device)
    sorted_ids = torch.empty((max_blocks * block_m,), dtype=torch.int32, device=device)
    expert_ids = torch.empty((max_blocks,), dtype=torch.int32, device=device)
    npp = torch.empty((1,), dtype=torch.int32, device=device)
    t_pad, e_route_pad = triton.next_power_of_2(m), triton.next_power_of_2(e_route)
    k_pad, e_pad = triton.next_power_of_2(top_k), expert_bins(num_experts)
    has_map = expert_map is not None
    _route_align_kernel[(1,)](
        logits, expert_map if has_map else ids, weights, ids, sorted_ids, expert_ids, npp,
        m, e_route, num_experts, top_k, logits.stride(0), max_blocks,
        HAS_MAP=has_map, SIGMOID=scoring == "sigmoid", RENORMALIZE=renormalize,
        T_PAD=t_pad, E_ROUTE_PAD=e_route_pad, K_PAD=k_pad, BLOCK_M=block_m, E_PAD=e_pad,
        **choice_args(num_expert_group, topk_group, correction_bias, weights),
        num_warps=FUSED_WARPS, PDL=programmatic_launch(device),
    )
    return weights, ids, sorted_ids, expert_ids, npp
