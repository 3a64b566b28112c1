#!/bin/bash
# GPU check for quantized experts: tests (bf16 included) then the benchmark; results under $OUT.
# Steps (default: tests bench): tests | bench | mxab (mxfp4: tl.dot_scaled vs in-kernel decode)
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
if ! python3 -c "import platformdirs" 2>/dev/null; then  # configs.py needs it; the bare device image lacks it
  mkdir -p /tmp/stubs && printf 'def user_cache_dir(name, *a, **k):\n    return "/tmp/" + name\n' > /tmp/stubs/platformdirs.py
  export PYTHONPATH=src:/tmp/stubs
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/device.txt
for step in ${*:-tests bench}; do
  echo "=== $step ($(date +%T))"
  case $step in
    tests) timeout ${TEST_TIMEOUT:-170} python3 -m pytest -q tests/test_quant.py tests/test_fused_moe.py -p no:warnings \
             --tb=short -rf -k "not (torch and not quant)" 2>&1 | tail -60 | tee $OUT/tests.log ;;
    bench) timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/bench_quant.py --out $OUT/bench_quant.json \
             --shapes ${SHAPES:-dsv3,qwen3_30b_a3b,gpt_oss_20b,mixtral8x7b} 2>&1 | tee $OUT/bench.log ;;
    mxab) for path in dot_scaled decode; do
            timeout ${BENCH_TIMEOUT:-150} python3 benchmarks/bench_quant.py --out $OUT/bench_mxfp4_$path.json \
              --shapes gpt_oss_20b --mxfp4-path $path 2>&1 | tee $OUT/bench_mxfp4_$path.log; done ;;
  esac
done
