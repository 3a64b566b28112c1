"""fused_moe / fused_experts on every backend against a float64 per-token reference."""
import dataclasses

import pytest
import torch

import moekit
from moekit.testing import assert_close_to_reference, tolerance_for
from reference import moe_reference, route_reference

from conftest import DEVICE, KERNEL_DTYPES, check_fused_moe_graph_replays, gpu_only

BACKENDS = ["triton", "torch"]


def make_layer(m, e, h, i, dtype, device=DEVICE, e_logits=None):
    x = torch.randn(m, h, device=device).to(dtype)
    w13 = (torch.randn(e, 2 * i, h, device=device) / h ** 0.5).to(dtype)
    w2 = (torch.randn(e, h, i, device=device) / i ** 0.5).to(dtype)
    logits = torch.randn(m, e_logits or e, device=device)
    return x, w13, w2, logits


def run_and_check(backend, dtype, m, e, k, h, i, expert_map=None, e_logits=None, activation="silu", **route):
    x, w13, w2, logits = make_layer(m, e, h, i, dtype, e_logits=e_logits)
    out = moekit.fused_moe(x, w13, w2, logits, k, expert_map=expert_map, activation=activation, backend=backend,
                           **route)
    assert out.shape == (m, h) and out.dtype == dtype
    w, ids = route_reference(logits, k, route.get("renormalize", True), route.get("scoring", "softmax"),
                             route.get("num_expert_group"), route.get("topk_group"), route.get("correction_bias"))
    ref = moe_reference(x, w13, w2, w, ids, expert_map, activation)
    assert_close_to_reference(out, ref, dtype)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("m", [1, 7, 300])
def test_sizes(backend, dtype, m, poisoned_empty):
    run_and_check(backend, dtype, m, e=8, k=2, h=64, i=32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_odd_hidden_and_intermediate(backend, dtype, poisoned_empty):
    run_and_check(backend, dtype, 9, e=4, k=2, h=200, i=96)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 6])
