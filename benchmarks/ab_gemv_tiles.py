"""A/B of the decode GEMVs' tiles and K steps for 8-bit weights (``moekit.kernels.moe_gemv.GEMV_TILES[8]``:
GEMV 1 tile, GEMV 2 tile, GEMV 1 K step, GEMV 2 K step, in elements; and ``GEMV2_BLOCK_TILE`` for block scales),
measured before their K loops were pipelined 3 deep (session 9); arms ``shipped`` and ``T1xT2xK1xK2`` (for
every 8-bit scheme). Session 17's run (``ab_gemv_tiles_H100_session17.json``) had ``shipped`` =
4096x1024x512x256 for every scheme. Whole fused_moe (routing included) as
CUDA-graph replay, arms interleaved (``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_gemv_tiles.py [--arms shipped,8192x1024x512x256] [--rounds 3]
        [--out F.json] [--cases qwen3_30b_a3b:fp8_block:1,2 ...]
    ... --arms shipped,4:8192x4096x512x256 --cases mixtral8x7b:int4_weight_only:1   (4-bit codes' tiles)
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.moe_gemv as gemv  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = dict(gemv.GEMV_TILES), gemv.GEMV2_BLOCK_TILE
CASES = ["qwen3_30b_a3b:fp8_block:1,2", "qwen3_30b_a3b:fp8_channel:1", "dsv3:fp8_block:1", "mixtral8x7b:fp8_tensor:1"]


def set_arm(arm: str) -> None:
    """An arm's tiles for every 8-bit scheme (block scales included), or with a ``4:`` prefix for 4-bit codes
    (mxfp4 and int4, ``GEMV_TILES[4]``); "shipped": the shipped tiles."""
    gemv.GEMV_TILES, gemv.GEMV2_BLOCK_TILE = dict(SHIPPED[0]), SHIPPED[1]
    if arm != "shipped":
        bits, _, tiles = arm.rpartition(":")
        gemv.GEMV_TILES[int(bits or 8)] = tuple(int(v) for v in tiles.split("x"))
        if not bits:
            gemv.GEMV2_BLOCK_TILE = gemv.GEMV_TILES[8][1]


if __name__ == "__main__":
    arms = "shipped,8192x1024x512x256,4096x1024x1024x256,4096x4096x512x256,4096x1024x512x512"
    run_ab(parser(__doc__, arms, CASES).parse_args(), set_arm, "shipped")
