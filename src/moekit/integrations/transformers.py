"""Run the sparse MoE blocks of Hugging Face transformers models on moekit.

    from moekit.integrations.transformers import patch, unpatch
    model = patch(model)      # every supported MoE block now calls moekit (select_experts + fused_experts)
    unpatch(model)            # the original blocks are back (same objects, bit-identical outputs)

Supported blocks (transformers 5.x class names; 4.x per-expert ``ModuleList`` layouts are stacked once):

==========================  ===========  ========================================================================
block class                 model        routing / experts
==========================  ===========  ========================================================================
``Qwen3MoeSparseMoeBlock``  Qwen3-MoE    softmax, top-k, renormalized iff ``norm_topk_prob``; SiLU
``MixtralSparseMoeBlock``   Mixtral      softmax, top-k, renormalized; SiLU
``OlmoeSparseMoeBlock``     OLMoE        softmax, top-k, renormalized iff ``norm_topk_prob``; SiLU
``GptOssMLP``               gpt-oss      router with bias, softmax over the top-k logits; clamped SwiGLU
                                         ("swigluoai"), expert biases, interleaved gate/up columns (repacked)
``DeepseekV3MoE``           DeepSeek-V3  fp32 sigmoid router, grouped top-k with ``e_score_correction_bias``,
                                         renormalized iff ``norm_topk_prob``, ``routed_scaling_factor``,
                                         plus the shared experts
``Llama4TextMoe``           Llama-4      sigmoid of the top-1 logit scaling the expert's *input*
                                         (``apply_router_weight_on_input``; top_k 1 only), experts stored
                                         ``[E, H, 2I]`` / ``[E, I, H]`` (repacked), plus the shared expert
==========================  ===========  ========================================================================

Weights: transformers 5 stores experts as ``gate_up_proj [E, 2I, H]`` (gate rows, then up rows) and
``down_proj [E, H, I]``, which is moekit's layout: the patched block reads those very Parameters (shared storage,
no copy). gpt-oss (``[E, H, 2I]`` interleaved, ``[E, I, H]``) and 4.x per-expert modules are repacked once at
patch time into non-persistent buffers (the originals stay, so ``unpatch`` is exact). The patched block keeps the
original router/experts/shared-expert submodules under their names, so ``state_dict()`` keys do not change.

A model without any supported block, or with a block that looks like a sparse MoE block but is not in the table,
is refused with :class:`moekit.MoEInputError`. ``import moekit`` never imports transformers; this module does not
import it either (blocks are recognised by class name and weight layout).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from moekit.activations import SWIGLUOAI_ALPHA, SWIGLUOAI_LIMIT
from moekit.errors import MoEInputError, check_arg
from moekit.envs import warn_once
from moekit.experts import BACKENDS, fused_experts, resolve_backend
from moekit.quant.scheme import as_scheme
from moekit.routing import select_experts

__all__ = ["patch", "unpatch", "is_patched", "SUPPORTED_BLOCKS", "MoEKitSparseMoeBlock"]


@dataclasses.dataclass(frozen=True)
class _Arch:
    name: str
    router: str = "gate"                 # attribute holding the router
    scoring: str = "softmax"
    renormalize: Optional[bool] = None   # None: read norm_topk_prob
    grouped: bool = False                # DeepSeek-V3 grouped top-k + correction bias + scaling factor
    fp32_router: bool = False
    weights_in_logits_dtype: bool = False  # transformers rounds the routing weights to the logits dtype
    activation: Optional[str] = None     # None: from config.hidden_act
    expert_bias: bool = False
    transposed: bool = False             # experts stored [E, H, 2I] / [E, I, H]
    interleaved: bool = False            # gate/up columns alternate
    returns_scores: bool = False         # forward returns (hidden, router_scores)
    shared: Optional[str] = None         # attribute holding shared experts, added to the output
    weights_on_input: bool = False       # the routing weight scales the expert's input (Llama-4; top_k 1)
    returns_logits: bool = False         # forward returns ([tokens, H], router_logits)


SUPPORTED_BLOCKS: Dict[str, _Arch] = {
    "Qwen3MoeSparseMoeBlock": _Arch("qwen3_moe", weights_in_logits_dtype=True),
    "MixtralSparseMoeBlock": _Arch("mixtral", renormalize=True),
    "OlmoeSparseMoeBlock": _Arch("olmoe", weights_in_logits_dtype=True),
    "GptOssMLP": _Arch("gpt_oss", router="router", renormalize=True, weights_in_logits_dtype=True,
                       activation="swigluoai", expert_bias=True, transposed=True, interleaved=True,
                       returns_scores=True),
    "DeepseekV3MoE": _Arch("deepseek_v3", scoring="sigmoid", grouped=True, fp32_router=True,
                           shared="shared_experts"),
    "Llama4TextMoe": _Arch("llama4", router="router", scoring="sigmoid", renormalize=False,
                           weights_in_logits_dtype=True, transposed=True, shared="shared_expert",
                           weights_on_input=True, returns_logits=True),
}
_HIDDEN_ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu"}


def _unsupported(msg: str) -> MoEInputError:
    return MoEInputError(f"moekit.integrations.transformers: {msg}. Supported blocks: "
                         f"{', '.join(SUPPORTED_BLOCKS)}")


def _looks_like_moe(module: nn.Module) -> bool:
    name = type(module).__name__
    has_experts = isinstance(getattr(module, "experts", None), nn.Module)
    return has_experts and any(s in name.lower() for s in ("moe", "sparse", "mlp", "expert"))


def _attr(sources, names, default=None):
    for src in sources:
        for n in names:
            v = getattr(src, n, None)
            if v is not None:
                return v
    return default


def _deinterleave(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Columns g0 u0 g1 u1 ... -> g0 g1 ... u0 u1 ... along ``dim``."""
    idx = torch.arange(t.shape[dim], device=t.device)
    order = torch.cat([idx[0::2], idx[1::2]])
    return t.index_select(dim, order).contiguous()


