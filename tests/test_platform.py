"""moekit.platform on CPU: every predicate and device fact on every fake platform, detection with a faked torch."""
import types

import pytest
import torch

from moekit import platform as P
from moekit.errors import MoEInputError

# preset -> (on_gfx9, on_gfx942, on_gfx950, on_gfx1x, on_gfx12x)
ARCH_PREDICATES = {
    "h100": (0, 0, 0, 0, 0),
    "h200": (0, 0, 0, 0, 0),
    "b200": (0, 0, 0, 0, 0),
    "rtx_pro_6000": (0, 0, 0, 0, 0),
    "a100": (0, 0, 0, 0, 0),
    "mi300x": (1, 1, 0, 0, 0),
    "mi355": (1, 0, 1, 0, 0),
    "r9700": (0, 0, 0, 1, 1),
    "rx7900": (0, 0, 0, 1, 0),
    "gfx1030": (0, 0, 0, 0, 0),
    "gfx906": (0, 0, 0, 0, 0),
    "cpu": (0, 0, 0, 0, 0),
}
VENDOR = {
    "h100": "cuda", "h200": "cuda", "b200": "cuda", "rtx_pro_6000": "cuda", "a100": "cuda",
    "mi300x": "rocm", "mi355": "rocm", "r9700": "rocm", "rx7900": "rocm", "gfx1030": "rocm", "gfx906": "rocm",
    "cpu": "cpu",
}
# preset -> (on_sm80_plus, on_sm89_plus, on_sm90, on_sm100, on_sm120)
CUDA_PREDICATES = {
    "h100": (1, 1, 1, 0, 0), "h200": (1, 1, 1, 0, 0), "b200": (1, 1, 0, 1, 0),
    "rtx_pro_6000": (1, 1, 0, 0, 1), "a100": (1, 0, 0, 0, 0),
}
# preset -> (triton_target, fp8_mma, int8_mma, dot_scaled)
FEATURES = {
    "h100": (1, 1, 1, 1), "h200": (1, 1, 1, 1), "b200": (1, 1, 1, 1), "rtx_pro_6000": (1, 1, 1, 0),
    "a100": (1, 0, 1, 0), "mi300x": (1, 1, 1, 1), "mi355": (1, 1, 1, 1), "r9700": (1, 1, 0, 1),
    "rx7900": (1, 0, 0, 1), "gfx1030": (0, 0, 0, 0), "gfx906": (0, 0, 0, 0), "cpu": (0, 0, 0, 0),
}


def test_presets_cover_the_issue_list():
    assert set(ARCH_PREDICATES) == set(P.PRESETS)


@pytest.mark.parametrize("key", sorted(P.PRESETS))
def test_predicates_per_preset(key):
    p = P.PRESETS[key]
    got = (P.on_gfx9(p), P.on_gfx942(p), P.on_gfx950(p), P.on_gfx1x(p), P.on_gfx12x(p))
    assert got == tuple(map(bool, ARCH_PREDICATES[key]))
    v = VENDOR[key]
    assert (P.on_cuda(p), P.on_rocm(p), P.on_cpu(p), P.on_xpu(p)) == (v == "cuda", v == "rocm", v == "cpu", False)
    cuda = (P.on_sm80_plus(p), P.on_sm89_plus(p), P.on_sm90(p), P.on_sm100(p), P.on_sm120(p))
    assert cuda == tuple(map(bool, CUDA_PREDICATES.get(key, (0, 0, 0, 0, 0))))
    # the same answers through the current-platform path
    with P.fake_platform(key):
        assert P.predicates() == P.predicates(p)
        assert P.on_gfx9() == bool(ARCH_PREDICATES[key][0])


@pytest.mark.parametrize("key", sorted(P.PRESETS))
def test_features_per_preset(key):
    got = tuple(P.has_feature(f, P.PRESETS[key])[0] for f in ("triton_target", "fp8_mma", "int8_mma", "dot_scaled"))
    assert got == tuple(map(bool, FEATURES[key]))


