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
