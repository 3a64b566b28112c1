"""moekit.linear: every path against float64 F.linear (CPU: Triton interpreter, fp16/fp32/fp8; GPU: bf16 too),
odd shapes, 3-D inputs, bias, M = 0, input errors, the table lookup and the MOEKIT_LINEAR switch."""
import json
import logging

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, HAS_GPU, KERNEL_DTYPES, gpu_only
from moekit.errors import MoEInputError
from moekit.linear import (
    GEMV_MAX_M, GEMV_MMA_MAX_M, PATHS, LinearConfig, _path_ok, clear_caches, gemv_mma_columns, linear, linear_path,
    select_path, table_file_name,
)
from moekit.platform import device_name_for_configs, fp8_dtype, platform_of
from moekit.quant.scheme import QuantScheme
from moekit.testing import assert_close_to_reference, seeded_generator
from reference import fp8_linear_weight

KEYS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# small configs: the interpreter is slow, and small blocks exercise the masks and several programs
CONFIGS = {
    "torch": None,
    "dequant": None,
    "skinny": LinearConfig(16, 32, 64, 3, 1, 4, 2),
    "skinny_fused": LinearConfig(16, 32, 64, 3, 1, 4, 2, FUSED_REDUCE=1),
    "gemv": LinearConfig(1, 4, 64, 1, 1, 2, 2),
    "gemv_mma": LinearConfig(1, 8, 32, 1, 1, 2, 2),  # 8 rows, 2 warps of 32-wide K slices, 2 stages
    "triton": LinearConfig(16, 32, 32, 1, 2, 4, 2),
    "triton_w8a8": LinearConfig(16, 32, 64, 1, 2, 4, 2),
    "gluon_w8a8": LinearConfig(64, 128, 128, 1, 8, 8, 4),  # Hopper only; its tiles are the kernel's
}
FP8_SCHEMES = {
    "fp8_block128x128": QuantScheme.fp8_block(128, 128),
    "fp8_channel": QuantScheme.fp8_channel(),
    "fp8_tensor": QuantScheme.fp8_tensor(),
}


def _gen():
    return seeded_generator(device="cpu")


