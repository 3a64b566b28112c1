#!/usr/bin/env bash
# One device-tool call for the inline-PTX mxfp4 decode: steps run in the order given.
#   tests            GEMV / quant / fused-MoE mxfp4 tests on the GPU (exactness of both PTX decodes included)
#   gemv             GEMV decode A/B (PTX vs Triton ops), gpt-oss-20b M=1,2,4,8
#   small:SHAPE[:M..] PTX vs dot_scaled plus a forced 32x64x32 (4 stages) arm, M=16..256 by default (default
#                    configs where SHAPE has no tuned file, e.g. gpt_oss_120b)
#   tune:BUDGET:M..  moekit tune gpt_oss_20b mxfp4 at the given batch sizes ("," separated), BUDGET seconds
#   cross:SHAPE:M..:CFG  the decode GEMVs against the grouped GEMMs (MOEKIT_DECODE_GEMV=0) with config CFG
# Usage (device tool): OUT=$OUT bash benchmarks/mxfp4_ptx_gpu.sh tests gemv small:gpt_oss_120b tune:200:96,128
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:${PYTHONPATH:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
dev=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1])")  # H100 / H200
for step in "$@"; do
  echo "=== $step ($(date -u +%T))"
  case $step in
    tests) python3 -m pytest -q tests/test_gemv.py tests/test_quant.py -p no:cacheprovider -n 8 -k "mxfp4 or ptx or amax" 2>&1 | tail -4 ;;
    gemv) python3 benchmarks/ab_mxfp4_decode.py --m 1,2,4,8 --rounds 3 --out "$OUT/ab_mxfp4_gemv_${dev}.json" 2>&1 | grep "M=" ;;
    small:*) IFS=: read -r _ shape ms <<< "$step"
      python3 benchmarks/ab_mxfp4_decode.py --shape "$shape" --m "${ms:-16,32,64,128,256}" --rounds 2 --configs 32,64,32,1,4,4 \
        --out "$OUT/ab_mxfp4_small_m_${shape}_${dev}.json" 2>&1 | grep "M=" ;;
    tune:*) IFS=: read -r _ budget ms <<< "$step"
      timeout -s INT $((budget + 90)) python3 -m moekit.cli tune --model gpt_oss_20b --dtype mxfp4 --batch-sizes ${ms//,/ } \
        --budget-s "$budget" --out "$OUT/tune_gpt_oss_mxfp4_${dev}.json" --report "$OUT/tune_report_gpt_oss_${dev}.json" \
        2> "$OUT/tune_gpt_oss_${dev}.log" | tail -25
      tail -2 "$OUT/tune_gpt_oss_${dev}.log" | tr '\r' '\n' | tail -2 ;;
    cross:*) IFS=: read -r _ shape ms cfg <<< "$step"
      echo "-- GEMV (ptx arm)"; python3 benchmarks/ab_mxfp4_decode.py --shape "$shape" --m "$ms" --rounds 2 2>&1 | grep "M="
      echo "-- grouped GEMMs, [$cfg]"; MOEKIT_DECODE_GEMV=0 python3 benchmarks/ab_mxfp4_decode.py --shape "$shape" --m "$ms" \
        --rounds 2 --configs "$cfg" 2>&1 | grep "M=" ;;
    *) echo "unknown step $step" ;;
  esac
done
