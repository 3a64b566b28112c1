"""gpt-oss-20b mxfp4 decode (M=1) forwards, eager, for Nsight Compute: ``ncu -k regex:_moe_gemv python3
benchmarks/profile_gemv_mx.py`` (the first of the two forwards compiles). GPU only."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_quant import make_quant_weights, quant_forward  # noqa: E402
from moekit.quant import QuantScheme  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

shape, scheme = SHAPES["gpt_oss_20b"], QuantScheme.mxfp4()
_, once, _ = quant_forward(shape, scheme, make_quant_weights(shape, scheme), None, 1)
for _ in range(2):
    once()
torch.cuda.synchronize()
