"""Triton kernels: dynamic and static activation quantization to fp8 (e4m3fn / e4m3fnuz) or int8.

One kernel family, rows x groups:
  per-token-group  grid (rows, cdiv(N, G)): one scale per (row, group of G columns)   scale [rows, cdiv(N, G)]
  per-token        the same with G = N (one group per row); rows over LONG_ROW:     scale [rows, 1]
                   one program per row, an amax pass then a quantize pass over chunks
  per-tensor       an amax pass (partial maxima of <= AMAX_PROGRAMS programs), then   scale [1]
                   a quantize pass whose programs each reduce the partials first
  static           a given float32 scale [1]

Numerics (shared with the PyTorch twins in :mod:`moekit.quant.ops`, which are bit-exact with these kernels):
  scale = max(amax * (1 / qmax), MIN_SCALE)        (never amax / qmax; an all-zero group gets MIN_SCALE, not NaN)
  q     = round(clamp(x / scale, -qmax, qmax))     x / scale is the IEEE-rounded division
NaN propagates as in torch: with a dynamic scale, a group holding a NaN gets a NaN amax and scale, and its
fp8 codes are NaN (int8 has no NaN: its codes are then meaningless, the NaN scale still makes every product
NaN); an inf gives an inf scale, so finite values quantize to 0 and the inf itself to NaN. So with dynamic
scales a NaN or inf activation never leaves the layer as a finite number. A static scale cannot carry it:
there an inf clamps to +-qmax and an int8 NaN to code 0 (fp8 keeps NaN codes), as in the twins.
``round`` is round-half-to-even onto the target grid: for int8 in float32 arithmetic (:func:`round_to_int`); for
fp8 by the cast to the fp8 dtype when compiled for a GPU, and in float32 arithmetic (:func:`round_to_fp8`) under
``TRITON_INTERPRET=1``, whose float32 -> fp8 cast mis-rounds values that carry into the next binade (31.7 -> 16
instead of 32). The division costs about four instructions per element, not one IEEE division each
(:func:`div_by_scale`). Both measured on Mixtral's [P, 14336] intermediate (``docs/PERF_NOTES.md``, session 21):
the passes had been bound by instruction issue, at a third of HBM bandwidth.
"""
from __future__ import annotations

import triton
import triton.language as tl

from moekit.kernels import pdl, warps_for
from moekit.platform import triton_interpreter_active
from moekit.quant.ops import MIN_SCALE  # the one definition (the launchers pass it in)
#: Kernels run in Triton's CPU interpreter (decided at import, as ``triton.jit`` decides it). Its ``tl.fma`` rounds
#: twice (a product, then a sum), so :func:`div_by_scale` divides there (its division is IEEE), and its float32 ->
#: fp8 cast mis-rounds, so :func:`quantize_values` rounds onto the fp8 grid itself (:func:`round_to_fp8`).
_INTERPRETED = tl.constexpr(triton_interpreter_active())
_RTNE_MAGIC = 12582912.0  # 1.5 * 2**23: (v + M) - M rounds |v| < 2**22 to the nearest integer, ties to even


@triton.jit
def e2m1_value(code):
    """mxfp4 weight codes: e2m1 (int32 0..15: sign bit 3, exponent bits 2..1, mantissa bit 0) -> their exact
    float32 values (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives) with integer ops and one exact multiply, no
    conversion instruction: the exponent and mantissa bits go to float32's bits 24..22 (the value times
    2**-126, a float32 subnormal for codes 0 and 1), the sign bit to bit 31; times 2**126 gives the value
    (Triton compiles float32 multiplies without flush-to-zero)."""
    bits = ((code & 8) << 28) | ((code & 7) << 22)
    return bits.to(tl.float32, bitcast=True) * 8.507059173023462e37


def _byte_spread_ptx(src: str) -> str:
    """PTX spreading bytes 0, 1 of register ``src`` to bits 0 and 16 of ``t0``, and bytes 2, 3 to those of
    ``t1`` (prmt), so that each 16-bit half holds one byte's two codes."""
    return f"prmt.b32 t0, {src}, 0, 0x4140;\nprmt.b32 t1, {src}, 0, 0x4342;\n"


def _code_bits_ptx(t: str, mag_shift: int, mag_mask: str, sign_shift: int) -> str:
    """PTX placing two e2m1 codes of register ``t``, one per 16-bit half, into ``m``: ``mag_shift`` moves the
    exponent and mantissa bits under ``mag_mask``, ``sign_shift`` the sign to bits 15 and 31."""
    return (f"shl.b32 m, {t}, {mag_shift};\nand.b32 m, m, {mag_mask};\nshl.b32 s, {t}, {sign_shift};\n"
            f"and.b32 s, s, 0x80008000;\nor.b32 m, m, s;\n")


