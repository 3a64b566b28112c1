"""Quantization: :class:`QuantScheme` (``moekit.quant.scheme``), offline weight quantization
(:func:`quantize_weights` / :func:`dequantize_weights`, layouts in ``moekit.quant.weights``), activation
quantization kernels with PyTorch twins (``moekit.quant.ops``) and quantized-MoE argument checks
(``moekit.quant.moe``)."""
from moekit.quant.ops import (fp8_format, per_tensor_quant, per_token_group_quant, per_token_group_quant_fp8,
                              per_token_quant)
from moekit.quant.scheme import QuantScheme, as_scheme
from moekit.quant.weights import dequantize_weights, quantize_weights

__all__ = [
    "QuantScheme", "as_scheme", "fp8_format", "per_token_group_quant_fp8", "per_token_group_quant", "per_token_quant",
    "per_tensor_quant", "quantize_weights", "dequantize_weights",
]
