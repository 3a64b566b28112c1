"""One decode linear (``moekit.linear_path``) after warm-up, for ncu. GPU only.

The config is the one the shipped table of this GPU measured best for that path at that M bucket (its
``"paths"`` entry), so the profile is of what the router runs or would run.

    ncu --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \\
        --section WarpStateStats -k regex:gemv_mma --launch-skip 3 --launch-count 1 \\
        python3 benchmarks/profile_linear_decode.py [SHAPE] [SCHEME] [M] [PATH]

(defaults: dsv3_kv_a fp8_channel 16 gemv_mma; kernel names: ``_gemv_mma_kernel``, ``_linear_kernel`` for
skinny, ``_gemv_kernel``).
"""
from __future__ import annotations

import json
import sys

import torch

from moekit.linear import LinearConfig, config_dirs, linear_path, table_file_name
from moekit.linear_tune import SHAPES, Problem
from moekit.platform import current_platform, device_name_for_configs
from moekit.quant.scheme import as_scheme

shape = sys.argv[1] if len(sys.argv) > 1 else "dsv3_kv_a"
scheme = as_scheme(sys.argv[2] if len(sys.argv) > 2 else "fp8_channel", "scheme")
M = int(sys.argv[3]) if len(sys.argv) > 3 else 16
path = sys.argv[4] if len(sys.argv) > 4 else "gemv_mma"
N, K = SHAPES[shape]
name = table_file_name(N, K, device_name_for_configs(current_platform()), "bf16", scheme)
table = json.loads((config_dirs()[-1] / name).read_text())  # the shipped table of this GPU
bucket = min((int(b) for b in table if b.isdigit() and int(b) >= M), default=max(int(b) for b in table
                                                                                 if b.isdigit()))
cfg = LinearConfig.from_dict(table[str(bucket)]["paths"][path]["config"])
print(shape, scheme.name, "M", M, path, cfg, flush=True)
prob = Problem(N, K, scheme)
x, kw = prob.x(M), prob.kwargs()
for _ in range(5):
    linear_path(path, x, prob.weights[0], config=cfg, **kw)
torch.cuda.synchronize()
