import pytest
import torch

import moekit
from moekit.kernels.routing import select_experts_triton
from moekit.routing import select_experts_torch
from reference import route_reference

from conftest import DEVICE


def _check(weights, ids, ref_w, ref_ids, dtype=torch.float32):
    assert weights.dtype == dtype and ids.dtype == torch.int32
    assert torch.equal(ids.cpu().long(), ref_ids)
    torch.testing.assert_close(weights.cpu().double(), ref_w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("m,e,k", [(1, 8, 2), (7, 16, 1), (33, 16, 16), (5, 128, 8), (3, 60, 6)])
def test_topk_modes(scoring, renormalize, m, e, k):
    logits = torch.randn(m, e, device=DEVICE) * 3
    ref_w, ref_ids = route_reference(logits, k, renormalize, scoring)
    _check(*select_experts_torch(logits, k, renormalize=renormalize, scoring=scoring), ref_w, ref_ids)
    _check(*select_experts_triton(logits, k, renormalize=renormalize, scoring=scoring), ref_w, ref_ids)
    _check(*moekit.select_experts(logits, k, renormalize=renormalize, scoring=scoring), ref_w, ref_ids)


@pytest.mark.parametrize("scoring", ["sigmoid", "softmax"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("m,e,k,groups,topk_group", [(9, 64, 8, 8, 4), (4, 32, 4, 4, 2), (3, 16, 6, 4, 2)])
def test_grouped_topk(scoring, with_bias, m, e, k, groups, topk_group):
    logits = torch.randn(m, e, device=DEVICE)
    bias = torch.randn(e, device=DEVICE) * 0.5 if with_bias else None
    ref_w, ref_ids = route_reference(logits, k, True, scoring, groups, topk_group, bias)
    w, ids = moekit.select_experts(logits, k, scoring=scoring, num_expert_group=groups, topk_group=topk_group,
                                   correction_bias=bias)
    _check(w, ids, ref_w, ref_ids)


def test_bias_steers_choice_not_weights():
    logits = torch.zeros(1, 4)
    bias = torch.tensor([0.0, 0.0, 0.0, 10.0])
    w, ids = moekit.select_experts(logits, 1, scoring="sigmoid", renormalize=False, num_expert_group=2,
                                   topk_group=1, correction_bias=bias)
    assert ids.tolist() == [[3]]
    assert w.item() == pytest.approx(0.5)  # sigmoid(0), not sigmoid(0) + 10


def test_extreme_logits_no_nan():
    logits = torch.tensor([[1e4, -1e4, 0.0, 1e4], [-1e4, -1e4, -1e4, -1e4]], device=DEVICE)
    for fn in (select_experts_torch, select_experts_triton):
        w, ids = fn(logits, 2)
        assert torch.isfinite(w).all()
        assert len(set(ids[0].tolist())) == 2 and len(set(ids[1].tolist())) == 2


def test_empty_batch():
    w, ids = moekit.select_experts(torch.randn(0, 8, device=DEVICE), 2)
    assert w.shape == (0, 2) and ids.shape == (0, 2)
    w, ids = select_experts_triton(torch.randn(0, 8, device=DEVICE), 2)
    assert w.shape == (0, 2)


@pytest.mark.parametrize("kwargs,arg", [
    (dict(top_k=0), "top_k"), (dict(top_k=9), "top_k"), (dict(scoring="relu"), "scoring"),
    (dict(num_expert_group=3, topk_group=1), "num_expert_group"), (dict(num_expert_group=2), "num_expert_group"),
    (dict(num_expert_group=2, topk_group=3), "topk_group"), (dict(correction_bias=torch.zeros(7)), "correction_bias"),
])
def test_bad_routing_args(kwargs, arg):
    kwargs = {"top_k": 2, **kwargs}
    with pytest.raises(moekit.MoEInputError, match=arg):
        moekit.select_experts(torch.randn(4, 8), **kwargs)
