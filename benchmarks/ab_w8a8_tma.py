"""A/B of TMA weight tiles in the swapped w8a8 GEMMs (:func:`moekit.quant.triton_moe.w8a8_tma`): arm ``pointer``
loads each [BLOCK_N, BLOCK_K] weight tile by per-thread copies (``tl.load`` of a pointer tile), arm ``tma`` by one
TMA descriptor over the weights viewed as [E * rows, K] (``desc.load``). Only launches that swap operands
(:func:`~moekit.quant.triton_moe.w8a8_swap_ab`: fp8 blocks, tiles under 64 rows, Hopper) differ. Whole fused_moe
(routing included) as CUDA-graph replay, arms interleaved (``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_w8a8_tma.py [--arms pointer,tma] [--rounds 3] [--out F.json]
        [--cases qwen3_30b_a3b:fp8_block:16,64 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.quant.triton_moe as tm  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = tm.W8A8_TMA
CASES = ["qwen3_30b_a3b:fp8_block:16,32,64,128,256", "dsv3:fp8_block:16,64,256", "dsv3_tp8:fp8_block:8,64"]


def set_arm(arm: str) -> None:
    tm.W8A8_TMA = {"pointer": False, "tma": True}.get(arm, SHIPPED)


if __name__ == "__main__":
    run_ab(parser(__doc__, "pointer,tma", CASES).parse_args(), set_arm, "shipped")
