"""PROTOTYPE (not shipped; measured slower in session 11, kept as the starting point of a persistent or TMA
variant): warp-specialized Gluon GEMMs for fp8 128x128-block MoE on
Hopper, the design at the end of ``docs/PERF_NOTES.md`` session 10.

Partitions: two consumer warpgroups and a 4-warp producer issuing the cp.async copies into a 4-deep ring.
GEMM 2: each consumer owns 128 of the tile's 256 columns. GEMM 1: consumer 0 computes the gate tile
[64, 128] and consumer 1 the up tile; consumer 1 hands its tile over through shared memory for the epilogue.
Each consumer issues one N=128 wgmma per K step and waits on it at once; the other consumer's MMA runs
meanwhile. The ring has per-slot ``ready`` barriers (the producer's 128 threads arrive
when their copies land) and ``empty`` barriers (count 2, one arrival per consumer after it retires the
slot). There is no CTA-wide barrier in any K loop.

Checked on a CPU only (triton 3.6, sm_90; ``python3 benchmarks/proto_ws_fp8_block.py --compile``):
- both kernels: 168 registers in the default region, no spills with ``worker_num_regs=[216, 80]``
  ([232, 40] spilled);
- shared memory: GEMM 1 200 KB, GEMM 2 176 KB;
- each consumer loop has 4 QGMMA.64x128x32 and one WARPGROUP.DEPBAR, with partition-local
  ``bar.sync n, 128``;
- ``mbarrier.arrive`` is predicated on the first thread of each warpgroup.

On a GPU, ``python3 benchmarks/proto_ws_fp8_block.py`` checks both against the shipped Gluon GEMMs through
``fused_moe``. The A/B arms ``ws2`` (GEMM 2 only) and ``ws`` (both GEMMs) of
``benchmarks/ab_fp8_block_gluon.py`` time them.

Session 11, H100: exact against the shipped kernels (relative error 0, no deadlock); whole forward 0.97-0.99x
(GEMM 2 only) and 0.96-0.97x (both) of the shipped Gluon kernels (``ab_fp8_block_ws_proto_H100_session11.json``).
A variant with 128 x 128 GEMM 2 tiles (the consumers split the rows and share the weight tile; rows aligned
to 128) measured 0.86x at DeepSeek-V3 M=4096 (``ab_fp8_block_ws2m_H100_session11.json``); its code is in
commit b0662dd, not here.
"""
import os
import sys

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                                warpgroup_mma_wait)

from moekit.kernels.moe_gemm_sm90 import _max_keep_nan, _tile_ids

BM = gl.constexpr(64)
BN = gl.constexpr(256)
BK = gl.constexpr(128)
NSTAGES = gl.constexpr(4)


