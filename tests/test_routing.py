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
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("m,e,k,groups,topk_group", [(9, 64, 8, 8, 4), (4, 32, 4, 4, 2), (3, 16, 6, 4, 2),
                                                     (2, 256, 8, 8, 4), (5, 96, 6, 3, 2), (3, 60, 5, 5, 3),
                                                     (4, 16, 4, 1, 1), (2, 40, 3, 10, 10)])
def test_grouped_topk(scoring, with_bias, renormalize, m, e, k, groups, topk_group):
    """Grouped top-k (DeepSeek-V2 / V3) on both backends against the float64 per-token reference: groups of
    non-power-of-two size, a group count that is not a power of two, one group, every group kept."""
    logits = torch.randn(m, e, device=DEVICE) * 2
    bias = torch.randn(e, device=DEVICE) * 0.5 if with_bias else None
    ref_w, ref_ids = route_reference(logits, k, renormalize, scoring, groups, topk_group, bias)
    kw = dict(renormalize=renormalize, scoring=scoring, num_expert_group=groups, topk_group=topk_group,
              correction_bias=bias)
    _check(*moekit.select_experts(logits, k, **kw), ref_w, ref_ids)
    _check(*select_experts_torch(logits, k, **kw), ref_w, ref_ids)
    _check(*select_experts_triton(logits, k, **kw), ref_w, ref_ids)


@pytest.mark.parametrize("scoring", ["sigmoid", "softmax"])
def test_correction_bias_without_groups(scoring):
    """A correction bias alone steers the choice (weights stay the scores) in the kernel as in PyTorch."""
    logits = torch.randn(6, 48, device=DEVICE)
    bias = torch.randn(48, device=DEVICE).to(torch.float16)  # any float dtype, added in float32
    ref_w, ref_ids = route_reference(logits, 5, True, scoring, correction_bias=bias)
    _check(*select_experts_triton(logits, 5, scoring=scoring, correction_bias=bias), ref_w, ref_ids)
    _check(*moekit.select_experts(logits, 5, scoring=scoring, correction_bias=bias), ref_w, ref_ids)


def test_grouped_topk_ties_and_nan():
    """Tied group scores keep the lower group, tied experts the lower id (as the reference); a NaN row gets
    in-range ids and NaN weights while the other rows are exact."""
    logits = torch.zeros(3, 32, device=DEVICE)
    logits[1, 5] = float("nan")
    logits[2] = torch.randn(32, device=DEVICE)
    bias = torch.zeros(32, device=DEVICE)
    kw = dict(scoring="sigmoid", num_expert_group=4, topk_group=2, correction_bias=bias)
    w, ids = select_experts_triton(logits, 4, **kw)
    ref_w, ref_ids = route_reference(logits[[0, 2]], 4, True, "sigmoid", 4, 2, bias)
    assert ids[0].tolist() == [0, 1, 2, 3] and torch.equal(ids[[0, 2]].cpu().long(), ref_ids)
    torch.testing.assert_close(w[[0, 2]].cpu().double(), ref_w, rtol=1e-5, atol=1e-6)
    assert torch.isnan(w[1]).all() and ((ids[1] >= 0) & (ids[1] < 32)).all()


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
