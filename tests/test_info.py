"""`moekit info`: text and JSON output, fake platforms, argparse wiring."""
import argparse
import json

import pytest

from moekit import backends as B
from moekit import envs
from moekit import info


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for v in envs.registry:
        monkeypatch.delenv(v.name, raising=False)
    monkeypatch.setattr(
        B, "_import_status",
        lambda m: B.Verdict(m == "triton", "triton importable" if m == "triton" else "vllm not importable"),
    )
    envs._reset_for_tests()
    yield
    envs._reset_for_tests()


def test_text_report_a100():
    out = info.run_info(platform="a100")
    for needle in ("NVIDIA A100-SXM4-80GB", "NVIDIA_A100-SXM4-80GB", "capability    8.0", "on_gfx9",
                   "fp8_block128x128", "mxfp4", 'Reasons for every "no"', "MOEKIT_BACKEND"):
        assert needle in out, needle
    line = next(x for x in out.splitlines() if x.strip().startswith("fp8_block128x128") and "torch" in x)
    assert line.split()[1] == "torch"  # selected column
    assert "capability 8.0 has no fp8 (e4m3) matrix cores" in out
    assert "vllm not importable" in out


def test_json_report_r9700():
    rep = json.loads(info.run_info(as_json=True, platform="r9700"))
    assert rep["platform"]["gcn_arch"] == "gfx1201" and rep["platform"]["capability"] is None
    assert rep["platform"]["config_device_name"] == "AMD_Radeon_R9700"
    assert rep["predicates"]["on_gfx12x"] and rep["predicates"]["on_gfx1x"] and not rep["predicates"]["on_gfx9"]
    assert rep["selected"]["fp8_block128x128"]["backend"] == "triton"
    assert rep["selected"]["int8_channel"]["backend"] == "torch"
    nos = [r for r in rep["matrix"] if not r["supported"]]
    assert nos and all(r["reason"] for r in nos)
    assert {r["backend"] for r in rep["matrix"]} == {"triton", "torch", "vllm"}


def test_json_mi300x_fp8_format():
    rep = info.info_report("mi300x")
    assert rep["platform"]["fp8_dtype"] == "float8_e4m3fnuz" and rep["platform"]["fp8_max"] == 240.0
    assert rep["platform"]["pci_device_id"] == "0x74a1"


def test_info_main_json(capsys):
    assert info.info_main(["--platform", "h100", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["platform"]["device_name"] == "NVIDIA H100 80GB HBM3"
    assert all(v["backend"] == "triton" for v in rep["selected"].values())


def test_info_main_scheme_filter(capsys):
    assert info.info_main(["--platform", "cpu", "--scheme", "int4_weight_only_g64_zp", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert list(rep["selected"]) == ["int4_weight_only_g64_zp"]
    assert rep["selected"]["int4_weight_only_g64_zp"]["backend"] == "torch"


def test_info_main_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        info.info_main(["--platform", "h1000"])
    assert e.value.code == 2
    assert "h100" in capsys.readouterr().err
    assert info.info_main(["--scheme", "fp9"]) == 2
    assert "--scheme: expected a scheme name" in capsys.readouterr().err


def test_bad_env_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("MOEKIT_BACKEND", "cutlass")
    out = info.run_info(platform="h100")
    assert "INVALID: MOEKIT_BACKEND: expected one of" in out
    assert "Selection errors" in out


def test_forced_backend_shows_refusal(monkeypatch):
    monkeypatch.setenv("MOEKIT_BACKEND", "triton")
    rep = info.info_report("a100", ["fp8_tensor"])
    sel = rep["selected"]["fp8_tensor"]
    assert sel["backend"] is None and "MOEKIT_BACKEND=triton" in sel["error"]


def test_add_info_parser():
    parser = argparse.ArgumentParser(prog="moekit")
    sub = parser.add_subparsers(dest="command")
    info.add_info_parser(sub)
    args = parser.parse_args(["info", "--platform", "gfx1030"])
    assert args.json is False and args.platform == "gfx1030" and callable(args.func)


def test_add_info_parser_runs(capsys):
    parser = argparse.ArgumentParser(prog="moekit")
    info.add_info_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["info", "--platform", "gfx1030"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "(all schemes)  triton  device: gfx1030 is not a Triton GPU target" in out
