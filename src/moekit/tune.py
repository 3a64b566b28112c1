"""`moekit tune`: find the fastest kernel config per batch size for one MoE shape on this GPU, and write it
as a vLLM-compatible JSON file that :func:`moekit.configs.get_config` picks up.

Search (one shape, the whole batch grid, inside ``--budget-s``, 540 s by default):

1. **Screen**: per batch size M, a coarse grid of BLOCK_M (around the tokens per expert) x BLOCK_N x
   BLOCK_K x num_warps, stages and GROUP_M set by rule, ranked by a prior so that a short budget drops the
   least likely points first; seeded with the default config and the best of the previous M.
2. **Refine**: local search from the best screened points, one knob at a time (num_stages, GROUP_SIZE_M,
   num_warps, BLOCK_K, BLOCK_N, BLOCK_M), until no neighbour wins or the time share runs out.
3. **Final**: the best few and the default config are timed again for longer; the default is kept unless
   another config beats it by more than 2 % (timing noise is 1-2 %), so a tuned file does not make a batch size slower.

Invalid or dominated points are pruned before any compile: shared memory over the device limit, BLOCK_M
far above the tokens per expert, tiles too big for the registers, 8 warps on tiny tiles, BLOCK_K not
dividing the quantization block. Each candidate is timed as CUDA-graph replay of the whole forward
(routing + fused experts) on random routing, rotating over several input sets; Triton compile errors and
``OutOfResources`` drop the candidate. While the GPU times one candidate, worker processes compile the
next ones ahead into Triton's on-disk cache (kernels are compiled there without being launched), so the
budget goes to measuring, not to compiling.

Resumable: measurements are saved next to the output (``<out>.partial.json``) every few seconds; running
the same command again reuses them; the file is removed when the run completes.

The kernels have no split-K, so there is none to search.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from moekit.configs import (
    VLLM_BATCH_SIZES, MoEKernelConfig, clear_cache, config_dtype_name, config_file_name, default_config,
    fit_shared_memory, shared_memory_bytes, user_config_dir,
)

__all__ = ["TuneSpec", "Tuner", "TuneResult", "spec_for_model", "scheme_for_spec", "candidate_space", "add_tune_parser",
           "MODELS"]

MODELS = ("mixtral8x7b", "qwen3_30b_a3b", "dsv3", "gpt_oss_20b")
#: dtypes the tuner times: the unquantized kernels and, through ``moekit.quant``, the quantized ones.
TUNABLE_DTYPES = ("bf16", "fp16", "fp32", "fp8_w8a8", "int8_w8a8", "int8_w8a16", "int4_w4a16", "mxfp4")
SEARCH = {
    "BLOCK_SIZE_M": (16, 32, 64, 128, 256),
    "BLOCK_SIZE_N": (32, 64, 128, 256),
    "BLOCK_SIZE_K": (32, 64, 128, 256),
    "GROUP_SIZE_M": (1, 16, 32, 64),
    "num_warps": (4, 8),
    "num_stages": (2, 3, 4, 5),
}
MAX_ACC_REGS = 256  # fp32 accumulator registers per thread GEMM 1 may use (two BM x BN accumulators)
KEEP_DEFAULT_UNLESS = 0.98  # keep the default unless another config takes <= 98 % of its time (noise: 1-2 %)


# --------------------------------------------------------------------------------------------------------
# What is tuned
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneSpec:
    """One problem to tune. ``E`` experts live on this rank (the file's E) out of ``E_global`` the router
    picks from (expert parallelism); ``N`` is the intermediate size per partition, ``K`` the hidden size."""

    E: int
    N: int
    K: int
    top_k: int
    E_global: int = 0
    dtype: str = "bf16"
    block_shape: Optional[Tuple[int, int]] = None
    model: Optional[str] = None
    tp: int = 1
    ep: int = 1
    scoring: str = "softmax"
    num_expert_group: Optional[int] = None
    topk_group: Optional[int] = None

    def __post_init__(self) -> None:
        from moekit.errors import check_arg

        if not self.E_global:
            object.__setattr__(self, "E_global", self.E)
        if self.block_shape is not None:
            object.__setattr__(self, "block_shape", tuple(int(b) for b in self.block_shape))
        for name in ("E", "N", "K", "top_k", "E_global"):
            v = getattr(self, name)
            check_arg(isinstance(v, int) and v > 0, name, "a positive integer", v)
        check_arg(self.top_k <= self.E_global, "top_k", f"<= the number of experts ({self.E_global})", self.top_k)
        config_dtype_name(self.dtype)  # validates the name

    @property
    def dtype_name(self) -> Optional[str]:
        return config_dtype_name(self.dtype)

    @property
    def elem_bytes(self) -> int:
        return {"fp32": 4, "float32": 4}.get(self.dtype, 1 if self.dtype_name in ("fp8_w8a8", "int8_w8a8") else 2)

    def file_name(self, device_name: str) -> str:
        return config_file_name(self.E, self.N, device_name, self.dtype, self.block_shape)

    def routing_shape(self):
        from moekit.shapes import MoEShape

        return MoEShape(self.model or "custom", self.E_global, self.top_k, self.K, self.N, self.num_expert_group,
                        self.topk_group, self.scoring)

    def tokens_per_expert(self, M: int) -> float:
        return M * self.top_k / self.E_global

    def describe(self) -> str:
        what = self.model or "custom"
        par = (f" tp{self.tp}" if self.tp > 1 else "") + (f" ep{self.ep}" if self.ep > 1 else "")
        bs = f" block_shape={list(self.block_shape)}" if self.block_shape else ""
        return f"{what}{par}: E={self.E} (of {self.E_global}) N={self.N} K={self.K} top_k={self.top_k} {self.dtype}{bs}"


def spec_for_model(model: str, tp: int = 1, ep: int = 1, dtype: str = "bf16",
                   block_shape: Optional[Sequence[int]] = None) -> TuneSpec:
    """The per-rank problem of a canonical model under TP (intermediate size split) and EP (experts split)."""
    from moekit.errors import check_arg
    from moekit.shapes import SHAPES

    check_arg(model in MODELS, "model", f"one of {MODELS}", model)
    s = SHAPES[model]
    check_arg(tp >= 1 and s.I % tp == 0, "tp", f"a divisor of the intermediate size {s.I}", tp)
    check_arg(ep >= 1 and s.E % ep == 0, "ep", f"a divisor of the number of experts {s.E}", ep)
    return TuneSpec(s.E // ep, s.I // tp, s.H, s.top_k, s.E, dtype, tuple(block_shape) if block_shape else None,
                    model, tp, ep, s.scoring, s.num_expert_group, s.topk_group)


# --------------------------------------------------------------------------------------------------------
# Candidate space and pruning
# --------------------------------------------------------------------------------------------------------


def _next_pow2(x: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(x, 1.0))))


def bm_window(spec: TuneSpec, M: int) -> Tuple[int, int]:
    """BLOCK_SIZE_M range worth trying at batch M: around the expected tokens per expert (bigger tiles only
    pad with zeros, much smaller ones re-read the weights). mxfp4 always reaches 32 rows, the least that takes
    the inline-PTX decode on Hopper (:func:`moekit.quant.triton_moe.mxfp4_ptx_decode`): gpt-oss-20b on the H100,
    M=16 / 64, 32x64x128 tiles 310.6 / 340.5 us (``ab_mxfp4_bk64_H100_session9.json``); the 16-row tiles
    shipped before ran 465.9 / 532.9 us (``ab_mxfp4_decode_small_m_configs_H100_session8.json``)."""
    t = _next_pow2(math.ceil(spec.tokens_per_expert(M)))
    hi = min(256, max(32 if spec.dtype_name == "mxfp4" else 16, 2 * t))
    lo = min(64, max(16, t // 8))
    return lo, hi


def prune_reason(c: MoEKernelConfig, spec: TuneSpec, M: int, smem_limit: Optional[int]) -> Optional[str]:
    """Why ``c`` is not worth timing for (spec, M), or None when it is."""
    lo, hi = bm_window(spec, M)
    if not lo <= c.BLOCK_SIZE_M <= hi:
        return f"BLOCK_SIZE_M outside [{lo}, {hi}] for {spec.tokens_per_expert(M):.1f} tokens per expert"
    if c.BLOCK_SIZE_N > max(32, _next_pow2(spec.N)) or c.BLOCK_SIZE_N > max(32, _next_pow2(spec.K)):
        return "BLOCK_SIZE_N larger than the problem"
    if c.BLOCK_SIZE_K > max(32, _next_pow2(spec.K)) or c.BLOCK_SIZE_K > max(32, _next_pow2(spec.N)):
        return "BLOCK_SIZE_K larger than the problem"
    if spec.block_shape and spec.block_shape[1] % c.BLOCK_SIZE_K:
        return f"BLOCK_SIZE_K does not divide the quantization block {spec.block_shape[1]}"
    if smem_limit is not None and shared_memory_bytes(c, spec.elem_bytes) > smem_limit:
        return f"needs {shared_memory_bytes(c, spec.elem_bytes)} bytes of shared memory (limit {smem_limit})"
    if 2 * c.BLOCK_SIZE_M * c.BLOCK_SIZE_N > MAX_ACC_REGS * 32 * c.num_warps:
        return "accumulators do not fit the registers"
    if c.num_warps >= 8 and c.BLOCK_SIZE_M * c.BLOCK_SIZE_N < 64 * 64:
        return "8 warps on a tile smaller than 64x64"
    if c.num_stages < 2:
        return "fewer than 2 stages"
    return None


def candidate_space(spec: TuneSpec, M: int, smem_limit: Optional[int]) -> List[MoEKernelConfig]:
    """Every point of the full search grid that survives :func:`prune_reason` (for reporting and tests)."""
    import itertools

    out = []
    for v in itertools.product(*SEARCH.values()):
        c = MoEKernelConfig(*v)
        if prune_reason(c, spec, M, smem_limit) is None:
            out.append(c)
    return out


def _default_stages(c: MoEKernelConfig, spec: TuneSpec, M: int, smem_limit: Optional[int]) -> int:
    want = 4 if spec.tokens_per_expert(M) <= 32 else 3
    for s in range(want, 1, -1):
        if smem_limit is None or shared_memory_bytes(dataclasses.replace(c, num_stages=s), spec.elem_bytes) <= smem_limit:
            return s
    return 2


def _prior(c: MoEKernelConfig, spec: TuneSpec, M: int) -> float:
    """Lower is likelier to win: BLOCK_M near the tokens per expert, N/K tiles of 64-128, warps by tile."""
    pe = spec.tokens_per_expert(M)
    t = min(128, max(16, _next_pow2(math.ceil(pe))))
    small = pe <= 32
    score = abs(math.log2(c.BLOCK_SIZE_M / t))
    score += 0.5 * abs(math.log2(c.BLOCK_SIZE_N / (64 if small else 128)))
    score += 0.5 * abs(math.log2(c.BLOCK_SIZE_K / (128 if small else 64)))
    score += 0.3 * (c.num_warps != (8 if c.BLOCK_SIZE_M * c.BLOCK_SIZE_N >= 128 * 128 else 4))
    return score


def screen_candidates(spec: TuneSpec, M: int, smem_limit: Optional[int], limit: int = 48) -> List[MoEKernelConfig]:
    """The screening grid for batch M, most promising first (at most ``limit``)."""
    pe = spec.tokens_per_expert(M)
    lo, hi = bm_window(spec, M)
    t = min(128, max(16, _next_pow2(math.ceil(pe))))
    bms = [b for b in SEARCH["BLOCK_SIZE_M"] if lo <= b <= hi and t // 2 <= b <= 2 * t] or [lo]
    gm = 1 if pe <= 16 else 16
    out = []
    for bm in bms:
        for bn in SEARCH["BLOCK_SIZE_N"]:
            for bk in (64, 128, 256):
                for w in SEARCH["num_warps"]:
                    c = MoEKernelConfig(bm, bn, bk, gm, w, 3)
                    c = dataclasses.replace(c, num_stages=_default_stages(c, spec, M, smem_limit))
                    if prune_reason(c, spec, M, smem_limit) is None:
                        out.append(c)
    out.sort(key=lambda c: _prior(c, spec, M))
    return out[:limit]


def neighbours(c: MoEKernelConfig, spec: TuneSpec, M: int, smem_limit: Optional[int]) -> List[MoEKernelConfig]:
    """Valid configs one knob away from ``c`` (adjacent values of each searched field)."""
    out = []
    for name, values in SEARCH.items():
        cur = getattr(c, name)
        if name in ("num_stages", "GROUP_SIZE_M"):
            options = [v for v in values if v != cur]  # cheap knobs: every value
        else:
            i = values.index(cur) if cur in values else None
            options = [] if i is None else [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]
        for v in options:
            n = dataclasses.replace(c, **{name: v})
            if prune_reason(n, spec, M, smem_limit) is None:
                out.append(n)
    return out


def launch_order_only(spec: TuneSpec, M: int, platform) -> bool:
    """Whether, at batch M on ``platform``, the kernels take nothing but ``GROUP_SIZE_M`` (the launch order) from
    a config: fp8 128x128-block layers that run the Gluon kernels on Hopper
    (:func:`moekit.quant.triton_moe.fp8_block_gluon_applies`; their tiles are fixed). The tuner then varies
    only that field of the default."""
    if spec.dtype_name != "fp8_w8a8" or spec.block_shape is None:
        return False
    from moekit.platform import fp8_dtype
    from moekit.quant import QuantScheme
    from moekit.quant.triton_moe import fp8_block_gluon_applies

    return fp8_block_gluon_applies(platform, QuantScheme.fp8_block(*spec.block_shape), fp8_dtype(platform), M,
                                   spec.top_k, spec.E, spec.K, spec.N)


def _same_tiles(a: MoEKernelConfig, b: MoEKernelConfig) -> bool:
    """Equal in every field but GROUP_SIZE_M."""
    return dataclasses.replace(a, GROUP_SIZE_M=b.GROUP_SIZE_M) == b


def _key(c: MoEKernelConfig) -> str:
    return ",".join(str(getattr(c, f)) for f in SEARCH)


def _from_key(k: str) -> MoEKernelConfig:
    return MoEKernelConfig(*(int(v) for v in k.split(",")))


# --------------------------------------------------------------------------------------------------------
# Timing on the GPU (whole forward, CUDA-graph replay) and compiling ahead in worker processes
# --------------------------------------------------------------------------------------------------------


def _torch_dtype(spec: TuneSpec):
    """The activation (and, unquantized, weight) dtype: bf16 for quantized schemes."""
    import torch

    return {"fp16": torch.float16, "fp32": torch.float32, "float32": torch.float32}.get(spec.dtype, torch.bfloat16)


def scheme_for_spec(spec: TuneSpec):
    """The QuantScheme a dtype name is timed with (None when unquantized). ``fp8_w8a8``: block with
    ``block_shape``, else per-channel; ``int8_w8a8``: per-channel; ``int8_w8a16`` / ``int4_w4a16`` (group
    128) / ``mxfp4``: weight-only."""
    from moekit.quant import QuantScheme

    name = spec.dtype_name
    if name in (None, "float32"):
        return None
    if name == "fp8_w8a8":
        return QuantScheme.fp8_block(*spec.block_shape) if spec.block_shape else QuantScheme.fp8_channel()
    return {"int8_w8a8": QuantScheme.int8_channel, "int8_w8a16": QuantScheme.int8_weight_only,
            "int4_w4a16": QuantScheme.int4_weight_only, "mxfp4": QuantScheme.mxfp4}[name]()


def _make_weights(spec: TuneSpec, gen, experts: int, device="cuda"):
    """Random w13 [E, 2N, K], w2 [E, K, N] in the tuned format: (w13, w2, quant kwargs). Quantized weights
    are made a few experts at a time (the float copies of a whole DeepSeek-V3 layer would not fit)."""
    import torch

    dtype = _torch_dtype(spec)
    scheme = scheme_for_spec(spec)
    if scheme is None:
        w13 = (torch.randn(experts, 2 * spec.N, spec.K, device=device, generator=gen) / spec.K ** 0.5).to(dtype)
        w2 = (torch.randn(experts, spec.K, spec.N, device=device, generator=gen) / spec.N ** 0.5).to(dtype)
        return w13, w2, {}
    from moekit.quant.weights import quantize_weights

    parts: Dict[str, list] = {}
    step = max(1, (1 << 28) // (2 * spec.N * spec.K))  # ~1 GiB of float32 per chunk
    for e0 in range(0, experts, step):
        n = min(step, experts - e0)
        for name, (rows, cols) in (("w13", (2 * spec.N, spec.K)), ("w2", (spec.K, spec.N))):
            w = (torch.randn(n, rows, cols, device=device, generator=gen) / cols ** 0.5).to(dtype)
            for i, t in enumerate(quantize_weights(w, scheme)):
                parts.setdefault(f"{name}:{i}", []).append(t)
            del w
    cat = {k: torch.cat(v) for k, v in parts.items()}
    kw = {"quant": scheme, "w13_scale": cat["w13:1"], "w2_scale": cat["w2:1"]}
    if "w13:2" in cat:
        kw.update(w13_zero=cat["w13:2"], w2_zero=cat["w2:2"])
    return cat["w13:0"], cat["w2:0"], kw


def _expert_map(spec: TuneSpec, device):
    """Global expert -> local index on this rank (rank 0 holds experts 0..E-1), or None without EP."""
    import torch

    if spec.E == spec.E_global:
        return None
    m = torch.full((spec.E_global,), -1, dtype=torch.int32, device=device)
    m[: spec.E] = torch.arange(spec.E, dtype=torch.int32, device=device)
    return m


class GpuTimer:
    """Times the whole forward (routing + fused experts with a given config) as CUDA-graph replay, median
    over replays, rotating over several input sets (8 at decode sizes so the weights come from HBM, not L2)."""

    def __init__(self, spec: TuneSpec, seed: int = 0):
        import torch

        self.spec = spec
        self.shape = spec.routing_shape()
        self.dtype = _torch_dtype(spec)
        g = torch.Generator(device="cuda").manual_seed(seed)
        self.gen = g
        self.w13, self.w2, self.qargs = _make_weights(spec, g, spec.E)
        self.bias = (torch.randn(spec.E_global, device="cuda", generator=g) * 0.1) if spec.num_expert_group else None
        self.expert_map = _expert_map(spec, "cuda")
        self._M: Optional[int] = None
        self._inputs = None

    def inputs(self, M: int):
        import torch

        if self._M != M:
            self._inputs = None
            rotate = 8 if M <= 64 else 2
            xs = [torch.randn(M, self.spec.K, device="cuda", generator=self.gen).to(self.dtype) for _ in range(rotate)]
            lgs = [torch.randn(M, self.spec.E_global, device="cuda", generator=self.gen) for _ in range(rotate)]
            self._inputs, self._M = (xs, lgs), M
        return self._inputs

    def forward(self, x, logits, config):
        from moekit.routing import select_experts
        from moekit.triton_experts import fused_experts_triton

        w, ids = select_experts(logits, self.spec.top_k, correction_bias=self.bias, **self.shape.route_kwargs())
        return fused_experts_triton(x, self.w13, self.w2, w, ids, expert_map=self.expert_map, config=config,
                                    **self.qargs)

    def __call__(self, M: int, config: MoEKernelConfig, rep_ms: int) -> float:
        import torch

        from moekit.bench import _median_us

        xs, lgs = self.inputs(M)

        def run():
            for x, lg in zip(xs, lgs):
                self.forward(x, lg, config)

        try:
            return _median_us(run, rep_ms) / len(xs)
        finally:
            torch.cuda.synchronize()


@contextlib.contextmanager
def _compile_only():
    """Inside the block, launching any Triton kernel compiles it (into the on-disk cache) and returns
    without running it (Triton's own ``warmup`` path)."""
    from triton.runtime.jit import JITFunction

    orig = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        return orig(self, *args, grid=grid, warmup=True, **kwargs)

    JITFunction.run = run
    try:
        yield
    finally:
        JITFunction.run = orig


_WORKER: dict = {}


def _worker_init(spec_fields: dict) -> None:
    import torch

    spec = TuneSpec(**spec_fields)
    dtype = _torch_dtype(spec)
    # Same shapes, dtypes and (for the kernels' specialization) the same divisibility of every stride as
    # the timed weights, with one expert's worth of memory: nothing is launched here.
    w13, w2, qargs = _make_weights(spec, torch.Generator(device="cuda"), 1)
    w13, w2 = w13.expand(spec.E, *w13.shape[1:]), w2.expand(spec.E, *w2.shape[1:])
    qargs = {k: (v.expand(spec.E, *v.shape[1:]) if isinstance(v, torch.Tensor) else v) for k, v in qargs.items()}
    _WORKER.update(spec=spec, dtype=dtype, w13=w13, w2=w2, qargs=qargs, emap=_expert_map(spec, "cuda"))


def _worker_compile(M: int, keys: List[str]) -> List[Optional[str]]:
    """Compile (without launching) the kernels of one forward per config; an error string per failure."""
    import torch

    from moekit.triton_experts import fused_experts_triton

    spec = _WORKER["spec"]
    x = torch.empty((M, spec.K), dtype=_WORKER["dtype"], device="cuda")
    ids = torch.zeros((M, spec.top_k), dtype=torch.int32, device="cuda")
    w = torch.empty((M, spec.top_k), dtype=torch.float32, device="cuda")
    out = []
    with _compile_only():
        for k in keys:
            try:
                fused_experts_triton(x, _WORKER["w13"], _WORKER["w2"], w, ids, expert_map=_WORKER["emap"],
                                     config=_from_key(k), **_WORKER["qargs"])
                out.append(None)
            except Exception as e:  # noqa: BLE001 - a config that does not compile is just dropped
                out.append(f"{type(e).__name__}: {str(e)[:200]}")
    return out


class CompilePool:
    """Worker processes compiling (M, config) pairs ahead of the timing loop, in submission order."""

    def __init__(self, spec: TuneSpec, workers: int):
        import multiprocessing as mp

        self.ex = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                         initargs=(dataclasses.asdict(spec),))
        self.futures: Dict[Tuple[int, str], cf.Future] = {}
        self.broken = False

    def submit(self, M: int, configs: Iterable[MoEKernelConfig], chunk: int = 2) -> None:
        if self.broken:
            return
        new = [_key(c) for c in configs if (M, _key(c)) not in self.futures]
        try:
            for i in range(0, len(new), chunk):
                part = new[i:i + chunk]
                fut = self.ex.submit(_worker_compile, M, part)
                for k in part:
                    self.futures[(M, k)] = fut
        except Exception:  # noqa: BLE001 - a broken pool only costs speed: the timing loop compiles itself
            self.broken = True

    def future(self, M: int, c: MoEKernelConfig) -> Optional[cf.Future]:
        return None if self.broken else self.futures.get((M, _key(c)))

    def close(self) -> None:
        self.ex.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar when tqdm is installed, else one line per step with elapsed time and ETA."""

    def __init__(self, total: int, desc: str, enabled: bool, clock: Callable[[], float], deadline: float, out=None):
        self.total, self.done, self.clock, self.deadline = total, 0, clock, deadline
        self.t0 = clock()
        self.out = out or sys.stderr
        self.enabled = enabled
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="step", file=self.out, dynamic_ncols=True)
            except ImportError:
                print(f"{desc}: {total} steps", file=self.out, flush=True)

    def eta(self) -> float:
        now = self.clock()
        elapsed = now - self.t0
        by_rate = elapsed / self.done * (self.total - self.done) if self.done else float("inf")
        return max(0.0, min(by_rate, self.deadline - now))

    def step(self, text: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
            return
        el = self.clock() - self.t0
        width = 24
        fill = int(width * self.done / max(self.total, 1))
        print(f"[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {text}  elapsed {_mmss(el)}  "
              f"ETA {_mmss(self.eta())}", file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _mmss(s: float) -> str:
    s = int(round(s))
    return f"{s // 60:02d}:{s % 60:02d}"


# --------------------------------------------------------------------------------------------------------
# The tuner
# --------------------------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    spec: TuneSpec
    device_name: str
    configs: Dict[int, MoEKernelConfig]
    tuned_us: Dict[int, float]
    default_us: Dict[int, float]
    measured: int
    failed: int
    seconds: float
    out_path: Optional[str] = None

    def speedups(self) -> Dict[int, float]:
        return {m: self.default_us[m] / self.tuned_us[m] for m in self.configs
                if self.tuned_us.get(m) and self.default_us.get(m) and math.isfinite(self.default_us[m])}

    def table(self) -> str:
        lines = [f"{'M':>6}  {'tuned config':28s} {'tuned us':>9} {'default us':>10} {'speed-up':>8}"]
        sp = self.speedups()
        for m, c in sorted(self.configs.items()):
            t, d = self.tuned_us.get(m, float("nan")), self.default_us.get(m, float("nan"))
            lines.append(f"{m:>6}  {c.short():28s} {t:9.1f} {d:10.1f} {sp.get(m, float('nan')):7.2f}x")
        if sp:
            g = math.exp(sum(math.log(v) for v in sp.values()) / len(sp))
            lines.append(f"geometric-mean speed-up over the default configs: {g:.2f}x "
                         f"({self.measured} timings, {self.failed} failed, {self.seconds:.0f} s)")
        return "\n".join(lines)


def vllm_json(configs: Dict[int, MoEKernelConfig]) -> dict:
    """The file content: batch size -> config, plus ``triton_version`` like vLLM's tuner writes."""
    import triton

    out: dict = {"triton_version": triton.__version__}
    for m in sorted(configs):
        out[str(m)] = configs[m].to_dict()
    return out


class Tuner:
    """Coarse-to-fine search over the batch grid within a time budget (see the module doc).

    ``timer(M, config, rep_ms) -> microseconds`` measures one candidate (raises when it cannot run);
    ``compiler`` (a :class:`CompilePool` or None) compiles ahead; ``clock`` is injectable for tests."""

    SCREEN_SHARE, REFINE_SHARE = 0.5, 0.3  # the final phase gets the rest
    EST_COST_S = 0.2  # rough seconds per screening timing, to size the screening lists

    def __init__(self, spec: TuneSpec, batch_sizes: Sequence[int] = VLLM_BATCH_SIZES, budget_s: float = 540.0,
                 timer: Optional[Callable[[int, MoEKernelConfig, int], float]] = None,
                 smem_limit: Optional[int] = None, compiler: Optional[CompilePool] = None,
                 state_path: Optional[os.PathLike] = None, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = print, progress: bool = True,
                 screen_rep_ms: int = 10, final_rep_ms: int = 50, device_name: str = "unknown",
                 order_only: Callable[[int], bool] = lambda M: False):
        self.spec = spec
        self.order_only = order_only  # batch sizes where only GROUP_SIZE_M matters (:func:`launch_order_only`)
        self.Ms = sorted(set(int(m) for m in batch_sizes))
        self.budget = float(budget_s)
        self.timer = timer
        self.smem = smem_limit
        self.compiler = compiler
        self.state_path = Path(state_path) if state_path else None
        self.clock = clock
        self.log = log
        self.progress_enabled = progress
        self.screen_rep, self.final_rep = screen_rep_ms, final_rep_ms
        self.device_name = device_name
        # measurements: M -> config key -> {"screen": us, "final": us}; inf = could not run
        self.meas: Dict[int, Dict[str, Dict[str, float]]] = {m: {} for m in self.Ms}
        self.errors: Dict[Tuple[int, str], str] = {}
        self.timed = 0
        self._last_save = 0.0
        self._load_state()

    # -- state -------------------------------------------------------------------------------------------

    def _state_header(self) -> dict:
        return {"spec": dataclasses.asdict(self.spec), "device": self.device_name}

    def _load_state(self) -> None:
        if not self.state_path or not self.state_path.is_file():
            return
        try:
            st = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return
        hdr = self._state_header()
        hdr["spec"] = json.loads(json.dumps(hdr["spec"]))  # tuples -> lists, as stored
        if {k: st.get(k) for k in hdr} != hdr:
            self.log(f"ignoring {self.state_path}: it is for another shape or device")
            return
        n = 0
        for m, entries in st.get("meas", {}).items():
            if int(m) in self.meas:
                self.meas[int(m)].update({k: {p: float(v) for p, v in d.items()} for k, d in entries.items()})
                n += len(entries)
        self.log(f"resuming from {self.state_path}: {n} measured configs reused")

    def save_state(self, force: bool = False) -> None:
        if not self.state_path:
            return
        now = self.clock()
        if not force and now - self._last_save < 10:
            return
        self._last_save = now
        st = dict(self._state_header(), meas={str(m): d for m, d in self.meas.items() if d})
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(st))
        os.replace(tmp, self.state_path)

    # -- measuring ---------------------------------------------------------------------------------------

    def _order_variants(self, M: int) -> List[MoEKernelConfig]:
        d = self.default(M)
        return [dataclasses.replace(d, GROUP_SIZE_M=g) for g in SEARCH["GROUP_SIZE_M"] if g != d.GROUP_SIZE_M]

    def _searched(self, M: int, c: MoEKernelConfig) -> bool:
        """Whether ``c`` is in batch M's search space (at launch-order-only sizes: the default's tiles)."""
        return not self.order_only(M) or _same_tiles(c, self.default(M))

    def default(self, M: int) -> MoEKernelConfig:
        d = default_config(M, self.spec.E, self.spec.N, self.spec.K, self.spec.top_k, self.spec.dtype,
                           self.spec.block_shape)
        return fit_shared_memory(d, self.spec.elem_bytes, self.smem)

    def _measure(self, M: int, c: MoEKernelConfig, phase: str, rep_ms: int) -> float:
        entry = self.meas[M].get(_key(c), {})
        if phase in entry:
            return entry[phase]
        try:
            us = float(self.timer(M, c, rep_ms))
            if not (us > 0 and math.isfinite(us)):
                raise RuntimeError(f"timer returned {us}")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - OutOfResources, compile errors, launch failures
            self.errors[(M, _key(c))] = f"{type(e).__name__}: {str(e)[:160]}"
            us = float("inf")
        self.meas[M].setdefault(_key(c), {})[phase] = us
        self.timed += 1
        self.save_state()
        return us

    def _ready(self, M: int, c: MoEKernelConfig) -> bool:
        fut = self.compiler.future(M, c) if self.compiler else None
        return fut is None or fut.done()

    def _screen(self, M: int, cands: List[MoEKernelConfig], until: float, min_count: int) -> None:
        """Time candidates (screen rep) in order, taking compiled ones first, until ``until``."""
        pending = [c for c in dict.fromkeys(cands) if "screen" not in self.meas[M].get(_key(c), {})]
        done = len(cands) - len(pending)
        while pending:
            if self.clock() >= until and done >= min_count:
                break
            ready = next((c for c in pending if self._ready(M, c)), None)
            if ready is None:
                futs = {self.compiler.future(M, c) for c in pending} - {None}
                wait_s = max(0.05, until - self.clock()) if done >= min_count else 30.0
                cf.wait(futs, timeout=wait_s, return_when=cf.FIRST_COMPLETED)
                if self.clock() >= until and done >= min_count:
                    break
                ready = next((c for c in pending if self._ready(M, c)), pending[0])
            pending.remove(ready)
            self._measure(M, ready, "screen", self.screen_rep)
            done += 1

    def ranked(self, M: int, phase: str = "screen") -> List[Tuple[float, MoEKernelConfig]]:
        out = [(d[phase], _from_key(k)) for k, d in self.meas[M].items() if phase in d and math.isfinite(d[phase])]
        return sorted(out, key=lambda t: t[0])

    # -- the search --------------------------------------------------------------------------------------

    def run(self) -> TuneResult:
        t0 = self.clock()
        ends = (t0 + self.SCREEN_SHARE * self.budget, t0 + (self.SCREEN_SHARE + self.REFINE_SHARE) * self.budget,
                t0 + self.budget)
        n = len(self.Ms)
        prog = _Progress(3 * n, f"tune {self.spec.describe()}", self.progress_enabled, self.clock, ends[2])
        # screen no more points per M than its time share can measure (about 0.2 s each)
        limit = int(min(48, max(12, self.SCREEN_SHARE * self.budget / n / self.EST_COST_S)))
        screen = {M: self._order_variants(M) if self.order_only(M)
                  else screen_candidates(self.spec, M, self.smem, limit) for M in self.Ms}
        if self.compiler:
            for M in self.Ms:
                self.compiler.submit(M, [self.default(M)] + screen[M])
        try:
            # 1. screen
            prev: List[MoEKernelConfig] = []
            for i, M in enumerate(self.Ms):
                until = self.clock() + max(0.0, ends[0] - self.clock()) / (n - i)
                seeds = [self.default(M)] + [c for c in prev if prune_reason(c, self.spec, M, self.smem) is None
                                             and self._searched(M, c)]
                if self.compiler:
                    self.compiler.submit(M, seeds)
                self._screen(M, seeds + screen[M], until, min_count=len(seeds) + 3)
                prev = [c for _, c in self.ranked(M)[:2]]
                if self.compiler:
                    self.compiler.submit(M, [nb for _, c in self.ranked(M)[:3]
                                             for nb in neighbours(c, self.spec, M, self.smem) if self._searched(M, nb)])
                prog.step(self._status(1, M))
            # 2. refine: hill-climb from the best screened points
            for i, M in enumerate(self.Ms):
                until = self.clock() + max(0.0, ends[1] - self.clock()) / (n - i)
                tried_from = set()
                while self.clock() < until:
                    tops = [c for _, c in self.ranked(M)[:3] if _key(c) not in tried_from]
                    if not tops:
                        break
                    base = tops[0]
                    tried_from.add(_key(base))
                    nbs = [c for c in neighbours(base, self.spec, M, self.smem) if self._searched(M, c)]
                    if self.compiler:
                        self.compiler.submit(M, nbs)
                    self._screen(M, nbs, until, min_count=0)
                prog.step(self._status(2, M))
            # 3. final: longer timings of the best few and the default
            configs: Dict[int, MoEKernelConfig] = {}
            tuned_us: Dict[int, float] = {}
            default_us: Dict[int, float] = {}
            for i, M in enumerate(self.Ms):
                left = max(0.0, ends[2] - self.clock()) / (n - i)
                d = self.default(M)
                finalists = list(dict.fromkeys([d] + [c for _, c in self.ranked(M)[:3]]))
                # one timing costs about 10 replays of rep_ms plus graph capture
                cost = len(finalists) * (10 * self.final_rep / 1e3 + 0.15)
                rep = self.final_rep if left >= cost else self.screen_rep
                for c in finalists:
                    self._measure(M, c, "final", rep)
                fin = {_key(c): self.meas[M][_key(c)]["final"] for c in finalists}
                best = min(finalists, key=lambda c: fin[_key(c)])
                if not fin[_key(best)] < KEEP_DEFAULT_UNLESS * fin[_key(d)]:
                    best = d
                if not math.isfinite(fin[_key(best)]):
                    raise RuntimeError(f"M={M}: no config could run; first error: "
                                       f"{next(iter(v for (m, _), v in self.errors.items() if m == M), '?')}")
                configs[M], tuned_us[M], default_us[M] = best, fin[_key(best)], fin[_key(d)]
                prog.step(self._status(3, M, fin[_key(best)]))
        except BaseException:
            self.save_state(force=True)
            raise
        finally:
            prog.close()
        failed = sum(1 for m in self.meas.values() for d in m.values() for v in d.values() if not math.isfinite(v))
        return TuneResult(self.spec, self.device_name, configs, tuned_us, default_us, self.timed, failed,
                          self.clock() - t0)

    def _status(self, phase: int, M: int, us: Optional[float] = None) -> str:
        if us is None:
            r = self.ranked(M)
            us = r[0][0] if r else float("nan")
        name = {1: "screen", 2: "refine", 3: "final"}[phase]
        return f"{name} M={M} best {us:.1f} us ({len(self.meas[M])} configs)"


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def spec_from_args(args: argparse.Namespace) -> TuneSpec:
    from moekit.errors import check_arg

    bs = tuple(args.block_shape) if args.block_shape else None
    if bs is not None:
        from moekit.backends import triton_kernel_limits
        from moekit.quant import QuantScheme

        check_arg(min(bs) >= 1 and triton_kernel_limits(QuantScheme.fp8_block(*bs)), "block-shape",
                  "BN >= 1 and BK a power of two >= 32 (the Triton block-scaled GEMMs' K steps)", list(bs))
    bad = [m for m in (getattr(args, "batch_sizes", None) or ()) if m < 1]
    check_arg(not bad, "batch-sizes", "batch sizes >= 1", bad)
    if args.model:
        given = [f"--{n.replace('_', '-')}" for n in ("E", "N", "K", "top_k") if getattr(args, n, None) is not None]
        check_arg(not given, "model", "--model alone, or --E --N --K --top-k without it",
                  f"--model with {' '.join(given)}")
        return spec_for_model(args.model, args.tp, args.ep, args.dtype, bs)
    missing = [f"--{n.replace('_', '-')}" for n in ("E", "N", "K", "top_k") if getattr(args, n) is None]
    check_arg(not missing, "shape", "--model, or all of --E --N --K --top-k", f"missing {' '.join(missing)}")
    check_arg(args.E % args.ep == 0, "ep", f"a divisor of --E {args.E}", args.ep)
    check_arg(args.N % args.tp == 0, "tp", f"a divisor of --N {args.N}", args.tp)
    return TuneSpec(args.E // args.ep, args.N // args.tp, args.K, args.top_k, args.E, args.dtype, bs,
                    None, args.tp, args.ep)


