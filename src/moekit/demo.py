"""`moekit demo`: run a Qwen3-30B-A3B-shaped MoE layer on whatever device is present and check it.

On a GPU: the full layer (E=128, k=8, H=2048, I=768) in bfloat16 through the auto backend (Triton kernels).
On a CPU: the same expert count and top-k scaled down (H=256, I=96) in float32 through the auto backend
(PyTorch). Either way the output is compared with a float64 reference (the PyTorch backend in float64) by
relative Frobenius error against the tolerance for the dtype, and a small table is printed.
"""
from __future__ import annotations

import time

import torch

from moekit.experts import fused_moe, resolve_backend
from moekit.shapes import SHAPES
from moekit.testing import rel_frobenius_error, tolerance_for


def _timed(fn, device: str, reps: int = 5) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


def run_demo(log=print) -> bool:
    """Returns True when every row is within tolerance."""
    full = SHAPES["qwen3_30b_a3b"]
    if torch.cuda.is_available():
        device, dtype, h, i, batch = "cuda", torch.bfloat16, full.H, full.I, (1, 16, 256, 2048)
    else:
        device, dtype, h, i, batch = "cpu", torch.float32, 256, 96, (1, 16, 256)
    e, k = full.E, full.top_k
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    log(f"moekit demo on {name}: Qwen3-30B-A3B-shaped layer E={e} top_k={k} H={h} I={i} {str(dtype)[6:]}"
        + ("" if device == "cuda" else " (scaled down from H=2048, I=768 for the CPU)"))
    g = torch.Generator(device=device).manual_seed(0)
    w13 = (torch.randn(e, 2 * i, h, device=device, generator=g) / h ** 0.5).to(dtype)
    w2 = (torch.randn(e, h, i, device=device, generator=g) / i ** 0.5).to(dtype)
    tol = tolerance_for(dtype)
    backend = resolve_backend("auto", w13)
    log(f"{'M':>6} {'backend':>8} {'time (us)':>10} {'rel. error':>11} {'tolerance':>10}  result")
    ok_all = True
    for m in batch:
        x = torch.randn(m, h, device=device, generator=g).to(dtype)
        logits = torch.randn(m, e, device=device, generator=g)
        out = fused_moe(x, w13, w2, logits, k)
        ref = fused_moe(x.double(), w13.double(), w2.double(), logits.double(), k, backend="torch")
        err = rel_frobenius_error(out, ref)
        ok = err <= tol.max_rel_fro and bool(torch.isfinite(out).all())
        ok_all &= ok
        us = _timed(lambda: fused_moe(x, w13, w2, logits, k), device)
        log(f"{m:6d} {backend:>8} {us:10.1f} {err:11.2e} {tol.max_rel_fro:10.0e}  {'ok' if ok else 'FAIL'}")
    log("all outputs match the float64 reference" if ok_all else "MISMATCH against the float64 reference")
    return ok_all