def _mx_pair_ptx(t: str, mag_shift: int, sign_shift: int, scale: str, out: str) -> str:
    """PTX for two e2m1 codes of register ``t``, one per 16-bit half (bits 0..3 and 16..19: shifts 6 and 12;
    bits 4..7 and 20..23: shifts 2 and 8): the exponent and mantissa bits moved to bf16 bits 6..8
    (``mag_shift``) and the sign to bit 15 (``sign_shift``) by one multiply of the masked codes by
    ``2**mag_shift + 2**sign_shift`` (the two shifted copies do not overlap, so the sum is their OR) and a
    mask; then times 2**126 (``k``) and ``scale``, with -0.0 (``z``) as the exact addend -> the bf16x2
    ``out``."""
    code_mask = "0x000F000F" if mag_shift == 6 else "0x00F000F0"
    return (f"and.b32 m, {t}, {code_mask};\nmul.lo.u32 m, m, {(1 << mag_shift) + (1 << sign_shift)};\n"
            f"and.b32 m, m, 0x81C081C0;\nfma.rn.bf16x2 m, m, k, z;\nfma.rn.bf16x2 {out}, m, {scale}, z;\n")


#: PTX of :func:`mxfp4_bf16_scaled`, 4 bytes per instance: bytes 0, 1 (then 2, 3) spread to bits 0 and 16 of
#: one register (prmt), then per code pair the sign and exponent/mantissa bits placed as bf16 (the value
#: times 2**-126, bf16 subnormals for codes 0 and 1), times 2**126 (0x7E80) and times the scale, exactly.
_MX_BF16_PTX = tl.constexpr(
    "{\n.reg .b32 t0, t1, m, s, k, z;\nmov.b32 k, 0x7E807E80;\nmov.b32 z, 0x80008000;\n" + _byte_spread_ptx("$4")
    + _mx_pair_ptx("t0", 6, 12, "$5", "$0") + _mx_pair_ptx("t1", 6, 12, "$6", "$1")
    + _mx_pair_ptx("t0", 2, 8, "$5", "$2") + _mx_pair_ptx("t1", 2, 8, "$6", "$3") + "}")


@triton.jit
def mxfp4_bf16_scaled(raw, scale):
    """mxfp4 bytes ``raw`` (uint8, two e2m1 codes each, low nibble first) and each byte's bf16 scale
    (2**(s - 127), see :func:`e8m0_bf16`) -> (low-nibble values, high-nibble values) in bf16, exact, through
    inline PTX (NVIDIA sm_80+: ``fma.rn.bf16x2``); about 4.5 instructions per code. The Triton-ops twin is
    :func:`e2m1_value` times :func:`e8m0_value`, cast to bf16 (same bits)."""
    return tl.inline_asm_elementwise(_MX_BF16_PTX, "=r,=r,=r,=r,r,r,r", [raw, scale],
                                     dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)


#: PTX of :func:`mxfp4_mma_words`, two words (``$8``: h = 0, ``$9``: h = 1) per instance: bytes 0, 1 of both
#: side by side (prmt: the h = 0 word's in the low half), then 2, 3; each code pair decoded as in
#: :data:`_MX_BF16_PTX` straight into the bf16x2 register of output o (low half h = 0). ``$10`` / ``$11``: the
#: bf16x2 scales of codes 0-3 / 4-7 (two 32-code groups).
_MX_WORDS_PTX = tl.constexpr(
    "{\n.reg .b32 t, u, m, k, z;\nmov.b32 k, 0x7E807E80;\nmov.b32 z, 0x80008000;\n"
    "prmt.b32 t, $8, $9, 0x5410;\nshr.u32 u, t, 8;\n"
    + _mx_pair_ptx("t", 6, 12, "$10", "$0") + _mx_pair_ptx("t", 2, 8, "$10", "$1")
    + _mx_pair_ptx("u", 6, 12, "$10", "$2") + _mx_pair_ptx("u", 2, 8, "$10", "$3")
    + "prmt.b32 t, $8, $9, 0x7632;\nshr.u32 u, t, 8;\n"
    + _mx_pair_ptx("t", 6, 12, "$11", "$4") + _mx_pair_ptx("t", 2, 8, "$11", "$5")
    + _mx_pair_ptx("u", 6, 12, "$11", "$6") + _mx_pair_ptx("u", 2, 8, "$11", "$7") + "}")


