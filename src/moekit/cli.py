"""The `moekit` command line: demo, bench, info, tune, configs, tune-linear.

Each subcommand lives in its own module and registers itself through a function listed in ``_SUBCOMMANDS``."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# (module, registration function): imported lazily so a missing optional dependency of one subcommand
# does not break the others.
_SUBCOMMANDS = [
    ("moekit.cli", "_add_demo"),
    ("moekit.cli", "_add_bench"),
    ("moekit.info", "add_info_parser"),
    ("moekit.linear_tune", "add_parser"),
    ("moekit.tune", "add_tune_parser"),
    ("moekit.configs", "add_configs_parser"),
]


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run a Qwen3-30B-A3B-shaped layer on this device and check it")
    p.set_defaults(func=lambda args: 0 if __import__("moekit.demo", fromlist=["run_demo"]).run_demo() else 1)


def _bench(args) -> int:
    import json
    import os

    import torch

    from moekit import bench

    if not torch.cuda.is_available():
        print("moekit bench needs a CUDA GPU (it times CUDA-graph replays)", file=sys.stderr)
        return 2
    if args.profile:
        for name in args.shapes:
            for m in args.batch_sizes:
                print(f"{name} M={m}:\n{bench.profile_breakdown(bench.SHAPES[name], m)}")
        return 0
    result = bench.run_bench(args.shapes, args.batch_sizes, baseline=not args.no_baseline)
    table = bench.markdown_table(result)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, "bench_moe_" + result["device"].replace(" ", "_"))
        with open(stem + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(table + "\n")
        print(f"wrote {stem}.json and .md")
    return 0


def _add_bench(sub) -> None:
    from moekit.shapes import BATCH_SIZES, SHAPES

    p = sub.add_parser("bench", help="time the whole fused_moe as CUDA-graph replay against the floor")
    p.add_argument("--shapes", nargs="+", default=["mixtral8x7b", "qwen3_30b_a3b"], choices=sorted(SHAPES))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    p.add_argument("--no-baseline", action="store_true", help="skip the plain-PyTorch baseline")
    p.add_argument("--profile", action="store_true", help="print a per-kernel time breakdown instead")
    p.add_argument("--out", help="folder for the JSON and markdown results")
    p.set_defaults(func=_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module, fn in _SUBCOMMANDS:
        getattr(importlib.import_module(module), fn)(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; bad arguments or settings (MoEInputError, NoBackendError, EnvError) print one line
    naming the problem and return 2, as argparse does for its own errors."""
    from moekit.backends import NoBackendError
    from moekit.envs import EnvError
    from moekit.errors import MoEInputError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (MoEInputError, NoBackendError, EnvError) as e:
        print(f"{parser.prog} {getattr(args, 'command', '') or ''}: error: {e}".replace("  ", " "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