def _out_path(args: argparse.Namespace, spec: TuneSpec, device_name: str) -> Path:
    name = spec.file_name(device_name)
    if not args.out:
        return user_config_dir() / name
    p = Path(args.out).expanduser()
    return p if p.suffix == ".json" else p / name


def _workers(requested: Optional[int]) -> int:
    if requested is not None:
        return max(0, requested)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(0, min(n - 2, 16))


def run_tune(args: argparse.Namespace) -> int:
    import torch

    from moekit.errors import MoEInputError
    from moekit.platform import device_name_for_configs, shared_memory_per_block

    try:
        spec = spec_from_args(args)
    except MoEInputError as e:
        print(f"moekit tune: {e}", file=sys.stderr)
        return 2
    if spec.dtype not in TUNABLE_DTYPES:
        print(f"moekit tune: --dtype: expected one of {', '.join(TUNABLE_DTYPES)}, got {spec.dtype}", file=sys.stderr)
        return 2
    if spec.block_shape and spec.dtype != "fp8_w8a8":
        print(f"moekit tune: --block-shape: expected only with --dtype fp8_w8a8, got --dtype {spec.dtype}",
              file=sys.stderr)
        return 2
    device = device_name_for_configs()
    smem = shared_memory_per_block()
    out = _out_path(args, spec, device)
    Ms = args.batch_sizes
    from moekit.platform import current_platform

    plat = current_platform()
    if args.dry_run:
        print(f"{spec.describe()}\ndevice {device}, shared memory {smem}\nwould write {out}")
        for M in Ms:
            d = default_config(M, spec.E, spec.N, spec.K, spec.top_k, spec.dtype, spec.block_shape).short()
            if launch_order_only(spec, M, plat):
                print(f"  M={M:5d}: GROUP_SIZE_M only (the Gluon kernels' tiles are fixed), default {d}")
                continue
            print(f"  M={M:5d}: {len(screen_candidates(spec, M, smem))} screened of {len(candidate_space(spec, M, smem))} "
                  f"valid grid points, default {d}")
        return 0
    if not torch.cuda.is_available():
        print("moekit tune needs a CUDA GPU (it times the kernels as CUDA-graph replays)", file=sys.stderr)
        return 2
    state = out.with_name(out.name + ".partial.json")
    if args.fresh and state.exists():
        state.unlink()
    print(f"tuning {spec.describe()} on {device}: {len(Ms)} batch sizes, budget {args.budget_s:.0f} s -> {out}",
          flush=True)
    workers = _workers(args.jobs)
    pool = CompilePool(spec, workers) if workers else None
    try:
        tuner = Tuner(spec, Ms, args.budget_s, GpuTimer(spec), smem, pool, state, device_name=device,
                      progress=not args.quiet, order_only=lambda M: launch_order_only(spec, M, plat))
        try:
            result = tuner.run()
        except KeyboardInterrupt:
            print(f"\ninterrupted; measurements kept in {state}: run the same command to resume", file=sys.stderr)
            return 130
    finally:
        if pool:
            pool.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(vllm_json(result.configs), indent=4) + "\n")
    os.replace(tmp, out)
    if state.exists():
        state.unlink()
    clear_cache()
    result.out_path = str(out)
    print(result.table())
    print(f"wrote {out}")
    if args.report:
        rep = {"spec": dataclasses.asdict(spec), "device": device, "seconds": result.seconds,
               "measured": result.measured, "failed": result.failed, "torch": torch.__version__,
               "points": [{"M": m, "config": c.to_dict(), "tuned_us": result.tuned_us[m],
                           "default_us": result.default_us[m]} for m, c in sorted(result.configs.items())]}
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(rep, indent=1))
    return 0


