"""Probe (GPU; the kernel also runs under TRITON_INTERPRET=1): a decode GEMM for 2 <= M <= 16 on tensor cores
with the operands swapped and K split inside the program, against ``moekit.linear`` and ``F.linear``.

``out^T[rows, m] = w[rows, :] @ x[m, :]^T``: the weight is the MMA's left operand (``ROWS`` rows per
program), the M <= 16 tokens its right one, ``MP`` = next power of two of M columns (triton pads an MMA
operand narrower than the instruction in registers). The K step is ``S`` slices of
``BKS``, one batch of a 3-D ``tl.dot`` each (``[S, ROWS, BKS] x [S, BKS, 16]``), so the program's warps
stream different K slices of the same rows, and the slices are summed once, in the program, at the end.
``SPLIT_K`` > 1 splits K across programs as well (fp32 partials, the last program of each row block sums
them, as the ``skinny`` path does). fp8 weights are widened to the activation dtype (exact) and their
per-channel scale applied to the fp32 sums.

    PYTHONPATH=src python3 benchmarks/probe_decode_mma.py [--m 4,16] [--schemes none,fp8_channel] [--out F.json]
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch
import triton
import triton.language as tl


@triton.jit
def _mma_gemv_kernel(x_ptr, w_ptr, ws_ptr, out_ptr, part_ptr, lock_ptr, M, N, K, SPLIT_K,
                     stride_xm, stride_wn, stride_om,
                     W_SCALE: tl.constexpr, USE_WS: tl.constexpr, ROWS: tl.constexpr, S: tl.constexpr,
                     BKS: tl.constexpr, STAGES: tl.constexpr, MP: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * ROWS + tl.arange(0, ROWS)
    r_ok = rows < N
    offs_s = tl.arange(0, S)
    offs_k = tl.arange(0, BKS)
    offs_m = tl.arange(0, MP)
    m_ok = offs_m < M
    ka = offs_s[:, None, None] * BKS + offs_k[None, None, :]  # [S, 1, BKS]
    kb = offs_s[:, None, None] * BKS + offs_k[None, :, None]  # [S, BKS, 1]
    a_ptrs = w_ptr + rows.to(tl.int64)[None, :, None] * stride_wn + ka
    b_ptrs = x_ptr + offs_m[None, None, :] * stride_xm + kb
    acc = tl.zeros((S, ROWS, MP), dtype=tl.float32)
    for k0 in tl.range(pid_k * (S * BKS), K, SPLIT_K * (S * BKS), num_stages=STAGES):
        a = tl.load(a_ptrs + k0, mask=r_ok[None, :, None] & (ka < K - k0), other=0.0)
        b = tl.load(b_ptrs + k0, mask=m_ok[None, None, :] & (kb < K - k0), other=0.0)
        acc = tl.dot(a.to(b.dtype), b, acc)
    tot = tl.sum(acc, axis=0)  # [ROWS, MP]
    if W_SCALE == 1:
        tot = tot * tl.load(ws_ptr + rows, mask=r_ok, other=0.0)[:, None]
    mask = r_ok[:, None] & m_ok[None, :]
    o_off = offs_m[None, :] * stride_om + rows[:, None]
    if not USE_WS:
        tl.store(out_ptr + o_off, tot.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        t_off = offs_m[None, :] * N + rows[:, None]
        tl.store(part_ptr + pid_k * M * N + t_off, tot, mask=mask)
        tl.debug_barrier()
        count = tl.atomic_add(lock_ptr + pid_n, 1, sem="acq_rel")
        if count == SPLIT_K - 1:
            total = tl.zeros((ROWS, MP), dtype=tl.float32)
            for s in range(0, SPLIT_K):
                total += tl.load(part_ptr + s * M * N + t_off, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptr + o_off, total.to(out_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(lock_ptr + pid_n, 0)


_LOCKS = {}


def mma_gemv(x, w, scale, rows, s, bks, split, stages, warps=None):
    """out [M, N] = x [M, K] @ w [N, K]^T (x scale [N] per channel when given), M <= 16."""
    M, K = x.shape
    N = w.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    tiles = triton.cdiv(N, rows)
    split = max(1, min(split, triton.cdiv(K, s * bks)))
    part, lock = out, out
    if split > 1:
        part = torch.empty((split, M, N), dtype=torch.float32, device=x.device)
        key = (x.device, tiles)
        if key not in _LOCKS:
            _LOCKS[key] = torch.zeros(tiles, dtype=torch.int32, device=x.device)
        lock = _LOCKS[key]
    _mma_gemv_kernel[(tiles, split)](
        x, w, scale if scale is not None else out, out, part, lock, M, N, K, split,
        x.stride(0), w.stride(0), out.stride(0),
        W_SCALE=0 if scale is None else 1, USE_WS=split > 1, ROWS=rows, S=s, BKS=bks, STAGES=stages,
        MP=triton.next_power_of_2(M), num_warps=warps or s)
    return out


def candidates(N, K, sms, m):
    if m > 8:  # session 12, second question: wider row blocks, K slices fewer than warps (warps also split rows)
        pairs = ((4, 4), (2, 4), (2, 8), (4, 8), (1, 4))  # (K slices, warps)
        return [(rows, s, bks, 1, 4, warps) for rows in (16, 32, 64) for s, warps in pairs for bks in (64, 128)
                if rows * s * bks <= 16384]
    out = []
    for rows, (s, bks), stages in itertools.product((8, 16, 32), ((4, 64), (4, 128), (4, 256), (8, 128)), (4, 6)):
        tiles = triton.cdiv(N, rows)
        ksteps = triton.cdiv(K, s * bks)
        splits = sorted({max(1, min(ksteps, (w * sms) // tiles)) for w in (0, 1)})
        for split in splits:
            out.append((rows, s, bks, split, stages))
    return out


def main():
    from moekit.linear import linear
    from moekit.linear_tune import SHAPES, Problem, time_us
    from moekit.quant.scheme import as_scheme

    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="4,16")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--schemes", default="fp8_channel,none")
    ap.add_argument("--rep", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "rows": []}
    print(res["device"], res["torch"], res["triton"], flush=True)
    for sname, scheme in itertools.product(args.shapes.split(","), args.schemes.split(",")):
        N, K = SHAPES[sname]
        prob = Problem(N, K, as_scheme(scheme, "scheme"))
        kw = prob.kwargs()
        scale = kw["weight_scale"].reshape(-1).contiguous() if scheme != "none" else None
        for m in [int(v) for v in args.m.split(",")]:
            t = {"router": time_us(prob.run_fn(m, lambda a, w: linear(a, w, **kw)), args.rep),
                 "f_linear_bf16": time_us(prob.bf16_fn(m), args.rep)}
            x = prob.x(m)
            ref = (x.double() @ (prob.weight.double() * (scale.double()[:, None] if scale is not None else 1)).T)
            best = (float("inf"), None)
            for cand in candidates(N, K, sms, m):
                try:
                    got = mma_gemv(x, prob.weights[0], scale, *cand).double()
                except Exception as e:  # noqa: BLE001 - a probe: report and go on
                    print("   fail", cand, type(e).__name__, str(e)[:200], flush=True)
                    continue
                err = float((got - ref).norm() / ref.norm())
                us = time_us(prob.run_fn(m, lambda a, w, c=cand: mma_gemv(a, w, scale, *c)), args.rep)
                key = "mma_r{}_s{}_k{}_split{}_st{}".format(*cand) + (f"_w{cand[5]}" if len(cand) > 5 else "")
                t[key] = us
                if err > 1e-2 or err != err:
                    t[key + "_BAD_err"] = err
                elif us < best[0]:
                    best = (us, key)
            res["rows"].append({"shape": sname, "scheme": scheme, "N": N, "K": K, "M": m, "us": t,
                                "best_mma": best[1]})
            print(f"{sname:20s} {scheme:12s} M={m:3d} router {t['router']:6.2f} F.linear {t['f_linear_bf16']:6.2f} "
                  f"best mma {best[0]:6.2f} ({best[1]})  x F.linear: router "
                  f"{t['f_linear_bf16'] / t['router']:.2f} mma {t['f_linear_bf16'] / best[0]:.2f}", flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(res, f, indent=1)
        del prob
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
