"""Compare two sets of ``moekit tune-linear`` tables bucket by bucket.

    python3 tools/compare_linear_tables.py OLD_DIR NEW_DIR [--device NAME]

For every table in NEW_DIR with a namesake in OLD_DIR, prints per M bucket the path and time each run chose and
old / new (above 1: the new table is faster). The two runs' times come from different processes, so read
ratios within a few percent as equal; a re-timed benchmark (``benchmarks/bench_linear.py``) decides.
"""
import argparse
import json
import math
from pathlib import Path


def rows(old_dir: Path, new_dir: Path, device: str = ""):
    for p in sorted(new_dir.glob("*.json")):
        if device and f"device_name={device}" not in p.name or not (old_dir / p.name).is_file():
            continue
        old, new = json.loads((old_dir / p.name).read_text()), json.loads(p.read_text())
        for m in sorted((k for k in new if k.isdigit()), key=int):
            if m in old:
                o, n = old[m], new[m]
                yield p.name, int(m), o["path"], o["us"], n["path"], n["us"], o["us"] / n["us"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--device", default="", help="only tables of this device_name")
    args = ap.parse_args()
    ratios = []
    for name, m, op, ou, np_, nu, r in rows(Path(args.old), Path(args.new), args.device):
        short = name.replace("linear,", "").replace(".json", "").split(",device_name=")[0]
        quant = name.split("quant=")[1][:-5] if "quant=" in name else "none"
        print(f"{short:16s} {quant:17s} M={m:5d}  {op:12s} {ou:8.2f} -> {np_:12s} {nu:8.2f} us  x{r:.2f}")
        ratios.append(r)
    if ratios:
        gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"{len(ratios)} buckets: geometric mean old/new x{gm:.3f}, "
              f"best x{max(ratios):.2f}, worst x{min(ratios):.2f}")


if __name__ == "__main__":
    main()
