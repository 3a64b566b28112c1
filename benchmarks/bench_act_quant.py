"""The activation quantization passes alone (GPU only): per tensor as the fused forward runs it on GEMM 1's output
(amax given, one pass: ``per_tensor_quant(..., amax=)``) and per token (``per_token_quant``), on Mixtral-8x7B-sized
intermediates, under values of ``moekit.kernels.quant.TENSOR_CHUNK`` / ``TOKEN_CHUNK`` (the chunk a program step
handles, per tensor / per token; one ``--chunks`` value sets both) and
``SPLIT_ROWS_ITEMS`` (up to it, one per-tensor program per chunk), CUDA-graph replay
(``triton.testing.do_bench_cudagraph``), arms interleaved. Prints us and the rate in TB/s (bytes read + written).

    PYTHONPATH=src python3 benchmarks/bench_act_quant.py [--rows 600,2168,8312] [--n 14336] [--chunks 2048,4096,8192]
        [--split 4096] [--rounds 3] [--out F.json]
"""
from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.testing

import moekit.kernels.quant as kq
from moekit.quant.ops import per_tensor_quant, per_token_quant


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", default="600,2168,8312")
    ap.add_argument("--n", type=int, default=14336)
    ap.add_argument("--chunks", default="2048,4096,8192")
    ap.add_argument("--split", default=str(kq.SPLIT_ROWS_ITEMS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dt = torch.float8_e4m3fn
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "points": []}
    print(f"{res['device']} torch {res['torch']} triton {res['triton']}")
    arms = [(c, int(float(s))) for c in map(int, args.chunks.split(",")) for s in args.split.split(",")]
    for rows in map(int, args.rows.split(",")):
        x = torch.randn(rows, args.n, device="cuda", dtype=torch.bfloat16)
        amax = x.float().abs().amax().reshape(1)
        npp = torch.tensor([rows], dtype=torch.int32, device="cuda")
        nbytes = x.numel() * 3
        for kind, fn in (("tensor", lambda: per_tensor_quant(x, dt, npp=npp, amax=amax)),
                         ("token", lambda: per_token_quant(x, dt, npp=npp))):
            best = {}
            for _ in range(args.rounds):
                for chunk, split in arms:
                    kq.TENSOR_CHUNK = kq.TOKEN_CHUNK = chunk
                    kq.SPLIT_ROWS_ITEMS = split
                    fn()
                    us = triton.testing.do_bench_cudagraph(fn, rep=50) * 1e3
                    best[(chunk, split)] = min(best.get((chunk, split), float("inf")), us)
            for (chunk, split), us in best.items():
                res["points"].append(dict(kind=kind, rows=rows, n=args.n, chunk=chunk, split=split, us=us,
                                          tbs=nbytes / us / 1e6))
                print(f"{kind:6s} [{rows}, {args.n}] chunk {chunk:5d} split {split:10d}  {us:8.1f} us "
                      f"{nbytes / us / 1e6:5.2f} TB/s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
