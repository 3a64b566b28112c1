"""gpt-oss-20b mxfp4 decode (M=1) forwards, eager, once per e2m1 decode of the GEMV kernels, for Nsight
Compute: ``ncu -k regex:_moe_gemv python3 benchmarks/profile_gemv_mx.py [fp16,exact]`` (two forwards per
decode; the first compiles). GPU only."""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.moe_gemv as gemv  # noqa: E402
from bench_quant import make_quant_weights, quant_forward  # noqa: E402
from moekit.quant import QuantScheme  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

shape, scheme = SHAPES["gpt_oss_20b"], QuantScheme.mxfp4()
weights = make_quant_weights(shape, scheme)
_, once, _ = quant_forward(shape, scheme, weights, None, 1)
outs = {}
for decode in (sys.argv[1] if len(sys.argv) > 1 else "fp16,exact").split(","):
    gemv.MX_DECODE = decode
    for _ in range(2):
        outs[decode] = once().float()
    torch.cuda.synchronize()
    print(decode, "ok", flush=True)
vals = list(outs.values())
print("max |difference| between decodes:", max((v - vals[0]).abs().max().item() for v in vals))
