"""Kernel meta-parameters for the fused-MoE Triton kernels, and the one function that picks them.

:func:`get_config` is the single lookup every caller uses. It returns a :class:`MoEKernelConfig` for a
problem (E experts, N = expert intermediate size per partition, K = hidden size, top_k, batch M, dtype).

Tuned configs are JSON files named like vLLM's (so its users can reuse theirs)::

    E={E},N={N},device_name={device}[,dtype={dtype}][,block_shape=[{bn},{bk}]].json

mapping batch size M (a string key) to ``{"BLOCK_SIZE_M": .., "BLOCK_SIZE_N": .., "BLOCK_SIZE_K": ..,
"GROUP_SIZE_M": .., "num_warps": .., "num_stages": ..}``. Unknown keys (``"triton_version"``, ROCm-only
knobs) are ignored. Files are searched in ``MOEKIT_CONFIG_DIR``, then the user folder
(:func:`user_config_dir`, where ``moekit tune`` writes), then the configs shipped in ``moekit/configs_data``;
the first folder holding the file wins and the entry with the nearest M is used. Without a file,
:func:`default_config` (a heuristic by tokens per expert) is used and one warning per shape and device
names the ``moekit tune`` command that would make a file.

Entries are validated on load: block sizes and ``num_warps`` must be powers of two (bad entries are dropped
with a warning), ``BLOCK_SIZE_K`` must divide the quantization block along K (else it is lowered, with one
warning), and the config must fit the device's shared memory (else stages, then BLOCK_SIZE_K, are lowered).
``moekit configs check [PATH]`` lints files; ``moekit configs list`` shows where moekit looks.

Lookups are cheap: parsed files are cached, and :func:`get_config` is cached per key (call
:func:`clear_cache` after writing files into a search folder of a running process).
"""
from __future__ import annotations

import argparse
import bisect
import functools
import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "MoEKernelConfig", "default_config", "shared_memory_bytes", "fit_shared_memory", "get_config",
    "config_file_name", "parse_config_file_name", "config_dtype_name", "config_search_dirs",
    "user_config_dir", "package_config_dir", "find_config_file", "load_config_file", "ConfigFile",
    "check_config_file", "clear_cache", "tune_command", "VLLM_BATCH_SIZES", "DTYPE_NAMES",
]

#: vLLM's tuning grid of batch sizes (also ``moekit tune``'s default).
VLLM_BATCH_SIZES: Tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)

#: The ``dtype=`` part of file names (vLLM's spelling); bf16/fp16 files have no dtype part.
DTYPE_NAMES: Tuple[str, ...] = ("float32", "fp8_w8a8", "int8_w8a8", "int8_w8a16", "int4_w4a16", "mxfp4")

_INT_FIELDS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")


