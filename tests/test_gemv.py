"""The decode GEMV kernels (kernels/moe_gemv.py): which batches take them, and their output against the
float64 reference through fused_moe / fused_experts, with the grouped-GEMM path kept testable at the same
sizes (MOEKIT_DECODE_GEMV=0)."""
import pytest
import torch

import moekit
import moekit.kernels.moe_gemv as gemv_mod
import moekit.kernels.quant as kq
import moekit.triton_experts as te
from moekit.kernels.moe_gemv import gemv_applies
from moekit.testing import assert_close_to_reference
from reference import moe_reference, route_reference

from conftest import DEVICE, KERNEL_DTYPES, check_chained_launches, check_fused_moe_graph_replays, gpu_only


@pytest.fixture
def gemv_calls(monkeypatch):
    """Counts moe_gemv launches (the backend's decode path) while the test runs."""
    calls = []
    real = te.moe_gemv

    def spy(*args, **kwargs):
        calls.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(te, "moe_gemv", spy)
    return calls


def layer(m, e, k, h, i, dtype, e_global=None):
    x = torch.randn(m, h, device=DEVICE).to(dtype)
    w13 = (torch.randn(e, 2 * i, h, device=DEVICE) / h ** 0.5).to(dtype)
    w2 = (torch.randn(e, h, i, device=DEVICE) / i ** 0.5).to(dtype)
    return x, w13, w2, torch.randn(m, e_global or e, device=DEVICE)


@pytest.mark.parametrize("m, e, k, expected", [
    (1, 8, 2, False), (1, 16, 2, True), (1, 1, 1, False), (8, 128, 8, True), (9, 128, 8, False),
    (16, 256, 8, True), (0, 8, 2, False), (4, 32, 4, True), (5, 32, 4, False),
])
def test_gemv_applies(m, e, k, expected):
    """16-bit weights: at least 16 experts and slots (tokens x top_k) <= E / 2."""
    assert gemv_applies(m, e, k) is expected


_Q = moekit.QuantScheme


@pytest.mark.parametrize("scheme, m, e, k, expected", [
    (_Q.fp8_block(128, 128), 8, 128, 8, True), (_Q.fp8_block(128, 128), 9, 128, 8, False),
    (_Q.fp8_tensor(), 2, 8, 2, True), (_Q.fp8_tensor(), 3, 8, 2, False), (_Q.int8_weight_only(), 1, 2, 1, True),
    (_Q.mxfp4(), 4, 32, 4, True), (_Q.mxfp4(), 5, 32, 4, False), (_Q.mxfp4(), 1, 8, 2, False),
    (_Q.int4_weight_only(), 2, 8, 2, True), (_Q.int4_weight_only(), 3, 8, 2, False),
    (_Q.int4_weight_only(), 1, 128, 8, True), (_Q.int4_weight_only(), 2, 128, 8, False),
])
def test_gemv_applies_per_weight_format(scheme, m, e, k, expected):
    """8-bit and int4 weights need no minimum of experts (Mixtral fp8 decodes faster on the GEMVs); mxfp4 keeps
    it; int4 stops past 8 slots (Qwen3 M=2 is faster on the grouped GEMMs)."""
    assert gemv_applies(m, e, k, scheme) is expected


@pytest.mark.parametrize("scheme, m, expected", [(None, 7, True), (None, 8, False), (_Q.fp8_block(128, 128), 4, True),
                                                 (_Q.fp8_block(128, 128), 8, False), (_Q.mxfp4(), 16, True)])
def test_gemv_applies_grouped_routing(scheme, m, expected):
    """Grouped top-k concentrates a batch's slots on few experts: 16- and 8-bit weights stop below E / 4
    (DeepSeek-V3: E = 256, top-8); mxfp4 keeps E / 2."""
    assert gemv_applies(m, 256, 8, scheme, grouped=True) is expected


