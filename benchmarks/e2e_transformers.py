"""End-to-end transformers benchmark: real layer dimensions, few layers, random bf16 weights.

For each model (Qwen3-30B-A3B- and Mixtral-8x7B-shaped layers, 4 layers by default) and each variant

  hf        transformers' default experts implementation ("grouped_mm" in transformers 5)
  hf-loop   transformers' experts_implementation="eager" (a Python loop over the experts that got tokens)
  moekit    moekit.integrations.transformers.patch(model)

it measures prefill time (1 x 2048 tokens), decode time per output token (TPOT) at batch 1, 8, 64 with a
StaticCache, in eager mode and (where capture works) replaying one decode step as a CUDA graph, and the MoE share of
the decode step (1 - step time with the MoE blocks stubbed out / step time). Outputs: prefill-logits error of
moekit vs hf and greedy-token agreement over 16 decode steps at batch 8.

    PYTHONPATH=src python3 benchmarks/e2e_transformers.py --out $OUT   # GPU; writes e2e_transformers.json/.md
    python3 benchmarks/e2e_transformers.py --tiny                      # CPU smoke run with tiny dims
"""
from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import time

import torch
from torch import nn

MODELS = {
    # Qwen/Qwen3-30B-A3B config.json (layer dims); num_hidden_layers overridden
    "qwen3-30b-a3b": dict(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        moe_intermediate_size=768, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=False),
    # mistralai/Mixtral-8x7B-v0.1 config.json
    "mixtral-8x7b": dict(
        model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6, rms_norm_eps=1e-5,
        max_position_embeddings=32768, tie_word_embeddings=False),
}
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, num_experts=8, num_local_experts=8)


class _Stub(nn.Module):
    """Stands in for an MoE block to measure the step time without it."""

    def __init__(self, returns_tuple: bool):
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, x, *a, **k):
        out = torch.zeros_like(x)
        return (out, None) if self.returns_tuple else out


def build(name, layers, tiny, device, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(MODELS[name])
    mt = kw.pop("model_type")
    if tiny:
        kw.update({k: v for k, v in TINY.items() if k in kw})
    cfg = AutoConfig.for_model(mt, num_hidden_layers=layers, **kw)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def set_variant(model, variant):
    from moekit.integrations.transformers import patch, unpatch

    unpatch(model)
    model.config._experts_implementation = "eager" if variant == "hf-loop" else "grouped_mm"
    for m in model.modules():
        if hasattr(m, "gate_up_proj") and hasattr(m, "config"):
            m.config._experts_implementation = model.config._experts_implementation
    if variant == "moekit":
        patch(model)


def moe_blocks(model):
    from moekit.integrations.transformers import SUPPORTED_BLOCKS, MoEKitSparseMoeBlock

    out = []
    for parent in model.modules():
        for n, c in parent.named_children():
            if type(c).__name__ in SUPPORTED_BLOCKS or isinstance(c, MoEKitSparseMoeBlock):
                out.append((parent, n, c))
    return out


class stubbed:
    """Context: every MoE block replaced by a zero stub."""

    def __init__(self, model):
        self.blocks = moe_blocks(model)

    def __enter__(self):
        for p, n, c in self.blocks:
            setattr(p, n, _Stub(type(c).__name__ == "GptOssMLP"))

    def __exit__(self, *exc):
        for p, n, c in self.blocks:
            setattr(p, n, c)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, reps, warmup=2):
    for _ in range(warmup):
        fn()
    sync(device)
    if device == "cuda":
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / reps
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) * 1e3 / reps


def prefill_ms(model, seq, device, reps):
    ids = torch.randint(0, model.config.vocab_size, (1, seq), device=device)
    return timeit(lambda: model(ids, use_cache=False, logits_to_keep=1), device, reps, warmup=1)


def make_cache(model, batch, prompt, extra, device):
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=prompt + extra)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device=device,
                        generator=torch.Generator(device).manual_seed(1))
    out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache, out.logits[:, -1].argmax(-1, keepdim=True)


def decode_eager_ms(model, batch, prompt, steps, device):
    cache, tok = make_cache(model, batch, prompt, steps + 4, device)

    def step():
        nonlocal tok
        tok = model(tok, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)

    return timeit(step, device, steps, warmup=2)