@triton.jit
def _mx_word_code(w, o: tl.constexpr, s, DT: tl.constexpr):
    """Code ``o`` (bits 4o..4o+3) of int32 words ``w`` times the bf16 scales ``s``, cast to ``DT``."""
    return (e2m1_value((w >> (4 * o)) & 15) * s.to(tl.float32)).to(DT)


@triton.jit
def mxfp4_mma_words(w, s, BLOCK_N: tl.constexpr, V: tl.constexpr, DT: tl.constexpr, PTX: tl.constexpr):
    """mxfp4 weights in the ``mma`` layout (:func:`moekit.quant.weights.mma_layout`): int32 words ``w``
    [BLOCK_N, 8 V] (V chunks of 64 codes along K; word 2c + h of a chunk holds its 8 codes 16 t + 8 q + 2c + h,
    t = 0..3, q = 0..1, code o = 2t + q at bits 4o..4o+3) and e8m0 scales ``s`` [BLOCK_N, 2 V] -> the
    weights [BLOCK_N, 64 V] in K order, in ``DT`` (exact in bf16; ``PTX`` needs bf16). The words of one row are
    laid out so that on Hopper each thread of a warpgroup MMA loads exactly the codes of its left-operand
    fragment (two K columns 2c, 2c + 1 in one 32-bit register): ``PTX`` decodes two words (h = 0, 1) per
    instance into those registers (:data:`_MX_WORDS_PTX`, about 2.7 instructions per code, no byte shuffles),
    and the joins, reshapes and permutation below only rename registers (``tools/sass_loops.py gemm1_mxfp4
    --mma``: 536 instructions per 32 x 64 x 128 step against 732 for the plain layout). Without ``PTX`` (other
    GPUs, the interpreter) the same values come from Triton ops."""
    sb = e8m0_bf16(s)
    s_lo, s_hi = tl.split(tl.reshape(sb, [BLOCK_N, V, 2]))  # groups 2v (codes 0-3) and 2v + 1 (codes 4-7)
    s_lo = tl.reshape(tl.broadcast_to(s_lo[:, :, None], [BLOCK_N, V, 8]), [BLOCK_N, 8 * V])
    s_hi = tl.reshape(tl.broadcast_to(s_hi[:, :, None], [BLOCK_N, V, 8]), [BLOCK_N, 8 * V])
    if PTX:
        o0, o1, o2, o3, o4, o5, o6, o7 = tl.inline_asm_elementwise(
            _MX_WORDS_PTX, "=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r", [w, s_lo, s_hi], dtype=(tl.bfloat16,) * 8,
            is_pure=True, pack=2)
    else:
        o0 = _mx_word_code(w, 0, s_lo, DT)
        o1 = _mx_word_code(w, 1, s_lo, DT)
        o2 = _mx_word_code(w, 2, s_lo, DT)
        o3 = _mx_word_code(w, 3, s_lo, DT)
        o4 = _mx_word_code(w, 4, s_hi, DT)
        o5 = _mx_word_code(w, 5, s_hi, DT)
        o6 = _mx_word_code(w, 6, s_hi, DT)
        o7 = _mx_word_code(w, 7, s_hi, DT)
    m = tl.join(tl.join(tl.join(o0, o1), tl.join(o2, o3)), tl.join(tl.join(o4, o5), tl.join(o6, o7)))
    m = tl.reshape(m, [BLOCK_N, V, 4, 2, 2, 2, 2])  # n, v, c, h, q, t & 1, t >> 1
    m = tl.permute(m, [0, 1, 6, 5, 4, 2, 3])  # n, v, t >> 1, t & 1, q, c, h: K order
    return tl.reshape(m, [BLOCK_N, 64 * V])


def _f16_pair_ptx(t: str, mag_shift: int, sign_shift: int, o0: str, o1: str) -> str:
    """PTX for two e2m1 codes of register ``t``, one per 16-bit half: sign and exponent/mantissa bits placed
    as float16 (the value times 2**-14), each half converted to float32 in place."""
    return (_code_bits_ptx(t, mag_shift, "0x0E000E00", sign_shift)
            + f"mov.b32 {{l, u}}, m;\ncvt.f32.f16 {o0}, l;\ncvt.f32.f16 {o1}, u;\n")


#: PTX of :func:`mxfp4_f32_scaled_down`, 4 bytes per instance.
_MX_F32_PTX = tl.constexpr(
    "{\n.reg .b32 t0, t1, m, s;\n.reg .b16 l, u;\n" + _byte_spread_ptx("$8")
    + _f16_pair_ptx("t0", 9, 12, "$0", "$1") + _f16_pair_ptx("t1", 9, 12, "$2", "$3")
    + _f16_pair_ptx("t0", 5, 8, "$4", "$5") + _f16_pair_ptx("t1", 5, 8, "$6", "$7") + "}")