def test_fused_moe_tells_the_decode_rule_about_grouped_routing(gemv_calls):
    """fused_moe passes grouped routing to the path choice: the same batch takes the GEMVs without groups and
    the grouped GEMMs with them."""
    x, w13, w2, logits = layer(2, 32, 4, 64, 32, torch.float32)
    kw = dict(backend="triton", scoring="sigmoid")
    moekit.fused_moe(x, w13, w2, logits, 4, **kw)
    assert gemv_calls == [2]
    moekit.fused_moe(x, w13, w2, logits, 4, num_expert_group=4, topk_group=2, **kw)
    assert gemv_calls == [2]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("m, e, k, h, i", [
    (1, 16, 2, 64, 32), (1, 128, 8, 256, 96), (3, 64, 4, 200, 96), (1, 16, 3, 40, 24), (1, 16, 1, 72, 40),
    (1, 32, 8, 128, 64),
])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gemv_matches_reference(dtype, m, e, k, h, i, activation, gemv_calls, poisoned_empty):
    x, w13, w2, logits = layer(m, e, k, h, i, dtype)
    out = moekit.fused_moe(x, w13, w2, logits, k, activation=activation, backend="triton")
    assert gemv_calls == [m]
    w, ids = route_reference(logits, k, True, "softmax")
    assert_close_to_reference(out, moe_reference(x, w13, w2, w, ids, None, activation), dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_gemv_expert_map_skips_remote_experts(dtype, gemv_calls, poisoned_empty):
    """Expert parallelism: 32 global experts, 16 local; slots on remote experts contribute nothing, and a
    token whose experts are all remote gets zeros."""
    m, e_global, k, h, i = 2, 32, 4, 96, 48
    emap = torch.full((e_global,), -1, dtype=torch.int32)
    emap[1::2] = torch.arange(e_global // 2, dtype=torch.int32)
    x, w13, w2, logits = layer(m, e_global // 2, k, h, i, dtype, e_global=e_global)
    logits[1, 1::2] = -1e4  # token 1: its top-k all on even (remote) experts
    out = moekit.fused_moe(x, w13, w2, logits, k, expert_map=emap.to(DEVICE), backend="triton")
    assert gemv_calls == [m]
    w, ids = route_reference(logits, k, True, "softmax")
    assert_close_to_reference(out, moe_reference(x, w13, w2, w, ids, emap), dtype)
    assert (out[1] == 0).all()


def test_gemv_fused_experts_unnormalized_weights(gemv_calls, poisoned_empty):
    """fused_experts with caller-made routing (weights not summing to 1, fp16 weights converted)."""
    m, e, k, h, i = 1, 16, 4, 64, 32
    x, w13, w2, _ = layer(m, e, k, h, i, torch.float32)
    ids = torch.tensor([[3, 0, 15, 7]], dtype=torch.int32, device=DEVICE)
    w = torch.tensor([[0.5, 2.0, -1.0, 0.25]], device=DEVICE).half()
    out = moekit.fused_experts(x, w13, w2, w, ids, backend="triton")
    assert gemv_calls == [m]
    assert_close_to_reference(out, moe_reference(x, w13, w2, w.float(), ids), torch.float32)


@pytest.mark.parametrize("m", [1, 4])
def test_switch_off_keeps_grouped_gemms(m, gemv_calls, monkeypatch, poisoned_empty):
    """MOEKIT_DECODE_GEMV=0: decode batches take the aligned grouped GEMMs (and stay correct)."""
    monkeypatch.setenv("MOEKIT_DECODE_GEMV", "0")
    x, w13, w2, logits = layer(m, 128, 8, 64, 32, torch.float32)
    out = moekit.fused_moe(x, w13, w2, logits, 8, backend="triton")
    assert gemv_calls == []
    w, ids = route_reference(logits, 8, True, "softmax")
    assert_close_to_reference(out, moe_reference(x, w13, w2, w, ids), torch.float32)


def test_explicit_config_keeps_grouped_gemms(gemv_calls):
    """A caller-given kernel config (the tuner's) means the grouped GEMMs, whatever the batch."""
    from moekit.configs import MoEKernelConfig
    from moekit.triton_experts import fused_experts_triton

    x, w13, w2, logits = layer(1, 16, 2, 64, 32, torch.float32)
    w, ids = route_reference(logits, 2, True, "softmax")
    out = fused_experts_triton(x, w13, w2, w.to(DEVICE), ids.to(DEVICE).int(),
                               config=MoEKernelConfig(16, 32, 32, 1, 4, 2))
    assert gemv_calls == []
    assert_close_to_reference(out, moe_reference(x, w13, w2, w, ids), torch.float32)


def test_gemv_tiles_fit_the_budget():
    for k, rows, cap in [(2048, 1, 512), (768, 8, 256), (14336, 2, 256), (40, 4, 256), (4096, 16, 256)]:
        for tile in (1024, 4096, 16384):
            bn, bk = gemv_mod._blocks(k, rows, cap, tile)
            assert bk <= cap and bn >= 1 and (rows * bn * bk <= tile or bn == 1)


@gpu_only
def test_cuda_graph_capture_decode_gemv(gemv_calls):
    m, e, k, h, i = 1, 128, 8, 512, 256
    check_fused_moe_graph_replays(*layer(m, e, k, h, i, torch.bfloat16), k)
    assert gemv_calls and all(c == m for c in gemv_calls)


def test_gemv_decode_resolves_backend_once(gemv_calls, monkeypatch):
    """fused_moe on the GEMV path: one backend resolution, no kernel-config lookup, routing kernel only."""
    import moekit.configs as configs_mod
    import moekit.experts as experts_mod

    calls = {"resolve": 0, "config": 0}
    real_resolve = experts_mod.resolve_backend

    def resolve(*a, **k):
        calls["resolve"] += 1
        return real_resolve(*a, **k)

    def config(*a, **k):
        calls["config"] += 1
        raise AssertionError("the GEMV path needs no kernel config")

    monkeypatch.setattr(experts_mod, "resolve_backend", resolve)
    monkeypatch.setattr(configs_mod, "get_config", config)
    monkeypatch.setattr(te, "get_config", config)
    x, w13, w2, logits = layer(1, 32, 4, 64, 32, torch.float32)
    out = moekit.fused_moe(x, w13, w2, logits, 4, backend="triton")
    assert calls == {"resolve": 1, "config": 0} and gemv_calls == [1]
    w, ids = route_reference(logits, 4, True, "softmax")
    assert_close_to_reference(out, moe_reference(x, w13, w2, w, ids), torch.float32)


FP8 = {"fp8_block": lambda: moekit.QuantScheme.fp8_block(128, 128), "fp8_channel": moekit.QuantScheme.fp8_channel,
       "fp8_tensor": moekit.QuantScheme.fp8_tensor, "int8_weight_only": moekit.QuantScheme.int8_weight_only,
       "fp8_block_64x32": lambda: moekit.QuantScheme.fp8_block(64, 32)}


def fp8_layer(scheme, m, e, h, i, dtype, e_global=None):
    """fp8 weights (quantized from random ones) and the float64 reference weights they dequantize to."""
    from moekit.quant import dequantize_weights, quantize_weights

    x, w13, w2, logits = layer(m, e, 1, h, i, torch.float32, e_global)
    q13, s13 = quantize_weights(w13, scheme)[:2]
    q2, s2 = quantize_weights(w2, scheme)[:2]
    ref13 = dequantize_weights(q13, s13, scheme, None, torch.float64)
    ref2 = dequantize_weights(q2, s2, scheme, None, torch.float64)
    return x.to(dtype), q13, s13, q2, s2, logits, ref13, ref2


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("key", list(FP8))
@pytest.mark.parametrize("m, e, k, h, i", [(1, 32, 4, 256, 128), (2, 80, 8, 200, 96), (1, 16, 1, 384, 256),
                                           (1, 16, 2, 2304, 40)])
def test_fp8_weights_gemv(dtype, key, m, e, k, h, i, gemv_calls, poisoned_empty):
    """fp8 (and int8 weight-only) weights at decode run weight-only through the GEMV kernels: the output
    matches the float64 layer of the dequantized weights (activations unquantized)."""
    scheme = FP8[key]()
    x, q13, s13, q2, s2, logits, ref13, ref2 = fp8_layer(scheme, m, e, h, i, dtype)
    out = moekit.fused_moe(x, q13, q2, logits, k, backend="triton", quant=scheme, w13_scale=s13, w2_scale=s2)
    assert gemv_calls == [m] and out.dtype == dtype
    w, ids = route_reference(logits, k, True, "softmax")
    assert_close_to_reference(out, moe_reference(x, ref13, ref2, w, ids), dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("layout, m, e, k, h, i", [
    ("plain", 1, 32, 4, 256, 128), ("plain", 2, 64, 8, 160, 96), ("plain", 1, 16, 2, 4160, 32),
    ("mma", 1, 32, 4, 256, 128), ("mma", 2, 64, 8, 192, 320), ("mma", 1, 16, 2, 4160, 64),
])
def test_mxfp4_weights_gemv(dtype, layout, m, e, k, h, i, gemv_calls, poisoned_empty):
    """mxfp4 weights at decode: e2m1 codes and e8m0 scales decoded in the GEMV kernels (K steps of several
    MX groups, a tail step, H over one 2048-code step) match the float64 layer of the dequantized weights;
    in the "mma" layout each byte's activations are permuted in registers and the group sums follow the words."""
    scheme = moekit.QuantScheme.mxfp4(layout)
    x, q13, s13, q2, s2, logits, ref13, ref2 = fp8_layer(scheme, m, e, h, i, dtype)
    out = moekit.fused_moe(x, q13, q2, logits, k, backend="triton", quant=scheme, w13_scale=s13, w2_scale=s2)
    assert gemv_calls == [m] and out.dtype == dtype
    w, ids = route_reference(logits, k, True, "softmax")
    assert_close_to_reference(out, moe_reference(x, ref13, ref2, w, ids), dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("group, zero, m, e, k, h, i", [
    (128, False, 1, 32, 4, 256, 128),  # groups of one K step or more (GEMV 2: K = 128 < its 256-code steps)
    (32, True, 2, 64, 4, 160, 96),     # several groups per K step, zero points, K tails, two tokens
    (16, False, 1, 8, 2, 2112, 48),    # H over one 1024-code step, few experts (int4 needs no minimum)
    (64, True, 1, 16, 2, 192, 64),
])
def test_int4_weights_gemv(dtype, group, zero, m, e, k, h, i, gemv_calls, poisoned_empty):
    """int4 weight-only at decode: packed codes, float32 group scales (and zero points) decoded in the GEMV
    kernels (``scale * (sum(u * x) - zero * sum(x))`` per group) match the float64 layer of the dequantized
    weights."""
    from moekit.quant import dequantize_weights, quantize_weights

    scheme = moekit.QuantScheme.int4_weight_only(group, zero_point=zero)
    x, w13, w2, logits = layer(m, e, 1, h, i, torch.float32)
    q13 = quantize_weights(w13, scheme)
    q2 = quantize_weights(w2, scheme)
    z13, z2 = (q13[2], q2[2]) if zero else (None, None)
    ref13 = dequantize_weights(q13[0], q13[1], scheme, z13, torch.float64)
    ref2 = dequantize_weights(q2[0], q2[1], scheme, z2, torch.float64)
    out = moekit.fused_moe(x.to(dtype), q13[0], q2[0], logits, k, backend="triton", quant=scheme, w13_scale=q13[1],
                           w2_scale=q2[1], w13_zero=z13, w2_zero=z2)
    assert gemv_calls == [m] and out.dtype == dtype
    w, ids = route_reference(logits, k, True, "softmax")
    assert_close_to_reference(out, moe_reference(x.to(dtype), ref13, ref2, w, ids), dtype)


def test_e2m1_decode_every_code():
    """The kernels' e2m1 decode (GEMV and weight-only GEMM; float32 bit placement, times 2**126: codes 0 and 1 pass through float32
    subnormals) gives all 16 code values exactly."""
    import triton
    import triton.language as tl

    @triton.jit
    def decode(c_ptr, o_ptr):
        offs = tl.arange(0, 16)
        tl.store(o_ptr + offs, kq.e2m1_value(tl.load(c_ptr + offs)))

    codes = torch.arange(16, dtype=torch.int32, device=DEVICE)
    out = torch.full((16,), float("nan"), device=DEVICE)
    decode[(1,)](codes, out)
    mag = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert out.tolist() == mag + [-v for v in mag]


@pytest.mark.skipif(DEVICE != "cuda" or torch.version.hip is not None, reason="inline PTX needs an NVIDIA GPU")
def test_mxfp4_gemv_ptx_decode_is_exact():
    """The GEMVs' inline-PTX mxfp4 decode (float16 bit placement, halves converted in place) gives the same
    float32 values (times 2**-14) as the Triton-ops twin, for every byte."""
    import triton
    import triton.language as tl

    @triton.jit
    def decode(w_ptr, o_ptr, PTX: tl.constexpr):
        offs = tl.arange(0, 256)
        lo, hi = kq.mxfp4_f32_scaled_down(tl.load(w_ptr + offs), PTX)
        tl.store(o_ptr + offs, lo)
        tl.store(o_ptr + 256 + offs, hi)

    raw = torch.arange(256, dtype=torch.uint8, device=DEVICE)
    got, ref = (torch.full((512,), float("nan"), device=DEVICE) for _ in range(2))
    decode[(1,)](raw, got, True)
    decode[(1,)](raw, ref, False)
    assert torch.equal(got, ref) and torch.equal(torch.signbit(got), torch.signbit(ref))


def test_fp8_gemv_expert_map(gemv_calls, poisoned_empty):
    scheme = moekit.QuantScheme.fp8_block(128, 128)
    emap = torch.full((128,), -1, dtype=torch.int32)
    emap[::2] = torch.arange(64, dtype=torch.int32)
    x, q13, s13, q2, s2, logits, ref13, ref2 = fp8_layer(scheme, 2, 64, 256, 128, torch.float32, e_global=128)
    out = moekit.fused_moe(x, q13, q2, logits, 8, backend="triton", quant=scheme, w13_scale=s13, w2_scale=s2,
                           expert_map=emap.to(DEVICE))
    assert gemv_calls == [2]
    w, ids = route_reference(logits, 8, True, "softmax")
    assert_close_to_reference(out, moe_reference(x, ref13, ref2, w, ids, emap), torch.float32)


def test_static_activation_scales_keep_grouped_gemms(gemv_calls):
    """Static activation scales ask for quantized activations: the w8a8 grouped GEMMs serve, not the GEMV."""
    scheme = moekit.QuantScheme.fp8_tensor()
    x, q13, s13, q2, s2, logits, _, _ = fp8_layer(scheme, 1, 32, 128, 64, torch.float32)
    a_s = torch.tensor([8.0 / 448], device=DEVICE)
    out = moekit.fused_moe(x, q13, q2, logits, 4, backend="triton", quant=scheme, w13_scale=s13, w2_scale=s2,
                           a13_scale=a_s, a2_scale=a_s)
    assert gemv_calls == [] and torch.isfinite(out).all()


@pytest.mark.parametrize("scheme, ok", [
    (None, True), (moekit.QuantScheme.fp8_block(128, 128), True), (moekit.QuantScheme.fp8_block(96, 128), False),
    (moekit.QuantScheme.fp8_tensor(), True), (moekit.QuantScheme.int8_channel(), False),
    (moekit.QuantScheme.mxfp4(), True), (moekit.QuantScheme.int4_weight_only(), True),
    (moekit.QuantScheme.int4_weight_only(32, zero_point=True), True), (moekit.QuantScheme.int4_weight_only(8), False),
    (moekit.QuantScheme.int4_weight_only(96), False), (moekit.QuantScheme.int8_weight_only(), True),
])
def test_gemv_supports(scheme, ok):
    assert gemv_mod.gemv_supports(scheme) is ok


@pytest.mark.parametrize("path", ["gemv", "grouped", "torch"])
@pytest.mark.parametrize("with_map", [False, True])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_out_of_range_ids_are_skipped(path, with_map, id_dtype, monkeypatch, gemv_calls, poisoned_empty):
    """topk_ids outside [0, E) given to fused_experts (unchecked unless MOEKIT_VALIDATE=1), int64 ids past 2**31
    (no wrap-around to a valid expert) and expert_map values past the local experts contribute nothing on every
    path (the decode GEMVs, the grouped GEMMs, the torch backend) instead of reading out of bounds."""
    monkeypatch.setenv("MOEKIT_DECODE_GEMV", "1" if path == "gemv" else "0")
    m, e, k, h, i = 2, 32, 4, 64, 32
    e_global = 2 * e if with_map else e
    emap = None
    if with_map:
        emap = torch.full((e_global,), -1, dtype=torch.int32)
        emap[::2] = torch.arange(e, dtype=torch.int32)
        emap[1] = e + 3  # a map value past the local experts
    x, w13, w2, _ = layer(m, e, k, h, i, torch.float32)
    huge = 2 ** 32 + 2 if id_dtype == torch.int64 else 2 ** 30
    ids = torch.tensor([[0, e_global, 2, -1], [e_global + 7, 4, 1, huge]], dtype=id_dtype)
    w = torch.rand(m, k)
    out = moekit.fused_experts(x, w13, w2, w.to(DEVICE), ids.to(DEVICE),
                               expert_map=None if emap is None else emap.to(DEVICE),
                               backend="torch" if path == "torch" else "triton")
    assert gemv_calls == ([m] if path == "gemv" else [])
    bad = (ids < 0) | (ids >= e_global)
    if with_map:
        bad |= emap[ids.clamp(0, e_global - 1).long()] >= e
    ref = moe_reference(x, w13, w2, w.masked_fill(bad, 0), ids.masked_fill(bad, 0), emap)
    assert_close_to_reference(out, ref, torch.float32)


def test_mxfp4_gemv_ptx_rule():
    """The GEMVs take the inline-PTX mxfp4 decode only for mxfp4 weights on an NVIDIA GPU, and never with the
    benchmarks' switch off."""
    from moekit.quant import triton_moe as tq

    x = torch.zeros(1, 64, device=DEVICE)
    on_nvidia = DEVICE == "cuda" and torch.version.hip is None
    assert tq.mxfp4_gemv_ptx_decode(x, moekit.QuantScheme.mxfp4()) is on_nvidia
    assert not tq.mxfp4_gemv_ptx_decode(x, moekit.QuantScheme.fp8_block(128, 128))
    assert not tq.mxfp4_gemv_ptx_decode(x, None)
    tq.MX_PTX_DECODE = False
    try:
        assert not tq.mxfp4_gemv_ptx_decode(x, moekit.QuantScheme.mxfp4())
    finally:
        tq.MX_PTX_DECODE = True


@pytest.mark.parametrize("stages", [1, 2, 3])
@pytest.mark.parametrize("scheme", [None, _Q.fp8_block(128, 128), _Q.mxfp4()], ids=["bf16", "fp8_block", "mxfp4"])
def test_gemv_pipelined_k_loops(stages, scheme, gemv_calls, poisoned_empty, monkeypatch):
    """The GEMVs with their K loops software-pipelined (``GEMV_STAGES`` > 1: weight tiles staged by cp.async on
    a GPU; the interpreter ignores it) match the float64 layer; K = 4160 spans several steps plus a tail."""
    import moekit.kernels.moe_gemv as gemv

    monkeypatch.setattr(gemv, "GEMV_STAGES", dict.fromkeys(gemv.GEMV_STAGES, stages))
    m, e, k, h, i = 1, 16, 2, 4160, 64
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float16
    if scheme is None:
        x, w13, w2, logits = layer(m, e, k, h, i, dtype)
        out = moekit.fused_moe(x, w13, w2, logits, k, backend="triton")
        ref13, ref2 = w13, w2
    else:
        x, q13, s13, q2, s2, logits, ref13, ref2 = fp8_layer(scheme, m, e, h, i, dtype)
        out = moekit.fused_moe(x, q13, q2, logits, k, backend="triton", quant=scheme, w13_scale=s13, w2_scale=s2)
    assert gemv_calls == [m]
    w, ids = route_reference(logits, k, True, "softmax")
    assert_close_to_reference(out, moe_reference(x, ref13, ref2, w, ids), dtype)


@gpu_only
@pytest.mark.parametrize("key", ["bf16", "fp8_block", "fp8_channel", "mxfp4"])
@pytest.mark.parametrize("m", [1, 2])
def test_decode_gemv_programmatic_launch(key, m, gemv_calls, monkeypatch):
    """Routing -> GEMV 1 -> GEMV 2 launched with programmatic dependent launch (GEMV 2 reading routing's ids
    before it waits for GEMV 1) gives bit for bit the output of plain launches, eagerly and replayed in a CUDA
    graph, with an expert map dropping experts."""
    e, k, h, i = 128, 8, 512, 384
    scheme = s13 = s2 = None
    if key == "bf16":
        x, q13, q2, logits = layer(m, e, k, h, i, torch.bfloat16)
    else:
        scheme = ({**FP8, "mxfp4": moekit.QuantScheme.mxfp4}[key])()
        x, q13, s13, q2, s2, logits, _, _ = fp8_layer(scheme, m, e, h, i, torch.bfloat16)
    emap = torch.arange(e, dtype=torch.int32, device=DEVICE)
    emap[::5] = -1
    check_chained_launches(monkeypatch, x, q13, q2, logits, k, backend="triton", quant=scheme, w13_scale=s13,
                           w2_scale=s2, expert_map=emap)
    assert len(gemv_calls) >= 2 and set(gemv_calls) == {m}
