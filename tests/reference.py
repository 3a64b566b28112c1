"""Independent float64 references for the tests: plain per-token loops, no sorting, no grouped GEMMs."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def route_reference(logits, top_k, renormalize=True, scoring="softmax", num_expert_group=None, topk_group=None,
                    correction_bias=None):
    """Per-token python loop; returns float64 weights and int64 ids (ties to the lower id)."""
    logits = logits.double().cpu()
    m, e = logits.shape
    ws, ids = [], []
    for row in logits:
        p = torch.softmax(row, 0) if scoring == "softmax" else torch.sigmoid(row)
        choice = p + (correction_bias.double().cpu() if correction_bias is not None else 0)
        allowed = list(range(e))
        if num_expert_group is not None:
            g = e // num_expert_group
            gscores = []
            for gi in range(num_expert_group):
                vals = sorted(choice[gi * g:(gi + 1) * g].tolist(), reverse=True)
                gscores.append((-(vals[0] + vals[1]) if correction_bias is not None else -vals[0], gi))
            keep = [gi for _, gi in sorted(gscores)[:topk_group]]
            allowed = [x for gi in keep for x in range(gi * g, (gi + 1) * g)]
        chosen = sorted(allowed, key=lambda x: (-float(choice[x]), x))[:top_k]
        w = p[chosen]
        if renormalize:
            w = w / w.sum()
        ws.append(w)
        ids.append(torch.tensor(chosen))
    return torch.stack(ws), torch.stack(ids)


def _swigluoai(gate, up, alpha=1.702, limit=7.0):
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * gate * torch.sigmoid(alpha * gate)


def moe_reference(x, w13, w2, topk_weights, topk_ids, expert_map=None, activation="silu", w13_bias=None,
                  w2_bias=None):
    """float64 MoE output [M, H], one token and one choice at a time (biases by local expert)."""
    x, w13, w2 = x.double().cpu(), w13.double().cpu(), w2.double().cpu()
    topk_weights, topk_ids = topk_weights.double().cpu(), topk_ids.long().cpu()
    b13 = None if w13_bias is None else w13_bias.double().cpu()
    b2 = None if w2_bias is None else w2_bias.double().cpu()
    i = w13.shape[1] // 2
    out = torch.zeros(x.shape, dtype=torch.float64)
    for m in range(x.shape[0]):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[m, j])
            if expert_map is not None:
                e = int(expert_map[e])
                if e < 0:
                    continue
            gu = w13[e] @ x[m]
            if b13 is not None:
                gu = gu + b13[e]
            if activation == "swigluoai":
                h = _swigluoai(gu[:i], gu[i:])
            else:
                h = (F.silu if activation == "silu" else F.gelu)(gu[:i]) * gu[i:]
            y = w2[e] @ h
            if b2 is not None:
                y = y + b2[e]
            out[m] += topk_weights[m, j] * y
    return out


def fp8_linear_weight(n, k, scheme, g, fp8_dtype):
    """A random [n, k] fp8 linear weight for ``scheme`` (block, channel or tensor granularity), its float32
    scales as ``moekit.linear`` takes them (block ``[cdiv(n, bn), cdiv(k, bk)]``, channel ``[n]``, tensor
    ``[1]``) and the float64 dequantized weight; CPU tensors, drawn from generator ``g``."""
    fmax = float(torch.finfo(fp8_dtype).max)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    if scheme.granularity == "block":
        bn, bk = scheme.block_shape
        scale = torch.rand(-(-n // bn), -(-k // bk), generator=g) * 0.01 + 1e-3
        full = scale.repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
    elif scheme.granularity == "channel":
        scale = torch.rand(n, generator=g) * 0.01 + 1e-3
        full = scale[:, None]
    else:
        scale = torch.tensor([0.004])
        full = scale.reshape(1, 1)
    q = (w / full).clamp(-fmax, fmax).to(fp8_dtype)
    return q, scale, q.double() * full.double()
