"""Numerical diagnostics for checking kernels against references.

Every kernel test and every benchmark in moekit compares an output against a
reference through this module, and users can do the same with their own
layers. It imports only ``torch`` and the standard library, so it can be
imported on its own.

What it provides:

* :func:`rel_frobenius_error`: ``||actual - expected||_F / ||expected||_F``
  computed in float64.
* :func:`assert_close`: an elementwise check ``|a - e| <= atol + rtol * |e|``
  that can let a set fraction of elements fail and can also bound the
  relative Frobenius error. It treats NaN and inf strictly. On failure it
  raises an :class:`AssertionError` with a full report: shapes, dtypes,
  NaN and inf counts, the worst elements and where they are, value ranges,
  the relative Frobenius error, and how many elements broke the tolerance.
  :func:`check_close` runs the same check and returns the result instead of
  raising, which suits benchmarks.
* :data:`TOLERANCES`, :func:`tolerance_for`, :func:`assert_close_to_reference`:
  the one table of tolerances, keyed by compute dtype or quantization scheme.
  Tests and benchmarks should read tolerances from here and nowhere else.
* :func:`poison_`: fills an output buffer with NaN (or, for integer dtypes,
  the dtype's largest value) before a kernel writes it, so that elements the
  kernel never writes show up in the comparison.
* :func:`seeded_generator`: a ``torch.Generator`` with a fresh random seed
  that callers can print. Set ``MOEKIT_TEST_SEED`` to replay a run.

Example::

    from moekit import testing

    out = testing.poison_(torch.empty_like(ref, dtype=torch.bfloat16))
    my_kernel(x, w, out=out)
    testing.assert_close_to_reference(out, ref, "bf16", name="moe output")
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from typing import Any, Union

import torch

__all__ = [
    "Tol",
    "TOLERANCES",
    "CloseResult",
    "rel_frobenius_error",
    "check_close",
    "assert_close",
    "tolerance_for",
    "assert_close_to_reference",
    "poison_",
    "seeded_generator",
]


# ---------------------------------------------------------------------------
# float64 upcast helpers
# ---------------------------------------------------------------------------


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(x)


def _compute_device(a: torch.Tensor, e: torch.Tensor) -> torch.device:
    # Stay on the GPU when both tensors live on the same CUDA device, so large
    # benchmark outputs are not copied to the host. Everything else (CPU,
    # mixed devices, backends without float64 such as MPS) is computed on CPU.
    if a.device == e.device and a.device.type == "cuda":
        return a.device
    return torch.device("cpu")


def _to_f64(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.is_complex():
        raise TypeError("moekit.testing does not support complex tensors")
    try:
        return t.to(device=device, dtype=torch.float64)
    except (RuntimeError, TypeError):
        # Some dtype/device pairs (for example exotic float8 variants on some
        # builds) cannot be cast on the device; the CPU cast always works.
        return t.to("cpu").to(torch.float64).to(device)


def _upcast_pair(actual: Any, expected: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a = _as_tensor(actual)
    e = _as_tensor(expected)
    dev = _compute_device(a, e)
    return _to_f64(a, dev), _to_f64(e, dev)


def _fro(t: torch.Tensor) -> float:
    if t.numel() == 0:
        return 0.0
    flat = t.reshape(-1)
    n = float(torch.linalg.vector_norm(flat, ord=2))
    if math.isinf(n):
        # The squares may have overflowed although the values are finite
        # (|x| > ~1e154). Rescale by the largest magnitude and try again.
        m = float(flat.abs().max())
        if math.isfinite(m) and m > 0.0:
            n = m * float(torch.linalg.vector_norm(flat / m, ord=2))
    return n


def _sum_is_finite(t: torch.Tensor) -> bool:
    """Cheap test that every element is finite (a false 'no' only on overflow)."""
    return bool(torch.isfinite(t.sum()))


def _rel_fro_f64(a: torch.Tensor, e: torch.Tensor) -> float:
    """Relative Frobenius error of two float64 tensors of one shape."""
    if bool(torch.isnan(a).any()) or bool(torch.isnan(e).any()):
        return float("nan")
    norm_e = _fro(e)
    if norm_e == 0.0:
        return _fro(a)
    return _fro(a - e) / norm_e


def rel_frobenius_error(actual: Any, expected: Any) -> float:
    """Return ``||actual - expected||_F / ||expected||_F``, computed in float64.

    Any dtype works (bf16, fp8 and integer tensors are upcast to float64
    first), and so do CPU and CUDA tensors.

    Special cases:

    * If either tensor holds a NaN, the result is ``float('nan')``.
    * If ``||expected||_F == 0``, the result is ``||actual||_F``, the absolute
      error. So two all-zero tensors, or two empty ones, give ``0.0``.
    * An inf gives ``inf`` or ``nan``, following IEEE arithmetic.

    Raises:
        ValueError: if the shapes differ.
    """
    a, e = _upcast_pair(actual, expected)
    if a.shape != e.shape:
        raise ValueError(
            f"rel_frobenius_error: shape mismatch: actual {tuple(a.shape)} vs "
            f"expected {tuple(e.shape)}"
        )
    return _rel_fro_f64(a, e)


# ---------------------------------------------------------------------------
# elementwise comparison
# ---------------------------------------------------------------------------


def _unravel(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    idx = []
    for dim in reversed(tuple(shape)):
        idx.append(flat_index % dim)
        flat_index //= dim
    return tuple(reversed(idx))


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _nonfinite_counts(t: torch.Tensor) -> tuple[int, int, int]:
    return (
        int(torch.isnan(t).sum()),
        int(torch.isposinf(t).sum()),
        int(torch.isneginf(t).sum()),
    )


@dataclasses.dataclass
class CloseResult:
    """What :func:`check_close` found.

    Attributes:
        ok: whether the comparison passed.
        failures: one line for each reason it failed (empty when ``ok``).
        rel_fro: relative Frobenius error. When both tensors hold the same
            infs at the same places, only the elements where ``expected`` is
            finite count.
        max_abs_diff: largest ``|a - e|`` over pairs where both are finite
            (``0.0`` when there are none).
        max_abs_index: where that largest difference is, as a
            multi-dimensional index (``None`` when there is none).
        num_mismatched: how many elements broke the tolerance, counting
            elements that break the NaN/inf rules.
        num_allowed: how many mismatched elements ``max_mismatch_frac`` allows.
        numel: the number of elements compared.
        report: the full human-readable report.
    """

    ok: bool
    failures: list[str]
    rel_fro: float
    max_abs_diff: float
    max_abs_index: tuple[int, ...] | None
    num_mismatched: int
    num_allowed: int
    numel: int
    report: str

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return self.report


def _describe(label: str, orig: torch.Tensor, t64: torch.Tensor) -> str:
    nan, pinf, ninf = _nonfinite_counts(t64)
    fin = t64[torch.isfinite(t64)]
    if fin.numel():
        rng = f"[{_fmt(float(fin.min()))}, {_fmt(float(fin.max()))}]"
    else:
        rng = "n/a (no finite values)"
    return (
        f"  {label:<9} shape={tuple(orig.shape)} dtype={orig.dtype} "
        f"device={orig.device}  NaN={nan} +inf={pinf} -inf={ninf}  "
        f"finite range={rng}"
    )


def _positions(mask: torch.Tensor, shape: torch.Size, limit: int = 5) -> str:
    flat = torch.nonzero(mask.reshape(-1)).reshape(-1)[:limit].tolist()
    s = ", ".join(str(_unravel(i, shape)) for i in flat)
    more = int(mask.sum()) - len(flat)
    return s + (f", ... ({more} more)" if more > 0 else "")


def check_close(
    actual: Any,
    expected: Any,
    *,
    rtol: float,
    atol: float,
    max_mismatch_frac: float = 0.0,
    max_rel_fro: float | None = None,
    name: str = "output",
) -> CloseResult:
    """Run the comparison that :func:`assert_close` runs and return the result.

    This never raises because the tensors differ, though it does raise
    ``ValueError`` on bad arguments. A shape mismatch comes back as a failed
    result. The report is in ``result.report``, and ``bool(result)`` says
    whether the check passed.
    """
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    if not 0.0 <= max_mismatch_frac <= 1.0:
        raise ValueError(f"max_mismatch_frac must be in [0, 1], got {max_mismatch_frac}")
    if max_rel_fro is not None and max_rel_fro < 0:
        raise ValueError(f"max_rel_fro must be >= 0, got {max_rel_fro}")

    a_orig = _as_tensor(actual)
    e_orig = _as_tensor(expected)
    header = (
        f"{name}: not close to reference (rtol={_fmt(rtol)}, atol={_fmt(atol)}, "
        f"max_mismatch_frac={_fmt(max_mismatch_frac)}, max_rel_fro="
        f"{'None' if max_rel_fro is None else _fmt(max_rel_fro)})"
    )

    if a_orig.shape != e_orig.shape:
        msg = (
            f"{name}: shape mismatch: actual shape {tuple(a_orig.shape)} "
            f"(dtype={a_orig.dtype}) vs expected shape {tuple(e_orig.shape)} "
            f"(dtype={e_orig.dtype})"
        )
        return CloseResult(False, [msg], float("nan"), float("nan"), None, 0, 0, 0, msg)

    a, e = _upcast_pair(a_orig, e_orig)
    shape = a.shape
    numel = a.numel()
    if numel == 0:
        msg = f"{name}: empty tensors, shape {tuple(shape)}"
        return CloseResult(True, [], 0.0, 0.0, None, 0, 0, 0, msg)

    # Fast path: a finite float64 sum means every element is finite (a NaN or
    # inf would propagate, and values upcast from <= 32-bit floats cannot
    # overflow a float64 sum). This skips the costly isfinite/isnan masks for
    # large, clean tensors.
    all_finite = _sum_is_finite(a) and _sum_is_finite(e)
    if all_finite:
        diff = (a - e).abs_()
        bound = e.abs().mul_(rtol).add_(atol)
        bad = diff > bound
        num_bad = int(torch.count_nonzero(bad))
        num_hard = 0
        norm_e = _fro(e)
        rel_fro = _fro(diff) / norm_e if norm_e > 0.0 else _fro(a)
        rel_fro_note = ""
        both_fin = None
    else:
        a_fin = torch.isfinite(a)
        e_fin = torch.isfinite(e)
        both_fin = a_fin & e_fin
        # The NaN/inf rules. Breaking one fails the check whatever the
        # tolerances. NaN never passes, and an inf passes only where the
        # other tensor holds the same inf.
        same_inf = torch.isinf(a) & (a == e)
        hard_bad = ~(both_fin | same_inf)
        num_hard = int(torch.count_nonzero(hard_bad))
        diff = torch.where(both_fin, a - e, torch.zeros_like(a)).abs_()
        bound = e.abs().mul_(rtol).add_(atol)
        bad = (diff > bound) | hard_bad
        num_bad = int(torch.count_nonzero(bad))
        if num_hard == 0 and not bool(e_fin.all()):
            # Only matching infs: measure over elements with finite expected.
            rel_fro = _rel_fro_f64(a[e_fin], e[e_fin])
            rel_fro_note = " (over elements where expected is finite)"
        elif num_hard == 0:
            # All finite; we only got here because a float64 sum overflowed.
            rel_fro = _rel_fro_f64(a, e)
            rel_fro_note = ""
        else:
            rel_fro = _rel_fro_f64(a, e)
            if bool(both_fin.any()):
                finite_part = _rel_fro_f64(a[both_fin], e[both_fin])
                rel_fro_note = f" (over elements finite in both: {_fmt(finite_part)})"
            else:
                rel_fro_note = ""

    # The tiny epsilon keeps a product like 0.29 * 100 = 28.999... from
    # flooring to 28.
    num_allowed = int(math.floor(max_mismatch_frac * numel + 1e-6))

    failures: list[str] = []
    if num_hard:
        a_nan = torch.isnan(a)
        e_nan = torch.isnan(e)
        n_nan_a, n_nan_e = int(a_nan.sum()), int(e_nan.sum())
        if n_nan_a:
            failures.append(f"actual has {n_nan_a} NaN (NaN never passes)")
        if n_nan_e:
            failures.append(f"expected has {n_nan_e} NaN (NaN never passes)")
        n_inf_bad = num_hard - int(torch.count_nonzero(a_nan | e_nan))
        if n_inf_bad:
            failures.append(
                f"{n_inf_bad} element(s) with inf in actual or expected but not the "
                f"same inf in both"
            )
    if num_bad > num_allowed:
        failures.append(
            f"{num_bad} of {numel} elements ({100.0 * num_bad / numel:.4g}%) are beyond "
            f"tolerance; {num_allowed} allowed (max_mismatch_frac={_fmt(max_mismatch_frac)})"
        )
    if max_rel_fro is not None and num_hard == 0 and not (rel_fro <= max_rel_fro):
        failures.append(
            f"relative Frobenius error {_fmt(rel_fro)} > max_rel_fro {_fmt(max_rel_fro)}"
        )
    ok = not failures

    # ---- build the report ------------------------------------------------
    flat_a = a.reshape(-1)
    flat_e = e.reshape(-1)
    flat_d = diff.reshape(-1)  # zero where either tensor is non-finite
    any_finite_pair = all_finite or bool(both_fin.any())
    max_abs_index: tuple[int, ...] | None = None
    max_abs = 0.0
    if any_finite_pair:
        i = int(torch.argmax(flat_d))
        max_abs = float(flat_d[i])
        max_abs_index = _unravel(i, shape)
        max_abs_line = (
            f"  max abs diff: {_fmt(max_abs)} at index {max_abs_index} "
            f"(actual={_fmt(float(flat_a[i]))}, expected={_fmt(float(flat_e[i]))})"
        )
    else:
        max_abs_line = "  max abs diff: n/a (no element is finite in both tensors)"

    if ok:
        # Keep a passing check cheap: skip the detailed diagnostics.
        lines = [
            f"{name}: close to reference (rtol={_fmt(rtol)}, atol={_fmt(atol)})",
            max_abs_line,
            f"  relative Frobenius error: {_fmt(rel_fro)}{rel_fro_note}",
            f"  beyond tolerance: {num_bad} of {numel}, allowed {num_allowed}",
        ]
        return CloseResult(ok, failures, rel_fro, max_abs, max_abs_index, num_bad,
                           num_allowed, numel, "\n".join(lines))

    lines = [header, "failed because:"]
    lines.extend(f"  - {f}" for f in failures)
    lines.append(_describe("actual:", a_orig, a))
    lines.append(_describe("expected:", e_orig, e))
    lines.append(max_abs_line)
    if any_finite_pair:
        # Relative difference |a - e| / |e|. Where e == 0 it is 0 if a == 0,
        # else inf. Non-finite pairs have diff == 0, so they never win.
        abs_e = flat_e.abs()
        nz = abs_e > 0
        rel = torch.where(nz, flat_d / torch.where(nz, abs_e, torch.ones_like(abs_e)),
                          torch.where(flat_d > 0, math.inf, 0.0))
        j = int(torch.argmax(rel))
        lines.append(
            f"  max rel diff: {_fmt(float(rel[j]))} at index {_unravel(j, shape)} "
            f"(actual={_fmt(float(flat_a[j]))}, expected={_fmt(float(flat_e[j]))})"
        )
        ratio = flat_d / bound.reshape(-1).clamp_min(1e-300)
        w = int(torch.argmax(ratio))
        lines.append(
            f"  worst |a-e| / (atol + rtol*|e|): {_fmt(float(ratio[w]))} at index "
            f"{_unravel(w, shape)}"
        )
    lines.append(f"  relative Frobenius error: {_fmt(rel_fro)}{rel_fro_note}")
    lines.append(
        f"  beyond tolerance: {num_bad} of {numel} ({100.0 * num_bad / numel:.4g}%), "
        f"allowed {num_allowed} ({100.0 * max_mismatch_frac:.4g}%)"
    )
    if num_bad:
        lines.append(f"  first mismatches at: {_positions(bad, shape)}")
    if num_hard:
        if bool(a_nan.any()):
            lines.append(f"  first NaN in actual at: {_positions(a_nan, shape)}")
        if bool(e_nan.any()):
            lines.append(f"  first NaN in expected at: {_positions(e_nan, shape)}")

    return CloseResult(
        ok=ok,
        failures=failures,
        rel_fro=rel_fro,
        max_abs_diff=max_abs,
        max_abs_index=max_abs_index,
        num_mismatched=num_bad,
        num_allowed=num_allowed,
        numel=numel,
        report="\n".join(lines),
    )


def assert_close(
    actual: Any,
    expected: Any,
    *,
    rtol: float,
    atol: float,
    max_mismatch_frac: float = 0.0,
    max_rel_fro: float | None = None,
    name: str = "output",
) -> None:
    """Assert that ``actual`` matches ``expected``, and explain in detail if not.

    Both tensors are upcast to float64. On CPU this works for any dtype,
    bf16, fp8 and integer tensors included. Two CUDA tensors on the same
    device are compared on that device; anything else is compared on CPU.
    The shapes must be equal, with no broadcasting.

    Pass/fail rules:

    * An element is *within tolerance* if ``|a - e| <= atol + rtol * |e|``.
    * At most ``floor(max_mismatch_frac * numel)`` elements may be beyond
      tolerance. The default is 0.
    * If ``max_rel_fro`` is set, :func:`rel_frobenius_error` must be
      ``<= max_rel_fro``.
    * NaN anywhere fails, whatever the tolerances, including NaN in
      ``expected`` and NaN at the same place in both tensors. An inf fails
      unless the other tensor holds the same inf at that place. These
      elements always fail the check and also count as beyond tolerance.
    * Empty tensors of equal shape pass.

    Raises:
        AssertionError: on failure. The message names ``name`` and gives the
            shapes and dtypes, the NaN/inf counts of each tensor, the largest
            absolute and relative differences with their multi-dimensional
            indices and values, the finite value ranges, the relative
            Frobenius error, and how many elements were beyond tolerance
            (count and fraction) against how many were allowed. A shape
            mismatch gives an AssertionError that names both shapes.
        ValueError: on bad arguments (negative tolerances, or a fraction
            outside [0, 1]).
    """
    result = check_close(
        actual,
        expected,
        rtol=rtol,
        atol=atol,
        max_mismatch_frac=max_mismatch_frac,
        max_rel_fro=max_rel_fro,
        name=name,
    )
    if not result.ok:
        raise AssertionError(result.report)


# ---------------------------------------------------------------------------
# tolerance table
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tol:
    """Tolerances for one compute dtype or quantization scheme.

    Attributes:
        rtol: elementwise relative tolerance.
        atol: elementwise absolute tolerance. :func:`assert_close_to_reference`
            applies it in units of the reference's RMS, so the check does not
            depend on the output's scale. To pass it straight to
            :func:`assert_close`, scale it yourself unless the output's RMS
            is about 1.
        max_rel_fro: bound on the relative Frobenius error. This is the main,
            scale-free criterion.
        max_mismatch_frac: fraction of elements allowed beyond the
            elementwise tolerance.
    """

    rtol: float
    atol: float
    max_rel_fro: float
    max_mismatch_frac: float = 0.0


# How these values were chosen
# ----------------------------
# The setting is a whole MoE layer output (gate/up GEMM, SiLU*up, down GEMM,
# top-k weighted sum) compared with a float64 reference computed from the same
# inputs. For weight-quantized schemes the reference uses the *dequantized*
# weights, so only the kernel's own error is measured, not the quantization
# error of the weights.
#
# max_rel_fro is the main criterion. The values were calibrated by simulating
# a SwiGLU expert (M=512, H=1024, I=512, randn inputs, weights ~ 1/sqrt(fan_in))
# with the rounding each scheme does. Measured relative Frobenius errors:
#   fp32 (exact IEEE)                        ~1e-7
#   tf32 operands (Triton fp32 dot on GPU)   ~5e-4
#   fp16 operands, fp32 accumulate           ~3e-4
#   bf16 operands, fp32 accumulate           ~2.4e-3
#   fp8 e4m3 w8a8, dynamic act quant         ~4.3e-2 (block), ~4.6e-2 (tensor/channel)
#   int8 w8a8 per-channel/per-token          ~2.1e-2
#   weight-only int8/int4/mxfp4, bf16 acts   ~2.4e-3 (vs dequantized-weight reference)
# Each budget is about 2-4x the measured error. Real bugs (wrong expert,
# wrong row, missed tile, bad scale) give errors of order 1e-1 to 1, well
# above every budget.
#
# "fp32" must also accept Triton's default tf32 dot on NVIDIA GPUs, so it
# shares tf32's budget (2e-3). Use "fp64" for float64 kernels and exact CPU
# paths compared in float64.
#
# Elementwise bounds: rtol = atol = 5 * max_rel_fro, where atol is in units of
# the reference's RMS. Per-element errors behave roughly like Gaussian noise
# with sigma ~= rel_fro * RMS, and the largest element's error measured
# 5-9 sigma. A 5x bound on a budget 2-4x above the real error leaves 10-20
# sigma of headroom. Schemes that quantize activations dynamically get a small
# allowed mismatch fraction (1e-4) for rare rounding-boundary outliers. It is
# kept far below 1e-3, so that one wrong token row out of 1000 still fails.
TOLERANCES: dict[str, Tol] = {
    "fp64": Tol(rtol=1e-9, atol=1e-9, max_rel_fro=1e-10),
    "fp32": Tol(rtol=1e-2, atol=1e-2, max_rel_fro=2e-3),
    "tf32": Tol(rtol=1e-2, atol=1e-2, max_rel_fro=2e-3),
    "fp16": Tol(rtol=1e-2, atol=1e-2, max_rel_fro=2e-3),
    "bf16": Tol(rtol=5e-2, atol=5e-2, max_rel_fro=1e-2),
    "fp8_block": Tol(rtol=0.4, atol=0.4, max_rel_fro=8e-2, max_mismatch_frac=1e-4),
    "fp8_tensor": Tol(rtol=0.4, atol=0.4, max_rel_fro=8e-2, max_mismatch_frac=1e-4),
    "fp8_channel": Tol(rtol=0.4, atol=0.4, max_rel_fro=8e-2, max_mismatch_frac=1e-4),
    "int8_channel": Tol(rtol=0.2, atol=0.2, max_rel_fro=4e-2, max_mismatch_frac=1e-4),
    "int8_weight_only": Tol(rtol=5e-2, atol=5e-2, max_rel_fro=1e-2),
    "int4_weight_only": Tol(rtol=5e-2, atol=5e-2, max_rel_fro=1e-2),
    "mxfp4": Tol(rtol=5e-2, atol=5e-2, max_rel_fro=1e-2),
    "mxfp4_mma": Tol(rtol=5e-2, atol=5e-2, max_rel_fro=1e-2),  # the same codes in another order
}

_DTYPE_KEYS: dict[torch.dtype, str] = {
    torch.float64: "fp64",
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
}
# Every fp8 scheme has the same budget, so a bare fp8 dtype maps to the
# per-tensor entry.
for _name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"):
    if hasattr(torch, _name):
        _DTYPE_KEYS[getattr(torch, _name)] = "fp8_tensor"

_ALIASES: dict[str, str] = {
    "float64": "fp64",
    "double": "fp64",
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
}


def tolerance_for(dtype_or_scheme: Union[torch.dtype, str, Tol]) -> Tol:
    """Look up the :class:`Tol` for a compute dtype or a quantization scheme.

    Accepted arguments:

    * A key of :data:`TOLERANCES`, such as ``"bf16"``, ``"fp8_block"`` or
      ``"mxfp4"``. Case and ``-``/``_`` do not matter.
    * An alias: ``"float32"``, ``"half"``, ``"bfloat16"``, ``"torch.float16"``
      and the like.
    * A ``torch.dtype``: float64/32/16 and bfloat16 map to their entries, and
      float8 dtypes map to ``"fp8_tensor"``.
    * A :class:`Tol`, which is returned unchanged.

    Raises:
        KeyError: for an unknown key or dtype. The message lists the valid keys.
    """
    if isinstance(dtype_or_scheme, Tol):
        return dtype_or_scheme
    valid = ", ".join(sorted(TOLERANCES))
    if isinstance(dtype_or_scheme, torch.dtype):
        key = _DTYPE_KEYS.get(dtype_or_scheme)
        if key is None:
            raise KeyError(
                f"no tolerance entry for dtype {dtype_or_scheme}; pass a scheme name, "
                f"one of: {valid}"
            )
        return TOLERANCES[key]
    if isinstance(dtype_or_scheme, str):
        key = dtype_or_scheme.strip().lower().replace("-", "_")
        if key.startswith("torch."):
            key = key[len("torch."):]
        key = _ALIASES.get(key, key)
        if key in TOLERANCES:
            return TOLERANCES[key]
        raise KeyError(f"unknown tolerance key {dtype_or_scheme!r}; valid keys: {valid}")
    raise KeyError(
        f"tolerance_for expects a torch.dtype, a str or a Tol, got "
        f"{type(dtype_or_scheme).__name__}; valid keys: {valid}"
    )


def assert_close_to_reference(
    actual: Any,
    reference: Any,
    key: Union[torch.dtype, str, Tol],
    *,
    name: str = "output",
    relative_atol: bool = True,
) -> None:
    """Assert ``actual`` against a (float64) reference, using the tolerance table.

    ``key`` is resolved by :func:`tolerance_for`. The function then calls
    :func:`assert_close` with the entry's ``rtol``, ``max_mismatch_frac`` and
    ``max_rel_fro``. By default the entry's ``atol`` is multiplied by the RMS
    of the reference's finite values, which makes the check independent of
    the output's scale. If that RMS is 0, or there are no finite values,
    ``atol`` is used as is. Pass ``relative_atol=False`` to use ``atol`` as
    an absolute tolerance.

    Raises:
        AssertionError: on failure, with :func:`assert_close`'s report. The
            report names the key.
        KeyError: for an unknown key.
    """
    tol = tolerance_for(key)
    atol = tol.atol
    if relative_atol:
        ref = _as_tensor(reference)
        if ref.numel():
            r64 = _to_f64(ref, ref.device if ref.device.type == "cuda" else torch.device("cpu"))
            if not _sum_is_finite(r64):
                r64 = r64[torch.isfinite(r64)]
            if r64.numel():
                rms = _fro(r64) / math.sqrt(r64.numel())
                if rms > 0.0 and math.isfinite(rms):
                    atol = tol.atol * rms
    label = key if isinstance(key, str) else str(key)
    assert_close(
        actual,
        reference,
        rtol=tol.rtol,
        atol=atol,
        max_mismatch_frac=tol.max_mismatch_frac,
        max_rel_fro=tol.max_rel_fro,
        name=f"{name} [tolerance {label}]",
    )


# ---------------------------------------------------------------------------
# poisoning and seeding
# ---------------------------------------------------------------------------


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` in place with a value no correct kernel would write, and return ``t``.

    * Floating dtypes, fp8 included, get NaN. Float8 formats without a NaN
      encoding get their largest value.
    * Integer dtypes get the dtype's largest value (``torch.iinfo(dtype).max``).
    * ``torch.bool`` gets ``True``.
    * Packed or exotic dtypes, such as ``float4_e2m1fn_x2``, have every byte
      set to ``0xFF``.

    Poison output buffers before a kernel writes them. Then any element the
    kernel skips fails :func:`assert_close`, either as a NaN or as a value far
    from the reference.
    """
    dt = t.dtype
    with torch.no_grad():
        if dt == torch.bool:
            t.fill_(True)
            return t
        if dt.is_floating_point:
            try:
                t.fill_(float("nan"))
                return t
            except (RuntimeError, TypeError):
                try:
                    t.fill_(torch.finfo(dt).max)
                    return t
                except (RuntimeError, TypeError):
                    pass
        elif not dt.is_complex:
            try:
                t.fill_(torch.iinfo(dt).max)
                return t
            except (RuntimeError, TypeError):
                pass
        else:
            t.fill_(complex(float("nan"), float("nan")))
            return t
        # Packed or exotic dtypes: set every byte to 0xFF.
        t.view(torch.uint8).fill_(0xFF)
    return t


def seeded_generator(seed: int | None = None, device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """Return a ``torch.Generator`` on ``device`` seeded with ``seed``.

    When ``seed`` is None, the seed comes from the environment variable
    ``MOEKIT_TEST_SEED`` if it is set, otherwise from a fresh random 32-bit
    value. Callers should put ``gen.initial_seed()`` in their failure
    messages. To replay a failure, set ``MOEKIT_TEST_SEED`` to that value.
    """
    if seed is None:
        from moekit import envs

        env = envs.get("MOEKIT_TEST_SEED")
        seed = env if env is not None else secrets.randbits(32)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
