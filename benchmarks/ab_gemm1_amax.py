"""A/B of :data:`moekit.quant.triton_moe.GEMM1_AMAX` (dynamic per-tensor w8a8: GEMM 2's activation amax from GEMM
1's epilogue, arm ``shipped``, against the amax pass over the intermediate, arm ``off``). Whole fused_moe
(routing included) as CUDA-graph replay, arms interleaved (``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_gemm1_amax.py [--arms off,shipped] [--rounds 3] [--out F.json]
        [--cases mixtral8x7b:fp8_tensor:16,256 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.quant.triton_moe as tm  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

CASES = ["mixtral8x7b:fp8_tensor:16,64,256,1024,4096", "qwen3_30b_a3b:fp8_tensor:64,256,1024,4096"]


def set_arm(arm: str) -> None:
    tm.GEMM1_AMAX = arm != "off"


if __name__ == "__main__":
    run_ab(parser(__doc__, "off,shipped", CASES).parse_args(), set_arm, "shipped")
