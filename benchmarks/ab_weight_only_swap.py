"""A/B of swapped operands in the int8 / int4 weight-only Triton GEMMs (:func:`moekit.quant.triton_moe.
weight_only_swap_ab`): arm ``plain`` runs ``dot(tokens, decoded weight)`` (on Hopper the decoded weight tile is
stored to shared memory every K step, the right operand of a warpgroup MMA), arm ``swap`` ``dot(decoded weight,
tokens^T)`` (the weight the MMA's left operand, read from registers); ``_asm`` arms decode int4 by inline PTX
(:func:`moekit.quant.triton_moe.int4_ptx_decode`), the others by Triton ops. Whole fused_moe (routing included) as
CUDA-graph replay, arms interleaved (``ab_cases.run_ab``), with the shipped configs. GPU only.

    PYTHONPATH=src python3 benchmarks/ab_weight_only_swap.py [--arms plain,swap,plain_asm,swap_asm] [--rounds 3]
        [--out F.json]
        [--cases mixtral8x7b:int4_weight_only:64,4096 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.quant.triton_moe as tm  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = tm.WEIGHT_ONLY_SWAP_AB, tm.INT4_PTX_DECODE
CASES = ["mixtral8x7b:int4_weight_only:64,256,1024,4096", "qwen3_30b_a3b:int4_weight_only:64,256,1024,4096",
         "qwen3_30b_a3b:int8_weight_only:256,4096"]


def set_arm(arm: str) -> None:
    if arm == "shipped":
        tm.WEIGHT_ONLY_SWAP_AB, tm.INT4_PTX_DECODE = SHIPPED
        return
    tm.WEIGHT_ONLY_SWAP_AB = arm.startswith("swap")
    tm.INT4_PTX_DECODE = arm.endswith("_asm")


if __name__ == "__main__":
    run_ab(parser(__doc__, "plain,swap,plain_asm,swap_asm", CASES).parse_args(), set_arm, "shipped")