@gluon.jit
def _k_loop(a_smem, b_smem, B_ROW0: gl.constexpr, ready, empty, as_ptrs, bs_ptr, nk, stride_ask, stride_bsk,
            MMA: gl.constexpr):
    """A consumer's K loop: [BM, 128] = sum over steps of (A tile @ B rows [B_ROW0, B_ROW0 + 128) of the slot)
    x (row scales x block scale); each slot released to the producer as soon as its MMA retires."""
    BLOCK_M: gl.constexpr = BM
    STAGES: gl.constexpr = NSTAGES
    acc = gl.zeros([BLOCK_M, 128], gl.float32, layout=MMA)
    p = gl.zeros([BLOCK_M, 128], gl.float32, layout=MMA)
    a_s = gl.load(as_ptrs)
    b_s = gl.load(bs_ptr)
    for k in range(nk):
        s = k % STAGES
        kn = gl.minimum(k + 1, nk - 1)
        a_sn = gl.load(as_ptrs + kn * stride_ask)
        b_sn = gl.load(bs_ptr + kn * stride_bsk)
        mbarrier.wait(ready.index(s), (k // STAGES) & 1)
        fence_async_shared()
        t = warpgroup_mma(a_smem.index(s), b_smem.index(s).slice(B_ROW0, 128, dim=0).permute((1, 0)), p,
                          use_acc=False, is_async=True)
        p = warpgroup_mma_wait(num_outstanding=0, deps=(t, ))
        mbarrier.arrive(empty.index(s), count=1)
        acc += p * (gl.expand_dims(a_s, 1) * b_s)
        a_s, b_s = a_sn, b_sn
    return acc


@gluon.jit
def _producer(a_smem, b_smem, ready, empty, a_ptr, w_ptr, row0, col0, expert, nk, stride_am, stride_we, stride_wn):
    BLOCK_M: gl.constexpr = BM
    BLOCK_N: gl.constexpr = BN
    BLOCK_K: gl.constexpr = BK
    STAGES: gl.constexpr = NSTAGES
    LD: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [4, 1], [1, 0])
    offs_k = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, LD))
    rows_m = (row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LD))).to(gl.int64)
    a_ptrs = a_ptr + gl.expand_dims(rows_m * stride_am, 1) + gl.expand_dims(offs_k, 0)
    rows_n = (col0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, LD))).to(gl.int64)
    b_ptrs = w_ptr + expert * stride_we + gl.expand_dims(rows_n * stride_wn, 1) + gl.expand_dims(offs_k, 0)
    for k in range(nk):
        s = k % STAGES
        mbarrier.wait(empty.index(s), ((k // STAGES) & 1) ^ 1, pred=k >= STAGES)
        cp.async_copy_global_to_shared(a_smem.index(s), a_ptrs + k * BLOCK_K)
        cp.async_copy_global_to_shared(b_smem.index(s), b_ptrs + k * BLOCK_K)
        cp.mbarrier_arrive(ready.index(s), increment_count=False)
    cp.wait_group(0)


@gluon.jit
def _consumer(a_smem, b_smem, ready, empty, y_ptr, topk_w_ptr, a_scale_ptr, b_scale_ptr, sorted_ptr, row0, col0,
              expert, nk, num_slots, mul_weight, stride_ym, stride_asm, stride_ask, stride_bse, stride_bsn,
              stride_bsk, HALF: gl.constexpr):
    """One warpgroup: columns [HALF * 128, HALF * 128 + 128) of the tile."""
    BLOCK_M: gl.constexpr = BM
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 32])
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    offs_m = (row0 + gl.arange(0, BLOCK_M, layout=ROW)).to(gl.int64)
    as_ptrs = a_scale_ptr + offs_m * stride_asm
    bs_ptr = b_scale_ptr + expert * stride_bse + ((col0 + HALF * 128) // 128) * stride_bsn
    acc = _k_loop(a_smem, b_smem, HALF * 128, ready, empty, as_ptrs, bs_ptr, nk, stride_ask, stride_bsk, MMA)
    slot = gl.load(sorted_ptr + offs_m)
    w = gl.load(topk_w_ptr + slot, mask=slot < num_slots, other=0.0)
    acc = acc * gl.expand_dims(gl.where(mul_weight != 0, w, 1.0), 1)
    ST: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])
    out = gl.convert_layout(acc.to(y_ptr.dtype.element_ty), ST)
    slot_st = gl.load(sorted_ptr + row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ST)))
    on = col0 + HALF * 128 + gl.arange(0, 128, layout=gl.SliceLayout(0, ST))
    y_ptrs = y_ptr + gl.expand_dims(slot_st.to(gl.int64) * stride_ym, 1) + gl.expand_dims(on, 0)
    gl.store(y_ptrs, out, mask=gl.expand_dims(slot_st < num_slots, 1))


# Worker partitions take no constexpr arguments (they are flattened to IR values), hence one wrapper per half.
@gluon.jit
def _consumer_lo(a_smem, b_smem, ready, empty, y_ptr, topk_w_ptr, a_scale_ptr, b_scale_ptr, sorted_ptr, row0, col0,
                 expert, nk, num_slots, mul_weight, stride_ym, stride_asm, stride_ask, stride_bse, stride_bsn,
                 stride_bsk):
    _consumer(a_smem, b_smem, ready, empty, y_ptr, topk_w_ptr, a_scale_ptr, b_scale_ptr, sorted_ptr, row0, col0,
              expert, nk, num_slots, mul_weight, stride_ym, stride_asm, stride_ask, stride_bse, stride_bsn,
              stride_bsk, 0)


