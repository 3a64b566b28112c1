"""Tail tiles (:mod:`moekit.align`): each expert's last tile shrunk to the fewest rows that hold its remainder.
The alignment kernels against the PyTorch twin, the twin against the layout's invariants, and the grouped GEMMs
of every plain Triton path (unquantized; w8a8 fp8 block / channel / tensor, int8 channel; int8 / int4
weight-only; mxfp4) run over tail tiles against the float64 reference and against the same kernels without
tails."""
import pytest
import torch

import moekit
from moekit.align import MIN_TAIL_TILE, align_torch, moe_align_block_size, tail_rows
from moekit.configs import MoEKernelConfig, tail_tile
from moekit.errors import MoEInputError
from moekit.quant import QuantScheme
from moekit.testing import assert_close_to_reference
from moekit.triton_experts import fused_experts_triton

from conftest import DEVICE, KERNEL_DTYPES, make_layer


def _ids(m, e, k, skew=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if skew:  # one hot expert, several empty ones
        ids = torch.randint(0, max(1, e // 3), (m, k), generator=g, dtype=torch.int32)
        ids[: m // 2, 0] = 0
        return ids
    return torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(m)]).to(torch.int32)


@pytest.mark.parametrize("count, block_m, min_tile, rows", [
    (1, 128, 16, 16), (16, 128, 16, 16), (17, 128, 16, 32), (64, 128, 16, 64), (65, 128, 16, 128),
    (128, 128, 16, 128), (129, 128, 16, 16), (200, 128, 16, 128), (129, 128, 64, 64), (3, 64, 32, 32),
    (40, 64, 64, 64)])
def test_tail_rows(count, block_m, min_tile, rows):
    assert tail_rows(count, block_m, min_tile) == rows


@pytest.mark.parametrize("m,e,k,skew", [(3, 8, 2, False), (90, 8, 2, True), (300, 16, 4, False),
                                        (1100, 128, 8, False), (700, 4, 2, True)])
@pytest.mark.parametrize("block_m,min_tile", [(64, 16), (128, 16), (128, 32), (128, 64)])
def test_twin_layout_invariants(m, e, k, skew, block_m, min_tile):
    """Tiles in order cover [0, num_padded) without gaps; a tile's rows hold one expert's slots (then padding);
    every tile but an expert's last is block_m rows, the last the fewest that hold the rest; unused entries -1."""
    ids = _ids(m, e, k, skew)
    a = align_torch(ids, e, block_m, min_tile=min_tile)
    n, pad = int(a.num_padded), ids.numel()
    counts = torch.bincount(ids.reshape(-1).long(), minlength=e)
    pos, t = 0, 0
    for ex in range(e):
        c = int(counts[ex])
        for j in range(-(-c // block_m)):
            info = int(a.tile_rows[t])
            h = info % 16
            rows = block_m >> h
            assert info - h == pos and int(a.expert_ids[t]) == ex
            want = tail_rows(c, block_m, min_tile) if j == -(-c // block_m) - 1 else block_m
            assert rows == want
            got = a.sorted_ids[pos:pos + rows]
            real = got[got < pad].long()
            assert (ids.reshape(-1)[real] == ex).all() and len(real) == min(rows, c - j * block_m)
            pos, t = pos + rows, t + 1
    assert pos == n
    assert (a.tile_rows[t:] == -1).all() and (a.expert_ids[t:] == -1).all()
    real = a.sorted_ids[:n][a.sorted_ids[:n] < pad]
    assert torch.equal(torch.sort(real).values, torch.arange(pad, dtype=torch.int32))


@pytest.mark.parametrize("m,e,k,skew,with_map", [(3, 8, 2, False, False), (40, 8, 8, True, False),
                                                 (300, 16, 4, False, True), (1100, 128, 8, False, False),
                                                 (700, 4, 2, True, False), (513, 64, 6, True, True)])
@pytest.mark.parametrize("block_m,min_tile", [(64, 16), (128, 16), (128, 32)])
def test_kernels_match_twin(m, e, k, skew, with_map, block_m, min_tile, poisoned_empty):
    """Single-program (few slots) and multi-program alignments, with and without an expert map."""
    emap = None
    e_global = e
    if with_map:
        e_global = 2 * e
        emap = torch.full((e_global,), -1, dtype=torch.int32)
        emap[e // 2: e // 2 + e] = torch.arange(e, dtype=torch.int32)
    ids = _ids(m, e_global, k, skew)
    ref = align_torch(ids, e, block_m, emap, min_tile)
    got = moe_align_block_size(ids.to(DEVICE), e, block_m, None if emap is None else emap.to(DEVICE),
                               use_triton=True, min_tile=min_tile)
    n = int(ref.num_padded)
    assert int(got.num_padded) == n and got.min_tile == min_tile
    assert torch.equal(got.sorted_ids[:n].cpu(), ref.sorted_ids[:n])
    assert torch.equal(got.expert_ids.cpu(), ref.expert_ids)
    assert torch.equal(got.tile_rows.cpu(), ref.tile_rows)


@pytest.mark.parametrize("bad", [8, 24, 48, 256, 1.5, True])
def test_bad_min_tile_names_the_argument(bad):
    with pytest.raises(MoEInputError, match="min_tile"):
        moe_align_block_size(_ids(5, 8, 2), 8, 128, min_tile=bad)


def test_min_tile_of_block_m_means_none():
    a = moe_align_block_size(_ids(50, 8, 2), 8, 64, min_tile=64, use_triton=False)
    assert a.tile_rows is None and a.min_tile == 0


def test_the_rule():
    """Tails down to 16 rows from 64-row tiles and 16 experts (measured: ``ab_tail_tiles_{H100,H200}_session15``)."""
    assert tail_tile(MoEKernelConfig(128, 128, 64, 8, 8, 3), 128) == MIN_TAIL_TILE
    assert tail_tile(MoEKernelConfig(64, 64, 64, 8, 4, 4), 16) == MIN_TAIL_TILE
    assert tail_tile(MoEKernelConfig(32, 64, 64, 8, 4, 4), 128) == 32
    assert tail_tile(MoEKernelConfig(16, 64, 64, 8, 4, 4), 128) == 16
    assert tail_tile(MoEKernelConfig(128, 128, 64, 8, 8, 3), 8) == 128  # Mixtral: full tiles


def test_env_switch_turns_tails_off(monkeypatch):
    monkeypatch.setenv("MOEKIT_TAIL_TILES", "0")
    assert tail_tile(MoEKernelConfig(128, 128, 64, 8, 8, 3), 128) == 128
    monkeypatch.setenv("MOEKIT_TAIL_TILES", "1")
    assert tail_tile(MoEKernelConfig(128, 128, 64, 8, 8, 3), 128) == MIN_TAIL_TILE


def _with_and_without_tails(x, w13, w2, w, ids, cfg, kw, min_tile, expert_map=None):
    e = w13.shape[0]
    outs = []
    for mt in (min_tile, None):
        al = moe_align_block_size(ids, e, cfg.BLOCK_SIZE_M, expert_map, use_triton=True, min_tile=mt)
        assert (al.tile_rows is not None) == (mt is not None)
        outs.append(fused_experts_triton(x, w13, w2, w, ids, expert_map=expert_map, config=cfg, aligned=al, **kw))
    return outs


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("m,e,k,bm,min_tile", [(150, 8, 2, 64, 16), (90, 4, 1, 128, 16), (257, 16, 4, 64, 32),
                                               (40, 8, 2, 128, 32)])
def test_unquantized_gemms_over_tail_tiles(dtype, m, e, k, bm, min_tile, poisoned_empty):
    """Odd H and I, top_k 1 (GEMM 2 writes the output) and several tail heights; equal to the run without tails
    up to the MMA shape's summation order."""
    x, w13, w2, w, ids, kw, ref = make_layer(m, e, 80, 48, k, dtype)
    cfg = MoEKernelConfig(bm, 32, 32, 4, 4, 2)
    tails, plain = _with_and_without_tails(x, w13, w2, w, ids, cfg, kw, min_tile)
    assert_close_to_reference(tails, ref, dtype)
    torch.testing.assert_close(tails, plain, rtol=2e-2 if dtype == torch.bfloat16 else 2e-3, atol=1e-3)


def test_expert_map_over_tail_tiles(poisoned_empty):
    dtype = KERNEL_DTYPES[-1]
    x, w13, w2, w, ids, kw, _ = make_layer(120, 16, 64, 32, 4, dtype)
    emap = torch.full((16,), -1, dtype=torch.int32, device=DEVICE)
    emap[3:11] = torch.arange(8, dtype=torch.int32, device=DEVICE)
    cfg = MoEKernelConfig(64, 32, 32, 4, 4, 2)
    tails, plain = _with_and_without_tails(x, w13[3:11].contiguous(), w2[3:11].contiguous(), w, ids, cfg, kw, 16,
                                           emap)
    torch.testing.assert_close(tails, plain, rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("key,scheme,bk", [
    ("fp8_block", QuantScheme.fp8_block(128, 128), 64),
    ("fp8_channel", QuantScheme.fp8_channel(), 64), ("fp8_tensor", QuantScheme.fp8_tensor(), 64),
    ("int8_channel", QuantScheme.int8_channel(), 64), ("int8_weight_only", QuantScheme.int8_weight_only(), 64),
    ("int4_weight_only", QuantScheme.int4_weight_only(64, zero_point=True), 64), ("mxfp4", QuantScheme.mxfp4(), 64)])
def test_quantized_gemms_over_tail_tiles(key, scheme, bk, poisoned_empty):
    """16 experts, about 19 slots each: tails of 16, 32 and 64 rows (and the Triton fp8 block kernels, not the
    Gluon ones, which take 32 rows per expert and up)."""
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    x, w13, w2, w, ids, kw, ref = make_layer(150, 16, 128, 128, 2, dtype, scheme)
    cfg = MoEKernelConfig(64, 64, bk, 4, 4, 2)
    tails, plain = _with_and_without_tails(x, w13, w2, w, ids, cfg, kw, 16)
    assert_close_to_reference(tails, ref, key)
    # on the GPU a tile's height picks its MMA instruction, so GEMM 1's rows may round differently and the w8a8
    # schemes re-quantize them: the run without tails is held to the scheme's tolerance, not to equality
    assert_close_to_reference(tails, plain.double(), key)


def test_gluon_path_realigns_without_tails(monkeypatch, poisoned_empty):
    """An alignment with tail tiles handed to a call that takes the fp8 block Gluon kernels (full 64-row tiles
    only) is redone without tails (the Gluon kernels stubbed: they run on Hopper only)."""
    import moekit.quant.triton_moe as tq

    class Reached(Exception):
        pass

    class FakeGluon:
        GEMM1_TILE = (64, 128)

        @staticmethod
        def moe_gemm1_fp8_block_sm90(*a, **k):
            raise Reached(a[4:6])  # sorted ids, expert ids

    seen = []
    real = tq.moe_align_block_size

    def spy(*a, **kw):
        seen.append(kw.get("min_tile"))
        return real(*a, **kw)

    monkeypatch.setattr(tq, "fp8_block_gluon", lambda *a, **k: True)
    monkeypatch.setattr(tq, "copies_of_16_bytes", lambda *a: True)
    monkeypatch.setattr(tq, "gluon_kernels", lambda: FakeGluon)
    monkeypatch.setattr(tq, "moe_align_block_size", spy)
    scheme = QuantScheme.fp8_block(128, 128)
    x, w13, w2, w, ids, kw, _ = make_layer(150, 16, 128, 128, 2, torch.float16, scheme)
    al = real(ids, 16, 64, use_triton=True, min_tile=16)
    with pytest.raises(Reached):
        fused_experts_triton(x, w13, w2, w, ids, config=MoEKernelConfig(64, 64, 64, 4, 4, 2), aligned=al, **kw)
    assert seen == [None]


def test_fused_moe_runs_tail_tiles_where_the_rule_says(monkeypatch, poisoned_empty):
    """The default path aligns with :func:`moekit.configs.tail_tile` and hands the tiles to both GEMMs."""
    import moekit.triton_experts as te

    seen = []
    real1, real2 = te.moe_gemm1, te.moe_gemm2

    def spy1(*a, **kw):
        seen.append(("gemm1", kw.get("min_tile"), kw.get("tile_rows") is not None))
        return real1(*a, **kw)

    def spy2(*a, **kw):
        seen.append(("gemm2", kw.get("min_tile"), kw.get("tile_rows") is not None))
        return real2(*a, **kw)

    monkeypatch.setattr(te, "moe_gemm1", spy1)
    monkeypatch.setattr(te, "moe_gemm2", spy2)
    monkeypatch.setattr(te, "get_config", lambda *a, **k: MoEKernelConfig(64, 32, 32, 4, 4, 2))
    dtype = KERNEL_DTYPES[-1]
    x, w13, w2, w, ids, kw, ref = make_layer(100, 16, 64, 32, 2, dtype)
    out = moekit.fused_experts(x, w13, w2, w, ids, backend="triton")
    assert seen == [("gemm1", 16, True), ("gemm2", 16, True)]
    assert_close_to_reference(out, ref, dtype)
    seen.clear()  # 8 experts: full tiles
    x, w13, w2, w, ids, kw, ref = make_layer(100, 8, 64, 32, 2, dtype)
    moekit.fused_experts(x, w13, w2, w, ids, backend="triton")
    assert seen == [("gemm1", 0, False), ("gemm2", 0, False)]
