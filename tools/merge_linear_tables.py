"""Merge a partial ``moekit tune-linear`` run into existing router tables.

    python3 tools/merge_linear_tables.py BASE_DIR NEW_DIR OUT_DIR

For each table in NEW_DIR (a run over some batch sizes, e.g. ``--batch-sizes 1 4 16``), the table of the same
name in BASE_DIR keeps its other M buckets and takes NEW_DIR's buckets; ``_meta`` says which buckets came from
which run. Tables only in BASE_DIR are copied unchanged. Both runs must come from the same device.
"""
import json
import shutil
import sys
from pathlib import Path


def merge(base: dict, new: dict) -> dict:
    out = {k: v for k, v in base.items() if k.isdigit() and k not in new}
    out.update({k: v for k, v in new.items() if k.isdigit()})
    out = dict(sorted(out.items(), key=lambda kv: int(kv[0])))
    meta = dict(new.get("_meta", {}))
    meta["buckets_from_this_run"] = sorted(int(k) for k in new if k.isdigit())
    meta["other_buckets_from"] = base.get("_meta", {})
    out["_meta"] = meta
    return out


def main(base_dir: str, new_dir: str, out_dir: str) -> None:
    base_dir, new_dir, out = Path(base_dir), Path(new_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted(base_dir.glob("*.json")):
        if not (new_dir / p.name).is_file():
            shutil.copy(p, out / p.name)
    for p in sorted(new_dir.glob("*.json")):
        new = json.loads(p.read_text())
        base = json.loads((base_dir / p.name).read_text()) if (base_dir / p.name).is_file() else {}
        (out / p.name).write_text(json.dumps(merge(base, new), indent=1) + "\n")
        print(f"{p.name}: buckets {sorted(int(k) for k in new if k.isdigit())} from {new_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
