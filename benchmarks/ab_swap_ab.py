"""A/B of swapped operands in the Triton w8a8 GEMMs (:func:`moekit.quant.triton_moe.w8a8_swap_ab`): with tiles of
fewer than 64 token rows, arm ``plain`` runs ``dot(tokens, weights)`` (Triton upcasts both 8-bit tiles to float16
for ``mma.sync``), arm ``swap`` ``dot(weights, tokens^T)`` (8-bit warpgroup MMAs with the weight rows as M).
Whole fused_moe (routing included) as CUDA-graph replay, arms interleaved (``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_swap_ab.py [--arms plain,swap] [--rounds 3] [--out F.json]
        [--cases qwen3_30b_a3b:fp8_block:16,64 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.quant.triton_moe as tm  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = tm.W8A8_SWAP_AB
CASES = ["qwen3_30b_a3b:fp8_block:16,32,64,128,256", "dsv3:fp8_block:16,64,256", "dsv3_tp8:fp8_block:8,64",
         "mixtral8x7b:fp8_tensor:16,64,256", "qwen3_30b_a3b:fp8_channel:16,64,256"]


def set_arm(arm: str) -> None:
    tm.W8A8_SWAP_AB = {"plain": False, "swap": True}.get(arm, SHIPPED)


if __name__ == "__main__":
    run_ab(parser(__doc__, "plain,swap", CASES).parse_args(), set_arm, "shipped")
