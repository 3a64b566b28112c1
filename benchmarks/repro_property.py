"""Replay test_property's problem space deterministically on the GPU, printing each problem before it runs
(an illegal address kills the process: the last line names the culprit). Debug aid for the device."""
import random
import sys

import torch

sys.path.insert(0, "tests")
import moekit  # noqa: E402
from moekit.testing import assert_close_to_reference  # noqa: E402
from reference import moe_reference, route_reference  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: run under TRITON_INTERPRET=1 (no bf16 there)
DTYPES = [torch.bfloat16, torch.float16, torch.float32] if DEV == "cuda" else [torch.float16, torch.float32]
rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
for n in range(int(sys.argv[2]) if len(sys.argv) > 2 else 400):
    e = rng.choice([1, 2, 3, 4, 8, 12, 16]); k = rng.randint(1, e); m = rng.randint(0, 40)
    h = rng.randint(1, 12) * 8; i = rng.randint(1, 8) * 8
    mode = rng.choice(["softmax", "sigmoid", "grouped"]); route = {"scoring": "sigmoid" if mode == "sigmoid" else "softmax", "renormalize": rng.random() < .5}
    if mode == "grouped" and e % 4 == 0 and e >= 8:
        route.update(num_expert_group=4, topk_group=rng.randint(1, 4)); k = min(k, route["topk_group"] * e // 4)
    use_map = rng.random() < .5; dtype = rng.choice(DTYPES)
    backend = rng.choice(["triton", "torch"])  # the property test draws both
    desc = f"#{n} {backend} m={m} e={e} k={k} h={h} i={i} route={route} map={use_map} {dtype}"
    print(desc, flush=True)
    g = torch.Generator().manual_seed(n)
    e_local, emap = e, None
    if use_map and e >= 2:
        e_local = e // 2; emap = torch.full((e,), -1, dtype=torch.int32); emap[1::2][:e_local] = torch.arange(e_local, dtype=torch.int32)
    x = torch.randn(m, h, generator=g).to(dtype); w13 = (torch.randn(e_local, 2 * i, h, generator=g) / h ** .5).to(dtype)
    w2 = (torch.randn(e_local, h, i, generator=g) / i ** .5).to(dtype); logits = torch.randn(m, e, generator=g)
    d = lambda t: None if t is None else t.to(DEV)  # noqa: E731
    out = moekit.fused_moe(d(x), d(w13), d(w2), d(logits), k, expert_map=d(emap), backend=backend, **route)
    if DEV == "cuda":
        torch.cuda.synchronize()
    if m == 0:
        continue
    w, ids = route_reference(logits, k, route["renormalize"], route["scoring"], route.get("num_expert_group"), route.get("topk_group"))
    ref = moe_reference(x, w13, w2, w, ids, emap)
    if emap is not None and ref.abs().max() == 0:
        if not (out == 0).all():
            print(f"MISMATCH {desc}: expected zeros", flush=True)
        continue
    try:
        assert_close_to_reference(out, ref, dtype)
    except AssertionError as err:
        print(f"MISMATCH {desc}: {str(err)[:300]}", flush=True)
print("done", flush=True)
