"""Probe (GPU only): how far the decode paths of ``moekit.linear`` (M <= 16) sit from a single kernel that only
reads the weight, on the shapes of ``benchmarks/bench_linear.py``, timed the way it times them (CUDA-graph
replay of one call per rotated weight copy, median per call).

Per shape it prints, in microseconds per call:

* ``empty``: a kernel that writes one element (the per-launch cost inside a graph);
* ``read``: a kernel that reads the whole weight (16-byte loads, about two programs per SM) and writes one
  number per program, the floor for any kernel that streams the weight once;
* ``router``: ``moekit.linear`` (its table's path), and ``F.linear`` on the bf16 weight;
* ``rowdot``: a GEMV without split-K or tensor cores (each program owns ``ROWS`` output rows over the whole
  K, so one launch and no partial sums), for M <= 4; at M = 1 also the router's ``gemv`` path (the same
  design, shipped in ``moekit.kernels.linear_gemv``) at the same rows / K steps.

    PYTHONPATH=src python3 benchmarks/probe_skinny_floor.py [--m 1,4,16] [--out F.json]
"""
from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl


@triton.jit
def _empty_kernel(out_ptr):
    tl.store(out_ptr, 1.0)


@triton.jit
def _read_kernel(w_ptr, out_ptr, n_bytes, BLOCK: tl.constexpr):
    """Program p sums the int32 words of the slices p, p + grid, ... of BLOCK words."""
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    n_words = n_bytes // 4
    for start in tl.range(pid * BLOCK, n_words, tl.num_programs(0) * BLOCK, num_stages=4):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(w_ptr + offs, mask=offs < n_words, other=0)
    tl.store(out_ptr + pid, tl.sum(acc, 0).to(tl.float32))


