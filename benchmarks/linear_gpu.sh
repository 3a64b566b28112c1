#!/bin/bash
# GPU run for moekit.linear: tests, then `moekit tune-linear` (tables under $OUT/tables), or the benchmark.
#   bash benchmarks/linear_gpu.sh tune   |   bash benchmarks/linear_gpu.sh bench
export PYTHONPATH=src
OUT=${OUT:-/tmp/linear_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if [ "$1" = tune ]; then
  timeout 170 python3 -m pytest -q tests/test_linear.py -p no:warnings 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
  timeout 400 python3 -m moekit.cli tune-linear --rep 8 --budget 320 --out "$OUT/tables" > "$OUT/tune.log" 2>&1
  echo "tune rc=$?"; grep -c "M=" "$OUT/tune.log"; grep -v "drop" "$OUT/tune.log" | tail -60; grep "drop" "$OUT/tune.log" | head -20
else
  timeout 560 python3 benchmarks/bench_linear.py --rep 10 --out "$OUT" > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"; tail -5 "$OUT/bench.log"; tail -c 6000 "$OUT"/bench_linear_*.md
fi
