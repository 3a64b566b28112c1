"""moekit tune: search space, pruning, the coarse-to-fine search under a budget, resume, output, CLI.

CPU tests use a synthetic timer (a cost model with a known optimum) and a fake clock; the GPU test runs a
tiny real tuning with worker-process compilation."""
import dataclasses
import json
import math

import pytest
import torch

from conftest import gpu_only
from moekit import configs
from moekit.cli import main as cli_main
from moekit.configs import MoEKernelConfig, load_config_file, shared_memory_bytes
from moekit.platform import PRESETS, shared_memory_per_block
from moekit.tune import (
    SEARCH, Tuner, TuneSpec, _compile_only, _key, _Progress, bm_window, candidate_space, neighbours,
    prune_reason, screen_candidates, spec_for_model, vllm_json,
)

SMEM = shared_memory_per_block(PRESETS["h100"])
QWEN = spec_for_model("qwen3_30b_a3b")
MIXTRAL = spec_for_model("mixtral8x7b")


def test_spec_for_model_tp_ep():
    assert (QWEN.E, QWEN.N, QWEN.K, QWEN.top_k, QWEN.E_global) == (128, 768, 2048, 8, 128)
    s = spec_for_model("qwen3_30b_a3b", tp=2, ep=4)
    assert (s.E, s.N, s.E_global) == (32, 384, 128)
    assert s.file_name("X") == "E=32,N=384,device_name=X.json"
    d = spec_for_model("dsv3", tp=8, dtype="fp8_w8a8", block_shape=[128, 128])
    assert d.file_name("X") == "E=256,N=256,device_name=X,dtype=fp8_w8a8,block_shape=[128,128].json"
    assert d.num_expert_group == 8 and d.scoring == "sigmoid" and d.elem_bytes == 1
    with pytest.raises(ValueError, match="tp"):
        spec_for_model("mixtral8x7b", tp=3)
    with pytest.raises(ValueError, match="model"):
        spec_for_model("llama")


@pytest.mark.parametrize("spec", [QWEN, MIXTRAL, spec_for_model("dsv3", tp=8), spec_for_model("gpt_oss_20b")],
                         ids=lambda s: s.describe().split(":")[0])
@pytest.mark.parametrize("M", [1, 24, 256, 4096])
def test_candidates_are_valid_and_pruned(spec, M):
    space = candidate_space(spec, M, SMEM)
    assert space
    lo, hi = bm_window(spec, M)
    for c in space:
        assert shared_memory_bytes(c, spec.elem_bytes) <= SMEM
        assert lo <= c.BLOCK_SIZE_M <= hi
        for f in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "num_warps"):
            v = getattr(c, f)
            assert v & (v - 1) == 0
    screen = screen_candidates(spec, M, SMEM)
    assert 0 < len(screen) <= 48 and len(set(screen)) == len(screen)
    assert all(prune_reason(c, spec, M, SMEM) is None for c in screen)
    assert all(prune_reason(n, spec, M, SMEM) is None for n in neighbours(screen[0], spec, M, SMEM))


def test_mxfp4_window_reaches_32_rows():
    """mxfp4 tiles of 32 rows take the inline-PTX decode on Hopper, so the tuner tries them at decode sizes."""
    assert bm_window(spec_for_model("gpt_oss_20b", dtype="mxfp4"), 16)[1] == 32
    assert bm_window(spec_for_model("gpt_oss_20b"), 16)[1] == 16


def test_pruning_reasons():
    assert "BLOCK_SIZE_M" in prune_reason(MoEKernelConfig(128, 64, 64, 1, 4, 3), QWEN, 1, SMEM)
    assert "shared memory" in prune_reason(MoEKernelConfig(256, 256, 256, 16, 8, 5), QWEN, 4096, SMEM)
    assert "registers" in prune_reason(MoEKernelConfig(256, 256, 64, 16, 4, 2), QWEN, 4096, SMEM)
    assert "8 warps" in prune_reason(MoEKernelConfig(16, 64, 128, 1, 8, 3), QWEN, 1, SMEM)
    fp8 = spec_for_model("dsv3", dtype="fp8_w8a8", block_shape=[128, 128])
    assert "quantization block" in prune_reason(MoEKernelConfig(16, 64, 256, 1, 4, 3), fp8, 1, SMEM)


