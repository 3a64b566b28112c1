"""Quantized fused-MoE arguments: validation (clear errors naming the argument) and the PyTorch reference path.

Arguments of ``fused_moe`` / ``fused_experts`` for a quantized ``quant=scheme``:
  w13, w2        qweights from :func:`moekit.quant.quantize_weights` (layouts there); logical shapes
                 w13 [E, 2I, H], w2 [E, H, I] (int4 / mxfp4 pack two codes per byte along the last dim)
  w13_scale      scale of w13, shape :func:`scale_shape` (e.g. fp8 block: float32 [E, ceil(2I/128), ceil(H/128)])
  w2_scale       scale of w2 (fp8 block: float32 [E, ceil(H/128), ceil(I/128)])
  w13_zero/w2_zero  zero points (weight-only with zero_point=True), uint8, same shape as the scales
  a13_scale/a2_scale  optional static per-tensor activation scales (float32 [1]) for fp8_tensor / int8 tensor;
                 None: activations are quantized dynamically (per tensor, per token or per token-group
                 according to the scheme)
H and I need not be multiples of 128: partial blocks / groups are handled (their scales cover the tail).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from moekit.errors import check_arg
from moekit.quant.scheme import MX_BLOCK, QuantScheme


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def packed(scheme: QuantScheme) -> bool:
    """Two codes per byte along K (int4, mxfp4)."""
    return scheme.weight_dtype in ("int4", "mxfp4")


def qweight_dtypes(scheme: QuantScheme, fp8: torch.dtype):
    if scheme.weight_dtype == "fp8":
        return (fp8,)
    if scheme.weight_dtype == "int8":
        return (torch.uint8,) if scheme.zero_point else (torch.int8,)
    return (torch.uint8,)


def scale_shape(scheme: QuantScheme, e: int, n: int, k: int) -> Tuple[int, ...]:
    """Shape of the scale of a weight with logical shape [E, N, K]."""
    g = scheme.granularity
    if g == "block":
        bn, bk = scheme.block_shape
        return (e, _cdiv(n, bn), _cdiv(k, bk))
    if g == "tensor":
        return (e,)
    if g == "channel":
        return (e, n)
    return (e, n, _cdiv(k, scheme.group_size))


def scale_dtypes(scheme: QuantScheme):
    return (torch.uint8,) if scheme.weight_dtype == "mxfp4" else (torch.float32,)


def check_quant_args(scheme: QuantScheme, x, w13, w2, w13_scale, w2_scale, w13_zero, w2_zero, a13_scale,
                     a2_scale) -> None:
    """Shapes, dtypes and devices of quantized weights and their scales (no host sync)."""
    from moekit.quant.ops import fp8_format

    m, h = x.shape
    e, i2 = w13.shape[0], w13.shape[1]
    check_arg(i2 % 2 == 0 and i2 > 0, "w13", "an even, non-zero number of rows 2I (gate rows then up rows)",
              f"{i2} rows")
    i = i2 // 2
    div = 2 if packed(scheme) else 1
    if packed(scheme):
        check_arg(h % 2 == 0 and i % 2 == 0, "hidden_states", f"even H and I for {scheme.name} (two codes per byte)",
                  f"H={h}, I={i}")
    if scheme.weight_dtype == "mxfp4":
        check_arg(h % MX_BLOCK == 0 and i % MX_BLOCK == 0, "hidden_states",
                  f"H and I multiples of {MX_BLOCK} for mxfp4", f"H={h}, I={i}")
    check_arg(tuple(w13.shape) == (e, i2, h // div), "w13", f"shape [E, 2I, H/{div}] = {(e, i2, h // div)} for "
              f"{scheme.name}", f"shape {tuple(w13.shape)}")
    check_arg(tuple(w2.shape) == (e, h, i // div), "w2", f"shape [E, H, I/{div}] = {(e, h, i // div)} for "
              f"{scheme.name}", f"shape {tuple(w2.shape)}")
    fp8 = fp8_format(x.device)[0]
    wd = qweight_dtypes(scheme, fp8)
    for name, t in (("w13", w13), ("w2", w2)):
        check_arg(t.dtype in wd, name, f"dtype {' or '.join(map(str, wd))} for {scheme.name}", t.dtype)
        check_arg(t.stride(-1) == 1, name, "a contiguous last dimension", f"strides {t.stride()}")
        check_arg(t.device == x.device, name, f"device {x.device} (that of hidden_states)", t.device)
    sd = scale_dtypes(scheme)
    for name, t, (n, k) in (("w13_scale", w13_scale, (i2, h)), ("w2_scale", w2_scale, (h, i))):
        want = scale_shape(scheme, e, n, k)
        check_arg(isinstance(t, torch.Tensor), name, f"a tensor of shape {want} for {scheme.name}",
                  type(t).__name__)
        check_arg(tuple(t.shape) == want, name, f"shape {want} for {scheme.name}", f"shape {tuple(t.shape)}")
        check_arg(t.dtype in sd, name, f"dtype {sd[0]}", t.dtype)
        check_arg(t.device == x.device, name, f"device {x.device}", t.device)
    for name, t, s in (("w13_zero", w13_zero, w13_scale), ("w2_zero", w2_zero, w2_scale)):
        if scheme.zero_point:
            check_arg(isinstance(t, torch.Tensor) and tuple(t.shape) == tuple(s.shape) and t.dtype == torch.uint8,
                      name, f"a uint8 tensor of shape {tuple(s.shape)} (zero_point=True)",
                      getattr(t, "shape", type(t).__name__))
            check_arg(t.device == x.device, name, f"device {x.device}", t.device)
        else:
            check_arg(t is None, name, f"None for {scheme.name} (no zero points)", type(t).__name__)
    for name, t in (("a13_scale", a13_scale), ("a2_scale", a2_scale)):
        if t is None:
            continue
        check_arg(scheme.granularity == "tensor" and not scheme.weight_only, name,
                  "None (static activation scales are for per-tensor w8a8 schemes only)", "a tensor")
        check_arg(isinstance(t, torch.Tensor) and t.numel() == 1 and t.dtype == torch.float32, name,
                  "a float32 tensor with 1 element", getattr(t, "shape", type(t).__name__))
        check_arg(t.device == x.device, name, f"device {x.device}", t.device)


def act_dtype(scheme: QuantScheme, device) -> Optional[torch.dtype]:
    from moekit.quant.ops import fp8_format

    if scheme.act_dtype is None:
        return None
    return torch.int8 if scheme.act_dtype == "int8" else fp8_format(device)[0]


def fake_quant_acts(scheme: QuantScheme, x: torch.Tensor, static_scale=None) -> torch.Tensor:
    """Quantize-dequantize activations x [R, K] as the kernels do (PyTorch twins); returns x's dtype."""
    from moekit.quant.ops import per_tensor_quant_torch, per_token_group_quant_torch, per_token_quant_torch

    dt = act_dtype(scheme, x.device)
    if dt is None or x.shape[0] == 0:
        return x
    if scheme.granularity == "block":
        bk = scheme.block_shape[1]
        q, s = per_token_group_quant_torch(x, bk, dt)
        full = s.repeat_interleave(bk, 1)[:, :x.shape[1]]
    elif scheme.granularity == "channel":
        q, full = per_token_quant_torch(x, dt)
    else:
        q, full = per_tensor_quant_torch(x, dt, static_scale)
    return (q.float() * full).to(x.dtype)


def torch_quant_operands(scheme: QuantScheme, x, w13, w2, w13_scale, w2_scale, w13_zero, w2_zero, a13_scale,
                         a2_scale) -> Tuple[torch.Tensor, torch.Tensor, Callable, Callable]:
    """For the PyTorch backend: dequantized w13, w2 in x's dtype and the two activation fake-quant steps."""
    from moekit.quant.weights import dequantize_weights

    w13d = dequantize_weights(w13, w13_scale, scheme, w13_zero, dtype=x.dtype)
    w2d = dequantize_weights(w2, w2_scale, scheme, w2_zero, dtype=x.dtype)
    return (w13d, w2d, lambda t: fake_quant_acts(scheme, t, a13_scale),
            lambda t: fake_quant_acts(scheme, t, a2_scale))