def _rand(shape, dtype, g, scale=1.0):
    return (torch.randn(shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def _fp8_weight(N, K, scheme: QuantScheme, g):
    """A random fp8 weight, its float32 scales and the float64 dequantized weight, on the test device."""
    q, scale, deq = fp8_linear_weight(N, K, scheme, g, fp8_dtype(platform_of(torch.device(DEVICE))))
    return q.to(DEVICE), scale.to(DEVICE), deq.to(DEVICE)


def _ref(x, w64, bias):
    return F.linear(x.double(), w64.double(), None if bias is None else bias.double())


def _skip_unless_ok(path, scheme, M=1, dtype=None):
    ok, why = _path_ok(path, torch.device(DEVICE), scheme, M, dtype or KERNEL_DTYPES[0])
    if not ok:
        pytest.skip(why)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("M,N,K,bias", [(1, 96, 160, True), (7, 130, 300, False), (16, 64, 33, True),
                                        (1, 37, 200, False)])
def test_unquantized_paths(path, dtype, M, N, K, bias, poisoned_empty):
    if path in ("triton_w8a8", "gluon_w8a8", "dequant"):
        pytest.skip(f"{path} needs fp8 weights")
    if path == "gemv" and M > GEMV_MAX_M:
        pytest.skip(f"gemv serves M <= {GEMV_MAX_M}")
    if path == "skinny":  # both split-K reductions: the reduce kernel and the fused last-program one
        g = _gen()
        x, w = _rand((M, K), dtype, g), _rand((N, K), dtype, g, K**-0.5)
        b = _rand((N,), dtype, g) if bias else None
        for _ in range(2):  # the tile counters must be left at zero for the next call
            out = linear_path(path, x, w, b, config=CONFIGS["skinny_fused"])
            assert_close_to_reference(out, _ref(x, w, b), KEYS[dtype], name=f"skinny fused M={M} N={N} K={K}")
    g = _gen()
    x, w = _rand((M, K), dtype, g), _rand((N, K), dtype, g, K**-0.5)
    b = _rand((N,), dtype, g) if bias else None
    out = linear_path(path, x, w, b, config=CONFIGS[path])
    assert out.shape == (M, N) and out.dtype == dtype
    assert_close_to_reference(out, _ref(x, w, b), KEYS[dtype], name=f"{path} M={M} N={N} K={K}")


@pytest.mark.parametrize("path", ["skinny", "gemv", "gemv_mma", "triton"])
def test_larger_m_and_3d_input(path, poisoned_empty):
    dtype = KERNEL_DTYPES[0]
    g = _gen()
    lead = {"skinny": (2, 3), "gemv": (1, 1), "gemv_mma": (3, 5)}.get(path, (2, 40))
    x, w, b = _rand((*lead, 72), dtype, g), _rand((50, 72), dtype, g, 72**-0.5), _rand((50,), dtype, g)
    out = linear_path(path, x, w, b, config=CONFIGS[path])
    assert out.shape == (*lead, 50)
    assert_close_to_reference(out, _ref(x, w, b), KEYS[dtype], name=path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scheme_name", sorted(FP8_SCHEMES))
@pytest.mark.parametrize("M,N,K,bias", [(3, 200, 300, True), (20, 72, 256, False), (1, 130, 260, True)])
def test_fp8_paths(path, scheme_name, M, N, K, bias, poisoned_empty):
    scheme = FP8_SCHEMES[scheme_name]
    ok, why = _path_ok(path, torch.device(DEVICE), scheme, M, torch.bfloat16 if HAS_GPU else torch.float16, N, K)
    if not ok:
        pytest.skip(why)
    dtype = torch.bfloat16 if HAS_GPU else torch.float16
    g = _gen()
    q, scale, deq = _fp8_weight(N, K, scheme, g)
    x = _rand((M, K), dtype, g)
    b = _rand((N,), dtype, g) if bias else None
    out = linear_path(path, x, q, b, quant=scheme, weight_scale=scale, config=CONFIGS[path])
    assert out.shape == (M, N) and out.dtype == dtype
    # activation quantization (w8a8, and torch._scaled_mm) costs fp8 precision; weight-only paths do not
    w8a8 = path in ("triton_w8a8", "gluon_w8a8") or (path == "torch" and HAS_GPU and scheme.granularity != "block"
                                     and _path_ok("triton_w8a8", torch.device(DEVICE), scheme, M, dtype)[0]
                                     and dtype == torch.bfloat16)
    key = ("fp8_block" if scheme.granularity == "block" else "fp8_tensor") if w8a8 else KEYS[dtype]
    assert_close_to_reference(out, _ref(x, deq, b), key, name=f"{path} {scheme_name}")


@pytest.mark.parametrize("path", ["triton", "triton_w8a8"])
@pytest.mark.parametrize("scheme_name", ["none"] + sorted(FP8_SCHEMES))
@pytest.mark.parametrize("fused", [0, 1])
def test_split_k_tiled_paths(path, scheme_name, fused, poisoned_empty):
    """The tiled paths with K split (the tuner's candidates past M = 16, shipped for small N and long K): both
    reductions, the w8a8 activation scales applied to each partial, a K split that does not divide the steps."""
    scheme = QuantScheme() if scheme_name == "none" else FP8_SCHEMES[scheme_name]
    if path == "triton_w8a8" and not scheme.is_quantized:
        pytest.skip("triton_w8a8 needs fp8 weights")
    dtype = torch.bfloat16 if HAS_GPU else torch.float16
    _skip_unless_ok(path, scheme, 40, dtype)
    M, N, K = 40, 72, 640  # 5 K steps of 128 (the block scale's depth) split 3 ways: 2 + 2 + 1
    cfg = LinearConfig(32, 32, 128 if scheme.granularity == "block" or path == "triton_w8a8" else 64, 3, 2, 4, 2,
                       FUSED_REDUCE=fused)
    g = _gen()
    x, b = _rand((M, K), dtype, g), _rand((N,), dtype, g)
    if scheme.is_quantized:
        w, scale, w64 = _fp8_weight(N, K, scheme, g)
        kw = dict(quant=scheme, weight_scale=scale)
    else:
        w = _rand((N, K), dtype, g, K**-0.5)
        w64, kw = w, {}
    key = ("fp8_block" if scheme.granularity == "block" else "fp8_tensor") if path == "triton_w8a8" else KEYS[dtype]
    for _ in range(2):  # the tile counters must be left at zero for the next call
        out = linear_path(path, x, w, b, config=cfg, **kw)
        assert out.shape == (M, N) and out.dtype == dtype
        assert_close_to_reference(out, _ref(x, w64, b), key, name=f"{path} {scheme_name} split 3 fused={fused}")


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,K,block_n,bias,split", [
    (1, 256, 512, 256, True, 1), (70, 384, 768, 128, False, 1), (130, 512, 256, 256, True, 1),
    (64, 256, 1024, 128, False, 1), (65, 200, 512, 256, True, 1), (3, 576, 768, 128, False, 1),
    (70, 384, 1792, 128, True, 3), (130, 512, 2048, 256, False, 4), (65, 200, 1536, 256, True, 16),
    (1, 576, 512, 128, False, 2)])
def test_gluon_w8a8(dtype, M, N, K, block_n, bias, split, poisoned_empty):
    """The Hopper Gluon path: row and column tiles past M and N (their rows re-read the last and are not
    stored; 256-wide tiles that do not divide N run 128 wide), both tile widths, bias, a 3-D input, CUDA-graph
    capture, and an unaligned weight view (it takes triton_w8a8); K split (14 steps 3 ways: 6 + 6 + 2; 12 steps
    16 ways: 6 programs of 2), the partials summed with the bias by a second launch; the shape rule (K % 256) and
    a non-block scheme refused by name."""
    scheme = FP8_SCHEMES["fp8_block128x128"]
    _skip_unless_ok("gluon_w8a8", scheme, M, dtype)
    g = _gen()
    q, scale, deq = _fp8_weight(N, K, scheme, g)
    x = _rand((M, K), dtype, g)
    b = _rand((N,), dtype, g) if bias else None
    cfg = LinearConfig(64, block_n, 128, split, 8, 8, 4)
    out = linear_path("gluon_w8a8", x, q, b, quant=scheme, weight_scale=scale, config=cfg)
    assert out.shape == (M, N) and out.dtype == dtype
    ref = _ref(x, deq, b)
    assert_close_to_reference(out, ref, "fp8_block", name=f"gluon_w8a8 M={M} N={N} K={K}")
    # the same quantized activations as triton_w8a8: the two differ only in the order of the float32 sums
    tri = linear_path("triton_w8a8", x, q, b, quant=scheme, weight_scale=scale,
                      config=LinearConfig(64, 128, 128, 1, 8, 4, 3))
    assert (out.float() - tri.float()).abs().max() <= 1e-2 * tri.float().abs().max()
    out3 = linear_path("gluon_w8a8", x.reshape(1, M, K), q, b, quant=scheme, weight_scale=scale, config=cfg)
    assert torch.equal(out3.reshape(M, N), out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cap = linear_path("gluon_w8a8", x, q, b, quant=scheme, weight_scale=scale, config=cfg)
    x2 = _rand((M, K), dtype, g)
    x.copy_(x2)
    graph.replay()
    assert_close_to_reference(cap, _ref(x2, deq, b), "fp8_block", name="gluon_w8a8 graph replay")
    # a weight view 8 bytes off 16-byte alignment: triton_w8a8 serves it, same numbers
    buf = torch.empty(N * K + 8, dtype=q.dtype, device=q.device)
    qv = buf[8:].view(N, K)
    qv.copy_(q)
    off = linear_path("gluon_w8a8", x2, qv, b, quant=scheme, weight_scale=scale, config=cfg)
    assert_close_to_reference(off, _ref(x2, deq, b), "fp8_block", name="gluon_w8a8 unaligned weight")
    with pytest.raises(MoEInputError, match="K % 256 == 0"):
        linear_path("gluon_w8a8", x[:, :K - 128], q[:, :K - 128].contiguous(), quant=scheme,
                    weight_scale=scale[:, :-1].contiguous())
    qc, sc, _ = _fp8_weight(N, K, FP8_SCHEMES["fp8_channel"], g)
    with pytest.raises(MoEInputError, match="128x128-block"):
        linear_path("gluon_w8a8", x, qc, quant="fp8_channel", weight_scale=sc)


@pytest.mark.parametrize("M,shape", [(64, "dsv3_q_a"), (256, "dsv3_q_a"), (256, "qwen3_30b_a3b_o"),
                                     (256, "dsv3_kv_a"), (1024, "dsv3_q_a"), (4096, "dsv3_o")])
def test_gluon_tuner_candidates(M, shape):
    """The tuner's gluon_w8a8 set: 256-wide tiles only where they divide N; K split only where the tiles leave
    SMs idle, at most :data:`SPLIT_MAX` ways and >= :data:`SPLIT_MIN_K_STEPS` steps a program; and
    :func:`split_steps` gives every program an even, non-zero number of K steps covering K once."""
    from moekit.kernels.moe_gemm_sm90 import split_steps
    from moekit.linear import table_entry_problems
    from moekit.linear_tune import SHAPES, SPLIT_MAX, SPLIT_MIN_K_STEPS, gluon_candidates

    N, K = SHAPES[shape]
    sms = 132
    cands = gluon_candidates(M, N, K, sms)
    assert len(set(cands)) == len(cands) and any(c.SPLIT_K == 1 for c in cands)
    for c in cands:
        assert table_entry_problems(dict(c.to_dict(), path="gluon_w8a8")) == []
        assert c.BLOCK_SIZE_N == 128 or N % 256 == 0
        tiles = -(-M // 64) * -(-N // c.BLOCK_SIZE_N)
        if c.SPLIT_K > 1:
            assert tiles < sms and c.SPLIT_K <= SPLIT_MAX and c.SPLIT_K * SPLIT_MIN_K_STEPS <= K // 128
        per, splits = split_steps(K, c.SPLIT_K)
        assert per % 2 == 0 and splits <= c.SPLIT_K and (splits - 1) * per < K // 128 <= splits * per
    if M == 256 and shape == "dsv3_q_a":  # 24 tiles of 64 x 256 on 132 SMs
        assert {c.SPLIT_K for c in cands if c.BLOCK_SIZE_N == 256} == {1, 6, 11}


def test_gluon_w8a8_refused_off_hopper():
    """Where it cannot run (CPU here; any non-Hopper GPU), gluon_w8a8 says why and the router never picks it."""
    scheme = FP8_SCHEMES["fp8_block128x128"]
    ok, why = _path_ok("gluon_w8a8", torch.device("cpu"), scheme, 256, torch.float16, 200, 512)
    assert not ok and "Hopper" in why
    assert select_path(4096, 7168, 16384, torch.float16, scheme, device="cpu")[0] != "gluon_w8a8"


@pytest.mark.parametrize("M", [1, 2, 3, 5, 9, 16])
@pytest.mark.parametrize("rows,block_k,warps", [(8, 32, 2), (32, 64, 4), (4, 128, 1)])
def test_gemv_mma_token_columns(M, rows, block_k, warps, poisoned_empty):
    """gemv_mma pads the tokens to the next power of two of M (1..16 columns) and splits K among the warps:
    every width, rows narrower and wider than the MMA, K and N not multiples of the steps."""
    dtype = KERNEL_DTYPES[0]
    _skip_unless_ok("gemv_mma", QuantScheme.none(), M, dtype)
    g = _gen()
    x, w, b = _rand((M, 200), dtype, g), _rand((70, 200), dtype, g, 200**-0.5), _rand((70,), dtype, g)
    out = linear_path("gemv_mma", x, w, b, config=LinearConfig(1, rows, block_k, 1, 1, warps, 2))
    assert_close_to_reference(out, _ref(x, w, b), KEYS[dtype], name=f"gemv_mma M={M} rows={rows}")


@pytest.mark.parametrize("path,block,rows,block_k", [
    ("gemv", (128, 128), 4, 64), ("gemv", (128, 128), 8, 256), ("gemv", (24, 64), 16, 128),
    ("gemv_mma", (128, 128), 8, 64), ("gemv_mma", (128, 128), 16, 256), ("gemv_mma", (24, 64), 32, 32),
    ("gemv_mma", (128, 128), 256, 128)])
def test_gemv_block_scales(path, block, rows, block_k, poisoned_empty):
    """Both ways each GEMV applies block scales. gemv: to the x chunk when a program's rows share one block row
    (block rows a multiple of ROWS, also with K steps longer than a block), else to each weight element.
    gemv_mma: one scale per K slice when the rows share one block row, else one per (row, slice); K slices
    wider than the block are lowered to it."""
    scheme = QuantScheme.fp8_block(*block)
    dtype = torch.bfloat16 if HAS_GPU else torch.float16
    M = 1 if path == "gemv" else 5
    _skip_unless_ok(path, scheme, M, dtype)
    g = _gen()
    q, scale, deq = _fp8_weight(300, 330, scheme, g)
    x, b = _rand((M, 330), dtype, g), _rand((300,), dtype, g)
    cfg = LinearConfig(1, rows, block_k, 1, 1, 4 if path == "gemv" else 2, 2)
    out = linear_path(path, x, q, b, quant=scheme, weight_scale=scale, config=cfg)
    assert_close_to_reference(out, _ref(x, deq, b), KEYS[dtype], name=f"{path} block {block} rows {rows}")


@pytest.mark.parametrize("path", PATHS)
def test_m_zero(path):
    g = _gen()
    dtype = KERNEL_DTYPES[0]
    w, b = _rand((24, 40), dtype, g), _rand((24,), dtype, g)
    assert linear_path("torch" if path.endswith("w8a8") or path == "dequant" else path,
                       torch.empty(0, 40, dtype=dtype, device=DEVICE),
                       w, b, config=CONFIGS[path]).shape == (0, 24)
    assert linear(torch.empty(2, 0, 40, dtype=dtype, device=DEVICE), w, b).shape == (2, 0, 24)


def test_input_errors():
    g = _gen()
    dtype = KERNEL_DTYPES[0]
    x, w = _rand((4, 40), dtype, g), _rand((24, 40), dtype, g)
    with pytest.raises(MoEInputError, match="x: expected shape"):
        linear(_rand((4, 41), dtype, g), w)
    with pytest.raises(MoEInputError, match="weight: expected dtype"):
        linear(x, w.float() if dtype != torch.float32 else w.half())
    with pytest.raises(MoEInputError, match="bias: expected a tensor of shape"):
        linear(x, w, _rand((23,), dtype, g))
    with pytest.raises(MoEInputError, match="weight_scale: expected None"):
        linear(x, w, weight_scale=torch.ones(24, device=DEVICE))
    with pytest.raises(MoEInputError, match="quant: expected None or an fp8 scheme"):
        linear(x, w, quant="int8_channel")
    q, scale, _ = _fp8_weight(24, 40, QuantScheme.fp8_block(), g)
    with pytest.raises(MoEInputError, match="weight_scale: expected shape"):
        linear(x, q, quant="fp8_block128x128", weight_scale=scale[:, :0])
    with pytest.raises(MoEInputError, match="weight_scale: expected a float32 tensor"):
        linear(x, q, quant="fp8_block128x128")
    with pytest.raises(MoEInputError, match="path: expected one of"):
        linear_path("cublas", x, w)
    if _path_ok("gemv", torch.device(DEVICE), QuantScheme(), 1, dtype)[0]:  # forced past its one row
        with pytest.raises(MoEInputError, match=r"path: expected a path that can run here, got 'gemv' "
                                                r"\(gemv serves M <= 1\)"):
            linear_path("gemv", x, w)
        x17 = _rand((GEMV_MMA_MAX_M + 1, 40), dtype, g)
        with pytest.raises(MoEInputError, match=r"got 'gemv_mma' \(gemv_mma serves M <= 16\)"):
            linear_path("gemv_mma", x17, w)


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEKIT_CONFIG_DIR", str(tmp_path))
    clear_caches()
    yield tmp_path
    clear_caches()


def test_table_lookup_and_switch(table_dir, monkeypatch):
    dtype = KERNEL_DTYPES[0]
    N, K = 48, 80
    name = device_name_for_configs(platform_of(torch.device(DEVICE)))
    skinny = dict(CONFIGS["skinny"].to_dict(), path="skinny")
    triton_cfg = dict(CONFIGS["triton"].to_dict(), path="triton")
    gemv = dict(CONFIGS["gemv"].to_dict(), path="gemv")
    gemv_mma = dict(CONFIGS["gemv_mma"].to_dict(), path="gemv_mma")
    table = {"1": gemv, "4": skinny, "8": gemv_mma, "16": {"path": "torch"}, "64": triton_cfg,
             "_meta": {"note": "test"}}
    (table_dir / table_file_name(N, K, name, dtype)).write_text(json.dumps(table))
    assert select_path(1, N, K, dtype, device=DEVICE) == ("gemv", CONFIGS["gemv"])
    assert select_path(2, N, K, dtype, device=DEVICE) == ("skinny", CONFIGS["skinny"])
    assert select_path(4, N, K, dtype, device=DEVICE)[0] == "skinny"
    assert select_path(5, N, K, dtype, device=DEVICE) == ("gemv_mma", CONFIGS["gemv_mma"])
    assert select_path(9, N, K, dtype, device=DEVICE) == ("torch", None)
    assert select_path(17, N, K, dtype, device=DEVICE) == ("triton", CONFIGS["triton"])
    assert select_path(100000, N, K, dtype, device=DEVICE)[0] == "triton"  # past the largest bucket
    assert select_path(3, N, K + 16, dtype, device=DEVICE) == ("torch", None)  # no table: torch
    g = _gen()
    x, w, b = _rand((2, 2, K), dtype, g), _rand((N, K), dtype, g, K**-0.5), _rand((N,), dtype, g)
    assert_close_to_reference(linear(x, w, b), _ref(x, w, b), KEYS[dtype], name="routed (skinny)")
    assert_close_to_reference(linear(x[:1, :1], w, b), _ref(x[:1, :1], w, b), KEYS[dtype], name="routed (gemv)")
    x6 = _rand((6, K), dtype, g)
    assert_close_to_reference(linear(x6, w, b), _ref(x6, w, b), KEYS[dtype], name="routed (gemv_mma)")
    monkeypatch.setenv("MOEKIT_LINEAR", "0")
    assert select_path(1, N, K, dtype, device=DEVICE) == ("torch", None)
    monkeypatch.setenv("MOEKIT_LINEAR", "1")
    assert select_path(1, N, K, dtype, device=DEVICE)[0] == "gemv"
    # a per-channel fp8 table choosing the config-less dequant path; an unquantized layer cannot take it
    scheme = FP8_SCHEMES["fp8_channel"]
    (table_dir / table_file_name(N, K, name, dtype, scheme)).write_text(json.dumps({"64": {"path": "dequant"}}))
    assert select_path(64, N, K, dtype, scheme, device=DEVICE) == ("dequant", None)
    q, scale, deq = _fp8_weight(N, K, scheme, g)
    x64 = _rand((64, K), dtype, g)
    assert_close_to_reference(linear(x64, q, b, quant=scheme, weight_scale=scale), _ref(x64, deq, b), KEYS[dtype],
                              name="routed (dequant)")


def test_table_path_unavailable_falls_back(table_dir):
    dtype = KERNEL_DTYPES[0]
    N, K = 40, 64
    name = device_name_for_configs(platform_of(torch.device(DEVICE)))
    # skinny is never valid past M = 16: the router must not take it, and must not crash
    (table_dir / table_file_name(N, K, name, dtype)).write_text(json.dumps({"4096": {"path": "skinny"}}))
    assert select_path(100, N, K, dtype, device=DEVICE) == ("torch", None)


def test_bad_table_entries_are_ignored_with_one_warning(table_dir, caplog):
    """Bad entries (unknown path, sizes that are not powers of two, negative or NaN values) are dropped with
    a warning naming each problem; the good ones are used; ``moekit configs check`` lints the file."""
    from moekit.configs import check_config_file

    dtype = KERNEL_DTYPES[0]
    name = device_name_for_configs(platform_of(torch.device(DEVICE)))
    path = table_dir / table_file_name(8, 8, name, dtype)
    path.write_text('{"1": {"path": "cutlass"}, "2": {"path": "triton", "BLOCK_SIZE_M": -16}, '
                    '"3": {"path": "skinny", "num_warps": NaN}, "4": {"path": "torch"}}')
    with caplog.at_level(logging.WARNING, logger="moekit"):
        assert select_path(1, 8, 8, dtype, device=DEVICE) == ("torch", None)
    err = "\n".join(r.getMessage() for r in caplog.records)
    assert "bucket 1: path" in err and "bucket 2: BLOCK_SIZE_M" in err and "bucket 3: num_warps" in err
    errors, _ = check_config_file(path)
    assert len(errors) == 3
    path.write_text("[1, 2]")
    assert check_config_file(path)[0] == ["expected a JSON object mapping M buckets to entries, got list"]


def test_non_contiguous_bias_and_empty_k(poisoned_empty):
    g = _gen()
    dtype = KERNEL_DTYPES[-1]
    x, w = _rand((5, 64), dtype, g), _rand((48, 64), dtype, g, 1 / 8)
    b = _rand((48, 2), dtype, g)[:, 0]
    for path in PATHS:
        ok, _ = _path_ok(path, torch.device(DEVICE), QuantScheme.none(), 5, dtype)
        if ok and path != "triton_w8a8":
            assert_close_to_reference(linear_path(path, x, w, b, config=CONFIGS.get(path)), _ref(x, w, b),
                                      KEYS[dtype], name=path)
    out = linear(torch.ones(3, 0, dtype=dtype, device=DEVICE), torch.ones(4, 0, dtype=dtype, device=DEVICE),
                 torch.ones(4, dtype=dtype, device=DEVICE))
    assert torch.equal(out, torch.ones(3, 4, dtype=dtype, device=DEVICE))


@gpu_only
@pytest.mark.parametrize("path", ["skinny", "skinny_fused", "gemv", "gemv_mma", "triton", "torch"])
def test_cuda_graph_capture(path):
    g = _gen()
    m = 1 if path == "gemv" else 4
    x, w, b = _rand((m, 256), torch.bfloat16, g), _rand((512, 256), torch.bfloat16, g, 1 / 16), None
    cfg, path = CONFIGS[path], ("skinny" if path == "skinny_fused" else path)
    linear_path(path, x, w, b, config=cfg)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = linear_path(path, x, w, b, config=cfg)
    x.copy_(_rand((m, 256), torch.bfloat16, g))
    graph.replay()
    graph.replay()
    torch.cuda.synchronize()
    assert_close_to_reference(out, _ref(x, w, b), "bf16", name=f"graph {path}")


def test_w8a8_needs_scale_blocks_as_deep_as_the_fp8_mma():
    """An fp8 block weight whose K blocks are 16 wide: triton_w8a8 would step K by 16 and an fp8 x fp8 tl.dot needs
    32 (a compile error on the GPU, found by the property test on the H200). The router does not pick it (the
    weight-only Triton GEMM serves instead), and forcing it raises naming the reason."""
    scheme = QuantScheme.fp8_block(128, 16)
    dtype = torch.bfloat16 if HAS_GPU else torch.float16
    assert select_path(64, 256, 256, dtype, scheme, device=DEVICE)[0] != "triton_w8a8"
    q, scale, deq = _fp8_weight(96, 80, scheme, _gen())
    x = _rand((40, 80), dtype, _gen())
    with pytest.raises(MoEInputError, match="power of two >= 32 along K"):
        linear_path("triton_w8a8", x, q, quant=scheme, weight_scale=scale)
    assert_close_to_reference(linear(x, q, quant=scheme, weight_scale=scale), _ref(x, deq, None), KEYS[dtype])


@pytest.mark.skipif(HAS_GPU, reason="CPU tensors: Triton's interpreter")
def test_cpu_bf16_never_takes_a_triton_path():
    """Triton's CPU interpreter computes bf16 wrongly: the router keeps bf16 on torch there, and forcing a
    Triton path raises, naming the reason."""
    scheme = FP8_SCHEMES["fp8_block128x128"]
    assert select_path(4, 256, 256, torch.bfloat16, scheme, device="cpu")[0] == "torch"
    assert select_path(4, 256, 256, torch.float16, scheme, device="cpu")[0] != "torch"
    q, scale, _ = _fp8_weight(256, 256, scheme, _gen())
    with pytest.raises(MoEInputError, match="bfloat16 wrongly"):
        linear_path("skinny", torch.randn(4, 256, dtype=torch.bfloat16), q, quant=scheme, weight_scale=scale)


def test_shipped_tables_are_valid():
    import importlib
    from pathlib import Path

    from moekit.linear import parse_table

    lin = importlib.import_module("moekit.linear")  # (moekit.linear, the attribute, is the function)
    tables = sorted((Path(lin.__file__).parent / "configs_data" / "linear").glob("*.json"))
    assert tables
    for p in tables:
        table, problems = parse_table(p)
        assert table and not problems, (p.name, problems)


@pytest.mark.parametrize("M", [2, 4, 16])
@pytest.mark.parametrize("scheme_name,w_elem", [("none", 2), ("fp8_block128x128", 1), ("fp8_channel", 1)])
def test_gemv_mma_tuner_candidates(M, scheme_name, w_elem):
    """The tuner's gemv_mma set: valid table entries, slices inside a scale block, pipelines within budget."""
    from moekit.linear import table_entry_problems
    from moekit.linear_tune import SMEM_BUDGET, gemv_mma_candidates
    from moekit.quant.scheme import as_scheme

    scheme = as_scheme(scheme_name, "scheme")
    cands = gemv_mma_candidates(M, scheme, w_elem)
    assert len(cands) >= 8 and len(set(cands)) == len(cands)
    mp = gemv_mma_columns(M)
    for c in cands:
        assert table_entry_problems(dict(c.to_dict(), path="gemv_mma")) == []
        assert c.num_warps * c.BLOCK_SIZE_K * (c.BLOCK_SIZE_N * w_elem + mp * 2) * c.num_stages <= SMEM_BUDGET
        if scheme.granularity == "block":
            assert scheme.block_shape[1] % c.BLOCK_SIZE_K == 0


@pytest.mark.parametrize("M", [16, 64, 256, 1024, 4096])
@pytest.mark.parametrize("w8a8", [False, True])
@pytest.mark.parametrize("shape", ["dsv3_kv_a", "dsv3_q_a", "dsv3_o", "qwen3_30b_a3b_o"])
def test_tiled_tuner_candidates(M, w8a8, shape):
    """The tuner's triton / triton_w8a8 set: valid entries within the shared-memory budget, fp8 K steps inside a
    128-deep scale block, and K split (both reductions) exactly where the unsplit tiles leave SMs idle."""
    from moekit.linear import table_entry_problems
    from moekit.linear_tune import (
        SHAPES, SMEM_BUDGET, SPLIT_MAX, SPLIT_MIN_K_STEPS, SPLIT_WAVES, triton_candidates,
    )

    N, K = SHAPES[shape]
    sms = 132
    for scheme in (QuantScheme.fp8_block(128, 128), QuantScheme.fp8_channel()):
        cands = triton_candidates(M, N, K, scheme, sms, w8a8)
        assert len(set(cands)) == len(cands)
        unsplit = [c for c in cands if c.SPLIT_K == 1]
        for c in cands:
            assert table_entry_problems(dict(c.to_dict(), path="triton_w8a8" if w8a8 else "triton")) == []
            assert (c.BLOCK_SIZE_M + c.BLOCK_SIZE_N) * c.BLOCK_SIZE_K * (1 if w8a8 else 2) * c.num_stages <= SMEM_BUDGET
            if scheme.granularity == "block":
                assert 128 % c.BLOCK_SIZE_K == 0
            if c.SPLIT_K > 1:
                tiles = -(-M // c.BLOCK_SIZE_M) * -(-N // c.BLOCK_SIZE_N)
                assert tiles < sms and c.SPLIT_K <= SPLIT_MAX
                assert c.SPLIT_K * SPLIT_MIN_K_STEPS <= -(-K // c.BLOCK_SIZE_K)
                assert c.SPLIT_K <= round(SPLIT_WAVES * sms / tiles)
                twin = LinearConfig(**dict(c.to_dict(), FUSED_REDUCE=1 - c.FUSED_REDUCE))
                assert twin in cands
        idle = [c for c in unsplit if -(-M // c.BLOCK_SIZE_M) * -(-N // c.BLOCK_SIZE_N) * 4 <= sms]
        for c in idle:  # a quarter of the SMs or fewer busy: a split variant exists
            assert any(s.SPLIT_K > 1 and (s.BLOCK_SIZE_M, s.BLOCK_SIZE_N) == (c.BLOCK_SIZE_M, c.BLOCK_SIZE_N)
                       for s in cands)


@pytest.mark.parametrize("scheme,N,K", [(QuantScheme.fp8_block(128, 128), 200, 300),
                                        (QuantScheme.fp8_block(64, 32), 96, 100),
                                        (QuantScheme.fp8_channel(), 37, 260), (QuantScheme.fp8_tensor(), 64, 129)])
@pytest.mark.parametrize("dtype", sorted(set(KERNEL_DTYPES) | {torch.float32}, key=str))
def test_dequant_kernel_bit_exact(scheme, N, K, dtype):
    """The torch path's one-pass weight dequantization (:mod:`moekit.kernels.dequant`, used on GPUs) equals
    :func:`moekit.quant.weights.dequantize_weights` bit for bit: partial scale blocks, per-channel and per-tensor
    scales, wide-range scales."""
    from moekit.kernels.dequant import dequant_fp8
    from moekit.linear import _dequant_weight
    from moekit.quant.weights import dequantize_weights, quantize_weights

    g = _gen()
    w = torch.randn(N, K, generator=g) * torch.logspace(-6, 6, K, base=2.0)
    q, s = quantize_weights(w, scheme)
    q, s = q.to(DEVICE), s.to(DEVICE)
    mode = {"block": 2, "channel": 1}.get(scheme.granularity, 0)
    got = dequant_fp8(q, s.reshape(1) if s.dim() == 0 else s, mode, scheme.block_shape or (1, 1), dtype)
    assert got.dtype == dtype and got.shape == (N, K)
    assert torch.equal(got, dequantize_weights(q, s, scheme, dtype=dtype))
    assert torch.equal(_dequant_weight(q, s.reshape(-1, 1) if mode == 1 else s, scheme, dtype), got)
