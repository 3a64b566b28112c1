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
from moekit.quant.scheme import MMA_CHUNK, MX_BLOCK, QuantScheme


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


def _described(t) -> str:
    """A tensor as error messages name it: dtype and shape (or the type of a non-tensor)."""
    if isinstance(t, torch.Tensor):
        return f"{str(t.dtype).replace('torch.', '')} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


def check_qweight(scheme: QuantScheme, q, scale, zero, n: int, k: int, names=("q", "scale", "zero"),
                  q_dtypes=None) -> None:
    """One quantized weight of logical shape [E, N, K] for ``scheme`` (E = ``q.shape[0]``): ``q`` in one of
    ``q_dtypes`` (default: :func:`qweight_dtypes` with either fp8 format) with a contiguous last dimension,
    ``scale`` of :func:`scale_shape` and :func:`scale_dtypes`, and ``zero`` a uint8 tensor of the scale's
    shape exactly when the scheme has zero points. ``names``: the arguments' names in error messages."""
    qn, sn, zn = names
    if q_dtypes is None:
        q_dtypes = sum((qweight_dtypes(scheme, f) for f in (torch.float8_e4m3fn, torch.float8_e4m3fnuz)), ())
    check_arg(isinstance(q, torch.Tensor) and q.dim() == 3, qn, "a 3-D tensor [E, N, K] (packed: [E, N, K/2])",
              _described(q))
    check_arg(q.dtype in q_dtypes, qn, f"dtype {' or '.join(map(str, q_dtypes))} for {scheme.name}", q.dtype)
    check_arg(q.stride(-1) == 1, qn, "a contiguous last dimension", f"strides {q.stride()}")
    want = scale_shape(scheme, q.shape[0], n, k)
    sd = scale_dtypes(scheme)
    check_arg(isinstance(scale, torch.Tensor) and tuple(scale.shape) == want and scale.dtype in sd, sn,
              f"a {str(sd[0]).replace('torch.', '')} tensor of shape {want} for {scheme.name}", _described(scale))
    if scheme.zero_point:
        check_arg(isinstance(zero, torch.Tensor) and tuple(zero.shape) == want and zero.dtype == torch.uint8, zn,
                  f"a uint8 tensor of shape {want} (zero_point=True)", _described(zero))
    else:
        check_arg(zero is None, zn, f"None for {scheme.name} (no zero points)", _described(zero))


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
        mult = MMA_CHUNK if scheme.layout == "mma" else MX_BLOCK
        check_arg(h % mult == 0 and i % mult == 0, "hidden_states",
                  f"H and I multiples of {mult} for {scheme.name}", f"H={h}, I={i}")
    check_arg(tuple(w13.shape) == (e, i2, h // div), "w13", f"shape [E, 2I, H/{div}] = {(e, i2, h // div)} for "
              f"{scheme.name}", f"shape {tuple(w13.shape)}")
    check_arg(tuple(w2.shape) == (e, h, i // div), "w2", f"shape [E, H, I/{div}] = {(e, h, i // div)} for "
              f"{scheme.name}", f"shape {tuple(w2.shape)}")
    fp8 = fp8_format(x.device)[0]
    for names, t, sc, z, (n, k) in ((("w13", "w13_scale", "w13_zero"), w13, w13_scale, w13_zero, (i2, h)),
                                    (("w2", "w2_scale", "w2_zero"), w2, w2_scale, w2_zero, (h, i))):
        check_qweight(scheme, t, sc, z, n, k, names, qweight_dtypes(scheme, fp8))
        for name, v in zip(names, (t, sc, z)):
            if v is not None:
                check_arg(v.device == x.device, name, f"device {x.device} (that of hidden_states)", v.device)
    for name, t in (("a13_scale", a13_scale), ("a2_scale", a2_scale)):
        if t is None:
            continue
        check_arg(scheme.granularity == "tensor" and not scheme.weight_only, name,
                  "None (static activation scales are for per-tensor w8a8 schemes only)", "a tensor")
        check_arg(isinstance(t, torch.Tensor) and t.numel() == 1 and t.dtype == torch.float32, name,
                  "a float32 tensor with 1 element", _described(t))
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
