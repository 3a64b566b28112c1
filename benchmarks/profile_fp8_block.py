"""One fp8 block forward after warm-up, for ncu (the Gluon or the Triton GEMMs). GPU only.

    ncu --section SpeedOfLight --section MemoryWorkloadAnalysis -k regex:fp8_block --launch-skip 2 \\
        --launch-count 2 python3 benchmarks/profile_fp8_block.py [SHAPE] [M] [gluon|triton]

Session 11's question (is shared memory the limit, now that warp specialization and less L2 traffic did not
help?) needs the shared-memory tables and the pipe utilisation as well:

    ncu --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section WarpStateStats \\
        -k regex:fp8_block --launch-skip 2 --launch-count 2 python3 benchmarks/profile_fp8_block.py
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import moekit.quant.triton_moe as tq  # noqa: E402
from bench_quant import make_quant_weights, quant_forward  # noqa: E402
from moekit.quant import QuantScheme  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

shape = SHAPES[sys.argv[1] if len(sys.argv) > 1 else "qwen3_30b_a3b"]
m = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
tq.FP8_BLOCK_GLUON = (sys.argv[3] if len(sys.argv) > 3 else "gluon") == "gluon"
scheme = QuantScheme.fp8_block(128, 128)
_, once, _ = quant_forward(shape, scheme, make_quant_weights(shape, scheme), None, m)
for _ in range(3):
    once()
torch.cuda.synchronize()
