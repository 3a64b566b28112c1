"""A/B of the alignment's launch rule in the whole forward: arm ``shipped`` (one program sorting the slots up to
``kernels.align.SINGLE_MAX`` slots, the fused route-and-align kernel where ``route_align_applicable`` holds)
against arm ``three`` (the routing kernel, then the three alignment launches at every size). Whole fused_moe as
CUDA-graph replay, arms interleaved (``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_align.py [--rounds 3] [--out F.json] [--cases qwen3_30b_a3b:bf16:16,64 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.align as ka  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = ka.SINGLE_MAX, ka.FUSED_ROUTE_TILE
CASES = ["qwen3_30b_a3b:bf16:16,64,128", "qwen3_30b_a3b:fp8_block:16,32,64,128", "dsv3:fp8_block:16,64,128",
         "mixtral8x7b:bf16:16,64,256"]


def set_arm(arm: str) -> None:
    ka.SINGLE_MAX, ka.FUSED_ROUTE_TILE = (0, 0) if arm == "three" else SHIPPED


if __name__ == "__main__":
    run_ab(parser(__doc__, "three,shipped", CASES).parse_args(), set_arm, "shipped")
