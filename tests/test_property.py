"""Property tests: random problems drawn by hypothesis, every backend against the float64 reference; every
``moekit.linear`` path with random configs against float64 ``F.linear``."""
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import moekit
from moekit.testing import assert_close_to_reference
from reference import fp8_linear_weight, moe_reference, route_reference

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
# found on the H100 in session 25 (wrong output, and in another run an illegal address), not yet explained:
# docs/SESSION25_NOTES.md. Right in the interpreter.
@example(p={"m": 16, "e": 16, "k": 1, "h": 48, "i": 16, "route": {"scoring": "softmax", "renormalize": False},
            "use_map": False, "seed": 1}, dtype=torch.float16, backend="triton")
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


@st.composite
def linear_problems(draw):
    """A random ``moekit.linear`` problem and one path with a random (small) config valid for it."""
    from moekit.linear import GEMV_MAX_M, GEMV_MMA_MAX_M, SKINNY_MAX_M, LinearConfig

    scheme_name = draw(st.sampled_from(["none", "fp8_channel", "fp8_tensor", "fp8_block"]))
    block = (draw(st.sampled_from([16, 24, 128])), draw(st.sampled_from([16, 32, 128]))) \
        if scheme_name == "fp8_block" else None
    paths = ["torch", "triton"] + (["triton_w8a8"] if scheme_name != "none" else [])
    m = draw(st.integers(0, 20))
    paths += (["skinny"] if m <= SKINNY_MAX_M else []) + (["gemv"] if m <= GEMV_MAX_M else []) + \
        (["gemv_mma"] if m <= GEMV_MMA_MAX_M else [])
    path = draw(st.sampled_from(paths))
    pow2 = lambda lo, hi: st.sampled_from([1 << b for b in range(lo, hi + 1)])  # noqa: E731
    warps, stages = draw(pow2(0, 2)), draw(st.integers(1, 3))
    if path in ("gemv", "gemv_mma"):
        cfg = LinearConfig(1, draw(pow2(0, 5)), draw(pow2(4, 7)), 1, 1, warps, stages)
    elif path == "skinny":
        cfg = LinearConfig(16, draw(pow2(4, 5)), draw(pow2(4, 6)), draw(st.integers(1, 4)), 1, warps, stages,
                           FUSED_REDUCE=draw(st.integers(0, 1)))
    else:  # the fp8 x fp8 dot of triton_w8a8 needs K steps of at least 32
        cfg = LinearConfig(draw(pow2(4, 5)), draw(pow2(4, 5)), draw(pow2(5 if path == "triton_w8a8" else 4, 6)),
                           draw(st.integers(1, 2)), draw(st.integers(1, 2)), warps, stages)
    return dict(m=m, n=draw(st.integers(16, 90)), k=draw(st.integers(1, 200)), scheme=scheme_name, block=block,
                path=path, config=cfg, bias=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 31 - 1)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=linear_problems(), dtype=st.sampled_from(KERNEL_DTYPES))
def test_random_linear_problems(p, dtype):
    """Every ``moekit.linear`` path with a random valid config, any M / N / K, against float64 ``F.linear`` on
    the (dequantized) weight; activation-quantized paths (w8a8, ``torch._scaled_mm``) with fp8 tolerances."""
    from moekit.linear import _path_ok, linear_path
    from moekit.platform import fp8_dtype, platform_of
    from moekit.quant.scheme import QuantScheme

    print(f"linear problem {p} {dtype}", flush=True)
    scheme = {"none": QuantScheme.none(), "fp8_channel": QuantScheme.fp8_channel(),
              "fp8_tensor": QuantScheme.fp8_tensor()}.get(p["scheme"]) or QuantScheme.fp8_block(*p["block"])
    assume(_path_ok(p["path"], torch.device(DEVICE), scheme, p["m"], dtype)[0])
    g = torch.Generator().manual_seed(p["seed"])
    m, n, k = p["m"], p["n"], p["k"]
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if p["bias"] else None
    kw = {}
    if scheme.is_quantized:
        weight, scale, w64 = fp8_linear_weight(n, k, scheme, g, fp8_dtype(platform_of(torch.device(DEVICE))))
        kw = {"quant": scheme, "weight_scale": scale.to(DEVICE)}
    else:
        weight = (torch.randn(n, k, generator=g) / k ** 0.5).to(dtype)
        w64 = weight.double()
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    out = linear_path(p["path"], dev(x), dev(weight), dev(b), config=p["config"], **kw)
    assert out.shape == (m, n) and out.dtype == dtype
    if m == 0:
        return
    ref = torch.nn.functional.linear(x.double(), w64, None if b is None else b.double())
    w8a8 = p["path"] == "triton_w8a8" or (p["path"] == "torch" and DEVICE == "cuda" and scheme.is_quantized
                                          and scheme.granularity != "block" and dtype == torch.bfloat16)
    key = ("fp8_block" if scheme.granularity == "block" else "fp8_tensor") if w8a8 else dtype
    assert_close_to_reference(out, ref.to(out.device), key)
