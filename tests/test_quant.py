"""Quantization: activation-quant kernels bit-exact against their PyTorch twins, weight quantization round
trips and edge cases, and every scheme through fused_moe (triton and torch) against a float64 reference
computed from the dequantized weights (tolerances: moekit.testing.TOLERANCES[scheme key])."""
import pytest
import torch
import triton
import triton.language as tl

import moekit
from moekit.errors import MoEInputError
from moekit.kernels.quant import div_by_scale
from moekit.quant import QuantScheme, dequantize_weights, quantize_weights
from moekit.quant.ops import (MIN_SCALE, _qparams, fp8_format, per_tensor_quant, per_token_group_quant,
                              per_token_group_quant_fp8, per_token_quant)
from moekit.testing import assert_close_to_reference
from reference import moe_reference, route_reference

from conftest import DEVICE, HAS_GPU, KERNEL_DTYPES

QDTYPES = [torch.float8_e4m3fn, torch.int8] + ([torch.float8_e4m3fnuz] if not HAS_GPU else [])
SCHEMES = {
    "fp8_block": QuantScheme.fp8_block(128, 128), "fp8_tensor": QuantScheme.fp8_tensor(),
    "fp8_channel": QuantScheme.fp8_channel(), "int8_channel": QuantScheme.int8_channel(),
    "int8_weight_only": QuantScheme.int8_weight_only(), "int4_weight_only": QuantScheme.int4_weight_only(),
    "mxfp4": QuantScheme.mxfp4(), "mxfp4_mma": QuantScheme.mxfp4("mma"),
}


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 and t.dtype != torch.int8 else t


def _nasty(m, k, dtype=torch.float32):
    x = torch.randn(m, k) * 3
    x[1] = 0.0  # all-zero row
    x[2, :128] = 0.0  # all-zero group
    x[3, 5] = 448.0  # format maximum
    x[4, 7] = -1e4  # far beyond it
    x[5] = 1e-30  # tiny row
    return x.to(DEVICE).to(dtype)


