"""moekit.backends and moekit.quant.scheme on CPU with fake platforms."""
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moekit import backends as B
from moekit import envs
from moekit import platform as P
from moekit.errors import MoEInputError
from moekit.quant import QuantScheme as Q
from moekit.quant import as_scheme


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("MOEKIT_BACKEND", raising=False)
    envs._reset_for_tests()
    yield
    envs._reset_for_tests()


@pytest.fixture
def triton_importable(monkeypatch):
    """Make the rules independent of whether triton is installed here; vllm stays missing."""
    def status(module):
        if module == "triton":
            return B.Verdict(True, "triton importable")
        return B.Verdict(False, f"{module.split('.')[0]} not importable (test)")

    monkeypatch.setattr(B, "_import_status", status)


# ---------------------------------------------------------------------------------------------- QuantScheme

NAMES = {
    Q.none(): "none", Q.none("fp16"): "none_fp16", Q.fp8_block(128, 128): "fp8_block128x128",
    Q.fp8_block(64, 128): "fp8_block64x128", Q.fp8_tensor(): "fp8_tensor", Q.fp8_channel(): "fp8_channel",
    Q.int8_channel(): "int8_channel", Q.int8_weight_only(): "int8_weight_only",
    Q.int4_weight_only(): "int4_weight_only_g128", Q.int4_weight_only(64, True): "int4_weight_only_g64_zp",
    Q.mxfp4(): "mxfp4",
}


@pytest.mark.parametrize("scheme, name", list(NAMES.items()), ids=list(NAMES.values()))
def test_scheme_names_round_trip(scheme, name):
    assert scheme.name == name == str(scheme)
    assert Q.from_name(name) == scheme


def test_scheme_fields():
    s = Q.fp8_block(128, 128)
    assert (s.weight_dtype, s.act_dtype, s.granularity, s.block_shape) == ("fp8", "fp8", "block", (128, 128))
    w = Q.int4_weight_only(group_size=32, zero_point=True)
    assert w.weight_only and w.is_quantized and (w.group_size, w.zero_point) == (32, True)
    assert not Q.none().is_quantized and not Q.none().weight_only
    assert as_scheme(None) == Q.none() and as_scheme("mxfp4") == Q.mxfp4()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.weight_dtype = "int8"


@pytest.mark.parametrize("kwargs, field", [
    (dict(weight_dtype="fp4"), "weight_dtype"),
    (dict(weight_dtype="bf16", act_dtype="fp8"), "act_dtype"),
    (dict(weight_dtype="fp8", act_dtype=None, granularity="tensor"), "act_dtype"),
    (dict(weight_dtype="fp8", act_dtype="fp8", granularity="group", group_size=128), "granularity"),
    (dict(weight_dtype="fp8", act_dtype="fp8", granularity="block"), "block_shape"),
    (dict(weight_dtype="fp8", act_dtype="fp8", granularity="block", block_shape=(128, 0)), "block_shape"),
    (dict(weight_dtype="fp8", act_dtype="fp8", granularity="tensor", block_shape=(128, 128)), "block_shape"),
    (dict(weight_dtype="int4", granularity="group"), "group_size"),
    (dict(weight_dtype="int4", granularity="group", group_size=-8), "group_size"),
    (dict(weight_dtype="int4", act_dtype="int8", granularity="channel"), "act_dtype"),
    (dict(weight_dtype="int8", act_dtype="int8", granularity="channel", zero_point=True), "zero_point"),
    (dict(weight_dtype="mxfp4", granularity="group", group_size=16), "group_size"),
    (dict(weight_dtype="int4", granularity="channel", zero_point=1), "zero_point"),
])
def test_scheme_validation_names_the_field(kwargs, field):
    with pytest.raises(MoEInputError, match=f"QuantScheme.{field}: expected .*, got"):
        Q(**kwargs)


def test_scheme_name_errors():
    with pytest.raises(MoEInputError, match="name: expected a scheme name"):
        Q.from_name("fp9")
    with pytest.raises(MoEInputError, match="dtype"):
        Q.none("int8")


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["int4", "int8"]), st.sampled_from([None, 16, 32, 64, 128, 256]), st.booleans())
def test_weight_only_names_round_trip(w, group, zp):
    s = Q(w, None, "channel" if group is None else "group", group_size=group, zero_point=zp)
    assert Q.from_name(s.name) == s


# ---------------------------------------------------------------------------------------------- selection