def optimum(M):
    """The synthetic cost model's best config at batch M."""
    bm = 16 if M <= 64 else 32 if M <= 256 else 64 if M <= 1024 else 128
    return MoEKernelConfig(bm, 128 if M > 64 else 64, 64 if M > 64 else 128, 16 if M > 64 else 1,
                           8 if M > 1024 else 4, 4 if M <= 1024 else 3)


class FakeGPU:
    """Cost model: separable in log2 of each knob, minimum at :func:`optimum`; advances a fake clock."""

    def __init__(self, cost_s=0.2, fail=lambda c: False, interrupt_after=None):
        self.now = 0.0
        self.calls = 0
        self.cost_s, self.fail, self.interrupt_after = cost_s, fail, interrupt_after

    def clock(self):
        return self.now

    def __call__(self, M, c, rep_ms):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        self.now += self.cost_s * (1 + rep_ms / 50)
        if self.fail(c):
            raise RuntimeError("OutOfResources: out of resource: shared memory")
        o = optimum(M)
        pen = sum(abs(math.log2(getattr(c, f) / getattr(o, f))) for f in SEARCH)
        return (5.0 + M / 10) * (1 + 0.1 * pen)


def _tuner(gpu, Ms=(1, 16, 256, 2048, 4096), budget=600.0, **kw):
    return Tuner(QWEN, Ms, budget, gpu, SMEM, clock=gpu.clock, progress=False, log=lambda s: None, **kw)


def test_finds_the_optimum_with_a_generous_budget():
    gpu = FakeGPU()
    res = _tuner(gpu).run()
    for M, c in res.configs.items():
        assert c == optimum(M), (M, c)
        assert res.tuned_us[M] <= res.default_us[M]
    assert min(res.speedups().values()) >= 1.0 and gpu.now <= 600 * 1.05


def test_launch_order_only_batch_sizes_vary_group_m_alone():
    """Where the kernels take only GROUP_SIZE_M from a config (fp8 block on Hopper's Gluon kernels), every
    config the tuner times keeps the default's tiles, and the result is never worse than the default."""
    gpu = FakeGPU()
    Ms = (16, 256, 2048)
    t = _tuner(gpu, Ms, order_only=lambda M: M >= 256)
    res = t.run()
    for M in (256, 2048):
        d = t.default(M)
        timed = [MoEKernelConfig(*map(int, k.split(","))) for k in t.meas[M]]
        assert len(timed) > 1 and all(dataclasses.replace(c, GROUP_SIZE_M=d.GROUP_SIZE_M) == d for c in timed)
        assert res.tuned_us[M] <= res.default_us[M]
    assert len(t.meas[16]) > len(SEARCH["GROUP_SIZE_M"])  # the full search elsewhere


def test_launch_order_only_rule():
    """The rule follows ``fp8_block_gluon_applies``: fp8 128x128 blocks on Hopper from 32 rows per expert (and
    a triton with Gluon); never for bf16 or other GPUs."""
    from moekit.quant.triton_moe import gluon_kernels
    from moekit.tune import launch_order_only

    dsv3 = spec_for_model("dsv3", dtype="fp8_w8a8", block_shape=[128, 128])
    h100, a100 = PRESETS["h100"], PRESETS["a100"]
    gluon = gluon_kernels() is not None
    assert launch_order_only(dsv3, 1024, h100) == gluon  # 32 rows per expert
    assert not launch_order_only(dsv3, 512, h100)
    assert not launch_order_only(dsv3, 4096, a100)
    assert not launch_order_only(QWEN, 4096, h100)


@pytest.mark.parametrize("budget", [20.0, 60.0])
def test_short_budget_is_respected_and_never_worse_than_default(budget):
    gpu = FakeGPU()
    Ms = configs.VLLM_BATCH_SIZES
    res = _tuner(gpu, Ms, budget).run()
    assert sorted(res.configs) == list(Ms)
    # the minimum work (default + a few screened + the finalists) may overrun a tiny budget by a bounded amount
    assert gpu.now <= budget + len(Ms) * 12 * gpu.cost_s * 2
    assert all(res.tuned_us[m] <= res.default_us[m] for m in Ms)


