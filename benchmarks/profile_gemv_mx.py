"""gpt-oss-20b mxfp4 forwards of M tokens (default 1: the decode GEMVs), eager, for Nsight Compute:
``ncu -k regex:_moe_gemv python3 benchmarks/profile_gemv_mx.py`` or, for the grouped GEMMs,
``ncu -k regex:_moe_gemm1 python3 benchmarks/profile_gemv_mx.py 4096`` (the first of the two forwards
compiles). A second argument ``mma`` runs the weights in the "mma" layout (``QuantScheme.mxfp4("mma")``):
``ncu -k regex:_moe_gemv python3 benchmarks/profile_gemv_mx.py 1 mma``. GPU only."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_quant import make_quant_weights, quant_forward  # noqa: E402
from moekit.quant import QuantScheme  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

m = int(sys.argv[1]) if len(sys.argv) > 1 else 1
shape, scheme = SHAPES["gpt_oss_20b"], QuantScheme.mxfp4(sys.argv[2] if len(sys.argv) > 2 else "plain")
_, once, _ = quant_forward(shape, scheme, make_quant_weights(shape, scheme), None, m)
for _ in range(2):
    once()
torch.cuda.synchronize()
