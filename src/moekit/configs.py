"""Kernel meta-parameters for the fused-MoE Triton kernels, and the one function that picks them.

:func:`get_config` is the single lookup every caller uses. It returns a :class:`MoEKernelConfig` for a
problem (E experts, N = expert intermediate size per partition, K = hidden size, top_k, batch M, dtype).
Without a tuned file it returns :func:`default_config`, a heuristic by tokens per expert.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
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
    """The kernel config for one problem. The one place configs are looked up."""
    return default_config(M, E, N, K, top_k, dtype)
