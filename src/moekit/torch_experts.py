"""The PyTorch backend of fused experts: runs on any device and dtype; the reference for every test.

Slots (token, choice) are sorted by expert and the two expert GEMMs run as ``torch._grouped_mm`` over the
sorted rows where the device and dtype have it (CPU: bf16/fp16/fp32; CUDA: bf16 on compute capability >= 9.0)
- no Python loop over experts and no host synchronization, so it can be captured in a CUDA graph. Elsewhere
(float64 references, older GPUs, unaligned sizes) it loops over the experts that received tokens.
Outputs are accumulated over the k choices in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from moekit.activations import apply_activation
from moekit.align import local_expert_ids
from moekit.platform import has_feature, platform_of


def grouped_mm_supported(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` can run both expert GEMMs for these operands."""
    if not hasattr(torch, "_grouped_mm") or x.dtype != w13.dtype or x.dtype != w2.dtype:
        return False
    if x.is_cuda:
        if x.dtype != torch.bfloat16 or not has_feature("grouped_mm_bf16", platform_of(x.device))[0]:
            return False
    elif x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    # row strides must be 16-byte aligned
    h, i = w13.shape[2], w2.shape[2]
    return all((n * x.element_size()) % 16 == 0 for n in (h, i, 2 * i))


def fused_experts_torch(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    expert_map: Optional[torch.Tensor] = None,
    activation: str = "silu",
    w13_bias: Optional[torch.Tensor] = None,
    w2_bias: Optional[torch.Tensor] = None,
    act_quant=None,
    inter_quant=None,
) -> torch.Tensor:
    """Same contract as :func:`moekit.fused_experts`; inputs are assumed validated. The optional biases
    (``w13_bias [E, 2I]``, ``w2_bias [E, H]``, by local expert) are added to each expert's GEMM outputs in
    the accumulation dtype, before the activation and before the routing weight respectively. Quantized
    layers pass dequantized weights plus ``act_quant`` / ``inter_quant``, quantize-dequantize steps (the
    kernels' PyTorch twins, :func:`moekit.quant.moe.torch_quant_operands`) applied to x and the intermediate."""
    x = hidden_states
    m, h = x.shape
    e = w13.shape[0]
    k = topk_ids.shape[1]
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if m == 0:
        return x.new_empty((0, h))
    ids = local_expert_ids(topk_ids, expert_map, e)  # dropped slots get e: they sort last, a bin no GEMM reads
    valid = ids < e
    order = torch.argsort(ids, stable=True)
    # scatter_add, not bincount: bincount reads max(ids) back to the host, which breaks graph capture
    counts = torch.zeros(e + 1, dtype=torch.int64, device=x.device).scatter_add_(0, ids, torch.ones_like(ids))[:e]
    tokens = order // k
    rows = (x if act_quant is None else act_quant(x))[tokens]
    weights = topk_weights.reshape(-1)[order].to(acc_dtype)
    if w13_bias is not None or w2_bias is not None:
        row_expert = ids[order].clamp(max=e - 1)  # dropped rows borrow a bias; they are masked below
    b13 = None if w13_bias is None else w13_bias.to(acc_dtype)[row_expert]
    b2 = None if w2_bias is None else w2_bias.to(acc_dtype)[row_expert]

    def act_of(gate_up, lo, hi):
        if b13 is None:
            return apply_activation(gate_up, activation)
        return apply_activation(gate_up.to(acc_dtype) + b13[lo:hi], activation).to(x.dtype)
    if grouped_mm_supported(x, w13, w2):
        offs = torch.cumsum(counts, 0).to(torch.int32)
        gate_up = torch._grouped_mm(rows, w13.transpose(1, 2), offs=offs)
        act = act_of(gate_up, 0, rows.shape[0])
        if inter_quant is not None:  # rows past the last group are unspecified: zero them before any amax
            act = inter_quant(torch.where(valid[order].unsqueeze(1), act, 0.0))
        y = torch._grouped_mm(act, w2.transpose(1, 2), offs=offs)
    else:
        y = rows.new_zeros((rows.shape[0], h))
        if inter_quant is not None:  # the intermediate is quantized as a whole (per-tensor scales need all rows)
            inter = rows.new_zeros((rows.shape[0], w2.shape[2]))
            start = 0
            for ex, c in enumerate(counts.tolist()):
                if c:
                    inter[start:start + c] = act_of(F.linear(rows[start:start + c], w13[ex]), start, start + c)
                start += c
            n_valid = start
            inter[:n_valid] = inter_quant(inter[:n_valid])
        start = 0
        for ex, c in enumerate(counts.tolist()):
            if c:
                seg = rows[start:start + c]
                if inter_quant is not None:
                    act = inter[start:start + c]
                else:
                    act = act_of(F.linear(seg, w13[ex]), start, start + c)
                y[start:start + c] = F.linear(act, w2[ex])
            start += c
    # rows of dropped slots (beyond the last group) are unspecified: zero them by mask, never by arithmetic
    y = y.to(acc_dtype) if b2 is None else y.to(acc_dtype) + b2
    y = torch.where(valid[order].unsqueeze(1), y * weights.unsqueeze(1), 0.0)
    out = torch.zeros((m, h), dtype=acc_dtype, device=x.device).index_add_(0, tokens, y)
    return out.to(x.dtype)
