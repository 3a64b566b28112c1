"""Kernel meta-parameters for the fused-MoE Triton kernels, and the one function that picks them.

:func:`get_config` is the single lookup every caller uses. It returns a :class:`MoEKernelConfig` for a
problem (E experts, N = expert intermediate size per partition, K = hidden size, top_k, batch M, dtype).
Without a tuned file it returns :func:`default_config`, a heuristic by tokens per expert.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Optional, Sequence

import torch


@dataclass(frozen=True)
class MoEKernelConfig:
    """Block sizes and launch parameters of the two expert GEMMs (key names as in vLLM's JSON files).

    ``BLOCK_SIZE_M`` is also the alignment block of the token sort. In GEMM 1 each program computes
    ``BLOCK_SIZE_N`` gate columns *and* the matching ``BLOCK_SIZE_N`` up columns.
    """

    BLOCK_SIZE_M: int = 64
    BLOCK_SIZE_N: int = 64
    BLOCK_SIZE_K: int = 64
    GROUP_SIZE_M: int = 8
    num_warps: int = 4
    num_stages: int = 3

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MoEKernelConfig":
        """Build from a JSON entry; unknown non-numeric keys (e.g. ``"triton_version"``) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def default_config(M: int, E: int, N: int, K: int, top_k: int, dtype: Optional[torch.dtype] = None) -> MoEKernelConfig:
    """Heuristic config by expected tokens per expert, ``M * top_k / E``.

    Few tokens per expert (decode): small BLOCK_M, wide K steps, deep pipeline, so the GEMMs stream the
    weights at memory speed. Many tokens per expert (prefill): 64/128-row tiles for tensor-core throughput.
    """
    per_expert = M * top_k / max(E, 1)
    if per_expert <= 8:
        return MoEKernelConfig(16, 64, 128, 1, 4, 4)
    if per_expert <= 32:
        return MoEKernelConfig(32, 64, 128, 1, 4, 4)
    if per_expert <= 96:
        return MoEKernelConfig(64, 64, 64, 8, 4, 4)
    return MoEKernelConfig(128, 128, 64, 8, 8, 3)


def shared_memory_bytes(config: MoEKernelConfig, elem_bytes: int) -> int:
    """Shared memory the pipelined GEMM 1 needs (the larger of the two GEMMs: one A tile and two weight
    tiles, gate and up, per stage)."""
    per_stage = (config.BLOCK_SIZE_M * config.BLOCK_SIZE_K + 2 * config.BLOCK_SIZE_N * config.BLOCK_SIZE_K)
    return per_stage * elem_bytes * max(config.num_stages, 1)


def fit_shared_memory(config: MoEKernelConfig, elem_bytes: int, limit: Optional[int]) -> MoEKernelConfig:
    """Lower num_stages (down to 2), then BLOCK_SIZE_K (down to 16), until the config fits ``limit`` bytes."""
    if limit is None:
        return config
    c = config
    while shared_memory_bytes(c, elem_bytes) > limit:
        if c.num_stages > 2:
            c = replace(c, num_stages=c.num_stages - 1)
        elif c.BLOCK_SIZE_K > 16:
            c = replace(c, BLOCK_SIZE_K=c.BLOCK_SIZE_K // 2)
        else:
            break
    return c


def get_config(
    E: int,
    N: int,
    K: int,
    top_k: int,
    M: int,
    dtype: Optional[torch.dtype] = None,
    block_shape: Optional[Sequence[int]] = None,
    device_name: Optional[str] = None,
) -> MoEKernelConfig:
    """The kernel config for one problem. The one place configs are looked up.

    The result always fits the current device's shared memory (see :func:`fit_shared_memory`)."""
    from moekit.platform import current_platform, shared_memory_per_block

    config = default_config(M, E, N, K, top_k, dtype)
    elem_bytes = torch.empty((), dtype=dtype).element_size() if dtype is not None else 2
    return fit_shared_memory(config, elem_bytes, shared_memory_per_block(current_platform()))
