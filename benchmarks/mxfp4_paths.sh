#!/usr/bin/env bash
# One device-tool call: mxfp4 (gpt-oss-20b) through tl.dot_scaled vs moekit's in-kernel e2m1 decode, whole
# forward (benchmarks/bench_quant.py --mxfp4-path), the decode path with the shipped file (tuned for
# dot_scaled) and with a few hand-picked configs given through MOEKIT_CONFIG_DIR.
# Usage (device tool): bash benchmarks/mxfp4_paths.sh [M list for the shipped file, default 16,64,256,1024,4096]
#   [M list for the candidates, default 16,256,4096]
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:${PYTHONPATH:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
MS=${1:-16,64,256,1024,4096}; MC=${2:-16,256,4096}
dev=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
bq() { python3 benchmarks/bench_quant.py --shapes gpt_oss_20b "$@" 2>&1 | grep -v WARN | grep "M=\|ceil"; }
echo "--- dot_scaled, shipped configs"; bq --m "$MS" --mxfp4-path dot_scaled --out "$OUT/mx_dot_scaled.json"
echo "--- decode, shipped configs"; bq --m "$MS" --mxfp4-path decode --out "$OUT/mx_decode_shipped.json"
# candidates: BLOCK_M BLOCK_N BLOCK_K GROUP_M warps stages for M <= 64, M = 256, M >= 1024
for cand in "16,64,128,1,4,4/32,64,128,1,4,4/128,128,64,8,8,3" "16,128,128,1,4,3/64,64,128,1,4,3/128,128,128,8,8,3" \
            "16,64,256,1,4,3/32,128,64,1,4,4/128,64,64,8,4,4"; do
  dir=$(mktemp -d)
  python3 - "$cand" "$dir/E=32,N=2880,device_name=$dev,dtype=mxfp4.json" <<'PY'
import json, sys
keys = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
small, mid, big = ([int(v) for v in part.split(",")] for part in sys.argv[1].split("/"))
cfg = {m: dict(zip(keys, small if m <= 64 else mid if m <= 256 else big)) for m in (1, 16, 64, 256, 1024, 4096)}
json.dump(cfg, open(sys.argv[2], "w"))
PY
  for path in dot_scaled decode; do
    echo "--- $path, configs $cand"
    MOEKIT_CONFIG_DIR=$dir bq --m "$MC" --mxfp4-path $path --out "$OUT/mx_${path}_${cand//[,\/]/_}.json"
  done
done
