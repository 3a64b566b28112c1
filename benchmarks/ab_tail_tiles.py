"""A/B of tail tiles in the grouped GEMMs (:mod:`moekit.align`: each expert's last tile shrunk to the fewest rows
that hold its remainder, down to a smallest tile): arms ``off`` (every tile BLOCK_SIZE_M rows), ``t16`` / ``t32`` /
``t64`` (tails down to max(16, BLOCK_SIZE_M / 8, 4, 2) rows, from BLOCK_SIZE_M 64, any number of experts),
``shipped`` (:func:`moekit.configs.tail_tile` as shipped). Whole fused_moe (routing included) as CUDA-graph replay, arms
interleaved (``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_tail_tiles.py [--arms off,t16,t32] [--rounds 2] [--out F.json]
        [--cases qwen3_30b_a3b:bf16:1024,4096 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.configs as configs  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = (configs.TAIL_TILE_DIVISOR, configs.TAIL_TILE_MIN_BLOCK_M, configs.TAIL_TILE_MIN_EXPERTS)
CASES = ["qwen3_30b_a3b:bf16:256,512,1024,2048,4096", "mixtral8x7b:bf16:1024,4096",
         "qwen3_30b_a3b:fp8_channel:1024,2048,4096", "mixtral8x7b:fp8_tensor:1024,4096",
         "gpt_oss_20b:mxfp4:1024,4096", "qwen3_30b_a3b:int8_weight_only:1024,4096"]


def set_arm(arm: str) -> None:
    if arm == "off":
        rule = (1, 1 << 30, 0)
    elif arm == "shipped":
        rule = SHIPPED
    else:
        rule = ({"t16": 8, "t32": 4, "t64": 2}[arm], 64, 0)
    configs.TAIL_TILE_DIVISOR, configs.TAIL_TILE_MIN_BLOCK_M, configs.TAIL_TILE_MIN_EXPERTS = rule


if __name__ == "__main__":
    run_ab(parser(__doc__, "off,t16,t32", CASES).parse_args(), set_arm, "shipped")
