#!/usr/bin/env bash
# Re-tune the dense router tables at M = 64..4096 on one GPU and re-time the router with them (sessions 22-23), run
# from the repository root on the device machine:
#     [SHAPES="dsv3_kv_a ..."] [BATCHES="16 64"] bash benchmarks/run_linear_retune.sh H100 splitk [SCHEME ...]
# (default: every shape of moekit.linear_tune.SHAPES, M = 64 256 1024 4096, all three schemes).
# Tunes into /tmp/lt/new, compares with and merges into the shipped tables (tools/compare_linear_tables.py,
# tools/merge_linear_tables.py), copies the merged ones over src/moekit/configs_data/linear, then re-times the
# router against every path and F.linear there. $OUT gets the logs, tables_TAG.tar (new + merged: table names have
# commas, so they travel tarred) and bench_TAG/.
set -euo pipefail
mkdir -p /tmp/stubs && printf 'def user_cache_dir(name, *a, **k):\n    return "/tmp/" + name\n' > /tmp/stubs/platformdirs.py
export PYTHONPATH=$PWD/src:/tmp/stubs PYTHONUNBUFFERED=1
G=$1; TAG=$2; shift 2; SESSION=${SESSION:-session23}
SCHEMES=${*:-fp8_block128x128 fp8_channel none}
SHAPE_ARGS=${SHAPES:+--shapes $SHAPES}
BATCHES=${BATCHES:-64 256 1024 4096}
D=/tmp/lt; L=src/moekit/configs_data/linear
rm -rf $D
nvidia-smi --query-gpu=name --format=csv,noheader
(time python3 -m moekit.cli tune-linear $SHAPE_ARGS --schemes $SCHEMES --batch-sizes $BATCHES --out $D/new) \
    > $OUT/tune_linear_${TAG}_${G}_${SESSION}.log 2>&1
python3 tools/compare_linear_tables.py $L $D/new > $OUT/tune_linear_${TAG}_vs_shipped_${G}_${SESSION}.txt
python3 tools/merge_linear_tables.py $L $D/new $D/merged > $OUT/merge.log
tar -C $D -cf $OUT/tables_${TAG}.tar new merged
cp $D/merged/*.json $L/
tail -1 $OUT/tune_linear_${TAG}_vs_shipped_${G}_${SESSION}.txt
(time python3 benchmarks/bench_linear.py $SHAPE_ARGS --schemes $SCHEMES --batch-sizes $BATCHES --out $OUT/bench_${TAG}) \
    > $OUT/bench_linear_${TAG}_${G}_${SESSION}.log 2>&1
grep "Worst" $OUT/bench_linear_${TAG}_${G}_${SESSION}.log
