"""Hopper (sm_90) fp8 block-scaled grouped GEMMs, written in Gluon: the prefill path of fp8 w8a8 128x128-block
MoE layers (DeepSeek-V3, Qwen3-FP8).

Why a second kernel: with block scales the K loop is ``acc += dot(a_k, b_k) * (a_scale_k * b_scale_k)``. In
Triton a wgmma whose accumulator is not carried by the loop is waited on at once, so every K step runs
"MMA, wait, scale" and the tensor cores idle while the scales are applied (28-30 % of fp8 peak at M=4096,
``docs/PERF_NOTES.md``). Here the MMAs of step k are issued asynchronously (``warpgroup_mma(is_async=True)``),
then ``warpgroup_mma_wait(num_outstanding=...)`` retires only step k-1's, whose product is scaled and added
while step k's MMAs run. Operand tiles go through a ring of ``STAGES`` shared-memory buffers filled by
cp.async (rows of A are gathered by the sorted token ids, so TMA does not apply to A).

Layouts are those of :mod:`moekit.kernels.moe_gemm` (same launch contract, same outputs):
  GEMM 1: x fp8 [M, K] with per-(token, 128-column group) scales [M, K/128] float32; w13 fp8 [E, 2I, K] (gate
          rows then up rows) with scales [E, 2I/128, K/128]; out fp8 [P, I] (P = padded sorted slots) quantized
          per (row, BLOCK_N = 128 columns) with scales [P, I/128]; activation SiLU.
  GEMM 2: a fp8 [P, K] with scales [P, K/128]; w2 fp8 [E, N, K] with scales [E, N/128, K/128]; y [slots, N]
          (bf16/fp16) = routing weight x (a @ w2[e].T), rows of padding slots untouched.
Constraints (checked by :func:`moekit.quant.triton_moe.fp8_block_gluon`): 128x128 blocks, e4m3fn, K a
multiple of 256 in both GEMMs (two K steps of 128 per loop iteration), N a multiple of 128 (GEMM 2: of 256
for its 256-column tiles, else 128-column ones). Tiles: GEMM 1 64 x 128 (gate and up each), GEMM 2 64 x
256, 8 warps, 4-deep rings (160 KB of shared memory), one CTA per SM.

Measured (H100, ``docs/PERF_NOTES.md`` session 10): 1.21-1.22x over the Triton kernels at M=4096, 34-37 % of
fp8 peak. ncu at Qwen3 M=4096: L2 at 58-63 % of its peak, DRAM 32-40 %, 12.5 % occupancy; the largest stall
is waiting on the copies (long scoreboard), then the CTA barriers. Tried and dropped (A/B files in
``benchmarks/results/*_session10*``): per-slot mbarriers instead of copy-group waits (0.97-0.98x), gate and
up in one N=256 wgmma (0.97-1.00x), 64-column GEMM 1 tiles with two CTAs per SM (0.83-0.90x), ring depths
3 / 5 and GEMM 2 tiles of 128 columns (within 2 %, or slower).
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from moekit.kernels.linear_gemm import splitk_reduce
from moekit.quant.ops import MIN_SCALE


@gluon.constexpr_function
def _mma_layout(block_m, block_n, num_warps):
    """wgmma layout: warps stacked along M while each warpgroup keeps >= 64 rows, the rest along N; each
    instruction as wide as its warps' share of the columns (at most 256)."""
    wm = min(num_warps, max(4, block_m // 16))
    wn = num_warps // wm
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[wm, wn],
                                     instr_shape=[16, min(256, block_n // wn), 32])


@gluon.constexpr_function
def _load_layout(num_warps):
    """cp.async tiles of fp8 [rows, 128]: 16 bytes per thread, 8 threads per 128-byte row."""
    return gl.BlockedLayout(size_per_thread=[1, 16], threads_per_warp=[4, 8], warps_per_cta=[num_warps, 1],
                            order=[1, 0])


@gluon.constexpr_function
def _store_layout(block_n, elem_bytes, num_warps):
    """Coalesced stores of [rows, block_n] outputs: 16 bytes per thread."""
    vec = 16 // elem_bytes
    tn = min(32, block_n // vec)
    return gl.BlockedLayout(size_per_thread=[1, vec], threads_per_warp=[32 // tn, tn], warps_per_cta=[num_warps, 1],
                            order=[1, 0])


@gluon.jit
def _tile_ids(pid, num_pid_m, num_pid_n, GROUP_M: gl.constexpr):
    """Grouped launch order (as :func:`moekit.kernels.tile_ids`)."""
    width = GROUP_M * num_pid_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = gl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + ((pid % width) % size_m), (pid % width) // size_m


@gluon.jit
def _max_keep_nan(a, b):
    return gl.where((a > b) | (a != a), a, b)


@gluon.jit
def _copy_step(smem, ptrs, step, nk, kmask_base, BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
    """cp.async K step ``step`` of a [rows, BLOCK_K] tile into ring slot step % STAGES (nothing read past nk)."""
    mask = gl.expand_dims(kmask_base < (nk - step) * BLOCK_K, 0)
    cp.async_copy_global_to_shared(smem.index(step % STAGES), ptrs + step * BLOCK_K, mask=mask)


@gluon.jit
def _copy_step3(a_smem, g_smem, u_smem, x_ptrs, g_ptrs, u_ptrs, step, nk, offs_k, BLOCK_K: gl.constexpr,
                STAGES: gl.constexpr):
    _copy_step(a_smem, x_ptrs, step, nk, offs_k, BLOCK_K, STAGES)
    _copy_step(g_smem, g_ptrs, step, nk, offs_k, BLOCK_K, STAGES)
    _copy_step(u_smem, u_ptrs, step, nk, offs_k, BLOCK_K, STAGES)


@gluon.jit
def _wait_step(k, STAGES: gl.constexpr, PENDING: gl.constexpr):
    """Wait for K step k's tiles (PENDING copy groups may stay in flight) and make them visible to wgmma;
    returns their ring slot."""
    cp.wait_group(PENDING)
    gl.thread_barrier()
    fence_async_shared()
    return k % STAGES


@gluon.jit
def _refill3(a_smem, g_smem, u_smem, x_ptrs, g_ptrs, u_ptrs, k, nk, offs_k, BLOCK_K: gl.constexpr,
             STAGES: gl.constexpr):
    """GEMM 1's :func:`_refill`: once step k's MMAs are retired in every warpgroup, copy step k + STAGES."""
    gl.thread_barrier()
    _copy_step3(a_smem, g_smem, u_smem, x_ptrs, g_ptrs, u_ptrs, k + STAGES, nk, offs_k, BLOCK_K, STAGES)
    cp.commit_group()


@gluon.jit
def _gemm1_step(a_smem, g_smem, u_smem, k, g_regs, u_regs, STAGES: gl.constexpr, PENDING: gl.constexpr):
    """GEMM 1's :func:`_gemm2_step`: the gate and up MMAs of K step k."""
    st = _wait_step(k, STAGES, PENDING)
    a = a_smem.index(st)
    g = warpgroup_mma(a, g_smem.index(st).permute((1, 0)), g_regs, use_acc=False, is_async=True)
    u = warpgroup_mma(a, u_smem.index(st).permute((1, 0)), u_regs, use_acc=False, is_async=True)
    return g, u


@gluon.jit
def _gemm1_scales(as_ptrs, bsg_ptr, bsu_ptr, k, stride_ask, stride_bsk):
    """K step k's scales: the rows' activation scales, the gate and up weight blocks' scalars."""
    return gl.load(as_ptrs + k * stride_ask), gl.load(bsg_ptr + k * stride_bsk), gl.load(bsu_ptr + k * stride_bsk)


@gluon.jit
def _moe_gemm1_fp8_block_kernel(
    x_ptr, w_ptr, out_ptr, out_scale_ptr, a_scale_ptr, b_scale_ptr, sorted_ptr, experts_ptr, npp_ptr,
    I, K, num_slots, top_k, num_pid_m,
    stride_xm, stride_we, stride_wn, stride_om, stride_osm, stride_asm, stride_ask, stride_bse, stride_bsn,
    stride_bsk,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr,
    STAGES: gl.constexpr, INV_QMAX: gl.constexpr, MIN_S: gl.constexpr, num_warps: gl.constexpr,
):
    pid_m, pid_n = _tile_ids(gl.program_id(0), num_pid_m, I // BLOCK_N, GROUP_M)
    if pid_m * BLOCK_M >= gl.load(npp_ptr):
        return
    LD: gl.constexpr = _load_layout(num_warps)
    MMA: gl.constexpr = _mma_layout(BLOCK_M, BLOCK_N, num_warps)
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    A_SL: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], gl.float8e4nv)
    B_SL: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.float8e4nv)

    expert = gl.load(experts_ptr + pid_m).to(gl.int64)
    nk = K // BLOCK_K
    # gathered activation rows (padding slots read token 0: finite, and their outputs are never used)
    slot_ld = gl.load(sorted_ptr + pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LD)))
    tok_ld = gl.where(slot_ld < num_slots, slot_ld // top_k, 0).to(gl.int64)
    offs_k = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, LD))
    x_ptrs = x_ptr + gl.expand_dims(tok_ld * stride_xm, 1) + gl.expand_dims(offs_k, 0)
    rows_n = (pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, LD))).to(gl.int64)
    g_ptrs = w_ptr + expert * stride_we + gl.expand_dims(rows_n * stride_wn, 1) + gl.expand_dims(offs_k, 0)
    u_ptrs = g_ptrs + I * stride_wn

    # per-step scales: the rows' activation scales and the gate / up weight blocks' scalars
    slot_mma = gl.load(sorted_ptr + pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW))
    tok_mma = gl.where(slot_mma < num_slots, slot_mma // top_k, 0).to(gl.int64)
    as_ptrs = a_scale_ptr + tok_mma * stride_asm
    nb = (pid_n * BLOCK_N) // 128
    bsg_ptr = b_scale_ptr + expert * stride_bse + nb * stride_bsn
    bsu_ptr = bsg_ptr + (I // 128) * stride_bsn

    a_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_M, BLOCK_K], A_SL)
    g_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_N, BLOCK_K], B_SL)
    u_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_N, BLOCK_K], B_SL)
    for s in gl.static_range(STAGES):
        _copy_step3(a_smem, g_smem, u_smem, x_ptrs, g_ptrs, u_ptrs, s, nk, offs_k, BLOCK_K, STAGES)
        cp.commit_group()

    # As in GEMM 2 (see there): two K steps per iteration, step k's gate and up products scaled while step
    # k + 1's MMAs run.
    acc_g = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=MMA)
    acc_u = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=MMA)
    pg0 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=MMA)
    pu0 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=MMA)
    pg1 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=MMA)
    pu1 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=MMA)
    # scales are loaded one iteration ahead (gathered rows: an L2 round trip)
    a0, sg0, su0 = _gemm1_scales(as_ptrs, bsg_ptr, bsu_ptr, 0, stride_ask, stride_bsk)
    a1, sg1, su1 = _gemm1_scales(as_ptrs, bsg_ptr, bsu_ptr, 1, stride_ask, stride_bsk)
    for k in range(0, nk, 2):
        g0, u0 = _gemm1_step(a_smem, g_smem, u_smem, k, pg0, pu0, STAGES, STAGES - 1)
        g1, u1 = _gemm1_step(a_smem, g_smem, u_smem, k + 1, pg1, pu1, STAGES, STAGES - 2)
        kn = gl.minimum(k + 2, nk - 2)
        a0n, sg0n, su0n = _gemm1_scales(as_ptrs, bsg_ptr, bsu_ptr, kn, stride_ask, stride_bsk)
        a1n, sg1n, su1n = _gemm1_scales(as_ptrs, bsg_ptr, bsu_ptr, kn + 1, stride_ask, stride_bsk)
        pg0, pu0 = warpgroup_mma_wait(num_outstanding=2, deps=(g0, u0))
        a_col = gl.expand_dims(a0, 1)
        acc_g += pg0 * (a_col * sg0)
        acc_u += pu0 * (a_col * su0)
        _refill3(a_smem, g_smem, u_smem, x_ptrs, g_ptrs, u_ptrs, k, nk, offs_k, BLOCK_K, STAGES)
        pg1, pu1 = warpgroup_mma_wait(num_outstanding=0, deps=(g1, u1))
        a_col = gl.expand_dims(a1, 1)
        acc_g += pg1 * (a_col * sg1)
        acc_u += pu1 * (a_col * su1)
        _refill3(a_smem, g_smem, u_smem, x_ptrs, g_ptrs, u_ptrs, k + 1, nk, offs_k, BLOCK_K, STAGES)
        a0, sg0, su0, a1, sg1, su1 = a0n, sg0n, su0n, a1n, sg1n, su1n
    cp.wait_group(0)

    # epilogue: SiLU(gate) * up, quantized per (row, BLOCK_N columns)
    h = acc_g / (1.0 + gl.exp(-acc_g)) * acc_u
    amax = gl.reduce(gl.abs(h), 1, _max_keep_nan)
    o_s = gl.where(amax != amax, amax, gl.maximum(amax * INV_QMAX, MIN_S))  # a NaN amax stays NaN
    q = gl.div_rn(h, gl.expand_dims(o_s, 1)).to(gl.float8e4nv)
    offs_m = (pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW)).to(gl.int64)
    gl.store(out_scale_ptr + offs_m * stride_osm + pid_n, o_s)
    ST: gl.constexpr = _store_layout(BLOCK_N, 1, num_warps)
    q = gl.convert_layout(q, ST)
    om = (pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ST))).to(gl.int64)
    on = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, ST))
    gl.store(out_ptr + gl.expand_dims(om * stride_om, 1) + gl.expand_dims(on, 0), q)


