"""Offline weight quantization (:func:`quantize_weights`) and its inverse (:func:`dequantize_weights`).

Weights are ``[E, N, K]`` (w13: N = 2I, K = H; w2: N = H, K = I); K is the reduction dimension. Layouts:

=====================  ===========================  ======================================  ===========================
scheme                 qweight                      scale                                   zero (zero_point=True only)
=====================  ===========================  ======================================  ===========================
fp8_block(bn, bk)      fp8 [E, N, K]                float32 [E, ceil(N/bn), ceil(K/bk)]     -
fp8_tensor             fp8 [E, N, K]                float32 [E] (one per expert)            -
fp8_channel            fp8 [E, N, K]                float32 [E, N]                          -
int8_channel (w8a8)    int8 [E, N, K]               float32 [E, N]                          -
int8_weight_only       int8 [E, N, K] (zp: uint8)   float32 [E, N]; group g: [E, N, ceil(K/g)]  uint8, shape of scale
int4_weight_only(g)    uint8 [E, N, K/2], 2 codes   float32 [E, N, ceil(K/g)]; channel: [E, N]  uint8 0..15, shape of scale
                       per byte, low nibble = even k
mxfp4                  uint8 [E, N, K/2] e2m1       uint8 e8m0 [E, N, K/32] (2**(s-127))     -
mxfp4("mma")           uint8 [E, N, K/2], codes     as mxfp4                                 -
                       permuted (:func:`mma_layout`)
=====================  ===========================  ======================================  ===========================

fp8 is the platform's format (:func:`moekit.quant.ops.fp8_format`: e4m3fn, or e4m3fnuz on gfx942) unless
``fp8_dtype`` is given. Symmetric int codes: int8 in [-127, 127], int4 in [-7, 7] (stored as two's-complement
nibbles). With ``zero_point`` (GPTQ/AWQ style, weight-only): unsigned codes (uint8 0..255, int4 0..15) and
``w = (q - zero) * scale``. int4 and mxfp4 need an even K (mxfp4: a multiple of 32). Scales are
``amax * (1 / qmax)`` with a floor of 1e-12, so an all-zero row or block gets a tiny positive scale, never NaN.
"""
from __future__ import annotations

from typing import Optional

import torch

