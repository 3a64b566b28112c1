"""A/B of the decode path choice (``moekit.triton_experts.use_decode_gemv``): arm ``shipped`` (the rule as
shipped) against ``gemv`` (the decode GEMV kernels forced, weight formats they support) and ``grouped`` (the
aligned grouped GEMMs forced), whole fused_moe (routing included) as CUDA-graph replay, arms interleaved
(``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_gemv_path.py [--arms shipped,gemv,grouped] [--rounds 3] [--out F.json]
        [--cases mixtral8x7b:fp8_tensor:1,2,4 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.triton_experts as te  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402
from moekit.kernels.moe_gemv import gemv_supports  # noqa: E402

CASES = ["mixtral8x7b:fp8_tensor:1,2,4", "mixtral8x7b:bf16:1,2", "qwen3_30b_a3b:fp8_block:4",
         "qwen3_30b_a3b:bf16:8"]
SHIPPED = te.use_decode_gemv


def set_arm(arm: str) -> None:
    if arm == "shipped":
        te.use_decode_gemv = SHIPPED
    elif arm == "gemv":
        te.use_decode_gemv = lambda m, e, k, quant=None, static=False, grouped=False: (
            m >= 1 and (quant is None or not quant.is_quantized or (gemv_supports(quant) and not static)))
    else:
        te.use_decode_gemv = lambda *a, **k: False


if __name__ == "__main__":
    run_ab(parser(__doc__, "shipped,gemv,grouped", CASES).parse_args(), set_arm, "shipped")