@gluon.jit
def _gemm2_step(a_smem, b_smem, k, regs, STAGES: gl.constexpr, PENDING: gl.constexpr):
    """Wait for K step k's tiles (:func:`_wait_step`) and issue its MMA (asynchronous, into ``regs``'
    registers)."""
    st = _wait_step(k, STAGES, PENDING)
    return warpgroup_mma(a_smem.index(st), b_smem.index(st).permute((1, 0)), regs, use_acc=False, is_async=True)


@gluon.jit
def _gemm2_scales(as_ptrs, bs_lo, bs_hi, k, stride_ask, stride_bsk):
    """K step k's scales: the rows' activation scales, the weight blocks' scalars (columns < 128, >= 128)."""
    return gl.load(as_ptrs + k * stride_ask), gl.load(bs_lo + k * stride_bsk), gl.load(bs_hi + k * stride_bsk)


@gluon.jit
def _refill(a_smem, b_smem, a_ptrs, b_ptrs, k, nk, offs_k, BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
    """Once step k's MMA is retired in every warpgroup, copy step k + STAGES into its ring slot."""
    gl.thread_barrier()
    _copy_step(a_smem, a_ptrs, k + STAGES, nk, offs_k, BLOCK_K, STAGES)
    _copy_step(b_smem, b_ptrs, k + STAGES, nk, offs_k, BLOCK_K, STAGES)
    cp.commit_group()


@gluon.jit
def _moe_gemm2_fp8_block_kernel(
    a_ptr, w_ptr, y_ptr, topk_w_ptr, a_scale_ptr, b_scale_ptr, sorted_ptr, experts_ptr, npp_ptr,
    N, K, num_slots, num_pid_m, steps_per_split, stride_split,
    stride_am, stride_we, stride_wn, stride_ym, stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk,
    MUL_WEIGHT: gl.constexpr, DENSE: gl.constexpr, SPLIT: gl.constexpr, BLOCK_M: gl.constexpr,
    BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
    num_warps: gl.constexpr,
):
    if DENSE:  # N need not be a multiple of BLOCK_N: the last column tile is partial
        pid_m, pid_n = _tile_ids(gl.program_id(0), num_pid_m, (N + BLOCK_N - 1) // BLOCK_N, GROUP_M)
    else:
        pid_m, pid_n = _tile_ids(gl.program_id(0), num_pid_m, N // BLOCK_N, GROUP_M)
        if pid_m * BLOCK_M >= gl.load(npp_ptr):
            return
    LD: gl.constexpr = _load_layout(num_warps)
    MMA: gl.constexpr = _mma_layout(BLOCK_M, BLOCK_N, num_warps)
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    COL: gl.constexpr = gl.SliceLayout(0, MMA)
    A_SL: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], gl.float8e4nv)
    B_SL: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.float8e4nv)

    if DENSE:  # one weight, rows in order; rows (and columns) past the last re-read it, and are not stored
        expert = 0
        rows_m = gl.minimum(pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LD)),
                            num_slots - 1).to(gl.int64)
        offs_m = gl.minimum(pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW), num_slots - 1).to(gl.int64)
    else:
        expert = gl.load(experts_ptr + pid_m).to(gl.int64)
        rows_m = (pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LD))).to(gl.int64)
        offs_m = (pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW)).to(gl.int64)
    nk = K // BLOCK_K
    if SPLIT:  # dense split-K: K steps [k_first, k_first + nk) of this tile; fp32 partials into y[program_id(1)]
        k_first = gl.program_id(1) * steps_per_split
        nk = gl.minimum(nk - k_first, steps_per_split)
        a_ptr += k_first * BLOCK_K
        w_ptr += k_first * BLOCK_K
        a_scale_ptr += k_first * stride_ask
        b_scale_ptr += k_first * stride_bsk
        y_ptr += gl.program_id(1).to(gl.int64) * stride_split
    offs_k = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, LD))
    a_ptrs = a_ptr + gl.expand_dims(rows_m * stride_am, 1) + gl.expand_dims(offs_k, 0)
    rows_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, LD))
    if DENSE:
        rows_n = gl.minimum(rows_n, N - 1)
    rows_n = rows_n.to(gl.int64)
    b_ptrs = w_ptr + expert * stride_we + gl.expand_dims(rows_n * stride_wn, 1) + gl.expand_dims(offs_k, 0)

    as_ptrs = a_scale_ptr + offs_m * stride_asm
    # one weight-scale block per 128 columns: BLOCK_N 256 spans two (scalars lo and hi)
    bs_lo = b_scale_ptr + expert * stride_bse + ((pid_n * BLOCK_N) // 128) * stride_bsn
    bs_hi = bs_lo + (BLOCK_N // 256) * stride_bsn
    hi = gl.expand_dims(gl.arange(0, BLOCK_N, layout=COL) >= 128, 0)

    a_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_M, BLOCK_K], A_SL)
    b_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_N, BLOCK_K], B_SL)
    for s in gl.static_range(STAGES):
        _copy_step(a_smem, a_ptrs, s, nk, offs_k, BLOCK_K, STAGES)
        _copy_step(b_smem, b_ptrs, s, nk, offs_k, BLOCK_K, STAGES)
        cp.commit_group()

    # Two K steps per iteration: both MMAs are issued, step k's product is scaled while step k + 1's MMA
    # runs. Each MMA writes over the registers of the product it replaces (use_acc=False ignores their
    # values), and nothing is in flight across the back edge: ptxas serializes every wgmma of a kernel where
    # another instruction writes, or a loop-carried copy reads, the registers of one in flight.
    acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=MMA)
    pt = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=MMA)
    pu = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=MMA)
    # scales are loaded one iteration ahead (an L2 round trip)
    a_t, lo_t, hi_t = _gemm2_scales(as_ptrs, bs_lo, bs_hi, 0, stride_ask, stride_bsk)
    a_u, lo_u, hi_u = _gemm2_scales(as_ptrs, bs_lo, bs_hi, 1, stride_ask, stride_bsk)
    for k in range(0, nk, 2):
        t = _gemm2_step(a_smem, b_smem, k, pt, STAGES, STAGES - 1)
        u = _gemm2_step(a_smem, b_smem, k + 1, pu, STAGES, STAGES - 2)
        kn = gl.minimum(k + 2, nk - 2)
        a_tn, lo_tn, hi_tn = _gemm2_scales(as_ptrs, bs_lo, bs_hi, kn, stride_ask, stride_bsk)
        a_un, lo_un, hi_un = _gemm2_scales(as_ptrs, bs_lo, bs_hi, kn + 1, stride_ask, stride_bsk)
        pt = warpgroup_mma_wait(num_outstanding=1, deps=(t, ))
        acc += pt * (gl.expand_dims(a_t, 1) * gl.where(hi, hi_t, lo_t))
        _refill(a_smem, b_smem, a_ptrs, b_ptrs, k, nk, offs_k, BLOCK_K, STAGES)
        pu = warpgroup_mma_wait(num_outstanding=0, deps=(u, ))
        acc += pu * (gl.expand_dims(a_u, 1) * gl.where(hi, hi_u, lo_u))
        _refill(a_smem, b_smem, a_ptrs, b_ptrs, k + 1, nk, offs_k, BLOCK_K, STAGES)
        a_t, lo_t, hi_t, a_u, lo_u, hi_u = a_tn, lo_tn, hi_tn, a_un, lo_un, hi_un
    cp.wait_group(0)

    if MUL_WEIGHT:
        slot = gl.load(sorted_ptr + offs_m)
        acc = acc * gl.expand_dims(gl.load(topk_w_ptr + slot, mask=slot < num_slots, other=0.0), 1)
    ST: gl.constexpr = _store_layout(BLOCK_N, 4 if SPLIT else 2, num_warps)
    out = gl.convert_layout(acc.to(y_ptr.dtype.element_ty), ST)
    if DENSE:
        slot_st = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ST))
    else:
        slot_st = gl.load(sorted_ptr + pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ST)))
    on = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, ST))
    y_ptrs = y_ptr + gl.expand_dims(slot_st.to(gl.int64) * stride_ym, 1) + gl.expand_dims(on, 0)
    if DENSE:
        gl.store(y_ptrs, out, mask=gl.expand_dims(slot_st < num_slots, 1) & gl.expand_dims(on < N, 0))
    else:
        gl.store(y_ptrs, out, mask=gl.expand_dims(slot_st < num_slots, 1))


