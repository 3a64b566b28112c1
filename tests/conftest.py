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