@triton.jit
def _rowdot_kernel(x_ptr, w_ptr, s_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                   HAS_SCALE: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, MAX_M: tl.constexpr):
    """out[m, rows] = x[m] . w[rows] (x scale[rows]) for m < M <= MAX_M: each program ROWS rows, whole K."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    r_ok = rows < N
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    acc0 = tl.zeros([ROWS, BLOCK_K], dtype=tl.float32)
    acc1 = tl.zeros([ROWS, BLOCK_K], dtype=tl.float32)
    acc2 = tl.zeros([ROWS, BLOCK_K], dtype=tl.float32)
    acc3 = tl.zeros([ROWS, BLOCK_K], dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=4):
        k_ok = offs_k < K - k0
        w = tl.load(w_ptrs + k0, mask=r_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        x0 = tl.load(x_ptr + k0 + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        acc0 += w * x0[None, :]
        if MAX_M > 1:
            x1 = tl.load(x_ptr + stride_xm + k0 + offs_k, mask=k_ok & (M > 1), other=0.0).to(tl.float32)
            acc1 += w * x1[None, :]
        if MAX_M > 2:
            x2 = tl.load(x_ptr + 2 * stride_xm + k0 + offs_k, mask=k_ok & (M > 2), other=0.0).to(tl.float32)
            acc2 += w * x2[None, :]
            x3 = tl.load(x_ptr + 3 * stride_xm + k0 + offs_k, mask=k_ok & (M > 3), other=0.0).to(tl.float32)
            acc3 += w * x3[None, :]
    s = tl.load(s_ptr + rows, mask=r_ok, other=0.0) if HAS_SCALE else 1.0
    o_ptrs = out_ptr + rows
    tl.store(o_ptrs, (tl.sum(acc0, 1) * s).to(out_ptr.dtype.element_ty), mask=r_ok)
    if MAX_M > 1:
        tl.store(o_ptrs + stride_om, (tl.sum(acc1, 1) * s).to(out_ptr.dtype.element_ty), mask=r_ok & (M > 1))
    if MAX_M > 2:
        tl.store(o_ptrs + 2 * stride_om, (tl.sum(acc2, 1) * s).to(out_ptr.dtype.element_ty), mask=r_ok & (M > 2))
        tl.store(o_ptrs + 3 * stride_om, (tl.sum(acc3, 1) * s).to(out_ptr.dtype.element_ty), mask=r_ok & (M > 3))


def rowdot(x, w, scale, rows, block_k, warps):
    M, K = x.shape
    N = w.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    _rowdot_kernel[(triton.cdiv(N, rows),)](x, w, scale if scale is not None else out, out, M, N, K, x.stride(0),
                                           w.stride(0), out.stride(0), HAS_SCALE=scale is not None, ROWS=rows,
                                           BLOCK_K=block_k, MAX_M=1 if M == 1 else 4, num_warps=warps)
    return out


def main():
    from moekit.linear import LinearConfig, linear, linear_path
    from moekit.linear_tune import SHAPES, Problem, time_us
    from moekit.quant.scheme import as_scheme

    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,4,16")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "rows": []}
    print(res["device"], res["torch"], res["triton"])
    dummy = torch.empty(4 * sms, device="cuda")
    for sname in args.shapes.split(","):
        N, K = SHAPES[sname]
        prob = Problem(N, K, as_scheme("fp8_channel", "scheme"))
        kw = prob.kwargs()
        scale = kw["weight_scale"].reshape(-1).contiguous()
        empty = prob.run_fn(1, lambda a, w: _empty_kernel[(1,)](dummy))
        read = prob.run_fn(1, lambda a, w: _read_kernel[(2 * sms,)](w.view(torch.int32), dummy, w.numel(),
                                                                     BLOCK=1024, num_warps=4))
        base = {"empty": time_us(empty, 20), "read_fp8": time_us(read, 20)}
        ws16 = prob.weights_bf16

        def read16():
            for w in ws16:
                _read_kernel[(2 * sms,)](w.view(torch.int32), dummy, 2 * w.numel(), BLOCK=1024, num_warps=4)

        read16.per_call = len(ws16)
        base["read_bf16"] = time_us(read16, 20)
        print(f"{sname:20s} N={N:6d} K={K:6d} weight {N * K / 2**20:6.1f} MiB fp8  " +
              "  ".join(f"{k} {v:6.2f}" for k, v in base.items()), flush=True)
        for m in [int(v) for v in args.m.split(",")]:
            t = dict(base)
            t["router_fp8"] = time_us(prob.run_fn(m, lambda a, w: linear(a, w, **kw)), 20)
            t["f_linear_bf16"] = time_us(prob.bf16_fn(m), 20)
            if m <= 4:
                x = prob.x(m)
                ref = linear(x, prob.weights[0], **kw).float()
                for rows, bk, warps in ((4, 512, 4), (8, 256, 4), (2, 1024, 4), (4, 256, 2), (8, 512, 8)):
                    got = rowdot(x, prob.weights[0], scale, rows, bk, warps).float()
                    err = float((got - ref).norm() / ref.norm())
                    key = f"rowdot_r{rows}_k{bk}_w{warps}"
                    t[key] = time_us(prob.run_fn(m, lambda a, w, r=rows, b=bk, wp=warps: rowdot(a, w, scale, r, b,
                                                                                                 wp)), 20)
                    if err > 2e-2:
                        t[key + "_BAD_err"] = err
                    if m == 1:  # the shipped gemv path at the same rows / K step
                        cfg = LinearConfig(1, rows, bk, 1, 1, warps, 4)
                        t[f"gemv_path_r{rows}_k{bk}_w{warps}"] = time_us(prob.run_fn(
                            m, lambda a, w, c=cfg: linear_path("gemv", a, w, config=c, **kw)), 20)
            res["rows"].append({"shape": sname, "N": N, "K": K, "M": m, "us": t})
            best = min((v, k) for k, v in t.items() if k.startswith("rowdot") and not k.endswith("err")) \
                if m <= 4 else (float("nan"), "-")
            if m == 1:
                print("   ", "  ".join(f"{k} {v:.2f}" for k, v in t.items() if k.startswith(("rowdot", "gemv"))))
            print(f"  M={m:3d} router {t['router_fp8']:6.2f}  F.linear {t['f_linear_bf16']:6.2f}  best rowdot "
                  f"{best[0]:6.2f} ({best[1]})  x F.linear: router {t['f_linear_bf16'] / t['router_fp8']:.2f} "
                  f"rowdot {t['f_linear_bf16'] / best[0]:.2f}", flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(res, f, indent=1)
        del prob
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
