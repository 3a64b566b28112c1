"""Dynamic per-tensor w8a8: GEMM 2's activation amax from GEMM 1's epilogue (``OUT_QUANT`` 3 of
:mod:`moekit.kernels.moe_gemm`, :data:`moekit.quant.triton_moe.GEMM1_AMAX`) against the amax pass it replaces (bit
for bit, NaN included), and the ``amax`` / ``zero`` plumbing of :func:`moekit.quant.ops.per_tensor_quant`."""
import pytest
import torch

import moekit.kernels.quant as kq
import moekit.quant.triton_moe as tq
from moekit.configs import MoEKernelConfig
from moekit.errors import MoEInputError
from moekit.quant import QuantScheme
from moekit.quant.ops import per_tensor_quant
from moekit.testing import assert_close_to_reference
from moekit.triton_experts import fused_experts_triton

from conftest import DEVICE, make_layer


def _layer(m, e, h, i, top_k, scheme, seed):
    return make_layer(m, e, h, i, top_k, torch.float16 if DEVICE == "cpu" else torch.bfloat16, scheme, seed)


def _on_and_off(monkeypatch, x, w13, w2, w, ids, kw, cfg, expert_map=None):
    """Outputs with GEMM1_AMAX on, then off; and the ``amax`` each tensor_quant call was handed."""
    seen = []
    real = kq.tensor_quant

    def spy(*a, **k):
        seen.append((k.get("amax") is not None, k.get("zero") is not None))
        return real(*a, **k)

    monkeypatch.setattr(kq, "tensor_quant", spy)
    outs = []
    for on in (True, False):
        monkeypatch.setattr(tq, "GEMM1_AMAX", on)
        outs.append(fused_experts_triton(x, w13, w2, w, ids, config=cfg, expert_map=expert_map, **kw))
    return outs, seen


@pytest.mark.parametrize("m, e, top_k, bm", [(40, 4, 2, 16), (100, 16, 2, 64), (33, 4, 1, 16)])
def test_forward_equals_the_amax_pass(monkeypatch, m, e, top_k, bm, poisoned_empty):
    """16 experts with 64-row tiles: tail tiles; top_k 1: GEMM 2 writes the output. The amax buffer comes from a
    poisoned torch.empty, so a missing zero would show as NaN."""
    x, w13, w2, w, ids, kw, ref = _layer(m, e, 64, 48, top_k, QuantScheme.fp8_tensor(), seed=m)
    (fused, plain), seen = _on_and_off(monkeypatch, x, w13, w2, w, ids, kw, MoEKernelConfig(bm, 32, 32, 4, 4, 2))
    assert seen == [(False, True), (True, False), (False, False), (False, False)]
    assert torch.equal(fused, plain)
    assert_close_to_reference(fused, ref, "fp8_tensor")


def test_static_input_scale(monkeypatch, poisoned_empty):
    """A static ``a13_scale`` with a dynamic GEMM 2 activation: x's static quantization zeroes the buffer."""
    x, w13, w2, w, ids, kw, ref = _layer(40, 4, 64, 48, 2, QuantScheme.fp8_tensor(), seed=9)
    kw["a13_scale"] = x.abs().amax().float().reshape(1) / 448
    (fused, plain), seen = _on_and_off(monkeypatch, x, w13, w2, w, ids, kw, MoEKernelConfig(16, 32, 32, 4, 4, 2))
    assert seen[:2] == [(False, True), (True, False)]
    assert torch.equal(fused, plain)
    assert_close_to_reference(fused, ref, "fp8_tensor")


def test_expert_map(monkeypatch, poisoned_empty):
    scheme = QuantScheme.fp8_tensor()
    x, w13, w2, w, ids, kw, _ = _layer(60, 8, 64, 48, 2, scheme, seed=5)
    emap = torch.full((8,), -1, dtype=torch.int32, device=DEVICE)
    emap[2:6] = torch.arange(4, dtype=torch.int32, device=DEVICE)
    kw.update(w13_scale=kw["w13_scale"][2:6], w2_scale=kw["w2_scale"][2:6])
    (fused, plain), _ = _on_and_off(monkeypatch, x, w13[2:6], w2[2:6], w, ids, kw,
                                    MoEKernelConfig(16, 32, 32, 4, 4, 2), emap)
    assert torch.equal(fused, plain)


def test_nan_reaches_the_output_as_before(monkeypatch):
    """A NaN token makes GEMM 2's dynamic per-tensor scale NaN, hence every output row NaN, both ways."""
    x, w13, w2, w, ids, kw, _ = _layer(24, 4, 64, 48, 2, QuantScheme.fp8_tensor(), seed=2)
    x[3, 5] = float("nan")
    (fused, plain), _ = _on_and_off(monkeypatch, x, w13, w2, w, ids, kw, MoEKernelConfig(16, 32, 32, 4, 4, 2))
    assert fused.isnan().all() and plain.isnan().all()


@pytest.mark.parametrize("use_triton", [True, False])
def test_per_tensor_quant_plumbing(use_triton):
    """``amax`` stands in for the pass over x (same q and scale as computing it); ``zero`` is set to 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 300, generator=g).to(DEVICE, torch.float16 if DEVICE == "cpu" else torch.bfloat16)
    q, s = per_tensor_quant(x, torch.float8_e4m3fn, use_triton=use_triton)
    amax = x.float().abs().amax().reshape(1)
    zero = torch.full((1,), float("nan"), device=DEVICE)
    q2, s2 = per_tensor_quant(x, torch.float8_e4m3fn, use_triton=use_triton, amax=amax, zero=zero)
    assert torch.equal(q2.float(), q.float()) and torch.equal(s2, s)
    assert zero.item() == 0.0
    with pytest.raises(MoEInputError, match="amax"):
        per_tensor_quant(x, torch.float8_e4m3fn, amax=amax.double())
