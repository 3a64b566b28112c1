"""The ``gemv`` path of the dense GEMM router (:mod:`moekit.linear`): ``out[1, N] = x[1, K] @ w[N, K]^T
(+ bias)``, one token (M = 1, a decode step of one sequence), without tensor cores and without split-K.

Why: at M = 1 the time of a linear layer is the time to read its weight once, plus launch and latency. The
split-K ``skinny`` GEMM gets its parallelism from splitting K, which costs a second pass over fp32 partial
sums (a reduce kernel, or the last program of each tile) and leaves few programs per SM when N is small.
Here each program owns ``ROWS`` output rows over the whole K. Programs are many (N / ROWS) and small, so
several are resident per SM and their loads are in flight together, and the sums never leave registers.

Only M = 1: the probe (``benchmarks/probe_skinny_floor.py``, ``probe_skinny_floor_H100_session11.json``)
measured this form at 1.7-2.1x ``F.linear`` at M = 1 (fp8 per-channel weights, H100), but 0.8-1.1x at M = 4,
where every program re-reads all M rows of x; a first version with a [M, ROWS, BLOCK_K] accumulator lost to
``skinny`` at M = 4 on every shape, and at M = 1 was slower than this form (kv_a fp8 7.85 against 4.34 us;
``tune_linear_gemv_3d_accumulator_H100_session11.log``).

Pipelining: triton 3.6 software-pipelines the K loop (cp.async copies into shared memory, ``num_stages``
deep) only when the depth is given on the loop, ``tl.range(num_stages=...)``; given at the launch it leaves
this loop unpipelined (plain loads; ``tools/sass_loops.py linear_gemv`` shows the SASS, and
``tests/test_tools.py`` checks it). On
the H100 the pipelined loop is the fast one for unquantized and per-channel weights (DeepSeek-V3 kv_a fp8
channel: 4.31 against 5.83 us at the same rows and K step, ``probe_skinny_floor_H100_session11_gemv.json``).
With block scales it is the other way round: the pipelined loop copies each gathered scale with a 4-byte
cp.async, and the tuned best per shape measured 9.1-95 us pipelined against 6.2-45 us unpipelined (M = 1,
``tune_linear_m1_H100_session11_{loop,launch}.log``). So the config's ``num_stages`` is the loop's depth,
and block-scaled weights always run the loop unpipelined (depth 1).

Layout: ``x`` [1, K] and ``w`` [N, K] with contiguous last dimensions; ``out`` [1, N]. Each program keeps a
float32 ``[ROWS, BLOCK_K]`` accumulator and reduces it over K once, at the end. The weight is widened to
float32 in registers: bf16 / fp16 weights as they are, fp8 weights times their scales (``W_SCALE`` 1: per
output channel ``[N]``, stride 0 for one per-tensor scale; 2: per ``(SCALE_BN, SCALE_BK)`` block). With block
scales and ``SCALE_BN % ROWS == 0`` all of a program's rows share one block row, so the scales multiply the
x chunk (``BLOCK_K`` values) rather than the weight tile; otherwise each weight element takes its scale.
Every load is masked, so N and K need not be multiples of the blocks; rows are addressed with 64-bit offsets.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, out_ptr, bias_ptr, ws_ptr,
    N, K, stride_wn, stride_wsn, stride_wsk,
    W_SCALE: tl.constexpr, SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, LOOP_STAGES: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    r_ok = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    acc = tl.zeros((ROWS, BLOCK_K), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=LOOP_STAGES):
        k_ok = offs_k < K - k0
        w = tl.load(w_ptrs + k0, mask=r_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        x = tl.load(x_ptr + k0 + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        if W_SCALE == 2:
            kb = (k0 + offs_k) // SCALE_BK
            if SCALE_BN % ROWS == 0:  # one block row for the whole program: scale x, not the weight tile
                x = x * tl.load(ws_ptr + ((tl.program_id(0) * ROWS) // SCALE_BN) * stride_wsn + kb * stride_wsk,
                                mask=k_ok, other=0.0)
            else:
                w = w * tl.load(ws_ptr + (rows // SCALE_BN)[:, None] * stride_wsn + kb[None, :] * stride_wsk,
                                mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        acc += w * x[None, :]
    out = tl.sum(acc, axis=1)
    if W_SCALE == 1:
        out = out * tl.load(ws_ptr + rows * stride_wsn, mask=r_ok, other=0.0)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rows, mask=r_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=r_ok)


def loop_stages(w_mode: int, num_stages: int) -> int:
    """The K loop's pipelining depth: the config's, except 1 (unpipelined) with block scales (``W_SCALE`` 2)."""
    return 1 if w_mode == 2 else num_stages


def gemv(x, weight, bias, w_mode: int, w_scale, stride_wsn: int, stride_wsk: int, scale_block, rows: int,
         block_k: int, num_warps: int, num_stages: int):
    """Launch :func:`_gemv_kernel`: ``x`` [1, K], ``weight`` [N, K], ``bias`` [N] or None; ``w_mode``,
    ``w_scale`` and its strides as ``W_SCALE`` above (``w_scale`` any tensor for mode 0, a 1-D [N] or [1]
    tensor for mode 1, the [cdiv(N, bn), cdiv(K, bk)] block scales for mode 2), ``scale_block`` (bn, bk).
    Returns ``out`` [1, N] in x's dtype."""
    import torch

    K = x.shape[1]
    N = weight.shape[0]
    out = torch.empty((1, N), dtype=x.dtype, device=x.device)
    sbn, sbk = scale_block
    _gemv_kernel[(triton.cdiv(N, rows),)](
        x, weight, out, bias if bias is not None else out, w_scale,
        N, K, weight.stride(0), stride_wsn, stride_wsk,
        W_SCALE=w_mode, SCALE_BN=sbn, SCALE_BK=sbk, HAS_BIAS=bias is not None, ROWS=rows, BLOCK_K=block_k,
        LOOP_STAGES=loop_stages(w_mode, num_stages), num_warps=num_warps,
    )
    return out