@gluon.jit
def _consumer_hi(a_smem, b_smem, ready, empty, y_ptr, topk_w_ptr, a_scale_ptr, b_scale_ptr, sorted_ptr, row0, col0,
                 expert, nk, num_slots, mul_weight, stride_ym, stride_asm, stride_ask, stride_bse, stride_bsn,
                 stride_bsk):
    _consumer(a_smem, b_smem, ready, empty, y_ptr, topk_w_ptr, a_scale_ptr, b_scale_ptr, sorted_ptr, row0, col0,
              expert, nk, num_slots, mul_weight, stride_ym, stride_asm, stride_ask, stride_bse, stride_bsn,
              stride_bsk, 1)


@gluon.jit
def _ws_gemm2_kernel(
    a_ptr, w_ptr, y_ptr, topk_w_ptr, a_scale_ptr, b_scale_ptr, sorted_ptr, experts_ptr, npp_ptr,
    N, K, num_slots, num_pid_m,
    stride_am, stride_we, stride_wn, stride_ym, stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk,
    mul_weight, GROUP_M: gl.constexpr,
):
    BLOCK_M: gl.constexpr = BM
    BLOCK_N: gl.constexpr = BN
    BLOCK_K: gl.constexpr = BK
    STAGES: gl.constexpr = NSTAGES
    pid_m, pid_n = _tile_ids(gl.program_id(0), num_pid_m, N // BLOCK_N, GROUP_M)
    if pid_m * BLOCK_M >= gl.load(npp_ptr):
        return
    expert = gl.load(experts_ptr + pid_m).to(gl.int64)
    nk = K // BLOCK_K
    row0 = pid_m * BLOCK_M
    col0 = pid_n * BLOCK_N
    A_SL: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], gl.float8e4nv)
    B_SL: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.float8e4nv)
    a_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_M, BLOCK_K], A_SL)
    b_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_N, BLOCK_K], B_SL)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=128)
        mbarrier.init(empty.index(s), count=2)
    cargs = (a_smem, b_smem, ready, empty, y_ptr, topk_w_ptr, a_scale_ptr, b_scale_ptr, sorted_ptr, row0, col0, expert,
             nk, num_slots, mul_weight, stride_ym, stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk)
    gl.warp_specialize([
        (_consumer_lo, cargs),
        (_consumer_hi, cargs),
        (_producer, (a_smem, b_smem, ready, empty, a_ptr, w_ptr, row0, col0, expert, nk, stride_am, stride_we,
                     stride_wn)),
    ], [4, 4], [216, 80])


