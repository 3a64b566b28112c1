"""A/B of routing inside the decode GEMVs (``moekit.kernels.moe_gemv.ROUTE_IN_GEMV``): 0 a routing kernel then
the two GEMVs; 1 GEMV 1 routes its slots' tokens and GEMV 2 routes its token again before it waits; 2 GEMV 2
reads GEMV 1's choice after the wait. Whole fused_moe as CUDA-graph replay, arms interleaved
(``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_gemv_route.py [--arms 0,1,2] [--rounds 3] [--out F.json] [--cases ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.moe_gemv as gemv  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = gemv.ROUTE_IN_GEMV
CASES = ["qwen3_30b_a3b:bf16:1,2,4", "qwen3_30b_a3b:fp8_block:1,2", "qwen3_30b_a3b:fp8_channel:1",
         "qwen3_30b_a3b:int8_weight_only:1", "dsv3:fp8_block:1", "mixtral8x7b:fp8_tensor:1", "gpt_oss_20b:mxfp4:1,2"]


def set_arm(arm: str) -> None:
    gemv.ROUTE_IN_GEMV = SHIPPED if arm == "shipped" else int(arm)


if __name__ == "__main__":
    run_ab(parser(__doc__, "0,1,2", CASES).parse_args(), set_arm, "shipped")
