#!/bin/bash
# GPU run for moekit.linear: tests, `moekit tune-linear` (tables under $OUT/tables, also as tables.tar since
# the file names hold ',' and '='), then the benchmark routed by those tables.
#   OUT=/tmp/x bash benchmarks/linear_gpu.sh
export PYTHONPATH=src
OUT=${OUT:-/tmp/linear_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 120 python3 -m pytest -q tests/test_linear.py -p no:warnings 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
timeout 240 python3 -m moekit.cli tune-linear --rep 8 --budget 190 --out "$OUT/tables" > "$OUT/tune.log" 2>&1
echo "tune rc=$?"; (cd "$OUT" && tar cf tables.tar tables && ls tables | wc -l)
grep -v drop "$OUT/tune.log" | grep -B1 "M=    1" | head -60; grep drop "$OUT/tune.log" | head -10
MOEKIT_CONFIG_DIR="$OUT/tables" timeout 225 python3 benchmarks/bench_linear.py --rep 10 --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"; tail -4 "$OUT"/bench_linear_*.md
