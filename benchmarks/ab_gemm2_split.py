"""A/B of GEMM 2's config on the fp8 block path when its K step is cut to GEMM 1's output group (config
BLOCK_SIZE_N under the 128-wide scale block, e.g. DeepSeek-V3 at M <= 128 with the shipped H100 file: GEMM 2 then
runs 64-deep K steps): arms ``none`` / ``stages`` / ``n`` / ``both`` / ``ka`` of
:data:`moekit.quant.triton_moe.GEMM2_SPLIT_RULE`. Whole fused_moe (routing included) as CUDA-graph replay, arms
interleaved (``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_gemm2_split.py [--arms none,both,ka] [--rounds 3] [--out F.json]
        [--cases dsv3:fp8_block:16,64 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.quant.triton_moe as tm  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = tm.GEMM2_SPLIT_RULE
CASES = ["dsv3:fp8_block:8,16,32,64,128", "dsv3_tp8:fp8_block:8,16"]


def set_arm(arm: str) -> None:
    tm.GEMM2_SPLIT_RULE = SHIPPED if arm == "shipped" else arm


if __name__ == "__main__":
    run_ab(parser(__doc__, "none,both,ka", CASES).parse_args(), set_arm, "shipped")
