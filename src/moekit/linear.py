"""Dense GEMM router: ``moekit.linear(x, weight, bias=None, *, quant=None, weight_scale=None)``.

``out[..., N] = x[..., K] @ weight[N, K]^T (+ bias)`` by the fastest correct path measured for this device
and shape. Paths (:data:`PATHS`):

``torch``
    ``F.linear`` (cuBLAS). fp8 per-channel/per-tensor weights: per-token dynamic activation quantization +
    ``torch._scaled_mm`` where the device has fp8 matrix cores; otherwise (and for block-fp8) the weight is
    dequantized to the activation dtype (slow; the reference fallback).
``skinny``
    Triton split-K GEMM for M <= 16 (decode): the whole GPU streams the weight. fp8 weights are widened to
    the activation dtype in registers (weight-only, no activation quantization).
``gemv``
    Triton GEMV for M = 1 (decode of one sequence): no tensor cores, no split-K; each program owns a few
    output rows over the whole K (:mod:`moekit.kernels.linear_gemv`), fp8 weights widened in registers.
    ``BLOCK_SIZE_N`` is its rows per program; ``BLOCK_SIZE_M`` and ``SPLIT_K`` are unused.
``gemv_mma``
    Triton GEMV on tensor cores for M <= 16 (decode of a small batch): operands swapped (the weight rows are
    the MMA's left operand, the tokens its right one, padded to the next power of two of M), K split among the
    warps of one program and summed inside it; no split-K across programs (:mod:`moekit.kernels.linear_gemv_mma`).
    ``BLOCK_SIZE_N`` is its rows per program, ``BLOCK_SIZE_K`` each warp's K slice, ``num_warps`` the slices
    per step, ``num_stages`` the K loop's depth; ``BLOCK_SIZE_M`` and ``SPLIT_K`` are unused.
``triton``
    Triton tiled GEMM with per-device tuned block sizes; fp8 weights weight-only as in ``skinny``.
``triton_w8a8``
    fp8 weights only: dynamic fp8 activation quantization (per (token, 128) group for block weights, per
    token for channel/tensor weights) + a Triton fp8 x fp8 GEMM.
``dequant``
    fp8 weights only: the weight dequantized to the activation dtype in one pass
    (:mod:`moekit.kernels.dequant`), then F.linear; what ``torch`` does for block-fp8, offered for per-channel /
    per-tensor weights too, where it beats activation quantization + ``torch._scaled_mm`` when the activation
    outweighs the weight (DeepSeek-V3's kv_a, 576 x 7168, at M >= 1024). No config.
``gluon_w8a8``
    128x128-block fp8 weights on Hopper: the same activation quantization + the MoE's Gluon block-fp8 GEMM
    (:func:`moekit.kernels.moe_gemm_sm90.linear_fp8_block_sm90`: the MMA of K step k + 1 runs while step k's
    product is scaled, which ``tl.dot`` cannot express). K a multiple of 256 (:func:`gluon_w8a8_applies`);
    64-row tiles, ``BLOCK_SIZE_N`` 128 or 256 (256 only where it divides N), ``GROUP_SIZE_M`` and ``SPLIT_K``
    (K split into that many runs of 128-deep steps, fp32 partials summed by a second launch) from the config (the
    rest of it is fixed by the kernel). 1.19-1.39x over ``triton_w8a8`` at M = 1024 / 4096 on the
    benchmark's shapes (H100, ``benchmarks/probe_linear_gluon.py``).

The choice per (device, N, K, M bucket, dtype, scheme) comes from a table written by ``moekit tune-linear``
(:mod:`moekit.linear_tune`): JSON files named by :func:`table_file_name`, searched in ``MOEKIT_CONFIG_DIR``,
the user folder of the MoE configs (:func:`moekit.configs.user_config_dir`), then the tables shipped in
``moekit/configs_data/linear``; the first file found wins. A bucket key ``b`` serves ``M <= b`` down to the
next smaller key; M past the largest key uses the largest. Without a table: ``torch`` for unquantized and fp8
channel/tensor weights on GPUs with fp8 matrix cores, the Triton paths for block-fp8 on Triton GPUs
(``skinny`` to M = 16, then ``triton_w8a8``, or ``gluon_w8a8`` on Hopper: :data:`GLUON_DEFAULT_MIN_M`). Dynamic
activation quantization is therefore used only where ``tune-linear`` measured it faster (or for block-fp8
without a table).

``MOEKIT_LINEAR=0`` turns the router off (always ``torch``). A path that cannot run here (Triton missing,
no fp8 matrix cores) is skipped with one warning. Per call the router does dictionary lookups only (no host
sync, no allocation besides outputs/workspaces), so it is CUDA-graph safe.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from moekit import envs
from moekit.backends import triton_kernel_limits
from moekit.configs import _as_int, _pow2
from moekit.errors import MoEInputError, check_arg
from moekit.quant.scheme import QuantScheme, as_scheme

__all__ = [
    "linear", "linear_path", "select_path", "LinearConfig", "PATHS", "SKINNY_MAX_M", "GEMV_MAX_M",
    "GEMV_MMA_MAX_M", "gemv_mma_columns", "table_file_name",
    "config_dirs", "load_table", "clear_caches",
]

PATHS = ("torch", "skinny", "gemv", "gemv_mma", "triton", "triton_w8a8", "gluon_w8a8", "dequant")
#: the paths that take no config (their table entries hold only the path)
CONFIGLESS = ("torch", "dequant")
SKINNY_MAX_M = 16
#: the largest M of the gemv path (why only one row: :mod:`moekit.kernels.linear_gemv`)
GEMV_MAX_M = 1
#: the largest M of the gemv_mma path: its token columns (:func:`gemv_mma_columns`) stay <= 16
GEMV_MMA_MAX_M = 16
#: the paths that serve small M only, and their largest M
_MAX_M = {"skinny": SKINNY_MAX_M, "gemv": GEMV_MAX_M, "gemv_mma": GEMV_MMA_MAX_M}
_DTYPE_KEYS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


@dataclasses.dataclass(frozen=True)
class LinearConfig:
    """Meta-parameters of the Triton GEMM (``skinny`` uses BLOCK_SIZE_M=16 and SPLIT_K > 1)."""

    BLOCK_SIZE_M: int = 64
    BLOCK_SIZE_N: int = 128
    BLOCK_SIZE_K: int = 64
    SPLIT_K: int = 1
    GROUP_SIZE_M: int = 8
    num_warps: int = 4
    num_stages: int = 3
    FUSED_REDUCE: int = 0  # split-K: 1 = last program per tile reduces (one launch), 0 = reduce kernel

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LinearConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_TRITON = LinearConfig(64, 128, 64, 1, 8, 4, 3)
DEFAULT_W8A8 = LinearConfig(64, 128, 128, 1, 8, 4, 3)
DEFAULT_GLUON = LinearConfig(64, 256, 128, 1, 8, 8, 4)
#: without a table, block-fp8 layers take ``gluon_w8a8`` from this M when its 64 x 256 tiles number at least
#: GLUON_DEFAULT_MIN_TILES (so that the GPU is busy without split-K): the H100 probe's wins
#: (``probe_linear_gluon_H100_session22.json``; below either bound it lost to the split-K ``triton_w8a8``)
GLUON_DEFAULT_MIN_M = 256
GLUON_DEFAULT_MIN_TILES = 64
DEFAULT_GEMV = LinearConfig(1, 4, 512, 1, 1, 4, 4)  # 4 rows per program, K in steps of 512
#: 8 rows per program, 4 warps of 128-wide K slices, 4 stages: the probe's most frequent best at M = 4
DEFAULT_GEMV_MMA = LinearConfig(1, 8, 128, 1, 1, 4, 4)


def gemv_mma_columns(M: int) -> int:
    """The token columns of the gemv_mma path's MMA for M tokens: the next power of two of M (1, 2, 4, 8, 16)."""
    return 1 << max(M - 1, 0).bit_length()


