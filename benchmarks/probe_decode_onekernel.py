"""Probe (GPU only): the Qwen3-30B-A3B decode (M = 1, bf16) as ONE kernel against the shipped three (routing,
GEMV 1, GEMV 2 under programmatic dependent launch). Session 16 measured that three kernels reading at full
speed cannot pass ~80 % of the floor (``probe_decode_boundaries.py``); this kernel routes, runs GEMV 1, meets
the whole grid at a barrier and runs GEMV 2, with GEMV 2's first weight tile loaded before the barrier so the
wait overlaps HBM traffic.

* Launch: a persistent grid of ``P`` programs, all resident (cooperative launch, which fails rather than
  deadlock when they cannot be); every program routes the token itself (128 logits, no flag to wait on).
* GEMV 1 items (slot, ``BN1`` rows of I) are dealt round-robin, ``cdiv(items, P)`` per program; GEMV 2 items
  (``BN2`` columns of H, every top-k slot's rows at once, K in one masked step) likewise.
* Grid barrier: one atomic add per program (program 0 adds ``2**31 - (P - 1)``, the others 1, so the sign
  bit flips once per launch whatever the counter held: no reset, CUDA-graph replay safe), then polling with
  ``ld.acquire.gpu`` until the sign bit differs from the one seen on arrival. The counter must start with its
  low 31 bits zero (a launch leaves it so): one buffer zeroed once (per stream, were this shipped).

    PYTHONPATH=src python3 benchmarks/probe_decode_onekernel.py [--out F.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(__file__))
from moekit import fused_moe  # noqa: E402
from moekit.bench import _median_us  # noqa: E402
from moekit.kernels.moe_gemm import gate_up  # noqa: E402
from moekit.kernels.routing import route_rows, select_experts_triton  # noqa: E402
from moekit.shapes import SHAPES  # noqa: E402

ROT = 8
_BAR = {}  # device -> the barrier counter: zero once, then back to 0 / 2**31 after every launch


@triton.jit
def _ld_acquire(ptr):
    return tl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _nanosleep(ptr):
    return tl.inline_asm_elementwise("nanosleep.u32 64; mov.u32 $0, 0;", "=r,l", [ptr], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _grid_barrier(bar_ptr, master_inc, SLEEP: tl.constexpr = False):
    tl.debug_barrier()  # every thread's stores of this program happen before the release below
    inc = tl.where(tl.program_id(0) == 0, master_inc, 1)
    old = tl.atomic_add(bar_ptr, inc, sem="release", scope="gpu")
    cur = old
    polls = 0
    while ((cur ^ old) >= 0) & (polls < 2_000_000):  # sign bit unchanged: not everyone has arrived (the cap
        cur = _ld_acquire(bar_ptr)                        # turns a bug into a wrong answer, not a hang)
        polls += 1
        if SLEEP:
            polls += _nanosleep(bar_ptr)


@triton.jit
def _decode_kernel(logits_ptr, x_ptr, w13_ptr, w2_ptr, inter_ptr, out_ptr, bar_ptr, master_inc,
                   E, H, I, TOP_K, stride_we1, stride_wn1, stride_we2, stride_wn2,
                   E_PAD: tl.constexpr, K_PAD: tl.constexpr, BN1: tl.constexpr, BK1: tl.constexpr,
                   BN2: tl.constexpr, BK2: tl.constexpr, ITEMS1: tl.constexpr, ITEMS2: tl.constexpr,
                   BARRIER: tl.constexpr, PRELOAD: tl.constexpr, ids_ptr=None, wts_ptr=None,
                   ROUTE: tl.constexpr = 1, DO1: tl.constexpr = True, DO2: tl.constexpr = True,
                   SLEEP: tl.constexpr = False, NW: tl.constexpr = 4):
    # breakdown switches: ROUTE 1 one routing row, 2 one row per warp (reductions stay in a warp), 0 ids and
    # weights given (ids_ptr / wts_ptr); DO1 / DO2 GEMV 1 / 2 on; SLEEP: nanosleep between polls
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    kcols = tl.arange(0, K_PAD)
    if ROUTE == 1:
        w_tile, id_tile = route_rows(logits_ptr, tl.arange(0, 1), 1, E, TOP_K, E, False, True, E_PAD, K_PAD,
                                     logits_ptr, False, 0, 1, 0)
        ids = tl.reshape(id_tile, [K_PAD])
        wts = tl.reshape(w_tile, [K_PAD])
    elif ROUTE == 2:
        w_tile, id_tile = route_rows(logits_ptr, tl.arange(0, NW) * 0, 1, E, TOP_K, E, False, True, E_PAD, K_PAD,
                                     logits_ptr, False, 0, 1, 0)
        ids = tl.max(id_tile, axis=0)
        wts = tl.max(w_tile, axis=0)
    else:
        ids = tl.load(ids_ptr + kcols, mask=kcols < TOP_K, other=0)
        wts = tl.load(wts_ptr + kcols, mask=kcols < TOP_K, other=0.0)
    nb1 = tl.cdiv(I, BN1)
    n_items1 = TOP_K * nb1
    offs_k1 = tl.arange(0, BK1)
    for t in tl.static_range(ITEMS1 if DO1 else 0):
        item = pid + t * P
        if item < n_items1:
            slot = item // nb1
            e = tl.sum(tl.where(kcols == slot, ids, 0))
            offs_n = (item % nb1) * BN1 + tl.arange(0, BN1)
            n_ok = offs_n < I
            rows = w13_ptr + e.to(tl.int64) * stride_we1 + offs_n.to(tl.int64)[:, None] * stride_wn1
            g_ptrs = rows + offs_k1[None, :]
            u_ptrs = g_ptrs + I * stride_wn1
            acc_g = tl.zeros([BN1], dtype=tl.float32)
            acc_u = tl.zeros([BN1], dtype=tl.float32)
            for k0 in range(0, H, BK1):
                k_ok = offs_k1 < H - k0
                xk = tl.load(x_ptr + k0 + offs_k1, mask=k_ok, other=0.0).to(tl.float32)[None, :]
                wmask = n_ok[:, None] & k_ok[None, :]
                acc_g += tl.sum(tl.load(g_ptrs + k0, mask=wmask, other=0.0).to(tl.float32) * xk, axis=1)
                acc_u += tl.sum(tl.load(u_ptrs + k0, mask=wmask, other=0.0).to(tl.float32) * xk, axis=1)
            h = gate_up(acc_g, acc_u, 0)
            tl.store(inter_ptr + slot * I + offs_n, h.to(inter_ptr.dtype.element_ty), mask=n_ok)
    # GEMV 2: item = BN2 columns of H, all top-k slots at once, K (= I) in steps of BK2
    e2 = tl.maximum(ids, 0).to(tl.int64)
    live = kcols < TOP_K
    offs_k2 = tl.arange(0, BK2)
    w_rows = w2_ptr + e2[:, None, None] * stride_we2 + offs_k2[None, None, :]
    offs_c0 = pid * BN2 + tl.arange(0, BN2)
    if PRELOAD:  # the first K step of the first item, in flight across the barrier
        w_first = tl.load(w_rows + offs_c0.to(tl.int64)[None, :, None] * stride_wn2,
                          mask=live[:, None, None] & (offs_c0 < H)[None, :, None] & (offs_k2 < I)[None, None, :],
                          other=0.0)
    if BARRIER:
        _grid_barrier(bar_ptr, master_inc, SLEEP)
    for t in tl.static_range(ITEMS2 if DO2 else 0):
        offs_c = (pid + t * P) * BN2 + tl.arange(0, BN2)
        c_ok = offs_c < H
        w_ptrs = w_rows + offs_c.to(tl.int64)[None, :, None] * stride_wn2
        wmask = live[:, None, None] & c_ok[None, :, None]
        acc = tl.zeros([K_PAD, BN2], dtype=tl.float32)
        k_start = 0
        if PRELOAD and t == 0:
            a = tl.load(inter_ptr + kcols[:, None] * I + offs_k2[None, :], mask=live[:, None] & (offs_k2 < I)[None, :],
                        other=0.0).to(tl.float32)
            acc += tl.sum(w_first.to(tl.float32) * a[:, None, :], axis=2)
            k_start = BK2
        for k0 in range(k_start, I, BK2):
            k_ok = offs_k2 < I - k0
            a = tl.load(inter_ptr + kcols[:, None] * I + k0 + offs_k2[None, :], mask=live[:, None] & k_ok[None, :],
                        other=0.0).to(tl.float32)
            w = tl.load(w_ptrs + k0, mask=wmask & k_ok[None, None, :], other=0.0).to(tl.float32)
            acc += tl.sum(w * a[:, None, :], axis=2)
        y = tl.sum(acc * wts[:, None], axis=0)
        tl.store(out_ptr + offs_c, y.to(out_ptr.dtype.element_ty), mask=c_ok)


def decode(x, w13, w2, logits, top_k, P, bn1, bk1, bn2, bk2, warps, preload=True, barrier=True, coop=True,
           **flags):
    e, h = logits.shape[1], x.shape[1]
    i = w13.shape[1] // 2
    inter = torch.empty((top_k, i), device=x.device, dtype=x.dtype)
    out = torch.empty_like(x)
    if x.device not in _BAR:
        _BAR[x.device] = torch.zeros(1, device=x.device, dtype=torch.int32)
    bar = _BAR[x.device]  # see _grid_barrier
    items1 = top_k * triton.cdiv(i, bn1)
    items2 = triton.cdiv(h, bn2)
    inc = (1 << 31) - (P - 1)
    inc = inc - (1 << 32) if inc >= (1 << 31) else inc
    _decode_kernel[(P,)](logits, x, w13, w2, inter, out, bar, inc, e, h, i, top_k,
                         w13.stride(0), w13.stride(1), w2.stride(0), w2.stride(1),
                         E_PAD=triton.next_power_of_2(e), K_PAD=triton.next_power_of_2(top_k), BN1=bn1, BK1=bk1,
                         BN2=bn2, BK2=bk2, ITEMS1=triton.cdiv(items1, P),
                         ITEMS2=triton.cdiv(items2, P), BARRIER=barrier, PRELOAD=preload, num_warps=warps, NW=warps,
                         **flags,
                         launch_cooperative_grid=coop)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--breakdown", action="store_true")
    args = ap.parse_args()
    s = SHAPES["qwen3_30b_a3b"]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "sms": sms, "runs": {}}
    w13 = torch.randn(s.E, 2 * s.I, s.H, device="cuda", dtype=torch.bfloat16) / s.H ** 0.5
    w2 = torch.randn(s.E, s.H, s.I, device="cuda", dtype=torch.bfloat16) / s.I ** 0.5
    xs = [torch.randn(1, s.H, device="cuda", dtype=torch.bfloat16) for _ in range(ROT)]
    lgs = [torch.randn(1, s.E, device="cuda") for _ in range(ROT)]
    ref = [fused_moe(x.double(), w13.double(), w2.double(), lg, s.top_k, backend="torch")
           for x, lg in zip(xs[:2], lgs[:2])]
    shipped = lambda: [fused_moe(x, w13, w2, lg, s.top_k) for x, lg in zip(xs, lgs)]  # noqa: E731
    routed = [select_experts_triton(lg, s.top_k) for lg in lgs]
    cands = {}
    configs = [(p, bn1, 512, 1, 256, 4, True, {}) for p in (sms * 4, 768, sms * 6, sms * 7) for bn1 in (8, 4)]
    configs += [(sms * 6, 8, 512, 1, 256, 4, False, {}), (sms * 4, 8, 512, 1, 1024, 4, True, {}),
                (sms * 4, 4, 512, 1, 1024, 4, True, {})]
    configs += [(sms * 3, 16, 512, bn2, bk2, 8, True, {}) for bn2 in (1, 2) for bk2 in (256, 512)]
    if args.breakdown:  # where the time goes, at one shape; entries with "nobar" are timing only (racy)
        base = (768, 8, 512, 1, 256, 4, True)
        configs = [base + (f,) for f in (
            {}, dict(ROUTE=2), dict(ROUTE=0), dict(SLEEP=True), dict(ROUTE=2, SLEEP=True),
            dict(ROUTE=0, barrier=False), dict(ROUTE=0, DO2=False, barrier=False),
            dict(ROUTE=0, DO1=False), dict(ROUTE=0, DO1=False, barrier=False), dict(ROUTE=1, DO2=False, barrier=False),
            dict(ROUTE=2, DO2=False, barrier=False), dict(ROUTE=0, DO2=False, barrier=False, coop=False),
            dict(ROUTE=0, DO1=False, barrier=False, coop=False), dict(ROUTE=0, barrier=False, coop=False),
            dict(coop=False))]
        configs += [(sms * 6, 8, 512, 1, 256, 4, True, dict(ROUTE=2)),
                    (sms * 4, 8, 512, 1, 1024, 4, True, dict(ROUTE=2))]
    for P, bn1, bk1, bn2, bk2, warps, pre, flags in configs:
        name = f"P{P}_n{bn1}_k{bk1}_c{bn2}_k{bk2}_w{warps}_{'pre' if pre else 'nopre'}" + "".join(
            f"_{k}{int(v)}" for k, v in flags.items())
        check = flags.get("barrier", True) and flags.get("DO1", True) and flags.get("DO2", True)

        def run(i, P=P, bn1=bn1, bk1=bk1, bn2=bn2, bk2=bk2, warps=warps, pre=pre, flags=flags):
            extra = dict(flags)
            if extra.get("ROUTE", 1) == 0:
                extra.update(ids_ptr=routed[i][1], wts_ptr=routed[i][0])
            return decode(xs[i], w13, w2, lgs[i], s.top_k, P, bn1, bk1, bn2, bk2, warps, pre, **extra)
        fn = lambda run=run: [run(i) for i in range(ROT)]  # noqa: E731
        try:
            got = [run(i) for i in range(2)]
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 (a grid too large to be co-resident, say)
            print(f"{name}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            continue
        err = max(((g.double() - r).norm() / r.norm()).item() for g, r in zip(got, ref))
        if check:
            for _ in range(50):  # many launches on one counter: the sign-bit barrier must come back each time
                got = run(0)
            err = max(err, ((got.double() - ref[0]).norm() / ref[0].norm()).item())
            if not err < 2e-2:
                print(f"{name}: WRONG rel err {err}", flush=True)
                continue
        cands[name] = (fn, err)
        print(f"{name}: ok, rel err {err:.2e}{'' if check else ' (timing only)'}", flush=True)
    # rounds: the shipped forward and every candidate, interleaved
    rounds = 3
    times = {"shipped": []}
    for r in range(rounds):
        times["shipped"].append(_median_us(shipped) / ROT)
        for name, (fn, err) in cands.items():
            try:
                times.setdefault(name, []).append(_median_us(fn) / ROT)
            except Exception as exc:  # noqa: BLE001 (graph capture)
                print(f"{name}: capture {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                times[name] = [float("nan")]
        print(f"round {r}: shipped {times['shipped'][-1]:.2f} us", flush=True)
    for name, ts in sorted(times.items(), key=lambda kv: min(kv[1])):
        res["runs"][name] = {"us": ts, "best": min(ts), "err": cands[name][1] if name in cands else None}
        print(f"{name:36s} best {min(ts):7.2f}  " + " ".join(f"{t:.2f}" for t in ts), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