def _stack_module_list(experts: nn.ModuleList) -> Tuple[torch.Tensor, torch.Tensor]:
    """transformers 4.x: one MLP module per expert (w1/w3/w2 or gate_proj/up_proj/down_proj)."""
    first = experts[0]
    for g, u, d in (("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj")):
        if all(isinstance(getattr(first, n, None), nn.Linear) for n in (g, u, d)):
            with torch.no_grad():
                w13 = torch.stack([torch.cat([getattr(m, g).weight, getattr(m, u).weight], 0) for m in experts])
                w2 = torch.stack([getattr(m, d).weight for m in experts])
            return w13.contiguous(), w2.contiguous()
    raise _unsupported(f"expert modules of class {type(first).__name__} have no (w1, w3, w2) or "
                       "(gate_proj, up_proj, down_proj) linear layers")


class MoEKitSparseMoeBlock(nn.Module):
    """Drop-in replacement of one transformers sparse MoE block; see the module docstring."""

    def __init__(self, original: nn.Module, arch: _Arch, config, backend: str = "auto", scheme=None):
        super().__init__()
        # the original's children, under the same names (state_dict keys unchanged); the original itself is
        # kept out of the module tree for unpatch
        for name, child in original.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_moekit_original", original)
        self.arch = arch
        self.backend = backend
        gate = getattr(original, arch.router, None)
        experts = getattr(original, "experts", None)
        if gate is None or getattr(gate, "weight", None) is None or experts is None:
            raise _unsupported(f"{type(original).__name__} has no '{arch.router}' router with a weight or no "
                               "'experts'")
        srcs = (gate, original, experts, config)
        self.top_k = int(_attr(srcs, ("top_k", "num_experts_per_tok")))
        if arch.weights_on_input and self.top_k != 1:
            raise _unsupported(f"{type(original).__name__} with top_k={self.top_k}: moekit scales an expert's input "
                               "by its routing weight only at top_k 1 (apply_router_weight_on_input)")
        self.renormalize = arch.renormalize if arch.renormalize is not None else bool(
            _attr(srcs, ("norm_topk_prob",), False))
        if arch.grouped:
            self.num_expert_group = int(_attr(srcs, ("num_group", "n_group"), 1))
            self.topk_group = int(_attr(srcs, ("topk_group",), 1))
            self.scaling = float(_attr(srcs, ("routed_scaling_factor",), 1.0))
        else:
            self.num_expert_group = self.topk_group = None
            self.scaling = 1.0
        if arch.activation is not None:
            self.activation = arch.activation
        else:
            act = _attr((experts, config), ("hidden_act",), "silu")
            if act not in _HIDDEN_ACTS:
                raise _unsupported(f"{type(original).__name__}: expert activation {act!r} is not one of "
                                   f"{tuple(_HIDDEN_ACTS)}")
            self.activation = _HIDDEN_ACTS[act]
        if arch.activation == "swigluoai":
            alpha, limit = getattr(experts, "alpha", SWIGLUOAI_ALPHA), getattr(experts, "limit", SWIGLUOAI_LIMIT)
            if (float(alpha), float(limit)) != (SWIGLUOAI_ALPHA, SWIGLUOAI_LIMIT):
                raise _unsupported(f"gpt-oss experts with alpha={alpha}, limit={limit} (moekit implements "
                                   f"alpha={SWIGLUOAI_ALPHA}, limit={SWIGLUOAI_LIMIT})")
        self.quant = scheme if scheme is not None and scheme.is_quantized else None
        self._derive()

    def _sources(self) -> List[torch.Tensor]:
        """The original expert tensors the derived copies (repacked layout, quantized codes) come from."""
        experts = self.experts
        if isinstance(experts, nn.ModuleList):
            return [p for m in experts for p in m.parameters(recurse=False)]
        names = ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias")
        return [t for t in (getattr(experts, n, None) for n in names) if isinstance(t, torch.Tensor)]

    def _stamp(self) -> Tuple:
        """Where the sources live and their in-place version counters (``load_state_dict``, in-place edits and
        ``.to()`` all change one)."""
        return tuple((t.data_ptr(), t._version, t.dtype) for t in self._sources())

    def _derive(self) -> None:
        """(Re)build the derived copies from the current sources."""
        self._layout(self.experts, self.arch)
        if self.quant is not None:
            self._quantize(self.quant)
        self._derived_stamp = self._stamp()

    def _derives(self) -> bool:
        return self.quant is not None or not self._shared_weights or (self.arch.expert_bias and not self._bias_shared)

    def _quantize(self, scheme) -> None:
        """Quantize the experts once (:func:`moekit.quant.quantize_weights`); the originals stay for unpatch."""
        from moekit.quant import quantize_weights

        w13, w2 = self._weights()
        with torch.no_grad():
            q13, q2 = quantize_weights(w13.detach(), scheme), quantize_weights(w2.detach(), scheme)
        for tag, q in (("w13", q13), ("w2", q2)):
            self.register_buffer(f"{tag}_q", q[0], persistent=False)
            self.register_buffer(f"{tag}_scale", q[1], persistent=False)
            self.register_buffer(f"{tag}_zero", q[2] if len(q) > 2 else None, persistent=False)
        self.quant = scheme

    def _layout(self, experts: nn.Module, arch: _Arch) -> None:
        """Share the experts' Parameters when they are in moekit's layout; repack once otherwise."""
        self._shared_weights = False
        if isinstance(experts, nn.ModuleList):
            w13, w2 = _stack_module_list(experts)
            self.register_buffer("w13", w13, persistent=False)
            self.register_buffer("w2", w2, persistent=False)
            b13 = b2 = None
        elif isinstance(getattr(experts, "gate_up_proj", None), torch.Tensor):
            gu, dp = experts.gate_up_proj, experts.down_proj
            transposed = bool(getattr(experts, "is_transposed", arch.transposed))
            interleaved = not bool(getattr(experts, "is_concatenated", not arch.interleaved))
            if gu.dim() != 3 or dp.dim() != 3:
                raise _unsupported(f"experts {type(experts).__name__} with gate_up_proj {tuple(gu.shape)}")
            if not transposed and not interleaved and gu.stride(-1) == 1 and dp.stride(-1) == 1:
                self._shared_weights = True
                w13 = w2 = None
            else:
                with torch.no_grad():
                    w13 = gu.transpose(1, 2) if transposed else gu
                    w2 = dp.transpose(1, 2) if transposed else dp
                    w13 = _deinterleave(w13, 1) if interleaved else w13.contiguous()
                    w2 = w2.contiguous()
                self.register_buffer("w13", w13, persistent=False)
                self.register_buffer("w2", w2, persistent=False)
            b13 = getattr(experts, "gate_up_proj_bias", None)
            b2 = getattr(experts, "down_proj_bias", None)
            if b13 is not None and interleaved:
                with torch.no_grad():
                    b13 = _deinterleave(b13, 1)
        else:
            raise _unsupported(f"experts module {type(experts).__name__} has neither gate_up_proj nor a ModuleList "
                               "of expert MLPs")
        if arch.expert_bias and (b13 is None or b2 is None):
            raise _unsupported(f"{arch.name} experts without gate_up_proj_bias/down_proj_bias")
        if not arch.expert_bias:
            b13 = b2 = None
        self._bias_shared = b13 is not None and b13 is getattr(experts, "gate_up_proj_bias", None)
        if b13 is not None and not self._bias_shared:
            self.register_buffer("w13_bias", b13, persistent=False)
        e, i2, h = self._weights()[0].shape
        check_arg(tuple(self._weights()[1].shape) == (e, h, i2 // 2), "experts.down_proj",
                  f"shape consistent with gate_up_proj ({e}, {h}, {i2 // 2}) after repacking",
                  tuple(self._weights()[1].shape))

    def _weights(self):
        if self._shared_weights:
            return self.experts.gate_up_proj, self.experts.down_proj
        return self.w13, self.w2

    def _biases(self):
        if not self.arch.expert_bias:
            return None, None
        b13 = self.experts.gate_up_proj_bias if self._bias_shared else self.w13_bias
        return b13, self.experts.down_proj_bias

    def _check_grad(self, x: torch.Tensor) -> None:
        """The patched block is for inference: gradients flow through it only on the PyTorch backend with the
        model's own (unquantized, unrepacked) Parameters. Elsewhere, with autograd on, training mode raises
        and eval mode warns once (the outputs are right; no gradient reaches the experts, the router or
        anything upstream)."""
        if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in self._sources())):
            return
        flows = not self._derives() and resolve_backend(self.backend, x) == "torch"
        if flows:
            return
        msg = ("moekit's patched MoE blocks are for inference: no gradient flows through them here (Triton "
               "kernels, quantized or repacked experts)")
        if self.training:
            raise MoEInputError(f"model: expected eval mode or torch.no_grad() / torch.inference_mode() for a "
                                f"patched model, got training mode with autograd on ({msg}; unpatch() to train)")
        warn_once("transformers-patch-no-grad", f"{msg}; run it under torch.no_grad() or torch.inference_mode()")

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        if self._derives() and self._stamp() != self._derived_stamp:
            with torch.no_grad():  # the original weights changed (load_state_dict, in-place edit, .to())
                self._derive()
        self._check_grad(x)
        gate = getattr(self, self.arch.router)
        if gate._forward_hooks or gate._forward_pre_hooks:
            gate(x)  # transformers records router logits with hooks (output_router_logits); keep them working
        if self.arch.fp32_router:
            logits = F.linear(x.float(), gate.weight.float())
        else:
            logits = F.linear(x, gate.weight, getattr(gate, "bias", None))
        correction = getattr(gate, "e_score_correction_bias", None) if self.arch.grouped else None
        weights, ids = select_experts(
            logits, self.top_k, renormalize=self.renormalize, scoring=self.arch.scoring,
            num_expert_group=self.num_expert_group, topk_group=self.topk_group, correction_bias=correction,
        )
        if self.arch.weights_in_logits_dtype and logits.dtype != weights.dtype:
            weights = weights.to(logits.dtype).to(weights.dtype)
        if self.scaling != 1.0:
            weights = weights * self.scaling
        b13, b2 = self._biases()
        if self.quant is not None:
            out = fused_experts(x, self.w13_q, self.w2_q, weights, ids, activation=self.activation,
                                backend=self.backend, w13_bias=b13, w2_bias=b2, quant=self.quant,
                                w13_scale=self.w13_scale, w2_scale=self.w2_scale, w13_zero=self.w13_zero,
                                w2_zero=self.w2_zero, apply_router_weight_on_input=self.arch.weights_on_input)
        else:
            w13, w2 = self._weights()
            out = fused_experts(x, w13, w2, weights, ids, activation=self.activation, backend=self.backend,
                                w13_bias=b13, w2_bias=b2, apply_router_weight_on_input=self.arch.weights_on_input)
        if self.arch.shared is not None:
            out = out + getattr(self, self.arch.shared)(x)
        if self.arch.returns_logits:
            return out, logits  # as transformers' block: [tokens, H] (its caller views it back)
        out = out.view(shape)
        if self.arch.returns_scores:
            return out, weights.to(hidden_states.dtype)
        return out

    def extra_repr(self) -> str:
        e, i2, h = self._weights()[0].shape
        return (f"arch={self.arch.name}, experts={e}, hidden={h}, intermediate={i2 // 2}, top_k={self.top_k}, "
                f"activation={self.activation}, backend={self.backend}, shared_weights={self._shared_weights}, "
                f"quant={self.quant.name if self.quant is not None else None}")


