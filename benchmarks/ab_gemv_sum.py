"""A/B of where the decode GEMVs sum their products (``moekit.kernels.moe_gemv.GEMV_SUM_LATE``): every K step
(shipped before session 16) or once after the K loop, with the K loop's pipelining depth and GEMV 1's tile as
further arms; whole fused_moe (routing included) as CUDA-graph replay, arms interleaved (``ab_cases.run_ab``).
GPU only. Arms: ``shipped``; ``step`` / ``late`` (per-step sums / sums after the loop, else shipped); or a
spec of letters and numbers for 16- and 8-bit weights, the rest shipped: ``s`` sums late (1) or per step (0),
``t`` / ``k`` GEMV 1's tile and K step, ``u`` / ``v`` GEMV 2's, ``d`` the K loops' depth (e.g. ``s1t2048k1024d4``).

    PYTHONPATH=src python3 benchmarks/ab_gemv_sum.py [--arms step,late,lateS3] [--rounds 3] [--out F.json]
        [--cases qwen3_30b_a3b:bf16:1,2,4 ...]
"""
from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.moe_gemv as gemv  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

SHIPPED = dict(sum_late=dict(gemv.GEMV_SUM_LATE), stages=dict(gemv.GEMV_STAGES), tiles=dict(gemv.GEMV_TILES))
CASES = ["qwen3_30b_a3b:bf16:1,2,4", "qwen3_30b_a3b:fp8_channel:1,2", "qwen3_30b_a3b:int8_weight_only:1",
         "mixtral8x7b:fp8_tensor:1", "gpt_oss_20b:bf16:1,2"]


def set_arm(arm: str) -> None:
    gemv.GEMV_SUM_LATE = dict(SHIPPED["sum_late"])
    gemv.GEMV_STAGES = dict(SHIPPED["stages"])
    gemv.GEMV_TILES = dict(SHIPPED["tiles"])
    if arm == "shipped":
        return
    spec = {"step": "s0", "late": "s1"}.get(arm, arm)
    f = {k: int(v) for k, v in re.findall(r"([stkuvd])(\d+)", spec)}
    for bits in (16, 8):
        t1, t2, k1, k2 = SHIPPED["tiles"][bits]
        gemv.GEMV_TILES[bits] = (f.get("t", t1), f.get("u", t2), f.get("k", k1), f.get("v", k2))
        gemv.GEMV_SUM_LATE[bits] = bool(f.get("s", SHIPPED["sum_late"][bits]))
        gemv.GEMV_STAGES[bits] = f.get("d", SHIPPED["stages"][bits])


if __name__ == "__main__":
    run_ab(parser(__doc__, "step,late,lateS2,lateS3,lateT2048", CASES).parse_args(), set_arm, "shipped")