def test_issue_examples():
    assert P.on_gfx12x("r9700") and P.on_gfx1x("r9700")
    assert not P.on_gfx1x("gfx1030")
    assert not P.on_gfx9("gfx906")


def test_rocm_capability_never_aliases_cuda():
    # gfx906 reports 9.0 through HIP, like an H100; moekit keeps no capability on ROCm
    mi50 = P.PRESETS["gfx906"]
    assert mi50.capability is None
    assert not P.cuda_capability_in((9, 0), None, mi50)
    assert not P.on_sm90(mi50) and not P.on_sm120("r9700")
    with pytest.raises(MoEInputError, match="capability"):
        P.Platform("rocm", "x", capability=(9, 0), gcn_arch="gfx906")
    with pytest.raises(MoEInputError, match="gcn_arch"):
        P.Platform("cuda", "x", capability=(9, 0), gcn_arch="gfx942")


@pytest.mark.parametrize("kwargs, field", [
    (dict(vendor="tpu", device_name="x"), "vendor"),
    (dict(vendor="cuda", device_name="x"), "capability"),
    (dict(vendor="cuda", device_name="x", capability=(9,)), "capability"),
    (dict(vendor="rocm", device_name="x"), "gcn_arch"),
    (dict(vendor="rocm", device_name="x", gcn_arch="gfx942:sramecc+"), "gcn_arch"),
])
def test_platform_validation(kwargs, field):
    with pytest.raises(MoEInputError, match=field):
        P.Platform(**kwargs)


def test_arch_windows_are_boundaries():
    def cuda(cap):
        return P.Platform("cuda", "x", capability=cap)

    assert not P.has_feature("fp8_mma", cuda((8, 6)))[0] and P.has_feature("fp8_mma", cuda((8, 9)))[0]
    assert not P.has_feature("dot_scaled", cuda((8, 9)))[0]
    assert P.has_feature("dot_scaled", cuda((10, 3)))[0]
    assert not P.has_feature("dot_scaled", cuda((11, 0)))[0]
    assert not P.has_feature("triton_target", cuda((7, 5)))[0]
    for arch, gfx1x in [("gfx1100", True), ("gfx1151", True), ("gfx1200", True), ("gfx1030", False),
                        ("gfx1010", False), ("gfx90a", False)]:
        assert P.on_gfx1x(P.Platform("rocm", "x", gcn_arch=arch)) is gfx1x
    assert P.on_gfx9(P.Platform("rocm", "x", gcn_arch="gfx90a"))
    assert not P.on_gfx9(P.Platform("rocm", "x", gcn_arch="gfx908"))


def test_feature_reasons_name_the_rule():
    ok, why = P.has_feature("fp8_mma", "a100")
    assert not ok and "8.0" in why and "8.9" in why
    ok, why = P.has_feature("fp8_mma", "rx7900")
    assert not ok and "gfx1100" in why and "gfx12xx" in why
    ok, why = P.has_feature("triton_target", "cpu")
    assert not ok and "cpu" in why
    with pytest.raises(MoEInputError, match="name"):
        P.has_feature("fp4_mma", "h100")


@pytest.mark.parametrize("key, dtype, fmax", [
    ("h100", torch.float8_e4m3fn, 448.0), ("a100", torch.float8_e4m3fn, 448.0),
    ("mi300x", torch.float8_e4m3fnuz, 240.0), ("mi355", torch.float8_e4m3fn, 448.0),
    ("r9700", torch.float8_e4m3fn, 448.0), ("cpu", torch.float8_e4m3fn, 448.0),
])
def test_fp8_format(key, dtype, fmax):
    assert P.fp8_dtype(key) == dtype
    assert P.fp8_max(key) == fmax
    with P.fake_platform(key):
        assert P.fp8_dtype() == dtype


@pytest.mark.parametrize("key, kib", [
    ("h100", 227), ("h200", 227), ("b200", 227), ("a100", 163), ("rtx_pro_6000", 99), ("mi300x", 64),
    ("mi355", 160), ("r9700", 64), ("cpu", None),
])
def test_shared_memory(key, kib):
    got = P.shared_memory_per_block(key)
    assert got == (None if kib is None else kib * 1024)


