#!/bin/bash
# GPU check for quantized experts: tests (bf16 included) then the benchmark; results under $OUT.
export PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/device.txt
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q tests/test_quant.py tests/test_fused_moe.py -p no:warnings -x 2>&1 | tail -40 | tee $OUT/tests.log
timeout ${BENCH_TIMEOUT:-330} python3 benchmarks/bench_quant.py --out $OUT/bench_quant.json ${BENCH_ARGS} 2>&1 | tee $OUT/bench.log
