"""The common loop of the decode A/B scripts (``ab_gemv_stages.py``, ``ab_pdl.py``, ``ab_gemv_path.py``): cases
``shape:scheme:M,M,...``, each point's whole fused_moe (routing included) timed as CUDA-graph replay over
``bench_quant.ROTATE`` random inputs, every arm once per round, rounds interleaved, the best median per arm kept.
GPU only. Each script supplies its arms and ``set_arm(arm)`` (which also restores the shipped state for
``shipped_arm``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, List

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
from bench_quant import ROTATE, make_quant_weights, quant_forward  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.quant import QuantScheme  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

SCHEMES = {"bf16": lambda: None, "fp8_block": lambda: QuantScheme.fp8_block(128, 128),
           "fp8_channel": QuantScheme.fp8_channel, "fp8_tensor": QuantScheme.fp8_tensor,
           "int8_channel": QuantScheme.int8_channel, "int8_weight_only": QuantScheme.int8_weight_only,
           "int4_weight_only": QuantScheme.int4_weight_only, "mxfp4": QuantScheme.mxfp4,
           "mxfp4_mma": lambda: QuantScheme.mxfp4("mma")}
CASES = ["qwen3_30b_a3b:bf16:1,2,4", "gpt_oss_20b:bf16:1,2", "qwen3_30b_a3b:fp8_block:1,2", "dsv3:fp8_block:1,2,4",
         "qwen3_30b_a3b:fp8_channel:1", "qwen3_30b_a3b:int8_weight_only:1", "gpt_oss_20b:mxfp4:1,2,4"]


def bf16_weights(shape):
    g = torch.Generator(device="cuda").manual_seed(0)
    w13 = torch.randn(shape.E, 2 * shape.I, shape.H, device="cuda", generator=g, dtype=torch.bfloat16) / shape.H ** 0.5
    w2 = torch.randn(shape.E, shape.H, shape.I, device="cuda", generator=g, dtype=torch.bfloat16) / shape.I ** 0.5
    return w13, None, w2, None


def parser(doc: str, arms: str, cases: List[str] = CASES) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--arms", default=arms)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", nargs="*", default=cases, help="shape:scheme:M,M,...")
    ap.add_argument("--out", default=None)
    return ap


def interleaved_best(run: Callable[[], None], arms: List[str], set_arm: Callable[[str], None], rounds: int,
                     shipped_arm: str) -> dict:
    """Best median us of one forward per arm (``run`` replays ``ROTATE`` of them), every arm once per round,
    rounds interleaved; ``shipped_arm`` is set again at the end."""
    best = {a: float("inf") for a in arms}
    for _ in range(rounds):
        for a in arms:
            set_arm(a)
            best[a] = min(best[a], _median_us(run) / ROTATE)
    set_arm(shipped_arm)
    return best


def run_ab(args, set_arm: Callable[[str], None], shipped_arm: str) -> dict:
    """Time every case and arm (``args`` from :func:`parser`); prints one line per point, writes ``args.out``."""
    arms = args.arms.split(",")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "rounds": args.rounds, "arms": arms, "points": []}
    print(f"{res['device']} torch {res['torch']} triton {res['triton']}", flush=True)
    for case in args.cases:
        name, key, ms = case.split(":")
        shape, scheme = SHAPES[name], SCHEMES[key]()
        torch.manual_seed(0)
        weights = bf16_weights(shape) if scheme is None else make_quant_weights(shape, scheme)
        bias = torch.randn(shape.E, device="cuda") * 0.1 if shape.num_expert_group else None
        for m in [int(v) for v in ms.split(",")]:
            torch.manual_seed(m)  # the same inputs and routing in every process (ab_trees.py compares processes)
            run, _, _ = quant_forward(shape, scheme, weights, bias, m)
            best = interleaved_best(run, arms, set_arm, args.rounds, shipped_arm)
            res["points"].append({"case": f"{name}:{key}", "M": m, "us": best})
            print(f"{name:14s} {key:16s} M={m:3d}  " + "  ".join(f"{a} {best[a]:7.1f}" for a in arms)
                  + f"  best {min(best, key=best.get)} {best[arms[0]] / min(best.values()):.3f}x", flush=True)
        del weights
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return res
