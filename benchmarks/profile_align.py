"""The three-launch alignment (count, scan, scatter) after warm-up, for ncu. GPU only.

    ncu --section SpeedOfLight --section WarpStateStats --section LaunchStats -k regex:_align_ --launch-skip 3 \\
        --launch-count 3 python3 benchmarks/profile_align.py [SHAPE] [M] [BLOCK_M]
"""
from __future__ import annotations

import sys

import torch

import moekit.kernels.align as ka
from moekit.align import max_blocks
from moekit.shapes import SHAPES

shape = SHAPES[sys.argv[1] if len(sys.argv) > 1 else "qwen3_30b_a3b"]
m = int(sys.argv[2]) if len(sys.argv) > 2 else 256
bm = int(sys.argv[3]) if len(sys.argv) > 3 else 16
ids = torch.stack([torch.randperm(shape.E, device="cuda")[:shape.top_k] for _ in range(m)]).int()
nb = max_blocks(ids.numel(), shape.E, bm)
ka.SINGLE_MAX = 0  # the three launches at every size
for _ in range(3):
    ka.align_triton(ids, shape.E, bm, nb)
torch.cuda.synchronize()
print("done", flush=True)
