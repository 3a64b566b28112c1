"""Programmatic dependent launch of the grouped forward's kernels (:mod:`moekit.kernels.pdl`): the alignment, the
activation quantization, both GEMMs and the top-k sum are chained (each waits for the kernel before it, then lets
the next one launch). Chained and plain launches must give the same bits, eagerly and in a CUDA graph."""
import pytest
import torch

import moekit
from moekit.kernels.pdl import chained_launch

from conftest import DEVICE, check_chained_launches, gpu_only
from test_gemv import FP8, fp8_layer, layer


def test_chained_launch_off_without_a_gpu(monkeypatch):
    """On the CPU (and under the interpreter) no kernel is launched with PDL: the kernels' ``PDL`` stays off."""
    assert chained_launch(torch.device("cpu")) == {}
    monkeypatch.setenv("MOEKIT_PDL", "0")
    assert chained_launch(torch.device(DEVICE)) == {}


@pytest.mark.parametrize("m, e, k, chained", [(40, 64, 8, True), (512, 64, 8, True), (513, 64, 8, False),
                                              (256, 8, 2, True), (1024, 8, 2, False)])
@pytest.mark.parametrize("key", ["bf16", "fp8_block"])
def test_forward_chains_only_up_to_64_slots_per_expert(m, e, k, chained, key, monkeypatch):
    """Every chained launch of a grouped forward sees the rule's answer (``pdl.chain_applies``: at most
    ``CHAIN_MAX_SLOTS_PER_EXPERT`` slots per expert), and launches outside a forward are not restricted."""
    import moekit.kernels.pdl as pdl

    assert pdl.CHAIN_MAX_SLOTS_PER_EXPERT == 64 and pdl.chain_applies(m * k, e) == chained
    seen = []
    monkeypatch.setattr(pdl, "chained_launch", lambda device: seen.append(getattr(pdl._forward, "on", None)) or {})
    h, i = 128, 128
    scheme = s13 = s2 = None
    if key == "bf16":
        x, q13, q2, logits = layer(m, e, k, h, i, torch.float16 if DEVICE == "cpu" else torch.bfloat16)
    else:
        scheme = FP8[key]()
        x, q13, s13, q2, s2, logits, _, _ = fp8_layer(scheme, m, e, h, i, torch.float16)
    moekit.fused_moe(x, q13, q2, logits, k, backend="triton", quant=scheme, w13_scale=s13, w2_scale=s2)
    assert len(seen) >= 4 and set(seen) == {chained}  # alignment, (quantization,) GEMM 1, GEMM 2, top-k sum
    assert getattr(pdl._forward, "on", None) is None
    with pdl.chaining(False):
        assert chained_launch(torch.device(DEVICE)) == {}


def test_forward_checks_the_device_once():
    """A chained forward asks ``programmatic_launch`` once (in ``pdl.chaining``), not at every kernel launch."""
    import moekit.kernels.pdl as pdl

    calls = []
    real = pdl.programmatic_launch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pdl, "programmatic_launch", lambda device: calls.append(device) or real(device))
        x, w13, w2, logits = layer(40, 64, 8, 128, 128, torch.float16 if DEVICE == "cpu" else torch.bfloat16)
        moekit.fused_moe(x, w13, w2, logits, 8, backend="triton")
    assert len(calls) == 1


@gpu_only
@pytest.mark.parametrize("key", ["bf16", "fp8_block", "fp8_tensor", "fp8_channel", "int8_weight_only"])
@pytest.mark.parametrize("m", [40, 300])  # one alignment program (320 slots); the three launches (2400 slots)
def test_grouped_forward_chained_equals_plain(key, m, monkeypatch):
    """The grouped forward (no decode GEMVs at these sizes) chained bit for bit equal to plain launches, with an
    expert map dropping experts, eagerly and replayed in a CUDA graph on fresh inputs."""
    e, k, h, i = 64, 8, 512, 384
    scheme = s13 = s2 = None
    if key == "bf16":
        x, q13, q2, logits = layer(m, e, k, h, i, torch.bfloat16)
    else:
        scheme = FP8[key]()
        x, q13, s13, q2, s2, logits, _, _ = fp8_layer(scheme, m, e, h, i, torch.bfloat16)
    emap = torch.arange(e, dtype=torch.int32, device=DEVICE)
    emap[::5] = -1
    check_chained_launches(monkeypatch, x, q13, q2, logits, k, backend="triton", quant=scheme, w13_scale=s13,
                           w2_scale=s2, expert_map=emap)