def _config_of(model: nn.Module):
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        try:
            return cfg.get_text_config()
        except Exception:  # noqa: BLE001 - some configs raise for odd layouts; the top-level one is fine then
            return cfg
    return cfg


def _find_blocks(model: nn.Module) -> List[Tuple[nn.Module, str, nn.Module]]:
    found, unknown = [], []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            cls = type(child).__name__
            if isinstance(child, MoEKitSparseMoeBlock):
                continue
            if cls in SUPPORTED_BLOCKS:
                found.append((parent, name, child))
            elif _looks_like_moe(child) and not any(isinstance(p, MoEKitSparseMoeBlock) for p in (parent,)):
                unknown.append(f"{parent_name + '.' if parent_name else ''}{name} ({cls})")
    if unknown:
        raise _unsupported(f"{type(model).__name__} has MoE blocks moekit does not know: "
                           f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}")
    return found


def patch(model: nn.Module, scheme=None, *, backend: str = "auto") -> nn.Module:
    """Replace every supported sparse MoE block of ``model`` by a :class:`MoEKitSparseMoeBlock` in place;
    returns ``model``. ``backend`` is passed to :func:`moekit.fused_experts`. ``scheme``: ``None`` (or an
    unquantized :class:`~moekit.QuantScheme`) keeps the model's weights; a quantized scheme (or its name)
    quantizes the experts once at patch time with :func:`moekit.quant.quantize_weights` (the original
    weights are kept for :func:`unpatch`, so memory grows by the quantized copy). Raises :class:`moekit.MoEInputError` for models without a
    supported block or with an unknown one. Patching a patched model again with the same request is a no-op for
    the patched blocks; another scheme or backend raises (unpatch first).

    Derived copies (gpt-oss's repacked layout, quantized experts) follow the original weights: when those
    change (``load_state_dict``, an in-place edit, ``.to()``), the next forward rebuilds the copies. The
    patched blocks are for inference: see :meth:`MoEKitSparseMoeBlock._check_grad`."""
    check_arg(isinstance(model, nn.Module), "model", "a torch.nn.Module (a transformers model)", type(model).__name__)
    check_arg(backend in BACKENDS, "backend", f"one of {BACKENDS}", backend)
    sch = as_scheme(scheme)
    config = _config_of(model)
    blocks = _find_blocks(model)
    patched = [m for m in model.modules() if isinstance(m, MoEKitSparseMoeBlock)]
    want = sch.name if sch.is_quantized else "none"
    for m in patched:
        old = m.quant.name if m.quant is not None else "none"
        check_arg((old, m.backend) == (want, backend), "model",
                  f"an unpatched model, or the same request (quant={old}, backend={m.backend!r}) as its patch",
                  f"quant={want}, backend={backend!r} (unpatch() first)")
    already = bool(patched)
    if not blocks and not already:
        raise _unsupported(f"no sparse MoE block found in {type(model).__name__}")
    for parent, name, child in blocks:
        setattr(parent, name, MoEKitSparseMoeBlock(child, SUPPORTED_BLOCKS[type(child).__name__], config,
                                                   backend=backend, scheme=sch))
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Put the original blocks back (the very objects ``patch`` replaced); returns ``model``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MoEKitSparseMoeBlock):
                setattr(parent, name, child._moekit_original)
    return model


def is_patched(model: nn.Module) -> bool:
    return any(isinstance(m, MoEKitSparseMoeBlock) for m in model.modules())
