"""Quick config sweep (a precursor of `moekit tune`): for each shape and M, time the whole forward for a
small candidate set and print the best configs. Usage: python benchmarks/sweep_configs.py qwen3_30b_a3b ..."""
import itertools
import json
import sys

import torch

from moekit.bench import make_inputs, moekit_moe, time_moe
from moekit.configs import MoEKernelConfig, default_config
from moekit.shapes import BATCH_SIZES, SHAPES


def candidates(per_expert):
    if per_expert <= 8:
        space = itertools.product([16], [32, 64, 128], [128, 256], [1], [4], [3, 4, 5])
    elif per_expert <= 64:
        space = itertools.product([16, 32, 64], [64, 128], [64, 128], [1], [4], [3, 4])
    else:
        space = itertools.product([64, 128], [64, 128], [64, 128], [8], [4, 8], [3, 4])
    return [MoEKernelConfig(*c) for c in space]


def main(names, out=None):
    results = {}
    for name in names:
        shape = SHAPES[name]
        for m in [m for m in BATCH_SIZES if m >= 256]:  # below, configs barely matter (measured: <1%)
            inputs = make_inputs(shape, m, rotate=4)
            d = default_config(m, shape.E, shape.I, shape.H, shape.top_k)
            t_def = time_moe(moekit_moe, shape, m, inputs)
            timed = []
            for c in candidates(m * shape.top_k / shape.E):
                try:
                    timed.append((time_moe(moekit_moe, shape, m, inputs, config=c), c))
                except Exception as exc:  # out of shared memory / registers
                    print(f"  skip {c}: {type(exc).__name__}")
            timed.sort(key=lambda t: t[0])
            print(f"{name} M={m}: default {t_def:.1f} us {d}")
            for t, c in timed[:3]:
                print(f"    {t:9.1f} us  {c}")
            results[f"{name},{m}"] = {"default_us": t_def, "best": [(t, c.to_dict()) for t, c in timed[:5]]}
            if out:
                with open(out, "w") as f:
                    json.dump(results, f, indent=1)
            del inputs
            torch.cuda.empty_cache()
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    args = sys.argv[1:]
    out = None
    if "--out" in args:
        out = args[args.index("--out") + 1]
        args = args[:args.index("--out")]
    main(args or ["qwen3_30b_a3b", "mixtral8x7b"], out)