def default_skinny(N: int, K: int, sms: int = 132) -> LinearConfig:
    """Split K so that about two waves of programs stream the weight."""
    bn, bk = 64, 128
    tiles = -(-N // bn)
    k_iters = max(1, -(-K // bk))
    split = max(1, min(k_iters, 16, (2 * sms) // max(tiles, 1)))
    return LinearConfig(16, bn, bk, split, 1, 4, 4)


# --------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------


def _dtype_key(dtype: torch.dtype) -> str:
    return _DTYPE_KEYS[dtype]


def table_file_name(N: int, K: int, device_name: str, dtype: Union[str, torch.dtype], quant=None) -> str:
    """``linear,N={N},K={K},device_name={name},dtype={bf16|fp16|fp32}[,quant={scheme name}].json``."""
    dt = dtype if isinstance(dtype, str) else _dtype_key(dtype)
    scheme = as_scheme(quant, "quant")
    q = f",quant={scheme.name}" if scheme.is_quantized else ""
    return f"linear,N={N},K={K},device_name={device_name},dtype={dt}{q}.json"


def config_dirs() -> List[Path]:
    """Folders searched for tables, first match wins: MOEKIT_CONFIG_DIR (``linear/`` then itself), the user
    folder of the MoE configs (:func:`moekit.configs.user_config_dir`, ``linear/`` then itself), the shipped
    tables."""
    from moekit.configs import _env_config_dir, user_config_dir

    dirs: List[Path] = []
    d = _env_config_dir()  # a bad value is warned about once and ignored, as for the MoE configs
    if d is not None:
        dirs += [d / "linear", d]
    user = user_config_dir()
    dirs += [user / "linear", user]
    dirs.append(Path(__file__).resolve().parent / "configs_data" / "linear")
    return dirs


#: Per-field rules of a table entry's config keys: (test, what is expected).
_FIELD_RULES = {
    "BLOCK_SIZE_M": (lambda v: _pow2(v) and v >= 16, "a power of two >= 16"),
    "BLOCK_SIZE_N": (lambda v: _pow2(v) and v >= 16, "a power of two >= 16"),
    "BLOCK_SIZE_K": (lambda v: _pow2(v) and v >= 16, "a power of two >= 16"),
    "SPLIT_K": (lambda v: v >= 1, ">= 1"),
    "GROUP_SIZE_M": (lambda v: v >= 1, ">= 1"),
    "num_warps": (lambda v: _pow2(v) and v <= 32, "a power of two <= 32"),
    "num_stages": (lambda v: v >= 1, ">= 1"),
    "FUSED_REDUCE": (lambda v: v in (0, 1), "0 or 1"),
}


#: gemv and gemv_mma: any power of two for their rows per program (BLOCK_SIZE_N; triton pads an MMA operand
#: narrower than the instruction); BLOCK_SIZE_M unused.
_GEMV_FIELD_RULES = {**_FIELD_RULES, "BLOCK_SIZE_M": (lambda v: v >= 1, ">= 1"),
                     "BLOCK_SIZE_N": (lambda v: _pow2(v), "a power of two")}


def table_entry_problems(entry: Any) -> List[str]:
    """What is wrong with one table entry ({"path": ..., config keys...}); [] when it is usable."""
    if not isinstance(entry, dict):
        return [f"expected an object, got {type(entry).__name__}"]
    problems = [] if entry.get("path") in PATHS else [f"path: expected one of {PATHS}, got {entry.get('path')!r}"]
    rules = _GEMV_FIELD_RULES if entry.get("path") in ("gemv", "gemv_mma") else _FIELD_RULES
    for name, (ok, what) in rules.items():
        if name not in entry:
            continue
        v = entry[name]
        if _as_int(v) is None:
            problems.append(f"{name}: expected an integer, got {v!r}")
        elif not ok(_as_int(v)):
            problems.append(f"{name}: expected {what}, got {v!r}")
    return problems


def parse_table(path: Union[str, Path]) -> Tuple[Dict[int, Dict[str, Any]], List[str]]:
    """One table file -> ({M bucket: entry} of the usable entries, problems). Non-numeric keys are metadata."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        return {}, [f"cannot read: {e}"]
    if not isinstance(raw, dict):
        return {}, [f"expected a JSON object mapping M buckets to entries, got {type(raw).__name__}"]
    table: Dict[int, Dict[str, Any]] = {}
    problems: List[str] = []
    for k, v in raw.items():
        if not str(k).isdigit():
            continue
        bad = table_entry_problems(v)
        problems += [f"bucket {k}: {b}" for b in bad]
        if not bad:
            table[int(k)] = v
    return table, problems


def load_table(path: Union[str, Path]) -> Dict[int, Dict[str, Any]]:
    """Parse one table file: {M bucket: {"path": ..., config keys...}}, keeping the usable entries; what is
    wrong is said once, in a warning (``moekit configs check`` lints tables too)."""
    table, problems = parse_table(path)
    if problems:
        envs.warn_once(f"linear-table:{path}", f"moekit.linear: {path}: ignoring {'; '.join(problems)}")
    return table


_lock = threading.Lock()
_tables: Dict[Tuple, Optional[Tuple[List[int], List[Dict[str, Any]]]]] = {}
_choices: Dict[Tuple, Tuple[str, Optional[LinearConfig]]] = {}
_env_seen: Tuple = ()
_enabled = True


def clear_caches() -> None:
    """Forget parsed tables and per-shape choices (after writing new tables)."""
    with _lock:
        _tables.clear()
        _choices.clear()


def _find_table(device_name: str, N: int, K: int, dtype_key: str, scheme: QuantScheme):
    key = (device_name, N, K, dtype_key, scheme)
    if key in _tables:
        return _tables[key]
    name = table_file_name(N, K, device_name, dtype_key, scheme)
    found = None
    for d in config_dirs():
        p = d / name
        if p.is_file():
            t = load_table(p)
            if t:
                ks = sorted(t)
                found = (ks, [t[k] for k in ks])
                envs.get_logger().debug("moekit.linear: using %s", p)
            break
    with _lock:
        _tables[key] = found
    return found


def _check_env() -> bool:
    """MOEKIT_LINEAR (parsed through moekit.envs only when a raw value changed); clears caches on change."""
    global _env_seen, _enabled
    seen = (os.environ.get("MOEKIT_LINEAR"), os.environ.get("MOEKIT_CONFIG_DIR"))
    if seen != _env_seen:
        _enabled = bool(envs.get("MOEKIT_LINEAR"))
        clear_caches()
        _env_seen = seen
    return _enabled


# --------------------------------------------------------------------------------------------------------
# Availability and choice
# --------------------------------------------------------------------------------------------------------


def gluon_w8a8_applies(device: torch.device, scheme: QuantScheme, dtype: torch.dtype, N: Optional[int] = None,
                       K: Optional[int] = None) -> Tuple[bool, str]:
    """Whether the ``gluon_w8a8`` path can run (shape rules checked where N and K are given): a Hopper GPU with
    Gluon (triton >= 3.6), 128x128-block e4m3fn weights, 16-bit activations, K a multiple of 256 (the kernel
    steps K twice by 128 per iteration)."""
    from moekit.platform import fp8_dtype, on_sm90, platform_of
    from moekit.quant.triton_moe import gluon_kernels

    if not scheme.is_quantized or scheme.granularity != "block" or scheme.block_shape != (128, 128):
        return False, "gluon_w8a8 needs 128x128-block fp8 weights"
    if dtype not in (torch.bfloat16, torch.float16):
        return False, "gluon_w8a8 needs bfloat16 or float16 activations"
    if K is not None and K % 256:
        return False, f"gluon_w8a8 needs K % 256 == 0 (K={K})"
    if device.type != "cuda" or not on_sm90(platform_of(device)):
        return False, "gluon_w8a8 needs a Hopper (sm_90) GPU"
    if fp8_dtype(platform_of(device)) != torch.float8_e4m3fn:
        return False, "gluon_w8a8 needs e4m3fn weights"
    if gluon_kernels() is None:
        return False, "gluon_w8a8 needs triton's Gluon Hopper API"
    return True, ""


def _path_ok(path: str, device: torch.device, scheme: QuantScheme, M: int, dtype: torch.dtype,
             N: Optional[int] = None, K: Optional[int] = None) -> Tuple[bool, str]:
    """Whether ``path`` can serve M rows of ``dtype`` on ``device`` (and, where given, an [N, K] weight)."""
    if path == "torch":
        return True, ""
    if path == "dequant":
        return (True, "") if scheme.is_quantized else (False, "dequant needs fp8 weights")
    if M > _MAX_M.get(path, M):
        return False, f"{path} serves M <= {_MAX_M[path]}"
    if path == "triton_w8a8":
        if not scheme.is_quantized:
            return False, "triton_w8a8 needs fp8 weights"
        ok, why = triton_kernel_limits(scheme)
        if not ok:
            return False, f"triton_w8a8 (fp8 x fp8 in K steps inside one scale block): {why}"
    from moekit.platform import has_feature, interpreter_runs, platform_of

    if envs.optional_import("triton", "moekit.linear Triton paths", "using torch") is None:
        return False, "Triton is not installed"
    if path == "gluon_w8a8":
        return gluon_w8a8_applies(device, scheme, dtype, N, K)
    if device.type == "cpu":
        return interpreter_runs(dtype)
    plat = platform_of(device)
    ok, why = has_feature("triton_target", plat)
    if not ok:
        return False, why
    if path == "triton_w8a8":
        ok, why = has_feature("fp8_mma", plat)
        if not ok:
            return False, why
    return True, ""


def _default_choice(M: int, N: int, K: int, device: torch.device, scheme: QuantScheme, dtype: torch.dtype):
    if not scheme.is_quantized:
        return "torch", None
    from moekit.platform import has_feature, platform_of

    plat = platform_of(device)
    if scheme.granularity != "block" and device.type == "cuda" and has_feature("fp8_mma", plat)[0]:
        return "torch", None
    if _path_ok("triton", device, scheme, M, dtype)[0]:
        if M <= SKINNY_MAX_M:
            return "skinny", default_skinny(N, K, max(plat.multiprocessor_count, 1))
        if scheme.granularity == "block" and _path_ok("triton_w8a8", device, scheme, M, dtype)[0]:
            tiles = -(-M // DEFAULT_GLUON.BLOCK_SIZE_M) * -(-N // DEFAULT_GLUON.BLOCK_SIZE_N)
            if (M >= GLUON_DEFAULT_MIN_M and tiles >= GLUON_DEFAULT_MIN_TILES
                    and gluon_w8a8_applies(device, scheme, dtype, N, K)[0]):
                return "gluon_w8a8", DEFAULT_GLUON
            return "triton_w8a8", DEFAULT_W8A8
        return "triton", DEFAULT_TRITON
    return "torch", None


def select_path(M: int, N: int, K: int, dtype: torch.dtype, quant=None,
                device: Union[str, torch.device, None] = None) -> Tuple[str, Optional[LinearConfig]]:
    """The (path, config) :func:`linear` uses for an [M, K] x [N, K]^T problem on ``device`` (default: the
    current GPU, else CPU)."""
    scheme = as_scheme(quant, "quant")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _choose(int(M), int(N), int(K), dtype, scheme, torch.device(device))


def _choose(M: int, N: int, K: int, dtype: torch.dtype, scheme: QuantScheme, device: torch.device):
    if not _check_env():
        return "torch", None
    key = (device.type, device.index, M, N, K, dtype, scheme)
    hit = _choices.get(key)
    if hit is not None:
        return hit
    from moekit.platform import device_name_for_configs, platform_of

    choice = None
    table = _find_table(device_name_for_configs(platform_of(device)), N, K, _dtype_key(dtype), scheme)
    if table is not None:
        ks, entries = table
        i = min(bisect.bisect_left(ks, M), len(ks) - 1)
        entry = entries[i]
        path = entry["path"]
        ok, why = _path_ok(path, device, scheme, M, dtype, N, K)
        if ok:
            choice = (path, None if path in CONFIGLESS else LinearConfig.from_dict(entry))
        else:
            envs.warn_once(f"linear-path:{path}:{why}", f"moekit.linear: tuned path {path!r} skipped: {why}")
    if choice is None:
        choice = _default_choice(M, N, K, device, scheme, dtype)
    with _lock:
        if len(_choices) > 65536:
            _choices.clear()
        _choices[key] = choice
    return choice


# --------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------

_SCHEMES: Dict[Any, QuantScheme] = {}


def _scheme_of(quant) -> QuantScheme:
    s = _SCHEMES.get(quant) if isinstance(quant, (str, type(None))) else None
    if s is None:
        s = as_scheme(quant, "quant")
        if isinstance(quant, (str, type(None))):
            _SCHEMES[quant] = s
    return s


def _validate(x, weight, bias, scheme: QuantScheme, weight_scale):
    check_arg(isinstance(x, torch.Tensor), "x", "a torch.Tensor", type(x).__name__)
    check_arg(isinstance(weight, torch.Tensor) and weight.dim() == 2, "weight", "a 2-D tensor [N, K]",
              getattr(weight, "shape", type(weight).__name__))
    check_arg(x.dim() >= 1 and x.shape[-1] == weight.shape[1], "x", f"shape [..., K={weight.shape[1]}]",
              list(x.shape))
    check_arg(x.dtype in _DTYPE_KEYS, "x", "dtype bfloat16, float16 or float32", x.dtype)
    check_arg(weight.device == x.device, "weight", f"on {x.device}", weight.device)
    N = weight.shape[0]
    if bias is not None:
        check_arg(isinstance(bias, torch.Tensor) and tuple(bias.shape) == (N,), "bias", f"a tensor of shape [{N}]",
                  getattr(bias, "shape", type(bias).__name__))
        check_arg(bias.dtype == x.dtype and bias.device == x.device, "bias", f"{x.dtype} on {x.device}",
                  f"{bias.dtype} on {bias.device}")
    if not scheme.is_quantized:
        check_arg(weight.dtype == x.dtype, "weight", f"dtype {x.dtype} (same as x) for an unquantized weight",
                  weight.dtype)
        check_arg(weight_scale is None, "weight_scale", "None for an unquantized weight", "a tensor")
        return
    check_arg(scheme.weight_dtype == "fp8" and scheme.granularity in ("block", "channel", "tensor"), "quant",
              "None or an fp8 scheme (fp8_block128x128, fp8_channel, fp8_tensor)", scheme.name)
    check_arg(weight.dtype in _FP8_DTYPES, "weight", f"an fp8 tensor for quant={scheme.name}", weight.dtype)
    check_arg(isinstance(weight_scale, torch.Tensor), "weight_scale", f"a float32 tensor for quant={scheme.name}",
              type(weight_scale).__name__)
    check_arg(weight_scale.dtype == torch.float32 and weight_scale.device == x.device, "weight_scale",
              f"float32 on {x.device}", f"{weight_scale.dtype} on {weight_scale.device}")
    K = weight.shape[1]
    if scheme.granularity == "block":
        bn, bk = scheme.block_shape
        check_arg(bool(triton_kernel_limits(scheme, mma_8bit=False)), "quant",
                  "block_shape with block_k a power of two >= 16", scheme.block_shape)
        want = (-(-N // bn), -(-K // bk))
        check_arg(tuple(weight_scale.shape) == want, "weight_scale", f"shape {list(want)} for {scheme.name}",
                  list(weight_scale.shape))
    elif scheme.granularity == "channel":
        check_arg(weight_scale.numel() == N, "weight_scale", f"{N} per-channel scales ([N] or [N, 1])",
                  list(weight_scale.shape))
    else:
        check_arg(weight_scale.numel() == 1, "weight_scale", "one per-tensor scale", list(weight_scale.shape))


# --------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, quant=None,
           weight_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x[..., K] @ weight[N, K]^T (+ bias)`` in x's dtype, by the path the tuned table picks.

    ``quant``: None (weight in x's dtype), or an fp8 :class:`~moekit.quant.QuantScheme` / name:
    ``fp8_block128x128`` (``weight_scale`` float32 ``[cdiv(N,128), cdiv(K,128)]``), ``fp8_channel``
    (``[N]`` or ``[N, 1]``), ``fp8_tensor`` (one scale). Scales multiply: ``W = weight * scale``.
    """
    scheme = _scheme_of(quant)
    _validate(x, weight, bias, scheme, weight_scale)
    N, K = weight.shape
    M = x.numel() // K if K else x.numel()
    path, cfg = _choose(M, N, K, x.dtype, scheme, x.device)
    return _run(path, cfg, x, weight, bias, scheme, weight_scale)


def linear_path(path: str, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                quant=None, weight_scale: Optional[torch.Tensor] = None,
                config: Optional[LinearConfig] = None) -> torch.Tensor:
    """Run one path, bypassing the table (tests, benchmarks, the tuner). Raises when it cannot run here."""
    check_arg(path in PATHS, "path", f"one of {PATHS}", repr(path))
    scheme = _scheme_of(quant)
    _validate(x, weight, bias, scheme, weight_scale)
    N, K = weight.shape
    M = x.numel() // K if K else x.numel()
    ok, why = _path_ok(path, x.device, scheme, M, x.dtype, N, K)
    if not ok:
        raise MoEInputError(f"path: expected a path that can run here, got {path!r} ({why})")
    if config is None and path not in CONFIGLESS:
        from moekit.platform import platform_of

        config = {"skinny": default_skinny(N, K, max(platform_of(x.device).multiprocessor_count, 1)),
                  "gemv": DEFAULT_GEMV, "gemv_mma": DEFAULT_GEMV_MMA, "triton": DEFAULT_TRITON,
                  "triton_w8a8": DEFAULT_W8A8, "gluon_w8a8": DEFAULT_GLUON}[path]
    return _run(path, config, x, weight, bias, scheme, weight_scale)


# --------------------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------------------


def _run(path, cfg, x, weight, bias, scheme, weight_scale):
    N, K = weight.shape
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), K)  # (not -1: K may be 0)
    M = x2.shape[0]
    if M == 0:
        return x.new_empty((*lead, N))
    if bias is not None:
        bias = bias.contiguous()  # the Triton paths index it without a stride
    if path == "torch" or K == 0:
        out = _run_torch(x2, weight, bias, scheme, weight_scale)
    elif path == "dequant":
        out = _run_dequant(x2, weight, bias, scheme, weight_scale)
    elif path in ("gemv", "gemv_mma"):
        out = _run_gemv(x2, weight, bias, scheme, weight_scale, cfg, mma=path == "gemv_mma")
    elif path == "gluon_w8a8":
        out = _run_gluon(x2, weight, bias, scheme, weight_scale, cfg)
    else:
        out = _run_triton(x2, weight, bias, scheme, weight_scale, cfg, w8a8=(path == "triton_w8a8"))
    return out.reshape(*lead, N)


def _dequant_weight(weight, weight_scale, scheme: QuantScheme, dtype) -> torch.Tensor:
    """The fp8 weight in ``dtype``: one Triton pass on a GPU (:mod:`moekit.kernels.dequant`), else (and where Triton
    is missing) :func:`moekit.quant.weights.dequantize_weights`; the same values bit for bit."""
    if weight.device.type == "cuda" and envs.optional_import("triton", "moekit.linear Triton paths", "using torch"):
        from moekit.kernels.dequant import dequant_fp8

        mode = {"block": 2, "channel": 1}.get(scheme.granularity, 0)
        return dequant_fp8(weight, weight_scale, mode, scheme.block_shape if mode == 2 else (1, 1), dtype)
    from moekit.quant.weights import dequantize_weights

    scale = weight_scale  # as quantize_weights gives them for a 2-D weight: blocks 2-D, channels [N], tensor 0-d
    if scheme.granularity != "block":
        scale = weight_scale.reshape(-1 if scheme.granularity == "channel" else ())
    return dequantize_weights(weight, scale, scheme, dtype=dtype)


def _scaled_mm_ok(x2, weight, scheme) -> bool:
    if x2.device.type != "cuda" or scheme.granularity == "block" or x2.dtype != torch.bfloat16:
        return False
    N, K = weight.shape
    if K % 16 or N % 16:
        return False
    from moekit.platform import has_feature, platform_of

    return has_feature("fp8_mma", platform_of(x2.device))[0]


def _run_torch(x2, weight, bias, scheme, weight_scale):
    if not scheme.is_quantized:
        return F.linear(x2, weight, bias)
    if _scaled_mm_ok(x2, weight, scheme):
        N = weight.shape[0]
        q, s = _quant_act(x2, x2.shape[1], weight.dtype)
        ws = weight_scale.reshape(1, -1)
        if ws.shape[1] != N:
            ws = ws.expand(1, N)
        out = torch._scaled_mm(q, weight.t(), scale_a=s, scale_b=ws.contiguous(), out_dtype=x2.dtype)
        return out if bias is None else out.add_(bias)
    return _run_dequant(x2, weight, bias, scheme, weight_scale)


def _run_dequant(x2, weight, bias, scheme, weight_scale):
    return F.linear(x2, _dequant_weight(weight, weight_scale, scheme, x2.dtype), bias)


def _quant_act(x2, group: int, fp8: torch.dtype):
    """Dynamic fp8 quantization (moekit.quant): q [M, K] in ``fp8``, scales float32 [M, cdiv(K, group)]."""
    from moekit.quant.ops import per_token_group_quant

    return per_token_group_quant(x2, group, fp8)


_COUNTERS: Dict[Tuple, torch.Tensor] = {}
_MAX_TILES = 1 << 16


def _tile_counters(device: torch.device, tiles: int) -> Optional[torch.Tensor]:
    """Zeroed int32 tile counters for the fused split-K reduction, one buffer per (device, stream) so that
    streams never share counters; each kernel leaves them zero. Made inside a CUDA-graph capture, the
    zeroing is part of the graph (it runs before the first use on every replay). None (use the reduce
    kernel) past _MAX_TILES tiles."""
    if tiles > _MAX_TILES:
        return None
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device.type, device.index, stream)
    buf = _COUNTERS.get(key)
    if buf is None:
        buf = torch.zeros(_MAX_TILES, dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


@dataclasses.dataclass(frozen=True)
class _WeightScale:
    """The weight-scale arguments of the Triton kernels (:mod:`moekit.kernels.linear_gemm`,
    :mod:`moekit.kernels.linear_gemv` and :mod:`moekit.kernels.linear_gemv_mma` share the ``W_SCALE`` modes):
    ``mode`` 0 none, 1 per output channel (``stride_n`` 0 for one per-tensor scale), 2 per ``(bn, bk)`` block;
    ``scale`` is a placeholder pointer for mode 0."""

    mode: int
    scale: torch.Tensor
    stride_n: int
    stride_k: int
    bn: int
    bk: int


def _kernel_operands(x2, weight, scheme: QuantScheme, weight_scale):
    """x2 and weight with contiguous rows (the kernels index their last dimension without a stride), and the
    :class:`_WeightScale` of the weight."""
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    if not scheme.is_quantized:  # unused pointer: the weight (x's dtype, as the output)
        return x2, weight, _WeightScale(0, weight, 0, 0, 1, 1)
    if scheme.granularity == "block":
        bn, bk = scheme.block_shape
        return x2, weight, _WeightScale(2, weight_scale, weight_scale.stride(0), weight_scale.stride(1), bn, bk)
    ws = weight_scale.reshape(-1)
    return x2, weight, _WeightScale(1, ws, ws.stride(0) if ws.numel() == weight.shape[0] else 0, 0, 1, 1)


def _run_gemv(x2, weight, bias, scheme: QuantScheme, weight_scale, cfg: LinearConfig, mma: bool):
    """The ``gemv`` path (``mma`` False) or the ``gemv_mma`` path: the two launchers take the same arguments."""
    if mma:
        from moekit.kernels.linear_gemv_mma import gemv_mma as launch
    else:
        from moekit.kernels.linear_gemv import gemv as launch

    x2, weight, w = _kernel_operands(x2, weight, scheme, weight_scale)
    return launch(x2, weight, bias, w.mode, w.scale, w.stride_n, w.stride_k, (w.bn, w.bk), cfg.BLOCK_SIZE_N,
                  cfg.BLOCK_SIZE_K, cfg.num_warps, cfg.num_stages)


def _run_triton(x2, weight, bias, scheme: QuantScheme, weight_scale, cfg: LinearConfig, w8a8: bool):
    import triton

    from moekit.kernels.linear_gemm import _linear_kernel, splitk_reduce

    x2, weight, w = _kernel_operands(x2, weight, scheme, weight_scale)
    M, K = x2.shape
    N = weight.shape[0]
    out = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    block_k = min(cfg.BLOCK_SIZE_K, w.bk) if w.mode == 2 else cfg.BLOCK_SIZE_K
    a, a_s, a_mode, s_am = x2, out, 0, 0
    if w8a8:
        group = w.bk if w.mode == 2 else K
        a, a_s = _quant_act(x2, group, weight.dtype)
        a_mode, s_am = (2 if w.mode == 2 else 1), a_s.stride(0)
    bm, bn = cfg.BLOCK_SIZE_M, cfg.BLOCK_SIZE_N
    split = max(1, min(cfg.SPLIT_K, triton.cdiv(K, block_k)))
    part, stride_split, lock, fused = out, 0, out, False
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    if split > 1:
        part = torch.empty((split, M, N), dtype=torch.float32, device=x2.device)
        stride_split = M * N
        if cfg.FUSED_REDUCE:
            lock = _tile_counters(x2.device, tiles)
            fused = lock is not None
            lock = lock if fused else out
    grid = (tiles, split)
    _linear_kernel[grid](
        a, weight, out, bias if bias is not None else out, a_s, w.scale, part, lock,
        M, N, K, split,
        a.stride(0), weight.stride(0), out.stride(0), stride_split, s_am, w.stride_n, w.stride_k,
        A_SCALE=a_mode, W_SCALE=w.mode, SCALE_BN=w.bn, SCALE_BK=w.bk,
        HAS_BIAS=bias is not None, USE_WS=split > 1, FUSED_REDUCE=fused,
        DOT_PRECISION="ieee" if x2.dtype == torch.float32 else "tf32",
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=block_k, GROUP_M=cfg.GROUP_SIZE_M,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split > 1 and not fused:
        splitk_reduce(part, out, bias)
    return out


def _run_gluon(x2, weight, bias, scheme: QuantScheme, weight_scale, cfg: LinearConfig):
    """The ``gluon_w8a8`` path: per-(token, 128) quantization of x, then the Gluon GEMM. A weight whose rows the
    kernel's 16-byte copies cannot read (an unaligned view) or of another fp8 format takes ``triton_w8a8``."""
    from moekit.kernels.moe_gemm_sm90 import linear_fp8_block_sm90
    from moekit.quant.triton_moe import copies_of_16_bytes

    if weight.dtype != torch.float8_e4m3fn or not copies_of_16_bytes(weight):
        return _run_triton(x2, weight, bias, scheme, weight_scale, DEFAULT_W8A8, w8a8=True)
    N = weight.shape[0]
    q, s = _quant_act(x2, 128, weight.dtype)  # (makes x2's rows contiguous itself, as the quantization needs)
    out = torch.empty((x2.shape[0], N), dtype=x2.dtype, device=x2.device)
    block_n = cfg.BLOCK_SIZE_N if cfg.BLOCK_SIZE_N in (128, 256) else 128
    linear_fp8_block_sm90(q, s, weight, weight_scale, out, block_n, cfg.GROUP_SIZE_M, cfg.SPLIT_K, bias)
    return out
