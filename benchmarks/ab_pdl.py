"""A/B of programmatic dependent launch in the decode forward (routing kernel -> GEMV 1 -> GEMV 2,
:mod:`moekit.kernels.pdl`): arms ``off`` (``MOEKIT_PDL=0``, plain launches), ``start`` and ``end`` (PDL on,
GEMV 1 letting GEMV 2 launch right after its own wait or after its K loop, for every weight format:
``moekit.kernels.moe_gemv.GEMV1_TRIGGER``), ``shipped`` (PDL on, the shipped per-format trigger). Whole
fused_moe (routing included) as CUDA-graph replay, arms interleaved (``ab_cases.run_ab``). GPU only (sm_90
or later for the PDL arms).

    PYTHONPATH=src python3 benchmarks/ab_pdl.py [--arms off,shipped,start,end] [--rounds 3] [--out F.json]
        [--cases qwen3_30b_a3b:bf16:1,2,4 gpt_oss_20b:mxfp4:1,2,4 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.moe_gemv as gemv  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = dict(gemv.GEMV1_TRIGGER)


def set_arm(arm: str) -> None:
    """``off``: MOEKIT_PDL=0; ``start`` / ``end``: MOEKIT_PDL=1 and that GEMV 1 trigger for every weight
    format; ``shipped``: MOEKIT_PDL=1 and the shipped triggers."""
    os.environ["MOEKIT_PDL"] = "0" if arm == "off" else "1"
    gemv.GEMV1_TRIGGER = dict(SHIPPED)
    if arm in ("start", "end"):
        gemv.GEMV1_TRIGGER = dict.fromkeys(SHIPPED, arm)


if __name__ == "__main__":
    run_ab(parser(__doc__, "off,shipped").parse_args(), set_arm, "shipped")
    os.environ.pop("MOEKIT_PDL", None)
