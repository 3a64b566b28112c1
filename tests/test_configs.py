import pytest
import torch

from moekit.configs import MoEKernelConfig, default_config, fit_shared_memory, get_config, shared_memory_bytes


def test_from_dict_ignores_unknown_keys():
    c = MoEKernelConfig.from_dict({"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1,
                                   "num_warps": 4, "num_stages": 3, "triton_version": "3.6.0"})
    assert c == MoEKernelConfig(16, 32, 64, 1, 4, 3)


@pytest.mark.parametrize("m", [1, 16, 256, 4096])
@pytest.mark.parametrize("elem", [1, 2, 4])
@pytest.mark.parametrize("limit", [64 * 1024, 163 * 1024, 227 * 1024])
def test_fit_shared_memory(m, elem, limit):
    c = fit_shared_memory(default_config(m, 128, 768, 2048, 8), elem, limit)
    assert shared_memory_bytes(c, elem) <= limit


def test_get_config_returns_config():
    assert isinstance(get_config(8, 14336, 4096, 2, 16, torch.bfloat16), MoEKernelConfig)


# ------------------------------------------------------------------------------------------------------
# Tuned config files: names, lookup order, nearest M, validation, warnings, caching, lint
# ------------------------------------------------------------------------------------------------------

import json
import logging
import time
from pathlib import Path

from moekit import configs, envs
from moekit.cli import main as cli_main
from moekit.configs import (
    check_config_file, clear_cache, config_dtype_name, config_file_name, find_config_file, load_config_file,
    parse_config_file_name, tune_command,
)
from moekit.platform import PRESETS, device_name_for_configs, fake_platform
from moekit.quant import QuantScheme

H100 = device_name_for_configs(PRESETS["h100"])
ENTRY = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
         "num_stages": 3}


