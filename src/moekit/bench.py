"""`moekit bench`: time the whole MoE forward (routing included) as CUDA-graph replay, against the floor
and against a plain-PyTorch MoE measured in the same run.

For each point it reports microseconds (median of many graph replays), the floor
``max(bytes / HBM bandwidth, FLOPs / tensor peak)`` with both ceilings measured in this run, the fraction of
the floor reached (floor / time), the achieved TFLOP/s as a fraction of the measured peak, and the speed-up
over the plain-PyTorch MoE (softmax/top-k + argsort + torch._grouped_mm + index_add, :mod:`moekit.torch_experts`).

Each timed call rotates over ``ROTATE`` independent inputs (different routing), so decode points measure
weights streamed from HBM, not the 50 MB L2 holding the last call's experts.
"""
from __future__ import annotations

import math
import platform as _pyplatform
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from moekit.platform import has_feature
from moekit.shapes import BATCH_SIZES, SHAPES, MoEShape, moe_bytes_flops

ROTATE = 8


@dataclass
class Ceilings:
    hbm_bytes_per_s: float
    bf16_flops_per_s: float
    fp8_flops_per_s: Optional[float] = None


def _median_us(fn: Callable[[], None], rep_ms: int = 300) -> float:
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median") * 1e3


def measure_ceilings(device: str = "cuda") -> Ceilings:
    """HBM bandwidth: the better of a device-to-device copy of 1 GiB (read + write counted) and a read-only
    pass (a sum over 2 GiB); dense matmul rates (8192^3, random data): bf16 via torch.matmul, fp8 e4m3 via
    torch._scaled_mm when the device has it."""
    src = torch.randn(1 << 29, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t_copy = _median_us(lambda: dst.copy_(src))
    del dst
    big = torch.randn(1 << 30, device=device, dtype=torch.bfloat16)
    t_read = _median_us(lambda: big.sum(dtype=torch.float32))
    bw = max(2 * src.numel() * 2 / (t_copy * 1e-6), big.numel() * 2 / (t_read * 1e-6))
    del src, big
    s = 8192
    a = torch.randn(s, s, device=device, dtype=torch.bfloat16)
    b = torch.randn(s, s, device=device, dtype=torch.bfloat16)
    t = _median_us(lambda: torch.matmul(a, b), rep_ms=500)
    bf16 = 2 * s ** 3 / (t * 1e-6)
    fp8 = None
    if has_feature("fp8_mma")[0]:
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.to(torch.float8_e4m3fn).t().contiguous().t()
        one = torch.ones((), device=device)
        t = _median_us(lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16), rep_ms=500)
        fp8 = 2 * s ** 3 / (t * 1e-6)
    return Ceilings(bw, bf16, fp8)


def make_inputs(shape: MoEShape, M: int, dtype=torch.bfloat16, device="cuda", rotate: int = ROTATE, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    w13 = (torch.randn(shape.E, 2 * shape.I, shape.H, device=device, generator=g) / shape.H ** 0.5).to(dtype)
    w2 = (torch.randn(shape.E, shape.H, shape.I, device=device, generator=g) / shape.I ** 0.5).to(dtype)
    xs = [torch.randn(M, shape.H, device=device, generator=g).to(dtype) for _ in range(rotate)]
    logits = [torch.randn(M, shape.E, device=device, generator=g) for _ in range(rotate)]
    bias = torch.randn(shape.E, device=device, generator=g) * 0.1 if shape.num_expert_group else None
    return w13, w2, xs, logits, bias


def plain_pytorch_moe(x, w13, w2, logits, shape: MoEShape, bias=None):
    """The baseline: torch routing + argsort + torch._grouped_mm + index_add (what a user writes by hand)."""
    from moekit.routing import select_experts_torch
    from moekit.torch_experts import fused_experts_torch

    w, ids = select_experts_torch(logits, shape.top_k, correction_bias=bias, **shape.route_kwargs())
    return fused_experts_torch(x, w13, w2, w, ids)


def moekit_moe(x, w13, w2, logits, shape: MoEShape, bias=None, config=None):
    from moekit.experts import fused_moe

    if config is None:
        return fused_moe(x, w13, w2, logits, shape.top_k, correction_bias=bias, **shape.route_kwargs())
    from moekit.routing import select_experts
    from moekit.triton_experts import fused_experts_triton

    w, ids = select_experts(logits, shape.top_k, correction_bias=bias, **shape.route_kwargs())
    return fused_experts_triton(x, w13, w2, w, ids, config=config)


def time_moe(impl, shape: MoEShape, M: int, inputs=None, **kw) -> float:
    """Median microseconds of one forward (CUDA-graph replay, rotating over the input sets)."""
    w13, w2, xs, logits, bias = inputs if inputs is not None else make_inputs(shape, M)

    def run():
        for x, lg in zip(xs, logits):
            impl(x, w13, w2, lg, shape, bias, **kw)

    return _median_us(run) / len(xs)


@dataclass
class Point:
    shape: str
    M: int
    moekit_us: float
    torch_us: Optional[float]
    floor_us: float
    bound: str
    frac_of_floor: float
    tflops: float
    frac_of_peak: float
    speedup_vs_torch: Optional[float]


def run_bench(shape_names: Sequence[str], batch_sizes: Sequence[int] = BATCH_SIZES, baseline: bool = True,
              ceilings: Optional[Ceilings] = None, log=print) -> Dict:
    """Benchmark every (shape, M); returns a JSON-able dict with the environment, ceilings and points."""
    import triton

    ceilings = ceilings or measure_ceilings()
    log(f"ceilings: HBM {ceilings.hbm_bytes_per_s / 1e12:.2f} TB/s, bf16 {ceilings.bf16_flops_per_s / 1e12:.0f} "
        f"TFLOP/s" + (f", fp8 {ceilings.fp8_flops_per_s / 1e12:.0f} TFLOP/s" if ceilings.fp8_flops_per_s else ""))
    points: List[Point] = []
    for name in shape_names:
        shape = SHAPES[name]
        for M in batch_sizes:
            inputs = make_inputs(shape, M)
            ours = time_moe(moekit_moe, shape, M, inputs)
            base = time_moe(plain_pytorch_moe, shape, M, inputs) if baseline else None
            nbytes, flops = moe_bytes_flops(shape, M)
            t_mem, t_math = nbytes / ceilings.hbm_bytes_per_s * 1e6, flops / ceilings.bf16_flops_per_s * 1e6
            floor = max(t_mem, t_math)
            p = Point(name, M, ours, base, floor, "memory" if t_mem >= t_math else "compute", floor / ours,
                      flops / ours / 1e6, flops / ours / 1e6 / (ceilings.bf16_flops_per_s / 1e12),
                      (base / ours) if base else None)
            points.append(p)
            log(format_point(p))
            del inputs
            torch.cuda.empty_cache()
    speedups = [p.speedup_vs_torch for p in points if p.speedup_vs_torch]
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": _pyplatform.python_version(),
        "ceilings": asdict(ceilings),
        "rotate": ROTATE,
        "points": [asdict(p) for p in points],
        "geomean_speedup_vs_torch": math.exp(statistics.fmean(math.log(s) for s in speedups)) if speedups else None,
    }


