"""moekit: Mixture-of-Experts layers, fast on GPUs (Triton) and correct anywhere (PyTorch).

Public API
----------
fused_moe(hidden_states, w13, w2, router_logits, top_k, ...) -> [M, H]
    route and run one MoE layer.
select_experts(router_logits, top_k, ...) -> (topk_weights float32 [M, k], topk_ids int32 [M, k])
fused_experts(hidden_states, w13, w2, topk_weights, topk_ids, ...) -> [M, H]
linear(x, weight, bias=None, *, quant=None, weight_scale=None) -> [..., N]
    dense GEMM by the fastest measured path for this device and shape (:mod:`moekit.linear`).
MoEInputError
    raised for bad input, naming the argument, the expected and the actual value.
QuantScheme, select_backend, NoBackendError, current_platform, fake_platform
    quantization schemes, backend choice with reasons, and the device moekit runs on.

Layouts: w13 [E, 2I, H] (gate rows, then up rows), w2 [E, H, I]. See :mod:`moekit.experts`.
"""
from moekit.backends import NoBackendError, select_backend
from moekit.errors import MoEInputError
from moekit.experts import fused_experts, fused_moe
from moekit.linear import linear
from moekit.platform import current_platform, fake_platform
from moekit.quant import QuantScheme
from moekit.routing import select_experts

__version__ = "0.1.0"

__all__ = [
    "fused_moe", "fused_experts", "linear", "select_experts", "MoEInputError", "QuantScheme",
    "select_backend", "NoBackendError", "current_platform", "fake_platform", "__version__",
]
