"""Test set-up: without a GPU, Triton kernels run in the interpreter (TRITON_INTERPRET=1), which must be
set before triton decorates any kernel, hence here, before moekit is imported."""
import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if HAS_GPU else "cpu"
# bf16 arithmetic is wrong inside the Triton interpreter: CPU runs test kernels in fp16/fp32 only.
KERNEL_DTYPES = [torch.bfloat16, torch.float16, torch.float32] if HAS_GPU else [torch.float16, torch.float32]

gpu_only = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Make every torch.empty / empty_like during the test return poisoned memory (NaN / int max), so a
    kernel that reads an element nobody wrote, or leaves an output element unwritten, is caught."""
    from moekit.testing import poison_

    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        return poison_(real_empty(*args, **kwargs))

    def empty_like(*args, **kwargs):
        return poison_(real_empty_like(*args, **kwargs))

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
    yield


def check_chained_launches(monkeypatch, x, w13, w2, logits, k, replays=3, **kw):
    """moekit.fused_moe(x, w13, w2, logits, k, **kw) with chained launches (``MOEKIT_PDL=1``) gives bit for bit
    the output of plain launches (``MOEKIT_PDL=0``), eagerly and replayed in a CUDA graph on fresh inputs written
    into the captured buffers; no NaN. On sm_90 and later the chained run really is chained."""
    import moekit
    from moekit.platform import programmatic_launch

    monkeypatch.setenv("MOEKIT_PDL", "0")
    assert not programmatic_launch(x.device)
    plain = moekit.fused_moe(x, w13, w2, logits, k, **kw)
    monkeypatch.setenv("MOEKIT_PDL", "1")
    if torch.cuda.get_device_capability() >= (9, 0) and torch.version.hip is None:
        assert programmatic_launch(x.device)
    assert torch.equal(moekit.fused_moe(x, w13, w2, logits, k, **kw), plain)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out = moekit.fused_moe(x, w13, w2, logits, k, **kw)
    for _ in range(replays):
        x.copy_(torch.randn_like(x))
        logits.copy_(torch.randn_like(logits))
        graph.replay()
        monkeypatch.setenv("MOEKIT_PDL", "0")
        ref = moekit.fused_moe(x, w13, w2, logits, k, **kw)
        monkeypatch.setenv("MOEKIT_PDL", "1")
        torch.cuda.synchronize()
        assert not torch.isnan(g_out).any()
        assert torch.equal(g_out, ref)


def check_fused_moe_graph_replays(x, w13, w2, logits, k, replays=2):
    """Capture moekit.fused_moe in a CUDA graph (warm-up on a side stream first), then replay it on fresh
    inputs written into the captured buffers and check each output against the float64 reference."""
    import moekit
    from moekit.testing import assert_close_to_reference
    from reference import moe_reference, route_reference

    moekit.fused_moe(x, w13, w2, logits, k)  # warm-up compiles the kernels
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        moekit.fused_moe(x, w13, w2, logits, k)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out = moekit.fused_moe(x, w13, w2, logits, k)
    for _ in range(replays):
        x.copy_(torch.randn_like(x))
        logits.copy_(torch.randn_like(logits))
        graph.replay()
        torch.cuda.synchronize()
        w, ids = route_reference(logits, k)
        assert_close_to_reference(g_out, moe_reference(x, w13, w2, w, ids), x.dtype)


def make_layer(m, e, h, i, top_k, dtype, scheme=None, seed=0):
    """A random MoE layer on DEVICE: (x [m, h] in ``dtype``, w13, w2 (quantized by ``scheme`` if given), routing
    weights float32 and ids int32 [m, top_k] (route_reference), fused_experts keywords of the scheme, the float64
    reference output from the (dequantized) weights)."""
    from moekit.quant import dequantize_weights, quantize_weights
    from reference import moe_reference, route_reference

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, h, generator=g).to(DEVICE, dtype)
    w13 = (torch.randn(e, 2 * i, h, generator=g) / h ** 0.5).to(DEVICE)
    w2 = (torch.randn(e, h, i, generator=g) / i ** 0.5).to(DEVICE)
    w, ids = route_reference(torch.randn(m, e, generator=g), top_k)  # float64 / int64, on the CPU
    w, ids = w.float().to(DEVICE), ids.to(DEVICE, torch.int32)
    kw = {}
    if scheme is None:
        w13, w2 = w13.to(dtype), w2.to(dtype)
        r13, r2 = w13.double(), w2.double()
    else:
        a, b = quantize_weights(w13, scheme), quantize_weights(w2, scheme)
        w13, w2 = a[0], b[0]
        kw = dict(quant=scheme, w13_scale=a[1], w2_scale=b[1])
        if len(a) > 2:
            kw.update(w13_zero=a[2], w2_zero=b[2])
        r13 = dequantize_weights(a[0], a[1], scheme, kw.get("w13_zero"), torch.float64)
        r2 = dequantize_weights(b[0], b[1], scheme, kw.get("w2_zero"), torch.float64)
    return x, w13, w2, w, ids, kw, moe_reference(x, r13, r2, w, ids)
