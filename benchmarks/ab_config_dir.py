"""A/B of kernel config files: the shipped configs (arm ``shipped``) against the files in ``--dir`` (arm
``tuned``: ``MOEKIT_CONFIG_DIR``, searched first), e.g. a re-tune written by ``moekit tune --out DIR``. Whole
fused_moe (routing included) as CUDA-graph replay, arms interleaved (``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_config_dir.py --dir DIR [--rounds 3] [--out F.json]
        [--cases qwen3_30b_a3b:fp8_block:16,64 ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from ab_cases import parser, run_ab  # noqa: E402

CASES = ["qwen3_30b_a3b:fp8_block:16,32,64,128,256", "dsv3:fp8_block:8,16,32,64,128,256"]
_DIR = None


def set_arm(arm: str) -> None:
    if arm == "tuned":
        os.environ["MOEKIT_CONFIG_DIR"] = _DIR
    else:
        os.environ.pop("MOEKIT_CONFIG_DIR", None)


if __name__ == "__main__":
    ap = parser(__doc__, "shipped,tuned", CASES)
    ap.add_argument("--dir", required=True, help="folder of config files (arm tuned)")
    args = ap.parse_args()
    _DIR = os.path.abspath(args.dir)
    run_ab(args, set_arm, "shipped")
