"""Activation quantization (Triton kernels with bit-exact PyTorch twins) and the fp8 format helper.

* :func:`fp8_format` - the fp8 dtype and its max for a device: e4m3fn (448) on NVIDIA, gfx950, gfx12 and CPU;
  e4m3fnuz (240) on gfx940/941/942. Every fp8 tensor moekit makes comes from here.
* :func:`per_token_group_quant_fp8` (x [M, K] -> q [M, K], scale float32 [M, ceil(K/G)]),
  :func:`per_token_quant` (scale float32 [M, 1]), :func:`per_tensor_quant` (scale float32 [1], dynamic or
  static). Each takes ``use_triton`` (None: Triton on GPUs and under ``TRITON_INTERPRET=1``, PyTorch
  otherwise); the ``*_torch`` twins are the reference, bit-exact with the kernels (see
  :mod:`moekit.kernels.quant` for the numerics: ``scale = max(amax * (1/qmax), 1e-12)``, ``q = rne(x / scale)``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from moekit.errors import check_arg
from moekit.platform import fp8_dtype, fp8_max, interpreter_runs, platform_of

#: Smallest scale handed out: an all-zero (or all-subnormal) group quantizes to zeros with this scale (the
#: kernels of :mod:`moekit.kernels.quant` and their PyTorch twins here).
MIN_SCALE = 1e-12
INT8_MAX = 127.0


def fp8_format(device=None) -> Tuple[torch.dtype, float]:
    """(dtype, max) of the fp8 format used on ``device`` (None: the current platform)."""
    p = None if device is None else platform_of(torch.device(device))
    return fp8_dtype(p), fp8_max(p)


def _emin(dtype: torch.dtype) -> int:
    return -7 if dtype == torch.float8_e4m3fnuz else -6


def _qparams(dtype: torch.dtype) -> Tuple[int, float, int]:
    """(qkind, qmax, emin) for a quantized dtype."""
    if dtype == torch.int8:
        return 1, INT8_MAX, 0
    check_arg(dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz), "dtype",
              "torch.float8_e4m3fn, torch.float8_e4m3fnuz or torch.int8", dtype)
    return 0, float(torch.finfo(dtype).max), _emin(dtype)


def _use_triton(x: torch.Tensor, use_triton: Optional[bool], dtype: Optional[torch.dtype] = None) -> bool:
    """The Triton kernel on GPUs and, under TRITON_INTERPRET=1, on CPU tensors the interpreter handles (not
    bf16 inputs, not e4m3fnuz outputs: it cannot store that format); the PyTorch twin otherwise."""
    cpu_ok = x.device.type == "cpu" and interpreter_runs(x.dtype)[0] and dtype != torch.float8_e4m3fnuz
    if use_triton is not None:
        check_arg(not (use_triton and x.device.type == "cpu" and dtype == torch.float8_e4m3fnuz), "use_triton",
                  "False (or None) for e4m3fnuz on CPU tensors: Triton's interpreter cannot store that format",
                  use_triton)
        return use_triton
    return x.is_cuda or cpu_ok


# ------------------------------------------------------------------------------------------ PyTorch twins
def _rne(v: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(12582912.0, dtype=torch.float32, device=v.device)
    return (v + m) - m


def _round_fp8(v: torch.Tensor, qmax: float, emin: int) -> torch.Tensor:
    v = v.clamp(-qmax, qmax)
    e = ((v.view(torch.int32) >> 23) & 0xFF) - 127
    e = e.clamp_min(emin)
    ulp = ((e - 3 + 127) << 23).to(torch.int32).view(torch.float32)
    return torch.copysign(_rne(v / ulp) * ulp, v)  # a negative value rounding to zero gives -0, as a cast does


def quantize_with_scale_torch(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q = rne(clamp(x / scale)) in ``dtype``; ``scale`` float32, broadcastable to x (the kernels' twin)."""
    qkind, qmax, emin = _qparams(dtype)
    t = x.float() / scale
    q = _round_fp8(t, qmax, emin) if qkind == 0 else _rne(t.clamp(-qmax, qmax))
    return q.to(dtype)


