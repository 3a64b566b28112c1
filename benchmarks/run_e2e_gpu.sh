#!/usr/bin/env bash
# One device call: the e2e transformers benchmark (both models), results under $OUT.
set -uo pipefail
export PYTHONPATH=src:build/gpu_pydeps  # platformdirs is missing on the GPU machine: carry build/gpu_pydeps
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 benchmarks/e2e_transformers.py --reps 3 --out "$OUT" 2>&1 | grep -v '^\[transformers\]' | tee "$OUT/e2e_log.txt"
