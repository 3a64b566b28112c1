"""Triton kernel: the top-k reduction out[m] = sum_j y[m*k + j] over the slots whose expert is local.

Slots whose expert is mapped to -1 (expert parallelism), or whose id is outside [0, E) or the expert map, were
never written by GEMM 2; they are skipped by mask, not read. Accumulates in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from moekit.kernels import pdl
from moekit.kernels.align import local_expert


@triton.jit
def _moe_sum_kernel(y_ptr, out_ptr, ids_ptr, map_ptr, H, E, n_map, stride_ym, stride_om,
                    TOP_K: tl.constexpr, HAS_MAP: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr = False):
    pdl.chain(PDL)
    m = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = offs < H
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for j in tl.static_range(TOP_K):  # unrolled: the k row loads are in flight together
        slot = m * TOP_K + j
        _, ok = local_expert(ids_ptr, map_ptr, slot, slot >= 0, E, n_map, HAS_MAP)
        acc += tl.load(y_ptr + slot * stride_ym + offs, mask=h_ok & ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + offs, acc.to(out_ptr.dtype.element_ty), mask=h_ok)


def moe_sum(y: torch.Tensor, out: torch.Tensor, topk_ids: torch.Tensor, num_experts: int,
            expert_map: torch.Tensor | None = None) -> torch.Tensor:
    """out [M, H] = sum over k of y [M*k, H] rows whose (mapped) expert is local."""
    m, h = out.shape
    top_k = topk_ids.shape[1]
    # decode (few rows): narrow blocks so enough programs stream y; prefill: wide blocks
    block_h = min(1024 if m >= 64 else 256, triton.next_power_of_2(h))
    has_map = expert_map is not None
    _moe_sum_kernel[(m, triton.cdiv(h, block_h))](
        y, out, topk_ids, expert_map if has_map else topk_ids, h, num_experts, expert_map.numel() if has_map else 0,
        y.stride(0), out.stride(0), TOP_K=top_k, HAS_MAP=has_map, BLOCK_H=block_h, num_warps=4,
        **pdl.chained_launch(y.device),
    )
    return out
