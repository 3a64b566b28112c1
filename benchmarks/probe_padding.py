"""Probe (GPU): what per-expert padding costs the grouped GEMMs. Times ``fused_experts_triton`` (alignment, both
GEMMs, top-k sum; routing excluded) as CUDA-graph replay on random top-k ids against balanced ids (every expert
exactly M * k / E slots, so no padding when that is a multiple of BLOCK_M), for the shipped config and for
variants ``M<bm>`` (BLOCK_M overridden), ``w<n>`` (warps), ``s<n>`` (stages), ``T<rows>`` (tail tiles down to
that many rows; without it none), joined by ':' (``shipped`` alone: the shipped config, no tail tiles). Each
variant's output is compared with the first variant's (relative Frobenius error).

Usage: python benchmarks/probe_padding.py --shape qwen3_30b_a3b --m 1024 2048 4096 --variants shipped M64 --out F.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from moekit.align import moe_align_block_size  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.configs import get_config  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402
from moekit.triton_experts import fused_experts_triton  # noqa: E402


def variant(cfg, name):
    """(config, min_tile or None) of a variant name."""
    if name == "shipped":
        return cfg, None
    kw, tail = {}, None
    for part in name.split(":"):
        if part[0] == "T":
            tail = int(part[1:])
            continue
        key = {"M": "BLOCK_SIZE_M", "N": "BLOCK_SIZE_N", "K": "BLOCK_SIZE_K", "w": "num_warps", "s": "num_stages",
               "G": "GROUP_SIZE_M"}[part[0]]
        kw[key] = int(part[1:])
    return dataclasses.replace(cfg, **kw), tail


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen3_30b_a3b")
    ap.add_argument("--m", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--variants", nargs="+", default=["shipped", "M64"])
    ap.add_argument("--out")
    a = ap.parse_args()
    s = SHAPES[a.shape]
    dev = "cuda"
    torch.manual_seed(0)
    w13 = (torch.randn(s.E, 2 * s.I, s.H, device=dev) / s.H ** 0.5).bfloat16()
    w2 = (torch.randn(s.E, s.H, s.I, device=dev) / s.I ** 0.5).bfloat16()
    rows = []
    for m in a.m:
        x = torch.randn(m, s.H, device=dev).bfloat16()
        w = torch.rand(m, s.top_k, device=dev)
        rnd = torch.randn(m, s.E, device=dev).topk(s.top_k, dim=1).indices.int()
        t = torch.arange(m, device=dev)[:, None] * s.top_k + torch.arange(s.top_k, device=dev)[None, :]
        bal = (t % s.E).int()
        base = get_config(s.E, s.I, s.H, s.top_k, m, torch.bfloat16)
        first = {}
        for name in a.variants:
            cfg, tail = variant(base, name)
            for kind, ids in (("random", rnd), ("balanced", bal)):
                al = moe_align_block_size(ids, s.E, cfg.BLOCK_SIZE_M, None, use_triton=True, min_tile=tail)
                npp = int(al.num_padded.item())
                try:
                    out = fused_experts_triton(x, w13, w2, w, ids, config=cfg, aligned=al).double()
                    ref = first.setdefault(kind, out)
                    err = ((out - ref).norm() / ref.norm()).item()
                    us = _median_us(lambda: fused_experts_triton(x, w13, w2, w, ids, config=cfg, aligned=al))
                except Exception as exc:  # a variant that does not fit (shared memory)
                    print(f"{m} {name}: {type(exc).__name__}", flush=True)
                    break
                flops = 2 * m * s.top_k * 3 * s.I * s.H
                row = dict(shape=a.shape, M=m, variant=name, config=cfg.short(), routing=kind, us=round(us, 1), err=err,
                           padded_rows=npp, slots=m * s.top_k, tflops=round(flops / us * 1e-6, 1))
                print(json.dumps(row), flush=True)
                rows.append(row)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           triton=__import__("triton").__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
