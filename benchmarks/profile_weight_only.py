"""One quantized forward (int4 / int8 weight-only, or any ``bench_quant.SCHEMES`` key, or ``mxfp4``) after
warm-up, for ncu. GPU only.

    ncu --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy \\
        -k regex:_moe_gemm --launch-skip 2 --launch-count 2 python3 benchmarks/profile_weight_only.py \\
        [SHAPE] [M] [int4_weight_only|int8_weight_only|mxfp4|...]

Session 24's question: at M = 1 Mixtral int4 weight-only streams its weights at 1.1 TB/s (38 % of the floor)
where int8 weight-only, the same tiles and twice the bytes, reaches 2.5 TB/s (83 %).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_quant import SCHEMES, make_quant_weights, quant_forward  # noqa: E402
from moekit import QuantScheme  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

shape = SHAPES[sys.argv[1] if len(sys.argv) > 1 else "mixtral8x7b"]
m = int(sys.argv[2]) if len(sys.argv) > 2 else 1
name = sys.argv[3] if len(sys.argv) > 3 else "int4_weight_only"
scheme = QuantScheme.mxfp4() if name == "mxfp4" else SCHEMES[name]()
_, once, _ = quant_forward(shape, scheme, make_quant_weights(shape, scheme), None, m)
for _ in range(3):
    once()
torch.cuda.synchronize()
