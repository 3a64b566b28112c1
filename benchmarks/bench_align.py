"""The multi-program alignment alone (``moekit.kernels.align.align_triton``: count, scan, scatter) as CUDA-graph
replay (median), at prefill sizes of the benchmark shapes with the BLOCK_M their tuned configs use; optionally
against another version of the module (``--against FILE``, e.g. ``git show REV:src/moekit/kernels/align.py``),
arms interleaved, best of ``--rounds``. Each point is checked equal to the PyTorch alignment. GPU only.

    PYTHONPATH=src python3 benchmarks/bench_align.py [--m 256,1024,4096,16384] [--against old_align.py] [--out F]
        [--tails]   (with the tail tiles ``moekit.configs.tail_tile`` gives each point; checked as well)
        [--single-max 0,4096]   (arms of ``SINGLE_MAX``: where one program beats the three launches)
        [--single-warps 1,4]   (arms of ``SINGLE_WARPS``, the one program forced)
        [--scatter 4,8]   (arms of the scatter's warps, the three launches forced)
"""
from __future__ import annotations

import argparse
import importlib.util
import json

import torch
import triton

import moekit.kernels.align as ka
from moekit.align import align_torch, max_blocks
from moekit.bench import _median_us
from moekit.configs import get_config, tail_tile
from moekit.shapes import SHAPES


_SHIPPED = ka.SINGLE_MAX, ka.SINGLE_WARPS, ka.SINGLE_WARPS_SLOTS, ka.SCATTER_WARPS


def _set_arm(arm: str) -> None:
    ka.SINGLE_MAX, ka.SINGLE_WARPS, ka.SINGLE_WARPS_SLOTS, ka.SCATTER_WARPS = _SHIPPED
    if arm.startswith("scatter="):
        ka.SINGLE_MAX, ka.SCATTER_WARPS = 0, int(arm.split("=")[1])
    if arm.startswith("single_max="):
        ka.SINGLE_MAX = int(arm.split("=")[1])
    elif arm.startswith("single_warps="):  # the one program at these warps at every size
        ka.SINGLE_MAX, ka.SINGLE_WARPS, ka.SINGLE_WARPS_SLOTS = 1 << 30, int(arm.split("=")[1]), 1 << 30


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="256,1024,4096,16384")
    ap.add_argument("--shapes", default="qwen3_30b_a3b,dsv3,mixtral8x7b")
    ap.add_argument("--against", default=None, help="a file holding another align_triton")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tails", action="store_true", help="align with the shipped tail-tile rule")
    ap.add_argument("--scatter", default="", help="also arms of kernels.align.SCATTER_WARPS (three launches "
                                                  "forced), e.g. 4,8")
    ap.add_argument("--single-warps", default="", help="also arms of kernels.align.SINGLE_WARPS (one program)")
    ap.add_argument("--single-max", default="", help="also arms of kernels.align.SINGLE_MAX (e.g. 0,4096: the "
                                                      "three launches, one program)")
    args = ap.parse_args()
    arms = {"shipped": ka}
    for v in filter(None, args.single_max.split(",")):
        arms[f"single_max={v}"] = ka
    for v in filter(None, args.single_warps.split(",")):
        arms[f"single_warps={v}"] = ka
    for v in filter(None, args.scatter.split(",")):
        arms[f"scatter={v}"] = ka
    if args.against:
        spec = importlib.util.spec_from_file_location("moekit_align_against", args.against)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        arms["against"] = mod
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "points": []}
    print(res, flush=True)
    for name in args.shapes.split(","):
        s = SHAPES[name]
        for m in [int(v) for v in args.m.split(",")]:
            config = get_config(s.E, s.I, s.H, s.top_k, m, torch.bfloat16)
            bm = config.BLOCK_SIZE_M
            mt = tail_tile(config, s.E) if args.tails else bm
            ids = torch.stack([torch.randperm(s.E, device="cuda")[:s.top_k] for _ in range(m)]).int()
            nb = max_blocks(ids.numel(), s.E, bm)
            ref = align_torch(ids, s.E, bm, min_tile=mt)
            n = int(ref.num_padded)
            best = {}
            for arm, mod in arms.items():
                _set_arm(arm)
                out = mod.align_triton(ids, s.E, bm, nb, None, mt)
                srt, npp = out[0], out[-1]
                assert int(npp) == n and torch.equal(srt[:n], ref.sorted_ids[:n]), (arm, name, m)
                if mt < bm:
                    used = int((ref.tile_rows >= 0).sum())
                    assert torch.equal(out[2][:used], ref.tile_rows[:used]), (arm, name, m)
            for _ in range(args.rounds):
                for arm, mod in arms.items():
                    _set_arm(arm)
                    t = _median_us(lambda mod=mod: mod.align_triton(ids, s.E, bm, nb, None, mt))
                    best[arm] = min(best.get(arm, float("inf")), t)
            res["points"].append({"shape": name, "M": m, "E": s.E, "top_k": s.top_k, "block_m": bm, "min_tile": mt,
                                  "us": best})
            print(f"{name:14s} M={m:6d} E={s.E:3d} k={s.top_k} BM={bm:3d} min_tile={mt:3d}  "
                  + "  ".join(f"{a} {t:7.2f} us" for a, t in best.items()), flush=True)
            if args.out:  # after every point: a run cut short keeps what it measured
                with open(args.out, "w") as f:
                    json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