def test_top_k_one_and_all(backend, k, poisoned_empty):
    run_and_check(backend, KERNEL_DTYPES[-1], 13, e=6, k=k, h=32, i=16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,e", [(9, 16), (16, 16), (32, 16)])
def test_top_k_one_decode_batches(backend, m, e, poisoned_empty):
    """top_k = 1 at 9-32 tokens over 16 experts (Llama-4-Scout-like decode batches): the fused route-and-align
    kernel's region, where its alignment was wrong on the GPU until session 26 (kernels/align.py)."""
    from moekit.kernels.align import route_align_applicable
    from moekit.triton_experts import use_decode_gemv

    # the fused kernel's region, past the decode GEMVs' (the Triton backend takes that path)
    assert route_align_applicable(m, e, 1) and not use_decode_gemv(m, e, 1)
    run_and_check(backend, KERNEL_DTYPES[0], m, e=e, k=1, h=48, i=16, renormalize=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,e", [(1, 16), (13, 16), (40, 8), (300, 8), (0, 8)])
def test_router_weight_on_input(backend, m, e, poisoned_empty):
    """Llama-4's MoE: sigmoid top-1, the weight scaling the token's input (the activation sees scaled values),
    through fused_moe (the decode GEMV, the fused route-and-align and the grouped paths) and fused_experts."""
    dtype = KERNEL_DTYPES[0]
    x, w13, w2, logits = make_layer(m, e, 48, 32, dtype)
    out = moekit.fused_moe(x, w13, w2, logits, 1, scoring="sigmoid", renormalize=False, backend=backend,
                           apply_router_weight_on_input=True)
    assert out.shape == (m, 48) and out.dtype == dtype
    if m:
        w, ids = route_reference(logits, 1, False, "sigmoid")
        ref = moe_reference(x.double() * w.double().to(x.device), w13, w2, torch.ones_like(w), ids)
        assert_close_to_reference(out, ref, dtype)
        # not the output-weighted layer: SiLU is not linear, so the two differ
        assert (ref - moe_reference(x, w13, w2, w, ids)).abs().max() > 1e-3
    w_t, ids_t = moekit.select_experts(logits, 1, scoring="sigmoid", renormalize=False)
    out2 = moekit.fused_experts(x, w13, w2, w_t, ids_t, backend=backend, apply_router_weight_on_input=True)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


def test_router_weight_on_input_needs_top_one():
    x, w13, w2, logits = make_layer(3, 8, 32, 16, KERNEL_DTYPES[0])
    with pytest.raises(moekit.MoEInputError, match="apply_router_weight_on_input.*top_k == 1.*top_k=2"):
        moekit.fused_moe(x, w13, w2, logits, 2, apply_router_weight_on_input=True)
    with pytest.raises(moekit.MoEInputError, match="apply_router_weight_on_input.*a bool"):
        moekit.fused_moe(x, w13, w2, logits, 1, apply_router_weight_on_input=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("e,k,m", [(1, 1, 5), (2, 1, 9), (2, 2, 40), (2, 2, 300)])
def test_one_and_two_experts(backend, e, k, m, poisoned_empty):
    """The smallest layers (1- and 2-expert alignment histograms; see kernels.align.expert_bins)."""
    run_and_check(backend, KERNEL_DTYPES[0], m, e=e, k=k, h=24, i=16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_activation(backend, activation, poisoned_empty):
    run_and_check(backend, torch.float32, 5, e=4, k=2, h=32, i=16, activation=activation)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("route", [
    dict(scoring="sigmoid"), dict(renormalize=False),
    dict(scoring="sigmoid", num_expert_group=4, topk_group=2, correction_bias=torch.linspace(-1, 1, 16)),
    dict(num_expert_group=4, topk_group=2),
])
def test_routing_modes(backend, route, poisoned_empty):
    if route.get("correction_bias") is not None:
        route = {**route, "correction_bias": route["correction_bias"].to(DEVICE)}
    run_and_check(backend, torch.float32, 11, e=16, k=4, h=32, i=16, **route)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("top_k", [2, 1])
def test_expert_map(backend, top_k, poisoned_empty):
    e_global, e_local = 16, 8
    emap = torch.full((e_global,), -1, dtype=torch.int32)
    emap[8:] = torch.arange(e_local, dtype=torch.int32)
    out = run_and_check(backend, torch.float32, 40, e=e_local, k=top_k, h=32, i=16, expert_map=emap.to(DEVICE),
                        e_logits=e_global)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_tokens_one_expert_and_empty_experts(backend, poisoned_empty):
    m, e, h, i = 70, 8, 32, 16
    x, w13, w2, _ = make_layer(m, e, h, i, torch.float32)
    ids = torch.full((m, 2), 5, dtype=torch.int32, device=DEVICE)
    ids[:, 1] = 2
    w = torch.rand(m, 2, device=DEVICE)
    out = moekit.fused_experts(x, w13, w2, w, ids, backend=backend)
    assert_close_to_reference(out, moe_reference(x, w13, w2, w, ids), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, w13, w2, logits = make_layer(0, 4, 32, 16, torch.float32)
    out = moekit.fused_moe(x, w13, w2, logits, 2, backend=backend)
    assert out.shape == (0, 32)


def test_float64_torch_backend_is_exact():
    x, w13, w2, logits = make_layer(9, 4, 24, 8, torch.float64)
    logits = logits.double()  # float64 logits give float64 routing weights
    out = moekit.fused_moe(x, w13, w2, logits, 2, backend="torch")
    w, ids = route_reference(logits, 2)
    assert_close_to_reference(out, moe_reference(x, w13, w2, w, ids), "fp64")


def test_non_contiguous_hidden_states_accepted():
    x, w13, w2, logits = make_layer(6, 4, 32, 16, torch.float32)
    xt = torch.randn(32, 6, device=DEVICE).t()
    out = moekit.fused_moe(xt, w13, w2, logits, 2, backend="triton")
    ref = moekit.fused_moe(xt.contiguous(), w13, w2, logits, 2, backend="torch")
    assert_close_to_reference(out, ref, torch.float32)


def _bad(**over):
    x, w13, w2, logits = make_layer(4, 4, 32, 16, torch.float32)
    args = dict(hidden_states=x, w13=w13, w2=w2, topk_weights=torch.rand(4, 2, device=DEVICE),
                topk_ids=torch.zeros(4, 2, dtype=torch.int32, device=DEVICE))
    args.update(over)
    return args


@pytest.mark.parametrize("over,arg", [
    (dict(w13=torch.randn(4, 32, 31)), "w13"),
    (dict(w13=torch.randn(4, 31, 32)), "w13"),
    (dict(w2=torch.randn(4, 32, 8)), "w2"),
    (dict(w2=torch.randn(4, 32, 16, dtype=torch.float16)), "w2"),
    (dict(topk_ids=torch.zeros(4, 2)), "topk_ids"),
    (dict(topk_ids=torch.zeros(3, 2, dtype=torch.int32)), "topk_ids"),
    (dict(topk_weights=torch.rand(4, 3)), "topk_weights"),
    (dict(hidden_states=torch.randn(4, 32, 1)), "hidden_states"),
    (dict(expert_map=torch.zeros(2, dtype=torch.int32)), "expert_map"),
    (dict(w2=torch.randn(4, 16, 32).transpose(1, 2)), "w2"),
    (dict(activation="relu"), "activation"),
    (dict(backend="cuda"), "backend"),
])
def test_bad_input_names_argument(over, arg):
    args = _bad(**{k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in over.items()})
    with pytest.raises(moekit.MoEInputError, match=arg):
        moekit.fused_experts(**args)


def test_fused_moe_checks_router_logits():
    x, w13, w2, logits = make_layer(4, 4, 32, 16, torch.float32)
    with pytest.raises(moekit.MoEInputError, match="router_logits"):
        moekit.fused_moe(x, w13, w2, logits[:3], 2)
    with pytest.raises(moekit.MoEInputError, match="router_logits"):
        moekit.fused_moe(x, w13, w2, torch.randn(4, 5, device=DEVICE), 2)


@gpu_only
def test_cuda_graph_capture_whole_fused_moe():
    m, e, k, h, i = 64, 16, 4, 256, 128
    check_fused_moe_graph_replays(*make_layer(m, e, h, i, torch.bfloat16), k)


@gpu_only
@pytest.mark.slow
def test_64bit_offsets():
    """M * k * H > 2**31: the [M*k, H] buffer and its row offsets overflow int32."""
    m, e, k, h, i = 65536, 8, 8, 4352, 64
    assert m * k * h > 2 ** 31
    x, w13, w2, logits = make_layer(m, e, h, i, torch.bfloat16)
    out = moekit.fused_moe(x, w13, w2, logits, k, backend="triton")
    ref = moekit.fused_moe(x, w13, w2, logits, k, backend="torch")
    # two bf16 forwards round their intermediates apart: a few of the 285M elements land 2 ulps off (seen once
    # on the H100: 2 elements at 1.05x the tolerance). An offset overflow corrupts whole rows, millions of them.
    assert_close_to_reference(out, ref.float(), dataclasses.replace(tolerance_for("bf16"), max_mismatch_frac=1e-6))
    # spot-check the last tokens against the float64 per-token reference
    w, ids = moekit.select_experts(logits[-4:], k)
    assert_close_to_reference(out[-4:], moe_reference(x[-4:], w13, w2, w, ids), "bf16")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_logits_give_nan_rows_not_wrong_values(backend):
    x, w13, w2, logits = make_layer(5, 8, 32, 16, torch.float32)
    logits[2, 3] = float("nan")
    out = moekit.fused_moe(x, w13, w2, logits, 2, backend=backend)
    assert torch.isnan(out[2]).all()
    keep = [0, 1, 3, 4]
    w, ids = route_reference(logits[keep], 2)
    assert_close_to_reference(out[keep], moe_reference(x[keep], w13, w2, w, ids), torch.float32)


def test_validate_flag_checks_values(monkeypatch):
    monkeypatch.setenv("MOEKIT_VALIDATE", "1")
    x, w13, w2, logits = make_layer(4, 4, 32, 16, torch.float32)
    bad = logits.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(moekit.MoEInputError, match="router_logits"):
        moekit.fused_moe(x, w13, w2, bad, 2)
    ids = torch.tensor([[0, 4]] * 4, dtype=torch.int32, device=DEVICE)
    with pytest.raises(moekit.MoEInputError, match="topk_ids"):
        moekit.fused_experts(x, w13, w2, torch.rand(4, 2, device=DEVICE), ids)
    emap = torch.tensor([0, 1, 2, 7], dtype=torch.int32, device=DEVICE)
    with pytest.raises(moekit.MoEInputError, match="expert_map"):
        moekit.fused_experts(x, w13, w2, torch.rand(4, 2, device=DEVICE), ids.clamp(max=3), expert_map=emap)


@pytest.mark.parametrize("m", [3, 300])
def test_repeated_runs_are_bitwise_identical(m):
    """The token sort is stable and every reduction has a fixed order: same inputs, same bits."""
    x, w13, w2, logits = make_layer(m, 8, 64, 32, KERNEL_DTYPES[0])
    first = moekit.fused_moe(x, w13, w2, logits, 2, backend="triton")
    for _ in range(2):
        assert torch.equal(moekit.fused_moe(x, w13, w2, logits, 2, backend="triton"), first)


def test_decode_path_resolves_backend_and_config_once(monkeypatch):
    """fused_moe at decode size on the Triton backend: one backend resolution and one config lookup per call
    (the fused route-and-align step hands both to fused_experts): host time matters at decode."""
    import moekit.configs as configs_mod
    import moekit.experts as experts_mod
    import moekit.triton_experts as triton_experts_mod

    calls = {"resolve": 0, "config": 0}
    real_resolve, real_config = experts_mod.resolve_backend, configs_mod.get_config

    def resolve(*a, **k):
        calls["resolve"] += 1
        return real_resolve(*a, **k)

    def config(*a, **k):
        calls["config"] += 1
        return real_config(*a, **k)

    monkeypatch.setattr(experts_mod, "resolve_backend", resolve)
    monkeypatch.setattr(configs_mod, "get_config", config)
    monkeypatch.setattr(triton_experts_mod, "get_config", config)
    x, w13, w2, logits = make_layer(3, 8, 32, 16, KERNEL_DTYPES[0])
    out = moekit.fused_moe(x, w13, w2, logits, 2, backend="triton")
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert calls == {"resolve": 1, "config": 1}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [1, 6])  # the decode GEMV (E >= 16) and the grouped GEMMs
def test_non_contiguous_expert_map(backend, m, poisoned_empty):
    """A strided expert_map (a column of a [E_global, 2] tensor) gives the same result as its contiguous copy:
    the kernels index the map without a stride, so it is made contiguous first."""
    emap = torch.full((64,), -1, dtype=torch.int32, device=DEVICE)
    emap[16:32] = torch.arange(16, dtype=torch.int32, device=DEVICE)
    strided = torch.stack([emap, emap], 1)[:, 0]
    assert not strided.is_contiguous()
    run_and_check(backend, KERNEL_DTYPES[-1], m, e=16, k=4, h=64, i=32, expert_map=strided, e_logits=64)


def test_fused_moe_checks_the_layer_before_routing():
    """Bad layer arguments are reported by name before the decode fast path touches them."""
    x, w13, w2, logits = make_layer(1, 16, 64, 32, KERNEL_DTYPES[-1])
    emap = list(range(16))
    with pytest.raises(moekit.MoEInputError, match="expert_map"):
        moekit.fused_moe(x, w13, w2, logits, 2, expert_map=emap, backend="triton")
    with pytest.raises(moekit.MoEInputError, match="top_k"):
        moekit.fused_moe(x, w13, w2, logits, True, backend="triton")
    with pytest.raises(moekit.MoEInputError, match="hidden_states.*H >= 1"):
        moekit.fused_moe(x[:, :0], w13[:, :, :0], w2[:, :0], logits, 2, backend="torch")
    with pytest.raises(moekit.MoEInputError, match="w13.*E >= 1"):
        moekit.fused_experts(x, w13[:0], w2[:0], torch.ones(1, 2, device=DEVICE),
                             torch.zeros(1, 2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(moekit.MoEInputError, match="router_logits.*device"):
        moekit.fused_moe(x, w13, w2, logits.to("meta"), 2)
