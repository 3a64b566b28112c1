"""Two eager forwards of one decode point for Nsight Compute, under an arm of ``ab_gemv_sum.py``:
``ncu -k regex:_moe_gemv python3 benchmarks/profile_gemv.py qwen3_30b_a3b bf16 1 late`` (the first forward
compiles: ``--launch-skip 2``). Cases and schemes as ``ab_cases.SCHEMES``. GPU only."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from ab_cases import SCHEMES, bf16_weights  # noqa: E402
from ab_gemv_sum import set_arm  # noqa: E402
from bench_quant import make_quant_weights, quant_forward  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

name, key, m, arm = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
shape, scheme = SHAPES[name], SCHEMES[key]()
set_arm(arm)
weights = bf16_weights(shape) if scheme is None else make_quant_weights(shape, scheme)
_, once, _ = quant_forward(shape, scheme, weights, None, m)
for _ in range(2):
    once()
torch.cuda.synchronize()