def decode_graph_ms(model, batch, prompt, steps, device):
    """One decode step captured as a CUDA graph and replayed (the cache advances on every replay)."""
    cache, tok = make_cache(model, batch, prompt, steps + 16, device)
    static_tok = tok.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            model(static_tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        model(static_tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return timeit(g.replay, device, steps, warmup=2)


def greedy(model, batch, prompt, steps, device):
    cache, tok = make_cache(model, batch, prompt, steps + 4, device)
    toks = [tok]
    for _ in range(steps - 1):
        tok = model(tok, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        toks.append(tok)
    return torch.cat(toks, 1)


def versions(device):
    import transformers

    v = {"torch": torch.__version__, "transformers": transformers.__version__, "python": _platform.python_version()}
    try:
        import triton

        v["triton"] = triton.__version__
    except ImportError:
        v["triton"] = None
    v["device"] = torch.cuda.get_device_name() if device == "cuda" else _platform.processor() or "cpu"
    return v


def run_model(name, args, device, dtype, results, save):
    model = build(name, args.layers, args.tiny, device, dtype)
    r = results.setdefault(name, {"variants": {}, "stub": {}})
    r["config"] = {k: v for k, v in MODELS[name].items() if k != "model_type"} | {"num_hidden_layers": args.layers}
    variants = ["hf", "hf-loop", "moekit"]
    with torch.inference_mode():
        # correctness: moekit vs hf (grouped_mm) prefill logits and greedy tokens
        ids = torch.randint(0, model.config.vocab_size, (2, 64), device=device,
                            generator=torch.Generator(device).manual_seed(2))
        set_variant(model, "hf")
        ref = model(ids).logits.float()
        ref_tok = greedy(model, 8, args.prompt, 16, device)
        set_variant(model, "moekit")
        out = model(ids).logits.float()
        tok = greedy(model, 8, args.prompt, 16, device)
        r["check"] = {
            "prefill_logits_rel_fro_err": ((out - ref).norm() / ref.norm()).item(),
            "prefill_argmax_agreement": (out.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            "greedy16_b8_token_agreement": (tok == ref_tok).float().mean().item(),
            "greedy16_b8_first_divergence": [int((t != rt).nonzero()[0]) if (t != rt).any() else None
                                             for t, rt in zip(tok, ref_tok)],
        }
        print(name, "check", r["check"], flush=True)
        save()
        for v in variants:
            set_variant(model, v)
            d = r["variants"].setdefault(v, {})
            d["prefill_ms"] = prefill_ms(model, args.prefill, device, args.reps)
            for b in args.batches:
                d[f"tpot_eager_ms_b{b}"] = decode_eager_ms(model, b, args.prompt, args.steps, device)
            print(name, v, d, flush=True)
            save()
        set_variant(model, "hf")
        with stubbed(model):
            r["stub"]["prefill_ms"] = prefill_ms(model, args.prefill, device, args.reps)
            for b in args.batches:
                r["stub"][f"tpot_eager_ms_b{b}"] = decode_eager_ms(model, b, args.prompt, args.steps, device)
        save()
        if device == "cuda" and not args.no_graph:
            # graphs last: a failed capture must not spoil the eager figures
            for v in ("moekit", "hf", "stub"):
                try:
                    if v == "stub":
                        set_variant(model, "hf")
                        with stubbed(model):
                            for b in args.batches:
                                r["stub"][f"tpot_graph_ms_b{b}"] = decode_graph_ms(model, b, args.prompt,
                                                                                   args.steps, device)
                    else:
                        set_variant(model, v)
                        for b in args.batches:
                            r["variants"][v][f"tpot_graph_ms_b{b}"] = decode_graph_ms(model, b, args.prompt,
                                                                                      args.steps, device)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    r.setdefault("graph_errors", {})[v] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    torch.cuda.synchronize()
                print(name, "graph", v, flush=True)
                save()
        set_variant(model, "hf")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def table(results) -> str:
    lines = []
    dtype = results.get("meta", {}).get("dtype", "").replace("torch.", "")
    for name, r in results.items():
        if name == "meta":
            continue
        stub = r.get("stub", {})
        lines.append(f"\n### {name} ({r['config']['num_hidden_layers']} layers, {dtype}, random weights)\n")
        lines.append(f"check: {r.get('check')}\n")
        if r.get("graph_errors"):
            lines.append(f"graph capture errors: {r['graph_errors']}\n")
        keys = ["prefill_ms"] + sorted({k for d in r["variants"].values() for k in d if k.startswith("tpot")},
                                       key=lambda k: (k.split("_")[1], int(k.split("_b")[-1])))
        lines.append("| metric | " + " | ".join(r["variants"]) + " | no-MoE stub | moekit speed-up vs hf | "
                     "vs hf-loop | MoE share hf | MoE share moekit |")
        lines.append("|" + "---|" * (len(r["variants"]) + 6))
        for k in keys:
            vals = [r["variants"][v].get(k) for v in r["variants"]]
            hf, loop, mk = (r["variants"].get(x, {}).get(k) for x in ("hf", "hf-loop", "moekit"))
            st = stub.get(k)
            f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
            sp = lambda a, b: "n/a" if a is None or b is None else f"{a / b:.2f}x"  # noqa: E731
            share = lambda t: "n/a" if t is None or st is None else f"{100 * (1 - st / t):.0f}%"  # noqa: E731
            lines.append(f"| {k} | " + " | ".join(f(x) for x in vals) + f" | {f(st)} | {sp(hf, mk)} | {sp(loop, mk)} | "
                         f"{share(hf)} | {share(mk)} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--prefill", type=int, default=2048)
    p.add_argument("--prompt", type=int, default=128, help="prompt length before the timed decode steps")
    p.add_argument("--steps", type=int, default=32, help="timed decode steps")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="tiny dims (CPU smoke test)")
    p.add_argument("--no-graph", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.tiny:
        args.prefill, args.prompt, args.steps, args.reps = min(args.prefill, 64), min(args.prompt, 16), 4, 1
    results = {"meta": versions(device) | {"args": vars(args), "dtype": str(dtype)}}
    os.makedirs(args.out, exist_ok=True)

    def save():
        with open(os.path.join(args.out, "e2e_transformers.json"), "w") as fh:
            json.dump(results, fh, indent=1)

    for name in args.models.split(","):
        try:
            run_model(name, args, device, dtype, results, save)
        except Exception as exc:  # noqa: BLE001 - keep the other model's figures
            import traceback

            traceback.print_exc()
            results.setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"
        save()
    md = f"# e2e transformers benchmark\n\n{json.dumps(results['meta'])}\n" + table(
        {k: v for k, v in results.items() if "variants" in v or k == "meta"})
    with open(os.path.join(args.out, "e2e_transformers.md"), "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
