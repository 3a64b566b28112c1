"""Decode kernels of the Triton backend: few tokens, so each top-k slot reads its expert's weight rows directly.

At decode (a handful of tokens, almost every slot on a different expert) the grouped GEMMs of
``moe_gemm.py`` pad every slot to a ``BLOCK_M``-row tile, need the alignment, and stream the weights at
2.2-2.5 TB/s of an H100's 3.1 (docs/PERF_NOTES.md). These two kernels are matrix-vector products on CUDA
cores instead, launched with enough small programs to keep every SM's loads in flight:

* GEMV 1, program (slot, ``BLOCK_N`` columns of I): ``inter[slot, n] = act(x[tok] . w13[e, n]) *
  (x[tok] . w13[e, I + n])``, ``tok = slot // top_k``, ``e = topk_ids[slot]`` (through ``expert_map``).
* GEMV 2, program (token, ``BLOCK_N`` columns of H): ``out[tok, n] = sum_j w_j * (inter[tok * top_k + j] .
  w2[e_j, n])``, all top-k experts' tiles loaded together (``[TOPK, BLOCK_N, BLOCK_K]``), so the top-k sum
  needs no kernel of its own and no ``[M * top_k, H]`` intermediate is written.

Quantized weights (``W_SCALE``; activations stay in x's dtype, so fp8 w8a8 runs weight-only at decode):
1 fp8 / int8, one scale per weight row (per channel ``[E, N]``, or per tensor ``[E]`` with row stride 0),
applied after the K loop; 2 fp8, one scale per (``GROUP_N`` rows, ``GROUP_K`` columns) block ``[E, cdiv(N,
GROUP_N), cdiv(K, GROUP_K)]``: a K step spans ``max(1, BLOCK_K / GROUP_K)`` blocks (``BLOCK_K`` and
``GROUP_K`` are powers of two), each block's partial sum is scaled before it joins the accumulator; 3
mxfp4, e2m1 codes packed two per byte along K (``[E, N, K / 2]`` uint8, low nibble first) with one e8m0
scale per 32 K elements (``[E, N, K / 32]`` uint8), decoded on CUDA cores
(:func:`moekit.kernels.quant.e2m1_value`); 4 int4 weight-only, codes packed as mxfp4's with one float32 scale
per ``GROUP_K`` K elements (``[E, N, cdiv(K, GROUP_K)]``, optional uint8 zero points of the same shape): each
group's sum is ``scale * (sum(u * x) - zero * sum(x))`` over the unsigned codes ``u`` (two's complement codes
are ``u = q ^ 8`` with zero 8), so a code costs a mask or shift, a conversion and one multiply-add, and the
activations' group sums are shared by every row.
Tiles and K steps per weight format: :data:`GEMV_TILES`.

On Hopper and later (:func:`moekit.platform.programmatic_launch`) both are launched with programmatic
dependent launch (:mod:`moekit.kernels.pdl`): GEMV 1 starts while the routing kernel finishes and waits for
it before reading the ids, then lets GEMV 2 launch (at its start or after its K loop: :data:`GEMV1_TRIGGER`);
GEMV 2 reads the ids and routing weights at once and waits for GEMV 1 before reading its activations.

No alignment, no host synchronization (CUDA-graph safe). Products and sums are float32; GEMV 2 keeps the
weighted sum in float32 until the single rounding to the output dtype. Slots whose expert maps to -1
(expert parallelism), ids outside [0, E) (or outside the expert map) and map values past the local
experts are skipped and contribute nothing. A slot's weights are read once per slot, so two slots on one
expert read it twice: :func:`gemv_applies` keeps this path to shapes where that is rare.

Tried and dropped (session 7, ``benchmarks/results/bench_gemv*_prefetch_H100_session7.json``): each program
loading the next K step into registers while it computes the current one. fp8 block Qwen3 M=1 went 22.6 ->
27.1 us, DeepSeek-V3 M=4 496 -> 585 us; bf16 within 2 %; mxfp4 within 4 % either way.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from moekit.kernels import pdl
from moekit.kernels.align import local_expert
from moekit.kernels.moe_gemm import ACTIVATIONS, _bias_args, gate_up
from moekit.kernels.quant import e8m0_value, mxfp4_f32_scaled_down
from moekit.platform import programmatic_launch

#: Launch shape per weight format (bits: 16 bf16 / fp16 / fp32, 8 fp8 / int8, 4 mxfp4 / int4 codes; int4 runs
#: mxfp4's measured tiles, stages and trigger, not tuned for it): (GEMV 1 tile, GEMV 2 tile, GEMV 1 K step, GEMV 2
#: K step). A tile is the elements of the float32 product one program
#: holds per K step (GEMV 1: per gate / up tile; GEMV 2: all top-k experts' tiles at once); a K step the
#: elements of a weight row read per step. Measured on the H100:
#:
#: * 16-bit (``benchmarks/bench_gemv.py``, ``bench_gemv_H100_round2.*``): GEMV 1 tiles of 4096 beat 2048,
#:   8192 and 16384 at every point (more, smaller programs keep more loads in flight); GEMV 2 at 1024 was
#:   best for gpt-oss-20b (M=1 79.1 vs 84.4 us at 4096) and within 1 % for qwen3.
#: * 8-bit (``benchmarks/bench_gemv_quant.py``, ``bench_gemv_quant_H100_*``): K steps of 512 / 256 beat
#:   1024 / 512 by 4-12 % and 256 / 128 by 15-20 % (qwen3 fp8 block M=1 25.0 vs 27.1 / 29.4 us).
#: * mxfp4 (``bench_gemv_quant_H100_round3.json``, ``bench_gemv_quant_H100_session6.json``, gpt-oss-20b,
#:   exact e2m1 decode): 16384 / 8192 with K steps of 1024 / 256 codes gave M=1/2/4/8 58.6 / 89.9 / 159.6 /
#:   306.6 us, against 60.6 / 98.1 / 161.6 / 307.8 with K steps of 512 / 256, 59.9 / 110.3 / 182.0 / 346.5
#:   with the earlier 16384 / 4096, and 54.8-62.2 / 89.9-110.3 / 159.1-182.1 / 299.6-348.4 with the other
#:   five tried (8 warps included; none better at every M). More rows per program spread each activation
#:   load and split over more decoded codes; 32768-element GEMV 1 tiles leave too few programs (70.6 us at
#:   M=1, round 3).
GEMV_TILES = {16: (4096, 1024, 512, 256), 8: (4096, 1024, 512, 256), 4: (16384, 8192, 1024, 256)}
#: GEMV 2 tile of 8-bit weights with block scales (fp8 block; :data:`GEMV_TILES` serves the rest): with top-k 8,
#: two weight rows per program instead of one. Measured on the H100, whole forward, arms interleaved
#: (``benchmarks/ab_gemv_tiles.py``, ``ab_gemv_tiles_H100_session17.json``), GEMV 2 tile 1024 -> 4096: Qwen3 fp8
#: block M=1 / 2 23.2 -> 21.7 / 37.4 -> 35.4 us, DeepSeek-V3 fp8 block M=1 133.4 -> 128.0; per-channel and
#: per-tensor weights lose with it (Qwen3 fp8 channel M=1 21.2 -> 21.5, Mixtral fp8 M=1 133.4 -> 152.6: top-k 2,
#: eight rows per program).
GEMV2_BLOCK_TILE = 4096
MIN_EXPERTS = 16  # 16-bit and mxfp4 weights: see gemv_applies
INT4_MAX_SLOTS = 8  # int4 weights: see gemv_applies
#: Software-pipelining depth of the GEMV K loops per weight format (:data:`GEMV_TILES` keys; ``tl.range(num_stages=
#: ...)``, 1: plain loads, more: the weight tiles staged through shared memory by cp.async, same registers).
#: Measured on the H100, whole forward, arms interleaved (``benchmarks/ab_gemv_stages.py``,
#: ``ab_gemv_stages_H100_session9.json``), 1 -> 3 stages: gpt-oss-20b mxfp4 M=1 / 2 / 4 52.4 -> 42.2 / 75.6 ->
#: 68.9 / 135.7 -> 119.1 us; DeepSeek-V3 fp8 block M=1 / 2 / 4 210.3 -> 198.4 / 331.8 -> 307.0 / 553.2 ->
#: 524.8; Qwen3-30B-A3B fp8 block M=1 / 2 24.9 -> 24.4 / 42.9 -> 39.3, fp8 channel 23.5 -> 22.8, int8
#: weight-only 25.3 -> 24.1. 16-bit weights stay at 1: every depth was within 2 % there. H200, 1 -> 3 stages:
#: 1.07-1.29x for the same 8-bit and mxfp4 cases, bf16 Qwen3 M=1 27.8 -> 29.9 (``ab_gemv_stages_H200_session9.json``).
GEMV_STAGES = {16: 1, 8: 3, 4: 3}
#: Where GEMV 1 lets GEMV 2 launch under programmatic dependent launch (:mod:`moekit.kernels.pdl`), per weight
#: format (:data:`GEMV_TILES` keys): "start" (right after its wait) or "end" (after its K loop). Measured on the
#: H100, whole forward, arms interleaved (``benchmarks/ab_pdl.py``, ``ab_pdl_trigger_H100_session13.json``),
#: plain launches / "start" / "end": Qwen3 bf16 M=1 34.9 / 33.0 / 34.6 us, fp8 channel M=1 23.1 / 21.7 / 22.6,
#: fp8 block M=2 39.5 / 38.2 / 39.1; gpt-oss mxfp4 M=1 42.1 / 46.9 / 42.0 (its GEMV 2, 360 programs of 8 rows,
#: loses when they start early on SMs still busy with GEMV 1), M=4 119.1 / 117.7 / 119.2.
GEMV1_TRIGGER = {16: "start", 8: "start", 4: "end"}
_MAX_GRID_Y = 65535


def _weight_bits(scheme) -> int:
    """The :data:`GEMV_TILES` key of a weight format: 4 (mxfp4 / int4 codes), 8 (fp8 / int8), else 16."""
    if scheme is None or not scheme.is_quantized:
        return 16
    return 4 if scheme.weight_dtype in ("mxfp4", "int4") else 8


def gemv_applies(m: int, e: int, top_k: int, scheme=None, grouped: bool = False) -> bool:
    """Whether the decode GEMV kernels serve ``m`` tokens: few enough slots that two slots rarely share an
    expert (each slot streams its expert's weights, the grouped GEMMs each expert once). ``slots = m *
    top_k``; 16-bit weights: at least :data:`MIN_EXPERTS` experts and ``slots <= E / 2``; 8-bit: ``slots <= E
    / 2``; mxfp4: at least :data:`MIN_EXPERTS` experts and ``slots <= E / 2``; int4: ``slots <= min(E / 2,
    INT4_MAX_SLOTS)``. ``grouped`` (grouped top-k
    routing, which concentrates a batch's slots on the experts of its kept groups): ``slots < E / 4`` for 16-
    and 8-bit weights.

    Measured on the H100, whole forward, arms interleaved (``benchmarks/ab_gemv_path.py``,
    ``ab_gemv_path{,_b}_H100_session13.json``), GEMV against grouped GEMMs, us:

    * 8-bit: Mixtral fp8 per tensor (E=8, k=2) M=1 / 2 / 4 133.7 / 214.4-252.4 / 380.8 against 171.1 /
      231.3-287.0 / 339.0; Qwen3 fp8 block M=4 / 8 64.3 / 112.0 against 73.6 / 114.3, per channel 61.8 / 102.8
      against 74.6 / 115.2; DeepSeek-V3 fp8 block (grouped) M=8 / 16 914.7 / 1648 against 885.3 / 1300.
    * 16-bit: Qwen3 bf16 M=8 / 16 166.9 / 284.4 against 173.9 / 283.4; gpt-oss-20b (E=32, k=4) M=4 / 8 244.0 /
      390.0 against 250.0 / 380.9; Mixtral M=1 / 2 244.0 / 428.2 against 246.5 / 415.4 (few experts with
      long rows: hence :data:`MIN_EXPERTS` for 16-bit weights).
    * mxfp4 (session 9, ``mxfp4_gemv_crossover_H100_session9.log``): gpt-oss-20b M=4 (slots E / 2) 137.6
      against 177.7; gpt-oss-120b shape (E=128) M=32 (slots E) 938.1 against 789.4. (Session 13: gpt-oss-20b
      M=8, slots E, 221.0 against 232.5; the rule stays at E / 2 for the 120b shape.)
      Measured on Hopper only: GPUs whose grouped GEMMs lack the PTX decode may gain from the GEMV up to E.
    * int4 weight-only (session 24, ``ab_gemv_path_int4_H100_session24.json``): Mixtral (E=8, k=2) M=1 / 2 132.9 /
      239.2 against 157.9 / 253.5, M=4 449.9 against 291.1; Qwen3-30B-A3B (E=128, k=8) M=1 24.3 against 27.5, M=2 /
      4 / 8 39.5 / 66.0 / 116.5 against 36.7 / 53.1 / 88.3. So no minimum of experts, but at most
      :data:`INT4_MAX_SLOTS` slots (and ``slots <= E / 2``)."""
    if m < 1:
        return False
    bits, slots = _weight_bits(scheme), m * top_k
    int4 = scheme is not None and scheme.weight_dtype == "int4"
    if int4 and slots > INT4_MAX_SLOTS:
        return False
    if bits != 8 and not int4 and e < MIN_EXPERTS:
        return False
    if grouped and bits != 4:
        return 4 * slots < e
    return 2 * slots <= e


@triton.jit
def _block_scaled_sum(p, s_ptrs, n_ok, k0, K, stride_sk, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_K: tl.constexpr):
    """Row sums of one K step's products ``p`` [BLOCK_N, BLOCK_K] under 128x128-style block scales: the
    step's ``max(1, BLOCK_K / GROUP_K)`` blocks are summed apart and scaled (``s_ptrs`` [BLOCK_N]: each
    row's scales at K block 0), then added -> [BLOCK_N]."""
    if BLOCK_K <= GROUP_K:
        return tl.sum(p, axis=1) * tl.load(s_ptrs + (k0 // GROUP_K) * stride_sk, mask=n_ok, other=0.0)
    else:
        part = tl.sum(tl.reshape(p, [BLOCK_N, BLOCK_K // GROUP_K, GROUP_K]), axis=2)
        offs_g = k0 // GROUP_K + tl.arange(0, BLOCK_K // GROUP_K)
        sc = tl.load(s_ptrs[:, None] + offs_g[None, :] * stride_sk,
                     mask=n_ok[:, None] & (offs_g * GROUP_K < K)[None, :], other=0.0)
        return tl.sum(part * sc, axis=1)


@triton.jit
def _mma_split(x, LEAD: tl.constexpr, BLOCK_K: tl.constexpr):
    """Activations ``x`` [LEAD, BLOCK_K] (K order) -> those of each byte's low and high nibble [LEAD, BLOCK_K / 2]
    in the mxfp4 "mma" layout (:func:`moekit.quant.weights.mma_layout`: byte 4 (2c + h) + b of a 64-code chunk
    holds codes 16 b + 2c + h (low nibble) and 8 further (high)): a permutation in registers of the contiguous
    (pipelined) load."""
    x = tl.reshape(x, [LEAD, BLOCK_K // 64, 4, 2, 4, 2])  # chunk, b, q, c, h
    x = tl.permute(x, [0, 1, 4, 5, 2, 3])  # chunk, c, h, b, q: byte order, then the nibble
    return tl.split(tl.reshape(x, [LEAD, BLOCK_K // 2, 2]))


@triton.jit
def _mx_group_sums(p, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MMA: tl.constexpr):
    """Products ``p`` [BLOCK_N, BLOCK_K / 2] (a byte's two codes already added) -> their sums per 32-code scale
    group [BLOCK_N, BLOCK_K / 32]: 16 consecutive bytes each, or in the "mma" layout bytes b = 0, 1 (group 2v)
    and b = 2, 3 (group 2v + 1) of every word of chunk v."""
    if MMA:
        part = tl.sum(tl.sum(tl.reshape(p, [BLOCK_N, BLOCK_K // 64, 8, 2, 2]), axis=4), axis=2)
        part = tl.reshape(part, [BLOCK_N, BLOCK_K // 32])
    else:
        part = tl.sum(tl.reshape(p, [BLOCK_N, BLOCK_K // 32, 16]), axis=2)
    return part


@triton.jit
def _mx_rows_dot(w_ptrs, s_ptrs, xe, xo, wmask, smask, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 PTX: tl.constexpr, MMA: tl.constexpr = False):
    """One K step of mxfp4 rows: bytes ``w_ptrs`` [BLOCK_N, BLOCK_K / 2], e8m0 scales ``s_ptrs`` [BLOCK_N,
    BLOCK_K / 32], the activations of each byte's low / high nibble (``xe``, ``xo`` [BLOCK_K / 2]: even / odd K,
    or in the "mma" layout ``MMA`` as :func:`_mma_split` gives them) -> [BLOCK_N] float32 partial dot products,
    each 32-element group scaled once."""
    lo, hi = mxfp4_f32_scaled_down(tl.load(w_ptrs, mask=wmask, other=0), PTX)
    p = lo * xe[None, :] + hi * xo[None, :]
    part = _mx_group_sums(p, BLOCK_N, BLOCK_K, MMA) * 16384.0  # 2**14: see the decode
    return tl.sum(part * e8m0_value(tl.load(s_ptrs, mask=smask, other=0)), axis=1)


@triton.jit
def _int4_codes(raw, HAS_ZERO: tl.constexpr):
    """int4 bytes (two codes each, low nibble first) -> (low, high) codes as unsigned float32 values 0..15:
    two's complement codes q become q ^ 8 = q + 8 (their zero point is then 8, :func:`_int4_zero`)."""
    r = raw.to(tl.int32) & 255
    if not HAS_ZERO:
        r = r ^ 0x88
    return (r & 15).to(tl.float32), (r >> 4).to(tl.float32)


@triton.jit
def _int4_zero(z_ptrs, mask, HAS_ZERO: tl.constexpr):
    """The zero points of :func:`_int4_codes`' unsigned codes: loaded (uint8), or 8 for two's complement."""
    if HAS_ZERO:
        z = tl.load(z_ptrs, mask=mask, other=0).to(tl.float32)
    else:
        z = 8.0
    return z


@triton.jit
def _int4_rows_dot(w_ptrs, s_rows, z_rows, xe, xo, wmask, n_ok, k0, K, stride_sk, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_K: tl.constexpr, HAS_ZERO: tl.constexpr):
    """One K step of int4 rows: bytes ``w_ptrs`` [BLOCK_N, BLOCK_K / 2], scale / zero-point rows ``s_rows`` /
    ``z_rows`` [BLOCK_N, 1] (at K group 0), activations split into even / odd K (``xe``, ``xo`` [BLOCK_K / 2])
    -> [BLOCK_N] float32 partial dot products, ``scale * (sum(u * x) - zero * sum(x))`` per K group."""
    lo, hi = _int4_codes(tl.load(w_ptrs, mask=wmask, other=0), HAS_ZERO)
    p = lo * xe[None, :] + hi * xo[None, :]
    xs = xe + xo
    if GROUP_K >= BLOCK_K:  # one group per step
        g = k0 // GROUP_K
        part = tl.sum(p, axis=1, keep_dims=True)
        xsum = tl.sum(xs, axis=0)
        smask = n_ok[:, None]
        sk = g * stride_sk
    else:
        part = tl.sum(tl.reshape(p, [BLOCK_N, BLOCK_K // GROUP_K, GROUP_K // 2]), axis=2)
        xsum = tl.sum(tl.reshape(xs, [BLOCK_K // GROUP_K, GROUP_K // 2]), axis=1)[None, :]
        offs_g = k0 // GROUP_K + tl.arange(0, BLOCK_K // GROUP_K)
        smask = n_ok[:, None] & (offs_g * GROUP_K < K)[None, :]
        sk = offs_g[None, :] * stride_sk
    z = _int4_zero(z_rows + sk, smask, HAS_ZERO)
    return tl.sum((part - z * xsum) * tl.load(s_rows + sk, mask=smask, other=0.0), axis=1)


@triton.jit
def _moe_gemv1_kernel(
    x_ptr, w_ptr, out_ptr, ids_ptr, map_ptr,
    I, K, top_k, n_map, E, stride_xm, stride_we, stride_wn, stride_om,
    HAS_MAP: tl.constexpr, ACTIVATION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    s_ptr=None, stride_se=0, stride_sn=0, stride_sk=0,
    W_SCALE: tl.constexpr = 0, GROUP_N: tl.constexpr = 1, GROUP_K: tl.constexpr = 1,
    bias_ptr=None, stride_bias_e=0, HAS_BIAS: tl.constexpr = False, PTX: tl.constexpr = False,
    STAGES: tl.constexpr = 1, PDL: tl.constexpr = False, TRIGGER_EARLY: tl.constexpr = False,
    z_ptr=None, HAS_ZERO: tl.constexpr = False, MMA: tl.constexpr = False,
):
    slot = tl.program_id(0)
    pdl.wait(PDL)  # topk_ids may come from the kernel before
    pdl.launch_dependents(PDL and TRIGGER_EARLY)  # GEMV 2 may start: every kernel before this one has completed
    e, live = local_expert(ids_ptr, map_ptr, slot, slot >= 0, E, n_map, HAS_MAP)
    if not live:  # a remote expert or an id out of range: GEMV 2 skips the slot too
        return
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    x_row = x_ptr + (slot // top_k).to(tl.int64) * stride_xm
    rows = w_ptr + e.to(tl.int64) * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn
    acc_g = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N], dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    if W_SCALE == 3:  # mxfp4: byte j of a row holds K elements 2j (low nibble) and 2j + 1
        offs_b = tl.arange(0, BLOCK_K // 2)
        offs_s = tl.arange(0, BLOCK_K // 32)
        g_ptrs = rows + offs_b[None, :]
        s_rows = s_ptr + e.to(tl.int64) * stride_se + offs_n.to(tl.int64)[:, None] * stride_sn
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            xk = tl.load(x_row + k0 + offs_k, mask=offs_k < K - k0, other=0.0).to(tl.float32)
            if MMA:  # each byte's activations (K is a multiple of 64: whole chunks are in or out)
                xe, xo = _mma_split(xk[None, :], 1, BLOCK_K)
                xe = tl.reshape(xe, [BLOCK_K // 2])
                xo = tl.reshape(xo, [BLOCK_K // 2])
            else:
                xe, xo = tl.split(tl.reshape(xk, [BLOCK_K // 2, 2]))
            wmask = n_ok[:, None] & (offs_b < (K - k0) // 2)[None, :]
            smask = n_ok[:, None] & (offs_s < (K - k0) // 32)[None, :]
            s_ptrs = s_rows + (k0 // 32 + offs_s)[None, :] * stride_sk
            acc_g += _mx_rows_dot(g_ptrs + k0 // 2, s_ptrs, xe, xo, wmask, smask, BLOCK_N, BLOCK_K, PTX, MMA)
            acc_u += _mx_rows_dot(g_ptrs + I * stride_wn + k0 // 2, s_ptrs + I * stride_sn, xe, xo, wmask, smask,
                                  BLOCK_N, BLOCK_K, PTX, MMA)
    elif W_SCALE == 4:  # int4: packed as mxfp4, float32 scales (and zero points) per GROUP_K
        offs_b = tl.arange(0, BLOCK_K // 2)
        g_ptrs = rows + offs_b[None, :]
        s_off = e.to(tl.int64) * stride_se + offs_n.to(tl.int64)[:, None] * stride_sn
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            xk = tl.load(x_row + k0 + offs_k, mask=offs_k < K - k0, other=0.0).to(tl.float32)
            xe, xo = tl.split(tl.reshape(xk, [BLOCK_K // 2, 2]))
            wmask = n_ok[:, None] & (offs_b < (K - k0) // 2)[None, :]
            acc_g += _int4_rows_dot(g_ptrs + k0 // 2, s_ptr + s_off, z_ptr + s_off, xe, xo, wmask, n_ok, k0, K,
                                    stride_sk, BLOCK_N, BLOCK_K, GROUP_K, HAS_ZERO)
            acc_u += _int4_rows_dot(g_ptrs + I * stride_wn + k0 // 2, s_ptr + s_off + I * stride_sn,
                                    z_ptr + s_off + I * stride_sn, xe, xo, wmask, n_ok, k0, K, stride_sk, BLOCK_N,
                                    BLOCK_K, GROUP_K, HAS_ZERO)
    else:
        g_ptrs = rows + offs_k[None, :]
        u_ptrs = g_ptrs + I * stride_wn
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            k_ok = offs_k < K - k0
            xk = tl.load(x_row + k0 + offs_k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
            wmask = n_ok[:, None] & k_ok[None, :]
            g = tl.load(g_ptrs + k0, mask=wmask, other=0.0).to(tl.float32) * xk
            u = tl.load(u_ptrs + k0, mask=wmask, other=0.0).to(tl.float32) * xk
            if W_SCALE == 2:
                sk = s_ptr + e.to(tl.int64) * stride_se
                acc_g += _block_scaled_sum(g, sk + (offs_n // GROUP_N) * stride_sn, n_ok, k0, K, stride_sk,
                                           BLOCK_N, BLOCK_K, GROUP_K)
                acc_u += _block_scaled_sum(u, sk + ((offs_n + I) // GROUP_N) * stride_sn, n_ok, k0, K, stride_sk,
                                           BLOCK_N, BLOCK_K, GROUP_K)
            else:
                acc_g += tl.sum(g, axis=1)
                acc_u += tl.sum(u, axis=1)
    pdl.launch_dependents(PDL and not TRIGGER_EARLY)
    if W_SCALE == 1:
        sr = s_ptr + e.to(tl.int64) * stride_se
        acc_g *= tl.load(sr + offs_n * stride_sn, mask=n_ok, other=0.0)
        acc_u *= tl.load(sr + (offs_n + I) * stride_sn, mask=n_ok, other=0.0)
    if HAS_BIAS:
        b_ptrs = bias_ptr + e.to(tl.int64) * stride_bias_e + offs_n
        acc_g += tl.load(b_ptrs, mask=n_ok, other=0.0).to(tl.float32)
        acc_u += tl.load(b_ptrs + I, mask=n_ok, other=0.0).to(tl.float32)
    h = gate_up(acc_g, acc_u, ACTIVATION)
    tl.store(out_ptr + slot.to(tl.int64) * stride_om + offs_n, h.to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _moe_gemv2_kernel(
    a_ptr, w_ptr, out_ptr, ids_ptr, topk_w_ptr, map_ptr,
    N, K, top_k, n_map, E, stride_am, stride_we, stride_wn, stride_om,
    HAS_MAP: tl.constexpr, TOPK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    s_ptr=None, stride_se=0, stride_sn=0, stride_sk=0,
    W_SCALE: tl.constexpr = 0, GROUP_N: tl.constexpr = 1, GROUP_K: tl.constexpr = 1,
    bias_ptr=None, stride_bias_e=0, HAS_BIAS: tl.constexpr = False, PTX: tl.constexpr = False,
    STAGES: tl.constexpr = 1, PDL: tl.constexpr = False, z_ptr=None, HAS_ZERO: tl.constexpr = False,
    MMA: tl.constexpr = False,
):
    token = tl.program_id(0)
    offs_j = tl.arange(0, TOPK)
    slot = token * top_k + offs_j
    e, live = local_expert(ids_ptr, map_ptr, slot, offs_j < top_k, E, n_map, HAS_MAP)
    wt = tl.load(topk_w_ptr + slot, mask=live, other=0.0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    e64 = tl.maximum(e, 0).to(tl.int64)
    a_rows = a_ptr + slot.to(tl.int64)[:, None] * stride_am
    w_rows = w_ptr + e64[:, None, None] * stride_we + offs_n.to(tl.int64)[None, :, None] * stride_wn
    rows_ok = live[:, None, None] & n_ok[None, :, None]
    pdl.wait(PDL)  # the activations are GEMV 1's (ids and routing weights are older: see kernels/pdl.py)
    acc = tl.zeros([TOPK, BLOCK_N], dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    if W_SCALE == 3:  # mxfp4 (see GEMV 1)
        offs_b = tl.arange(0, BLOCK_K // 2)
        offs_s = tl.arange(0, BLOCK_K // 32)
        s_rows = s_ptr + e64[:, None, None] * stride_se + offs_n.to(tl.int64)[None, :, None] * stride_sn
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            b_ok = offs_b < (K - k0) // 2
            a = tl.load(a_rows + k0 + offs_k[None, :], mask=live[:, None] & (offs_k < K - k0)[None, :],
                        other=0.0).to(tl.float32)
            if MMA:  # see GEMV 1
                ae, ao = _mma_split(a, TOPK, BLOCK_K)
            else:
                ae, ao = tl.split(tl.reshape(a, [TOPK, BLOCK_K // 2, 2]))
            lo, hi = mxfp4_f32_scaled_down(tl.load(w_rows + k0 // 2 + offs_b[None, None, :],
                                                   mask=rows_ok & b_ok[None, None, :], other=0), PTX)
            p = lo * ae[:, None, :] + hi * ao[:, None, :]
            part = tl.reshape(_mx_group_sums(tl.reshape(p, [TOPK * BLOCK_N, BLOCK_K // 2]), TOPK * BLOCK_N, BLOCK_K,
                                             MMA), [TOPK, BLOCK_N, BLOCK_K // 32]) * 16384.0
            sc = tl.load(s_rows + (k0 // 32 + offs_s)[None, None, :] * stride_sk,
                         mask=rows_ok & (offs_s < (K - k0) // 32)[None, None, :], other=0)
            acc += tl.sum(part * e8m0_value(sc), axis=2)
    elif W_SCALE == 4:  # int4 (see GEMV 1)
        offs_b = tl.arange(0, BLOCK_K // 2)
        s_off = e64[:, None, None] * stride_se + offs_n.to(tl.int64)[None, :, None] * stride_sn
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            b_ok = offs_b < (K - k0) // 2
            a = tl.load(a_rows + k0 + offs_k[None, :], mask=live[:, None] & (offs_k < K - k0)[None, :],
                        other=0.0).to(tl.float32)
            ae, ao = tl.split(tl.reshape(a, [TOPK, BLOCK_K // 2, 2]))
            lo, hi = _int4_codes(tl.load(w_rows + k0 // 2 + offs_b[None, None, :], mask=rows_ok & b_ok[None, None, :],
                                         other=0), HAS_ZERO)
            p = lo * ae[:, None, :] + hi * ao[:, None, :]
            xs = ae + ao
            if GROUP_K >= BLOCK_K:  # one group per step
                part = tl.sum(p, axis=2, keep_dims=True)
                xsum = tl.sum(xs, axis=1)[:, None, None]
                smask = rows_ok
                sk = (k0 // GROUP_K) * stride_sk
            else:
                part = tl.sum(tl.reshape(p, [TOPK, BLOCK_N, BLOCK_K // GROUP_K, GROUP_K // 2]), axis=3)
                xsum = tl.sum(tl.reshape(xs, [TOPK, BLOCK_K // GROUP_K, GROUP_K // 2]), axis=2)[:, None, :]
                offs_g = k0 // GROUP_K + tl.arange(0, BLOCK_K // GROUP_K)
                smask = rows_ok & (offs_g * GROUP_K < K)[None, None, :]
                sk = offs_g[None, None, :] * stride_sk
            z = _int4_zero(z_ptr + s_off + sk, smask, HAS_ZERO)
            acc += tl.sum((part - z * xsum) * tl.load(s_ptr + s_off + sk, mask=smask, other=0.0), axis=2)
    else:
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            k_ok = offs_k < K - k0
            a = tl.load(a_rows + k0 + offs_k[None, :], mask=live[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            w = tl.load(w_rows + k0 + offs_k[None, None, :], mask=rows_ok & k_ok[None, None, :],
                        other=0.0).to(tl.float32)
            p = w * a[:, None, :]
            if W_SCALE == 2:
                s_blk = s_ptr + e64[:, None] * stride_se + (offs_n // GROUP_N)[None, :] * stride_sn
                if BLOCK_K <= GROUP_K:
                    acc += tl.sum(p, axis=2) * tl.load(s_blk + (k0 // GROUP_K) * stride_sk,
                                                       mask=live[:, None] & n_ok[None, :], other=0.0)
                else:
                    part = tl.sum(tl.reshape(p, [TOPK, BLOCK_N, BLOCK_K // GROUP_K, GROUP_K]), axis=3)
                    offs_g = k0 // GROUP_K + tl.arange(0, BLOCK_K // GROUP_K)
                    sc = tl.load(s_blk[:, :, None] + offs_g[None, None, :] * stride_sk,
                                 mask=rows_ok & (offs_g * GROUP_K < K)[None, None, :], other=0.0)
                    acc += tl.sum(part * sc, axis=2)
            else:
                acc += tl.sum(p, axis=2)
    if W_SCALE == 1:
        acc *= tl.load(s_ptr + e64[:, None] * stride_se + offs_n[None, :] * stride_sn,
                       mask=live[:, None] & n_ok[None, :], other=0.0)
    if HAS_BIAS:  # each live slot's expert bias, before its routing weight
        acc += tl.load(bias_ptr + e64[:, None] * stride_bias_e + offs_n[None, :], mask=live[:, None] & n_ok[None, :],
                       other=0.0).to(tl.float32)
    y = tl.sum(acc * wt[:, None], axis=0)
    tl.store(out_ptr + token.to(tl.int64) * stride_om + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_ok)


def _blocks(k: int, rows: int, max_block_k: int, tile: int) -> tuple:
    """(BLOCK_N, BLOCK_K): K steps of up to ``max_block_k`` elements, and as many weight rows per step as
    keep ``rows * BLOCK_N * BLOCK_K`` within ``tile`` elements."""
    bk = min(max_block_k, triton.next_power_of_2(k))
    return max(1, min(64, tile // (rows * bk))), bk


def gemv_supports(scheme) -> bool:
    """Schemes the GEMV kernels run: unquantized; fp8 weights per tensor, channel or block (run weight-only:
    the activations are not quantized); int8 weight-only per channel (no zero point); mxfp4; int4 weight-only
    with groups of a power of two >= 16 (zero points or not)."""
    if scheme is None or not scheme.is_quantized or scheme.weight_dtype == "mxfp4":
        return True
    if scheme.weight_dtype == "int4":  # group sizes a power of two of at least 16 (a reshape of the K step)
        g = scheme.group_size
        return g >= 16 and g & (g - 1) == 0
    if scheme.weight_dtype == "int8":
        return scheme.weight_only and scheme.granularity == "channel" and not scheme.zero_point
    if scheme.weight_dtype != "fp8" or scheme.granularity not in ("tensor", "channel", "block"):
        return False
    return scheme.granularity != "block" or all(b & (b - 1) == 0 for b in scheme.block_shape)  # powers of 2


def _scale_args(scheme, scale: Optional[torch.Tensor]) -> dict:
    """Kernel arguments of a quantized weight's scale (see the module docstring); {} when unquantized."""
    if scheme is None or not scheme.is_quantized:
        return {}
    if scheme.weight_dtype == "mxfp4":
        return dict(s_ptr=scale, stride_se=scale.stride(0), stride_sn=scale.stride(1), stride_sk=scale.stride(2),
                    W_SCALE=3, MMA=scheme.layout == "mma")
    if scheme.weight_dtype == "int4":  # zero points (same layout) are added by moe_gemv
        return dict(s_ptr=scale, stride_se=scale.stride(0), stride_sn=scale.stride(1), stride_sk=scale.stride(2),
                    W_SCALE=4, GROUP_K=scheme.group_size)
    if scheme.granularity == "block":
        gn, gk = scheme.block_shape
        return dict(s_ptr=scale, stride_se=scale.stride(0), stride_sn=scale.stride(1), stride_sk=scale.stride(2),
                    W_SCALE=2, GROUP_N=gn, GROUP_K=gk)
    row = scale.stride(1) if scheme.granularity == "channel" else 0
    return dict(s_ptr=scale, stride_se=scale.stride(0), stride_sn=row, W_SCALE=1)


def moe_gemv(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
             topk_ids: torch.Tensor, expert_map: Optional[torch.Tensor] = None, activation: str = "silu",
             num_warps: int = 4, scheme=None, w13_scale: Optional[torch.Tensor] = None,
             w2_scale: Optional[torch.Tensor] = None, w13_bias: Optional[torch.Tensor] = None,
             w2_bias: Optional[torch.Tensor] = None, mx_ptx: bool = False, w13_zero: Optional[torch.Tensor] = None,
             w2_zero: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The decode forward of the experts: x [M, H], w13 [E, 2I, H], w2 [E, H, I], topk_weights float32
    [M, k] and topk_ids int32 [M, k] (contiguous) -> [M, H] in x's dtype. Two launches. ``scheme``: a
    QuantScheme that :func:`gemv_supports` (weights and ``w13_scale`` / ``w2_scale`` in the layouts of
    :mod:`moekit.quant.moe`; mxfp4 weights are packed [E, 2I, H / 2] and [E, H, I / 2]), or None.
    ``w13_bias`` [E, 2I] / ``w2_bias`` [E, H]: optional expert biases (contiguous last dimension).
    ``mx_ptx``: decode mxfp4 codes by inline PTX (NVIDIA GPUs only; the rule is
    :func:`moekit.quant.triton_moe.mxfp4_gemv_ptx_decode`). ``w13_zero`` / ``w2_zero``: int4 zero points (uint8,
    the scales' shape) for schemes with ``zero_point``."""
    m, h = x.shape
    i = w13.shape[1] // 2
    top_k = topk_ids.shape[1]
    inter = torch.empty((m * top_k, i), dtype=x.dtype, device=x.device)
    out = torch.empty((m, h), dtype=x.dtype, device=x.device)
    has_map = expert_map is not None
    emap = expert_map if has_map else topk_ids
    e_local = w13.shape[0]
    n_map = expert_map.numel() if has_map else 0
    bits = _weight_bits(scheme)
    zeros1, zeros2 = {}, {}
    if scheme is not None and scheme.weight_dtype == "int4":  # zero points share the scales' (contiguous) layout
        w13_scale, w2_scale = w13_scale.contiguous(), w2_scale.contiguous()
        has_zero = w13_zero is not None
        zeros1 = dict(z_ptr=w13_zero.contiguous() if has_zero else w13_scale, HAS_ZERO=has_zero)  # else unread
        zeros2 = dict(z_ptr=w2_zero.contiguous() if has_zero else w2_scale, HAS_ZERO=has_zero)
    tile1, tile2, kstep1, kstep2 = GEMV_TILES[bits]
    if bits == 8 and scheme.granularity == "block":
        tile2 = GEMV2_BLOCK_TILE
    chained = programmatic_launch(x.device)
    launch = dict(PDL=True, launch_pdl=True) if chained else {}
    early = dict(TRIGGER_EARLY=GEMV1_TRIGGER[bits] == "start") if chained else {}
    bn, bk = _blocks(h, 1, kstep1, tile1)
    bn = max(bn, triton.next_power_of_2(triton.cdiv(i, _MAX_GRID_Y)))
    _moe_gemv1_kernel[(m * top_k, triton.cdiv(i, bn))](
        x, w13, inter, topk_ids, emap, i, h, top_k, n_map, e_local, x.stride(0), w13.stride(0), w13.stride(1),
        inter.stride(0),
        HAS_MAP=has_map, ACTIVATION=ACTIVATIONS[activation], BLOCK_N=bn, BLOCK_K=bk, PTX=mx_ptx,
        STAGES=GEMV_STAGES[bits],
        num_warps=num_warps, **_scale_args(scheme, w13_scale), **_bias_args(w13_bias), **launch, **early, **zeros1,
    )
    topk_pad = triton.next_power_of_2(top_k)
    bn, bk = _blocks(i, topk_pad, kstep2, tile2)
    bn = max(bn, triton.next_power_of_2(triton.cdiv(h, _MAX_GRID_Y)))  # CUDA grid's y extent
    _moe_gemv2_kernel[(m, triton.cdiv(h, bn))](
        inter, w2, out, topk_ids, topk_weights, emap, h, i, top_k, n_map, e_local, inter.stride(0), w2.stride(0),
        w2.stride(1), out.stride(0), HAS_MAP=has_map, TOPK=topk_pad, BLOCK_N=bn, BLOCK_K=bk, PTX=mx_ptx,
        STAGES=GEMV_STAGES[bits],
        num_warps=num_warps, **_scale_args(scheme, w2_scale), **_bias_args(w2_bias), **launch, **zeros2,
    )
    return out
