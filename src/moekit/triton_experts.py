"""The Triton backend of fused experts: align, GEMM 1 (+activation), GEMM 2 (+routing weight), top-k sum.

With routing, five launches (routing, alignment, GEMM 1, GEMM 2, top-k sum); four at decode, where
:func:`moekit.fused_moe` fuses routing and alignment into one launch and passes ``aligned`` in. At the
smallest decode batches (:func:`use_decode_gemv`) three: routing and the two GEMV kernels of
``kernels/moe_gemv.py`` (no alignment, no top-k sum). None waits on the host: the whole forward can be
captured in a CUDA graph. Kernel meta-parameters come from :func:`moekit.configs.get_config`.
"""
from __future__ import annotations

from typing import Optional

import torch

from moekit import envs
from moekit.align import AlignedSlots, moe_align_block_size
from moekit.configs import gemm2_config, get_config, tail_tile
from moekit.kernels import pdl
from moekit.kernels.moe_gemm import moe_gemm1, moe_gemm2
from moekit.kernels.moe_gemv import gemv_applies, gemv_supports, moe_gemv
from moekit.kernels.moe_sum import moe_sum


def use_decode_gemv(m: int, e_global: int, top_k: int, quant=None, static_act_scales: bool = False,
                    grouped: bool = False) -> bool:
    """Whether a forward of ``m`` tokens (top ``top_k`` of ``e_global`` experts) takes the decode GEMV kernels
    (:func:`moekit.kernels.moe_gemv.gemv_applies`) instead of the aligned grouped GEMMs: unquantized, fp8
    weights, int8 / int4 weight-only or mxfp4 (:func:`~moekit.kernels.moe_gemv.gemv_supports`; fp8 runs
    weight-only, so not with static activation scales, which ask for quantized activations). ``grouped``: the ids
    come from grouped top-k routing (the crossover moves down). ``MOEKIT_DECODE_GEMV=0`` turns the path off."""
    if quant is not None and quant.is_quantized and (static_act_scales or not gemv_supports(quant)):
        return False
    return gemv_applies(m, e_global, top_k, quant, grouped) and envs.get("MOEKIT_DECODE_GEMV")


def fused_experts_triton(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    expert_map: Optional[torch.Tensor] = None,
    activation: str = "silu",
    config=None,
    quant=None,
    aligned: Optional[AlignedSlots] = None,
    w13_bias: Optional[torch.Tensor] = None,
    w2_bias: Optional[torch.Tensor] = None,
    grouped_routing: bool = False,
    **qargs,
) -> torch.Tensor:
    """Same contract as :func:`moekit.fused_experts`; inputs are assumed validated. ``config`` overrides
    the looked-up :class:`~moekit.configs.MoEKernelConfig` (the tuner uses it; it also keeps the grouped
    GEMMs at decode sizes, where the GEMV kernels would otherwise serve). ``quant`` (a QuantScheme;
    None or an unquantized one runs the plain kernels) with ``qargs`` (w13_scale, w2_scale, w13_zero, w2_zero,
    a13_scale, a2_scale; all None unquantized): see
    :func:`moekit.quant.triton_moe.fused_experts_triton_quant`. ``aligned``: the slots already aligned
    (the fused route-and-align decode path), used when its block size matches the config. ``w13_bias`` /
    ``w2_bias``: optional expert biases [E, 2I] / [E, H], contiguous last dimension. ``grouped_routing``: the ids
    come from grouped top-k (fused_moe knows; it moves the decode GEMV crossover, :func:`use_decode_gemv`)."""
    m, h = x.shape
    e = w13.shape[0]
    top_k = topk_ids.shape[1]
    if m == 0:
        return x.new_empty((0, h))
    topk_weights = topk_weights.float().contiguous()  # no-ops when already float32 and contiguous
    topk_ids = topk_ids.contiguous()
    scheme = quant if quant is not None and quant.is_quantized else None
    e_global = expert_map.numel() if expert_map is not None else e
    static_act_scales = qargs.get("a13_scale") is not None or qargs.get("a2_scale") is not None
    if config is None and aligned is None and use_decode_gemv(m, e_global, top_k, scheme, static_act_scales,
                                                              grouped_routing):
        from moekit.quant.triton_moe import mxfp4_gemv_ptx_decode

        return moe_gemv(x, w13, w2, topk_weights, topk_ids, expert_map, activation, scheme=scheme,
                        w13_scale=qargs.get("w13_scale"), w2_scale=qargs.get("w2_scale"), w13_bias=w13_bias,
                        w2_bias=w2_bias, mx_ptx=mxfp4_gemv_ptx_decode(x, scheme), w13_zero=qargs.get("w13_zero"),
                        w2_zero=qargs.get("w2_zero"))
    slots_per_expert = m * top_k / e_global  # routed rows per expert on average (GEMM 2's config)
    with pdl.chaining(pdl.chain_applies(m * top_k, e_global), x.device):
        if scheme is not None:
            from moekit.quant.triton_moe import fused_experts_triton_quant

            return fused_experts_triton_quant(x, w13, w2, topk_weights, topk_ids, expert_map=expert_map,
                                              activation=activation, config=config, scheme=scheme, aligned=aligned,
                                              w13_bias=w13_bias, w2_bias=w2_bias, slots_per_expert=slots_per_expert,
                                              **qargs)
        return _grouped(x, w13, w2, topk_weights, topk_ids, expert_map, activation, config, aligned, w13_bias,
                        w2_bias, slots_per_expert)


def _grouped(x, w13, w2, topk_weights, topk_ids, expert_map, activation, config, aligned, w13_bias, w2_bias,
             slots_per_expert):
    """The unquantized grouped forward: alignment, GEMM 1, GEMM 2, top-k sum."""
    m, h = x.shape
    e, i2, _ = w13.shape
    i = i2 // 2
    top_k = topk_ids.shape[1]
    if config is None:
        config = get_config(e, i, h, top_k, m, x.dtype)
    if aligned is None or aligned.block_m != config.BLOCK_SIZE_M:
        aligned = moe_align_block_size(topk_ids, e, config.BLOCK_SIZE_M, expert_map, use_triton=True,
                                       min_tile=tail_tile(config, e))
    args = (aligned.sorted_ids, aligned.expert_ids, aligned.num_padded)
    tiles = dict(tile_rows=aligned.tile_rows, min_tile=aligned.min_tile)
    inter = torch.empty((aligned.sorted_ids.numel(), i), dtype=x.dtype, device=x.device)
    moe_gemm1(x, w13, inter, *args, top_k, config, activation, bias=w13_bias, **tiles)
    out = torch.empty((m, h), dtype=x.dtype, device=x.device)
    # top_k 1 without a map: every slot is a token and every token is written, so GEMM 2 writes the output
    direct = top_k == 1 and expert_map is None
    y = out if direct else torch.empty((m * top_k, h), dtype=x.dtype, device=x.device)
    moe_gemm2(inter, w2, y, topk_weights, *args, gemm2_config(config, i, slots_per_expert), bias=w2_bias, **tiles)
    return out if direct else moe_sum(y, out, topk_ids, e, expert_map)
