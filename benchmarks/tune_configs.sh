#!/usr/bin/env bash
# One device-tool call: tune kernel configs for canonical shapes and/or benchmark tuned vs default.
# Usage: BUDGET=225 bash benchmarks/tune_configs.sh [tests] [tune:MODEL[:TP[:DTYPE[:BN:BK]]]] ... [bench] [bench-out]
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
      IFS=: read -r _ model tp dtype bn bk <<< "$step"; tp=${tp:-1}; dtype=${dtype:-bf16}
      name=${model}_tp${tp}_${dtype}
      timeout -s INT $((${BUDGET%.*} + 90)) python3 -m moekit.cli tune --model "$model" --tp "$tp" \
        --dtype "$dtype" ${bk:+--block-shape $bn $bk} ${BATCH_SIZES:+--batch-sizes $BATCH_SIZES} \
        --budget-s "$BUDGET" --out "$OUT/configs" --report "$OUT/tune_report_$name.json" 2> "$OUT/tune_$name.log" | tee "$OUT/tune_table_$name.txt" | grep geometric
      echo "rc=${PIPESTATUS[0]}"; tail -3 "$OUT/tune_$name.log" | tr '\r' '\n' | tail -2
      tar czf "$OUT/configs.tgz" -C "$OUT" configs $(cd "$OUT" && ls tune_report_*.json tune_table_*.txt) ;;  # names with '=' and ',' (and many files) do not come back one by one
    bench)  # the shipped files for this GPU
      python3 benchmarks/bench_configs.py --out "$OUT/bench_shipped" --rounds "${ROUNDS:-3}" 2>&1 | grep -v "^|" | tail -40 ;;
    bench-out)  # the files this call tuned
      python3 benchmarks/bench_configs.py --out "$OUT/bench_out" --rounds "${ROUNDS:-3}" --files "$OUT"/configs/*.json \
        2>&1 | grep -v "^|" | tail -40 ;;
  esac
done
python3 -m moekit.cli configs check "$OUT/configs" 2>&1 | tail -4