@pytest.mark.parametrize("key, name", [
    ("h100", "NVIDIA_H100_80GB_HBM3"), ("h200", "NVIDIA_H200"), ("a100", "NVIDIA_A100-SXM4-80GB"),
    ("r9700", "AMD_Radeon_R9700"), ("mi300x", "AMD_Instinct_MI300X"), ("mi355", "AMD_Instinct_MI355X"),
    ("cpu", "cpu"),
])
def test_device_name_for_configs(key, name):
    assert P.device_name_for_configs(key) == name


def test_device_name_unknown_pci_id_uses_driver_name():
    p = P.Platform("rocm", "AMD Radeon  Pro W7900", gcn_arch="gfx1100", pci_device_id=0x1234)
    assert P.device_name_for_configs(p) == "AMD_Radeon_Pro_W7900"


def test_fake_platform_nests_and_restores():
    real = P.current_platform()
    with P.fake_platform("h100") as outer:
        assert P.current_platform() is outer
        with P.fake_platform(P.PRESETS["mi300x"]):
            assert P.on_gfx942()
        assert P.current_platform() is outer
        with pytest.raises(RuntimeError):
            with P.fake_platform("cpu"):
                raise RuntimeError("boom")
        assert P.current_platform() is outer
    assert P.current_platform() == real


def test_resolve_platform_errors():
    with pytest.raises(MoEInputError, match="platform: expected one of"):
        P.resolve_platform("h1000")
    with pytest.raises(MoEInputError, match="platform"):
        P.resolve_platform(3)
    assert P.resolve_platform("RTX-PRO-6000") is P.PRESETS["rtx_pro_6000"]


def test_detect_on_this_machine_is_cpu():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    P._clear_cache()
    p = P.current_platform()
    assert p.vendor == "cpu" and not p.fake and P.current_platform() is p


def _fake_props(**kw):
    base = dict(name="x", major=9, minor=0, total_memory=80 * P.GiB, multi_processor_count=132)
    base.update(kw)
    return types.SimpleNamespace(**base)


def _patch_torch(monkeypatch, props, hip):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.version, "cuda", None if hip else "12.8")
    P._clear_cache()


def test_detect_cuda(monkeypatch):
    _patch_torch(monkeypatch, _fake_props(name="NVIDIA H100 80GB HBM3"), None)
    try:
        p = P.current_platform()
        assert (p.vendor, p.capability, p.gcn_arch) == ("cuda", (9, 0), None)
        assert P.shared_memory_per_block(p) == 227 * 1024
        assert P.device_name_for_configs(p) == "NVIDIA_H100_80GB_HBM3"
    finally:
        P._clear_cache()


def test_detect_rocm_uses_arch_not_capability(monkeypatch, caplog):
    from moekit import envs

    envs._reset_for_tests()
    props = _fake_props(name="AMD Radeon Graphics", major=12, minor=0, gcnArchName="gfx1201:xnack-")
    _patch_torch(monkeypatch, props, "6.4")
    monkeypatch.setattr(P, "_rocm_pci_device_id", lambda props, idx: None)
    try:
        with caplog.at_level("WARNING", logger="moekit"):
            p = P.current_platform()
        assert (p.vendor, p.capability, p.gcn_arch) == ("rocm", None, "gfx1201")
        assert P.on_gfx12x(p) and not P.on_sm120(p)
        assert sum("generic name" in r.getMessage() for r in caplog.records) == 1
        assert P.device_name_for_configs(p) == "AMD_Radeon_Graphics"
        monkeypatch.setattr(P, "_rocm_pci_device_id", lambda props, idx: 0x7551)
        P._clear_cache()
        assert P.device_name_for_configs(P.current_platform()) == "AMD_Radeon_R9700"
    finally:
        P._clear_cache()
        envs._reset_for_tests()
