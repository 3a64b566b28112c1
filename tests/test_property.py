"""Property tests: random problems drawn by hypothesis, every backend against the float64 reference."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moekit
from moekit.testing import assert_close_to_reference
from reference import moe_reference, route_reference

from conftest import DEVICE, KERNEL_DTYPES


@st.composite
def problems(draw):
    e = draw(st.sampled_from([1, 2, 3, 4, 8, 12, 16]))
    k = draw(st.integers(1, e))
    m = draw(st.integers(0, 40))
    h = draw(st.integers(1, 12)) * 8
    i = draw(st.integers(1, 8)) * 8
    mode = draw(st.sampled_from(["softmax", "sigmoid", "grouped"]))
    route = {"scoring": "sigmoid" if mode == "sigmoid" else "softmax",
             "renormalize": draw(st.booleans())}
    if mode == "grouped" and e % 4 == 0 and e >= 8:
        route.update(num_expert_group=4, topk_group=draw(st.integers(1, 4)))
        k = min(k, route["topk_group"] * e // 4)
    use_map = draw(st.booleans())
    return dict(m=m, e=e, k=k, h=h, i=i, route=route, use_map=use_map, seed=draw(st.integers(0, 2 ** 31 - 1)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems(), dtype=st.sampled_from(KERNEL_DTYPES), backend=st.sampled_from(["triton", "torch"]))
def test_random_problems(p, dtype, backend):
    # shown under "Captured stdout" when a test fails: after a device fault the last line names the culprit
    print(f"problem {p} {dtype} {backend}", flush=True)
    g = torch.Generator().manual_seed(p["seed"])
    m, e, k, h, i = p["m"], p["e"], p["k"], p["h"], p["i"]
    e_local, emap = e, None
    if p["use_map"] and e >= 2:  # this rank holds the odd experts
        e_local = e // 2
        emap = torch.full((e,), -1, dtype=torch.int32)
        emap[1::2][:e_local] = torch.arange(e_local, dtype=torch.int32)
    x = torch.randn(m, h, generator=g).to(dtype)
    w13 = (torch.randn(e_local, 2 * i, h, generator=g) / h ** 0.5).to(dtype)
    w2 = (torch.randn(e_local, h, i, generator=g) / i ** 0.5).to(dtype)
    logits = torch.randn(m, e, generator=g)
    dev = lambda t: None if t is None else t.to(DEVICE)
    out = moekit.fused_moe(dev(x), dev(w13), dev(w2), dev(logits), k, expert_map=dev(emap), backend=backend,
                           **p["route"])
    if DEVICE == "cuda":
        torch.cuda.synchronize()  # a device fault surfaces in the example that caused it
    assert out.shape == (m, h)
    if m == 0:
        return
    w, ids = route_reference(logits, k, p["route"]["renormalize"], p["route"]["scoring"],
                             p["route"].get("num_expert_group"), p["route"].get("topk_group"))
    ref = moe_reference(x, w13, w2, w, ids, emap)
    if emap is not None and ref.abs().max() == 0:
        assert (out == 0).all()  # every choice landed on another rank
        return
    assert_close_to_reference(out, ref, dtype)