def test_compile_ahead_pool_is_used_in_readiness_order():
    """A stand-in pool whose 'compiles' finish in threads: every timed candidate was compiled first."""
    import concurrent.futures as cf
    import threading
    import time

    class Pool:
        def __init__(self):
            self.ex = cf.ThreadPoolExecutor(2)
            self.futures = {}
            self.compiled = set()
            self.lock = threading.Lock()

        def submit(self, M, cfgs):
            for c in cfgs:
                if (M, _key(c)) not in self.futures:
                    self.futures[(M, _key(c))] = self.ex.submit(self._compile, M, c)

        def _compile(self, M, c):
            time.sleep(0.001)
            with self.lock:
                self.compiled.add((M, _key(c)))

        def future(self, M, c):
            return self.futures.get((M, _key(c)))

    pool = Pool()
    gpu = FakeGPU()
    timed = []

    def timer(M, c, rep):
        timed.append((M, _key(c)))
        return gpu(M, c, rep)

    res = Tuner(QWEN, (1, 256), 600, timer, SMEM, pool, clock=gpu.clock, progress=False, log=lambda s: None).run()
    pool.ex.shutdown()
    assert res.configs == _tuner(FakeGPU(), (1, 256)).run().configs
    assert set(timed) <= pool.compiled


def test_failing_candidates_are_skipped():
    gpu = FakeGPU(fail=lambda c: c.BLOCK_SIZE_N == 128)
    res = _tuner(gpu, (1, 4096)).run()
    assert all(c.BLOCK_SIZE_N != 128 for c in res.configs.values()) and res.failed > 0


def test_default_kept_unless_clearly_faster():
    class Flat(FakeGPU):
        def __call__(self, M, c, rep_ms):
            super().__call__(M, c, rep_ms)
            return 10.0 - 0.01 * (c.BLOCK_SIZE_N == 256)  # 0.1 % better: noise, not a win

    gpu = Flat()
    t = _tuner(gpu, (1, 256))
    res = t.run()
    assert all(res.configs[m] == t.default(m) for m in (1, 256))


def test_resume_reuses_measurements(tmp_path):
    state = tmp_path / "x.json.partial.json"
    full = FakeGPU()
    ref = _tuner(full, (1, 256)).run()
    gpu = FakeGPU(interrupt_after=25)
    with pytest.raises(KeyboardInterrupt):
        _tuner(gpu, (1, 256), state_path=state).run()
    saved = json.loads(state.read_text())
    assert sum(len(v) for v in saved["meas"].values()) == 25
    gpu2 = FakeGPU()
    res = _tuner(gpu2, (1, 256), state_path=state).run()
    assert gpu2.calls < full.calls
    assert res.configs == ref.configs
    # a state file for another shape is ignored
    other = Tuner(MIXTRAL, (1, 256), 600, FakeGPU(), SMEM, state_path=state, progress=False, log=lambda s: None)
    assert not any(other.meas.values())


def test_output_is_vllm_json_and_loads(tmp_path):
    res = _tuner(FakeGPU(), (1, 4096)).run()
    content = vllm_json(res.configs)
    assert "triton_version" in content and set(content) - {"triton_version"} == {"1", "4096"}
    p = tmp_path / QWEN.file_name("NVIDIA_H100_80GB_HBM3")
    p.write_text(json.dumps(content))
    assert configs.check_config_file(p) == ([], [])
    assert load_config_file(p).as_dict() == res.configs
    assert "geometric-mean speed-up" in res.table()


def test_progress_fallback_prints_eta(capsys):
    import sys

    t = [0.0]
    p = _Progress(4, "tune", True, lambda: t[0], deadline=100.0, out=sys.stdout)
    if p.bar is not None:  # tqdm installed: its bar is the progress display
        p.close()
        return
    t[0] = 10.0
    p.step("screen M=1")
    out = capsys.readouterr().out
    assert "1/4" in out and "ETA 00:30" in out and "elapsed 00:10" in out


def test_compile_only_restores_triton():
    from triton.runtime.jit import JITFunction

    orig = JITFunction.run
    with _compile_only():
        assert JITFunction.run is not orig
    assert JITFunction.run is orig


