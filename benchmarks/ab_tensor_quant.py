"""A/B of the per-tensor activation quantization (``moekit.kernels.quant.tensor_quant``): session 16's two passes
(partial maxima over at most ``AMAX_PROGRAMS`` programs, then a [row, chunk] grid that reduces them) against the
session-15 form kept here (a memset, one program per row looping over its columns with an atomic max, then one
program per row quantizing). The op alone on Mixtral-8x7B's two quantized activations, then the whole fused_moe
of Mixtral fp8 per tensor, arms interleaved (``ab_cases.run_ab``). GPU only.

    PYTHONPATH=src python3 benchmarks/ab_tensor_quant.py [--rounds 3] [--out F.json]
        [--op-only --arms old,new,new@4096]   (the op alone under SPLIT_ROWS_ITEMS values)
"""
from __future__ import annotations

import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(__file__))
import moekit.kernels.quant as kq  # noqa: E402
from ab_cases import parser, run_ab  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.quant.ops import MIN_SCALE, per_tensor_quant  # noqa: E402

NEW = kq.tensor_quant


@triton.jit
def _amax_rows_kernel(x_ptr, amax_ptr, npp_ptr, N, stride_xm, BLOCK: tl.constexpr, HAS_NPP: tl.constexpr):
    row = tl.program_id(0)
    if HAS_NPP:
        if row >= tl.load(npp_ptr):
            return
    m = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row.to(tl.int64) * stride_xm + cols, mask=cols < N, other=0.0).to(tl.float32)
        m = tl.maximum(m, tl.abs(x), propagate_nan=tl.PropagateNan.ALL)
    tl.atomic_max(amax_ptr, tl.reduce(m, 0, kq._max_keep_nan))


@triton.jit
def _quant_rows_kernel(x_ptr, q_ptr, s_ptr, amax_ptr, npp_ptr, N, stride_xm, stride_qm, BLOCK: tl.constexpr,
                       QKIND: tl.constexpr, QMAX: tl.constexpr, EMIN: tl.constexpr, INV_QMAX: tl.constexpr,
                       MIN_S: tl.constexpr, DYNAMIC: tl.constexpr, HAS_NPP: tl.constexpr):
    row = tl.program_id(0)
    if DYNAMIC:
        scale = kq.scale_from_amax(tl.load(amax_ptr), INV_QMAX, MIN_S)
        if row == 0:
            tl.store(s_ptr, scale)
    else:
        scale = tl.load(s_ptr)
    if HAS_NPP:
        if row >= tl.load(npp_ptr):
            return
    for start in range(0, N, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        ok = cols < N
        x = tl.load(x_ptr + row.to(tl.int64) * stride_xm + cols, mask=ok, other=0.0).to(tl.float32)
        q = kq.quantize_values(x, scale, QKIND, QMAX, EMIN)
        tl.store(q_ptr + row.to(tl.int64) * stride_qm + cols, q.to(q_ptr.dtype.element_ty), mask=ok)


def old_tensor_quant(x, q, s, qkind, qmax, emin, dynamic, npp=None):
    rows, n = x.shape
    block = min(triton.next_power_of_2(max(n, 1)), 2048)
    amax = None
    if dynamic:
        amax = torch.zeros(1, dtype=torch.float32, device=x.device)
        _amax_rows_kernel[(rows,)](x, amax, npp, n, x.stride(0), BLOCK=block, HAS_NPP=npp is not None)
    _quant_rows_kernel[(rows,)](x, q, s, amax, npp, n, x.stride(0), q.stride(0), BLOCK=block, QKIND=qkind,
                                QMAX=qmax, EMIN=emin, INV_QMAX=1.0 / qmax, MIN_S=MIN_SCALE, DYNAMIC=dynamic,
                                HAS_NPP=npp is not None)


SPLIT = kq.SPLIT_ROWS_ITEMS


def set_arm(arm: str) -> None:
    """``old``, ``new``, or ``new@N`` (the new kernels with ``SPLIT_ROWS_ITEMS`` = N)."""
    kq.tensor_quant = old_tensor_quant if arm == "old" else NEW
    kq.SPLIT_ROWS_ITEMS = int(arm.split("@")[1]) if "@" in arm else SPLIT


def op_alone(rounds: int, arms=("old", "new"), ms=(16, 64, 256, 1024, 4096)) -> None:
    """per_tensor_quant alone: x [M, 4096] and the intermediate [2M + padding, 14336] (npp = 2M)."""
    for m in ms:
        for rows, n, used in ((m, 4096, None), (2 * m + 8 * 15, 14336, 2 * m)):
            x = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
            npp = None if used is None else torch.tensor([used], device="cuda", dtype=torch.int32)
            best, outs = {}, {}
            for _ in range(rounds):
                for arm in arms:
                    set_arm(arm)
                    best[arm] = min(best.get(arm, 1e9), _median_us(lambda: per_tensor_quant(x, npp=npp)))
                    outs[arm] = per_tensor_quant(x, npp=npp)
            set_arm("new")
            same = all(torch.equal(outs[arms[0]][1], o[1]) and torch.equal(
                outs[arms[0]][0][:used].view(torch.uint8), o[0][:used].view(torch.uint8)) for o in outs.values())
            print(f"op M={m:5d} x[{rows}, {n}] " + "  ".join(f"{a} {best[a]:7.1f} us" for a in arms)
                  + f"  bit-equal {same}", flush=True)


if __name__ == "__main__":
    ap = parser(__doc__, "old,new", ["mixtral8x7b:fp8_tensor:16,64,256,1024,4096"])
    ap.add_argument("--op-only", action="store_true", help="time the op alone, every arm; no forward")
    a = ap.parse_args()
    op_alone(a.rounds, tuple(a.arms.split(",")) if a.op_only else ("old", "new"))
    if not a.op_only:
        run_ab(a, set_arm, "new")
