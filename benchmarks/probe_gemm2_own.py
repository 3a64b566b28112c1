"""Probe: would GEMM 2 (the down projection) gain from a config of its own? GEMM 1 keeps the shipped config; GEMM 2
takes the same BLOCK_SIZE_M (the alignment is shared) with other BLOCK_SIZE_N / BLOCK_SIZE_K / warps / stages (arms
below, relative to what ships: GEMM 1's entry after :func:`moekit.configs.gemm2_config`). Arm ``gemm1``: GEMM 2 runs
GEMM 1's entry (the rule off), the A/B of that rule. Whole fused_moe (routing included) as CUDA-graph replay, arms
interleaved (``ab_cases.run_ab``). GPU only; grouped Triton GEMMs only (not the decode GEMVs, not the fp8 block paths,
whose GEMM 2 config is derived from GEMM 1's output groups).

    PYTHONPATH=src python3 benchmarks/probe_gemm2_own.py [--arms shipped,n128,...] [--cases mixtral8x7b:fp8_tensor:256]
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(__file__))
import moekit.configs as configs  # noqa: E402
import moekit.kernels.moe_gemm as mg  # noqa: E402
import moekit.quant.triton_moe as tm  # noqa: E402
import moekit.triton_experts as te  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402
from moekit.configs import MoEKernelConfig  # noqa: E402
from moekit.platform import shared_memory_per_block  # noqa: E402

ARMS = {
    "shipped": {},
    "gemm1": {},
    "n128": dict(BLOCK_SIZE_N=128),
    "n128w8": dict(BLOCK_SIZE_N=128, num_warps=8),
    "n256w8": dict(BLOCK_SIZE_N=256, num_warps=8),
    "kx2": dict(BLOCK_SIZE_K="x2"),
    "n128kx2": dict(BLOCK_SIZE_N=128, BLOCK_SIZE_K="x2"),
    "s+1": dict(num_stages="+1"),
    "w8": dict(num_warps=8),
}
CASES = ["mixtral8x7b:fp8_tensor:128,256,512,1024", "mixtral8x7b:bf16:256,1024,4096", "qwen3_30b_a3b:bf16:1024,4096",
         "qwen3_30b_a3b:fp8_channel:256,1024,4096", "gpt_oss_20b:mxfp4:64,256,1024"]
_ORIG = mg.moe_gemm2
_ARM = {}


def _mutate(c: MoEKernelConfig, elem: int) -> MoEKernelConfig:
    kw = {}
    for k, v in _ARM.items():
        if v == "x2":
            kw[k] = getattr(c, k) * 2
        elif v == "+1":
            kw[k] = getattr(c, k) + 1
        else:
            kw[k] = v
    c = replace(c, **kw)
    # GEMM 2's pipeline: one A tile and one weight tile per stage (configs.shared_memory_bytes is GEMM 1's)
    limit = shared_memory_per_block()
    while (c.BLOCK_SIZE_M + c.BLOCK_SIZE_N) * c.BLOCK_SIZE_K * elem * c.num_stages > limit and c.num_stages > 2:
        c = replace(c, num_stages=c.num_stages - 1)
    return c


def _gemm2(*a, **k):
    a = [(_mutate(v, a[0].element_size()) if isinstance(v, MoEKernelConfig) else v) for v in a]
    return _ORIG(*a, **k)


te.moe_gemm2 = _gemm2
tm.moe_gemm2 = _gemm2


_WIDE_MIN_K = configs.GEMM2_WIDE_MIN_K


def set_arm(arm: str) -> None:
    global _ARM
    _ARM = ARMS[arm]
    configs.GEMM2_WIDE_MIN_K = 1 << 30 if arm == "gemm1" else _WIDE_MIN_K


if __name__ == "__main__":
    run_ab(parser(__doc__, ",".join(ARMS), CASES).parse_args(), set_arm, "shipped")
