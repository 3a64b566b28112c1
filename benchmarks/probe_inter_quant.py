"""Probe (GPU only, timing only - the skipped arm computes garbage): what the quantization pass over GEMM 1's
output costs in the whole w8a8 forward (per tensor: one pass with GEMM 1's epilogue amax; per channel: the
per-row pass). Arm ``skip`` hands GEMM 2 an unwritten fp8 buffer of the right shape instead of running that pass,
so ``shipped / skip`` is the most that folding the quantization into another kernel could gain. Whole fused_moe
(routing included) as CUDA-graph replay, arms interleaved (``ab_cases.run_ab``).

    PYTHONPATH=src python3 benchmarks/probe_inter_quant.py [--arms shipped,skip] [--cases mixtral8x7b:fp8_tensor:256]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import moekit.quant.triton_moe as tm  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402

CASES = ["mixtral8x7b:fp8_tensor:64,256,1024,4096", "mixtral8x7b:fp8_channel:256,1024,4096",
         "qwen3_30b_a3b:fp8_channel:256,1024,4096"]
_ORIG = tm._quant_rows


def _skip(scheme, t, dt, static=None, npp=None, amax=None, zero=None):
    if npp is None:  # x's quantization: as shipped
        return _ORIG(scheme, t, dt, static, npp, amax, zero)
    q = torch.empty(t.shape, dtype=dt, device=t.device)
    if scheme.granularity == "tensor":
        return q, amax if amax is not None else torch.ones(1, device=t.device), (0, 0)
    s = torch.ones((t.shape[0], 1), dtype=torch.float32, device=t.device)
    return q, s, (s.stride(0), 0)


def set_arm(arm: str) -> None:
    tm._quant_rows = _skip if arm == "skip" else _ORIG


if __name__ == "__main__":
    run_ab(parser(__doc__, "shipped,skip", CASES).parse_args(), set_arm, "shipped")
