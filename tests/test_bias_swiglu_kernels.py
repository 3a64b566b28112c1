"""gpt-oss's expert epilogue on the Triton kernels: expert biases (``w13_bias`` [E, 2I] before the
activation, ``w2_bias`` [E, H] before the routing weight) and the clamped SwiGLU (``activation="swigluoai"``),
on every Triton path (grouped GEMMs, top_k = 1 direct write, decode GEMV, quantized weights) against the
float64 reference, outputs poisoned first."""
import pytest
import torch

import moekit
import moekit.triton_experts as te
from moekit.quant import QuantScheme, dequantize_weights, quantize_weights
from moekit.testing import assert_close_to_reference
from reference import moe_reference, route_reference

from conftest import DEVICE, KERNEL_DTYPES


@pytest.fixture
def gemv_calls(monkeypatch):
    """Counts decode GEMV launches (fused_experts_triton's one dispatch, unquantized and quantized)."""
    calls = []
    real = te.moe_gemv

    def spy(*args, **kwargs):
        calls.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(te, "moe_gemv", spy)
    return calls


def _layer(m, e, h, i, dtype, gate_scale=1.0, bias=True):
    """Random layer; ``gate_scale`` > 1 pushes gate / up values past the SwiGLU clamp (7)."""
    x = torch.randn(m, h, device=DEVICE).to(dtype)
    w13 = torch.randn(e, 2 * i, h, device=DEVICE) / h ** 0.5 * gate_scale
    w2 = torch.randn(e, h, i, device=DEVICE) / i ** 0.5
    b13 = torch.randn(e, 2 * i, device=DEVICE).to(dtype) if bias else None
    b2 = (torch.randn(e, h, device=DEVICE) * 0.5).to(dtype) if bias else None
    return x, w13, w2, b13, b2, torch.randn(m, e, device=DEVICE)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("m, e, k", [(1, 8, 2), (33, 8, 2), (7, 4, 1), (1, 32, 4), (2, 64, 8)])
@pytest.mark.parametrize("activation, bias, gate_scale", [("swigluoai", True, 1.0), ("swigluoai", True, 6.0),
                                                          ("swigluoai", False, 1.0), ("silu", True, 1.0)])
def test_triton_bias_and_activation(dtype, m, e, k, activation, bias, gate_scale, gemv_calls, poisoned_empty):
    """Grouped GEMMs (E=8, also top_k=1: GEMM 2 writes the output) and the decode GEMV (E >= 16)."""
    x, w13, w2, b13, b2, logits = _layer(m, e, 96, 48, dtype, gate_scale, bias)
    out = moekit.fused_moe(x, w13.to(dtype), w2.to(dtype), logits, k, activation=activation, w13_bias=b13,
                           w2_bias=b2, backend="triton")
    assert out.dtype == dtype and out.shape == x.shape
    assert bool(gemv_calls) == (e >= 16)
    w, ids = route_reference(logits, k)
    ref = moe_reference(x, w13.to(dtype), w2.to(dtype), w, ids, None, activation, b13, b2)
    assert_close_to_reference(out, ref, dtype)


@pytest.mark.parametrize("e", [8, 32])
def test_bias_with_expert_map(e, poisoned_empty):
    """Biases are per local expert; slots on remote experts (-1) add no bias either."""
    x, w13, w2, b13, b2, logits = _layer(3, e // 2, 64, 32, torch.float32)
    emap = torch.full((e,), -1, dtype=torch.int32)
    emap[1::2] = torch.arange(e // 2, dtype=torch.int32)
    logits = torch.randn(3, e, device=DEVICE)
    out = moekit.fused_moe(x, w13, w2, logits, 2 if e == 8 else 4, activation="swigluoai", w13_bias=b13,
                           w2_bias=b2, expert_map=emap.to(DEVICE), backend="triton")
    w, ids = route_reference(logits, 2 if e == 8 else 4)
    ref = moe_reference(x, w13, w2, w, ids, emap, "swigluoai", b13, b2)
    assert_close_to_reference(out, ref, torch.float32)


SCHEMES = {"mxfp4": QuantScheme.mxfp4, "fp8_block": lambda: QuantScheme.fp8_block(128, 128),
           "fp8_tensor": QuantScheme.fp8_tensor, "int8_weight_only": QuantScheme.int8_weight_only,
           "int8_channel": QuantScheme.int8_channel, "int4_weight_only": QuantScheme.int4_weight_only}


@pytest.mark.parametrize("key", list(SCHEMES))
@pytest.mark.parametrize("m, e, k", [(1, 32, 4), (9, 8, 2)])
def test_quantized_bias_and_swigluoai(key, m, e, k, poisoned_empty):
    """gpt-oss as shipped (mxfp4) and the other schemes: weight-only paths, the w8a8 GEMM 1 epilogue that
    quantizes its output (fp8 block), the decode GEMV (E=32, M=1)."""
    scheme = SCHEMES[key]()
    x, w13, w2, b13, b2, logits = _layer(m, e, 256, 128, torch.float16)
    q13, q2 = quantize_weights(w13, scheme), quantize_weights(w2, scheme)
    zeros = dict(w13_zero=q13[2], w2_zero=q2[2]) if len(q13) > 2 else {}
    out = moekit.fused_moe(x, q13[0], q2[0], logits, k, activation="swigluoai", w13_bias=b13, w2_bias=b2,
                           backend="triton", quant=scheme, w13_scale=q13[1], w2_scale=q2[1], **zeros)
    w, ids = route_reference(logits, k)
    ref = moe_reference(x, dequantize_weights(q13[0], q13[1], scheme, zeros.get("w13_zero"), torch.float64),
                        dequantize_weights(q2[0], q2[1], scheme, zeros.get("w2_zero"), torch.float64), w, ids,
                        None, "swigluoai", b13, b2)
    weight_only = key.endswith("weight_only")
    assert_close_to_reference(out, ref, torch.float16 if weight_only else key)


def test_triton_matches_torch_backend():
    x, w13, w2, b13, b2, logits = _layer(5, 8, 64, 32, torch.float32, gate_scale=4.0)
    kw = dict(activation="swigluoai", w13_bias=b13, w2_bias=b2)
    a = moekit.fused_moe(x, w13, w2, logits, 2, backend="triton", **kw)
    b = moekit.fused_moe(x, w13, w2, logits, 2, backend="torch", **kw)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bias_needs_contiguous_last_dim():
    x, w13, w2, b13, b2, logits = _layer(2, 8, 64, 32, torch.float32)
    with pytest.raises(moekit.MoEInputError, match="w13_bias"):
        moekit.fused_moe(x, w13, w2, logits, 2, w13_bias=b13.t().contiguous().t())