#: GEMM 1 tile: 64 rows x 128 gate (and 128 up) columns, 8 warps (two warpgroups side by side along N), 248
#: registers per thread for the six [64, 64] float32 sets (two accumulators, four products in flight).
GEMM1_TILE = (64, 128)
GEMM1_WARPS = 8
#: ring depths of GEMM 1 / GEMM 2 (copies of 40 / 48 KB per K step) and GEMM 2's tile width
GEMM1_STAGES = 4
GEMM2_STAGES = 4
GEMM2_BLOCK_N = 256
GEMM2_WARPS = 8


def moe_gemm1_fp8_block_sm90(xq, xs, w13, w13_scale, out, out_scale, sorted_ids, expert_ids, npp, top_k: int,
                             group_m: int, qmax: float) -> None:
    """``out`` fp8 [P, I] and ``out_scale`` float32 [P, I/128] = SiLU(gate) * up of each sorted slot's expert,
    quantized per (row, 128 columns); the sorted ids must be padded to blocks of ``GEMM1_TILE[0]`` rows."""
    bm, bn = GEMM1_TILE
    i, k = w13.shape[1] // 2, xq.shape[1]
    num_pid_m = expert_ids.shape[0]
    _moe_gemm1_fp8_block_kernel[(num_pid_m * (i // bn),)](
        xq, w13, out, out_scale, xs, w13_scale, sorted_ids, expert_ids, npp,
        i, k, xq.shape[0] * top_k, top_k, num_pid_m,
        xq.stride(0), w13.stride(0), w13.stride(1), out.stride(0), out_scale.stride(0), xs.stride(0), xs.stride(1),
        w13_scale.stride(0), w13_scale.stride(1), w13_scale.stride(2),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, GROUP_M=group_m, STAGES=GEMM1_STAGES, INV_QMAX=1.0 / qmax,
        MIN_S=MIN_SCALE, num_warps=GEMM1_WARPS,
    )


def moe_gemm2_fp8_block_sm90(a, a_scale, w2, w2_scale, y, topk_weights, sorted_ids, expert_ids, npp, group_m: int,
                             mul_weight: bool = True) -> None:
    """``y[slot]`` = routing weight x (a[row] @ w2[e].T) for each sorted row (``a`` fp8 [P, K] with scales
    [P, K/128]); rows of padding slots untouched. Tiles of 64 rows x :data:`GEMM2_BLOCK_N` columns (128 when
    N is not a multiple of 256)."""
    n, k = w2.shape[1], a.shape[1]
    block_n = GEMM2_BLOCK_N if n % GEMM2_BLOCK_N == 0 else 128
    num_pid_m = expert_ids.shape[0]
    _moe_gemm2_fp8_block_kernel[(num_pid_m * (n // block_n),)](
        a, w2, y, topk_weights, a_scale, w2_scale, sorted_ids, expert_ids, npp,
        n, k, y.shape[0], num_pid_m, 0, 0,
        a.stride(0), w2.stride(0), w2.stride(1), y.stride(0), a_scale.stride(0), a_scale.stride(1),
        w2_scale.stride(0), w2_scale.stride(1), w2_scale.stride(2),
        MUL_WEIGHT=mul_weight, DENSE=False, SPLIT=False, BLOCK_M=GEMM1_TILE[0], BLOCK_N=block_n, BLOCK_K=128,
        GROUP_M=group_m, STAGES=GEMM2_STAGES, num_warps=GEMM2_WARPS,
    )


def split_steps(k: int, split: int) -> tuple:
    """(K steps of 128 per program, programs along K) of the dense GEMM with K split ``split`` ways: an even
    number of steps each (the loop takes two per iteration), no program without steps."""
    steps = k // 128
    per = 2 * -(-steps // (2 * max(split, 1)))
    return per, -(-steps // per)


def linear_fp8_block_sm90(a, a_scale, w, w_scale, out, block_n: int, group_m: int, split: int = 1,
                          bias=None) -> None:
    """The dense block-fp8 GEMM of :mod:`moekit.linear` (path ``gluon_w8a8``): ``out`` [M, N] (bf16/fp16) =
    ``a`` fp8 [M, K] (scales float32 [M, K/128]) @ (``w`` fp8 [N, K] with scales [N/128, K/128])^T (+ ``bias``
    [N]), by GEMM 2's kernel with one weight and the rows in order (``DENSE``): no sorted ids, no routing weight,
    the last row and column tiles partial (``block_n`` 256 is lowered to 128 where it does not divide N, so that a
    tile's two weight-scale blocks exist). K a multiple of 256; tiles of 64 rows, 8 warps, :data:`GEMM2_STAGES`-deep
    ring. ``split`` > 1 splits K (:func:`split_steps`) for layers with few tiles (DeepSeek-V3's q_a at M = 256:
    24 tiles of 64 x 256 for 132 SMs): fp32 partials [splits, M, N], summed in order with the bias by
    :func:`moekit.kernels.linear_gemm.splitk_reduce` (a second launch; bitwise reproducible)."""
    m, k = a.shape
    n = w.shape[0]
    block_n = block_n if n % block_n == 0 else 128
    num_pid_m = -(-m // GEMM1_TILE[0])
    per, splits = split_steps(k, split)
    y = out if splits == 1 else torch.empty((splits, m, n), dtype=torch.float32, device=out.device)
    _moe_gemm2_fp8_block_kernel[(num_pid_m * -(-n // block_n), splits)](
        a, w, y, y, a_scale, w_scale, y, y, y,
        n, k, m, num_pid_m, per, m * n,
        a.stride(0), 0, w.stride(0), n if splits > 1 else out.stride(0), a_scale.stride(0), a_scale.stride(1),
        0, w_scale.stride(0), w_scale.stride(1),
        MUL_WEIGHT=False, DENSE=True, SPLIT=splits > 1, BLOCK_M=GEMM1_TILE[0], BLOCK_N=block_n, BLOCK_K=128,
        GROUP_M=group_m, STAGES=GEMM2_STAGES, num_warps=GEMM2_WARPS,
    )
    if splits > 1:
        splitk_reduce(y, out, bias)
    elif bias is not None:
        out.add_(bias)
