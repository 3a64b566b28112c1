"""Run the Triton fused-MoE path once on a small and a large shape, for compute-sanitizer memcheck:
    compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize_moe.py"""
import torch

import moekit

for m, e, k, h, i in [(7, 8, 2, 200, 96), (300, 16, 4, 256, 128), (4096, 128, 8, 2048, 768)]:
    x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16)
    w13 = (torch.randn(e, 2 * i, h, device="cuda") / h ** 0.5).to(torch.bfloat16)
    w2 = (torch.randn(e, h, i, device="cuda") / i ** 0.5).to(torch.bfloat16)
    logits = torch.randn(m, e, device="cuda")
    emap = torch.arange(e, device="cuda", dtype=torch.int32)
    emap[::3] = -1
    out = moekit.fused_moe(x, w13, w2, logits, k, backend="triton")
    out_ep = moekit.fused_moe(x, w13, w2, logits, k, backend="triton", expert_map=emap)
    torch.cuda.synchronize()
    print(f"M={m} E={e} k={k} H={h} I={i}: finite={bool(torch.isfinite(out).all())} "
          f"finite_ep={bool(torch.isfinite(out_ep).all())}")
