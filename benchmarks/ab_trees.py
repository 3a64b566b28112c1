"""A/B of two source trees (e.g. the last commit's ``src`` exported with ``git archive HEAD src | tar -x -C old``,
against the working tree's), for changes that cannot be switched inside one process (a kernel's source).
Runs an ``ab_cases`` script (one arm, one round) once per tree per round, tree order alternating each round, in
fresh processes with ``PYTHONPATH`` set to the tree; keeps each point's best time per tree. GPU only.

    python3 benchmarks/ab_trees.py --trees old/src,src [--rounds 3] [--out F.json] -- benchmarks/ab_pdl.py \
        --arms shipped --cases mixtral8x7b:fp8_tensor:256
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trees", required=True, help="comma-separated src folders, the first one the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv[:split])
    script = argv[split + 1:]
    trees = args.trees.split(",")
    best, meta = {}, {}
    for r in range(args.rounds):
        for tree in (trees if r % 2 == 0 else trees[::-1]):
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(tree)]
                                                                  + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
                subprocess.run([sys.executable, *script, "--rounds", "1", "--out", f.name], env=env, check=True,
                               stdout=subprocess.DEVNULL)
                res = json.load(open(f.name))
            meta = {k: res[k] for k in ("device", "torch", "triton")}
            for p in res["points"]:
                key = f"{p['case']}:{p['M']}"
                us = min(p["us"].values())
                best.setdefault(key, {}).setdefault(tree, us)
                best[key][tree] = min(best[key][tree], us)
    print(f"{meta.get('device')} torch {meta.get('torch')} triton {meta.get('triton')}, rounds {args.rounds}")
    for key, t in best.items():
        print(f"{key:36s} " + "  ".join(f"{tr} {t[tr]:8.1f}" for tr in trees) + f"  {trees[-1]} / {trees[0]}: "
              f"{t[trees[0]] / t[trees[-1]]:.3f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**meta, "rounds": args.rounds, "trees": trees, "script": script, "us": best}, f, indent=1)


if __name__ == "__main__":
    main()
