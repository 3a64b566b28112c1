"""A/B of the decode GEMVs' K-loop pipelining depth (``moekit.kernels.moe_gemv.GEMV_STAGES``, one depth for every
weight format per arm: 1 = plain loads, N > 1 = ``tl.range(num_stages=N)``, weight tiles staged through shared
memory by cp.async), whole fused_moe (routing included) as CUDA-graph replay, arms interleaved
(``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_gemv_stages.py [--arms 1,2,3,4] [--rounds 3] [--out F.json]
        [--cases qwen3_30b_a3b:bf16:1,2,4 gpt_oss_20b:mxfp4:1,2,4 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.moe_gemv as gemv  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = dict(gemv.GEMV_STAGES)


def set_arm(arm: str) -> None:
    """A depth for every weight format; "shipped": the shipped depths."""
    gemv.GEMV_STAGES = dict(SHIPPED) if arm == "shipped" else dict.fromkeys(SHIPPED, int(arm))


if __name__ == "__main__":
    run_ab(parser(__doc__, "1,2,3,4").parse_args(), set_arm, "shipped")
