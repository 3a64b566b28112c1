"""`moekit tune-linear`: measure every :mod:`moekit.linear` path per (N, K, M, scheme) on this GPU and write
the router's tables.

For each shape and scheme it times, as CUDA-graph replays (``triton.testing.do_bench_cudagraph``, median),
``torch`` and a small candidate set of each Triton path (``skinny`` for M <= 16: block sizes x split-K for
1/2/4 waves, fully searched at the smallest M, its three best re-timed at the other small M; ``gemv`` for
M = 1: rows per program x K step, :func:`gemv_candidates`; ``gemv_mma`` for 1 < M <= 16, searched at each
such M (its token columns follow M): :func:`gemv_mma_candidates`; ``triton`` and ``triton_w8a8`` tiles by M,
with split-K where tiles leave SMs idle; ``gluon_w8a8`` for block-fp8 on Hopper past M = 16:
:func:`gluon_candidates`; ``dequant`` past M = 16 for per-channel / per-tensor fp8).
Weights under 64 MB are rotated among copies (>= 128 MB in all) so every call streams its weight from HBM,
not from the 50 MB L2. Each candidate's output is checked against the torch path once; a candidate that
fails or does not compile is dropped.

Each table file (:func:`moekit.linear.table_file_name`) maps an M bucket to the fastest path and its config,
with every path's best time in ``"paths"`` (the benchmark re-times those) and ``"_meta"`` (device, versions).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from moekit.linear import (
    GEMV_MAX_M, GEMV_MMA_MAX_M, SKINNY_MAX_M, LinearConfig, _path_ok, gemv_mma_columns, linear_path,
    table_file_name,
)
from moekit.quant.scheme import QuantScheme, as_scheme

#: name -> (N, K): attention and shared-expert projections (weight [N, K]).
SHAPES: Dict[str, Tuple[int, int]] = {
    "dsv3_q_a": (1536, 7168),
    "dsv3_kv_a": (576, 7168),
    "dsv3_q_b": (24576, 1536),
    "dsv3_o": (7168, 16384),
    "dsv3_shared_gate_up": (4096, 7168),
    "dsv3_shared_down": (7168, 2048),
    "qwen3_30b_a3b_qkv": (5120, 2048),
    "qwen3_30b_a3b_o": (2048, 4096),
}
BATCH_SIZES = (1, 4, 16, 64, 256, 1024, 4096)
SCHEMES = ("none", "fp8_block128x128", "fp8_channel")
ROTATE_BELOW = 64 << 20
ROTATE_TOTAL = 128 << 20
SMEM_BUDGET = 200 * 1024


# --------------------------------------------------------------------------------------------------------
# Problems and timing
# --------------------------------------------------------------------------------------------------------


class Problem:
    """Weights (rotated copies when small) and activations for one (N, K, scheme, M)."""

    def __init__(self, N: int, K: int, scheme: QuantScheme, dtype=torch.bfloat16, device="cuda", seed=0):
        g = torch.Generator(device=device).manual_seed(seed)
        self.N, self.K, self.scheme, self.dtype, self.device = N, K, scheme, dtype, device
        w = torch.randn(N, K, generator=g, device=device, dtype=torch.float32) / math.sqrt(K)
        if scheme.is_quantized:
            from moekit.platform import fp8_dtype, fp8_max, platform_of

            fp8 = fp8_dtype(platform_of(torch.device(device)))
            fmax = fp8_max(platform_of(torch.device(device)))
            if scheme.granularity == "block":
                bn, bk = scheme.block_shape
                nb, kb = -(-N // bn), -(-K // bk)
                wp = torch.nn.functional.pad(w, (0, kb * bk - K, 0, nb * bn - N)).view(nb, bn, kb, bk)
                scale = wp.abs().amax(dim=(1, 3)).clamp_min(1e-12) / fmax
                full = scale.repeat_interleave(bn, 0)[:N].repeat_interleave(bk, 1)[:, :K]
            else:
                scale = w.abs().amax(dim=1).clamp_min(1e-12) / fmax
                full = scale[:, None]
            q = (w / full).clamp(-fmax, fmax).to(fp8)
            self.weight, self.scale = q, scale.contiguous()
        else:
            self.weight, self.scale = w.to(dtype), None
        self.weight_bf16 = w.to(dtype)  # the unquantized layer, for the F.linear baseline
        nbytes = self.weight.numel() * self.weight.element_size()
        copies = 1 if nbytes >= ROTATE_BELOW else min(32, -(-ROTATE_TOTAL // nbytes))
        self.weights = [self.weight] + [self.weight.clone() for _ in range(copies - 1)]
        nb16 = self.weight_bf16.numel() * self.weight_bf16.element_size()
        copies16 = 1 if nb16 >= ROTATE_BELOW else min(32, -(-ROTATE_TOTAL // nb16))
        self.weights_bf16 = [self.weight_bf16] + [self.weight_bf16.clone() for _ in range(copies16 - 1)]
        self._x: Dict[int, torch.Tensor] = {}

    def x(self, M: int) -> torch.Tensor:
        if M not in self._x:
            g = torch.Generator(device=self.device).manual_seed(M)
            self._x[M] = torch.randn(M, self.K, generator=g, device=self.device, dtype=torch.float32).to(self.dtype)
        return self._x[M]

    def kwargs(self) -> dict:
        return {"quant": self.scheme, "weight_scale": self.scale} if self.scheme.is_quantized else {}

    def run_fn(self, M: int, call: Callable) -> Callable[[], None]:
        """A function that calls ``call(x, w)`` once per weight copy."""
        x, ws = self.x(M), self.weights

        def fn():
            for w in ws:
                call(x, w)

        fn.per_call = len(ws)  # type: ignore[attr-defined]
        return fn

    def bf16_fn(self, M: int) -> Callable[[], None]:
        x, ws = self.x(M), self.weights_bf16

        def fn():
            for w in ws:
                torch.nn.functional.linear(x, w)

        fn.per_call = len(ws)  # type: ignore[attr-defined]
        return fn


def time_us(fn, rep_ms: int = 10) -> float:
    """Median microseconds per call of ``fn`` (divided by ``fn.per_call`` rotated calls), CUDA-graph replay."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")
    return ms * 1e3 / getattr(fn, "per_call", 1)


