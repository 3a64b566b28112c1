"""GEMM 2's own tile width (:func:`moekit.configs.gemm2_config`): the rule, and the grouped forward with 256-column
GEMM 2 tiles against the float64 reference and against GEMM 1's config (CPU interpreter fp16/fp32/fp8; GPU bf16
too). The K bound is lowered so that small layers take the wide tiles."""
import pytest
import torch

import moekit.configs as configs
import moekit.quant.triton_moe as tq
import moekit.triton_experts as te
from moekit.configs import MoEKernelConfig, gemm2_config
from moekit.quant import QuantScheme
from moekit.testing import assert_close_to_reference
from moekit.triton_experts import fused_experts_triton

from conftest import DEVICE, KERNEL_DTYPES, gpu_only, make_layer

WIDE = MoEKernelConfig(128, 256, 64, 8, 8, 3)


@pytest.mark.parametrize("config, k, per_expert, expected", [
    (MoEKernelConfig(128, 128, 64, 8, 8, 3), 14336, 512, WIDE),  # Mixtral-8x7B prefill
    (MoEKernelConfig(128, 128, 64, 8, 8, 3), 4096, 128, WIDE),
    (MoEKernelConfig(128, 128, 64, 8, 8, 3), 2880, 512, None),  # gpt-oss: short K
    (MoEKernelConfig(128, 128, 64, 8, 8, 3), 14336, 64, None),  # half-empty tiles (Mixtral M=256)
    (MoEKernelConfig(64, 64, 128, 32, 4, 4), 14336, 512, None),  # other tiles: as tuned
    (MoEKernelConfig(128, 64, 128, 1, 8, 3), 14336, 512, None),
])
def test_the_rule(config, k, per_expert, expected):
    assert gemm2_config(config, k, per_expert) == (config if expected is None else expected)


def _run_both(monkeypatch, x, w13, w2, w, ids, kw, cfg):
    """(wide, plain): the forward with the K bound at 64, then with it out of reach; and GEMM 2's widths."""
    seen = []
    for mod in (te, tq):
        real = mod.moe_gemm2

        def spy(*a, _real=real, **k):
            seen.append(next(v for v in a if isinstance(v, MoEKernelConfig)).BLOCK_SIZE_N)
            return _real(*a, **k)

        monkeypatch.setattr(mod, "moe_gemm2", spy)
    outs = []
    for bound in (64, 1 << 30):
        monkeypatch.setattr(configs, "GEMM2_WIDE_MIN_K", bound)
        outs.append(fused_experts_triton(x, w13, w2, w, ids, config=cfg, **kw))
    return outs, seen


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("m, e, h, top_k", [(300, 4, 200, 2), (1040, 16, 64, 2)])
def test_unquantized_forward_with_wide_gemm2(monkeypatch, dtype, m, e, h, top_k, poisoned_empty):
    """Odd H (under one 256-column tile); 16 experts add tail tiles of 16-64 rows."""
    x, w13, w2, w, ids, kw, ref = make_layer(m, e, h, 96, top_k, dtype, None, seed=m)
    (wide, plain), seen = _run_both(monkeypatch, x, w13, w2, w, ids, kw, MoEKernelConfig(128, 128, 32, 4, 4, 2))
    assert seen == [256, 128]
    assert_close_to_reference(wide, ref, dtype)
    torch.testing.assert_close(wide, plain, rtol=2e-2 if dtype == torch.bfloat16 else 2e-3, atol=1e-3)


@pytest.mark.parametrize("key, scheme, static", [("fp8_channel", QuantScheme.fp8_channel(), False),
                                                 ("int8_channel", QuantScheme.int8_channel(), False),
                                                 ("fp8_tensor", QuantScheme.fp8_tensor(), True),
                                                 pytest.param("fp8_tensor", QuantScheme.fp8_tensor(), False,
                                                              marks=gpu_only)])
def test_w8a8_forward_with_wide_gemm2(monkeypatch, key, scheme, static, poisoned_empty):
    """Per channel with dynamic per-token activations; per tensor with static activation scales, and dynamic on
    the GPU only (its amax runs for minutes in the interpreter). One branch sets GEMM 2's config for all."""
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    x, w13, w2, w, ids, kw, ref = make_layer(260, 4, 72, 64, 2, dtype, scheme, seed=7)
    if static:
        kw.update(a13_scale=x.abs().amax().float().reshape(1) / 448, a2_scale=torch.full((1,), 0.01, device=DEVICE))
    (wide, plain), seen = _run_both(monkeypatch, x, w13, w2, w, ids, kw, MoEKernelConfig(128, 128, 64, 4, 4, 2))
    assert seen == [256, 128]
    if not static:
        assert_close_to_reference(wide, ref, key)
    assert_close_to_reference(wide, plain.double(), key)


def test_weight_only_keeps_gemm1_config(monkeypatch, poisoned_empty):
    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    x, w13, w2, w, ids, kw, ref = make_layer(260, 4, 64, 64, 2, dtype, QuantScheme.int8_weight_only(), seed=3)
    (wide, _), seen = _run_both(monkeypatch, x, w13, w2, w, ids, kw, MoEKernelConfig(128, 128, 64, 4, 4, 2))
    assert seen == [128, 128]
    assert_close_to_reference(wide, ref, "int8_weight_only")
