"""Gated activations between the two expert GEMMs: ``act(gate) * up`` on a ``[rows, 2I]`` tensor whose
first I columns are the gate and last I columns the up projection (the w13 layout).

* ``"silu"``: SiLU(gate) * up (Mixtral, Qwen3-MoE, DeepSeek, OLMoE).
* ``"gelu"``: GELU(gate) * up with the exact (erf) GELU.
* ``"swigluoai"``: gpt-oss's clamped SwiGLU: ``g = min(gate, 7)``, ``u = clamp(up, -7, 7)``,
  ``(u + 1) * g * sigmoid(1.702 * g)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("silu", "gelu", "swigluoai")  # all run on both backends; Triton's kernel codes follow this order
SWIGLUOAI_ALPHA = 1.702
SWIGLUOAI_LIMIT = 7.0


def apply_activation(gate_up: torch.Tensor, activation: str) -> torch.Tensor:
    """``[rows, 2I] -> [rows, I]``, computed in float32 (float64 stays float64), returned in the input dtype."""
    i = gate_up.shape[-1] // 2
    x = gate_up if gate_up.dtype == torch.float64 else gate_up.float()
    gate, up = x[..., :i], x[..., i:]
    if activation == "swigluoai":
        gate = gate.clamp(max=SWIGLUOAI_LIMIT)
        up = up.clamp(min=-SWIGLUOAI_LIMIT, max=SWIGLUOAI_LIMIT)
        return ((up + 1) * (gate * torch.sigmoid(SWIGLUOAI_ALPHA * gate))).to(gate_up.dtype)
    act = F.silu(gate) if activation == "silu" else F.gelu(gate)
    return (act * up).to(gate_up.dtype)