@triton.jit
def mxfp4_f32_scaled_down(raw, PTX: tl.constexpr):
    """mxfp4 bytes ``raw`` (uint8) -> (low-nibble values, high-nibble values) in float32, each **times
    2**-14** (the caller multiplies sums by 2**14, exactly). ``PTX``: inline PTX on NVIDIA GPUs (float16
    bit placement, the halves converted in place: about 3 instructions per code against about 5 for
    :func:`e2m1_value`), else Triton ops (same values)."""
    if PTX:
        return tl.inline_asm_elementwise(_MX_F32_PTX, "=r,=r,=r,=r,=r,=r,=r,=r,r", [raw],
                                         dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
    else:
        code = raw.to(tl.int32)
        return e2m1_value(code & 15) * 6.103515625e-05, e2m1_value(code >> 4) * 6.103515625e-05


def _int4_pair_ptx(t: str, signed: bool, scale: str, zero: str, out: str) -> str:
    """PTX for the two int4 codes at bits 0..3 and 16..19 of register ``t`` (one per bf16 half): one ``lop3``
    puts each code under bf16 128.0's exponent (0x4300: the half is then exactly 128 + its 4 bits; ``signed``
    flips bit 3 first, giving 128 + (q ^ 8) = 136 + q for two's complement q); exact bf16x2 FMAs subtract 136
    (signed) or 128 and the zero point ``zero`` (bf16x2, negated), then multiply by ``scale`` with -0.0 as the
    exact addend, rounding once -> the bf16x2 ``out``."""
    if signed:  # (t & 0x000F000F) ^ 0x43084308
        return (f"lop3.b32 m, {t}, 0x000F000F, 0x43084308, 0x6A;\nfma.rn.bf16x2 m, m, one, c;\n"
                f"fma.rn.bf16x2 {out}, m, {scale}, z;\n")
    return (f"lop3.b32 m, {t}, 0x000F000F, 0x43004300, 0xEA;\nfma.rn.bf16x2 m, m, one, c;\n"  # | 0x43004300
            f"fma.rn.bf16x2 m, m, one, {zero};\nfma.rn.bf16x2 {out}, m, {scale}, z;\n")


def _int4_ptx(signed: bool) -> str:
    """PTX of :func:`int4_bf16_scaled`, 4 bytes (``$4``) per instance: bytes 0, 1 (then 2, 3) spread to bits 0
    and 16 of one register (prmt), their high nibbles shifted down by 4, then :func:`_int4_pair_ptx` per pair
    with the scales ``$5``, ``$6`` (and negated zero points ``$7``, ``$8``)."""
    c = "0xC308C308" if signed else "0xC300C300"  # -136.0 / -128.0 in bf16
    zs = ("", "") if signed else ("$7", "$8")
    return ("{\n.reg .b32 t0, t1, h0, h1, m, one, c, z;\nmov.b32 one, 0x3F803F80;\n"
            f"mov.b32 c, {c};\nmov.b32 z, 0x80008000;\n" + _byte_spread_ptx("$4")
            + "shr.u32 h0, t0, 4;\nshr.u32 h1, t1, 4;\n"
            + _int4_pair_ptx("t0", signed, "$5", zs[0], "$0") + _int4_pair_ptx("t1", signed, "$6", zs[1], "$1")
            + _int4_pair_ptx("h0", signed, "$5", zs[0], "$2") + _int4_pair_ptx("h1", signed, "$6", zs[1], "$3")
            + "}")


_INT4_SIGNED_PTX = tl.constexpr(_int4_ptx(True))
_INT4_ZERO_PTX = tl.constexpr(_int4_ptx(False))


@triton.jit
def int4_bf16_scaled(raw, scale, neg_zero, HAS_ZERO: tl.constexpr):
    """int4 weight bytes ``raw`` (uint8, two codes each, low nibble first: signed two's complement, or with
    ``HAS_ZERO`` unsigned minus the zero point) -> (low-nibble values, high-nibble values) in bf16 through inline
    PTX (NVIDIA sm_80+): ``(q - zero) * scale`` rounded once to bf16, where ``scale`` and ``neg_zero`` (minus the
    zero point, an integer 0..255, exact) are bf16 tensors of ``raw``'s shape. About 2 instructions per code
    (2.5 with zero points) against about 4.5 for the Triton-ops decode; the scale is the bf16 rounding of the
    float32 one (as GPTQ / AWQ kernels apply their 16-bit scales), so the weight differs from the float32
    decode by at most one more bf16 rounding. The Triton-ops twin: the integer value times ``scale`` in
    float32 (exact), cast to bf16."""
    if HAS_ZERO:
        lo, hi = tl.inline_asm_elementwise(_INT4_ZERO_PTX, "=r,=r,=r,=r,r,r,r,r,r", [raw, scale, neg_zero],
                                           dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    else:
        lo, hi = tl.inline_asm_elementwise(_INT4_SIGNED_PTX, "=r,=r,=r,=r,r,r,r", [raw, scale],
                                           dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    return lo, hi


@triton.jit
def e8m0_bf16(s):
    """e8m0 bytes -> bf16 2**(s - 127) (0 for s = 0, inf for s = 255), by bit placement; the bf16 twin of
    :func:`e8m0_value`."""
    return (s.to(tl.int16) << 7).to(tl.bfloat16, bitcast=True)


@triton.jit
def e8m0_value(s):
    """mxfp4 scales: e8m0 bytes -> float32 2**(s - 127) (0 for s = 0, inf for s = 255, the NaN code), by
    bit placement (:func:`moekit.quant.weights._e8m0_to_float` is the PyTorch twin)."""
    return (s.to(tl.int32) << 23).to(tl.float32, bitcast=True)


@triton.jit
def round_to_int(v):
    """Round-half-to-even of float32 ``v`` (|v| < 2**22) to an integer value, in float32."""
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _max_keep_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def abs_max(x, axis: tl.constexpr):
    """max |x| along ``axis``, NaN if any element is NaN (``torch.amax``; ``tl.max`` would skip NaN)."""
    return tl.reduce(tl.abs(x), axis, _max_keep_nan)


@triton.jit
def scale_from_amax(amax, inv_qmax, min_s):
    """max(amax * (1 / qmax), min_s), keeping a NaN amax NaN."""
    return tl.maximum(amax * inv_qmax, min_s, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _clamp(v, QMAX: tl.constexpr):
    """v clamped to [-QMAX, QMAX]; NaN stays NaN (as ``torch.clamp``)."""
    return tl.minimum(tl.maximum(v, -QMAX, propagate_nan=tl.PropagateNan.ALL), QMAX,
                      propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def round_to_fp8(v, QMAX: tl.constexpr, EMIN: tl.constexpr):
    """Clamp float32 ``v`` to [-QMAX, QMAX] and round it (ties to even) onto the e4m3 grid whose smallest
    normal exponent is EMIN (-6 for e4m3fn, -7 for e4m3fnuz); 3 mantissa bits, the sign kept (a negative value
    that rounds to zero gives -0, as the GPU's cast does). Result is exact in fp8; NaN stays NaN."""
    v = _clamp(v, QMAX)
    bits = v.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127
    e = tl.maximum(e, EMIN)
    ulp = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2**(e-3), a normal float32
    inv_ulp = ((127 + 3 - e) << 23).to(tl.float32, bitcast=True)  # 2**(3-e): times it is exactly v / ulp
    r = (round_to_int(v * inv_ulp) * ulp).to(tl.int32, bitcast=True)
    return (r | ((bits >> 31) << 31)).to(tl.float32, bitcast=True)  # v's sign: -0 where a cast gives it


@triton.jit
def div_by_scale(v, scale):
    """``v / scale``, IEEE round-to-nearest (bit-equal to ``tl.div_rn`` and torch's float32 division), at about
    four instructions per element instead of a division each: ``scale`` broadcasts (one per tensor, row or group),
    so its reciprocal ``y = RN(1 / scale)`` is one division per scale; then ``q = RN(v * y)``, ``r = v - q *
    scale`` (exact, by FMA) and ``RN(q + r * y)`` is the correctly rounded quotient (Markstein's theorem: y
    correctly rounded, q within one ulp, no overflow or underflow). Where the correction is NaN (q or v infinite,
    or scale infinite: 0 * inf) ``q`` is already the IEEE quotient (+-inf, 0 or NaN). Outside that domain (scales
    over 2**126, subnormal quotients) the last bit may differ; every such quotient is below 2**-126, where fp8 and
    int8 round to 0 anyway. Under the interpreter: ``tl.div_rn``."""
    if _INTERPRETED:
        return tl.div_rn(v, scale)
    y = tl.div_rn(1.0, scale)  # IEEE (Triton's ``/`` on float32 is the approximate div.full.f32)
    q = v * y
    q1 = tl.fma(tl.fma(-q, scale, v), y, q)
    return tl.where(q1 != q1, q, q1)


@triton.jit
def quantize_values(v, scale, QKIND: tl.constexpr, QMAX: tl.constexpr, EMIN: tl.constexpr):
    """float32 ``v`` divided by ``scale`` (:func:`div_by_scale`) and rounded onto the fp8 (QKIND=0) or int8
    (QKIND=1) grid. Compiled for a GPU, fp8 values are only clamped here (NaN kept): the caller's cast to the fp8
    dtype rounds them, to nearest even (Triton's default for float downcasts; on NVIDIA one ``cvt.rn.satfinite``
    per two values), the same values :func:`round_to_fp8` gives, in about a tenth of the instructions."""
    t = div_by_scale(v, scale)
    if QKIND == 0:
        if not _INTERPRETED:
            return _clamp(t, QMAX)
        return round_to_fp8(t, QMAX, EMIN)
    return round_to_int(_clamp(t, QMAX))


@triton.jit
def _group_quant_kernel(
    x_ptr, q_ptr, s_ptr, npp_ptr, N, n_groups, stride_xm, stride_qm, stride_sm,
    GROUP: tl.constexpr, BLOCK: tl.constexpr, GROUPS_PER_PROG: tl.constexpr, QKIND: tl.constexpr,
    QMAX: tl.constexpr, EMIN: tl.constexpr, INV_QMAX: tl.constexpr, MIN_S: tl.constexpr, HAS_NPP: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """One row, GROUPS_PER_PROG groups of GROUP columns per program (a [groups, BLOCK] tile, reduced along
    its columns), so a program moves kilobytes rather than one 128-element group."""
    pdl.chain(PDL)
    row = tl.program_id(0)
    if HAS_NPP:
        if row >= tl.load(npp_ptr):
            return
    row64 = row.to(tl.int64)
    gs = tl.program_id(1) * GROUPS_PER_PROG + tl.arange(0, GROUPS_PER_PROG)
    inner = tl.arange(0, BLOCK)
    cols = gs[:, None] * GROUP + inner[None, :]
    ok = (inner < GROUP)[None, :] & (cols < N) & (gs < n_groups)[:, None]
    x = tl.load(x_ptr + row64 * stride_xm + cols, mask=ok, other=0.0).to(tl.float32)
    scale = scale_from_amax(abs_max(x, 1), INV_QMAX, MIN_S)
    q = quantize_values(x, scale[:, None], QKIND, QMAX, EMIN)
    tl.store(q_ptr + row64 * stride_qm + cols, q.to(q_ptr.dtype.element_ty), mask=ok)
    tl.store(s_ptr + row64 * stride_sm + gs, scale, mask=gs < n_groups)


@triton.jit
def _quantize_chunk(x_row, q_row, c0, N, scale, BLOCK: tl.constexpr, QKIND: tl.constexpr, QMAX: tl.constexpr,
                    EMIN: tl.constexpr):
    """Columns [c0, c0 + BLOCK) of one row (those below N): loaded, quantized with ``scale``, stored."""
    cols = c0 + tl.arange(0, BLOCK)
    ok = cols < N
    x = tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(q_row + cols, quantize_values(x, scale, QKIND, QMAX, EMIN).to(q_row.dtype.element_ty), mask=ok)


#: Programs of the per-tensor amax pass (grid-stride over [row, chunk] items). Each writes one partial maximum,
#: and every program of the quantization pass reduces all of them, so the cap keeps that read at 4 KB.
AMAX_PROGRAMS = 1024
#: Elements of a row one step of a per-tensor pass handles (a chunk), and of a long per-token row
#: (:func:`_token_quant_kernel`). H100, the passes alone on Mixtral's intermediate [rows, 14336] bf16 -> fp8
#: (``benchmarks/bench_act_quant.py``, ``bench_act_quant_H100_session21.json``; rows 600 / 2168 / 8312): per tensor
#: 2048 10.5 / 35.4 / 121.0 us, 4096 7.0 / 33.6 / 120.7, 8192 8.1 / 33.5 / 119.1; per token 2048 14.3 / 44.8 / 161.3,
#: 4096 16.2 / 43.1 / 148.4, 8192 10.9 / 45.2 / 147.1.
TENSOR_CHUNK = 4096
TOKEN_CHUNK = 8192
#: Up to this many [row, chunk] items the quantization pass runs one program per chunk (many short programs for
#: few rows); above, one program per row walks its chunks, so fewer programs reduce the partial maxima.
#: Measured on the H100 (``benchmarks/ab_tensor_quant.py``, ``ab_tensor_quant_H100_session16_first.json``, one
#: program per chunk everywhere): Mixtral's intermediate [632, 14336] 18.2 -> 17.6 us, but [8312, 14336] 213.1
#: -> 259.6 us. Session 15's kernels -> these (``ab_tensor_quant_split_H100_session16.log``, the op alone): [248,
#: 14336] 14.6 -> 9.0 us, [632, 14336] 18.2 -> 16.9 (19.3 with 8192 here), [2168, 14336] 66.4 -> 64.3, [8312,
#: 14336] 212.7 -> 218.2; 2048 and 4096 equal at every shape.
SPLIT_ROWS_ITEMS = 4096


@triton.jit
def _amax_kernel(x_ptr, part_ptr, npp_ptr, rows, N, n_chunks, stride_xm, BLOCK: tl.constexpr,
                 HAS_NPP: tl.constexpr, PDL: tl.constexpr = False):
    """part[pid] = max |x| over the [row, chunk] items pid, pid + grid, ... of the rows in use (0 if none)."""
    pdl.chain(PDL)
    if HAS_NPP:
        rows = tl.minimum(rows, tl.load(npp_ptr))
    m = tl.zeros([BLOCK], dtype=tl.float32)
    for item in tl.range(tl.program_id(0), rows * n_chunks, tl.num_programs(0), num_stages=3):
        cols = (item % n_chunks) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + (item // n_chunks).to(tl.int64) * stride_xm + cols, mask=cols < N, other=0.0)
        m = _max_keep_nan(m, tl.abs(x.to(tl.float32)))
    tl.store(part_ptr + tl.program_id(0), tl.reduce(m, 0, _max_keep_nan))


@triton.jit
def _tensor_quant_kernel(
    x_ptr, q_ptr, s_ptr, part_ptr, npp_ptr, N, n_chunks, n_parts, stride_xm, stride_qm,
    BLOCK: tl.constexpr, P_BLOCK: tl.constexpr, QKIND: tl.constexpr, QMAX: tl.constexpr, EMIN: tl.constexpr,
    INV_QMAX: tl.constexpr, MIN_S: tl.constexpr, DYNAMIC: tl.constexpr, HAS_NPP: tl.constexpr,
    CHUNKS: tl.constexpr = 1, PDL: tl.constexpr = False, zero_ptr=None, HAS_ZERO: tl.constexpr = False,
):
    """Program (row, g): chunks g * CHUNKS onwards (BLOCK columns each) of one row; a dynamic scale from the amax
    pass's partial maxima. ``HAS_ZERO``: program (0, 0) also sets float32 ``zero_ptr[0]`` to 0 (the running
    maximum a later kernel of the stream raises)."""
    pdl.chain(PDL)
    row, first = tl.program_id(0), tl.program_id(1) * CHUNKS
    if HAS_ZERO:
        if (row == 0) & (first == 0):
            tl.store(zero_ptr, 0.0)
    if DYNAMIC:
        offs = tl.arange(0, P_BLOCK)
        parts = tl.load(part_ptr + offs, mask=offs < n_parts, other=0.0)
        scale = scale_from_amax(tl.reduce(parts, 0, _max_keep_nan), INV_QMAX, MIN_S)
        if (row == 0) & (first == 0):  # also when npp skips every row: the scale is MIN_S then, as in the twin
            tl.store(s_ptr, scale)
    else:
        scale = tl.load(s_ptr)
    if HAS_NPP:
        if row >= tl.load(npp_ptr):
            return
    row64 = row.to(tl.int64)
    for chunk in range(first, tl.minimum(first + CHUNKS, n_chunks)):
        _quantize_chunk(x_ptr + row64 * stride_xm, q_ptr + row64 * stride_qm, chunk * BLOCK, N, scale, BLOCK, QKIND,
                        QMAX, EMIN)


#: Per-token rows longer than this (elements, rounded up to a power of two) are quantized by
#: :func:`_token_quant_kernel`: the group kernel holds a whole group in registers, which for Mixtral's 14336-wide
#: intermediate took 142 registers a thread (one 8-warp program per SM, its loads and arithmetic never overlapped).
LONG_ROW = 4096


@triton.jit
def _token_quant_kernel(x_ptr, q_ptr, s_ptr, npp_ptr, N, stride_xm, stride_qm, stride_sm, BLOCK: tl.constexpr,
                        QKIND: tl.constexpr, QMAX: tl.constexpr, EMIN: tl.constexpr, INV_QMAX: tl.constexpr,
                        MIN_S: tl.constexpr, HAS_NPP: tl.constexpr, PDL: tl.constexpr = False):
    """Per-token quantization of one long row per program, in two passes over its ``BLOCK``-column chunks: max |x|,
    then the quantization (the row again, now from L2). Same scale and codes as :func:`_group_quant_kernel`."""
    pdl.chain(PDL)
    row = tl.program_id(0)
    if HAS_NPP:
        if row >= tl.load(npp_ptr):
            return
    row64 = row.to(tl.int64)
    x_row = x_ptr + row64 * stride_xm
    m = tl.zeros([BLOCK], dtype=tl.float32)
    for c0 in range(0, N, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        m = _max_keep_nan(m, tl.abs(tl.load(x_row + cols, mask=cols < N, other=0.0).to(tl.float32)))
    scale = scale_from_amax(tl.reduce(m, 0, _max_keep_nan), INV_QMAX, MIN_S)
    tl.store(s_ptr + row64 * stride_sm, scale)
    for c0 in range(0, N, BLOCK):
        _quantize_chunk(x_row, q_ptr + row64 * stride_qm, c0, N, scale, BLOCK, QKIND, QMAX, EMIN)


def group_quant(x, q, s, group, qkind, qmax, emin, npp=None):
    """q[r, c] and s[r, c // group] from x[r, c] (2-D, last dim contiguous); rows >= npp[0] skipped."""
    rows, n = x.shape
    block = triton.next_power_of_2(group)
    n_groups = triton.cdiv(n, group)
    if n_groups == 1 and block > LONG_ROW:  # per token, long rows
        _token_quant_kernel[(rows,)](
            x, q, s, npp, n, x.stride(0), q.stride(0), s.stride(0), BLOCK=TOKEN_CHUNK, QKIND=qkind, QMAX=qmax,
            EMIN=emin, INV_QMAX=1.0 / qmax, MIN_S=MIN_SCALE, HAS_NPP=npp is not None,
            num_warps=warps_for(TOKEN_CHUNK, 8), **pdl.chained_launch(x.device),
        )
        return
    per_prog = min(triton.next_power_of_2(n_groups), max(1, 4096 // block))  # up to 4096 elements a program
    _group_quant_kernel[(rows, triton.cdiv(n_groups, per_prog))](
        x, q, s, npp, n, n_groups, x.stride(0), q.stride(0), s.stride(0),
        GROUP=group, BLOCK=block, GROUPS_PER_PROG=per_prog, QKIND=qkind, QMAX=qmax, EMIN=emin,
        INV_QMAX=1.0 / qmax, MIN_S=MIN_SCALE, HAS_NPP=npp is not None, num_warps=warps_for(per_prog * block, 8),
        **pdl.chained_launch(x.device),
    )


def tensor_quant(x, q, s, qkind, qmax, emin, dynamic, npp=None, amax=None, zero=None):
    """Per-tensor quantization of x [rows, N] (rows and N > 0); ``dynamic``: s (float32 [1]) is written, else
    read. Two launches when dynamic (partial maxima over at most :data:`AMAX_PROGRAMS` programs, then the
    quantization, each of whose programs reduces them; :data:`SPLIT_ROWS_ITEMS`), one when static; no memset,
    no atomics. ``amax`` (dynamic): float32 [1] already holding max |x| over the rows in use (GEMM 1's
    epilogue, ``OUT_QUANT`` 3 of :mod:`moekit.kernels.moe_gemm`): no amax pass. ``zero``: float32 [1] set to 0
    by the quantization pass (for such a running maximum later in the stream)."""
    import torch

    rows, n = x.shape
    block = min(triton.next_power_of_2(n), TENSOR_CHUNK)
    n_chunks = triton.cdiv(n, block)
    parts, n_parts = s, 1  # static: unused
    if dynamic and amax is not None:
        parts = amax
    elif dynamic:
        n_parts = min(rows * n_chunks, AMAX_PROGRAMS)
        parts = torch.empty(n_parts, dtype=torch.float32, device=x.device)
        _amax_kernel[(n_parts,)](x, parts, npp, rows, n, n_chunks, x.stride(0), BLOCK=block,
                                 HAS_NPP=npp is not None, num_warps=warps_for(block, 8),
                                 **pdl.chained_launch(x.device))
    per_prog = 1 if rows * n_chunks <= SPLIT_ROWS_ITEMS else n_chunks
    _tensor_quant_kernel[(rows, triton.cdiv(n_chunks, per_prog))](
        x, q, s, parts, npp, n, n_chunks, n_parts, x.stride(0), q.stride(0), CHUNKS=per_prog,
        BLOCK=block, P_BLOCK=triton.next_power_of_2(n_parts), QKIND=qkind, QMAX=qmax, EMIN=emin,
        INV_QMAX=1.0 / qmax, MIN_S=MIN_SCALE, DYNAMIC=dynamic, HAS_NPP=npp is not None, zero_ptr=zero,
        HAS_ZERO=zero is not None, num_warps=warps_for(block, 8), **pdl.chained_launch(x.device),
    )
