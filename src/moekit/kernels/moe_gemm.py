"""Triton kernels: the two grouped expert GEMMs of a fused MoE forward.

Layouts (row-major, last dim contiguous):
  x       [M, H]            hidden states
  w13     [E, 2I, H]        gate rows 0..I-1, then up rows I..2I-1
  w2      [E, H, I]
  sorted  [P] int32         padded, expert-sorted slot ids (slot = token * top_k + j; N = M*top_k marks padding)
  experts [P / BLOCK_M]     local expert of each tile of ``sorted`` (-1 past the used tiles)
  npp     [1] int32         true padded length (device scalar: no host sync)
  tiles   [P / BLOCK_M]     with tail tiles only (:mod:`moekit.align`): each tile's first row + log2(BLOCK_M / its
                            rows); without them tile t is rows [t * BLOCK_M, (t + 1) * BLOCK_M)
  inter   [P, I]            activation output, in *sorted* order (rows of padding are zero)
  y       [M*top_k, H]      down-projection output per slot, routing weight applied

GEMM 1 computes, per tile of sorted slots and per BLOCK_N columns of I, the gate and the up tiles in the
same program (two accumulators over one pass of K), applies ``act(gate) * up`` in the epilogue and writes
only the [P, I] result: the [M*k, 2I] intermediate never exists. GEMM 2 reads ``inter`` rows contiguously,
multiplies by the routing weight and scatters rows to their slots. Row offsets are 64-bit.

Quantized paths (constexpr ``QUANT``; 0 compiles exactly the unquantized kernel), see :class:`GemmQuant`:
  1 w8a8 fp8/int8, per-tensor or per-channel: raw fp8/int8 ``tl.dot`` (int32 accumulator for int8), the
    activation scale (per row, or one) and weight scale (per column, or one) applied once in the epilogue.
  2 w8a8 fp8 block (bn, bk): BLOCK_K divides bk; per K step ``acc += dot(a, b) * a_scale[row, kb] *
    w_scale[n // bn, kb]``.
  3/4/5 weight-only int8 / int4 / mxfp4: codes loaded (int4/mxfp4: two per byte along K, low nibble first),
    decoded and scaled per (column, K-group) in registers, cast to the activation dtype, ``tl.dot``. mxfp4
    on GPUs with ``tl.dot_scaled`` swaps the operands (``MX_DOT``, the weight is the MMA's left operand in
    registers) and lets ``tl.dot_scaled`` decode, or (``ASM_DECODE``, Hopper, bf16, K steps of 32-128 codes)
    decodes by inline PTX (:func:`~moekit.kernels.quant.mxfp4_bf16_scaled`) into two ``tl.dot`` on the even and
    odd K activations (:func:`moekit.quant.triton_moe.mxfp4_ptx_decode` says where). int4 with ``ASM_DECODE``
    (bf16, NVIDIA: :func:`moekit.quant.triton_moe.int4_ptx_decode`) is decoded by inline PTX as well
    (:func:`~moekit.kernels.quant.int4_bf16_scaled`), in the plain or the swapped (``SWAP_AB``) form. mxfp4 in
    the "mma" layout (``MX_WORDS``, with ``MX_DOT``; :func:`moekit.quant.weights.mma_layout`): int32 words
    decoded into K order (:func:`~moekit.kernels.quant.mxfp4_mma_words`, inline PTX with ``ASM_DECODE``), one
    ``tl.dot`` per step with the plain token tile (:func:`_mx_words_dot_t`, :func:`_mx_words_tokens`).
GEMM 1 can also quantize its output (``OUT_QUANT``): 1 = fp8 per (row, BLOCK_N columns): the program takes the
row amax of its tile and writes q and scale [P, I / BLOCK_N] - the activation of GEMM 2 never exists in bf16.
BLOCK_N divides the weight's 128 block, so this group is the block or finer (finer is more accurate), and
GEMM 2 reads that scale per ``GROUP_KA`` columns of K (a K step may span several such groups: then its
activation codes are rescaled into one float16 operand, :func:`_rescaled_groups`; where:
:func:`moekit.quant.triton_moe.gemm2_split_config`); 2 = static per-tensor scale; 3 = no quantization, but the
max |output| (of the values as stored) is raised into ``out_scale`` (float32 [1], zeroed earlier in the stream) by
one atomic max per program, for the dynamic per-tensor quantization of GEMM 2's activation (NaN wins: its bits
order above +inf's).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from moekit.activations import ACTIVATIONS as _NAMES
from moekit.activations import SWIGLUOAI_ALPHA, SWIGLUOAI_LIMIT
from moekit.kernels import pdl, tile_ids
from moekit.kernels.quant import (
    MIN_SCALE, abs_max, e2m1_value, e8m0_bf16, e8m0_value, int4_bf16_scaled, mxfp4_bf16_scaled, mxfp4_mma_words,
    quantize_values,
    scale_from_amax,
)

ACTIVATIONS = {name: code for code, name in enumerate(_NAMES)}  # kernel constexpr codes
_SWIGLU_ALPHA = tl.constexpr(SWIGLUOAI_ALPHA)
_MIN_SCALE = tl.constexpr(MIN_SCALE)
_SWIGLU_LIMIT = tl.constexpr(SWIGLUOAI_LIMIT)


@triton.jit
def activate(g, ACTIVATION: tl.constexpr):
    """The gate activation of GEMM 1's epilogue (float32 in, float32 out): code 0 SiLU, 1 exact GELU
    (codes: :data:`ACTIVATIONS`)."""
    if ACTIVATION == 0:
        return g / (1.0 + tl.exp(-g))
    else:
        return 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476))


@triton.jit
def gate_up(g, u, ACTIVATION: tl.constexpr):
    """GEMM 1's gated output from its float32 gate and up halves: ``act(g) * u`` (codes 0, 1: see
    :func:`activate`), or code 2, gpt-oss's clamped SwiGLU ``(clamp(u, -L, L) + 1) * g' * sigmoid(alpha * g')``
    with ``g' = min(g, L)`` (:mod:`moekit.activations`)."""
    if ACTIVATION == 2:
        g = tl.minimum(g, _SWIGLU_LIMIT)
        u = tl.minimum(tl.maximum(u, -_SWIGLU_LIMIT), _SWIGLU_LIMIT)
        return (u + 1.0) * (g / (1.0 + tl.exp(-_SWIGLU_ALPHA * g)))
    else:
        return activate(g, ACTIVATION) * u


@triton.jit
def _load_int8(w_ptrs, s_ptrs, z_ptrs, mask, s_mask, HAS_ZERO: tl.constexpr, DT: tl.constexpr):
    """Weight-only int8 tile [BLOCK_K, BLOCK_N]: codes, minus zero point, times the scale, in dtype DT."""
    v = tl.load(w_ptrs, mask=mask, other=0).to(tl.float32)
    if HAS_ZERO:
        v = v - tl.load(z_ptrs, mask=s_mask, other=0).to(tl.float32)
    return (v * tl.load(s_ptrs, mask=s_mask, other=0)).to(DT)


@triton.jit
def _decode_nibble(code, s, z, QUANT: tl.constexpr, HAS_ZERO: tl.constexpr):
    """4-bit codes (int32 0..15) -> float32 weights. QUANT 4: int4 (signed two's complement, or unsigned
    minus the zero point ``z``) times ``s``; QUANT 5: e2m1 times the e8m0 scale ``s`` (uint8, 2**(s - 127)),
    both decoded exactly by bit placement (:func:`moekit.kernels.quant.e2m1_value`)."""
    if QUANT == 4:
        if HAS_ZERO:
            v = code.to(tl.float32) - z.to(tl.float32)
        else:
            v = ((code ^ 8) - 8).to(tl.float32)
        return v * s
    return e2m1_value(code) * e8m0_value(s)


@triton.jit
def _load_packed(w_ptrs, s_ptrs, z_ptrs, mask, s_mask, QUANT: tl.constexpr, HAS_ZERO: tl.constexpr,
                 DT: tl.constexpr, ASM: tl.constexpr = False):
    """Packed int4 / e2m1 tile: [BLOCK_K / 2, BLOCK_N] bytes -> (even-K, odd-K) weight tiles in dtype DT.
    Byte j holds K index 2j in its low nibble and 2j+1 in its high one; both share a scale group (groups
    are even-sized), so ``s_ptrs`` / ``z_ptrs`` address one scale per byte row (or [1, BLOCK_N]). ``ASM``
    (DT bf16): decoded by inline PTX (int4: :func:`~moekit.kernels.quant.int4_bf16_scaled`, the scale rounded
    to bf16 first; mxfp4: :func:`~moekit.kernels.quant.mxfp4_bf16_scaled`, exact)."""
    raw = tl.load(w_ptrs, mask=mask, other=0)
    s = tl.load(s_ptrs, mask=s_mask, other=0)
    z = s
    if HAS_ZERO:
        z = tl.load(z_ptrs, mask=s_mask, other=0)
    if ASM and QUANT == 4:
        sb = tl.broadcast_to(s.to(tl.bfloat16), raw.shape)
        nz = tl.broadcast_to((-z.to(tl.float32)).to(tl.bfloat16), raw.shape)
        lo, hi = int4_bf16_scaled(raw, sb, nz, HAS_ZERO)
    elif ASM:  # mxfp4
        lo, hi = mxfp4_bf16_scaled(raw, tl.broadcast_to(e8m0_bf16(s), raw.shape))
    else:
        code = raw.to(tl.int32)
        lo = _decode_nibble(code & 0xF, s, z, QUANT, HAS_ZERO).to(DT)
        hi = _decode_nibble(code >> 4, s, z, QUANT, HAS_ZERO).to(DT)
    return lo, hi


@triton.jit
def _mx_dot_t(w_ptrs, s_ptrs, a_t, acc_t, n_ok, k_left, BLOCK_K: tl.constexpr, A_FMT: tl.constexpr):
    """One K step of an mxfp4 GEMM through ``tl.dot_scaled``, operands swapped: ``acc_t [BLOCK_N, BLOCK_M]
    += W [BLOCK_N, BLOCK_K] @ A^T [BLOCK_K, BLOCK_M]``. The weight is the scaled *left* operand (bytes
    [BLOCK_N, BLOCK_K / 2] read along K, e8m0 scales [BLOCK_N, BLOCK_K / 32]): on GPUs without native MX
    MMAs Triton decodes it in registers, and on Hopper the left wgmma operand may live in registers, so the
    decoded weight never goes through shared memory; the few token rows become the MMA's narrow N side."""
    kp_ok = tl.arange(0, BLOCK_K // 2) < k_left // 2
    w = tl.load(w_ptrs, mask=n_ok[:, None] & kp_ok[None, :], other=0)
    s = tl.load(s_ptrs, mask=n_ok[:, None] & (tl.arange(0, BLOCK_K // 32) < k_left // 32)[None, :], other=0)
    return tl.dot_scaled(w, s, "e2m1", a_t, None, A_FMT, acc_t)


@triton.jit
def _mx_asm_dot_t(w_ptrs, s_ptrs, ae_t, ao_t, acc_t, n_ok, k_left, BLOCK_N: tl.constexpr, G: tl.constexpr,
                  EVEN_K: tl.constexpr):
    """:func:`_mx_dot_t` for K steps of ``G`` 32-code scale groups (BLOCK_K = 32 G) with moekit's own decode:
    the bytes [BLOCK_N, 16 G] become bf16 through inline PTX (:func:`~moekit.kernels.quant.mxfp4_bf16_scaled`,
    each group's scale applied), and meet the even and odd K activations (``ae_t``, ``ao_t`` [16 G, BLOCK_M])
    in two dots. K is a multiple of 32 for mxfp4, so a step of one group is always whole; with ``G`` > 1 and
    not ``EVEN_K``, groups at or past ``k_left`` (K from this step on) are masked."""
    if G == 1 or EVEN_K:
        wmask = n_ok[:, None]
        smask = n_ok[:, None]
    else:
        wmask = n_ok[:, None] & (tl.arange(0, 16 * G) < k_left // 2)[None, :]
        smask = n_ok[:, None] & (tl.arange(0, G) < k_left // 32)[None, :]
    w = tl.load(w_ptrs, mask=wmask, other=0)
    s = e8m0_bf16(tl.load(s_ptrs, mask=smask, other=0))
    if G == 1:
        s = tl.broadcast_to(s, [BLOCK_N, 16])
    else:  # each group's scale over its 16 bytes
        s = tl.reshape(tl.broadcast_to(s[:, :, None], [BLOCK_N, G, 16]), [BLOCK_N, 16 * G])
    lo, hi = mxfp4_bf16_scaled(w, s)
    acc_t = tl.dot(lo, ae_t, acc_t)
    return tl.dot(hi, ao_t, acc_t)


@triton.jit
def _mx_words_dot_t(w_ptrs, s_ptrs, a_t, acc_t, n_ok, k_left, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    EVEN_K: tl.constexpr, PTX: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """:func:`_mx_dot_t` for weights in the ``mma`` layout: int32 words [BLOCK_N, BLOCK_K / 8] (BLOCK_K a
    multiple of 64) and their e8m0 scales [BLOCK_N, BLOCK_K / 32] decoded by
    :func:`~moekit.kernels.quant.mxfp4_mma_words` into K order, so one dot with the plain activations
    ``a_t`` [BLOCK_K, BLOCK_M] (no even / odd split). K is a multiple of 64 in this layout, so a masked step
    (not ``EVEN_K``) drops whole 64-code chunks at or past ``k_left``."""
    if EVEN_K:
        wmask = n_ok[:, None]
        smask = n_ok[:, None]
    else:
        wmask = n_ok[:, None] & ((tl.arange(0, BLOCK_K // 8) // 8) < k_left // 64)[None, :]
        smask = n_ok[:, None] & (tl.arange(0, BLOCK_K // 32) < k_left // 32)[None, :]
    w = tl.load(w_ptrs, mask=wmask, other=0)
    s = tl.load(s_ptrs, mask=smask, other=0)
    return tl.dot(mxfp4_mma_words(w, s, BLOCK_N, BLOCK_K // 64, a_t.dtype, PTX), a_t, acc_t,
                  input_precision=DOT_PRECISION)


#: Tiles of at most this many token rows pass the tokens of an mxfp4 "mma"-layout step through registers
#: (:func:`_mx_words_tokens`). Measured on the H100, gpt-oss-20b, whole forward, two source trees
#: (``benchmarks/ab_trees.py ... ab_mxfp4_layout.py --arms mma``, ``ab_mxfp4_mma_sync_trees_H100_session25.json``):
#: 32-row tiles M=16 / 64 / 256 1.057x / 1.084x / 1.076x, 128-row tiles (M=4096) 0.938x.
MX_WORDS_SYNC_ROWS = tl.constexpr(32)


@triton.jit
def _mx_words_tokens(a, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """The token tile ``a`` [BLOCK_M, BLOCK_K] as the right operand of an "mma"-layout step (transposed). In
    tiles of up to :data:`MX_WORDS_SYNC_ROWS` rows it goes through registers (a split and join that the compiler
    keeps), so the step's MMAs run as one synchronous group: straight from the pipelined shared-memory tile,
    Triton 3.6 splits the dot into 16-deep asynchronous MMAs that the register-operand form then waits for one
    by one (``tools/sass_loops.py gemm1_mxfp4 --mma``: 16 waits a step against 2)."""
    if BLOCK_M <= MX_WORDS_SYNC_ROWS:
        ae, ao = _split_k(a, BLOCK_M, BLOCK_K)
        t = tl.trans(tl.reshape(tl.join(ae, ao), (BLOCK_M, BLOCK_K)))
    else:
        t = tl.trans(a)
    return t


@triton.jit
def _split_k(a, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_M, BLOCK_K] -> (even K columns, odd K columns), each [BLOCK_M, BLOCK_K / 2]: the activation
    halves that meet the low and high nibbles of packed weights, so codes are never interleaved."""
    return tl.split(tl.reshape(a, (BLOCK_M, BLOCK_K // 2, 2)))


@triton.jit
def _weight_only_tiles(w_ptrs, s_ptrs, z_ptrs, wmask, n_ok, k, stride_bsk, DT: tl.constexpr,
                       QUANT: tl.constexpr, HAS_ZERO: tl.constexpr, GROUP_K: tl.constexpr, SCALE_TILE: tl.constexpr,
                       BLOCK_K: tl.constexpr, SWAP_AB: tl.constexpr = False, ASM: tl.constexpr = False):
    """The weight tiles of K step number ``k`` of a weight-only GEMM, decoded to dtype DT: int8 codes
    (QUANT 3) give (W, W), W [BLOCK_K, BLOCK_N]; packed int4 / e2m1 bytes (QUANT 4 / 5, [BLOCK_K / 2, BLOCK_N])
    give (W_even_k, W_odd_k). ``s_ptrs`` / ``z_ptrs``: this tile's scale and zero-point columns ([1, BLOCK_N])
    at K group 0; ``wmask``: the weight tile's in-range mask. ``SWAP_AB``: every tile transposed (K along the
    second axis: [BLOCK_N, BLOCK_K] codes, [BLOCK_N, BLOCK_K / 2] bytes; scale columns [BLOCK_N, 1]). Pair with
    :func:`_weight_only_dot`."""
    if SCALE_TILE:  # GROUP_K is a multiple of BLOCK_K: one scale per column for this K step
        kg = ((k * BLOCK_K) // GROUP_K) * stride_bsk
        smask = n_ok[:, None] if SWAP_AB else n_ok[None, :]
    else:
        if QUANT >= 4:  # one scale per byte row (its two codes share a group)
            kg = ((k * BLOCK_K + 2 * tl.arange(0, BLOCK_K // 2)) // GROUP_K) * stride_bsk
        else:
            kg = ((k * BLOCK_K + tl.arange(0, BLOCK_K)) // GROUP_K) * stride_bsk
        kg = kg[None, :] if SWAP_AB else kg[:, None]
        smask = wmask
    if QUANT == 3:
        b = _load_int8(w_ptrs, s_ptrs + kg, z_ptrs + kg, wmask, smask, HAS_ZERO, DT)
        return b, b
    else:
        return _load_packed(w_ptrs, s_ptrs + kg, z_ptrs + kg, wmask, smask, QUANT, HAS_ZERO, DT, ASM)


@triton.jit
def _weight_only_dot(acc, a, w0, w1, QUANT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                     DOT_PRECISION: tl.constexpr, SWAP_AB: tl.constexpr = False):
    """``acc += a [BLOCK_M, BLOCK_K] @ W`` for the tiles (w0, w1) of :func:`_weight_only_tiles`: packed weights
    meet the activation's even and odd K columns, so codes are never interleaved. ``SWAP_AB`` (16-bit
    activations on Hopper, :func:`moekit.quant.triton_moe.weight_only_swap_ab`): ``acc [BLOCK_N, BLOCK_M] += W
    @ a^T``, the decoded weight the MMA's left operand, which a warpgroup MMA reads from registers (it would
    otherwise be stored to shared memory every K step for the right operand), the tokens its N side."""
    if QUANT == 3:
        if SWAP_AB:
            acc = tl.dot(w0, tl.trans(a), acc)
        else:
            acc = tl.dot(a, w0, acc, input_precision=DOT_PRECISION)
    else:
        if SWAP_AB:  # the codes interleaved back into K order, so the token tile stays as loaded
            w = tl.reshape(tl.join(w0, w1), (w0.shape[0], BLOCK_K))
            acc = tl.dot(w, tl.trans(a), acc)
        else:
            a_even, a_odd = _split_k(a, BLOCK_M, BLOCK_K)
            acc = tl.dot(a_even, w0, acc, input_precision=DOT_PRECISION)
            acc = tl.dot(a_odd, w1, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _tile_rows_cols(row0, pid_m, pid_n, sorted_ptr, experts_ptr, num_slots, n_cols, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """One output tile of either GEMM: its rows of ``sorted`` from ``row0`` (positions, slot ids, which are real
    slots), its expert (tile ``pid_m``'s, int64) and its columns (and which are in range)."""
    offs_m = row0 + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_ptr + offs_m)
    expert = tl.load(experts_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, slot, slot < num_slots, expert, offs_n, offs_n < n_cols


@triton.jit
def _weight_tile_ptrs(w_ptr, s_ptr, expert, offs_n, stride_we, stride_wn, stride_bse, stride_bsn, stride_bsk,
                      BLOCK_K: tl.constexpr, QUANT: tl.constexpr, MX_DOT: tl.constexpr, SWAP_AB: tl.constexpr = False,
                      MX_WORDS: tl.constexpr = False):
    """Pointers to the first K step's weight tile of expert ``expert``, columns ``offs_n``: [BLOCK_K, BLOCK_N]
    elements; SWAP_AB (operands swapped, see :func:`_mma_step` and :func:`_weight_only_dot`) [BLOCK_N, BLOCK_K]
    (packed: [BLOCK_N, BLOCK_K / 2] bytes); packed 4-bit (QUANT >= 4) [BLOCK_K / 2, BLOCK_N] bytes; MX_DOT
    (operands swapped, see :func:`_mx_dot_t`) [BLOCK_N, BLOCK_K / 2] bytes plus its e8m0 scales [BLOCK_N,
    BLOCK_K / 32] (second result; otherwise the weight pointers again, unused); MX_WORDS (the ``mma`` layout,
    ``w_ptr`` int32) [BLOCK_N, BLOCK_K / 8] words plus the same scales."""
    n64 = offs_n.to(tl.int64)
    base = w_ptr + expert * stride_we
    if MX_DOT:
        if MX_WORDS:  # 8 codes per int32 word
            cols = tl.arange(0, BLOCK_K // 8)
        else:  # 2 codes per byte
            cols = tl.arange(0, BLOCK_K // 2)
        w = base + n64[:, None] * stride_wn + cols[None, :]
        sc = s_ptr + expert * stride_bse + n64[:, None] * stride_bsn + tl.arange(0, BLOCK_K // 32)[None, :] * stride_bsk
    elif SWAP_AB and QUANT >= 4:  # packed weight-only, transposed: [BLOCK_N, BLOCK_K / 2] bytes
        w = base + n64[:, None] * stride_wn + tl.arange(0, BLOCK_K // 2)[None, :]
        sc = w
    elif SWAP_AB:
        w = base + n64[:, None] * stride_wn + tl.arange(0, BLOCK_K)[None, :]
        sc = w
    elif QUANT >= 4:
        w = base + n64[None, :] * stride_wn + tl.arange(0, BLOCK_K // 2)[:, None]
        sc = w
    else:
        w = base + n64[None, :] * stride_wn + tl.arange(0, BLOCK_K)[:, None]
        sc = w
    return w, sc


@triton.jit
def _weight_scale_cols(expert, offs_n, stride_bse, stride_bsn, SWAP_AB: tl.constexpr):
    """Offsets of a weight-only tile's scale (and zero-point) columns at K group 0: [1, BLOCK_N], or [BLOCK_N, 1]
    with ``SWAP_AB`` (the layouts of :func:`_weight_only_tiles`)."""
    n = offs_n.to(tl.int64) * stride_bsn
    if SWAP_AB:
        off = expert * stride_bse + n[:, None]
    else:
        off = expert * stride_bse + n[None, :]
    return off


@triton.jit
def _weight_mask(k_ok, offs_kp, k_left, n_ok, QUANT: tl.constexpr, SWAP_AB: tl.constexpr):
    """The in-range mask of a weight-only tile of :func:`_weight_tile_ptrs` (``k_left`` = K from this step on):
    K rows (packed 4-bit: byte rows, ``offs_kp``) by N columns, transposed with ``SWAP_AB``."""
    if QUANT >= 4:
        kw = offs_kp < k_left // 2
    else:
        kw = k_ok
    if SWAP_AB:
        mask = n_ok[:, None] & kw[None, :]
    else:
        mask = kw[:, None] & n_ok[None, :]
    return mask


@triton.jit
def _tile_start(pid_m, npp_ptr, tiles_ptr, BLOCK_M: tl.constexpr, TAILS: tl.constexpr):
    """Tile ``pid_m`` of the alignment: (its first row of ``sorted``, h, whether it is used), the tile having
    ``BLOCK_M >> h`` rows. ``TAILS`` = 0: rows [pid_m * BLOCK_M, + BLOCK_M), used below the used length ``npp``;
    else the alignment's tile list, first row + h per tile (rows are multiples of 16, h <= ``TAILS``, -1: unused)."""
    if TAILS == 0:
        return pid_m * BLOCK_M, 0, pid_m * BLOCK_M < tl.load(npp_ptr)
    else:
        info = tl.load(tiles_ptr + pid_m)
        return info - info % 16, info % 16, info >= 0


@triton.jit
def _mma_tile(ptrs, n_ok, k_ok, EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr):
    """The weight tile of one K step of an unquantized or w8a8 GEMM: [BLOCK_K, BLOCK_N], or [BLOCK_N, BLOCK_K] with
    ``SWAP_AB`` (:func:`_mma_step`); columns past N (and K, unless ``EVEN_K``) read as zero."""
    if SWAP_AB:
        mask = n_ok[:, None] if EVEN_K else n_ok[:, None] & k_ok[None, :]
    else:
        mask = n_ok[None, :] if EVEN_K else k_ok[:, None] & n_ok[None, :]
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _mma_step(acc, a, b, a_s, b_s, QUANT: tl.constexpr, INT_ACC: tl.constexpr, SWAP_AB: tl.constexpr,
              DOT_PRECISION: tl.constexpr):
    """One K step of an unquantized (QUANT 0) or w8a8 (1, 2) GEMM: ``acc [BLOCK_M, BLOCK_N] += A [BLOCK_M, BLOCK_K]
    @ W`` with the tile of :func:`_mma_tile`. QUANT 2 (blocks): the product is scaled by ``a_s [BLOCK_M] x b_s
    [BLOCK_N]`` (this step's activation and weight scales); otherwise the accumulator is carried (int32 for int8)
    and any scales come in the epilogue.

    ``SWAP_AB`` (w8a8): the operands swapped, ``acc [BLOCK_N, BLOCK_M] += W [BLOCK_N, BLOCK_K] @ A^T``. With few
    token rows per tile (BLOCK_M < 64) the weight rows become the MMA's M side and the tokens its narrow N side,
    so Hopper runs 8-bit warpgroup MMAs on the codes as they are instead of upcasting both tiles to float16 for
    ``mma.sync`` (:func:`moekit.quant.triton_moe.w8a8_swap_ab` says where)."""
    if SWAP_AB:
        if QUANT == 2:
            return acc + tl.dot(b, tl.trans(a)) * (b_s[:, None] * a_s[None, :])
        elif INT_ACC:
            return tl.dot(b, tl.trans(a), acc, out_dtype=tl.int32)
        else:
            return tl.dot(b, tl.trans(a), acc)
    elif QUANT == 2:
        return acc + tl.dot(a, b) * (a_s[:, None] * b_s[None, :])
    elif INT_ACC:
        return tl.dot(a, b, acc, out_dtype=tl.int32)
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _gemm1_tile(
    row0, pid_m, pid_n, x_ptr, w_ptr, out_ptr, sorted_ptr, experts_ptr, I, K, num_slots, top_k, stride_xm, stride_we,
    stride_wn, stride_om, up_offset, ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, a_scale_ptr=None, b_scale_ptr=None,
    b_zero_ptr=None, out_scale_ptr=None, stride_asm=0, stride_ask=0, stride_bse=0, stride_bsn=0, stride_bsk=0,
    stride_osm=0, QUANT: tl.constexpr = 0, INT_ACC: tl.constexpr = False, HAS_ZERO: tl.constexpr = False,
    GROUP_N: tl.constexpr = 1, GROUP_K: tl.constexpr = 1, SCALE_TILE: tl.constexpr = False,
    OUT_QUANT: tl.constexpr = 0, QKIND: tl.constexpr = 0, QMAX: tl.constexpr = 448.0, EMIN: tl.constexpr = -6,
    MX_DOT: tl.constexpr = False, A_FMT: tl.constexpr = "bf16", bias_ptr=None, stride_bias_e=0,
    HAS_BIAS: tl.constexpr = False, ASM_DECODE: tl.constexpr = False, SWAP_AB: tl.constexpr = False,
    MX_WORDS: tl.constexpr = False
):
    """One output tile of GEMM 1: BLOCK_M rows of ``sorted`` from ``row0``, columns of block ``pid_n``."""
    offs_m, slot, row_ok, expert, offs_n, n_ok = _tile_rows_cols(row0, pid_m, pid_n, sorted_ptr, experts_ptr,
                                                                 num_slots, I, BLOCK_M, BLOCK_N)
    token = (slot // top_k).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_K // 2)  # byte rows of a packed 4-bit K step
    x_ptrs = x_ptr + token[:, None] * stride_xm + offs_k[None, :]
    g_ptrs, sgt_ptrs = _weight_tile_ptrs(w_ptr, b_scale_ptr, expert, offs_n, stride_we, stride_wn, stride_bse,
                                         stride_bsn, stride_bsk, BLOCK_K, QUANT, MX_DOT, SWAP_AB, MX_WORDS)
    u_ptrs = g_ptrs + up_offset
    if MX_DOT:
        sut_ptrs = sgt_ptrs + I * stride_bsn
    if QUANT >= 3:
        sg_off = _weight_scale_cols(expert, offs_n, stride_bse, stride_bsn, SWAP_AB)
        su_off = sg_off + I * stride_bsn
    if QUANT == 2:
        as_ptrs = a_scale_ptr + token * stride_asm
        bsg_ptrs = b_scale_ptr + expert * stride_bse + (offs_n // GROUP_N) * stride_bsn
        bsu_ptrs = b_scale_ptr + expert * stride_bse + ((offs_n + I) // GROUP_N) * stride_bsn
    if SWAP_AB and INT_ACC:  # transposed accumulators
        acc_g = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
        acc_u = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
    elif MX_DOT or SWAP_AB:
        acc_g = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    elif INT_ACC:
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    else:
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            k_ok = offs_k < BLOCK_K
            a = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0)
        else:
            k_ok = offs_k < K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wmask = _weight_mask(k_ok, offs_kp, K - k * BLOCK_K, n_ok, QUANT, SWAP_AB)
        if MX_DOT:  # mxfp4 in the swapped layout
            ks = (k * (BLOCK_K // 32)) * stride_bsk
            if MX_WORDS:  # the mma layout: decoded into K order (inline PTX with ASM_DECODE)
                a_t = _mx_words_tokens(a, BLOCK_M, BLOCK_K)
                acc_g = _mx_words_dot_t(g_ptrs, sgt_ptrs + ks, a_t, acc_g, n_ok, K - k * BLOCK_K, BLOCK_N, BLOCK_K,
                                        EVEN_K, ASM_DECODE, DOT_PRECISION)
                acc_u = _mx_words_dot_t(u_ptrs, sut_ptrs + ks, a_t, acc_u, n_ok, K - k * BLOCK_K, BLOCK_N, BLOCK_K,
                                        EVEN_K, ASM_DECODE, DOT_PRECISION)
            elif ASM_DECODE:  # decoded by inline PTX
                ae, ao = _split_k(a, BLOCK_M, BLOCK_K)
                ae_t = tl.trans(ae)
                ao_t = tl.trans(ao)
                acc_g = _mx_asm_dot_t(g_ptrs, sgt_ptrs + ks, ae_t, ao_t, acc_g, n_ok, K - k * BLOCK_K, BLOCK_N,
                                      BLOCK_K // 32, EVEN_K)
                acc_u = _mx_asm_dot_t(u_ptrs, sut_ptrs + ks, ae_t, ao_t, acc_u, n_ok, K - k * BLOCK_K, BLOCK_N,
                                      BLOCK_K // 32, EVEN_K)
            else:  # decoded by tl.dot_scaled
                a_t = tl.trans(a)
                acc_g = _mx_dot_t(g_ptrs, sgt_ptrs + ks, a_t, acc_g, n_ok, K - k * BLOCK_K, BLOCK_K, A_FMT)
                acc_u = _mx_dot_t(u_ptrs, sut_ptrs + ks, a_t, acc_u, n_ok, K - k * BLOCK_K, BLOCK_K, A_FMT)
        elif QUANT >= 3:
            # Order measured on the H100 (qwen3 shape): int8 decodes both tiles before the dots (4.5 % faster
            # at M=4096 than gate-then-up); packed weights go gate-then-up (4.5 % faster at M=1024).
            g0, g1 = _weight_only_tiles(g_ptrs, b_scale_ptr + sg_off, b_zero_ptr + sg_off, wmask, n_ok, k, stride_bsk,
                                        a.dtype, QUANT, HAS_ZERO, GROUP_K, SCALE_TILE, BLOCK_K, SWAP_AB,
                                        ASM_DECODE)
            if QUANT == 3:
                u0, u1 = _weight_only_tiles(u_ptrs, b_scale_ptr + su_off, b_zero_ptr + su_off, wmask, n_ok, k,
                                            stride_bsk, a.dtype, QUANT, HAS_ZERO, GROUP_K, SCALE_TILE, BLOCK_K,
                                            SWAP_AB, ASM_DECODE)
            acc_g = _weight_only_dot(acc_g, a, g0, g1, QUANT, BLOCK_M, BLOCK_K, DOT_PRECISION, SWAP_AB)
            if QUANT != 3:
                u0, u1 = _weight_only_tiles(u_ptrs, b_scale_ptr + su_off, b_zero_ptr + su_off, wmask, n_ok, k,
                                            stride_bsk, a.dtype, QUANT, HAS_ZERO, GROUP_K, SCALE_TILE, BLOCK_K,
                                            SWAP_AB, ASM_DECODE)
            acc_u = _weight_only_dot(acc_u, a, u0, u1, QUANT, BLOCK_M, BLOCK_K, DOT_PRECISION, SWAP_AB)
        else:  # unquantized or w8a8
            bg = _mma_tile(g_ptrs, n_ok, k_ok, EVEN_K, SWAP_AB)
            bu = _mma_tile(u_ptrs, n_ok, k_ok, EVEN_K, SWAP_AB)
            a_s = 1.0
            s_g = 1.0
            s_u = 1.0
            if QUANT == 2:
                kb = (k * BLOCK_K) // GROUP_K
                a_s = tl.load(as_ptrs + kb * stride_ask, mask=row_ok, other=0.0)
                s_g = tl.load(bsg_ptrs + kb * stride_bsk, mask=n_ok, other=0.0)
                s_u = tl.load(bsu_ptrs + kb * stride_bsk, mask=n_ok, other=0.0)
            acc_g = _mma_step(acc_g, a, bg, a_s, s_g, QUANT, INT_ACC, SWAP_AB, DOT_PRECISION)
            acc_u = _mma_step(acc_u, a, bu, a_s, s_u, QUANT, INT_ACC, SWAP_AB, DOT_PRECISION)
        x_ptrs += BLOCK_K
        if MX_WORDS:
            g_ptrs += BLOCK_K // 8
            u_ptrs += BLOCK_K // 8
        elif QUANT >= 4:
            g_ptrs += BLOCK_K // 2
            u_ptrs += BLOCK_K // 2
        else:
            g_ptrs += BLOCK_K
            u_ptrs += BLOCK_K
    if MX_DOT or SWAP_AB:
        acc_g = tl.trans(acc_g)
        acc_u = tl.trans(acc_u)
    if QUANT == 1:
        a_s = tl.load(a_scale_ptr + token * stride_asm, mask=row_ok, other=0.0)[:, None]
        bs_ptrs = b_scale_ptr + expert * stride_bse + offs_n * stride_bsn
        acc_g = acc_g.to(tl.float32) * (a_s * tl.load(bs_ptrs, mask=n_ok, other=0.0)[None, :])
        acc_u = acc_u.to(tl.float32) * (a_s * tl.load(bs_ptrs + I * stride_bsn, mask=n_ok, other=0.0)[None, :])
    if HAS_BIAS:  # gpt-oss: the expert's bias row, gate columns then up columns
        b_ptrs = bias_ptr + expert * stride_bias_e + offs_n
        acc_g = acc_g.to(tl.float32) + tl.load(b_ptrs, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc_u = acc_u.to(tl.float32) + tl.load(b_ptrs + I, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    h = gate_up(acc_g.to(tl.float32), acc_u.to(tl.float32), ACTIVATION)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    if OUT_QUANT == 0 or OUT_QUANT == 3:
        o = h.to(out_ptr.dtype.element_ty)
        tl.store(out_ptrs, o, mask=n_ok[None, :])
        if OUT_QUANT == 3:  # running max |out| of the whole output: float32 bits, >= 0, so ordered as int32
            t = abs_max(abs_max(tl.where(n_ok[None, :], o.to(tl.float32), 0.0), 1), 0)
            tl.atomic_max(out_scale_ptr.to(tl.pointer_type(tl.int32)), t.to(tl.int32, bitcast=True), sem="relaxed")
    else:
        hf = tl.where(n_ok[None, :], h, 0.0)
        if OUT_QUANT == 1:  # this program's BLOCK_N columns are one quantization group
            o_s = scale_from_amax(abs_max(hf, 1), 1.0 / QMAX, _MIN_SCALE)
            tl.store(out_scale_ptr + offs_m.to(tl.int64) * stride_osm + pid_n, o_s)
            q = quantize_values(hf, o_s[:, None], QKIND, QMAX, EMIN)
        else:
            q = quantize_values(hf, tl.load(out_scale_ptr), QKIND, QMAX, EMIN)
        tl.store(out_ptrs, q.to(out_ptr.dtype.element_ty), mask=n_ok[None, :])


@triton.jit
def _moe_gemm1_kernel(
    x_ptr, w_ptr, out_ptr, sorted_ptr, experts_ptr, npp_ptr,
    I, K, num_slots, top_k, num_pid_m,
    stride_xm, stride_we, stride_wn, stride_om, up_offset,
    ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    a_scale_ptr=None, b_scale_ptr=None, b_zero_ptr=None, out_scale_ptr=None,
    stride_asm=0, stride_ask=0, stride_bse=0, stride_bsn=0, stride_bsk=0, stride_osm=0,
    QUANT: tl.constexpr = 0, INT_ACC: tl.constexpr = False, HAS_ZERO: tl.constexpr = False,
    GROUP_N: tl.constexpr = 1, GROUP_K: tl.constexpr = 1, SCALE_TILE: tl.constexpr = False,
    OUT_QUANT: tl.constexpr = 0,
    QKIND: tl.constexpr = 0, QMAX: tl.constexpr = 448.0, EMIN: tl.constexpr = -6,
    MX_DOT: tl.constexpr = False, A_FMT: tl.constexpr = "bf16",
    bias_ptr=None, stride_bias_e=0, HAS_BIAS: tl.constexpr = False, ASM_DECODE: tl.constexpr = False,
    tiles_ptr=None, TAILS: tl.constexpr = 0, SWAP_AB: tl.constexpr = False, PDL: tl.constexpr = False,
    MX_WORDS: tl.constexpr = False,
):
    """GEMM 1 over the alignment's tiles (:func:`_tile_start`); each tile height is its own code path."""
    pdl.chain(PDL)
    pid_m, pid_n = tile_ids(tl.program_id(0), num_pid_m, tl.cdiv(I, BLOCK_N), GROUP_M)
    row0, halvings, used = _tile_start(pid_m, npp_ptr, tiles_ptr, BLOCK_M, TAILS)
    if not used:
        return
    for s in tl.static_range(0, TAILS + 1):
        if halvings == s:
            _gemm1_tile(row0, pid_m, pid_n, x_ptr, w_ptr, out_ptr, sorted_ptr, experts_ptr, I, K, num_slots, top_k,
                stride_xm, stride_we, stride_wn, stride_om, up_offset, ACTIVATION, DOT_PRECISION, EVEN_K, BLOCK_M >> s,
                BLOCK_N, BLOCK_K, a_scale_ptr, b_scale_ptr, b_zero_ptr, out_scale_ptr, stride_asm, stride_ask,
                stride_bse, stride_bsn, stride_bsk, stride_osm, QUANT, INT_ACC, HAS_ZERO, GROUP_N, GROUP_K, SCALE_TILE,
                OUT_QUANT, QKIND, QMAX, EMIN, MX_DOT, A_FMT, bias_ptr, stride_bias_e, HAS_BIAS, ASM_DECODE, SWAP_AB,
                MX_WORDS)


@triton.jit
def _rescaled_groups(a, as_ptrs, ka0, stride_ask, K, BLOCK_K: tl.constexpr, GROUP_KA: tl.constexpr):
    """One fp8 block K step of GEMM 2's activation, [BLOCK_M, BLOCK_K] codes spanning ``BLOCK_K / GROUP_KA``
    scale groups (first group ``ka0``; scales at ``as_ptrs`` [BLOCK_M] + group * ``stride_ask``), as one float16
    MMA operand: each group's codes times its scale over the row's largest scale in the step (a ratio <= 1, so
    |values| <= the fp8 maximum and float16 never overflows; 11 significant bits against fp8's 4). Returns
    (operand, that largest scale [BLOCK_M]); the dot's result is multiplied by the scale afterwards. Groups past
    K read no scale. A NaN scale makes its row's products NaN (its ratio is NaN)."""
    offs_g = tl.arange(0, BLOCK_K) // GROUP_KA
    ref = tl.load(as_ptrs + ka0 * stride_ask)
    for j in tl.static_range(1, BLOCK_K // GROUP_KA):
        ref = tl.maximum(ref, tl.load(as_ptrs + (ka0 + j) * stride_ask, mask=(ka0 + j) * GROUP_KA < K, other=0.0))
    factor = tl.zeros(a.shape, dtype=tl.float32)
    for j in tl.static_range(BLOCK_K // GROUP_KA):
        s_j = tl.load(as_ptrs + (ka0 + j) * stride_ask, mask=(ka0 + j) * GROUP_KA < K, other=0.0)
        factor = tl.where((offs_g == j)[None, :], (s_j / ref)[:, None], factor)
    return (a.to(tl.float32) * factor).to(tl.float16), ref


@triton.jit
def _gemm2_tile(
    row0, pid_m, pid_n, a_ptr, w_ptr, y_ptr, topk_w_ptr, sorted_ptr, experts_ptr, N, K, num_slots, stride_am,
    stride_we, stride_wn, stride_ym, MUL_WEIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, a_scale_ptr=None, b_scale_ptr=None,
    b_zero_ptr=None, stride_asm=0, stride_ask=0, stride_bse=0, stride_bsn=0, stride_bsk=0, QUANT: tl.constexpr = 0,
    INT_ACC: tl.constexpr = False, HAS_ZERO: tl.constexpr = False, GROUP_N: tl.constexpr = 1,
    GROUP_K: tl.constexpr = 1, SCALE_TILE: tl.constexpr = False, MX_DOT: tl.constexpr = False,
    A_FMT: tl.constexpr = "bf16", GROUP_KA: tl.constexpr = 1, bias_ptr=None, stride_bias_e=0,
    HAS_BIAS: tl.constexpr = False, ASM_DECODE: tl.constexpr = False, SWAP_AB: tl.constexpr = False,
    MX_WORDS: tl.constexpr = False
):
    """One output tile of GEMM 2: BLOCK_M rows of ``sorted`` from ``row0``, columns of block ``pid_n``."""
    offs_m, slot, row_ok, expert, offs_n, n_ok = _tile_rows_cols(row0, pid_m, pid_n, sorted_ptr, experts_ptr,
                                                                 num_slots, N, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_K // 2)  # byte rows of a packed 4-bit K step
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    b_ptrs, st_ptrs = _weight_tile_ptrs(w_ptr, b_scale_ptr, expert, offs_n, stride_we, stride_wn, stride_bse,
                                        stride_bsn, stride_bsk, BLOCK_K, QUANT, MX_DOT, SWAP_AB, MX_WORDS)
    if QUANT >= 3:
        s_off = _weight_scale_cols(expert, offs_n, stride_bse, stride_bsn, SWAP_AB)
    if QUANT == 2:
        as_ptrs = a_scale_ptr + offs_m.to(tl.int64) * stride_asm
        bs_ptrs = b_scale_ptr + expert * stride_bse + (offs_n // GROUP_N) * stride_bsn
    if SWAP_AB and INT_ACC:  # transposed accumulator
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
    elif MX_DOT or SWAP_AB:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    elif INT_ACC:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            k_ok = offs_k < BLOCK_K
            a = tl.load(a_ptrs)
        else:
            k_ok = offs_k < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
        wmask = _weight_mask(k_ok, offs_kp, K - k * BLOCK_K, n_ok, QUANT, SWAP_AB)
        if MX_DOT:  # mxfp4 in the swapped layout
            ks = (k * (BLOCK_K // 32)) * stride_bsk
            if MX_WORDS:  # the mma layout: decoded into K order (inline PTX with ASM_DECODE)
                acc = _mx_words_dot_t(b_ptrs, st_ptrs + ks, _mx_words_tokens(a, BLOCK_M, BLOCK_K), acc, n_ok,
                                      K - k * BLOCK_K, BLOCK_N, BLOCK_K, EVEN_K, ASM_DECODE, DOT_PRECISION)
            elif ASM_DECODE:  # decoded by inline PTX
                ae, ao = _split_k(a, BLOCK_M, BLOCK_K)
                acc = _mx_asm_dot_t(b_ptrs, st_ptrs + ks, tl.trans(ae), tl.trans(ao), acc, n_ok, K - k * BLOCK_K,
                                    BLOCK_N, BLOCK_K // 32, EVEN_K)
            else:  # decoded by tl.dot_scaled
                acc = _mx_dot_t(b_ptrs, st_ptrs + ks, tl.trans(a), acc, n_ok, K - k * BLOCK_K, BLOCK_K, A_FMT)
        elif QUANT >= 3:
            b0, b1 = _weight_only_tiles(b_ptrs, b_scale_ptr + s_off, b_zero_ptr + s_off, wmask, n_ok, k, stride_bsk,
                                        a.dtype, QUANT, HAS_ZERO, GROUP_K, SCALE_TILE, BLOCK_K, SWAP_AB,
                                        ASM_DECODE)
            acc = _weight_only_dot(acc, a, b0, b1, QUANT, BLOCK_M, BLOCK_K, DOT_PRECISION, SWAP_AB)
        else:  # unquantized or w8a8
            b = _mma_tile(b_ptrs, n_ok, k_ok, EVEN_K, SWAP_AB)
            a_s = 1.0
            b_s = 1.0
            if QUANT == 2:
                b_s = tl.load(bs_ptrs + ((k * BLOCK_K) // GROUP_K) * stride_bsk, mask=n_ok, other=0.0)
                if GROUP_KA < BLOCK_K:  # the step spans several activation groups (GEMM 1's BLOCK_N is finer)
                    a, a_s = _rescaled_groups(a, as_ptrs, k * (BLOCK_K // GROUP_KA), stride_ask, K, BLOCK_K, GROUP_KA)
                    b = b.to(tl.float16)
                else:
                    a_s = tl.load(as_ptrs + ((k * BLOCK_K) // GROUP_KA) * stride_ask)
            acc = _mma_step(acc, a, b, a_s, b_s, QUANT, INT_ACC, SWAP_AB, DOT_PRECISION)
        a_ptrs += BLOCK_K
        if MX_WORDS:
            b_ptrs += BLOCK_K // 8
        elif QUANT >= 4:
            b_ptrs += BLOCK_K // 2
        else:
            b_ptrs += BLOCK_K
    if MX_DOT or SWAP_AB:
        acc = tl.trans(acc)
    if QUANT == 1:
        a_s = tl.load(a_scale_ptr + offs_m.to(tl.int64) * stride_asm)[:, None]
        acc = acc.to(tl.float32) * (a_s * tl.load(b_scale_ptr + expert * stride_bse + offs_n * stride_bsn,
                                                  mask=n_ok, other=0.0)[None, :])
    if HAS_BIAS:  # before the routing weight, as the bias belongs to the expert's linear layer
        acc = acc.to(tl.float32) + tl.load(bias_ptr + expert * stride_bias_e + offs_n, mask=n_ok,
                                           other=0.0).to(tl.float32)[None, :]
    if MUL_WEIGHT:
        acc = acc * tl.load(topk_w_ptr + slot, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    y_ptrs = y_ptr + slot.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _moe_gemm2_kernel(
    a_ptr, w_ptr, y_ptr, topk_w_ptr, sorted_ptr, experts_ptr, npp_ptr,
    N, K, num_slots, num_pid_m,
    stride_am, stride_we, stride_wn, stride_ym,
    MUL_WEIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    a_scale_ptr=None, b_scale_ptr=None, b_zero_ptr=None,
    stride_asm=0, stride_ask=0, stride_bse=0, stride_bsn=0, stride_bsk=0,
    QUANT: tl.constexpr = 0, INT_ACC: tl.constexpr = False, HAS_ZERO: tl.constexpr = False,
    GROUP_N: tl.constexpr = 1, GROUP_K: tl.constexpr = 1, SCALE_TILE: tl.constexpr = False,
    MX_DOT: tl.constexpr = False, A_FMT: tl.constexpr = "bf16", GROUP_KA: tl.constexpr = 1,
    bias_ptr=None, stride_bias_e=0, HAS_BIAS: tl.constexpr = False, ASM_DECODE: tl.constexpr = False,
    tiles_ptr=None, TAILS: tl.constexpr = 0, SWAP_AB: tl.constexpr = False, PDL: tl.constexpr = False,
    MX_WORDS: tl.constexpr = False,
):
    """GEMM 2 over the alignment's tiles (:func:`_tile_start`); each tile height is its own code path."""
    pdl.chain(PDL)
    pid_m, pid_n = tile_ids(tl.program_id(0), num_pid_m, tl.cdiv(N, BLOCK_N), GROUP_M)
    row0, halvings, used = _tile_start(pid_m, npp_ptr, tiles_ptr, BLOCK_M, TAILS)
    if not used:
        return
    for s in tl.static_range(0, TAILS + 1):
        if halvings == s:
            _gemm2_tile(row0, pid_m, pid_n, a_ptr, w_ptr, y_ptr, topk_w_ptr, sorted_ptr, experts_ptr, N, K, num_slots,
                stride_am, stride_we, stride_wn, stride_ym, MUL_WEIGHT, DOT_PRECISION, EVEN_K, BLOCK_M >> s, BLOCK_N,
                BLOCK_K, a_scale_ptr, b_scale_ptr, b_zero_ptr, stride_asm, stride_ask, stride_bse, stride_bsn,
                stride_bsk, QUANT, INT_ACC, HAS_ZERO, GROUP_N, GROUP_K, SCALE_TILE, MX_DOT, A_FMT, GROUP_KA, bias_ptr,
                stride_bias_e, HAS_BIAS, ASM_DECODE, SWAP_AB, MX_WORDS)


@dataclasses.dataclass
class GemmQuant:
    """Quantization operands of one GEMM launch (see the module docstring for the modes).

    ``a_scale`` is indexed ``row * stride_asm + kgroup * stride_ask`` (row = token in GEMM 1, sorted row in
    GEMM 2; strides 0 broadcast one scale); ``b_scale`` (and ``b_zero``, same shape) ``expert * s0 +
    n_or_nblock * s1 + kgroup * s2``. ``out_*``: GEMM 1's output quantization."""

    mode: int
    a_scale: Optional[torch.Tensor] = None
    a_strides: Tuple[int, int] = (0, 0)
    b_scale: Optional[torch.Tensor] = None
    b_strides: Tuple[int, int, int] = (0, 0, 0)
    b_zero: Optional[torch.Tensor] = None
    group_n: int = 1
    group_k: int = 1
    int_acc: bool = False
    out_quant: int = 0
    out_scale: Optional[torch.Tensor] = None
    out_stride: int = 0
    out_qparams: Tuple[int, float, int] = (0, 448.0, -6)  # (qkind, qmax, emin)
    scale_tile: bool = False  # weight-only: the K group is a multiple of BLOCK_K (one scale per column per step)
    mx_dot: bool = False  # mxfp4 in the swapped layout, by tl.dot_scaled unless asm_decode (else: in-kernel decode)
    asm_decode: bool = False  # weights decoded by inline PTX: mxfp4 with mx_dot (instead of tl.dot_scaled, BLOCK_K
    # 32-128, bf16), int4 (bf16; instead of Triton ops)
    a_group_k: int = 0  # GEMM 2, fp8 block: the activation scale's K group when finer than the weight's (0: same)
    swap_ab: bool = False  # w8a8 (modes 1, 2) and int8 / int4 weight-only (3, 4): weight tiles as the MMA's left
    # operand (see _mma_step, _weight_only_dot)
    mx_words: bool = False  # mxfp4 in the mma layout (with mx_dot; the launchers pass the weights as int32 words)

    @property
    def packed(self) -> bool:
        return self.mode >= 4

    def kernel_args(self, gemm1: bool) -> dict:
        d = dict(
            a_scale_ptr=self.a_scale, b_scale_ptr=self.b_scale,
            b_zero_ptr=self.b_zero if self.b_zero is not None else self.b_scale,
            stride_asm=self.a_strides[0], stride_ask=self.a_strides[1], stride_bse=self.b_strides[0],
            stride_bsn=self.b_strides[1], stride_bsk=self.b_strides[2], QUANT=self.mode, INT_ACC=self.int_acc,
            HAS_ZERO=self.b_zero is not None, GROUP_N=self.group_n, GROUP_K=self.group_k,
            SCALE_TILE=self.scale_tile, MX_DOT=self.mx_dot, ASM_DECODE=self.asm_decode, SWAP_AB=self.swap_ab,
            MX_WORDS=self.mx_words,
        )
        if not gemm1:
            d.update(GROUP_KA=self.a_group_k or self.group_k)
        if gemm1:
            qkind, qmax, emin = self.out_qparams
            d.update(out_scale_ptr=self.out_scale, stride_osm=self.out_stride, OUT_QUANT=self.out_quant,
                     QKIND=qkind, QMAX=qmax, EMIN=emin)
        return d


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs are multiplied exactly ("ieee"), not in tf32: users who pass float32 expect float32.
    return "ieee" if dtype == torch.float32 else "tf32"


def _mx_format(quant, dtype: torch.dtype) -> dict:
    """``tl.dot_scaled``'s name for the activation format (only passed when the launch uses it)."""
    if quant is None or not quant.mx_dot or quant.mx_words:
        return {}
    return {"A_FMT": {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]}


def _bias_args(bias: Optional[torch.Tensor]) -> dict:
    """Kernel arguments of an expert bias [E, N] (contiguous last dimension); {} without one."""
    if bias is None:
        return {}
    return dict(bias_ptr=bias, stride_bias_e=bias.stride(0), HAS_BIAS=True)


def _tile_args(tile_rows: Optional[torch.Tensor], block_m: int, min_tile: int) -> dict:
    """Kernel arguments of the alignment's tail tiles (:mod:`moekit.align`); {} without them."""
    if tile_rows is None or not min_tile or min_tile >= block_m:
        return {}
    return dict(tiles_ptr=tile_rows, TAILS=(block_m // min_tile).bit_length() - 1)


def moe_gemm1(x, w13, out, sorted_ids, expert_ids, npp, top_k, config, activation="silu", quant=None, bias=None,
              tile_rows=None, min_tile=0):
    """out[P, I] = act(x[tok] @ w13[e, :I].T) * (x[tok] @ w13[e, I:].T) for each sorted slot's expert e.
    ``quant``: a :class:`GemmQuant` (None: unquantized). ``bias``: optional [E, 2I] added to the gate and up
    halves before the activation. ``tile_rows`` / ``min_tile``: the alignment's tail tiles (an
    :class:`~moekit.align.AlignedSlots`' fields; None / 0: none)."""
    i2, k = w13.shape[1], x.shape[1]
    i = i2 // 2
    if quant is not None and quant.mx_words:
        w13 = w13.view(torch.int32)  # the mma layout: 32-bit words (strides and up_offset in words)
    num_pid_m = expert_ids.shape[0]
    bm, bn, bk = config.BLOCK_SIZE_M, config.BLOCK_SIZE_N, config.BLOCK_SIZE_K
    grid = (num_pid_m * triton.cdiv(i, bn),)
    _moe_gemm1_kernel[grid](
        x, w13, out, sorted_ids, expert_ids, npp,
        i, k, x.shape[0] * top_k, top_k, num_pid_m,
        x.stride(0), w13.stride(0), w13.stride(1), out.stride(0), i * w13.stride(1),
        ACTIVATION=ACTIVATIONS[activation], DOT_PRECISION=_dot_precision(x.dtype), EVEN_K=k % bk == 0,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=config.GROUP_SIZE_M,
        num_warps=config.num_warps, num_stages=config.num_stages,
        **({} if quant is None else quant.kernel_args(gemm1=True)), **_mx_format(quant, x.dtype), **_bias_args(bias),
        **_tile_args(tile_rows, bm, min_tile), **pdl.chained_launch(x.device),
    )


def moe_gemm2(inter, w2, y, topk_weights, sorted_ids, expert_ids, npp, config, mul_weight=True, quant=None,
              bias=None, tile_rows=None, min_tile=0):
    """y[slot] = w_slot * (inter[row] @ w2[e].T + bias[e]) for each sorted row; y rows of dropped slots
    untouched. ``quant``: a :class:`GemmQuant` (None: unquantized). ``bias``: optional [E, H]. ``tile_rows`` /
    ``min_tile``: as :func:`moe_gemm1`."""
    n, k = w2.shape[1], inter.shape[1]
    if quant is not None and quant.mx_words:
        w2 = w2.view(torch.int32)
    num_pid_m = expert_ids.shape[0]
    bm, bn, bk = config.BLOCK_SIZE_M, config.BLOCK_SIZE_N, config.BLOCK_SIZE_K
    grid = (num_pid_m * triton.cdiv(n, bn),)
    _moe_gemm2_kernel[grid](
        inter, w2, y, topk_weights, sorted_ids, expert_ids, npp,
        n, k, y.shape[0], num_pid_m,
        inter.stride(0), w2.stride(0), w2.stride(1), y.stride(0),
        MUL_WEIGHT=mul_weight, DOT_PRECISION=_dot_precision(inter.dtype), EVEN_K=k % bk == 0,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=config.GROUP_SIZE_M,
        num_warps=config.num_warps, num_stages=config.num_stages,
        **({} if quant is None else quant.kernel_args(gemm1=False)), **_mx_format(quant, inter.dtype),
        **_bias_args(bias), **_tile_args(tile_rows, bm, min_tile), **pdl.chained_launch(inter.device),
    )
