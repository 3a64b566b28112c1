"""Benchmark the dense GEMM router (moekit.linear) on DeepSeek-V3 / Qwen3-30B-A3B attention and shared-expert
shapes against F.linear (bf16 weight) and, for fp8 schemes, per-token quant + torch._scaled_mm
(per-token x per-channel), all measured in the same run as CUDA-graph replays (median, weights < 64 MB
rotated among copies).

For each point it also re-times every path at the config ``moekit tune-linear`` found best for it (the
table's "paths"), so "best single path" is measured in this run too, and checks the router's output
against the torch path.

    PYTHONPATH=src MOEKIT_CONFIG_DIR=<tables> python3 benchmarks/bench_linear.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch


def _table_entry(N, K, scheme, M):
    from moekit.linear import config_dirs, load_table, table_file_name
    from moekit.platform import current_platform, device_name_for_configs

    name = table_file_name(N, K, device_name_for_configs(current_platform()), torch.bfloat16, scheme)
    for d in config_dirs():
        if (d / name).is_file():
            t = load_table(d / name)
            ks = sorted(t)
            for k in ks:
                if k >= M:
                    return t[k]
            return t[ks[-1]]
    return None


def main(argv=None) -> int:
    from moekit.linear import LinearConfig, linear, linear_path, select_path
    from moekit.linear_tune import BATCH_SIZES, SCHEMES, SHAPES, Problem, time_us
    from moekit.quant.ops import per_token_quant
    from moekit.quant.scheme import as_scheme
    from moekit.testing import rel_frobenius_error

    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    ap.add_argument("--rep", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a GPU", file=sys.stderr)
        return 2
    rows = []
    flinear = {}  # (shape, M) -> us: the bf16 baseline does not depend on the scheme
    t0 = time.time()
    for sname in args.shapes:
        N, K = SHAPES[sname]
        for q in args.schemes:
            scheme = as_scheme(None if q == "none" else q, "scheme")
            prob = Problem(N, K, scheme)
            kw = prob.kwargs()
            ones = torch.ones(1, N, device=prob.device) if scheme.is_quantized else None
            for M in args.batch_sizes:
                x = prob.x(M)
                path, cfg = select_path(M, N, K, torch.bfloat16, scheme)
                ref = linear_path("torch", x, prob.weight, **kw)
                err = rel_frobenius_error(linear(x, prob.weight, **kw), ref)
                fns = {"router": prob.run_fn(M, lambda a, w: linear(a, w, **kw)),
                       "torch": prob.run_fn(M, lambda a, w: linear_path("torch", a, w, **kw))}
                entry = _table_entry(N, K, scheme, M)
                for p, v in ((entry or {}).get("paths") or {}).items():
                    if p != "torch":
                        c = LinearConfig.from_dict(v["config"]) if v["config"] else None
                        fns[p] = prob.run_fn(M, lambda a, w, p=p, c=c: linear_path(p, a, w, config=c, **kw))
                if (sname, M) not in flinear:
                    fns["f_linear"] = prob.bf16_fn(M)
                if scheme.granularity == "block" and K % 16 == 0 and N % 16 == 0:
                    def smm(a, w):
                        qa, sa = per_token_quant(a, w.dtype)
                        torch._scaled_mm(qa, w.t(), scale_a=sa, scale_b=ones, out_dtype=torch.bfloat16)

                    fns["scaled_mm"] = prob.run_fn(M, smm)
                # interleaved rounds, alternating order: clock/thermal drift hits every candidate alike
                for fn in fns.values():
                    fn()
                time_us(fns["router"], args.rep)  # warm the clocks
                times = {k: [] for k in fns}
                order = list(fns)
                for r in range(args.rounds):
                    for k in (order if r % 2 == 0 else order[::-1]):
                        times[k].append(time_us(fns[k], args.rep))
                med = {k: statistics.median(v) for k, v in times.items()}
                if "f_linear" in med:
                    flinear[(sname, M)] = med.pop("f_linear")
                t_router = med.pop("router")
                t_smm = med.pop("scaled_mm", None)
                singles = med
                best_path = min(singles, key=singles.get)
                t_flinear = flinear[(sname, M)]
                row = {
                    "shape": sname, "N": N, "K": K, "scheme": scheme.name, "M": M, "router_path": path,
                    "router_config": cfg.to_dict() if cfg else None, "router_us": t_router,
                    "router_rel_err_vs_torch_path": err, "singles_us": singles, "best_single_path": best_path,
                    "best_single_us": singles[best_path], "router_over_best": t_router / singles[best_path],
                    "f_linear_bf16_us": t_flinear, "speedup_vs_f_linear": t_flinear / t_router,
                }
                if scheme.granularity in ("channel", "tensor"):  # the torch path is quant + _scaled_mm
                    t_smm = singles["torch"]
                if t_smm is not None:
                    row["scaled_mm_us"] = t_smm
                    row["speedup_vs_scaled_mm"] = t_smm / t_router
                rows.append(row)
                print(f"{sname:20s} {scheme.name:17s} M={M:5d} router {path:11s} {t_router:9.2f} us | best "
                      f"{best_path:11s} {singles[best_path]:9.2f} ({t_router / singles[best_path]:.3f}) | "
                      f"F.linear {t_flinear:9.2f} (x{t_flinear / t_router:.2f})"
                      + (f" | _scaled_mm {row['scaled_mm_us']:9.2f} (x{row['speedup_vs_scaled_mm']:.2f})"
                         if "scaled_mm_us" in row else "") + f" | err {err:.1e}", flush=True)
            del prob
            torch.cuda.empty_cache()
            info = _write(args, rows, t0)  # after every (shape, scheme): a time-out keeps what was measured
    print(markdown(info, rows))
    return 0


def _write(args, rows, t0):
    from moekit.linear_tune import meta

    info = dict(meta(), seconds=round(time.time() - t0, 1), rep_ms=args.rep, rounds=args.rounds,
                config_dir=os.environ.get("MOEKIT_CONFIG_DIR"))
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "bench_linear_" + info["device"].replace(" ", "_"))
    with open(stem + ".json", "w") as f:
        json.dump({"meta": info, "rows": rows}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(info, rows))
    return info


def markdown(info, rows) -> str:
    lines = [f"# moekit.linear on {info['device']} (torch {info['torch']}, triton {info['triton']})", "",
             "CUDA-graph replay, median us (median of interleaved rounds); weights < 64 MB rotated. `best` = fastest single path at its tuned "
             "config, timed in the same run. F.linear uses the bf16 weight; `_scaled_mm` = per-token fp8 quant "
             "+ torch._scaled_mm (per-token x per-channel).", "",
             "| shape | N | K | scheme | M | router path | router us | best path | best us | router/best | "
             "F.linear us | x F.linear | _scaled_mm us | x _scaled_mm |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        smm = (f"{r['scaled_mm_us']:.2f} | {r['speedup_vs_scaled_mm']:.2f}" if "scaled_mm_us" in r else "- | -")
        lines.append(f"| {r['shape']} | {r['N']} | {r['K']} | {r['scheme']} | {r['M']} | {r['router_path']} | "
                     f"{r['router_us']:.2f} | {r['best_single_path']} | {r['best_single_us']:.2f} | "
                     f"{r['router_over_best']:.3f} | {r['f_linear_bf16_us']:.2f} | {r['speedup_vs_f_linear']:.2f} | "
                     f"{smm} |")
    worst = max(rows, key=lambda r: r["router_over_best"])
    lines += ["", f"Worst router/best: {worst['router_over_best']:.3f} ({worst['shape']} {worst['scheme']} "
              f"M={worst['M']}); points over 1.03: {sum(r['router_over_best'] > 1.03 for r in rows)} of {len(rows)}."]
    small = [r for r in rows if r["M"] <= 16 and r["scheme"] == "none"]
    if small:
        lines.append("bf16, M <= 16, router vs F.linear: " + ", ".join(
            f"{r['shape']} M={r['M']} x{r['speedup_vs_f_linear']:.2f}" for r in small))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    raise SystemExit(main())