def _entry(**kw):
    return dict(ENTRY, **kw)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Each test: its own user folder and package folder, no MOEKIT_CONFIG_DIR, fresh caches and warn-once."""
    monkeypatch.delenv("MOEKIT_CONFIG_DIR", raising=False)
    monkeypatch.setattr(configs, "user_config_dir", lambda: tmp_path / "user")
    monkeypatch.setattr(configs, "package_config_dir", lambda: tmp_path / "pkg")
    clear_cache()
    envs._reset_for_tests()
    yield
    clear_cache()
    envs._reset_for_tests()


def _write(folder: Path, name: str, content) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(json.dumps(content) if not isinstance(content, str) else content)
    clear_cache()
    return p


def test_file_names_match_vllm():
    assert config_file_name(128, 768, H100) == "E=128,N=768,device_name=NVIDIA_H100_80GB_HBM3.json"
    assert config_file_name(8, 14336, H100, torch.bfloat16) == "E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json"
    assert config_file_name(8, 14336, H100, torch.float16) == "E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json"
    assert (config_file_name(256, 256, H100, "fp8_w8a8", [128, 128])
            == "E=256,N=256,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json")
    assert config_file_name(32, 2880, H100, "mxfp4").endswith(",dtype=mxfp4.json")
    assert config_file_name(8, 64, "X", torch.float32).endswith(",dtype=float32.json")
    assert config_file_name(8, 64, "X", torch.float8_e4m3fn).endswith(",dtype=fp8_w8a8.json")


@pytest.mark.parametrize("scheme, name", [
    (QuantScheme.none(), None), (QuantScheme.fp8_block(128, 128), "fp8_w8a8"), (QuantScheme.fp8_channel(), "fp8_w8a8"),
    (QuantScheme.int8_channel(), "int8_w8a8"), (QuantScheme.int8_weight_only(), "int8_w8a16"),
    (QuantScheme.int4_weight_only(), "int4_w4a16"), (QuantScheme.mxfp4(), "mxfp4"),
])
def test_dtype_names_from_schemes(scheme, name):
    assert config_dtype_name(scheme) == name


def test_bad_dtype_name_raises():
    with pytest.raises(ValueError, match="dtype"):
        config_dtype_name("fp7")


@pytest.mark.parametrize("args", [(128, 768, H100, None, None), (256, 256, H100, "fp8_w8a8", (128, 128)),
                                  (32, 2880, "AMD_Instinct_MI300X", "mxfp4", None)])
def test_parse_file_name_round_trip(args):
    E, N, dev, dt, bs = args
    parts = parse_config_file_name(config_file_name(*args))
    assert parts == {"E": E, "N": N, "device_name": dev, "dtype": dt, "block_shape": bs}
    assert parse_config_file_name("E=8,N=14336.json") is None


def test_nearest_m_and_unknown_keys(tmp_path):
    _write(tmp_path / "pkg", config_file_name(8, 64, H100), {
        "triton_version": "3.6.0",
        "1": _entry(BLOCK_SIZE_N=32, SPLIT_K=1, kpack=2),
        "64": _entry(BLOCK_SIZE_M=64),
        "1024": _entry(BLOCK_SIZE_M=128, num_warps=8),
    })
    with fake_platform("h100"):
        pick = {m: get_config(8, 64, 256, 2, m, torch.bfloat16).BLOCK_SIZE_M for m in (1, 2, 32, 33, 64, 500, 600, 9999)}
    assert pick == {1: 16, 2: 16, 32: 16, 33: 64, 64: 64, 500: 64, 600: 128, 9999: 128}
    with fake_platform("h100"):
        assert get_config(8, 64, 256, 2, 1, torch.bfloat16) == MoEKernelConfig(16, 32, 128, 1, 4, 3)


def test_bad_batch_keys_and_values_are_reported(tmp_path):
    """Non-finite values, non-integer or repeated batch-size keys and num_warps past 32 are errors (each
    entry dropped, the rest kept), never a crash or a silent choice."""
    from moekit.configs import check_config_file, load_config_file

    path = tmp_path / config_file_name(8, 64, H100)
    good = json.dumps(_entry())
    path.write_text('{"1": %s, "8.0": %s, "08": %s, "8": %s, "16": {"BLOCK_SIZE_M": NaN}, "32": %s}'
                    % (good, good, good, good, json.dumps(_entry(num_warps=64))))
    parsed = load_config_file(path)
    assert parsed.batch_sizes == (1, 8)
    text = "\n".join(parsed.errors)
    for what in ("M=8.0: expected an integer batch size", "M=8: the same batch size as key '08'",
                 "M=16: BLOCK_SIZE_M: expected an integer, got nan", "M=32: num_warps: expected a power of two <= 32"):
        assert what in text
    assert set(check_config_file(path)[0]) == set(parsed.errors)  # (M=16 names each missing field too)


def test_search_order_env_then_user_then_package(tmp_path, monkeypatch):
    name = config_file_name(8, 64, H100)
    _write(tmp_path / "pkg", name, {"1": _entry(BLOCK_SIZE_N=32)})
    with fake_platform("h100"):
        assert get_config(8, 64, 256, 2, 1).BLOCK_SIZE_N == 32
        _write(tmp_path / "user", name, {"1": _entry(BLOCK_SIZE_N=64)})
        assert get_config(8, 64, 256, 2, 1).BLOCK_SIZE_N == 64
        _write(tmp_path / "env", name, {"1": _entry(BLOCK_SIZE_N=128)})
        monkeypatch.setenv("MOEKIT_CONFIG_DIR", str(tmp_path / "env"))
        assert get_config(8, 64, 256, 2, 1).BLOCK_SIZE_N == 128  # env value is part of the cache key
        monkeypatch.delenv("MOEKIT_CONFIG_DIR")
        assert get_config(8, 64, 256, 2, 1).BLOCK_SIZE_N == 64
    assert [p.name for p in configs.config_search_dirs()] == ["user", "pkg"]


def test_device_and_dtype_select_the_file(tmp_path):
    _write(tmp_path / "pkg", config_file_name(8, 64, H100, "fp8_w8a8", (128, 128)), {"1": _entry(BLOCK_SIZE_N=32)})
    with fake_platform("h100"):
        assert get_config(8, 64, 256, 2, 1, "fp8_w8a8", [128, 128]).BLOCK_SIZE_N == 32
        assert get_config(8, 64, 256, 2, 1, torch.float8_e4m3fn, (128, 128)).BLOCK_SIZE_N == 32
        assert get_config(8, 64, 256, 2, 1, torch.bfloat16) == fit_shared_memory(
            default_config(1, 8, 64, 256, 2), 2, 227 * 1024)
        # explicit device name: another GPU's file is not used
        assert get_config(8, 64, 256, 2, 1, "fp8_w8a8", [128, 128], device_name="NVIDIA_B200").BLOCK_SIZE_N == 64


def test_missing_file_warns_once_with_the_tune_command(caplog):
    with fake_platform("h100"), caplog.at_level(logging.WARNING, logger="moekit"):
        get_config(128, 768, 2048, 8, 1, torch.bfloat16)
        get_config(128, 768, 2048, 8, 4096, torch.bfloat16)
        get_config(128, 384, 2048, 8, 1, torch.bfloat16)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2, msgs
    assert "moekit tune --model qwen3_30b_a3b" in msgs[0] and H100 in msgs[0]
    assert "moekit tune --model qwen3_30b_a3b --tp 2" in msgs[1]


def test_no_warning_on_cpu(caplog):
    with fake_platform("cpu"), caplog.at_level(logging.WARNING, logger="moekit"):
        get_config(128, 768, 2048, 8, 1, torch.float16)
    assert not caplog.records


def test_tune_command():
    assert tune_command(8, 14336, 4096, 2) == "moekit tune --model mixtral8x7b"
    assert tune_command(32, 2048, 7168, 8, "fp8_w8a8", (128, 128)) == \
        "moekit tune --model dsv3 --ep 8 --dtype fp8_w8a8 --block-shape 128 128"
    assert tune_command(256, 256, 7168, 8, "fp8_w8a8", (128, 128)).startswith("moekit tune --model dsv3 --tp 8")
    assert tune_command(60, 1408, 2048, 4) == "moekit tune --E 60 --N 1408 --K 2048 --top-k 4"


def test_invalid_entries_are_dropped_with_one_warning(tmp_path, caplog):
    _write(tmp_path / "pkg", config_file_name(8, 64, H100), {
        "1": _entry(BLOCK_SIZE_M=24), "2": _entry(num_warps=6), "4": _entry(num_stages=0),
        "8": {"BLOCK_SIZE_M": 16}, "16": "nope", "64": _entry(BLOCK_SIZE_M=64),
    })
    with fake_platform("h100"), caplog.at_level(logging.WARNING, logger="moekit"):
        assert get_config(8, 64, 256, 2, 1).BLOCK_SIZE_M == 64  # only the valid entry is left
        get_config(8, 64, 256, 2, 2)
    assert len(caplog.records) == 1 and "power of two" in caplog.records[0].getMessage()


def test_block_k_lowered_to_the_quant_block_with_one_warning(tmp_path, caplog):
    _write(tmp_path / "pkg", config_file_name(8, 64, H100, "fp8_w8a8", (128, 64)),
           {"1": _entry(BLOCK_SIZE_K=256), "2": _entry(BLOCK_SIZE_K=128)})
    with fake_platform("h100"), caplog.at_level(logging.WARNING, logger="moekit"):
        assert get_config(8, 64, 256, 2, 1, "fp8_w8a8", (128, 64)).BLOCK_SIZE_K == 64
        assert get_config(8, 64, 256, 2, 2, "fp8_w8a8", (128, 64)).BLOCK_SIZE_K == 64
    assert len(caplog.records) == 1 and "quantization block 64" in caplog.records[0].getMessage()


def test_default_respects_the_quant_block():
    with fake_platform("cpu"):
        assert get_config(8, 64, 256, 2, 1, "fp8_w8a8", (128, 64)).BLOCK_SIZE_K == 64


def test_shared_memory_is_fitted_with_a_warning(tmp_path, caplog):
    big = _entry(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=128, num_stages=5)
    _write(tmp_path / "pkg", config_file_name(8, 64, device_name_for_configs(PRESETS["rtx_pro_6000"])), {"1": big})
    with fake_platform("rtx_pro_6000"), caplog.at_level(logging.WARNING, logger="moekit"):
        c = get_config(8, 64, 256, 2, 1, torch.bfloat16)
    assert shared_memory_bytes(c, 2) <= 99 * 1024 and c.BLOCK_SIZE_N == 256
    assert any("shared memory" in r.getMessage() for r in caplog.records)


def test_parsed_files_are_cached(tmp_path, monkeypatch):
    _write(tmp_path / "pkg", config_file_name(8, 64, H100), {"1": _entry()})
    calls = []
    real = configs._parse_file
    monkeypatch.setattr(configs, "_parse_file", lambda *a: calls.append(a) or real(*a))
    with fake_platform("h100"):
        for m in range(1, 50):
            get_config(8, 64, 256, 2, m)
    assert len(calls) == 1


def test_get_config_is_cheap(tmp_path):
    _write(tmp_path / "pkg", config_file_name(8, 64, H100), {"1": _entry(), "64": _entry(BLOCK_SIZE_M=64)})
    with fake_platform("h100"):
        get_config(8, 64, 256, 2, 7, torch.bfloat16)
        t = time.perf_counter()
        for _ in range(2000):
            get_config(8, 64, 256, 2, 7, torch.bfloat16)
        per_call = (time.perf_counter() - t) / 2000
    assert per_call < 50e-6, per_call  # a cache hit: a few microseconds


def test_find_and_load(tmp_path):
    p = _write(tmp_path / "pkg", config_file_name(8, 64, H100), {"4": _entry(), "1": _entry(BLOCK_SIZE_N=32)})
    f = find_config_file(8, 64, device_name=H100)
    assert f is not None and f.path == str(p) and f.batch_sizes == (1, 4) and not f.errors
    assert load_config_file(p).as_dict()[1].BLOCK_SIZE_N == 32
    assert find_config_file(8, 65, device_name=H100) is None


def test_check_good_and_bad_files(tmp_path, capsys):
    good = _write(tmp_path / "c", config_file_name(8, 64, H100), {"triton_version": "3.6.0", "1": _entry()})
    assert check_config_file(good) == ([], [])
    bad = _write(tmp_path / "d", config_file_name(8, 64, H100), {"1": _entry(BLOCK_SIZE_K=48)})
    errors, _ = check_config_file(bad)
    assert any("BLOCK_SIZE_K" in e for e in errors)
    huge = _write(tmp_path / "e", config_file_name(8, 64, H100),
                  {"1": _entry(BLOCK_SIZE_M=256, BLOCK_SIZE_N=256, BLOCK_SIZE_K=256, num_stages=4)})
    errors, _ = check_config_file(huge)
    assert any("shared memory" in e for e in errors)
    odd = _write(tmp_path / "f", "mixtral.json", {"1": _entry()})
    assert any("file name" in e for e in check_config_file(odd)[0])
    unknown = _write(tmp_path / "g", config_file_name(8, 64, "Some_GPU"), {"1": _entry(kpack=2)})
    errors, warnings = check_config_file(unknown)
    assert not errors and any("kpack" in w for w in warnings) and any("Some_GPU" in w for w in warnings)

    assert cli_main(["configs", "check", str(good)]) == 0
    assert cli_main(["configs", "check", str(tmp_path / "c"), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "BLOCK_SIZE_K" in out
    assert cli_main(["configs", "list"]) == 0


SHIPPED = sorted((Path(configs.__file__).parent / "configs_data").glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_are_valid(path):
    errors, warnings = check_config_file(path)
    assert not errors, errors
    assert parse_config_file_name(path.name) is not None
    assert len(load_config_file(path).table) >= 1



_REAL_USER_DIR = configs.user_config_dir  # before the autouse fixture replaces it


def test_user_folder_without_platformdirs(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "platformdirs", None)  # "import platformdirs" raises ImportError
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _REAL_USER_DIR() == tmp_path / "moekit" / "configs"


@pytest.mark.parametrize("kwargs,arg", [(dict(E=0), "E"), (dict(N=0), "N"), (dict(M=-1), "M"), (dict(top_k=0), "top_k")])
def test_get_config_rejects_bad_problem(kwargs, arg):
    import moekit

    args = dict(E=8, N=64, K=64, top_k=2, M=16, dtype=torch.bfloat16)
    args.update(kwargs)
    with pytest.raises(moekit.MoEInputError, match=arg):
        get_config(**args)


def test_get_config_top_k_may_exceed_local_experts():
    """Expert parallelism: a rank can hold fewer experts than a token chooses."""
    assert isinstance(get_config(E=1, N=64, K=64, top_k=2, M=4, dtype=torch.float32), MoEKernelConfig)


def test_block_fp8_default_keeps_block_m_at_64():
    """Block-quantized w8a8 defaults: GEMM 1 owns 128-column groups with two accumulators, so BLOCK_M stays
    at 64 (128 spilled: 2.7x slower on an H100) and BLOCK_K is the 128 block; unquantized keeps 128x128."""
    big = 4096
    c = default_config(big, 128, 768, 2048, 8, "fp8_w8a8", (128, 128))
    assert (c.BLOCK_SIZE_M, c.BLOCK_SIZE_N, c.BLOCK_SIZE_K) == (64, 128, 128)
    assert default_config(big, 128, 768, 2048, 8, torch.bfloat16).BLOCK_SIZE_M == 128
    assert default_config(big, 128, 768, 2048, 8, "fp8_w8a8").BLOCK_SIZE_M == 128  # per-tensor / channel
    assert default_config(1, 128, 768, 2048, 8, "fp8_w8a8", (128, 128)).BLOCK_SIZE_M == 16



@pytest.mark.parametrize("dtype", ["fp8_w8a8", "int8_w8a8", torch.float8_e4m3fn, torch.int8])
def test_eight_bit_default_uses_128_byte_k_steps(dtype):
    """Per-tensor / per-channel 8-bit w8a8 from 32 tokens per expert: BLOCK_K 128 (what every tuned mixtral
    fp8 entry chose on H100 and H200); bf16 keeps 64. Up to 8 tokens per expert 256-byte K steps, 2 stages (the
    H100 tuner's pick for Mixtral fp8 and Qwen3 fp8 per channel there) from 16 slots, where bf16 takes 128 (256
    bytes too); fewer slots keep the bf16-shaped 4-deep pipeline."""
    E, k = 8, 2  # mixtral: tokens per expert = M / 4
    assert default_config(128, E, 14336, 4096, k, dtype).short() == "M64 N64 K128 G16 w4 s4"
    assert default_config(4096, E, 14336, 4096, k, dtype).short() == "M128 N128 K128 G16 w8 s4"
    assert default_config(4096, E, 14336, 4096, k, torch.bfloat16).BLOCK_SIZE_K == 64
    assert default_config(8, E, 14336, 4096, k, dtype).short() == "M16 N64 K256 G1 w4 s2"
    assert default_config(8, E, 14336, 4096, k, torch.bfloat16).short() == "M16 N64 K128 G1 w4 s4"
    assert default_config(1, E, 14336, 4096, k, dtype) == default_config(1, E, 14336, 4096, k, torch.bfloat16)


@pytest.mark.parametrize("m", [1, 16, 256, 4096])
def test_mxfp4_default_and_shipped_k_steps_take_the_ptx_decode(m):
    """mxfp4: K steps of 32-128 codes (whole e8m0 groups, what the inline-PTX decode takes on Hopper) and tiles
    of >= 32 rows, in the default and in every shipped entry."""
    import json

    from moekit.quant.triton_moe import mxfp4_ptx_decode

    x = torch.zeros(1, 8)
    ok = lambda c: c["BLOCK_SIZE_K"] in (32, 64, 128) and c["BLOCK_SIZE_M"] >= 32  # noqa: E731
    assert ok(default_config(m, 32, 2880, 2880, 4, "mxfp4").to_dict())
    for path in (p for p in SHIPPED if "dtype=mxfp4" in p.name):
        entries = {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, dict)}
        assert all(ok(v) for v in entries.values()), path.name
    assert not mxfp4_ptx_decode(x, 32, 64)  # CPU: never


@pytest.mark.parametrize("m", [1, 64, 256])
def test_mxfp4_default_tiles_have_32_rows(m):
    """mxfp4 defaults: tiles of at least 32 rows at every M (those take the inline-PTX decode on Hopper; 1.10x
    over 16-row tiles at gpt-oss-120b M=64-256 on the H100), where other dtypes start at 16."""
    assert default_config(m, 128, 2880, 2880, 4, "mxfp4").BLOCK_SIZE_M >= 32
    assert default_config(1, 128, 2880, 2880, 4, torch.bfloat16).BLOCK_SIZE_M == 16


def test_bench_configs_repair_restores_default(tmp_path):
    """benchmarks/bench_configs.py --repair: an entry whose default measured > 2 % faster gets the default."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_configs", Path(__file__).parents[1] / "benchmarks" /
                                                  "bench_configs.py")
    bc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bc)
    name = "E=8,N=64,device_name=X.json"
    tuned = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 256, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 8,
             "num_stages": 3}
    default = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
               "num_stages": 4}
    (tmp_path / name).write_text(json.dumps({"1": tuned, "2": tuned, "triton_version": "3.6.0"}))
    result = {"files": [{"file": name, "points": [
        dict(M=1, default_config=default, tuned_config=tuned, same=False, speedup=0.90),  # default 11 % faster
        dict(M=2, default_config=default, tuned_config=tuned, same=False, speedup=0.99),  # within 2 %: kept
    ]}]}
    assert bc.repair(result, tmp_path) == 0
    out = json.loads((tmp_path / name).read_text())
    assert out["1"] == default and out["2"] == tuned and out["triton_version"] == "3.6.0"


@pytest.mark.parametrize("m, e, k, expected", [
    (96, 8, 2, "M32 N64 K128 G1 w4 s4"),  # 24 tokens per expert
    (112, 8, 2, "M64 N64 K128 G1 w4 s3"),  # 28: 32-row tiles would overflow for the busier experts
    (128, 8, 2, "M64 N64 K128 G1 w4 s3"),  # 32 (Mixtral bf16 on the H100: 1355 -> 990 us)
    (1024, 128, 8, "M64 N64 K64 G8 w4 s4"),  # 48 < 64 per expert <= 96
])
def test_default_bf16_tile_rows_leave_headroom(m, e, k, expected):
    assert default_config(m, e, 14336, 4096, k, torch.bfloat16).short() == expected