def test_fp8_format_per_platform():
    from moekit.platform import fake_platform, fp8_dtype, fp8_max, resolve_platform

    assert fp8_dtype(resolve_platform("h100")) == torch.float8_e4m3fn and fp8_max(resolve_platform("h100")) == 448.0
    assert fp8_dtype(resolve_platform("mi300x")) == torch.float8_e4m3fnuz and fp8_max(resolve_platform("mi300x")) == 240.0
    assert fp8_dtype(resolve_platform("mi355")) == torch.float8_e4m3fn
    assert fp8_dtype(resolve_platform("r9700")) == torch.float8_e4m3fn
    with fake_platform("mi300x"):
        assert fp8_format() == (torch.float8_e4m3fnuz, 240.0)


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("xdtype", KERNEL_DTYPES)
@pytest.mark.parametrize("k", [128, 300, 5000])  # 5000: 40 groups, more than one program per row
def test_group_quant_bit_exact(qdtype, xdtype, k):
    if qdtype == torch.float8_e4m3fnuz:
        pytest.skip("the Triton interpreter cannot store e4m3fnuz; the twin is covered on ROCm GPUs")
    x = _nasty(37, k, xdtype)
    q, s = per_token_group_quant(x, 128, qdtype, use_triton=True)
    q2, s2 = per_token_group_quant(x, 128, qdtype, use_triton=False)
    assert s.shape == (37, -(-k // 128)) and s.dtype == torch.float32
    assert torch.equal(_bits(q), _bits(q2)) and torch.equal(s, s2)
    assert torch.isfinite(s).all() and (s > 0).all()
    assert (s[1] == MIN_SCALE).all() and (q[1].float() == 0).all()
    qmax = 127.0 if qdtype == torch.int8 else float(torch.finfo(qdtype).max)
    assert q.float().abs().max() <= qmax


@pytest.mark.parametrize("qdtype", [torch.float8_e4m3fn, torch.int8])
def test_token_and_tensor_quant_bit_exact(qdtype):
    x = _nasty(19, 200)
    for fn in (lambda t, u: per_token_quant(t, qdtype, use_triton=u),
               lambda t, u: per_tensor_quant(t, qdtype, use_triton=u),
               lambda t, u: per_tensor_quant(t, qdtype, torch.tensor([0.5], device=DEVICE), use_triton=u)):
        (q, s), (q2, s2) = fn(x, True), fn(x, False)
        assert torch.equal(_bits(q), _bits(q2)) and torch.equal(s, s2)


@pytest.mark.parametrize("amax_programs,split_items", [(3, 0), (1024, 10 ** 9), (2, 10 ** 9)])
@pytest.mark.parametrize("npp_value", [None, 7])
def test_tensor_quant_grid_forms_bit_exact(monkeypatch, amax_programs, split_items, npp_value):
    """The per-tensor kernels in each of their forms (amax programs walking several [row, chunk] items or one
    each; one quantization program per chunk or per row walking its chunks; rows skipped by npp) against the
    twin, bit for bit: rows of 3 chunks of ``TENSOR_CHUNK`` columns plus a ragged one, a NaN past npp."""
    import moekit.kernels.quant as kq

    monkeypatch.setattr(kq, "AMAX_PROGRAMS", amax_programs)
    monkeypatch.setattr(kq, "SPLIT_ROWS_ITEMS", split_items)
    monkeypatch.setattr(kq, "TENSOR_CHUNK", 64)
    x = _nasty(11, 3 * 64 + 5)
    x[9, 4] = float("nan")  # past npp = 7: must not count
    npp = None if npp_value is None else torch.tensor([npp_value], dtype=torch.int32, device=DEVICE)
    (q, s), (q2, s2) = [per_tensor_quant(x, torch.float8_e4m3fn, npp=npp, use_triton=u) for u in (True, False)]
    rows = x.shape[0] if npp_value is None else npp_value
    assert _same_nan(s, s2) and (npp_value is None) == bool(torch.isnan(s).all())
    if npp_value is not None:
        assert torch.equal(_bits(q[:rows]), _bits(q2[:rows]))


@pytest.mark.parametrize("qdtype", [torch.float8_e4m3fn, torch.int8])
@pytest.mark.parametrize("npp_value", [None, 7])
def test_long_row_token_quant_bit_exact(monkeypatch, qdtype, npp_value):
    """Per-token rows longer than LONG_ROW (one program per row, two passes over chunks) against the twin, bit for
    bit: rows of 3 chunks plus a ragged one, the nasty rows (zero, tiny, at and past the format maximum), a NaN
    and an inf in rows of their own, rows past npp left unwritten."""
    import moekit.kernels.quant as kq

    monkeypatch.setattr(kq, "LONG_ROW", 64)
    monkeypatch.setattr(kq, "TOKEN_CHUNK", 64)
    x = _nasty(11, 3 * 64 + 5)
    x[6, 100] = float("nan")
    x[8, 3] = float("inf")
    npp = None if npp_value is None else torch.tensor([npp_value], dtype=torch.int32, device=DEVICE)
    q = torch.full(x.shape, 0, dtype=qdtype, device=DEVICE)
    s = torch.full((x.shape[0], 1), 7.0, device=DEVICE)
    kq.group_quant(x, q, s, x.shape[1], *_qparams(qdtype), npp)
    q2, s2 = per_token_quant(x, qdtype, use_triton=False)
    rows = x.shape[0] if npp_value is None else npp_value
    assert _same_nan(s[:rows], s2[:rows]) and (s[rows:] == 7.0).all()
    ok = torch.isfinite(s2[:rows, 0])  # int8 codes of a NaN / inf row carry no meaning (its scale does)
    assert torch.equal(_bits(q[:rows][ok]), _bits(q2[:rows][ok]))
    if qdtype != torch.int8 and x.is_cuda:
        assert torch.equal(_bits(q[:rows]), _bits(q2[:rows]))


def _same_nan(a, b):
    """Equal, with NaN equal to NaN."""
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


@pytest.mark.parametrize("qdtype", [torch.float8_e4m3fn, torch.int8])
@pytest.mark.parametrize("kind", ["group", "token", "tensor"])
def test_nan_and_inf_propagate_like_the_twin(qdtype, kind):
    """A NaN makes its group's scale NaN and an inf its scale inf, in the kernels as in the twins (torch.amax
    propagates NaN), so no NaN or inf activation turns into a finite, plausible product. fp8 codes are
    compared on the GPU (the interpreter casts a float32 NaN to fp8 code 124, 384); everywhere, which
    dequantized values q * scale are not finite, and the finite ones."""
    x = _nasty(8, 300)
    x[1, 5] = float("nan")
    x[2, 130] = float("inf")
    x[6, 7] = -float("inf")
    fn = {"group": lambda u: per_token_group_quant(x, 128, qdtype, use_triton=u),
          "token": lambda u: per_token_quant(x, qdtype, use_triton=u),
          "tensor": lambda u: per_tensor_quant(x, qdtype, use_triton=u)}[kind]
    (q, s), (q2, s2) = fn(True), fn(False)
    assert _same_nan(s, s2)
    if kind == "tensor":
        assert torch.isnan(s).all()
    else:
        assert torch.isnan(s[1]).any() and torch.isinf(s[2]).any() and torch.isinf(s[6]).any()
        assert torch.isfinite(s[0]).all()

    def dequant(qq, ss):
        ss = ss.repeat_interleave(128, dim=1)[:, :300] if kind == "group" else ss.reshape(-1, 1)
        return qq.float() * ss

    d, d2 = dequant(q, s), dequant(q2, s2)
    bad = ~torch.isfinite(d)
    assert torch.equal(bad, ~torch.isfinite(d2)) and bad[1, :128].all() and bad[2, 128:256].all()
    assert torch.equal(d[~bad], d2[~bad])
    if qdtype != torch.int8 and x.is_cuda:  # int8 has no NaN code: only its scale carries the NaN
        assert torch.equal(_bits(q), _bits(q2))


def test_nan_activation_gives_nan_rows_not_wrong_values():
    """fp8 block experts: a token whose hidden state holds a NaN gets a NaN output row (its activation group
    scale is NaN), and the other tokens are unaffected, on both backends."""
    scheme = SCHEMES["fp8_block"]
    m, e, k, h, i = 6, 4, 2, 256, 128
    x = torch.randn(m, h, device=DEVICE)
    x[2, 17] = float("nan")
    w13 = torch.randn(e, 2 * i, h) / h ** 0.5
    w2 = torch.randn(e, h, i) / i ** 0.5
    q13, s13 = quantize_weights(w13, scheme)[:2]
    q2, s2 = quantize_weights(w2, scheme)[:2]
    logits = torch.randn(m, e, device=DEVICE)
    for backend in ("triton", "torch"):
        out = moekit.fused_moe(x, q13.to(DEVICE), q2.to(DEVICE), logits, k, quant=scheme, w13_scale=s13.to(DEVICE),
                               w2_scale=s2.to(DEVICE), backend=backend)
        assert torch.isnan(out[2]).all(), backend
        keep = [0, 1, 3, 4, 5]
        assert torch.isfinite(out[keep]).all(), backend


@pytest.mark.parametrize("npp_value", [0, 2])
def test_per_tensor_npp_ignores_skipped_rows(npp_value):
    """Rows at or past npp do not count in the dynamic per-tensor scale, even when they hold inf or NaN (the
    twin masks them with where, not a product), and npp = 0 still writes the floor scale."""
    x = torch.randn(5, 64, device=DEVICE)
    x[2, 3] = float("inf")
    x[3, 1] = float("nan")
    npp = torch.tensor([npp_value], dtype=torch.int32, device=DEVICE)
    s = per_tensor_quant(x, torch.float8_e4m3fn, npp=npp, use_triton=True)[1]
    s2 = per_tensor_quant(x, torch.float8_e4m3fn, npp=npp, use_triton=False)[1]
    assert torch.equal(s, s2) and torch.isfinite(s).all()
    if npp_value == 0:
        assert torch.equal(s, torch.full_like(s, MIN_SCALE))


def test_scale_is_amax_times_reciprocal():
    x = torch.tensor([[3.0, -7.0, 1.0]], device=DEVICE)
    dt, qmax = torch.float8_e4m3fn, 448.0
    _, s = per_token_quant(x, dt, use_triton=False)
    assert s.item() == (torch.tensor(7.0) * torch.tensor(1.0 / qmax, dtype=torch.float32)).item()
    q, s = per_token_group_quant_fp8(torch.zeros(2, 256, device=DEVICE))
    assert (s == MIN_SCALE).all() and not torch.isnan(q.float()).any()


def test_fp8_values_at_format_max_round_trip():
    dt, qmax = torch.float8_e4m3fn, 448.0
    x = torch.tensor([[qmax, -qmax, 1.0, 0.0]], device=DEVICE)
    q, s = per_token_quant(x, dt)
    assert s.item() == pytest.approx(1.0) and q.float().tolist() == [[qmax, -qmax, 1.0, 0.0]]


@pytest.mark.parametrize("name", list(SCHEMES) + ["int4_zp", "int8_wo_zp"])
def test_quantize_weights_layouts_and_round_trip(name):
    s = {"int4_zp": QuantScheme.int4_weight_only(64, zero_point=True),
         "int8_wo_zp": QuantScheme("int8", None, "channel", zero_point=True)}.get(name) or SCHEMES[name]
    w = torch.randn(3, 320, 192)
    w[0, :128, :128] = 0.0  # an all-zero block
    out = quantize_weights(w, s)
    from moekit.quant.moe import scale_shape

    assert tuple(out[1].shape) == scale_shape(s, 3, 320, 192)
    assert torch.isfinite(out[1].float()).all()
    d = dequantize_weights(*out[:2], s, out[2] if len(out) > 2 else None)
    assert d.shape == w.shape and torch.isfinite(d).all()
    assert (d[0, :128, :128] == 0).all()
    err = float((d - w).norm() / w.norm())
    assert err < {"int4_weight_only": 0.13, "mxfp4": 0.13, "mxfp4_mma": 0.13, "int4_zp": 0.13}.get(name, 0.05)


def _layer(scheme, m, e, h, i, dtype, k=2):
    x = torch.randn(m, h, device=DEVICE).to(dtype)
    w13 = torch.randn(e, 2 * i, h, device=DEVICE) / h ** 0.5
    w2 = torch.randn(e, h, i, device=DEVICE) / i ** 0.5
    a, b = quantize_weights(w13, scheme), quantize_weights(w2, scheme)
    kw = dict(quant=scheme, w13_scale=a[1], w2_scale=b[1])
    if len(a) > 2:
        kw.update(w13_zero=a[2], w2_zero=b[2])
    logits = torch.randn(m, e, device=DEVICE)
    w, ids = route_reference(logits, k)
    ref = moe_reference(x, dequantize_weights(a[0], a[1], scheme, kw.get("w13_zero"), torch.float64),
                        dequantize_weights(b[0], b[1], scheme, kw.get("w2_zero"), torch.float64), w, ids)
    return x, a[0], b[0], logits, kw, ref


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("key", list(SCHEMES))
def test_schemes_against_reference(backend, dtype, key, poisoned_empty):
    scheme = SCHEMES[key]
    x, w13, w2, logits, kw, ref = _layer(scheme, 33, 4, 256, 128, dtype)
    out = moekit.fused_moe(x, w13, w2, logits, 2, backend=backend, **kw)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close_to_reference(out, ref, key)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("scheme", [QuantScheme.fp8_block(128, 128), QuantScheme.fp8_tensor(),
                                    QuantScheme.int4_weight_only(32, zero_point=True)], ids=str)
def test_h_and_i_not_multiples_of_128(backend, scheme, poisoned_empty):
    """Partial scale blocks / groups at the tail of H and I are supported (their scales cover the tail)."""
    key = {"block": "fp8_block", "tensor": "fp8_tensor", "group": "int4_weight_only"}[scheme.granularity]
    x, w13, w2, logits, kw, ref = _layer(scheme, 11, 4, 200, 96, torch.float16 if DEVICE == "cpu" else torch.bfloat16)
    out = moekit.fused_moe(x, w13, w2, logits, 2, backend=backend, **kw)
    assert_close_to_reference(out, ref, key)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_static_activation_scales(backend, poisoned_empty):
    scheme = QuantScheme.fp8_tensor()
    x, w13, w2, logits, kw, ref = _layer(scheme, 9, 4, 128, 64, torch.float32)
    # static scales that cover the values: |x| < 8, and GEMM 1's output can pass 8 (an a2 scale of 8 / 448 clipped
    # it for about 2 % of draws, 10 % relative error against the unclipped reference; 32 / 448: at most 6.6 %
    # over 150 seeds)
    kw.update(a13_scale=torch.tensor([8.0 / 448], device=DEVICE), a2_scale=torch.tensor([32.0 / 448], device=DEVICE))
    out = moekit.fused_moe(x, w13, w2, logits, 2, backend=backend, **kw)
    assert_close_to_reference(out, ref, "fp8_tensor")


def test_triton_matches_torch_backend_fp8_block():
    scheme = QuantScheme.fp8_block(128, 128)
    x, w13, w2, logits, kw, ref = _layer(scheme, 17, 4, 256, 128, torch.float32)
    a = moekit.fused_moe(x, w13, w2, logits, 2, backend="triton", **kw)
    b = moekit.fused_moe(x, w13, w2, logits, 2, backend="torch", **kw)
    assert_close_to_reference(a, b.double(), "fp8_block")


@pytest.mark.parametrize("key, cfg", [
    ("fp8_block", (16, 32, 128)),  # GEMM 1 quantizes per 32 columns; GEMM 2 steps 32 of K
    ("fp8_block", (32, 64, 64)),
    ("fp8_block", (64, 128, 128)),  # one group = the 128 weight block
    ("fp8_block", (16, 256, 128)),  # BLOCK_N past the block: GEMM 1 falls back to 128
    ("mxfp4", (16, 32, 32)),  # the least BLOCK_K a packed weight allows
    ("mxfp4", (32, 64, 256)),
    ("int4_weight_only", (16, 64, 16)),  # corrected up to 32 (warned once)
])
def test_quant_kernels_at_explicit_configs(key, cfg, poisoned_empty):
    """The Triton quant paths at configs the default heuristic may never pick (the tuner does)."""
    from moekit.configs import MoEKernelConfig
    from moekit.routing import select_experts
    from moekit.triton_experts import fused_experts_triton

    scheme = SCHEMES[key]
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    x, w13, w2, logits, kw, ref = _layer(scheme, 21, 4, 256, 256, dtype)
    w, ids = select_experts(logits, 2)
    bm, bn, bk = cfg
    out = fused_experts_triton(x, w13, w2, w, ids, config=MoEKernelConfig(bm, bn, bk, 1, 4, 2), quant=scheme,
                               **{k: v for k, v in kw.items() if k != "quant"})
    assert_close_to_reference(out, ref, key)


@pytest.mark.parametrize("rule", ["none", "stages", "n", "both", "ka"])
@pytest.mark.parametrize("cfg, i", [((16, 32, 128), 256), ((16, 64, 128), 200), ((32, 64, 128), 96)])
def test_fp8_block_gemm2_split_rules(rule, cfg, i, poisoned_empty, monkeypatch):
    """GEMM 2 of the fp8 block path when GEMM 1 quantizes its output in groups finer than the 128 block
    (``triton_moe.gemm2_split_config``): shorter K steps with more stages / wider tiles, or (rule "ka", here at
    any I) full K steps spanning 2-4 activation groups as a rescaled float16 operand; I not a multiple of 128
    leaves the last step's groups past K unread."""
    import moekit.quant.triton_moe as tq
    from moekit.configs import MoEKernelConfig
    from moekit.routing import select_experts
    from moekit.triton_experts import fused_experts_triton

    monkeypatch.setattr(tq, "GEMM2_SPLIT_RULE", rule)
    monkeypatch.setattr(tq, "KA_MIN_STEPS", 1)
    scheme = SCHEMES["fp8_block"]
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    x, w13, w2, logits, kw, ref = _layer(scheme, 21, 4, 256, i, dtype)
    w, ids = select_experts(logits, 2)
    bm, bn, bk = cfg
    out = fused_experts_triton(x, w13, w2, w, ids, config=MoEKernelConfig(bm, bn, bk, 1, 4, 2), quant=scheme,
                               **{k: v for k, v in kw.items() if k != "quant"})
    assert_close_to_reference(out, ref, "fp8_block")


@pytest.mark.parametrize("key, cfg, i", [
    ("fp8_block", (16, 128, 128), 256), ("fp8_block", (32, 64, 64), 200), ("fp8_block", (16, 64, 128), 200),
    ("fp8_tensor", (16, 64, 128), 128), ("fp8_channel", (32, 32, 64), 96), ("int8_channel", (16, 64, 128), 200),
])
def test_w8a8_swapped_operands(key, cfg, i, poisoned_empty, monkeypatch):
    """The w8a8 GEMMs with the weight as the MMA's left operand (``triton_moe.w8a8_swap_ab``, forced on here):
    fp8 blocks (GEMM 2's K steps one activation group, or 2 groups rescaled by rule "ka"), per tensor, per
    channel, int8 (int32 accumulator); H = 256 and I not a multiple of BLOCK_K (masked last steps)."""
    import moekit.quant.triton_moe as tq
    from moekit.configs import MoEKernelConfig
    from moekit.routing import select_experts
    from moekit.triton_experts import fused_experts_triton

    monkeypatch.setattr(tq, "W8A8_SWAP_AB", True)
    monkeypatch.setattr(tq, "KA_MIN_STEPS", 1)
    scheme = SCHEMES[key]
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    x, w13, w2, logits, kw, ref = _layer(scheme, 21, 4, 256, i, dtype)
    w, ids = select_experts(logits, 2)
    bm, bn, bk = cfg
    out = fused_experts_triton(x, w13, w2, w, ids, config=MoEKernelConfig(bm, bn, bk, 1, 4, 2), quant=scheme,
                               **{k: v for k, v in kw.items() if k != "quant"})
    assert_close_to_reference(out, ref, key)


@pytest.mark.parametrize("scheme, cfg, h, i", [
    (QuantScheme.int4_weight_only(), (16, 64, 128), 256, 256),  # one scale per column per K step
    (QuantScheme.int4_weight_only(32, zero_point=True), (32, 64, 64), 200, 96),  # finer groups, zeros, tails
    (QuantScheme.int8_weight_only(), (16, 64, 64), 256, 200),  # I not a multiple of BLOCK_K / BLOCK_N
    (QuantScheme.int8_weight_only(), (64, 128, 128), 256, 256),
], ids=str)
@pytest.mark.parametrize("swap", [True, False], ids=["swapped", "plain"])
def test_weight_only_swapped_operands(scheme, cfg, h, i, swap, poisoned_empty, monkeypatch):
    """The int8 / int4 weight-only GEMMs with the decoded weight as the MMA's left operand
    (``triton_moe.weight_only_swap_ab``, forced on here; and forced off): scales per column per K step and per group
    inside a step, zero points, H and I not multiples of BLOCK_K or BLOCK_N (masked tails). On an NVIDIA GPU int4
    is decoded by inline PTX in both forms (``int4_ptx_decode``)."""
    import moekit.quant.triton_moe as tq
    from moekit.configs import MoEKernelConfig
    from moekit.routing import select_experts
    from moekit.triton_experts import fused_experts_triton

    monkeypatch.setattr(tq, "WEIGHT_ONLY_SWAP_AB", swap)
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    x, w13, w2, logits, kw, ref = _layer(scheme, 21, 4, h, i, dtype)
    w, ids = select_experts(logits, 2)
    bm, bn, bk = cfg
    out = fused_experts_triton(x, w13, w2, w, ids, config=MoEKernelConfig(bm, bn, bk, 1, 4, 2), quant=scheme,
                               **{k: v for k, v in kw.items() if k != "quant"})
    assert_close_to_reference(out, ref, "int4_weight_only" if scheme.weight_dtype == "int4" else "int8_weight_only")


def test_int4_ptx_decode_rule(monkeypatch):
    """int4 decoded by inline PTX for bf16 activations on NVIDIA sm_80+ GPUs only (never int8 or mxfp4 weight-only,
    fp16 / float32 activations, a CPU or ROCm); the switch turns it off."""
    import moekit.quant.triton_moe as tq
    from moekit.platform import on_sm80_plus, platform_of

    x = torch.empty(1, 8, device=DEVICE, dtype=torch.bfloat16)
    int4 = QuantScheme.int4_weight_only()
    nvidia = x.device.type == "cuda" and on_sm80_plus(platform_of(x.device))
    assert tq.int4_ptx_decode(x, int4) == nvidia
    assert tq.int4_ptx_decode(x, QuantScheme.int4_weight_only(32, zero_point=True)) == nvidia
    for t, scheme in ((x.half(), int4), (x.float(), int4), (x, QuantScheme.int8_weight_only()),
                      (x, QuantScheme.mxfp4()), (x.cpu(), int4)):
        assert not tq.int4_ptx_decode(t, scheme)
    monkeypatch.setattr(tq, "INT4_PTX_DECODE", False)
    assert not tq.int4_ptx_decode(x, int4)


def test_weight_only_swap_ab_rule(monkeypatch):
    """Weight-only swapped operands where they measured faster: int4 (not int8; never mxfp4, which has its own
    swapped layout), 16-bit activations, tiles of >= 64 token rows and >= 64 weight rows, Hopper (so never on a
    CPU); the module switch forces them on for int8 / int4."""
    import moekit.quant.triton_moe as tq
    from moekit.configs import MoEKernelConfig
    from moekit.platform import on_sm90, platform_of

    x = torch.empty(1, 8, device=DEVICE, dtype=torch.bfloat16)
    int4, int8, mx = QuantScheme.int4_weight_only(), QuantScheme.int8_weight_only(), QuantScheme.mxfp4()
    ok, narrow, short = (MoEKernelConfig(64, 64, 64, 1, 4, 3), MoEKernelConfig(64, 32, 64, 1, 4, 3),
                         MoEKernelConfig(32, 128, 64, 1, 4, 3))
    assert tq.WEIGHT_ONLY_SWAP_AB is None
    hopper = x.device.type == "cuda" and on_sm90(platform_of(x.device))
    assert tq.weight_only_swap_ab(x, ok, int4) == hopper
    for cfg, scheme, t in ((narrow, int4, x), (short, int4, x), (ok, int8, x), (ok, mx, x), (ok, int4, x.float())):
        assert not tq.weight_only_swap_ab(t, cfg, scheme)
    monkeypatch.setattr(tq, "WEIGHT_ONLY_SWAP_AB", True)
    assert tq.weight_only_swap_ab(x, narrow, int8) and not tq.weight_only_swap_ab(x, ok, mx)


def test_w8a8_swap_ab_rule(monkeypatch):
    """Swapped operands only where they were measured faster: fp8 blocks, tiles under 64 rows, not GEMM 2 steps
    spanning activation groups, Hopper (so never on a CPU); the module switch forces them on or off."""
    import moekit.quant.triton_moe as tq
    from moekit.platform import on_sm90, platform_of

    x = torch.empty(1, 8, device=DEVICE)
    block, tensor = SCHEMES["fp8_block"], SCHEMES["fp8_tensor"]
    assert tq.W8A8_SWAP_AB is None
    hopper = x.device.type == "cuda" and on_sm90(platform_of(x.device))
    assert tq.w8a8_swap_ab(x, 16, block) == hopper
    assert not tq.w8a8_swap_ab(x, 64, block)
    assert not tq.w8a8_swap_ab(x, 16, block, spans_groups=True)
    assert not tq.w8a8_swap_ab(x, 16, tensor)
    monkeypatch.setattr(tq, "W8A8_SWAP_AB", True)
    assert tq.w8a8_swap_ab(x, 64, tensor)


def test_gemm2_split_config_rule():
    """Where the shipped rule applies: "ka" keeps the config at BLOCK_M < 64 with enough K steps, else the step
    is cut to the activation group."""
    import moekit.quant.triton_moe as tq
    from moekit.configs import MoEKernelConfig

    c = MoEKernelConfig(16, 64, 128, 1, 4, 4)
    assert tq.GEMM2_SPLIT_RULE == "ka"
    assert tq.gemm2_split_config(c, 64, 2048) == c  # DeepSeek-V3's I: 16 steps
    assert tq.gemm2_split_config(c, 64, 256) == MoEKernelConfig(16, 64, 64, 1, 4, 4)  # its TP8 slice: 2 steps
    assert tq.gemm2_split_config(MoEKernelConfig(64, 64, 128, 1, 4, 4), 64, 2048).BLOCK_SIZE_K == 64


@pytest.mark.parametrize("bm, bn, bk, ptx", [(16, 64, 32, False), (32, 64, 32, True), (64, 64, 32, True),
                                              (128, 32, 32, True), (32, 128, 32, True), (32, 64, 64, True),
                                              (64, 64, 128, True), (32, 64, 256, False)])
def test_mxfp4_grouped_decode_paths(bm, bn, bk, ptx, poisoned_empty, monkeypatch):
    """mxfp4 grouped GEMMs: on a Hopper GPU in bf16, tiles of >= 32 rows with K steps of 32-128 codes decode
    by inline PTX, 16-row tiles and 256-code steps keep ``tl.dot_scaled`` (``mxfp4_ptx_decode``); elsewhere
    ``tl.dot_scaled`` or (the interpreter) moekit's Triton decode. Every path matches the float64 layer, H
    and I not multiples of BLOCK_N, nor (for K steps over 32) of BLOCK_K: the last step's groups past K are
    masked."""
    import moekit.quant.triton_moe as tq
    from moekit.platform import on_sm90, platform_of
    from moekit.configs import MoEKernelConfig
    from moekit.quant.triton_moe import mxfp4_dot_scaled
    from moekit.routing import select_experts
    from moekit.triton_experts import fused_experts_triton

    scheme = SCHEMES["mxfp4"]
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    x, w13, w2, logits, kw, ref = _layer(scheme, 70, 4, 352, 160, dtype)
    w, ids = select_experts(logits, 2)
    seen, real = [], tq.moe_gemm1
    monkeypatch.setattr(tq, "moe_gemm1", lambda *a, **k: seen.append(k["quant"].asm_decode) or real(*a, **k))
    out = fused_experts_triton(x, w13, w2, w, ids, config=MoEKernelConfig(bm, bn, bk, 1, 4, 3), quant=scheme,
                               **{k: v for k, v in kw.items() if k != "quant"})
    hopper = HAS_GPU and mxfp4_dot_scaled(x) and on_sm90(platform_of(x.device))
    assert seen == [ptx and hopper]
    assert_close_to_reference(out, ref, "mxfp4")


@pytest.mark.parametrize("bm, bn, bk", [(16, 64, 64), (32, 64, 128), (64, 128, 64), (128, 64, 64), (32, 32, 256),
                                         (16, 64, 32)])
def test_mxfp4_mma_layout_paths(bm, bn, bk, poisoned_empty, monkeypatch):
    """mxfp4 weights in the "mma" layout (:func:`moekit.quant.weights.mma_layout`): the grouped GEMMs decode
    the words into K order (inline PTX on an NVIDIA GPU in bf16, Triton ops elsewhere) and match the float64
    layer at tiles of 16-128 rows; H = 320 and I = 192 are not multiples of the 128- or 256-code steps (whole
    64-code chunks past K are masked), and a 32-code step is raised to one chunk."""
    import moekit.quant.triton_moe as tq
    from moekit.configs import MoEKernelConfig
    from moekit.platform import on_sm80_plus, platform_of
    from moekit.routing import select_experts
    from moekit.triton_experts import fused_experts_triton

    scheme = QuantScheme.mxfp4("mma")
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    x, w13, w2, logits, kw, ref = _layer(scheme, 45, 4, 320, 192, dtype)
    w, ids = select_experts(logits, 2)
    seen, real = [], tq.moe_gemm1
    monkeypatch.setattr(tq, "moe_gemm1", lambda *a, **k: seen.append((k["quant"].mx_words, k["quant"].asm_decode,
                                                                        a[7].BLOCK_SIZE_K)) or real(*a, **k))
    out = fused_experts_triton(x, w13, w2, w, ids, config=MoEKernelConfig(bm, bn, bk, 1, 4, 3), quant=scheme,
                               **{k: v for k, v in kw.items() if k != "quant"})
    ptx = HAS_GPU and torch.version.hip is None and on_sm80_plus(platform_of(x.device))
    assert seen == [(True, ptx, max(bk, 64))]
    assert_close_to_reference(out, ref, "mxfp4_mma")


def test_mxfp4_mma_layout_round_trip_and_checks():
    """``mma_layout`` permutes the codes inside each 64-code chunk (word 2c + h holds codes 16t + 8q + 2c + h,
    code o = 2t + q at bits 4o); ``plain_layout`` inverts it; bad input names the argument."""
    from moekit.quant.weights import mma_layout, plain_layout, unpack_nibbles

    q = torch.randint(0, 256, (2, 3, 96), dtype=torch.uint8)
    m = mma_layout(q)
    assert m.shape == q.shape and torch.equal(plain_layout(m), q)
    plain, mma = unpack_nibbles(q[1, 2]), unpack_nibbles(m[1, 2])
    for chunk in range(3):
        for word in range(8):
            for o in range(8):
                c, h = divmod(word, 2)
                t, qq = divmod(o, 2)
                assert mma[64 * chunk + 8 * word + o] == plain[64 * chunk + 16 * t + 8 * qq + 2 * c + h]
    with pytest.raises(moekit.MoEInputError, match="q.*multiple of 64"):
        mma_layout(torch.zeros(4, 16, dtype=torch.uint8))
    with pytest.raises(moekit.MoEInputError, match="q.*uint8"):
        mma_layout(torch.zeros(4, 32, dtype=torch.int8))
    with pytest.raises(moekit.MoEInputError, match="w.*multiple of 64"):
        quantize_weights(torch.randn(2, 64, 96), QuantScheme.mxfp4("mma"))
    with pytest.raises(moekit.MoEInputError, match="layout"):
        QuantScheme("int4", None, "group", group_size=128, layout="mma")
    with pytest.raises(moekit.MoEInputError, match="layout"):
        QuantScheme.mxfp4("swizzled")
    assert QuantScheme.from_name("mxfp4_mma") == QuantScheme.mxfp4("mma")
    assert QuantScheme.mxfp4("mma").name == "mxfp4_mma"
    x = torch.zeros(2, 96)
    w13, w2 = torch.zeros(2, 64, 48, dtype=torch.uint8), torch.zeros(2, 96, 16, dtype=torch.uint8)
    s13, s2 = torch.zeros(2, 64, 3, dtype=torch.uint8), torch.zeros(2, 96, 1, dtype=torch.uint8)
    with pytest.raises(moekit.MoEInputError, match="hidden_states.*multiples of 64"):
        moekit.fused_moe(x, w13, w2, torch.zeros(2, 2), 1, quant=QuantScheme.mxfp4("mma"), w13_scale=s13,
                         w2_scale=s2)


def test_gluon_needs_16_byte_copies():
    """The Gluon fp8 block kernels copy 16 bytes at a time: weight views at odd offsets or with odd strides keep
    the Triton kernels (``copies_of_16_bytes``)."""
    from moekit.quant.triton_moe import copies_of_16_bytes

    w = torch.zeros(4, 512, 256, dtype=torch.float8_e4m3fn)
    assert copies_of_16_bytes(w, w[:2])
    assert not copies_of_16_bytes(w.view(-1)[1:1 + 4 * 512 * 255].view(4, 512, 255))
    assert not copies_of_16_bytes(w[:, :, 1:])
    assert not copies_of_16_bytes(w.transpose(1, 2))


def test_missing_gluon_keeps_the_triton_kernels(monkeypatch, caplog):
    """A triton without Gluon's Hopper API (moekit allows triton >= 3.2) leaves fp8 block layers on the Triton
    kernels with one warning, never an ImportError."""
    import sys

    import moekit.envs
    import moekit.quant.triton_moe as tq

    import moekit.kernels

    monkeypatch.setitem(sys.modules, "moekit.kernels.moe_gemm_sm90", None)  # the import fails ...
    monkeypatch.delattr(moekit.kernels, "moe_gemm_sm90", raising=False)  # ... also after an earlier test imported it
    monkeypatch.setattr(moekit.envs, "_warned", set())
    tq.gluon_kernels.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="moekit"):
            assert tq.gluon_kernels() is None
            assert tq.gluon_kernels() is None
        assert sum("Gluon" in r.getMessage() for r in caplog.records) == 1
    finally:
        tq.gluon_kernels.cache_clear()


_HOPPER = HAS_GPU and torch.version.hip is None and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.skipif(not _HOPPER, reason="the Gluon fp8 block kernels are Hopper-only")
@pytest.mark.parametrize("m, e, k, h, i, local", [
    (300, 4, 1, 512, 256, None),  # top_k = 1: GEMM 2 writes the output rows directly
    (257, 8, 2, 768, 512, None),  # padded tiles, one K-loop iteration pair ... three
    (700, 8, 3, 256, 768, None),
    (400, 8, 2, 512, 256, 4),  # expert parallelism: half the experts are not local
])
def test_fp8_block_gluon_kernels(m, e, k, h, i, local, poisoned_empty, monkeypatch):
    """Hopper fp8 block layers with enough rows per expert run the Gluon GEMMs (``fp8_block_gluon``): they
    match the float64 layer, and the Triton kernels they replace closely (same quantization groups)."""
    import moekit.quant.triton_moe as tq
    from moekit.kernels import moe_gemm_sm90

    scheme = SCHEMES["fp8_block"]
    x, w13, w2, logits, kw, ref = _layer(scheme, m, e, h, i, torch.bfloat16, k)
    emap = None
    if local is not None:  # experts 0..local-1 of the e global ones live here
        emap = torch.full((e,), -1, dtype=torch.int32, device=DEVICE)
        emap[:local] = torch.arange(local, dtype=torch.int32, device=DEVICE)
        w13, w2 = w13[:local], w2[:local]
        kw.update(w13_scale=kw["w13_scale"][:local], w2_scale=kw["w2_scale"][:local])
        ref = moe_reference(x, dequantize_weights(w13, kw["w13_scale"], scheme, None, torch.float64),
                            dequantize_weights(w2, kw["w2_scale"], scheme, None, torch.float64),
                            *route_reference(logits, k), expert_map=emap)
    monkeypatch.setattr(tq, "FP8_BLOCK_GLUON_MIN_ROWS", 16)
    calls, real = [], moe_gemm_sm90.moe_gemm1_fp8_block_sm90
    monkeypatch.setattr(moe_gemm_sm90, "moe_gemm1_fp8_block_sm90", lambda *a, **kk: calls.append(1) or real(*a, **kk))
    out = moekit.fused_moe(x, w13, w2, logits, k, expert_map=emap, **kw)
    assert calls == [1]
    assert_close_to_reference(out, ref, "fp8_block")
    monkeypatch.setattr(tq, "FP8_BLOCK_GLUON", False)
    old = moekit.fused_moe(x, w13, w2, logits, k, expert_map=emap, **kw)
    assert calls == [1]
    assert float((out.double() - old.double()).norm() / old.double().norm()) < 2e-2


@pytest.mark.parametrize("bk", [64, 128, 256])
def test_mxfp4_k_steps_span_scale_groups(bk, poisoned_empty):
    """mxfp4 K steps longer than the 32-code scale group, with partial last steps (H = 160, I = 96 are not
    multiples of the step): each 32-group keeps its own scale (BLOCK_K is not lowered to 32)."""
    from moekit.configs import MoEKernelConfig
    from moekit.routing import select_experts
    from moekit.triton_experts import fused_experts_triton

    scheme = SCHEMES["mxfp4"]
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    x, w13, w2, logits, kw, ref = _layer(scheme, 19, 4, 160, 96, dtype)
    w, ids = select_experts(logits, 2)
    out = fused_experts_triton(x, w13, w2, w, ids, config=MoEKernelConfig(16, 32, bk, 1, 4, 2), quant=scheme,
                               **{k: v for k, v in kw.items() if k != "quant"})
    assert_close_to_reference(out, ref, "mxfp4")


@pytest.mark.skipif(DEVICE != "cpu", reason="the Triton interpreter's limits")
def test_triton_backend_refuses_what_the_interpreter_or_kernels_get_wrong(poisoned_empty):
    """bf16 in the interpreter and fp8 blocks with K sides the kernels cannot take raise MoEInputError (they
    gave wrong results); backend='auto' runs them on torch, right."""
    for bk in (8, 16):  # 16: an fp8 x fp8 tl.dot needs 32 (a compile error on the GPU; the interpreter ran it)
        scheme = QuantScheme.fp8_block(128, bk)
        x, w13, w2, logits, kw, ref = _layer(scheme, 5, 4, 128, 128, torch.float32)
        with pytest.raises(moekit.MoEInputError, match="quant.*power of two >= 32"):
            moekit.fused_moe(x, w13, w2, logits, 2, backend="triton", **kw)
        assert_close_to_reference(moekit.fused_moe(x, w13, w2, logits, 2, **kw), ref, "fp8_block")
    xb = x.bfloat16()
    wb13, wb2 = torch.randn(4, 256, 128).bfloat16(), torch.randn(4, 128, 128).bfloat16()
    with pytest.raises(moekit.MoEInputError, match="hidden_states.*bfloat16 wrongly"):
        moekit.fused_moe(xb, wb13, wb2, logits, 2, backend="triton")
    assert moekit.fused_moe(xb, wb13, wb2, logits, 2).dtype == torch.bfloat16


@pytest.mark.parametrize("key", sorted(SCHEMES))
def test_dequantize_weights_round_trips_2d(key):
    scheme = SCHEMES[key]
    w = torch.randn(64, 128)
    r = quantize_weights(w, scheme)
    d = dequantize_weights(r[0], r[1], scheme, r[2] if len(r) > 2 else None)
    lifted = [t.unsqueeze(0) for t in r]
    assert torch.equal(d, dequantize_weights(lifted[0], lifted[1], scheme, lifted[2] if len(r) > 2 else None)[0])
    assert d.shape == w.shape and ((d - w).norm() / w.norm()).item() < 0.2  # 4-bit codes: ~0.1


def test_dequantize_weights_checks_scale_and_zero_points():
    zp = QuantScheme.int4_weight_only(32, zero_point=True)
    q, s, z = quantize_weights(torch.randn(2, 64, 128), zp)
    bad = [((q, s, zp, None), "zero"), ((q, s, QuantScheme.int4_weight_only(32), z), "zero"),
           ((q, s[:, :, :2], zp, z), "scale"), ((q, s.half(), zp, z), "scale.*float16"),
           ((q, s, zp, z.to(torch.int8)), "zero.*int8"), ((q, s, None, z), "scheme"),
           ((q[0, 0], s, zp, z), "q")]
    qb, sb = quantize_weights(torch.randn(2, 128, 128), QuantScheme.fp8_block(32, 32))
    bad.append(((qb, sb, QuantScheme.fp8_block(64, 64), None), "scale"))
    for args, arg in bad:
        with pytest.raises(moekit.MoEInputError, match=arg):
            dequantize_weights(*args)


def test_block_k_corrected_once():
    from moekit.configs import MoEKernelConfig
    from moekit.quant.triton_moe import _fix_block_k

    c = _fix_block_k(MoEKernelConfig(16, 64, 256, 1, 4, 2), 128)
    assert c.BLOCK_SIZE_K == 128
    assert _fix_block_k(MoEKernelConfig(16, 64, 96, 1, 4, 2), 128).BLOCK_SIZE_K == 64


@pytest.mark.parametrize("bad, argname", [
    (dict(w13_scale=lambda s: s[:, :1]), "w13_scale"),
    (dict(w2_scale=lambda s: s.double()), "w2_scale"),
    (dict(w2_scale=lambda s: None), "w2_scale"),
    (dict(w13=lambda w: w.float()), "w13"),
    (dict(a13_scale=lambda s: torch.ones(2)), "a13_scale"),
    (dict(w13_zero=lambda s: torch.zeros(1, dtype=torch.uint8)), "w13_zero"),
    (dict(w13_scale=lambda s: s.half()), "w13_scale.*got float16 tensor"),  # the message names the dtype
    (dict(w2_bias=lambda s: torch.zeros(4, 256, dtype=torch.int32)), "w2_bias.*got torch.int32"),
])
def test_bad_quant_args_name_the_argument(bad, argname):
    scheme = QuantScheme.fp8_block(128, 128)
    x, w13, w2, logits, kw, _ = _layer(scheme, 3, 4, 256, 128, torch.float32)
    args = dict(w13=w13, w2=w2, **kw)
    (name, fn), = bad.items()
    args[name] = fn(args.get(name, torch.ones(1)))
    with pytest.raises(MoEInputError, match=argname):
        moekit.fused_moe(x, args.pop("w13"), args.pop("w2"), logits, 2, backend="torch", **args)


def test_scales_without_scheme_refused():
    x = torch.randn(2, 32, device=DEVICE)
    w13, w2 = torch.randn(2, 32, 32, device=DEVICE), torch.randn(2, 32, 16, device=DEVICE)
    with pytest.raises(MoEInputError, match="w13_scale"):
        moekit.fused_moe(x, w13, w2, torch.randn(2, 2, device=DEVICE), 1, w13_scale=torch.ones(2))


def test_mxfp4_needs_multiple_of_32():
    with pytest.raises(MoEInputError, match="w"):
        quantize_weights(torch.randn(2, 64, 48), QuantScheme.mxfp4())


@pytest.mark.parametrize("key", ["fp8_block", "mxfp4"])
def test_decode_routes_and_aligns_in_one_launch(key, monkeypatch, poisoned_empty):
    """fused_moe at decode sizes on the Triton backend takes the fused route-and-align path for quantized
    schemes too (one launch fewer), and gives the reference result."""
    import moekit.align as align_mod

    calls = []
    real = align_mod.route_and_align
    monkeypatch.setattr(align_mod, "route_and_align", lambda *a, **k: calls.append(1) or real(*a, **k))
    scheme = SCHEMES[key]
    x, w13, w2, logits, kw, ref = _layer(scheme, 3, 8, 128, 64, torch.float16 if DEVICE == "cpu" else torch.bfloat16)
    out = moekit.fused_moe(x, w13, w2, logits, 2, backend="triton", **kw)
    assert calls == [1]
    assert_close_to_reference(out, ref, key)


def test_mxfp4_dot_scaled_choice():
    """tl.dot_scaled only for bf16/fp16 activations on a GPU with the ``dot_scaled`` feature (the interpreter
    and float32 take moekit's in-kernel decode)."""
    from moekit.platform import has_feature, platform_of
    from moekit.quant.triton_moe import mxfp4_dot_scaled

    x = torch.zeros(2, 64, device=DEVICE, dtype=torch.bfloat16 if HAS_GPU else torch.float16)
    expected = HAS_GPU and has_feature("dot_scaled", platform_of(x.device))[0]
    assert mxfp4_dot_scaled(x) is expected
    assert mxfp4_dot_scaled(x.float()) is False


@pytest.mark.skipif(not (HAS_GPU and torch.version.hip is None), reason="inline PTX needs an NVIDIA GPU")
@pytest.mark.parametrize("has_zero", [False, True], ids=["signed", "zero_point"])
def test_int4_ptx_decode_is_exact(has_zero):
    """The inline-PTX int4 decode (``int4_bf16_scaled``: bit placement under bf16 128.0, exact bf16x2 FMAs) gives
    the same bf16 as its Triton-ops twin, the integer code (two's complement, or minus the zero point) times the
    bf16 scale in float32 (exact), cast to bf16: every byte, every zero point 0..255 (row r: zero r), scales
    from 1e-12 (an all-zero group) to 1e30, negative and subnormal results included."""
    import triton
    import triton.language as tl

    import moekit.kernels.quant as kq

    @triton.jit
    def decode(w_ptr, s_ptr, lo_ptr, hi_ptr, ref_lo_ptr, ref_hi_ptr, HAS_ZERO: tl.constexpr):
        r = tl.program_id(0)
        offs = tl.arange(0, 256)
        raw = tl.load(w_ptr + offs)
        s = tl.load(s_ptr + r + 0 * offs).to(tl.bfloat16)
        z = (r + 0 * offs).to(tl.float32)
        lo, hi = kq.int4_bf16_scaled(raw, s, (-z).to(tl.bfloat16), HAS_ZERO)
        tl.store(lo_ptr + r * 256 + offs, lo)
        tl.store(hi_ptr + r * 256 + offs, hi)
        code = raw.to(tl.int32)
        if HAS_ZERO:
            vlo = (code & 15).to(tl.float32) - z
            vhi = (code >> 4).to(tl.float32) - z
        else:
            vlo = (((code & 15) ^ 8) - 8).to(tl.float32)
            vhi = (((code >> 4) ^ 8) - 8).to(tl.float32)
        tl.store(ref_lo_ptr + r * 256 + offs, (vlo * s.to(tl.float32)).to(tl.bfloat16))
        tl.store(ref_hi_ptr + r * 256 + offs, (vhi * s.to(tl.float32)).to(tl.bfloat16))

    raw = torch.arange(256, dtype=torch.uint8, device="cuda")
    gen = torch.Generator(device="cpu").manual_seed(3)
    scales = torch.exp(torch.empty(256).uniform_(-40, 40, generator=gen)).float()
    scales[:4] = torch.tensor([1e-12, 1e-39, 3.0e38 / 16, 1.0])
    scales[4::7] *= -1
    scales = scales.to("cuda")
    outs = [torch.full((256, 256), float("nan"), dtype=torch.bfloat16, device="cuda") for _ in range(4)]
    decode[(256,)](raw, scales, *outs, HAS_ZERO=has_zero)
    for got, ref in ((outs[0], outs[2]), (outs[1], outs[3])):
        assert not ref.isnan().any()
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
        assert torch.equal(torch.signbit(got), torch.signbit(ref))


@pytest.mark.skipif(not (HAS_GPU and torch.version.hip is None), reason="inline PTX needs an NVIDIA GPU")
def test_mxfp4_ptx_decode_is_exact():
    """The inline-PTX mxfp4 decode of the grouped GEMMs (``mxfp4_bf16_scaled``: bf16 bit placement, times
    2**126, times the scale) gives the same bf16 as the float32 decode cast to bf16, for every byte and every
    e8m0 scale (0, subnormal and overflowing results included; byte 255 is NaN on both)."""
    import triton
    import triton.language as tl

    import moekit.kernels.quant as kq

    @triton.jit
    def decode(w_ptr, s_ptr, lo_ptr, hi_ptr, ref_lo_ptr, ref_hi_ptr):
        r = tl.program_id(0)
        offs = tl.arange(0, 256)
        raw = tl.load(w_ptr + offs)
        s = tl.load(s_ptr + r + 0 * offs)
        lo, hi = kq.mxfp4_bf16_scaled(raw, kq.e8m0_bf16(s))
        tl.store(lo_ptr + r * 256 + offs, lo)
        tl.store(hi_ptr + r * 256 + offs, hi)
        code = raw.to(tl.int32)
        tl.store(ref_lo_ptr + r * 256 + offs, (kq.e2m1_value(code & 15) * kq.e8m0_value(s)).to(tl.bfloat16))
        tl.store(ref_hi_ptr + r * 256 + offs, (kq.e2m1_value(code >> 4) * kq.e8m0_value(s)).to(tl.bfloat16))

    raw = torch.arange(256, dtype=torch.uint8, device="cuda")
    scales = torch.arange(256, dtype=torch.uint8, device="cuda")
    outs = [torch.full((256, 256), float("nan"), dtype=torch.bfloat16, device="cuda") for _ in range(4)]
    decode[(256,)](raw, scales, *outs)
    for got, ref in ((outs[0], outs[2]), (outs[1], outs[3])):  # scale byte 255 (NaN) gives NaN on both
        torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(torch.signbit(got) | got.isnan(), torch.signbit(ref) | ref.isnan())


def test_activation_quant_edge_inputs():
    """per_tensor_quant's PyTorch twin: empty input gives the floor scale, npp limits the dynamic scale like
    the kernel; bad scale / npp / group_size raise naming the argument; e4m3fnuz on CPU uses the twin."""
    from moekit.quant import per_tensor_quant, per_token_group_quant_fp8

    assert per_tensor_quant(torch.zeros(0, 64), use_triton=False)[1].item() == pytest.approx(1e-12)
    x = torch.randn(4, 64)
    x[1:] *= 100
    npp = torch.tensor([1], dtype=torch.int32)
    s_torch = per_tensor_quant(x, npp=npp, use_triton=False)[1]
    assert s_torch.item() == pytest.approx(x[0].abs().max().item() / 448, rel=1e-6)
    for bad, arg in ((dict(scale=torch.tensor([True])), "scale"), (dict(npp=1), "npp")):
        with pytest.raises(MoEInputError, match=arg):
            per_tensor_quant(torch.randn(2, 8), **bad)
    with pytest.raises(MoEInputError, match="group_size"):
        per_token_group_quant_fp8(torch.randn(2, 128), True)
    assert per_token_group_quant_fp8(torch.randn(2, 128), dtype=torch.float8_e4m3fnuz)[0].dtype == torch.float8_e4m3fnuz


@triton.jit
def _div_kernel(v_ptr, s_ptr, o_ptr, N: tl.constexpr):
    r = tl.program_id(0)
    v = tl.load(v_ptr + r * N + tl.arange(0, N))
    tl.store(o_ptr + r * N + tl.arange(0, N), div_by_scale(v, tl.load(s_ptr + r)))


def test_division_by_scale_is_ieee():
    """moekit.kernels.quant.div_by_scale (the reciprocal, one product and one FMA correction) equals the IEEE
    float32 division torch does, bit for bit, in its domain (normal scales, reciprocals and quotients): random
    significands of both operands over 160 binades (ties of the rounding are where a plain product by the
    reciprocal differs), per-row scales, MIN_SCALE, a value whose quotient overflows, and 0 / inf / NaN in either
    operand."""
    g = torch.Generator().manual_seed(1)
    rows, n = 64, 1024
    v = torch.rand(rows, n, generator=g) * 2 ** torch.randint(-40, 40, (rows, n), generator=g).float()
    v *= torch.where(torch.rand(rows, n, generator=g) < 0.5, -1.0, 1.0)
    s = (torch.rand(rows, generator=g) + 0.5) * 2 ** torch.randint(-40, 40, (rows,), generator=g).float()
    s[:4] = torch.tensor([1e-12, 2.0 ** 80, float("inf"), float("nan")])  # MIN_SCALE, huge, inf, NaN
    v[:, :5] = torch.tensor([0.0, float("inf"), -float("inf"), float("nan"), 3.3e38])
    v, s = v.to(DEVICE).contiguous(), s.to(DEVICE)
    out = torch.full_like(v, 7.0)
    _div_kernel[(rows,)](v, s, out, N=n)
    want = v / s[:, None]
    assert torch.equal(out.isnan(), want.isnan())
    assert torch.equal(out.nan_to_num(0.0).view(torch.int32), want.nan_to_num(0.0).view(torch.int32))
