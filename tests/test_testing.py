"""Tests for moekit.testing, the numerical diagnostics that the other tests use."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import re
import sys

import pytest
import torch

try:
    from moekit import testing as mt
except Exception:  # pragma: no cover - package __init__ may be mid-edit; load the file directly
    _path = pathlib.Path(__file__).resolve().parents[1] / "src" / "moekit" / "testing.py"
    _spec = importlib.util.spec_from_file_location("moekit_testing_standalone", _path)
    mt = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = mt  # dataclasses looks the module up in sys.modules
    _spec.loader.exec_module(mt)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(tuple(shape), generator=_gen(seed), dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------------------
# rel_frobenius_error
# ---------------------------------------------------------------------------


def test_rel_fro_basic():
    e = torch.tensor([3.0, 4.0])
    a = torch.tensor([3.0, 4.5])
    assert mt.rel_frobenius_error(a, e) == pytest.approx(0.5 / 5.0)
    assert mt.rel_frobenius_error(e, e) == 0.0


def test_rel_fro_zero_expected_returns_abs_norm():
    e = torch.zeros(4)
    a = torch.tensor([0.0, 3.0, 4.0, 0.0])
    assert mt.rel_frobenius_error(a, e) == pytest.approx(5.0)
    assert mt.rel_frobenius_error(e, e) == 0.0
    assert mt.rel_frobenius_error(torch.empty(0, 3), torch.empty(0, 3)) == 0.0


@pytest.mark.parametrize("where", ["actual", "expected"])
def test_rel_fro_nan(where):
    a = torch.ones(5)
    e = torch.ones(5)
    (a if where == "actual" else e)[2] = float("nan")
    assert math.isnan(mt.rel_frobenius_error(a, e))


def test_rel_fro_float64_accumulation_and_dtypes():
    e = _randn(64, 64, dtype=torch.float64)
    a = e.to(torch.bfloat16)
    r = mt.rel_frobenius_error(a, e)
    assert 1e-4 < r < 1e-2  # bf16 rounding error is ~2e-3
    assert isinstance(r, float)
    # integer tensors work
    assert mt.rel_frobenius_error(torch.arange(4), torch.arange(4)) == 0.0


def test_rel_fro_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        mt.rel_frobenius_error(torch.zeros(2, 3), torch.zeros(3, 2))


# ---------------------------------------------------------------------------
# assert_close: passing cases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(7,), (4, 5), (2, 3, 4), ()])
def test_assert_close_passes_on_rounded_copy(dtype, shape):
    e = _randn(*shape, dtype=torch.float64)
    a = e.to(dtype)
    mt.assert_close(a, e, rtol=1e-2, atol=1e-2, max_rel_fro=1e-2)
    mt.assert_close(e, e, rtol=0.0, atol=0.0, max_rel_fro=0.0)


def test_assert_close_tolerance_boundary_is_inclusive():
    e = torch.tensor([1.0, 2.0], dtype=torch.float64)
    a = e + torch.tensor([0.5, 0.0], dtype=torch.float64)  # |diff| == atol + rtol*|e| == 0.25 + 0.25
    mt.assert_close(a, e, rtol=0.25, atol=0.25)
    with pytest.raises(AssertionError):
        mt.assert_close(a, e, rtol=0.25, atol=0.2499)


def test_assert_close_accepts_non_tensor_expected():
    mt.assert_close(torch.tensor([1.0, 2.0]), [1.0, 2.0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.int8, torch.bool])
def test_assert_close_exotic_dtypes(dtype):
    e = torch.tensor([[0.0, 1.0], [2.0, -3.0]]) if dtype not in (torch.bool,) else torch.tensor([True, False])
    if dtype is torch.bool:
        a = e.clone()
    else:
        a = e.to(dtype)
    mt.assert_close(a, e, rtol=0, atol=0)


def test_assert_close_bf16_report_mentions_dtype():
    e = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    a = torch.tensor([1.0, 2.0, 3.5], dtype=torch.bfloat16)
    with pytest.raises(AssertionError) as ei:
        mt.assert_close(a, e, rtol=1e-2, atol=1e-2)
    msg = str(ei.value)
    assert "torch.bfloat16" in msg and "torch.float64" in msg
    assert "max abs diff: 0.5 at index (2,)" in msg


# ---------------------------------------------------------------------------
# assert_close: NaN / inf
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["actual", "expected", "both"])
@pytest.mark.parametrize("frac", [0.0, 0.5, 1.0])
def test_nan_fails_even_with_huge_tolerance(where, frac):
    a = torch.ones(3, 4)
    e = torch.ones(3, 4)
    if where in ("actual", "both"):
        a[1, 2] = float("nan")
    if where in ("expected", "both"):
        e[1, 2] = float("nan")
    with pytest.raises(AssertionError) as ei:
        mt.assert_close(a, e, rtol=1e30, atol=1e30, max_mismatch_frac=frac, max_rel_fro=1e30)
    msg = str(ei.value)
    assert "NaN never passes" in msg
    assert "(1, 2)" in msg  # position of the NaN


def test_nan_counts_in_report():
    a = torch.zeros(10)
    a[[1, 4, 7]] = float("nan")
    e = torch.zeros(10)
    with pytest.raises(AssertionError) as ei:
        mt.assert_close(a, e, rtol=1, atol=1)
    msg = str(ei.value)
    assert "actual has 3 NaN" in msg
    assert re.search(r"actual:\s+shape=\(10,\).*NaN=3 ", msg)
    assert re.search(r"expected:\s+shape=\(10,\).*NaN=0 ", msg)
    assert "first NaN in actual at: (1,), (4,), (7,)" in msg


@pytest.mark.parametrize("val", [float("inf"), float("-inf")])
def test_inf_in_actual_fails_where_expected_finite(val):
    a = torch.ones(4)
    a[3] = val
    e = torch.ones(4)
    with pytest.raises(AssertionError) as ei:
        mt.assert_close(a, e, rtol=1e30, atol=1e30, max_mismatch_frac=1.0)
    msg = str(ei.value)
    assert ("+inf=1" in msg) or ("-inf=1" in msg)
    assert "inf in actual or expected" in msg


def test_matching_inf_passes_and_mismatched_inf_fails():
    e = torch.tensor([1.0, float("inf"), float("-inf")])
    mt.assert_close(e.clone(), e, rtol=0, atol=0, max_rel_fro=0.0)
    a = torch.tensor([1.0, float("-inf"), float("-inf")])
    with pytest.raises(AssertionError):
        mt.assert_close(a, e, rtol=1e30, atol=1e30, max_mismatch_frac=1.0)
    a = torch.tensor([1.0, 5.0, float("-inf")])  # finite actual where expected is inf
    with pytest.raises(AssertionError):
        mt.assert_close(a, e, rtol=1e30, atol=1e30, max_mismatch_frac=1.0)


def test_huge_finite_values_take_slow_path_correctly():
    # float64 sums overflow here, so the all-finite fast path is skipped.
    e = torch.full((4,), 5e307, dtype=torch.float64)
    mt.assert_close(e.clone(), e, rtol=1e-12, atol=0, max_rel_fro=0.0)
    a = e.clone()
    a[2] = -5e307
    with pytest.raises(AssertionError) as ei:
        mt.assert_close(a, e, rtol=1e-3, atol=0)
    assert "max abs diff: 1e+308 at index (2,)" in str(ei.value)
    assert mt.rel_frobenius_error(a, e) == pytest.approx(1.0)  # no overflow in the norm


def test_poisoned_output_fails():
    e = _randn(8, 16, dtype=torch.float64)
    out = mt.poison_(torch.empty(8, 16, dtype=torch.bfloat16))
    out[:, :15] = e[:, :15].to(torch.bfloat16)  # "kernel" forgot the last column
    with pytest.raises(AssertionError, match="8 NaN"):
        mt.assert_close(out, e, rtol=1, atol=1, max_mismatch_frac=0.5)


# ---------------------------------------------------------------------------
# assert_close: mismatch fraction, rel Fro, report
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_bad,frac,passes",
    [(0, 0.0, True), (1, 0.0, False), (1, 0.01, True), (2, 0.01, False), (29, 0.29, True), (30, 0.29, False)],
)
def test_mismatch_fraction(n_bad, frac, passes):
    e = torch.ones(100, dtype=torch.float64)
    a = e.clone()
    a[:n_bad] = 10.0
    kwargs = dict(rtol=1e-3, atol=1e-3, max_mismatch_frac=frac)
    r = mt.check_close(a, e, **kwargs)
    assert r.ok is passes and r.num_mismatched == n_bad
    if passes:
        mt.assert_close(a, e, **kwargs)
    else:
        with pytest.raises(AssertionError) as ei:
            mt.assert_close(a, e, **kwargs)
        msg = str(ei.value)
        assert f"{n_bad} of 100 elements" in msg
        assert f"{int(math.floor(frac * 100 + 1e-6))} allowed" in msg


def test_max_rel_fro_checked_independently():
    e = torch.ones(100, dtype=torch.float64)
    a = e * 1.05  # every element within rtol=0.1, but rel Fro = 0.05
    mt.assert_close(a, e, rtol=0.1, atol=0.0, max_rel_fro=0.06)
    with pytest.raises(AssertionError, match=r"relative Frobenius error 0\.05 > max_rel_fro 0\.01"):
        mt.assert_close(a, e, rtol=0.1, atol=0.0, max_rel_fro=0.01)


def test_report_contents():
    e = torch.zeros(3, 4, 5, dtype=torch.float64)
    e[..., :] = torch.arange(5, dtype=torch.float64) + 1.0
    a = e.clone().to(torch.float32)
    a[1, 2, 3] += 7.0  # max abs diff
    a[2, 0, 0] += 1.5  # max rel diff (|e| = 1)
    with pytest.raises(AssertionError) as ei:
        mt.assert_close(a, e, rtol=1e-3, atol=1e-3, name="moe out")
    msg = str(ei.value)
    assert msg.startswith("moe out: not close")
    assert "max abs diff: 7 at index (1, 2, 3)" in msg
    assert "max rel diff: 1.75 at index (1, 2, 3)" in msg
    assert "shape=(3, 4, 5)" in msg and "dtype=torch.float32" in msg
    assert "finite range=[1, 11]" in msg  # actual range
    assert "finite range=[1, 5]" in msg  # expected range
    assert "relative Frobenius error:" in msg
    assert "beyond tolerance: 2 of 60" in msg and "allowed 0" in msg
    assert "first mismatches at: (1, 2, 3), (2, 0, 0)" in msg


def test_max_rel_diff_index():
    e = torch.tensor([[100.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    a = e.clone()
    a[0, 0] += 5.0  # abs 5, rel 0.05
    a[1, 0] += 1.0  # abs 1, rel 0.5
    with pytest.raises(AssertionError) as ei:
        mt.assert_close(a, e, rtol=0, atol=1e-6)
    msg = str(ei.value)
    assert "max abs diff: 5 at index (0, 0)" in msg
    assert "max rel diff: 0.5 at index (1, 0)" in msg


def test_check_close_result_fields():
    e = torch.ones(2, 3)
    a = e.clone()
    a[1, 1] = 3.0
    r = mt.check_close(a, e, rtol=0, atol=0.5)
    assert not r and r.max_abs_diff == 2.0 and r.max_abs_index == (1, 1)
    assert r.num_mismatched == 1 and r.num_allowed == 0 and r.numel == 6
    assert r.report == str(r)
    ok = mt.check_close(e, e, rtol=0, atol=0)
    assert ok and ok.rel_fro == 0.0 and ok.failures == []


# ---------------------------------------------------------------------------
# assert_close: shapes, empties, args
# ---------------------------------------------------------------------------


def test_empty_tensors_pass():
    mt.assert_close(torch.empty(0), torch.empty(0), rtol=0, atol=0)
    mt.assert_close(torch.empty(0, 7, dtype=torch.bfloat16), torch.empty(0, 7), rtol=0, atol=0, max_rel_fro=0)


@pytest.mark.parametrize("sa,se", [((2, 3), (3, 2)), ((0,), (0, 1)), ((4,), (1, 4)), ((), (1,))])
def test_shape_mismatch(sa, se):
    with pytest.raises(AssertionError) as ei:
        mt.assert_close(torch.zeros(sa), torch.zeros(se), rtol=1, atol=1, name="y")
    msg = str(ei.value)
    assert "shape mismatch" in msg
    assert str(tuple(sa)) in msg and str(tuple(se)) in msg


@pytest.mark.parametrize(
    "kwargs", [dict(rtol=-1, atol=0), dict(rtol=0, atol=-1), dict(rtol=0, atol=0, max_mismatch_frac=1.5)]
)
def test_bad_args(kwargs):
    with pytest.raises(ValueError):
        mt.assert_close(torch.zeros(2), torch.zeros(2), **kwargs)


# ---------------------------------------------------------------------------
# tolerance table
# ---------------------------------------------------------------------------

REQUIRED_KEYS = [
    "fp32", "fp16", "bf16", "fp8_block", "fp8_tensor", "fp8_channel", "int8_channel",
    "int8_weight_only", "int4_weight_only", "mxfp4", "tf32",
]


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_table_has_required_keys(key):
    tol = mt.TOLERANCES[key]
    assert isinstance(tol, mt.Tol)
    assert tol.rtol >= 0 and tol.atol >= 0 and tol.max_rel_fro > 0
    assert 0.0 <= tol.max_mismatch_frac < 1e-3
    assert mt.tolerance_for(key) is tol


def test_table_ordering_is_sensible():
    T = mt.TOLERANCES
    assert T["fp32"].max_rel_fro >= 1e-3  # must accept tf32 dots on GPU
    assert T["fp32"].max_rel_fro <= T["bf16"].max_rel_fro
    assert T["fp16"].max_rel_fro <= T["bf16"].max_rel_fro
    assert T["bf16"].max_rel_fro <= T["int8_channel"].max_rel_fro <= T["fp8_block"].max_rel_fro


def test_tol_is_frozen():
    with pytest.raises(Exception):
        mt.TOLERANCES["fp32"].rtol = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "query,key",
    [
        (torch.float32, "fp32"),
        (torch.float16, "fp16"),
        (torch.bfloat16, "bf16"),
        (torch.float64, "fp64"),
        (torch.float8_e4m3fn, "fp8_tensor"),
        ("BF16", "bf16"),
        ("bfloat16", "bf16"),
        ("torch.float16", "fp16"),
        ("half", "fp16"),
        ("fp8-block", "fp8_block"),
        ("mxfp4", "mxfp4"),
        ("tf32", "tf32"),
    ],
)
def test_tolerance_for_lookups(query, key):
    assert mt.tolerance_for(query) is mt.TOLERANCES[key]


def test_tolerance_for_passthrough_tol():
    t = mt.Tol(rtol=1, atol=2, max_rel_fro=3)
    assert mt.tolerance_for(t) is t


@pytest.mark.parametrize("bad", ["fp12", "", torch.int32, torch.complex64, 3])
def test_tolerance_for_keyerror_lists_valid_keys(bad):
    with pytest.raises(KeyError) as ei:
        mt.tolerance_for(bad)
    msg = str(ei.value)
    for k in ("fp32", "bf16", "mxfp4", "int4_weight_only"):
        assert k in msg


# ---------------------------------------------------------------------------
# assert_close_to_reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,key", [(torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_close_to_reference_passes_rounded_output(dtype, key, scale):
    ref = _randn(256, 64, dtype=torch.float64) * scale
    mt.assert_close_to_reference(ref.to(dtype), ref, key)
    mt.assert_close_to_reference(ref.to(dtype), ref, dtype)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_close_to_reference_catches_wrong_row(key):
    # A routing bug: one token row of 100 holds another token's output.
    ref = _randn(100, 64, dtype=torch.float64)
    out = ref.clone()
    out[17] = ref[3]
    with pytest.raises(AssertionError) as ei:
        mt.assert_close_to_reference(out, ref, key, name="moe")
    assert f"tolerance {key}" in str(ei.value)


def test_close_to_reference_simulated_fp8_noise_passes():
    ref = _randn(512, 256, dtype=torch.float64)
    noise = _randn(512, 256, dtype=torch.float64, seed=1)
    mt.assert_close_to_reference(ref + 0.045 * noise, ref, "fp8_block")
    with pytest.raises(AssertionError, match="relative Frobenius error"):
        mt.assert_close_to_reference(ref + 0.045 * noise, ref, "bf16")


def test_close_to_reference_unknown_key():
    with pytest.raises(KeyError):
        mt.assert_close_to_reference(torch.zeros(2), torch.zeros(2), "nope")


def test_close_to_reference_zero_reference():
    mt.assert_close_to_reference(torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.float64), "bf16")


# ---------------------------------------------------------------------------
# poison_ and seeded_generator
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2])
def test_poison_float_is_nan(dtype):
    t = torch.zeros(3, 4, dtype=dtype)
    r = mt.poison_(t)
    assert r is t
    assert torch.isnan(t.to(torch.float32)).all()


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64])
def test_poison_int_is_max(dtype):
    t = torch.zeros(5, dtype=dtype)
    assert mt.poison_(t) is t
    assert (t == torch.iinfo(dtype).max).all()


def test_poison_bool_and_noncontiguous():
    b = torch.zeros(4, dtype=torch.bool)
    assert mt.poison_(b).all()
    base = torch.zeros(4, 6)
    view = base[:, ::2]
    mt.poison_(view)
    assert torch.isnan(base[:, ::2]).all() and (base[:, 1::2] == 0).all()


def test_poison_packed_fp4():
    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("no float4 dtype")
    t = torch.zeros(4, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    assert mt.poison_(t) is t
    assert (t.view(torch.uint8) == 0xFF).all()


def test_seeded_generator(monkeypatch):
    g1 = mt.seeded_generator(1234)
    g2 = mt.seeded_generator(1234)
    assert g1.initial_seed() == 1234
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    monkeypatch.setenv("MOEKIT_TEST_SEED", "77")
    assert mt.seeded_generator().initial_seed() == 77
    monkeypatch.delenv("MOEKIT_TEST_SEED")
    seeds = {mt.seeded_generator().initial_seed() for _ in range(5)}
    assert len(seeds) > 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
def test_cuda_tensors(dtype):
    ref = _randn(64, 32, dtype=torch.float64)
    out = ref.to(dtype).cuda()
    mt.assert_close(out, ref.cuda(), rtol=0.1, atol=0.1)  # same-device path
    mt.assert_close(out, ref, rtol=0.1, atol=0.1)  # mixed devices -> CPU
    mt.poison_(out)
    with pytest.raises(AssertionError, match="NaN never passes"):
        mt.assert_close(out, ref.cuda(), rtol=1, atol=1)


# ---------------------------------------------------------------------------
# property check: the mismatch count agrees with torch.isclose on finite data
# ---------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    rtol=st.sampled_from([0.0, 1e-3, 1e-1]),
    atol=st.sampled_from([0.0, 1e-3, 1e-1]),
    noise=st.sampled_from([1e-4, 1e-2, 1.0]),
)
def test_mismatch_count_matches_isclose(n, seed, rtol, atol, noise):
    e = _randn(n, dtype=torch.float64, seed=seed)
    a = e + noise * _randn(n, dtype=torch.float64, seed=seed + 1)
    r = mt.check_close(a, e, rtol=rtol, atol=atol)
    expected_bad = int((~torch.isclose(a, e, rtol=rtol, atol=atol)).sum())
    assert r.num_mismatched == expected_bad
    assert r.ok == (expected_bad == 0)
    assert r.rel_fro == pytest.approx(float((a - e).norm() / e.norm()), rel=1e-9)