def _scale_from_amax(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    inv = torch.tensor(1.0 / qmax, dtype=torch.float32, device=amax.device)
    return torch.clamp_min(amax.float() * inv, MIN_SCALE)


def per_token_group_quant_torch(x: torch.Tensor, group_size: int, dtype: torch.dtype):
    m, k = x.shape
    ng = -(-k // group_size)
    pad = ng * group_size - k
    xf = torch.nn.functional.pad(x.float(), (0, pad)).view(m, ng, group_size)
    scale = _scale_from_amax(xf.abs().amax(dim=2), _qparams(dtype)[1])
    q = quantize_with_scale_torch(xf, scale.unsqueeze(2), dtype).view(m, ng * group_size)[:, :k]
    return q.contiguous(), scale


def per_tensor_quant_torch(x: torch.Tensor, dtype: torch.dtype, scale: Optional[torch.Tensor] = None, npp=None,
                           amax=None, zero=None):
    """``npp``: device int32 [1]; rows at or past it do not count in the dynamic scale (no host sync). ``amax`` /
    ``zero``: as :func:`per_tensor_quant`."""
    if zero is not None:
        zero.zero_()
    if scale is None and amax is not None:
        scale = _scale_from_amax(amax.float().reshape(1), _qparams(dtype)[1])
    elif scale is None:
        a = x.float().abs()
        if npp is not None:  # where, not a product: 0 * inf and 0 * NaN would count rows the kernel skips
            a = torch.where((torch.arange(x.shape[0], device=x.device) < npp.reshape(1)).unsqueeze(1), a, 0.0)
        amax = a.amax().reshape(1) if a.numel() else torch.zeros(1, device=x.device)
        scale = _scale_from_amax(amax, _qparams(dtype)[1])
    return quantize_with_scale_torch(x, scale.float().reshape(1), dtype), scale.float().reshape(1)


# ------------------------------------------------------------------------------------------ public calls
def _check_npp(npp, x) -> None:
    if npp is not None:
        check_arg(isinstance(npp, torch.Tensor) and npp.numel() == 1 and npp.device == x.device, "npp",
                  f"None or an int32 tensor of 1 element on {x.device}", getattr(npp, "shape", type(npp).__name__))


def _check_x(x):
    check_arg(isinstance(x, torch.Tensor) and x.dim() == 2, "x", "a 2-D tensor [M, K]",
              getattr(x, "shape", type(x).__name__))
    check_arg(x.is_floating_point(), "x", "a floating-point dtype", x.dtype)
    return x if x.stride(-1) == 1 else x.contiguous()


def per_token_group_quant(x: torch.Tensor, group_size: int, dtype: torch.dtype, *, use_triton=None, npp=None):
    """q [M, K] in ``dtype``, scale float32 [M, ceil(K / group_size)]. ``npp``: device int32 [1]; rows at
    or past it are skipped (their q and scale are left unwritten) - used on padded sorted rows."""
    x = _check_x(x)
    check_arg(isinstance(group_size, int) and not isinstance(group_size, bool) and group_size > 0, "group_size",
              "a positive int", repr(group_size))
    _check_npp(npp, x)
    qkind, qmax, emin = _qparams(dtype)
    if not _use_triton(x, use_triton, dtype):
        return per_token_group_quant_torch(x, group_size, dtype)
    from moekit.kernels.quant import group_quant

    m, k = x.shape
    q = torch.empty((m, k), dtype=dtype, device=x.device)
    s = torch.empty((m, -(-k // group_size)), dtype=torch.float32, device=x.device)
    if m and k:
        group_quant(x, q, s, group_size, qkind, qmax, emin, npp)
    return q, s


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int = 128, *, dtype: Optional[torch.dtype] = None,
                              use_triton: Optional[bool] = None):
    """Dynamic fp8 quantization per (token, group of ``group_size`` columns): q [M, K] fp8 (the platform's
    format unless ``dtype``), scale float32 [M, ceil(K / group_size)]; ``x ~= q * scale`` per group."""
    return per_token_group_quant(x, group_size, dtype or fp8_format(x.device)[0], use_triton=use_triton)


def per_token_quant(x: torch.Tensor, dtype: Optional[torch.dtype] = None, *, use_triton=None, npp=None):
    """Dynamic per-token (row) quantization: q [M, K], scale float32 [M, 1]. ``dtype``: fp8 (default, the
    platform's format) or torch.int8."""
    x = _check_x(x)
    dtype = dtype or fp8_format(x.device)[0]
    return per_token_group_quant(x, max(x.shape[1], 1), dtype, use_triton=use_triton, npp=npp)


def per_tensor_quant(x: torch.Tensor, dtype: Optional[torch.dtype] = None, scale: Optional[torch.Tensor] = None, *,
                     use_triton=None, npp=None, amax: Optional[torch.Tensor] = None,
                     zero: Optional[torch.Tensor] = None):
    """Per-tensor quantization: dynamic (``scale=None``: scale = max|x| / qmax) or static (``scale`` float32
    [1]). Returns q [M, K] and scale float32 [1]. Plumbing of the fused forward (both float32 [1] on x's
    device): ``amax`` holds max |x| over the rows in use, computed by an earlier kernel (the dynamic scale comes
    from it, with no pass over x); ``zero`` is set to 0 by this call, ordered before later kernels on the
    stream (which raise it as a running maximum)."""
    x = _check_x(x)
    dtype = dtype or fp8_format(x.device)[0]
    qkind, qmax, emin = _qparams(dtype)
    _check_npp(npp, x)
    if scale is not None:
        check_arg(isinstance(scale, torch.Tensor) and scale.numel() == 1 and scale.is_floating_point()
                  and scale.device == x.device, "scale", f"a floating-point tensor of 1 element on {x.device}",
                  f"{scale.dtype} tensor of shape {tuple(scale.shape)} on {scale.device}"
                  if isinstance(scale, torch.Tensor) else type(scale).__name__)
        scale = scale.reshape(1).float()
    for name, t in (("amax", amax), ("zero", zero)):
        check_arg(t is None or (isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() == 1
                                and t.device == x.device), name, f"None or a float32 tensor of 1 element on {x.device}",
                  getattr(t, "shape", type(t).__name__))
    if not _use_triton(x, use_triton, dtype):
        return per_tensor_quant_torch(x, dtype, scale, npp, amax, zero)
    from moekit.kernels.quant import tensor_quant

    m, k = x.shape
    q = torch.empty((m, k), dtype=dtype, device=x.device)
    s = scale if scale is not None else torch.empty(1, dtype=torch.float32, device=x.device)
    if m and k:
        tensor_quant(x, q, s, qkind, qmax, emin, dynamic=scale is None, npp=npp, amax=amax, zero=zero)
    else:
        if scale is None:
            s.fill_(MIN_SCALE)
        if zero is not None:
            zero.zero_()
    return q, s


def per_token_quant_torch(x: torch.Tensor, dtype: torch.dtype):
    return per_token_group_quant_torch(x, max(x.shape[1], 1), dtype)