def moe_gemm2_ws(a, a_scale, w2, w2_scale, y, topk_weights, sorted_ids, expert_ids, npp, group_m: int,
                 mul_weight: bool = True) -> None:
    """Drop-in for :func:`moekit.kernels.moe_gemm_sm90.moe_gemm2_fp8_block_sm90` (N a multiple of 256)."""
    n, k = w2.shape[1], a.shape[1]
    num_pid_m = expert_ids.shape[0]
    _ws_gemm2_kernel[(num_pid_m * (n // 256),)](
        a, w2, y, topk_weights, a_scale, w2_scale, sorted_ids, expert_ids, npp,
        n, k, y.shape[0], num_pid_m,
        a.stride(0), w2.stride(0), w2.stride(1), y.stride(0), a_scale.stride(0), a_scale.stride(1),
        w2_scale.stride(0), w2_scale.stride(1), w2_scale.stride(2),
        int(mul_weight), GROUP_M=group_m, num_warps=4,
    )


# ---------------------------------------------------------------------------------------------------------------
# GEMM 1: consumer 0 computes the gate tile [64, 128], consumer 1 the up tile; the epilogue pairs them
# ---------------------------------------------------------------------------------------------------------------


@gluon.jit
def _g1_producer(a_smem, g_smem, u_smem, ready, empty, x_ptr, w_ptr, sorted_ptr, row0, col0, expert, nk, I,
                 num_slots, top_k, stride_xm, stride_we, stride_wn):
    BLOCK_M: gl.constexpr = BM
    BLOCK_K: gl.constexpr = BK
    STAGES: gl.constexpr = NSTAGES
    LD: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [4, 1], [1, 0])
    offs_k = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, LD))
    slot = gl.load(sorted_ptr + row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LD)))
    tok = gl.where(slot < num_slots, slot // top_k, 0).to(gl.int64)  # padding slots read token 0
    x_ptrs = x_ptr + gl.expand_dims(tok * stride_xm, 1) + gl.expand_dims(offs_k, 0)
    rows_n = (col0 + gl.arange(0, 128, layout=gl.SliceLayout(1, LD))).to(gl.int64)
    g_ptrs = w_ptr + expert * stride_we + gl.expand_dims(rows_n * stride_wn, 1) + gl.expand_dims(offs_k, 0)
    u_ptrs = g_ptrs + I * stride_wn
    for k in range(nk):
        s = k % STAGES
        mbarrier.wait(empty.index(s), ((k // STAGES) & 1) ^ 1, pred=k >= STAGES)
        cp.async_copy_global_to_shared(a_smem.index(s), x_ptrs + k * BLOCK_K)
        cp.async_copy_global_to_shared(g_smem.index(s), g_ptrs + k * BLOCK_K)
        cp.async_copy_global_to_shared(u_smem.index(s), u_ptrs + k * BLOCK_K)
        cp.mbarrier_arrive(ready.index(s), increment_count=False)
    cp.wait_group(0)


@gluon.jit
def _g1_consumer(a_smem, g_smem, u_smem, ready, empty, pair, up_smem, out_ptr, out_scale_ptr, a_scale_ptr,
                 b_scale_ptr, sorted_ptr, row0, col0, pid_n, expert, nk, I, num_slots, top_k, inv_qmax, min_s,
                 stride_om, stride_osm, stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk,
                 HALF: gl.constexpr):
    """HALF 0: the gate tile, then the epilogue; HALF 1: the up tile, handed over through ``up_smem``."""
    BLOCK_M: gl.constexpr = BM
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 32])
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    slot = gl.load(sorted_ptr + row0 + gl.arange(0, BLOCK_M, layout=ROW))
    tok = gl.where(slot < num_slots, slot // top_k, 0).to(gl.int64)
    as_ptrs = a_scale_ptr + tok * stride_asm
    bs_ptr = b_scale_ptr + expert * stride_bse + (pid_n + HALF * (I // 128)) * stride_bsn
    if HALF == 0:
        acc = _k_loop(a_smem, g_smem, 0, ready, empty, as_ptrs, bs_ptr, nk, stride_ask, stride_bsk, MMA)
    else:
        acc = _k_loop(a_smem, u_smem, 0, ready, empty, as_ptrs, bs_ptr, nk, stride_ask, stride_bsk, MMA)
    if HALF == 1:
        up_smem.store(acc)
        mbarrier.arrive(pair, count=1)
    else:
        mbarrier.wait(pair, 0)
        u = up_smem.load(MMA)
        h = acc / (1.0 + gl.exp(-acc)) * u
        amax = gl.reduce(gl.abs(h), 1, _max_keep_nan)
        o_s = gl.where(amax != amax, amax, gl.maximum(amax * inv_qmax, min_s))  # a NaN amax stays NaN
        q = gl.div_rn(h, gl.expand_dims(o_s, 1)).to(gl.float8e4nv)
        offs_m = (row0 + gl.arange(0, BLOCK_M, layout=ROW)).to(gl.int64)
        gl.store(out_scale_ptr + offs_m * stride_osm + pid_n, o_s)
        ST: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [4, 1], [1, 0])
        q = gl.convert_layout(q, ST)
        om = (row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ST))).to(gl.int64)
        on = col0 + gl.arange(0, 128, layout=gl.SliceLayout(0, ST))
        gl.store(out_ptr + gl.expand_dims(om * stride_om, 1) + gl.expand_dims(on, 0), q)


@gluon.jit
def _g1_gate(a_smem, g_smem, u_smem, ready, empty, pair, up_smem, out_ptr, out_scale_ptr, a_scale_ptr, b_scale_ptr,
             sorted_ptr, row0, col0, pid_n, expert, nk, I, num_slots, top_k, inv_qmax, min_s, stride_om, stride_osm,
             stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk):
    _g1_consumer(a_smem, g_smem, u_smem, ready, empty, pair, up_smem, out_ptr, out_scale_ptr, a_scale_ptr,
                 b_scale_ptr, sorted_ptr, row0, col0, pid_n, expert, nk, I, num_slots, top_k, inv_qmax, min_s,
                 stride_om, stride_osm, stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk, 0)


@gluon.jit
def _g1_up(a_smem, g_smem, u_smem, ready, empty, pair, up_smem, out_ptr, out_scale_ptr, a_scale_ptr, b_scale_ptr,
           sorted_ptr, row0, col0, pid_n, expert, nk, I, num_slots, top_k, inv_qmax, min_s, stride_om, stride_osm,
           stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk):
    _g1_consumer(a_smem, g_smem, u_smem, ready, empty, pair, up_smem, out_ptr, out_scale_ptr, a_scale_ptr,
                 b_scale_ptr, sorted_ptr, row0, col0, pid_n, expert, nk, I, num_slots, top_k, inv_qmax, min_s,
                 stride_om, stride_osm, stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk, 1)


@gluon.jit
def _ws_gemm1_kernel(
    x_ptr, w_ptr, out_ptr, out_scale_ptr, a_scale_ptr, b_scale_ptr, sorted_ptr, experts_ptr, npp_ptr,
    I, K, num_slots, top_k, num_pid_m,
    stride_xm, stride_we, stride_wn, stride_om, stride_osm, stride_asm, stride_ask, stride_bse, stride_bsn,
    stride_bsk, inv_qmax, min_s, GROUP_M: gl.constexpr,
):
    BLOCK_M: gl.constexpr = BM
    BLOCK_K: gl.constexpr = BK
    STAGES: gl.constexpr = NSTAGES
    pid_m, pid_n = _tile_ids(gl.program_id(0), num_pid_m, I // 128, GROUP_M)
    if pid_m * BLOCK_M >= gl.load(npp_ptr):
        return
    expert = gl.load(experts_ptr + pid_m).to(gl.int64)
    nk = K // BLOCK_K
    row0 = pid_m * BLOCK_M
    col0 = pid_n * 128
    A_SL: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], gl.float8e4nv)
    B_SL: gl.constexpr = gl.NVMMASharedLayout.get_default_for([128, BLOCK_K], gl.float8e4nv)
    a_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_M, BLOCK_K], A_SL)
    g_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, 128, BLOCK_K], B_SL)
    u_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, 128, BLOCK_K], B_SL)
    up_smem = gl.allocate_shared_memory(gl.float32, [BLOCK_M, 128],
                                        gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0]))
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    pair = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=128)
        mbarrier.init(empty.index(s), count=2)
    mbarrier.init(pair, count=1)
    cargs = (a_smem, g_smem, u_smem, ready, empty, pair, up_smem, out_ptr, out_scale_ptr, a_scale_ptr, b_scale_ptr,
             sorted_ptr, row0, col0, pid_n, expert, nk, I, num_slots, top_k, inv_qmax, min_s, stride_om, stride_osm,
             stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk)
    gl.warp_specialize([
        (_g1_gate, cargs),
        (_g1_up, cargs),
        (_g1_producer, (a_smem, g_smem, u_smem, ready, empty, x_ptr, w_ptr, sorted_ptr, row0, col0, expert, nk, I,
                        num_slots, top_k, stride_xm, stride_we, stride_wn)),
    ], [4, 4], [216, 80])