# --------------------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------------------


def _fit(c: LinearConfig, elem: int) -> LinearConfig:
    stages = c.num_stages
    while stages > 2 and (c.BLOCK_SIZE_M + c.BLOCK_SIZE_N) * c.BLOCK_SIZE_K * elem * stages > SMEM_BUDGET:
        stages -= 1
    return dataclasses.replace(c, num_stages=stages)


def skinny_candidates(N: int, K: int, scheme: QuantScheme, sms: int) -> List[LinearConfig]:
    out = []
    for bn, bk in ((32, 256), (64, 128), (64, 256), (128, 128)):
        if scheme.granularity == "block":
            bk = min(bk, scheme.block_shape[1])
        tiles = -(-N // bn)
        k_iters = -(-K // bk)
        for waves in (1, 2, 4):
            split = max(1, min(k_iters, 32, round(waves * sms / tiles)))
            out.append(_fit(LinearConfig(16, bn, bk, split, 1, 4, 4, FUSED_REDUCE=int(split > 1)), 2))
    return list(dict.fromkeys(out))


def gemv_candidates(scheme: QuantScheme) -> List[LinearConfig]:
    """Rows per program x K step of the ``gemv`` path (M = 1): 2048 or 4096 float32 accumulators per program
    (16 or 32 a thread at 4 warps; the probe's best had 2048), K steps of 64..1024."""
    k_max = 1024
    out = []
    for rows in (2, 4, 8, 16, 32):
        for budget in (2048, 4096):
            bk = min(budget // rows, k_max)
            if bk >= 64:
                out.append(LinearConfig(1, rows, bk, 1, 1, 4, 4))
    return list(dict.fromkeys(out))


def gemv_mma_candidates(M: int, scheme: QuantScheme, w_elem: int, x_elem: int = 2) -> List[LinearConfig]:
    """Rows per program x K slice x depth of the ``gemv_mma`` path, 4 warps (8 with 128-wide slices and at most
    16 rows): the set ``benchmarks/probe_decode_mma.py`` found the best of at every (shape, M = 4 / 16) on the
    H100 (``probe_decode_mma_H100_b.json``). Block scales lower the slice to the block; configs whose pipeline
    (weight and token tiles, ``num_stages`` deep) exceeds the shared-memory budget are left out."""
    mp = gemv_mma_columns(M)
    out = []
    for rows in (8, 16, 32):
        for warps, bk, stages in [(4, bk, st) for bk in (64, 128, 256) for st in (4, 6)] + [(8, 128, 4)]:
            if warps == 8 and rows > 16:
                continue
            if scheme.granularity == "block":
                bk = min(bk, scheme.block_shape[1])
            if warps * bk * (rows * w_elem + mp * x_elem) * stages > SMEM_BUDGET:
                continue
            out.append(LinearConfig(1, rows, bk, 1, 1, warps, stages))
    return list(dict.fromkeys(out))


#: split-K variants of the tiled paths aim at this many waves of programs over the GPU's SMs
SPLIT_WAVES = 2
#: and keep at least this many K steps per program
SPLIT_MIN_K_STEPS = 4
#: and split K at most this many ways (the fp32 partials are [SPLIT_K, M, N])
SPLIT_MAX = 16


def _split_ways(tiles: int, k_steps: int, sms: int, waves: int = SPLIT_WAVES) -> int:
    """How many ways to split K so that ``tiles`` output tiles run about ``waves`` waves of programs on ``sms`` SMs,
    each program keeping >= :data:`SPLIT_MIN_K_STEPS` of the ``k_steps`` K steps, at most :data:`SPLIT_MAX`; 1 (no
    split) where the tiles alone fill the GPU."""
    if tiles >= sms:
        return 1
    return max(1, min(SPLIT_MAX, k_steps // SPLIT_MIN_K_STEPS, round(waves * sms / tiles)))


def split_variants(c: LinearConfig, M: int, N: int, K: int, sms: int) -> List[LinearConfig]:
    """``c`` with K split so that about :data:`SPLIT_WAVES` waves of programs run, the partials summed by the last
    program of each tile and by a second launch (each wins somewhere: DeepSeek-V3's q_a at M = 64 in fp8 per
    channel 16.6 us against 18.3 with the fused sum); none where ``c``'s tiles alone fill the GPU or K is too
    short to split."""
    split = _split_ways(-(-M // c.BLOCK_SIZE_M) * -(-N // c.BLOCK_SIZE_N), -(-K // c.BLOCK_SIZE_K), sms)
    if split < 2:
        return []
    return [dataclasses.replace(c, SPLIT_K=split, FUSED_REDUCE=fused) for fused in (1, 0)]


def triton_candidates(M: int, N: int, K: int, scheme: QuantScheme, sms: int, w8a8: bool) -> List[LinearConfig]:
    """Tiles by M for the ``triton`` / ``triton_w8a8`` paths, each also with K split where its tiles leave SMs
    idle (:func:`split_variants`: small N or M with a long K, e.g. DeepSeek-V3's kv_a at M = 256 has 20 tiles
    of 64 x 128 for 132 SMs); 64-wide tiles too where N is small."""
    elem = 1 if w8a8 else 2
    bk = 128 if (w8a8 or scheme.granularity == "block") else 64
    if M <= 64:
        base = [LinearConfig(32 if M <= 32 else 64, 64, 128, 1, 1, 4, 4), LinearConfig(64, 128, bk, 1, 8, 4, 4)]
    elif M <= 256:
        base = [LinearConfig(64, 128, bk, 1, 8, 4, 4), LinearConfig(128, 128, bk, 1, 8, 8, 3),
                LinearConfig(64, 256, bk, 1, 8, 8, 3)]
    else:
        base = [LinearConfig(128, 128, bk, 1, 8, 8, 3), LinearConfig(128, 256, bk, 1, 8, 8, 3),
                LinearConfig(128, 128, 64, 1, 8, 4, 4)]
    if 64 < M <= 1024 and N <= 2048:
        base.append(LinearConfig(64, 64, 128, 1, 8, 4, 4))
    base += [v for c in base for v in split_variants(c, M, N, K, sms)]
    if w8a8 or scheme.granularity == "block":
        base = [dataclasses.replace(c, BLOCK_SIZE_K=min(c.BLOCK_SIZE_K, 128)) for c in base]
    return list(dict.fromkeys(_fit(c, elem) for c in base))


def gluon_candidates(M: int, N: int, K: int, sms: int) -> List[LinearConfig]:
    """The ``gluon_w8a8`` path's choices: 64 x 256 tiles where they divide N, 64 x 128 (more tiles on small
    problems), each also with K split for about one and about :data:`SPLIT_WAVES` waves where its tiles leave SMs
    idle (one CTA per SM; >= :data:`SPLIT_MIN_K_STEPS` K steps a program; the partials are summed by a second
    launch, :func:`moekit.kernels.moe_gemm_sm90.linear_fp8_block_sm90`); the kernel fixes the rest (8 warps,
    4-deep ring, 128-deep K steps)."""
    widths = (256, 128) if N % 256 == 0 else (128,)
    out = []
    for bn in widths:
        tiles = -(-M // 64) * -(-N // bn)
        splits = [_split_ways(tiles, K // 128, sms, waves) for waves in (1, SPLIT_WAVES)]
        out += [LinearConfig(64, bn, 128, split, 8, 8, 4) for split in [1] + splits]
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------------------
# Tuning
# --------------------------------------------------------------------------------------------------------


def _ok(out: torch.Tensor, ref: torch.Tensor, w8a8: bool) -> bool:
    from moekit.testing import rel_frobenius_error

    err = rel_frobenius_error(out, ref)
    return math.isfinite(err) and err < (0.1 if w8a8 else 0.03)


def tune_problem(prob: Problem, batch_sizes: Sequence[int], rep_ms: int = 10,
                 log: Callable[[str], None] = print) -> Dict[str, dict]:
    """Time every path for each M; return the table {str(M): entry}."""
    from moekit.platform import current_platform

    sms = max(current_platform().multiprocessor_count, 1)
    dev = torch.device(prob.device)
    kw = prob.kwargs()
    table: Dict[str, dict] = {}
    skinny_rank: List[Tuple[float, LinearConfig]] = []
    for M in sorted(batch_sizes):
        x = prob.x(M)
        ref = linear_path("torch", x, prob.weight, **kw)
        results: Dict[str, Tuple[float, Optional[LinearConfig]]] = {}

        def consider(path: str, cfg: Optional[LinearConfig]):
            try:
                out = linear_path(path, x, prob.weight, config=cfg, **kw)
                if path != "torch" and not _ok(out, ref, path.endswith("w8a8")):
                    log(f"  drop {path} {cfg}: wrong result")
                    return None
                t = time_us(prob.run_fn(M, lambda a, w: linear_path(path, a, w, config=cfg, **kw)), rep_ms)
            except Exception as e:  # noqa: BLE001 - a config that does not compile/run is just skipped
                log(f"  drop {path} {cfg}: {type(e).__name__}: {str(e)[:120]}")
                return None
            if path not in results or t < results[path][0]:
                results[path] = (t, cfg)
            return t

        consider("torch", None)
        if M > SKINNY_MAX_M and prob.scheme.is_quantized and prob.scheme.granularity != "block":
            consider("dequant", None)  # (block-fp8's torch path is this already)
        if M <= SKINNY_MAX_M and _path_ok("skinny", dev, prob.scheme, M, prob.dtype)[0]:
            if not skinny_rank:
                cands = skinny_candidates(prob.N, prob.K, prob.scheme, sms)
                timed = [(consider("skinny", c), c) for c in cands]
                # the three best again with the two-launch reduction (the fused one is dropped if wrong)
                for t, c in sorted(((t, c) for t, c in timed if t is not None), key=lambda tc: tc[0])[:3]:
                    if c.FUSED_REDUCE:
                        c0 = dataclasses.replace(c, FUSED_REDUCE=0)
                        timed.append((consider("skinny", c0), c0))
                skinny_rank = sorted(((t, c) for t, c in timed if t is not None), key=lambda tc: tc[0])
            else:
                for _, c in skinny_rank[:3]:
                    consider("skinny", c)
        if M <= GEMV_MAX_M and _path_ok("gemv", dev, prob.scheme, M, prob.dtype)[0]:
            for c in gemv_candidates(prob.scheme):
                consider("gemv", c)
        if GEMV_MAX_M < M <= GEMV_MMA_MAX_M and _path_ok("gemv_mma", dev, prob.scheme, M, prob.dtype)[0]:
            for c in gemv_mma_candidates(M, prob.scheme, prob.weight.element_size(), x.element_size()):
                consider("gemv_mma", c)
        if M >= SKINNY_MAX_M and _path_ok("triton", dev, prob.scheme, M, prob.dtype)[0]:
            for c in triton_candidates(M, prob.N, prob.K, prob.scheme, sms, False):
                consider("triton", c)
        if (prob.scheme.is_quantized and M >= SKINNY_MAX_M
                and _path_ok("triton_w8a8", dev, prob.scheme, M, prob.dtype)[0]):
            for c in triton_candidates(M, prob.N, prob.K, prob.scheme, sms, True):
                consider("triton_w8a8", c)
        if M > SKINNY_MAX_M and _path_ok("gluon_w8a8", dev, prob.scheme, M, prob.dtype, prob.N, prob.K)[0]:
            for c in gluon_candidates(M, prob.N, prob.K, sms):
                consider("gluon_w8a8", c)
        best = min(results, key=lambda p: results[p][0])
        t, cfg = results[best]
        entry = {"path": best, **(cfg.to_dict() if cfg else {}), "us": round(t, 3),
                 "paths": {p: {"us": round(v[0], 3), "config": v[1].to_dict() if v[1] else None}
                           for p, v in results.items()}}
        table[str(M)] = entry
        log(f"  M={M:5d}: {best:12s} {t:9.2f} us  (" +
            ", ".join(f"{p} {v[0]:.2f}" for p, v in sorted(results.items())) + ")")
    return table


def meta() -> dict:
    import triton

    from moekit.platform import current_platform

    return {"device": current_platform().device_name, "torch": torch.__version__, "triton": triton.__version__,
            "tuned": time.strftime("%Y-%m-%d %H:%M:%S")}


def tune(shapes: Sequence[str], batch_sizes: Sequence[int], schemes: Sequence[str], out_dir: str,
         dtype: torch.dtype = torch.bfloat16, rep_ms: int = 10, budget_s: Optional[float] = None) -> List[str]:
    """Tune and write one table file per (shape, scheme) into ``out_dir``; returns the written paths."""
    from moekit.platform import current_platform, device_name_for_configs

    os.makedirs(out_dir, exist_ok=True)
    name = device_name_for_configs(current_platform())
    written = []
    t0 = time.time()
    for q in schemes:  # scheme-major: a budget cut loses the last scheme's shapes, not a shape's schemes
        for sname in shapes:
            N, K = SHAPES[sname]
            scheme = as_scheme(None if q == "none" else q, "scheme")
            if budget_s is not None and time.time() - t0 > budget_s:
                print(f"budget of {budget_s:.0f} s spent: stopping before {sname} {q}", flush=True)
                return written
            print(f"{sname} N={N} K={K} {scheme.name}", flush=True)
            prob = Problem(N, K, scheme, dtype)
            table = tune_problem(prob, batch_sizes, rep_ms, log=lambda s: print(s, flush=True))
            table["_meta"] = dict(meta(), shape=sname, scheme=scheme.name, dtype=str(dtype))
            path = os.path.join(out_dir, table_file_name(N, K, name, dtype, scheme))
            with open(path, "w") as f:
                json.dump(table, f, indent=1)
            written.append(path)
            del prob
            torch.cuda.empty_cache()
    return written


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------


def _cmd(args) -> int:
    if not torch.cuda.is_available():
        print("moekit tune-linear needs a GPU (it times CUDA-graph replays)", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    written = tune(args.shapes, args.batch_sizes, args.schemes, args.out, dtype, args.rep, args.budget)
    print(f"wrote {len(written)} tables to {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("tune-linear", help="measure the dense GEMM router's paths and write its tables")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=sorted(SHAPES))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES) + ["fp8_tensor"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--rep", type=int, default=10, help="ms of replays per timing (do_bench_cudagraph rep)")
    p.add_argument("--budget", type=float, default=None, help="stop starting new shapes after this many seconds")
    p.add_argument("--out", default=os.path.join(os.getcwd(), "linear_tables"),
                   help="folder for the tables (point MOEKIT_CONFIG_DIR at it, or copy into the user folder)")
    p.set_defaults(func=_cmd)
