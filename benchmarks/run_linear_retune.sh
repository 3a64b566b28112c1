#!/usr/bin/env bash
# Re-tune the dense router tables on one GPU and re-time the router with them (sessions 22-23), run from the
# repository root on the device machine:
#     [SHAPES="dsv3_kv_a ..."] [BATCHES="16 64"] [SESSION=session23] bash benchmarks/run_linear_retune.sh H100 TAG [SCHEME ...]
# (default: every shape of moekit.linear_tune.SHAPES, M = 64 256 1024 4096, all three schemes).
# Tunes into /tmp/lt/new, compares with and merges into the shipped tables (tools/compare_linear_tables.py,
# tools/merge_linear_tables.py), copies the merged ones over src/moekit/configs_data/linear, then re-times the
# router against every path and F.linear there. Everything it writes (logs, the comparison, new + merged tables,
# the benchmark's json / md) travels in one file, $OUT/retune_TAG_GPU_SESSION.tar: table names have commas, which
# the device tool does not return, and it returns only a few files per call.
set -euo pipefail
mkdir -p /tmp/stubs && printf 'def user_cache_dir(name, *a, **k):\n    return "/tmp/" + name\n' > /tmp/stubs/platformdirs.py
export PYTHONPATH=$PWD/src:/tmp/stubs PYTHONUNBUFFERED=1
G=$1; TAG=$2; shift 2; SESSION=${SESSION:-session23}
SCHEMES=${*:-fp8_block128x128 fp8_channel none}
SHAPE_ARGS=${SHAPES:+--shapes $SHAPES}
BATCHES=${BATCHES:-64 256 1024 4096}
D=/tmp/lt_$TAG; L=src/moekit/configs_data/linear; W=$D/retune_${TAG}_${G}_${SESSION}
rm -rf $D && mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader
(time python3 -m moekit.cli tune-linear $SHAPE_ARGS --schemes $SCHEMES --batch-sizes $BATCHES --out $W/new) \
    > $W/tune_linear.log 2>&1
python3 tools/compare_linear_tables.py $L $W/new > $W/tune_vs_shipped.txt
python3 tools/merge_linear_tables.py $L $W/new $W/merged > $W/merge.log
cp $W/merged/*.json $L/
tail -1 $W/tune_vs_shipped.txt
(time python3 benchmarks/bench_linear.py $SHAPE_ARGS --schemes $SCHEMES --batch-sizes $BATCHES --out $W/bench) \
    > $W/bench_linear.log 2>&1
grep "Worst" $W/bench_linear.log
tar -C $D -cf $OUT/retune_${TAG}_${G}_${SESSION}.tar retune_${TAG}_${G}_${SESSION}