def moe_gemm1_ws(xq, xs, w13, w13_scale, out, out_scale, sorted_ids, expert_ids, npp, top_k: int, group_m: int,
                 qmax: float) -> None:
    """Drop-in for :func:`moekit.kernels.moe_gemm_sm90.moe_gemm1_fp8_block_sm90`."""
    from moekit.quant.ops import MIN_SCALE

    i, k = w13.shape[1] // 2, xq.shape[1]
    num_pid_m = expert_ids.shape[0]
    _ws_gemm1_kernel[(num_pid_m * (i // 128),)](
        xq, w13, out, out_scale, xs, w13_scale, sorted_ids, expert_ids, npp,
        i, k, xq.shape[0] * top_k, top_k, num_pid_m,
        xq.stride(0), w13.stride(0), w13.stride(1), out.stride(0), out_scale.stride(0), xs.stride(0), xs.stride(1),
        w13_scale.stride(0), w13_scale.stride(1), w13_scale.stride(2), 1.0 / qmax, MIN_SCALE,
        GROUP_M=group_m, num_warps=4,
    )


def _compile_report() -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
    from sass_loops import compile_sass, loop_histograms

    common = {"a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32", "sorted_ptr": "*i32", "experts_ptr": "*i32",
              "npp_ptr": "*i32", "w_ptr": "*fp8e4nv"}
    for fn, ptrs in ((_ws_gemm1_kernel, {"x_ptr": "*fp8e4nv", "out_ptr": "*fp8e4nv", "out_scale_ptr": "*fp32"}),
                     (_ws_gemm2_kernel, {"a_ptr": "*fp8e4nv", "y_ptr": "*bf16", "topk_w_ptr": "*fp32"})):
        ptrs = {**common, **ptrs}
        sig = {n: ptrs.get(n, "fp32" if n in ("inv_qmax", "min_s") else "i32") for n in fn.arg_names}
        div = list(ptrs) + ["I", "N", "K", "stride_xm", "stride_am", "stride_we", "stride_wn", "stride_om",
                            "stride_ym"]
        sass, res = compile_sass(fn, sig, {"GROUP_M": 8}, [n for n in div if n in sig], 90, 4, gluon=True)
        print(fn.__name__, res)
        for n, ops in loop_histograms(sass):
            if 50 < n < 200:
                print(f"  loop of {n}:", {o: c for o, c in ops.items() if "GMMA" in o or "BAR" in o or "LDGSTS" in o})


def _gpu_check() -> None:
    import torch

    import moekit
    import moekit.quant.triton_moe as tq
    from moekit.kernels import moe_gemm_sm90 as g
    from moekit.quant import QuantScheme, quantize_weights

    torch.manual_seed(0)
    m, e, k, h, i = 1024, 16, 4, 1024, 512
    scheme = QuantScheme.fp8_block(128, 128)
    x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16)
    w13, s13 = quantize_weights(torch.randn(e, 2 * i, h, device="cuda") / h ** 0.5, scheme)
    w2, s2 = quantize_weights(torch.randn(e, h, i, device="cuda") / i ** 0.5, scheme)
    logits = torch.randn(m, e, device="cuda")
    kw = dict(quant=scheme, w13_scale=s13, w2_scale=s2)
    tq.FP8_BLOCK_GLUON_MIN_ROWS = 0
    ref = moekit.fused_moe(x, w13, w2, logits, k, **kw)
    real = g.moe_gemm1_fp8_block_sm90, g.moe_gemm2_fp8_block_sm90
    for name, g1, g2 in (("GEMM 2", real[0], moe_gemm2_ws), ("GEMM 1", moe_gemm1_ws, real[1]),
                         ("both GEMMs", moe_gemm1_ws, moe_gemm2_ws)):
        g.moe_gemm1_fp8_block_sm90, g.moe_gemm2_fp8_block_sm90 = g1, g2
        try:
            out = moekit.fused_moe(x, w13, w2, logits, k, **kw)
            torch.cuda.synchronize()
        finally:
            g.moe_gemm1_fp8_block_sm90, g.moe_gemm2_fp8_block_sm90 = real
        err = float((out.double() - ref.double()).norm() / ref.double().norm())
        print(f"warp-specialized {name} against the shipped kernels: relative Frobenius error {err:.2e}",
              "ok" if err < 1e-2 and torch.isfinite(out).all() else "FAILED")

if __name__ == "__main__":
    _compile_report() if "--compile" in sys.argv else _gpu_check()
