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