from moekit.errors import check_arg
from moekit.quant.ops import MIN_SCALE, _scale_from_amax, fp8_format, quantize_with_scale_torch
from moekit.quant.scheme import MMA_CHUNK, MX_BLOCK, QuantScheme, as_scheme

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _groups(t: torch.Tensor, g: int) -> torch.Tensor:
    """[E, N, K] -> [E, N, ceil(K/g), g] (zero-padded along K)."""
    e, n, k = t.shape
    ng = -(-k // g)
    return torch.nn.functional.pad(t, (0, ng * g - k)).view(e, n, ng, g)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int codes [..., K] (K even) -> uint8 [..., K/2]: low nibble = even k."""
    c = (codes.to(torch.int32) & 0xF)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] -> int32 codes 0..15 [..., K]."""
    p = packed.to(torch.int32)
    return torch.stack((p & 0xF, (p >> 4) & 0xF), dim=-1).flatten(-2)


#: The "mma" layout's order inside one 64-code chunk of a row, [word 2c + h, code o = 2t + q] -> K offset
#: 16 t + 8 q + 2 c + h (c = 0..3, h = 0..1, t = 0..3, q = 0..1): on Hopper, thread c of each quad of a
#: warpgroup MMA holds K columns 2c, 2c + 1 (h) of every 8-column half (q) of every 16-deep step (t) in its
#: left-operand fragment, so word pairs (h = 0, 1) decode straight into its 32-bit registers
#: (:func:`moekit.kernels.quant.mxfp4_mma_words`).
_MMA_SHAPE = (2, 2, 2, 4, 2)  # the chunk's K offset as (t >> 1, t & 1, q, c, h), most significant first
_MMA_PERM = (3, 4, 0, 1, 2)  # ... as (c, h, t >> 1, t & 1, q): word 2c + h, code o = 2t + q


def mma_layout(q: torch.Tensor) -> torch.Tensor:
    """Packed mxfp4 codes ``q`` uint8 [..., K/2] in the plain layout (two codes per byte along K, low nibble
    first) -> the same codes in the "mma" layout (:class:`~moekit.quant.QuantScheme` ``layout``), a new
    uint8 tensor of the same shape. K must be a multiple of 64. Scales are unchanged. Run it once when the
    weights are loaded and pass ``quant=QuantScheme.mxfp4("mma")``; :func:`plain_layout` is the inverse."""
    return _pack_nibbles(_mma_codes(unpack_nibbles(_checked_bytes(q)), True, "q"))


def plain_layout(q: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`mma_layout`."""
    return _pack_nibbles(_mma_codes(unpack_nibbles(_checked_bytes(q)), False, "q"))


def _checked_bytes(q: torch.Tensor) -> torch.Tensor:
    check_arg(isinstance(q, torch.Tensor) and q.dtype == torch.uint8 and q.dim() >= 1, "q",
              "packed mxfp4 codes, a uint8 tensor [..., K/2]", getattr(q, "dtype", type(q).__name__))
    return q


def _mma_codes(codes: torch.Tensor, to_mma: bool, name: str) -> torch.Tensor:
    """Unpacked codes [..., K] permuted inside each 64-code chunk: plain -> mma order (``to_mma``) or back.
    K must be a multiple of 64 (else the error names ``name``, the tensor the codes come from)."""
    lead, k = codes.shape[:-1], codes.shape[-1]
    check_arg(k % MMA_CHUNK == 0, name, f"K (the codes along the last dim) a multiple of {MMA_CHUNK} for the mma "
              "layout", f"K={k}")
    d = len(lead) + 1  # the chunk dims start here
    if to_mma:
        codes = codes.reshape(*lead, k // MMA_CHUNK, *_MMA_SHAPE)
        order = tuple(range(d)) + tuple(d + p for p in _MMA_PERM)
    else:  # invert the permutation
        inv = sorted(range(len(_MMA_PERM)), key=lambda i: _MMA_PERM[i])
        codes = codes.reshape(*lead, k // MMA_CHUNK, *(_MMA_SHAPE[p] for p in _MMA_PERM))
        order = tuple(range(d)) + tuple(d + p for p in inv)
    return codes.permute(order).reshape(*lead, k)


def _group_size(scheme: QuantScheme, k: int) -> int:
    return scheme.group_size if scheme.granularity == "group" else k


def _e8m0_to_float(s: torch.Tensor) -> torch.Tensor:
    return (s.to(torch.int32) << 23).view(torch.float32)


def _e2m1_encode(t: torch.Tensor) -> torch.Tensor:
    """float32 -> e2m1 codes (sign bit 3), round to nearest, ties to the even code; clamps to +-6."""
    a = t.abs().clamp_max(6.0)
    vals = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=t.device)
    mids = (vals[1:] + vals[:-1]) / 2
    idx = torch.bucketize(a, mids, right=True)
    tie = (idx > 0) & (a == mids[(idx - 1).clamp_min(0)]) & (idx % 2 == 1)
    idx = torch.where(tie, idx - 1, idx)
    return idx.to(torch.int32) | ((t < 0).to(torch.int32) << 3)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    vals = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    c = codes.to(torch.int64)
    return torch.where((c & 8) != 0, -vals[c & 7], vals[c & 7])


def quantize_weights(w: torch.Tensor, scheme, *, fp8_dtype: Optional[torch.dtype] = None):
    """Quantize expert weights ``w`` [E, N, K] (a 2-D [N, K] is taken as E=1 and keeps E) for ``scheme``.

    Returns ``(qweight, scale)`` or, for weight-only schemes with ``zero_point=True``, ``(qweight, scale,
    zero)``; layouts in the module docstring.
    """
    s = as_scheme(scheme)
    check_arg(s.is_quantized, "scheme", "a quantized QuantScheme", s.name)
    check_arg(isinstance(w, torch.Tensor) and w.dim() in (2, 3) and w.is_floating_point(), "w",
              "a floating-point tensor [E, N, K] or [N, K]", getattr(w, "shape", type(w).__name__))
    squeeze = w.dim() == 2
    wf = (w.unsqueeze(0) if squeeze else w).float()
    e, n, k = wf.shape
    out = _quantize(wf, s, fp8_dtype or fp8_format(w.device)[0])
    if squeeze:
        out = tuple(t.squeeze(0) for t in out)
    return out


def _quantize(wf: torch.Tensor, s: QuantScheme, f8: torch.dtype):
    e, n, k = wf.shape
    if s.weight_dtype == "fp8" or s.act_dtype == "int8":
        dtype = f8 if s.weight_dtype == "fp8" else torch.int8
        qmax = float(torch.finfo(dtype).max) if dtype != torch.int8 else 127.0
        if s.granularity == "block":
            bn, bk = s.block_shape
            nb = -(-n // bn)
            padded = torch.nn.functional.pad(wf, (0, -(-k // bk) * bk - k, 0, nb * bn - n))
            blocks = padded.view(e, nb, bn, -1, bk)
            scale = _scale_from_amax(blocks.abs().amax(dim=(2, 4)), qmax)  # [E, nb, kb]
            q = quantize_with_scale_torch(blocks, scale[:, :, None, :, None], dtype)
            q = q.view(e, nb * bn, -1)[:, :n, :k].contiguous()
            return q, scale
        if s.granularity == "tensor":
            scale = _scale_from_amax(wf.abs().amax(dim=(1, 2)), qmax)  # [E]
            return quantize_with_scale_torch(wf, scale[:, None, None], dtype), scale
        scale = _scale_from_amax(wf.abs().amax(dim=2), qmax)  # [E, N]
        return quantize_with_scale_torch(wf, scale[:, :, None], dtype), scale
    if s.weight_dtype == "mxfp4":
        check_arg(k % MX_BLOCK == 0, "w", f"K (last dim) a multiple of {MX_BLOCK} for mxfp4", f"K={k}")
        g = wf.view(e, n, k // MX_BLOCK, MX_BLOCK)
        amax = g.abs().amax(dim=3)
        # shared exponent: floor(log2(amax)) - 2 (e2m1's largest exponent), as in the OCP MX spec
        exp = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp_min(1e-38))) - 2, torch.zeros_like(amax))
        code = (exp + 127).clamp(1, 254).to(torch.uint8)
        t = g / _e8m0_to_float(code).unsqueeze(3)
        codes = _e2m1_encode(t).view(e, n, k)
        return _pack_nibbles(_mma_codes(codes, True, "w") if s.layout == "mma" else codes), code
    # weight-only int8 / int4
    bits = 8 if s.weight_dtype == "int8" else 4
    if bits == 4:
        check_arg(k % 2 == 0, "w", "an even K (last dim) for int4 (two codes per byte)", f"K={k}")
    gsz = _group_size(s, k)
    g = _groups(wf, gsz)  # [E, N, ng, G]
    if s.zero_point:
        qmax = float(2 ** bits - 1)
        lo = g.amin(dim=3).clamp_max(0.0)
        hi = g.amax(dim=3).clamp_min(0.0)
        scale = torch.clamp_min((hi - lo) * torch.tensor(1.0 / qmax), MIN_SCALE)
        zero = torch.round(-lo / scale).clamp(0, qmax)
        codes = (torch.round(g / scale[..., None]) + zero[..., None]).clamp(0, qmax)
        codes = codes.view(e, n, -1)[:, :, :k].to(torch.int32)
        zero = zero.to(torch.uint8)
    else:
        qmax = float(2 ** (bits - 1) - 1)
        scale = _scale_from_amax(g.abs().amax(dim=3), qmax)
        codes = torch.round(g / scale[..., None]).clamp(-qmax, qmax).view(e, n, -1)[:, :, :k].to(torch.int32)
        zero = None
    if bits == 8:
        q = codes.to(torch.uint8 if s.zero_point else torch.int8)
    else:
        q = _pack_nibbles(codes)
    if s.granularity != "group":
        scale = scale.squeeze(2)
        zero = zero.squeeze(2) if zero is not None else None
    return (q, scale, zero) if s.zero_point else (q, scale)


def dequantize_weights(q: torch.Tensor, scale: torch.Tensor, scheme, zero: Optional[torch.Tensor] = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_weights`: [E, N, K] in ``dtype`` (the tensors moekit's references use); a
    2-D ``q`` [N, K] (with the scale and zero points :func:`quantize_weights` gave for a 2-D weight) gives
    [N, K]. Raises :class:`~moekit.MoEInputError` when the scale or zero points do not fit ``q`` and
    ``scheme`` (layouts: module docstring)."""
    from moekit.quant.moe import check_qweight, packed

    s = as_scheme(scheme)
    check_arg(s.is_quantized, "scheme", "a quantized QuantScheme", s.name)
    check_arg(isinstance(q, torch.Tensor) and q.dim() in (2, 3), "q", "a tensor [E, N, K] or [N, K] (packed: K/2)",
              getattr(q, "shape", type(q).__name__))
    if q.dim() == 2:
        lift = (lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t)  # noqa: E731
        return dequantize_weights(q.unsqueeze(0), lift(scale), s, lift(zero), dtype).squeeze(0)
    e, n = q.shape[0], q.shape[1]
    check_qweight(s, q, scale, zero, n, q.shape[2] * (2 if packed(s) else 1))
    if s.weight_dtype == "fp8" or s.act_dtype == "int8":
        qf = q.float()
        k = q.shape[2]
        if s.granularity == "block":
            bn, bk = s.block_shape
            full = scale.float().repeat_interleave(bn, 1)[:, :n].repeat_interleave(bk, 2)[:, :, :k]
            return (qf * full).to(dtype)
        if s.granularity == "tensor":
            return (qf * scale.float().reshape(e, 1, 1)).to(dtype)
        return (qf * scale.float().reshape(e, n, 1)).to(dtype)
    if s.weight_dtype == "mxfp4":
        codes = unpack_nibbles(q)
        vals = e2m1_decode(_mma_codes(codes, False, "q") if s.layout == "mma" else codes)
        k = vals.shape[2]
        return (vals * _e8m0_to_float(scale).repeat_interleave(MX_BLOCK, 2)[:, :, :k]).to(dtype)
    if s.weight_dtype == "int4":
        codes = unpack_nibbles(q)
        if not s.zero_point:
            codes = (codes ^ 8) - 8
    else:
        codes = q.to(torch.int32)
    k = codes.shape[2]
    gsz = _group_size(s, k)
    sc = scale.float().reshape(e, n, -1)
    val = codes.float()
    if zero is not None:
        val = val - zero.float().reshape(e, n, -1).repeat_interleave(gsz, 2)[:, :, :k]
    return (val * sc.repeat_interleave(gsz, 2)[:, :, :k]).to(dtype)
