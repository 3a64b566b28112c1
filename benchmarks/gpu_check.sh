#!/usr/bin/env bash
# One device-tool call: GPU tests (bf16 included), demo, profile, benchmark, compute-sanitizer, config sweep.
# Usage (device tool): bash benchmarks/gpu_check.sh [tests|repro|demo|profile|bench|gemv|gemvq|gptoss|sanitize|sweep ...]
# gptoss: expert biases + swigluoai on the Triton kernels: tests, then gpt-oss mxfp4 with and without them
# gemvq: quantized decode GEMV A/B (MOEKIT_DECODE_GEMV=0|1) on bench_quant.py
# gemv: decode GEMV kernels vs the grouped GEMMs, with a tile sweep (benchmarks/bench_gemv.py)
# repro: replay the property-test space problem by problem (the last line printed names a crasher)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:${PYTHONPATH:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${*:-tests demo profile bench sweep}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
for s in $steps; do
  echo "=== $s"
  case $s in
    tests) python3 -m pytest -q -x tests -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -25 ;;
    repro) timeout 200 python3 benchmarks/repro_property.py 0 300 2>&1 | grep -v WARNING | tail -5 ;;
    demo) python3 -m moekit.cli demo ;;
    profile) python3 -m moekit.cli bench --profile --shapes qwen3_30b_a3b mixtral8x7b --batch-sizes 1 256 4096 ;;
    bench) python3 -m moekit.cli bench --out "$OUT" ;;
    gemvq) for v in 0 1; do  # quantized decode GEMV (fp8 / int8 weight-only) vs the grouped GEMMs
        MOEKIT_DECODE_GEMV=$v python3 benchmarks/bench_quant.py --shapes qwen3_30b_a3b,dsv3 --m 1,2,4,8 \
          --out "$OUT/gemvq_fp8_$v.json" 2>&1 | grep -v WARN | tee "$OUT/gemvq_fp8_$v.log"
        MOEKIT_DECODE_GEMV=$v python3 benchmarks/bench_quant.py --shapes qwen3_30b_a3b --scheme int8_weight_only \
          --m 1,2,4,8 --out "$OUT/gemvq_int8wo_$v.json" 2>&1 | grep -v WARN | tee "$OUT/gemvq_int8wo_$v.log"; done ;;
    gptoss) python3 -m pytest -q tests/test_bias_swiglu_kernels.py tests/test_integrations_transformers.py \
          tests/test_gemv.py -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/gptoss_tests.log"
        for epi in "" --gpt-oss-epilogue; do  # the epilogue's cost: silu without biases vs gpt-oss's own
          python3 benchmarks/bench_quant.py --shapes gpt_oss_20b $epi --out "$OUT/gptoss${epi:+_epilogue}.json" \
            2>&1 | grep -v WARN | tee -a "$OUT/gptoss_bench.log"; done ;;
    gemv) python3 benchmarks/bench_gemv.py --out "$OUT/bench_gemv.json" 2>&1 | grep -v WARN | tee "$OUT/bench_gemv.log" ;;
    sanitize) for t in memcheck racecheck; do
        compute-sanitizer --tool $t --error-exitcode 1 python3 benchmarks/sanitize_moe.py 2>&1 | tail -6 | tee -a "$OUT/sanitize.log"
        echo "compute-sanitizer $t exit: ${PIPESTATUS[0]}" | tee -a "$OUT/sanitize.log"; done ;;
    sweep) python3 benchmarks/sweep_configs.py qwen3_30b_a3b mixtral8x7b --out "$OUT/sweep.json" ;;
  esac
done