def format_point(p: Point) -> str:
    base = f"{p.torch_us:9.1f}" if p.torch_us else "        -"
    sp = f"{p.speedup_vs_torch:5.2f}x" if p.speedup_vs_torch else "    -"
    return (f"{p.shape:16s} M={p.M:5d}  moekit {p.moekit_us:9.1f} us  torch {base} us  floor {p.floor_us:8.1f} us "
            f"({p.bound[:3]})  {100 * p.frac_of_floor:5.1f}% of floor  {p.tflops:6.1f} TFLOP/s "
            f"({100 * p.frac_of_peak:4.1f}% peak)  {sp}")


def markdown_table(result: Dict) -> str:
    """README table: one row per shape and M."""
    lines = ["| shape | M | moekit (us) | plain PyTorch (us) | floor (us) | % of floor | % of bf16 peak | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        base = f"{p['torch_us']:.1f}" if p["torch_us"] else "-"
        sp = f"{p['speedup_vs_torch']:.2f}x" if p["speedup_vs_torch"] else "-"
        lines.append(f"| {p['shape']} | {p['M']} | {p['moekit_us']:.1f} | {base} | {p['floor_us']:.1f} | "
                     f"{100 * p['frac_of_floor']:.0f}% | {100 * p['frac_of_peak']:.0f}% | {sp} |")
    c = result["ceilings"]
    lines.append("")
    lines.append(f"{result['device']}, torch {result['torch']}, triton {result['triton']}; measured ceilings: HBM "
                 f"{c['hbm_bytes_per_s'] / 1e12:.2f} TB/s, bf16 {c['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s. "
                 f"Geometric-mean speed-up over plain PyTorch: {result['geomean_speedup_vs_torch']:.2f}x.")
    return "\n".join(lines)


def kernel_times(fn: Callable[[], None], iters: int = 20) -> str:
    """Per-kernel device time of ``fn`` (one eager forward), averaged over ``iters`` calls (torch.profiler).
    Kernels are launched plainly here (``MOEKIT_PDL=0``): a kernel launched with programmatic dependent launch
    starts before the one ahead of it ends, and its span would count that wait (a 2 us top-k sum read 40 us)."""
    import os
    from unittest import mock

    from torch.profiler import ProfilerActivity, profile

    with mock.patch.dict(os.environ, MOEKIT_PDL="0"):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fn()
            torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t > 0:
            rows.append((t / iters, ev.key))
    rows.sort(reverse=True)
    return "\n".join(f"  {t:8.1f} us  {k[:90]}" for t, k in rows[:12])


def profile_breakdown(shape: MoEShape, M: int, iters: int = 20) -> str:
    """Per-kernel device time of one eager forward (torch.profiler), to see where the time goes."""
    w13, w2, xs, logits, bias = make_inputs(shape, M, rotate=1)
    return kernel_times(lambda: moekit_moe(xs[0], w13, w2, logits[0], shape, bias), iters)
