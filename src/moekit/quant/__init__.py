"""Quantization: the :class:`QuantScheme` description (``moekit.quant.scheme``); kernels live in sibling modules."""
from moekit.quant.scheme import QuantScheme, as_scheme

__all__ = ["QuantScheme", "as_scheme"]
