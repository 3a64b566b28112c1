"""Repro of a Triton 3.6 miscount (session 26): ``tl.histogram`` of a routed [T_PAD, K_PAD] id tile flattened
with ``tl.reshape`` over-counts on the GPU (H100: T_PAD 16 / 32, K_PAD 1, 16 or more bins: every slot counted 2-4
times), while the same ids stored and loaded back as a vector, and a compare-and-sum count, are right. This is why
``moekit.kernels.align._route_align_kernel`` reads its ids back before aligning them. Prints, per (M, E, top_k),
how many of 20 random problems got each quantity wrong: ids (the flattened tile), hist (its histogram), cmp
(compare-and-sum counts), keys (its sort), cum (exclusive cumsum of hist), hist2 (histogram of the ids loaded
back). Right under the interpreter (``DEV=cpu TRITON_INTERPRET=1``): it has no layouts.

    PYTHONPATH=src python3 benchmarks/repro_histogram.py
"""
import os
import torch, triton, triton.language as tl
from moekit.kernels.align import expert_bins
from moekit.kernels.routing import route_rows

dev = os.environ.get("DEV", "cuda")


@triton.jit
def dbg(logits_ptr, ids_ptr, hist_ptr, cmp_ptr, keys_ptr, hist2_ptr, cum_ptr, M, E_ROUTE, E, TOP_K, stride_lm,
        T_PAD: tl.constexpr, E_ROUTE_PAD: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr):
    rows = tl.arange(0, T_PAD)
    w_tile, id_tile = route_rows(logits_ptr, rows, M, E_ROUTE, TOP_K, stride_lm, False, False,
                                 E_ROUTE_PAD, K_PAD, logits_ptr, False, 0, 1, 0)
    kk = tl.arange(0, K_PAD)
    valid = (rows[:, None] < M) & (kk[None, :] < TOP_K)
    ids = tl.where(valid & (id_tile >= 0) & (id_tile < E), id_tile, E)
    flat = tl.reshape(ids, [T_PAD * K_PAD])
    LANES: tl.constexpr = T_PAD * K_PAD
    lanes = tl.arange(0, LANES)
    tl.store(ids_ptr + lanes, flat)
    h = tl.histogram(flat, E_PAD, mask=flat < E)
    e_idx = tl.arange(0, E_PAD)
    tl.store(hist_ptr + e_idx, h)
    c = tl.sum((flat[:, None] == e_idx[None, :]).to(tl.int32), axis=0)
    tl.store(cmp_ptr + e_idx, c)
    keys = tl.sort(flat * LANES + lanes)
    tl.store(keys_ptr + lanes, keys)
    tl.store(cum_ptr + e_idx, tl.cumsum(h, axis=0) - h)
    tl.debug_barrier()
    re = tl.load(ids_ptr + lanes)
    tl.store(hist2_ptr + e_idx, tl.histogram(re, E_PAD, mask=re < E))


def run(m, e, k, seeds):
    bad = {}
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(m, e, generator=g).to(dev)
        t_pad, k_pad, e_pad = triton.next_power_of_2(m), triton.next_power_of_2(k), expert_bins(e)
        lanes = t_pad * k_pad
        out = {n: torch.full((lanes if n in ("ids", "keys") else e_pad,), -7, dtype=torch.int32, device=dev)
               for n in ("ids", "hist", "cmp", "keys", "hist2", "cum")}
        dbg[(1,)](logits, out["ids"], out["hist"], out["cmp"], out["keys"], out["hist2"], out["cum"], m, e, e, k,
                  logits.stride(0), T_PAD=t_pad, E_ROUTE_PAD=triton.next_power_of_2(e), K_PAD=k_pad, E_PAD=e_pad,
                  num_warps=4)
        o = {n: v.cpu() for n, v in out.items()}
        ref_ids = torch.topk(logits.cpu().float(), k, dim=1).indices.int()
        want = torch.bincount(ref_ids.flatten().long(), minlength=e_pad).int()
        flat_ref = torch.full((t_pad, k_pad), e, dtype=torch.int32)
        flat_ref[:m, :k] = ref_ids
        flat_ref = flat_ref.flatten()
        keys_ref = torch.sort(flat_ref * lanes + torch.arange(lanes, dtype=torch.int32)).values
        expected = dict(ids=flat_ref, hist=want, cmp=want, keys=keys_ref, hist2=want,
                        cum=torch.cumsum(o["hist"], 0).int() - o["hist"])
        for n, ref in expected.items():
            if not torch.equal(o[n], ref):
                bad[n] = bad.get(n, 0) + 1
                if bad[n] == 1:
                    print(f"  m={m} e={e} k={k} seed {seed} {n}: got {o[n].tolist()}")
                    print(f"     want {ref.tolist()}")
    print(f"m={m} e={e} k={k}: wrong of {len(seeds)}: {bad}", flush=True)


for m, e, k in [(16, 16, 1), (16, 32, 1), (16, 8, 1), (8, 16, 1), (16, 16, 2), (32, 16, 1), (16, 128, 1), (2, 128, 8),
                (4, 128, 4), (1, 128, 8), (32, 8, 1), (64, 8, 1), (4, 64, 4)]:
    run(m, e, k, range(20))
