#!/usr/bin/env bash
# One device-tool call: tune kernel configs for canonical shapes and/or benchmark tuned vs default.
# Usage: BUDGET=225 bash benchmarks/tune_configs.sh [tests] [tune:MODEL[:TP]] ... [bench]
# Tuned files land in $OUT/configs, logs and reports in $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:${PYTHONPATH:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/configs"
BUDGET=${BUDGET:-540}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
for step in "$@"; do
  echo "=== $step  ($(date +%T))"
  case $step in
    tests)
      python3 -m pytest -q -x tests/test_configs.py tests/test_tune.py -p no:cacheprovider 2>&1 | tail -6
      [ "${PIPESTATUS[0]}" = 0 ] || { echo "tests failed: stopping"; exit 1; } ;;
    tune:*)
      IFS=: read -r _ model tp <<< "$step"; tp=${tp:-1}
      name=${model}_tp${tp}
      timeout -s INT $((${BUDGET%.*} + 90)) python3 -m moekit.cli tune --model "$model" --tp "$tp" \
        --budget-s "$BUDGET" --out "$OUT/configs" --report "$OUT/tune_report_$name.json" 2> "$OUT/tune_$name.log"
      echo "rc=$?"; tail -3 "$OUT/tune_$name.log" ;;
    bench)
      python3 benchmarks/bench_configs.py --out "$OUT" ${BENCH_FILES:+--files $BENCH_FILES} 2>&1 | tail -60 ;;
  esac
done
python3 -m moekit.cli configs check "$OUT/configs" 2>&1 | tail -4