def test_cli(capsys):
    assert cli_main(["tune", "--model", "qwen3_30b_a3b", "--tp", "2", "--dry-run", "--batch-sizes", "1", "4096"]) == 0
    out = capsys.readouterr().out
    assert "E=128,N=384" in out and "M= 4096" in out
    assert cli_main(["tune", "--E", "60", "--N", "1408", "--K", "2048", "--top-k", "4", "--dry-run",
                     "--batch-sizes", "8"]) == 0
    assert cli_main(["tune", "--E", "60", "--N", "1408", "--dry-run"]) == 2
    assert "--K --top-k" in capsys.readouterr().err
    assert cli_main(["tune", "--model", "dsv3", "--tp", "8", "--dtype", "fp8_w8a8", "--block-shape", "128", "128",
                     "--dry-run", "--batch-sizes", "1"]) == 0
    assert "dtype=fp8_w8a8,block_shape=[128,128].json" in capsys.readouterr().out
    assert cli_main(["tune", "--model", "dsv3", "--dtype", "fp4"]) == 2
    assert "dtype" in capsys.readouterr().err
    assert cli_main(["tune", "--model", "mixtral8x7b", "--block-shape", "128", "128"]) == 2
    assert "--block-shape" in capsys.readouterr().err
    assert cli_main(["tune", "--model", "dsv3", "--tp", "3", "--dry-run"]) == 2


def test_scheme_for_spec():
    from moekit.quant import QuantScheme
    from moekit.tune import scheme_for_spec

    assert scheme_for_spec(QWEN) is None
    assert scheme_for_spec(spec_for_model("dsv3", dtype="fp8_w8a8", block_shape=(128, 128))) == QuantScheme.fp8_block(128, 128)
    assert scheme_for_spec(spec_for_model("gpt_oss_20b", dtype="mxfp4")) == QuantScheme.mxfp4()
    assert scheme_for_spec(spec_for_model("mixtral8x7b", dtype="int4_w4a16")) == QuantScheme.int4_weight_only()


def test_key_round_trip():
    c = MoEKernelConfig(16, 64, 128, 1, 4, 3)
    from moekit.tune import _from_key

    assert _from_key(_key(c)) == c


@gpu_only
@pytest.mark.parametrize("dtype, block_shape", [("bf16", None), ("fp8_w8a8", (128, 128)), ("mxfp4", None)])
def test_real_tuning_small(dtype, block_shape):
    """End to end on the GPU: worker processes compile ahead, the timer measures, a valid file results."""
    from moekit.platform import device_name_for_configs
    from moekit.tune import CompilePool, GpuTimer

    spec = TuneSpec(8, 256, 512, 2, dtype=dtype, block_shape=block_shape)
    pool = CompilePool(spec, 2)
    try:
        t = Tuner(spec, (1, 64), 8.0, GpuTimer(spec), shared_memory_per_block(), pool, progress=False,
                  log=lambda s: None, device_name=device_name_for_configs())
        res = t.run()
    finally:
        pool.close()
    assert sorted(res.configs) == [1, 64]
    assert all(math.isfinite(res.tuned_us[m]) and res.tuned_us[m] > 0 for m in res.configs)
    assert not [f for f in pool.futures.values() if f.done() and not f.cancelled() and f.exception()]
    done = [f.result() for f in pool.futures.values() if f.done() and not f.cancelled()]
    assert done and all(err is None for r in done for err in r)


@pytest.mark.parametrize("argv, says", [
    (["--model", "qwen3_30b_a3b", "--batch-sizes", "0", "-1"], "batch-sizes"),
    (["--model", "qwen3_30b_a3b", "--E", "4"], "--model with --E"),
    (["--model", "dsv3", "--dtype", "fp8_w8a8", "--block-shape", "128", "96"], "block-shape"),
    (["--model", "dsv3", "--dtype", "fp8_w8a8", "--block-shape", "0", "0"], "block-shape"),
])
def test_cli_refuses_bad_tune_arguments_in_one_line(argv, says, capsys):
    assert cli_main(["tune", "--dry-run", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_setting_errors_are_one_line(monkeypatch, capsys):
    """A backend the machine cannot run (MOEKIT_BACKEND=triton on a CPU) is an error line and exit code 2."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    monkeypatch.setenv("MOEKIT_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert cli_main(["demo"]) == 2
    assert "moekit demo: error:" in capsys.readouterr().err