def add_tune_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``moekit tune``."""
    p = subparsers.add_parser(
        "tune", help="tune kernel configs for one MoE shape on this GPU (writes a vLLM-compatible JSON)",
        description="Tune BLOCK sizes, GROUP_SIZE_M, warps and stages per batch size for one MoE shape "
                    "(--model, or --E --N --K --top-k) and write the JSON that moekit (and vLLM) load.")
    p.add_argument("--model", choices=MODELS, help="a canonical model shape")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (divides the intermediate size)")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel size (divides the number of experts)")
    p.add_argument("--E", type=int, help="number of experts (all ranks)")
    p.add_argument("--N", type=int, help="expert intermediate size (before --tp)")
    p.add_argument("--K", type=int, help="hidden size")
    p.add_argument("--top-k", dest="top_k", type=int, help="experts per token")
    p.add_argument("--dtype", default="bf16",
                   help="bf16 (default), fp16, fp32, or a quantized scheme: fp8_w8a8 (block with --block-shape, "
                        "else per-channel), int8_w8a8, int8_w8a16, int4_w4a16 (group 128), mxfp4")
    p.add_argument("--block-shape", type=int, nargs=2, metavar=("BN", "BK"), help="block-quantization shape")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(VLLM_BATCH_SIZES))
    p.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget in seconds (default 540)")
    p.add_argument("--out", help="output folder or .json path (default: the user config folder)")
    p.add_argument("--jobs", type=int, help="compile worker processes (default: CPU cores - 2; 0: none)")
    p.add_argument("--fresh", action="store_true", help="ignore measurements saved by an interrupted run")
    p.add_argument("--report", help="also write the tuned vs default timings to this JSON file")
    p.add_argument("--dry-run", action="store_true", help="print the plan (shape, file, candidates); no GPU needed")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_tune)
    return p