@dataclass(frozen=True)
class MoEKernelConfig:
    """Block sizes and launch parameters of the two expert GEMMs (key names as in vLLM's JSON files).

    ``BLOCK_SIZE_M`` is also the alignment block of the token sort. In GEMM 1 each program computes
    ``BLOCK_SIZE_N`` gate columns *and* the matching ``BLOCK_SIZE_N`` up columns.
    """

    BLOCK_SIZE_M: int = 64
    BLOCK_SIZE_N: int = 64
    BLOCK_SIZE_K: int = 64
    GROUP_SIZE_M: int = 8
    num_warps: int = 4
    num_stages: int = 3

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MoEKernelConfig":
        """Build from a JSON entry; unknown non-numeric keys (e.g. ``"triton_version"``) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    def short(self) -> str:
        """'M64 N128 K64 G16 w4 s3'."""
        return (f"M{self.BLOCK_SIZE_M} N{self.BLOCK_SIZE_N} K{self.BLOCK_SIZE_K} G{self.GROUP_SIZE_M} "
                f"w{self.num_warps} s{self.num_stages}")


def default_config(M: int, E: int, N: int, K: int, top_k: int, dtype: Any = None,
                   block_shape: Optional[Sequence[int]] = None) -> MoEKernelConfig:
    """Heuristic config by expected tokens per expert, ``M * top_k / E``.

    Few tokens per expert (decode): small BLOCK_M, wide K steps, deep pipeline, so the GEMMs stream the
    weights at memory speed. Many tokens per expert (prefill): 64/128-row tiles for tensor-core throughput.
    Block-quantized w8a8 (``dtype`` fp8_w8a8/int8_w8a8 with a ``block_shape``): GEMM 1 owns whole 128-column
    groups (BLOCK_N = 128) and keeps two accumulators, so BLOCK_M stays at 64 (128 spills registers: 2.7x
    slower on an H100, ``benchmarks/results/configs_tuned_vs_default_*``) and BLOCK_K = 128 (one scale pair
    per K step). Per-tensor / per-channel 8-bit w8a8 from 32 tokens per expert: BLOCK_K = 128 (the same 128
    bytes per row as bf16's 64), as every entry of the tuned mixtral8x7b fp8 files chose (H100 and H200;
    the old bf16-shaped default was 1.2-1.5x slower there, ``benchmarks/results/tune/``); up to 8 tokens per
    expert and from 16 slots (M * top_k), 16x64x256 with 2 stages, the H100 tuner's pick for Mixtral-8x7B fp8
    at M = 16 / 32 and for most of Qwen3-30B-A3B fp8 per channel's batch sizes there (session 14, against
    16x64x128 with 4 stages: Qwen3 M = 2..128 1.03-1.10x, ``configs_tuned_vs_default_qwen3_fp8_channel_H100_``
    ``session14.md`` then ``configs_tuned_vs_default_fp8_w8a8_new_default_H100_session14_{a,b}.md``); below 16
    slots the 2-deep pipeline lost (Qwen3 M=1 37.9 against 34.9 us, Mixtral M=1 182.0 against 148.0 for the
    tuned 5-deep one), so 16x64x128 with 4 stages stays there. int8 w8a8 unmeasured. mxfp4: what the
    H100 tuning chose once the inline-PTX decode (Hopper, tiles of >= 32 rows,
    :func:`moekit.quant.triton_moe.mxfp4_ptx_decode`) took K steps of 64 and 128 codes: 32x64x128 up to 32
    tokens per expert, 64x128x64 up to 192, then 128x64x64. gpt-oss-20b on the H100, whole forward: M=16 / 64
    310.6 / 340.5 us against 429.2 / 473.8 with 32x64x32 (``ab_mxfp4_bk64_H100_session9.json``); the tuner's
    picks at M=256 / 1024 / 4096 475.6 / 972.2 / 2893.6 us against 625.1 / 1319.6 / 3605.5 for the previous
    default (``tune_gpt_oss_mxfp4_H100_session9_bk64_report.json``). Elsewhere (``tl.dot_scaled``, or the
    Triton decode) these tiles are unmeasured. int4 weight-only (decoded by inline PTX, swapped operands from
    64-row tiles on Hopper): both H100 files tuned in session 24 chose 16x128x128 (4 warps, 3 stages; Mixtral
    2 stages) at 8-16 tokens per expert and 128x64x128 with GROUP_SIZE_M 16 and 4 warps from Mixtral M=512 /
    Qwen3 M=2048 up (1.09-1.32x over the generic 32x64x128 / 128x128x64 x 8 warps there,
    ``configs_tuned_H100_session24/``), so those two buckets (8-24 and over 96 tokens per expert) take them.
    bf16 / fp16, 28-48 tokens per expert: 64x64x128 tiles, 3 stages (other dtypes keep the earlier buckets:
    32-row tiles up to 32 tokens per expert, then 64x64x64). 32-row tiles there put the busier experts
    over one tile (their weights read twice): Mixtral-8x7B bf16 on the H100, M=112 / 128 / 160 (28 / 32 /
    40 per expert) 1131 / 1355 / 1666 us with 32x64x128 against 989 / 990 / 971 us; Qwen3-30B-A3B M=448 /
    512 / 640 457 / 472 / 517 against 464 / 468 / 471 (``benchmarks/results/default_threshold_bf16_H100_
    session7.log``); every tuned bf16 file chose 64-row tiles at 32 per expert.
    ``dtype``: as for :func:`get_config`.
    """
    per_expert = M * top_k / max(E, 1)
    name = config_dtype_name(dtype)  # None: bf16 / fp16
    eight_bit = name in ("fp8_w8a8", "int8_w8a8")
    if eight_bit and block_shape is not None:
        if per_expert <= 8:
            return MoEKernelConfig(16, 64, 128, 1, 4, 4)
        if per_expert <= 32:
            return MoEKernelConfig(16, 128, 128, 64, 4, 3)
        return MoEKernelConfig(64, 128, 128, 32, 8, 4)
    if eight_bit:  # per-tensor / per-channel 8-bit operands
        if per_expert <= 8:  # 256-byte K steps once there are programs enough to hide a 2-deep pipeline
            return MoEKernelConfig(16, 64, 256, 1, 4, 2) if M * top_k >= 16 else MoEKernelConfig(16, 64, 128, 1, 4, 4)
        if per_expert < 32:
            return MoEKernelConfig(32, 64, 128, 1, 4, 4)
        if per_expert <= 96:
            return MoEKernelConfig(64, 64, 128, 16, 4, 4)
        return MoEKernelConfig(128, 128, 128, 16, 8, 4)
    if name == "mxfp4":  # the H100 tuning with the inline-PTX decode (docstring)
        if per_expert <= 32:
            return MoEKernelConfig(32, 64, 128, 1, 4, 3)
        if per_expert <= 192:
            return MoEKernelConfig(64, 128, 64, 1, 4, 3)
        return MoEKernelConfig(128, 64, 64, 1, 4, 3)
    if name == "int4_w4a16" and per_expert > 8:  # the H100 tuning with the inline-PTX decode (docstring)
        if per_expert <= 24:
            return MoEKernelConfig(16, 128, 128, 1, 4, 3)
        if per_expert > 96:
            return MoEKernelConfig(128, 64, 128, 16, 4, 3)
    sixteen_bit = name is None  # the 28-48 bucket was measured for bf16 / fp16 only
    if per_expert <= 8:
        config = MoEKernelConfig(16, 64, 128, 1, 4, 4)
    elif per_expert < 28 or (per_expert <= 32 and not sixteen_bit):  # 32-row tiles need headroom (docstring)
        config = MoEKernelConfig(32, 64, 128, 1, 4, 4)
    elif per_expert <= 48 and sixteen_bit:
        config = MoEKernelConfig(64, 64, 128, 1, 4, 3)
    elif per_expert <= 96:
        config = MoEKernelConfig(64, 64, 64, 8, 4, 4)
    else:
        config = MoEKernelConfig(128, 128, 64, 8, 8, 3)
    return config


#: Tail tiles (:mod:`moekit.align`: each expert's last tile shrunk to the fewest rows that hold the rest) in the
#: grouped GEMMs: down to BLOCK_SIZE_M / ``TAIL_TILE_DIVISOR`` rows (never under 16), from BLOCK_SIZE_M
#: ``TAIL_TILE_MIN_BLOCK_M`` and ``TAIL_TILE_MIN_EXPERTS`` local experts. Measured, whole forward, arms interleaved
#: (``benchmarks/ab_tail_tiles.py``), no tails -> tails down to 16 rows:
#:
#: * H100 (``ab_tail_tiles_H100_session15.json``): Qwen3-30B-A3B bf16 M=1024 / 2048 / 4096 513.2 / 625.6 / 948.2 ->
#:   507.8 / 595.7 / 896.9 us (down to 32 rows: 507.8 / 606.0 / 902.6); fp8 per channel M=4096 668.2 -> 630.3;
#:   int8 weight-only M=1024 / 4096 509.6 / 1299.5 -> 485.0 / 1214.1; gpt-oss-20b mxfp4 M=1024 / 4096 959.5 /
#:   2929.2 -> 949.3 / 2854.2; Qwen3 M=256 / 512 within 0.1 %.
#: * H200 (``ab_tail_tiles_H200_session15.json``): Qwen3 bf16 M=2048 / 4096 546.1 / 880.6 -> 512.0 / 851.1, fp8
#:   per channel M=2048 407.0 -> 375.8, gpt-oss-20b M=512 / 2048 662.3 / 1671.1 -> 614.3 / 1577.9, int8
#:   weight-only M=4096 1278.0 -> 1182.2.
#: * Mixtral-8x7B (8 experts): H100 bf16 M=1024 / 4096 within 0.1 %, fp8 per tensor M=1024 / 4096 1.03x / 1.02x;
#:   H200 bf16 M=256 1.06x but M=4096 5926.2 -> 6011.6, fp8 per tensor M=128 / 256 410.6 / 487.5 -> 418.8 /
#:   504.4. With few experts each run spans many tiles (the last one is a small share) and the big weight
#:   tiles are streamed per tile anyway, so layers with fewer than 16 experts keep full tiles.
#:
#: A tail tile still streams the expert's whole weight tile for its few rows (a 16-row tail costs about 3/4 of a
#: 128-row tile at Qwen3 M=4096: ``probe_tails_H100_session15.json``), so the gain is a part of the padding.
TAIL_TILE_DIVISOR = 8
TAIL_TILE_MIN_BLOCK_M = 64
TAIL_TILE_MIN_EXPERTS = 16


def tail_tile(config: MoEKernelConfig, num_experts: int) -> int:
    """``min_tile`` for :func:`moekit.align.moe_align_block_size` under ``config`` with ``num_experts`` local
    experts (the one rule): each expert's last tile shrinks to as few as this many rows; ``BLOCK_SIZE_M`` means
    no tail tiles (also with ``MOEKIT_TAIL_TILES=0``)."""
    from moekit import envs
    from moekit.align import MIN_TAIL_TILE

    bm = config.BLOCK_SIZE_M
    if bm < TAIL_TILE_MIN_BLOCK_M or num_experts < TAIL_TILE_MIN_EXPERTS or not envs.get("MOEKIT_TAIL_TILES"):
        return bm
    return max(MIN_TAIL_TILE, bm // TAIL_TILE_DIVISOR)


#: GEMM 2 (the down projection, K = the intermediate size I) takes 256-column tiles with 8 warps where the entry
#: has 128 x 128 tiles, I >= ``GEMM2_WIDE_MIN_K`` and each expert expects a full tile of rows (M * top_k / E >=
#: BLOCK_SIZE_M): over a long K each activation tile is then read by half as many programs. Shared memory per
#: stage, BLOCK_M * BLOCK_K + 256 * BLOCK_K, is GEMM 1's for the same entry (its two 128-column weight tiles),
#: so an entry that fits GEMM 1 fits. Whole forward, arms interleaved, H100 (``benchmarks/probe_gemm2_own.py``,
#: ``probe_gemm2_n256{,_shapes}_H100_session20.json``), 128-column tiles -> 256:
#:
#: * I = 14336 (Mixtral-8x7B): bf16 M=512 / 1024 / 2048 / 4096 1.016x / 1.022x / 1.013x / 1.032x, fp8 per tensor
#:   M=1024 / 4096 1.037x / 1.038x (M=512 1.004x), fp8 per channel M=1024 / 4096 1.024x / 1.030x;
#: * I = 7168 (Mixtral TP2, default configs): bf16 M=512 / 1024 / 4096 1.012x / 1.017x / 1.053x, fp8 per tensor
#:   M=1024 / 4096 1.024x / 1.031x;
#: * I = 2880 (gpt-oss bf16): 1.000x / 1.002x / 1.025x at M=512 / 1024 / 4096 with 32 experts, 0.98x / 0.99x
#:   at M=1024 / 4096 with 128; I = 768 (Qwen3-30B-A3B): 0.98-1.006x; Mixtral bf16 M=256 (64 rows per
#:   expert in 128-row tiles) 0.993x. Hence the bounds. Weight-only and block-quantized layers keep GEMM 1's
#:   config (their GEMM 2 steps are set by the decode and the scale groups; unmeasured here).
GEMM2_WIDE_MIN_K = 4096


def gemm2_config(config: MoEKernelConfig, k: int, slots_per_expert: float) -> MoEKernelConfig:
    """GEMM 2's config from GEMM 1's ``config`` (the alignment's BLOCK_SIZE_M is shared) for a down projection of
    depth ``k`` with ``slots_per_expert`` routed rows per expert on average: see :data:`GEMM2_WIDE_MIN_K`."""
    if (config.BLOCK_SIZE_M == 128 and config.BLOCK_SIZE_N == 128 and k >= GEMM2_WIDE_MIN_K
            and slots_per_expert >= config.BLOCK_SIZE_M):
        return replace(config, BLOCK_SIZE_N=256, num_warps=8)
    return config


def shared_memory_bytes(config: MoEKernelConfig, elem_bytes: int) -> int:
    """Shared memory the pipelined GEMM 1 needs (the larger of the two GEMMs: one A tile and two weight
    tiles, gate and up, per stage)."""
    per_stage = (config.BLOCK_SIZE_M * config.BLOCK_SIZE_K + 2 * config.BLOCK_SIZE_N * config.BLOCK_SIZE_K)
    return per_stage * elem_bytes * max(config.num_stages, 1)


def fit_shared_memory(config: MoEKernelConfig, elem_bytes: int, limit: Optional[int]) -> MoEKernelConfig:
    """Lower num_stages (down to 2), then BLOCK_SIZE_K (down to 16), until the config fits ``limit`` bytes."""
    if limit is None:
        return config
    c = config
    while shared_memory_bytes(c, elem_bytes) > limit:
        if c.num_stages > 2:
            c = replace(c, num_stages=c.num_stages - 1)
        elif c.BLOCK_SIZE_K > 16:
            c = replace(c, BLOCK_SIZE_K=c.BLOCK_SIZE_K // 2)
        else:
            break
    return c


# --------------------------------------------------------------------------------------------------------
# dtype names, file names, folders
# --------------------------------------------------------------------------------------------------------

_DTYPE_ALIASES = {
    "": None, "none": None, "bf16": None, "bfloat16": None, "fp16": None, "float16": None, "half": None,
    "fp32": "float32", "float32": "float32", "float": "float32",
    "fp8": "fp8_w8a8", "fp8_w8a8": "fp8_w8a8", "int8": "int8_w8a8", "int8_w8a8": "int8_w8a8",
    "int8_w8a16": "int8_w8a16", "int4_w4a16": "int4_w4a16", "mxfp4": "mxfp4", "mxfp4_w4a16": "mxfp4",
}


def config_dtype_name(dtype: Any) -> Optional[str]:
    """The ``dtype=`` part of a config file name for ``dtype``: None for bf16/fp16 (and None), else one of
    :data:`DTYPE_NAMES`. Accepts a torch dtype (the activation dtype; fp8 -> ``fp8_w8a8``, int8 ->
    ``int8_w8a8``), a name (``"bf16"``, ``"fp8_w8a8"``, ...) or a :class:`moekit.quant.QuantScheme`."""
    from moekit.errors import check_arg

    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.bfloat16, torch.float16):
            return None
        if dtype == torch.float32:
            return "float32"
        if dtype.is_floating_point and dtype.itemsize == 1:
            return "fp8_w8a8"
        if dtype == torch.int8:
            return "int8_w8a8"
        check_arg(False, "dtype", "bf16, fp16, fp32, an fp8 dtype or int8", dtype)
    if isinstance(dtype, str):
        key = dtype.strip().lower()
        check_arg(key in _DTYPE_ALIASES, "dtype", f"one of {sorted(k for k in _DTYPE_ALIASES if k)}", dtype)
        return _DTYPE_ALIASES[key]
    scheme = _scheme_dtype_name(dtype)
    if scheme is not _NOT_A_SCHEME:
        return scheme
    check_arg(False, "dtype", "None, a torch dtype, a dtype name or a QuantScheme", dtype)


_NOT_A_SCHEME = object()


def _scheme_dtype_name(scheme: Any):
    try:
        from moekit.quant.scheme import QuantScheme
    except ImportError:  # pragma: no cover
        return _NOT_A_SCHEME
    if not isinstance(scheme, QuantScheme):
        return _NOT_A_SCHEME
    w, a = scheme.weight_dtype, scheme.act_dtype
    if w in ("bf16", "fp16"):
        return None
    if w == "fp32":
        return "float32"
    if w == "fp8":
        return "fp8_w8a8"
    if w == "int8":
        return "int8_w8a8" if a == "int8" else "int8_w8a16"
    if w == "int4":
        return "int4_w4a16"
    return "mxfp4"


def _block_shape(block_shape: Any) -> Optional[Tuple[int, int]]:
    from moekit.errors import check_arg

    if block_shape is None:
        return None
    bs = tuple(int(b) for b in block_shape)
    check_arg(len(bs) == 2 and all(b > 0 for b in bs), "block_shape", "None or [block_n, block_k] > 0", block_shape)
    return bs


def config_file_name(E: int, N: int, device_name: str, dtype: Any = None, block_shape: Optional[Sequence[int]] = None) -> str:
    """vLLM-compatible file name, e.g. ``E=128,N=768,device_name=NVIDIA_H100_80GB_HBM3.json`` or
    ``E=256,N=256,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json``."""
    name = config_dtype_name(dtype)
    bs = _block_shape(block_shape)
    dtype_part = f",dtype={name}" if name else ""
    block_part = f",block_shape=[{bs[0]},{bs[1]}]" if bs else ""
    return f"E={int(E)},N={int(N)},device_name={device_name}{dtype_part}{block_part}.json"


_NAME_RE = re.compile(
    r"^E=(?P<E>\d+),N=(?P<N>\d+),device_name=(?P<device>[^,]+?)(?:,dtype=(?P<dtype>[A-Za-z0-9_]+))?"
    r"(?:,block_shape=\[\s*(?P<bn>\d+)\s*,\s*(?P<bk>\d+)\s*\])?\.json$"
)


def parse_config_file_name(name: str) -> Optional[dict]:
    """The parts of a config file name (``E``, ``N``, ``device_name``, ``dtype``, ``block_shape``), or None."""
    m = _NAME_RE.match(os.path.basename(name))
    if not m:
        return None
    bs = (int(m["bn"]), int(m["bk"])) if m["bn"] else None
    return {"E": int(m["E"]), "N": int(m["N"]), "device_name": m["device"], "dtype": m["dtype"], "block_shape": bs}


def user_config_dir() -> Path:
    """Where ``moekit tune`` writes configs by default and :func:`get_config` looks second:
    ``platformdirs.user_cache_dir("moekit")/configs`` (``$XDG_CACHE_HOME`` or ``~/.cache`` /moekit/configs
    when platformdirs is missing)."""
    from moekit.envs import optional_import

    platformdirs = optional_import("platformdirs", "the user config folder",
                                   "using $XDG_CACHE_HOME/moekit or ~/.cache/moekit")
    if platformdirs is not None:
        return Path(platformdirs.user_cache_dir("moekit")) / "configs"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moekit" / "configs"


def package_config_dir() -> Path:
    """The configs shipped with moekit (``moekit/configs_data``)."""
    return Path(__file__).resolve().parent / "configs_data"


def _env_config_dir() -> Optional[Path]:
    from moekit import envs

    try:
        return envs.get("MOEKIT_CONFIG_DIR")
    except envs.EnvError as e:
        envs.warn_once("config-dir-bad", f"{e}; ignoring it")
        return None


def config_search_dirs() -> List[Path]:
    """Folders searched for config files, first match wins: MOEKIT_CONFIG_DIR, the user folder, the package."""
    dirs = []
    env_dir = _env_config_dir()
    if env_dir is not None:
        dirs.append(env_dir)
    dirs += [user_config_dir(), package_config_dir()]
    return dirs


# --------------------------------------------------------------------------------------------------------
# Loading and validating files
# --------------------------------------------------------------------------------------------------------


def _elem_bytes(dtype_name: Optional[str], dtype: Any = None) -> int:
    """Bytes per element of the A tile the shared-memory estimate uses (1 for 8-bit activations)."""
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    if dtype_name == "float32":
        return 4
    if dtype_name in ("fp8_w8a8", "int8_w8a8"):
        return 1
    return 2


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def _as_int(v: Any) -> Optional[int]:
    """A JSON number that is an integer (not a bool, not NaN/inf, no fraction) as an int, else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v:
        return None
    return int(v)


def validate_entry(entry: Any, k_block: Optional[int] = None) -> Tuple[Optional[MoEKernelConfig], List[str], List[str]]:
    """Check one JSON entry: returns (config or None if unusable, errors, fixes applied).

    Errors: missing/non-integer fields, block sizes not powers of two >= 16, num_warps not a power of two
    <= 32, num_stages < 1, GROUP_SIZE_M < 1. Fix: BLOCK_SIZE_K lowered to divide ``k_block`` (quantization block)."""
    if not isinstance(entry, Mapping):
        return None, [f"expected an object, got {type(entry).__name__}"], []
    errors: List[str] = []
    vals: Dict[str, int] = {}
    for f in _INT_FIELDS:
        v = entry.get(f)
        if _as_int(v) is None:
            errors.append(f"{f}: expected an integer, got {v!r}")
        else:
            vals[f] = _as_int(v)
    if errors:
        return None, errors, []
    for f in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"):
        if not (_pow2(vals[f]) and vals[f] >= 16):
            errors.append(f"{f}: expected a power of two >= 16, got {vals[f]}")
    if not (_pow2(vals["num_warps"]) and vals["num_warps"] <= 32):
        errors.append(f"num_warps: expected a power of two <= 32, got {vals['num_warps']}")
    if vals["num_stages"] < 1:
        errors.append(f"num_stages: expected >= 1, got {vals['num_stages']}")
    if vals["GROUP_SIZE_M"] < 1:
        errors.append(f"GROUP_SIZE_M: expected >= 1, got {vals['GROUP_SIZE_M']}")
    if errors:
        return None, errors, []
    c = MoEKernelConfig(**vals)
    fixes = []
    if k_block and k_block % c.BLOCK_SIZE_K:
        bk = c.BLOCK_SIZE_K
        while bk > 16 and k_block % bk:
            bk //= 2
        fixes.append(f"BLOCK_SIZE_K {c.BLOCK_SIZE_K} does not divide the quantization block {k_block}; using {bk}")
        c = replace(c, BLOCK_SIZE_K=bk)
    return c, errors, fixes


@dataclass(frozen=True)
class ConfigFile:
    """A parsed config file: the usable entries by M (sorted), and what was wrong or fixed."""

    path: str
    table: Tuple[Tuple[int, MoEKernelConfig], ...]
    errors: Tuple[str, ...] = ()
    fixes: Tuple[str, ...] = ()

    @property
    def batch_sizes(self) -> Tuple[int, ...]:
        return tuple(m for m, _ in self.table)

    def as_dict(self) -> Dict[int, MoEKernelConfig]:
        return dict(self.table)

    def nearest(self, M: int) -> MoEKernelConfig:
        """The entry whose M is nearest (ties go to the smaller M)."""
        ms = self.batch_sizes
        i = bisect.bisect_left(ms, M)
        if i == 0:
            return self.table[0][1]
        if i == len(ms):
            return self.table[-1][1]
        lo, hi = self.table[i - 1], self.table[i]
        return lo[1] if M - lo[0] <= hi[0] - M else hi[1]


def _parse_file(path: str, k_block: Optional[int]) -> ConfigFile:
    errors: List[str] = []
    fixes: List[str] = []
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        return ConfigFile(path, (), (f"cannot read: {e}",), ())
    if not isinstance(raw, dict):
        return ConfigFile(path, (), (f"expected a JSON object mapping batch size to config, got {type(raw).__name__}",), ())
    table = {}
    keys: Dict[int, str] = {}
    for key, entry in raw.items():
        try:
            m = int(key)
        except (TypeError, ValueError):
            try:
                float(key)
            except (TypeError, ValueError):
                continue  # "triton_version" and other non-numeric keys
            errors.append(f"M={key}: expected an integer batch size")
            continue
        if m in keys:
            errors.append(f"M={key}: the same batch size as key {keys[m]!r} (the later one is ignored)")
            continue
        keys[m] = key
        if m < 1:
            errors.append(f"M={key}: expected a batch size >= 1")
            continue
        c, errs, fx = validate_entry(entry, k_block)
        errors += [f"M={m}: {e}" for e in errs]
        fixes += [f"M={m}: {x}" for x in fx]
        if c is not None:
            table[m] = c
    if not table and not errors:
        errors.append("no batch-size entries")
    return ConfigFile(path, tuple(sorted(table.items())), tuple(errors), tuple(fixes))


@functools.lru_cache(maxsize=256)
def _load_cached(path: str, mtime_ns: int, k_block: Optional[int]) -> ConfigFile:
    return _parse_file(path, k_block)


def load_config_file(path: os.PathLike, block_shape: Optional[Sequence[int]] = None) -> ConfigFile:
    """Parse and validate one file (cached by path and modification time). ``block_shape`` defaults to the
    one in the file name; its K part is the block BLOCK_SIZE_K must divide."""
    path = str(path)
    if block_shape is None:
        parts = parse_config_file_name(path)
        block_shape = parts["block_shape"] if parts else None
    k_block = _block_shape(block_shape)[1] if block_shape else None
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as e:
        return ConfigFile(path, (), (f"cannot read: {e}",), ())
    return _load_cached(path, mtime, k_block)


def find_config_file(E: int, N: int, dtype: Any = None, block_shape: Optional[Sequence[int]] = None,
                     device_name: Optional[str] = None) -> Optional[ConfigFile]:
    """The first matching file in :func:`config_search_dirs` for this shape, dtype and device, parsed."""
    if device_name is None:
        from moekit.platform import device_name_for_configs

        device_name = device_name_for_configs()
    name = config_file_name(E, N, device_name, dtype, block_shape)
    for d in config_search_dirs():
        p = Path(d) / name
        if p.is_file():
            return load_config_file(p, block_shape)
    return None


# --------------------------------------------------------------------------------------------------------
# The lookup
# --------------------------------------------------------------------------------------------------------


def tune_command(E: int, N: int, K: int, top_k: int, dtype: Any = None, block_shape: Optional[Sequence[int]] = None) -> str:
    """The ``moekit tune`` command line that makes the config file for this problem."""
    from moekit.shapes import SHAPES

    cmd = None
    for name in ("mixtral8x7b", "qwen3_30b_a3b", "dsv3", "gpt_oss_20b"):
        s = SHAPES[name]
        if s.H != K or s.top_k != top_k:
            continue
        for tp in (1, 2, 4, 8, 16):
            for ep in (1, 2, 4, 8, 16, 32):
                if s.I % tp == 0 and s.E % ep == 0 and s.I // tp == N and s.E // ep == E:
                    cmd = f"moekit tune --model {name}" + (f" --tp {tp}" if tp > 1 else "") + (f" --ep {ep}" if ep > 1 else "")
                    break
            if cmd:
                break
        if cmd:
            break
    if cmd is None:
        cmd = f"moekit tune --E {E} --N {N} --K {K} --top-k {top_k}"
    name = config_dtype_name(dtype)
    if name:
        cmd += f" --dtype {name}"
    bs = _block_shape(block_shape)
    if bs:
        cmd += f" --block-shape {bs[0]} {bs[1]}"
    return cmd


@functools.lru_cache(maxsize=8192)
def _lookup(E: int, N: int, K: int, top_k: int, M: int, dtype: Any, block_shape: Optional[Tuple[int, int]],
            device_name: str, smem_limit: Optional[int], is_gpu: bool, env_dir: Optional[str]) -> MoEKernelConfig:
    from moekit.envs import warn_once

    name = config_dtype_name(dtype)
    elem = _elem_bytes(name, dtype)
    found = find_config_file(E, N, dtype, block_shape, device_name)
    if found is not None and (found.errors or found.fixes):
        msgs = list(found.errors) + list(found.fixes)
        more = f" (+{len(msgs) - 3} more)" if len(msgs) > 3 else ""
        warn_once(f"config-file-problems:{found.path}",
                  f"tuned config {found.path}: {'; '.join(msgs[:3])}{more}; "
                  f"{'bad entries are skipped' if found.errors else 'fixed as said'} (lint: moekit configs check)")
    if found is not None and found.table:
        config = found.nearest(M)
        fitted = fit_shared_memory(config, elem, smem_limit)
        if fitted != config:
            warn_once(f"config-smem:{found.path}:{config}",
                      f"tuned config {found.path} entry near M={M} ({config.short()}) needs "
                      f"{shared_memory_bytes(config, elem)} bytes of shared memory, more than this device's "
                      f"{smem_limit}; using {fitted.short()}")
        return fitted
    if is_gpu:
        what = f"E={E},N={N}" + (f",dtype={name}" if name else "")
        warn_once(f"config-missing:{what}:{block_shape}:{device_name}",
                  f"no tuned kernel config for {what}" + (f",block_shape={list(block_shape)}" if block_shape else "")
                  + f" on {device_name}: using the default heuristic, which can be much slower. Make one "
                  f"(a few minutes) with: {tune_command(E, N, K, top_k, dtype, block_shape)}")
    config = default_config(M, E, N, K, top_k, dtype, block_shape)
    if block_shape and block_shape[1] % config.BLOCK_SIZE_K:
        bk = config.BLOCK_SIZE_K
        while bk > 16 and block_shape[1] % bk:
            bk //= 2
        config = replace(config, BLOCK_SIZE_K=bk)
    return fit_shared_memory(config, elem, smem_limit)


def get_config(
    E: int,
    N: int,
    K: int,
    top_k: int,
    M: int,
    dtype: Optional[torch.dtype] = None,
    block_shape: Optional[Sequence[int]] = None,
    device_name: Optional[str] = None,
) -> MoEKernelConfig:
    """The kernel config for one problem. The one place configs are looked up.

    ``dtype``: the activation dtype (or a dtype name such as ``"fp8_w8a8"``, or a QuantScheme);
    ``block_shape``: the ``[block_n, block_k]`` of block quantization. A tuned file (see the module doc) is
    used when one exists for this device, else :func:`default_config` with one warning per shape and device.
    The result always fits the current device's shared memory (see :func:`fit_shared_memory`)."""
    from moekit.errors import check_arg
    from moekit.platform import current_platform, device_name_for_configs, shared_memory_per_block

    for name, v, lo in (("E", E, 1), ("N", N, 1), ("K", K, 1), ("top_k", top_k, 1), ("M", M, 0)):
        check_arg(isinstance(v, int) and v >= lo, name, f"an int >= {lo}", v)
    p = current_platform()
    if device_name is None:
        device_name = device_name_for_configs(p)
    if block_shape is not None:
        block_shape = (int(block_shape[0]), int(block_shape[1]))
    return _lookup(int(E), int(N), int(K), int(top_k), int(M), dtype, block_shape, device_name,
                   shared_memory_per_block(p), p.is_gpu, _env_config_dir())


def clear_cache() -> None:
    """Forget parsed files and looked-up configs (after writing a config file into a search folder)."""
    _lookup.cache_clear()
    _load_cached.cache_clear()


# --------------------------------------------------------------------------------------------------------
# Lint: `moekit configs check [PATH ...]`, `moekit configs list`
# --------------------------------------------------------------------------------------------------------


def _shared_memory_by_device() -> Dict[str, int]:
    from moekit.platform import PRESETS, current_platform, device_name_for_configs, shared_memory_per_block

    out = {}
    for p in list(PRESETS.values()) + [current_platform()]:
        limit = shared_memory_per_block(p)
        if limit:
            out[device_name_for_configs(p)] = limit
    return out


def check_config_file(path: os.PathLike) -> Tuple[List[str], List[str]]:
    """Lint one file: (errors, warnings). Errors: a name that is not vLLM's pattern, unreadable JSON, invalid
    entries, configs that do not fit the named device's shared memory. ``linear,...`` files are
    :mod:`moekit.linear` tables, linted by :func:`moekit.linear.parse_table`. Warnings: BLOCK_SIZE_K lowered to
    the quantization block, unknown keys, a device moekit has no shared-memory figure for."""
    path = str(path)
    if not Path(path).is_file():
        return [f"cannot read: no such file {path}"], []
    if Path(path).name.startswith("linear,"):  # a moekit.linear choice table
        from moekit.linear import parse_table

        return parse_table(path)[1], []
    errors: List[str] = []
    warnings: List[str] = []
    parts = parse_config_file_name(path)
    if parts is None:
        errors.append("file name: expected E={E},N={N},device_name={name}[,dtype={dtype}][,block_shape=[bn,bk]].json")
    elif parts["dtype"] is not None and parts["dtype"] not in DTYPE_NAMES:
        warnings.append(f"dtype={parts['dtype']}: not one moekit's kernels use ({', '.join(DTYPE_NAMES)})")
    parsed = _parse_file(path, parts["block_shape"][1] if parts and parts["block_shape"] else None)
    errors += list(parsed.errors)
    warnings += list(parsed.fixes)
    try:
        with open(path) as f:
            raw = json.load(f)
        if isinstance(raw, dict):
            unknown = sorted({k for e in raw.values() if isinstance(e, dict) for k in e} - set(_INT_FIELDS))
            if unknown:
                warnings.append(f"keys moekit ignores: {', '.join(unknown)}")
    except (OSError, ValueError):
        pass
    if parts is not None:
        limit = _shared_memory_by_device().get(parts["device_name"])
        elem = _elem_bytes(parts["dtype"] if parts["dtype"] in DTYPE_NAMES else None)
        if limit is None:
            warnings.append(f"device {parts['device_name']}: shared-memory limit unknown, not checked")
        else:
            for m, c in parsed.table:
                need = shared_memory_bytes(c, elem)
                if need > limit:
                    errors.append(f"M={m}: needs {need} bytes of shared memory, {parts['device_name']} has {limit}")
    return errors, warnings


def _config_paths(paths: Sequence[str]) -> List[Path]:
    out: List[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.glob("*.json"))
        else:
            out.append(p)
    return out


def _run_check(args: argparse.Namespace) -> int:
    paths = _config_paths(args.paths or [str(d) for d in config_search_dirs() if Path(d).is_dir()])
    if not paths:
        print("no config files found")
        return 0
    bad = 0
    for p in paths:
        errors, warnings = check_config_file(p)
        status = "ERROR" if errors else ("warn" if warnings else "ok")
        print(f"{status:5s} {p}")
        for e in errors:
            print(f"      error: {e}")
        for w in warnings:
            print(f"      warning: {w}")
        bad += bool(errors)
    print(f"{len(paths)} file(s), {bad} with errors")
    return 1 if bad else 0


def _run_list(args: argparse.Namespace) -> int:
    from moekit.platform import device_name_for_configs

    print(f"this device: {device_name_for_configs()}")
    for d in config_search_dirs():
        files = sorted(Path(d).glob("*.json")) if Path(d).is_dir() else []
        print(f"{d}  ({len(files)} file(s){'' if Path(d).is_dir() else ', missing'})")
        for f in files:
            print(f"    {f.name}")
    return 0


def add_configs_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``moekit configs {check,list}``."""
    p = subparsers.add_parser("configs", help="lint and list tuned kernel-config files")
    sub = p.add_subparsers(dest="configs_command", required=True)
    c = sub.add_parser("check", help="lint config files (default: every file in the search folders)")
    c.add_argument("paths", nargs="*", metavar="PATH", help="files or folders")
    c.set_defaults(func=_run_check)
    ls = sub.add_parser("list", help="the folders searched for config files, in order, and their files")
    ls.set_defaults(func=_run_list)
    return p
