"""A/B of a persistent decode GEMV 1 (``moekit.kernels.moe_gemv.GEMV1_PROGRAMS_PER_SM``: a few programs per SM walk
the items grid-stride, instead of one program per item) with the GEMVs' tiles, K-loop depth and where GEMV 1 sums
(``GEMV_SUM_LATE``); whole fused_moe (routing included) as CUDA-graph replay, arms interleaved
(``ab_cases.run_ab``), after a correctness check of every arm against the PyTorch backend. GPU only.

Arms: ``shipped``, or a spec of letters and numbers applied to 16- and 8-bit weights (the rest shipped): ``p``
programs per SM of GEMV 1 (0: one per item), ``t`` / ``k`` GEMV 1's tile and K step, ``u`` / ``v``
GEMV 2's, ``d`` the K loops' depth, ``s`` GEMV 1 sums late (1) or per step (0); e.g. ``p4t2048k512d3s1``.

    PYTHONPATH=src python3 benchmarks/ab_gemv_persistent.py [--arms shipped,p4] [--rounds 3] [--out F.json]
        [--cases qwen3_30b_a3b:bf16:1,2,4 ...]
"""
from __future__ import annotations

import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.moe_gemv as gemv  # noqa: E402
from ab_cases import SCHEMES, bf16_weights, parser, run_ab  # noqa: E402
from bench_quant import make_quant_weights, quant_forward  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

SHIPPED = dict(per_sm=dict(gemv.GEMV1_PROGRAMS_PER_SM), sum_late=dict(gemv.GEMV_SUM_LATE),
               stages=dict(gemv.GEMV_STAGES), tiles=dict(gemv.GEMV_TILES))
CASES = ["qwen3_30b_a3b:bf16:1,2,4", "qwen3_30b_a3b:fp8_channel:1,2", "qwen3_30b_a3b:fp8_block:1",
         "qwen3_30b_a3b:int8_weight_only:1", "gpt_oss_20b:bf16:1", "mixtral8x7b:fp8_tensor:1", "dsv3:fp8_block:1"]


def set_arm(arm: str) -> None:
    gemv.GEMV1_PROGRAMS_PER_SM = dict(SHIPPED["per_sm"])
    gemv.GEMV_SUM_LATE = dict(SHIPPED["sum_late"])
    gemv.GEMV_STAGES = dict(SHIPPED["stages"])
    gemv.GEMV_TILES = dict(SHIPPED["tiles"])
    if arm == "shipped":
        return
    f = {k: int(v) for k, v in re.findall(r"([ptkuvds])(\d+)", arm)}
    for bits in (16, 8):
        gemv.GEMV1_PROGRAMS_PER_SM[bits] = f.get("p", SHIPPED["per_sm"][bits] or 0) or None
        t1, t2, k1, k2 = SHIPPED["tiles"][bits]
        gemv.GEMV_TILES[bits] = (f.get("t", t1), f.get("u", t2), f.get("k", k1), f.get("v", k2))
        gemv.GEMV_SUM_LATE[bits] = bool(f.get("s", SHIPPED["sum_late"][bits]))
        gemv.GEMV_STAGES[bits] = f.get("d", SHIPPED["stages"][bits])


def check(args) -> None:
    """Every arm's output against the PyTorch backend's on the same inputs (relative Frobenius error)."""
    from moekit import fused_moe

    for case in args.cases:
        name, key, ms = case.split(":")
        shape, scheme = SHAPES[name], SCHEMES[key]()
        weights = bf16_weights(shape) if scheme is None else make_quant_weights(shape, scheme)
        bias = torch.randn(shape.E, device="cuda") * 0.1 if shape.num_expert_group else None
        w13, s13, w2, s2 = weights
        m = int(ms.split(",")[0])
        _, once, lgs = quant_forward(shape, scheme, weights, bias, m)
        x = torch.randn(m, shape.H, device="cuda", dtype=torch.bfloat16)
        try:
            ref = fused_moe(x, w13, w2, lgs[0], shape.top_k, correction_bias=bias, quant=scheme, w13_scale=s13,
                            w2_scale=s2, backend="torch", **shape.route_kwargs()).float()
        except torch.OutOfMemoryError:  # the PyTorch backend dequantizes every expert (DeepSeek-V3: 28 GiB)
            print(f"check {name}:{key} skipped: the PyTorch reference does not fit", flush=True)
            del weights
            torch.cuda.empty_cache()
            continue
        errs = {}
        for arm in args.arms.split(","):
            set_arm(arm)
            out = fused_moe(x, w13, w2, lgs[0], shape.top_k, correction_bias=bias, quant=scheme, w13_scale=s13,
                            w2_scale=s2, **shape.route_kwargs()).float()
            errs[arm] = float((out - ref).norm() / ref.norm()) if torch.isfinite(out).all() else float("nan")
        set_arm("shipped")
        print(f"check {name}:{key} M={m} " + " ".join(f"{a} {e:.1e}" for a, e in errs.items()), flush=True)
        del weights
        torch.cuda.empty_cache()


if __name__ == "__main__":
    a = parser(__doc__, "shipped,p4t2048k512d3s1,p4t4096k512d3s1,p3t2048k512d3s1,p4t2048k1024d3s1,p4t2048k512d2s1,"
               "p4t2048k512d3s0", CASES).parse_args()
    check(a)
    run_ab(a, set_arm, "shipped")