# The backend auto picks: rows = Q.standard() order, columns = presets.
STD = [s.name for s in Q.standard()]
EXPECTED = {
    #               none    fp8b    fp8c    fp8t    int8c   int8wo  int4wo  mxfp4
    "h100":        "triton triton triton triton triton triton triton triton",
    "h200":        "triton triton triton triton triton triton triton triton",
    "b200":        "triton triton triton triton triton triton triton triton",
    "rtx_pro_6000": "triton triton triton triton triton triton triton triton",  # mxfp4: in-kernel decode
    "a100":        "triton torch  torch  torch  triton triton triton triton",
    "mi300x":      "triton triton triton triton triton triton triton triton",
    "mi355":       "triton triton triton triton triton triton triton triton",
    "r9700":       "triton triton triton triton torch  triton triton triton",
    "rx7900":      "triton torch  torch  torch  torch  triton triton triton",
    "gfx1030":     "torch  torch  torch  torch  torch  torch  torch  torch",
    "gfx906":      "torch  torch  torch  torch  torch  torch  torch  torch",
    "cpu":         "torch  torch  torch  torch  torch  torch  torch  torch",
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_auto_selection_table(key, triton_importable):
    got = [B.select_backend(s, key).name for s in Q.standard()]
    assert got == EXPECTED[key].split(), dict(zip(STD, got))


def test_issue_cases(triton_importable):
    assert B.select_backend(Q.fp8_block(128, 128), "r9700").name == "triton"
    assert B.select_backend(Q.fp8_block(128, 128), "a100").name == "torch"
    with P.fake_platform("a100"):
        assert B.select_backend("fp8_tensor").name == "torch"
        with pytest.raises(B.NoBackendError) as e:
            B.select_backend("fp8_tensor", prefer="triton")
    msg = str(e.value)
    assert "capability 8.0 has no fp8" in msg and "needs >= 8.9" in msg
    assert "A100" in msg and "fp8_tensor" in msg
    assert "torch: yes" in msg and "vllm: no: not available" in msg
    assert e.value.requested == "triton" and set(e.value.reasons) == {"triton", "torch", "vllm"}


@pytest.mark.parametrize("block, ok", [((128, 128), True), ((64, 32), True), ((128, 16), False), ((16, 64), True),
                                       ((128, 8), False), ((128, 96), False), ((48, 48), False), ((128, 1), False)])
def test_triton_declines_block_k_it_cannot_take(block, ok, triton_importable):
    """Block-scaled GEMM K steps must lie inside one scale block and be as deep as an 8-bit tl.dot (32): K sides
    that are not a power of two >= 32 go to torch (they gave wrong results or compile errors), with the reason.
    Kernels that widen the weight first (the dense router's weight-only paths) take 16."""
    scheme = Q.fp8_block(*block)
    assert bool(B.triton_kernel_limits(scheme)) == ok
    assert bool(B.triton_kernel_limits(scheme, mma_8bit=False)) == (ok or block == (128, 16))
    assert B.select_backend(scheme, "h100").name == ("triton" if ok else "torch")
    if not ok:
        with pytest.raises(B.NoBackendError, match="power of two >= 32 along K"):
            B.select_backend(scheme, "h100", prefer="triton")
    assert B.triton_kernel_limits(Q.int4_weight_only(8))  # weight-only groups are unaffected


def test_verdict_truthiness():
    assert not B.Verdict(False, "x") and B.Verdict(True, "y")
    ok, why = B.Verdict(False, "x")
    assert (ok, why) == (False, "x")


def test_each_backend_declares_both_checks(triton_importable):
    for b in B.all_backends():
        for key in P.PRESETS:
            v = b.supports_device(P.PRESETS[key])
            assert isinstance(v, B.Verdict) and v.reason
            for s in Q.standard():
                v = b.supports_scheme(s, P.PRESETS[key])
                assert isinstance(v, B.Verdict) and v.reason


def test_env_backend_is_honored(monkeypatch, triton_importable):
    monkeypatch.setenv("MOEKIT_BACKEND", "torch")
    assert B.select_backend(None, "h100").name == "torch"
    monkeypatch.setenv("MOEKIT_BACKEND", "triton")
    with pytest.raises(B.NoBackendError, match="MOEKIT_BACKEND=triton"):
        B.select_backend(None, "cpu")
    # prefer wins over the environment; 'auto' defers to it
    assert B.select_backend(None, "h100", prefer="torch").name == "torch"
    assert B.select_backend(None, "h100", prefer="auto").name == "triton"
    monkeypatch.setenv("MOEKIT_BACKEND", "cuda")
    with pytest.raises(envs.EnvError, match="MOEKIT_BACKEND: expected one of .*, got 'cuda'"):
        B.select_backend(None, "h100")


def test_prefer_errors():
    with pytest.raises(MoEInputError, match="prefer: expected auto or one of .*got 'cutlass'"):
        B.select_backend(None, "h100", prefer="cutlass")
    with pytest.raises(MoEInputError, match="prefer"):
        B.select_backend(None, "h100", prefer=1)
    with pytest.raises(MoEInputError, match="scheme"):
        B.select_backend(3.5, "h100")


def test_no_backend_error_lists_every_reason(monkeypatch, triton_importable):
    monkeypatch.delitem(B._REGISTRY, "torch")
    with pytest.raises(B.NoBackendError) as e:
        B.select_backend("fp8_block128x128", "rx7900")
    msg = str(e.value)
    assert msg.startswith("No moekit backend supports quantization scheme fp8_block128x128 on AMD Radeon RX 7900")
    assert "gfx1100" in msg
    assert "- triton: no: scheme: gfx1100 has no fp8" in msg
    assert "- vllm: no: not available: vllm not importable" in msg
    assert e.value.requested is None and isinstance(e.value, RuntimeError)


def test_triton_missing_falls_back_with_reason(monkeypatch):
    monkeypatch.setattr(B, "_import_status", lambda m: B.Verdict(False, f"{m.split('.')[0]} not importable"))
    assert B.select_backend(None, "h100").name == "torch"
    rows = {r.backend: r for r in B.backend_matrix("h100", [None])}
    assert rows["triton"].reason == "not available: triton not importable"
    assert rows["torch"].selected


def test_cpu_and_xpu_decline_triton(triton_importable):
    v = B.get_backend("triton").check(None, "cpu")
    assert not v and "no GPU" in v.reason
    xpu = P.Platform("xpu", "Intel Data Center GPU Max 1550")
    assert not B.get_backend("triton").supports_device(xpu)
    assert B.select_backend(None, xpu).name == "torch"


def test_real_vllm_status_is_reported():
    ok, why = B.get_backend("vllm").available()
    assert ok or "vllm" in why


def test_backend_matrix_shape(triton_importable):
    rows = B.backend_matrix("a100")
    assert len(rows) == len(Q.standard()) * len(B.all_backends())
    for s in STD:
        picked = [r.backend for r in rows if r.scheme == s and r.selected]
        assert len(picked) == 1
    r = next(r for r in rows if r.scheme == "fp8_block128x128" and r.backend == "triton")
    assert not r.supported and "8.9" in r.reason and r.to_dict()["supported"] is False


def test_register_backend_rejects_junk():
    with pytest.raises(MoEInputError, match="backend"):
        B.register_backend(object())
    with pytest.raises(MoEInputError, match="name"):
        B.get_backend("nope")


def test_support_matrix_markdown():
    md = B.support_matrix_markdown()
    lines = md.splitlines()
    assert lines[0].startswith("| Scheme | H100")
    row = next(line for line in lines if line.startswith("| `fp8_block128x128`"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    labels = [label for _, label in B.README_PLATFORMS]
    assert dict(zip(labels, cells))["A100"] == "torch"
    assert dict(zip(labels, cells))["R9700"] == "triton"
    assert any(line.startswith("- A100, `fp8_block128x128`") and "8.9" in line for line in lines)


def test_verdicts_are_memoized_and_follow_the_import_probe(monkeypatch):
    """select_backend memoizes verdicts per (scheme, platform, backends, import probe): a replaced probe
    (a newly missing dependency) is seen at once, and clear_verdict_cache empties the memo."""
    B.clear_verdict_cache()
    p = P.resolve_platform("h100")
    first = B._verdicts(Q.none(), p, B.all_backends())
    assert B._verdicts(Q.none(), p, B.all_backends()) == first and len(B._VERDICT_CACHE) == 1
    monkeypatch.setattr(B, "_import_status", lambda m: B.Verdict(False, f"{m} missing (test)"))
    after = B._verdicts(Q.none(), p, B.all_backends())
    assert not after["triton"] and "missing (test)" in after["triton"].reason
    B.clear_verdict_cache()
    assert not B._VERDICT_CACHE


def test_mxfp4_without_dot_scaled_runs_the_in_kernel_decode(triton_importable):
    v = B.get_backend("triton").supports_scheme(Q.mxfp4(), P.PRESETS["a100"])
    assert v and "decoded in the kernel" in v.reason
    assert "decoded in the kernel" not in B.get_backend("triton").supports_scheme(Q.mxfp4(), P.PRESETS["h100"]).reason


def test_platform_of_reads_the_tensors_own_gpu(monkeypatch):
    """Machines may mix GPU models: platform_of asks about the tensor's own device index."""
    seen = []
    monkeypatch.setattr(P, "current_platform", lambda index=None: seen.append(index) or P.PRESETS["h100"])
    P.platform_of(__import__("torch").device("cuda", 1))
    assert seen == [1]
    assert not P.has_feature("grouped_mm_bf16", P.PRESETS["b200"])[0]  # torch 2.8's _grouped_mm: 9.x only
