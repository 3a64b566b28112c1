"""The public fused-MoE calls: :func:`fused_moe` (route, then run experts) and :func:`fused_experts`.

Tensor layouts (all row-major; the last dimension must be contiguous):
  hidden_states  [M, H]          bfloat16 / float16 / float32 (float64 on the torch backend)
  w13            [E, 2I, H]      gate rows 0..I-1, then up rows I..2I-1; same dtype as hidden_states
  w2             [E, H, I]
  router_logits  [M, E_global]   any float dtype
  topk_weights   [M, k] float32, topk_ids [M, k] int32 (int64 accepted): global expert ids
  expert_map     [E_global] int32: global id -> local id in [0, E) or -1 (expert not on this rank)
  returns        [M, H] in hidden_states' dtype: sum_j topk_weights[:, j] * expert_j(x)
A non-contiguous ``hidden_states`` is copied to a contiguous one; weights whose last dimension is not
contiguous are refused (a silent copy per call would cost more than the layer).

Backends: ``"triton"`` (fused kernels; GPU, or CPU under ``TRITON_INTERPRET=1``), ``"torch"`` (PyTorch ops,
any device), ``"auto"`` (:func:`moekit.backends.select_backend` for the tensors' device: triton on supported
GPUs, torch elsewhere; ``MOEKIT_BACKEND`` overrides).
"""
from __future__ import annotations

from typing import Optional

import torch

from moekit import envs
from moekit.activations import ACTIVATIONS
from moekit.align import check_expert_map
from moekit.backends import select_backend, triton_kernel_limits
from moekit.errors import check_arg
from moekit.platform import interpreter_runs, platform_of, triton_interpreter_active
from moekit.quant.scheme import QuantScheme, as_scheme
from moekit.routing import grouped_routing, select_experts, validate_routing

BACKENDS = ("auto", "triton", "torch")
_KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _check_layer_args(x, w13, w2, expert_map, activation, backend, quantized: bool = False) -> None:
    """The layer's arguments (all but the routing): shapes, dtypes and devices, no host synchronization.
    ``quantized``: the weights' shapes and dtypes are checked by :func:`moekit.quant.moe.check_quant_args`
    instead."""
    for name, t, dims in (("hidden_states", x, 2), ("w13", w13, 3), ("w2", w2, 3)):
        check_arg(isinstance(t, torch.Tensor), name, "a torch.Tensor", type(t).__name__)
        check_arg(t.dim() == dims, name, f"a {dims}-D tensor", f"shape {tuple(t.shape)}")
    h = x.shape[1]
    e, i2, h13 = w13.shape
    check_arg(h >= 1, "hidden_states", "at least one column (H >= 1)", f"shape {tuple(x.shape)}")
    check_arg(e >= 1, "w13", "at least one expert (E >= 1)", f"shape {tuple(w13.shape)}")
    check_arg(quantized or h13 == h, "w13", f"shape [E, 2I, H={h}] (H of hidden_states)", f"shape {tuple(w13.shape)}")
    check_arg(i2 % 2 == 0 and i2 > 0, "w13", "an even, non-zero number of rows 2I (gate rows then up rows)",
              f"{i2} rows")
    check_arg(quantized or tuple(w2.shape) == (e, h, i2 // 2), "w2", f"shape [E={e}, H={h}, I={i2 // 2}]", f"shape {tuple(w2.shape)}")
    check_arg(x.is_floating_point(), "hidden_states", "a floating-point dtype", x.dtype)
    for name, t in (("w13", w13), ("w2", w2)):
        check_arg(quantized or t.dtype == x.dtype, name, f"dtype {x.dtype} (that of hidden_states)", t.dtype)
        check_arg(t.stride(-1) == 1, name, "a contiguous last dimension", f"strides {t.stride()}")
    if expert_map is not None:
        check_expert_map(expert_map, x.device, "hidden_states")
        check_arg(expert_map.numel() >= e, "expert_map", f"at least E={e} entries (one per global expert)",
                  f"{expert_map.numel()} entries")
    for name, t in (("w13", w13), ("w2", w2)):
        check_arg(t.device == x.device, name, f"device {x.device} (that of hidden_states)", t.device)
    check_arg(activation in ACTIVATIONS, "activation", f"one of {ACTIVATIONS}", activation)
    check_arg(backend in BACKENDS, "backend", f"one of {BACKENDS}", backend)


def _check_experts_args(x, w13, w2, topk_weights, topk_ids, expert_map, activation, backend,
                        quantized: bool = False, layer_checked: bool = False) -> None:
    """:func:`_check_layer_args` (unless ``layer_checked``: fused_moe did) and the routing tensors'."""
    if not layer_checked:
        _check_layer_args(x, w13, w2, expert_map, activation, backend, quantized)
    for name, t in (("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        check_arg(isinstance(t, torch.Tensor), name, "a torch.Tensor", type(t).__name__)
        check_arg(t.dim() == 2, name, "a 2-D tensor", f"shape {tuple(t.shape)}")
    m = x.shape[0]
    check_arg(topk_ids.shape[0] == m, "topk_ids", f"shape [M={m}, k]", f"shape {tuple(topk_ids.shape)}")
    check_arg(tuple(topk_weights.shape) == tuple(topk_ids.shape), "topk_weights",
              f"shape {tuple(topk_ids.shape)} (that of topk_ids)", f"shape {tuple(topk_weights.shape)}")
    check_arg(topk_ids.dtype in (torch.int32, torch.int64), "topk_ids", "dtype int32 or int64", topk_ids.dtype)
    check_arg(topk_weights.is_floating_point(), "topk_weights", "a floating-point dtype", topk_weights.dtype)
    check_arg(topk_ids.shape[1] >= 1, "topk_ids", "at least one choice per token (k >= 1)", f"shape {tuple(topk_ids.shape)}")
    for name, t in (("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        check_arg(t.device == x.device, name, f"device {x.device} (that of hidden_states)", t.device)


def _check_values(e: int, topk_ids: torch.Tensor, expert_map: Optional[torch.Tensor]) -> None:
    """Value checks (host-synchronizing, so only with MOEKIT_VALIDATE=1): ids and map entries in range."""
    if topk_ids.numel() == 0:
        return
    e_ids = expert_map.numel() if expert_map is not None else e
    lo, hi = int(topk_ids.min()), int(topk_ids.max())
    check_arg(lo >= 0 and hi < e_ids, "topk_ids", f"values in [0, {e_ids})", f"values in [{lo}, {hi}]")
    if expert_map is not None:
        lo, hi = int(expert_map.min()), int(expert_map.max())
        check_arg(lo >= -1 and hi < e, "expert_map", f"values in [-1, {e})", f"values in [{lo}, {hi}]")


def resolve_backend(backend: str, x: torch.Tensor, scheme=None) -> str:
    """The backend that will run, from :func:`moekit.backends.select_backend` for the platform that holds
    ``x`` ("auto" honours ``MOEKIT_BACKEND``; a named backend that cannot run raises NoBackendError with
    the reason). Exception: ``"triton"`` on CPU tensors runs the kernels in Triton's interpreter when
    ``TRITON_INTERPRET=1`` (how the kernels are tested without a GPU)."""
    if backend == "triton":
        check_arg(x.dtype in _KERNEL_DTYPES, "hidden_states", f"a dtype in {_KERNEL_DTYPES} for backend='triton'",
                  x.dtype)
        if x.device.type == "cpu" and triton_interpreter_active():
            ok, why = interpreter_runs(x.dtype)
            check_arg(ok, "hidden_states", "float16 or float32 for backend='triton' on CPU tensors", f"{x.dtype} ({why})")
            if scheme is not None:
                sch = as_scheme(scheme)
                ok, why = triton_kernel_limits(sch)
                check_arg(ok, "quant", "a scheme moekit's Triton kernels take", f"{sch.name} ({why})")
            return "triton"
    name = select_backend(scheme, platform_of(x.device), prefer=backend).name
    if name == "triton" and x.dtype not in _KERNEL_DTYPES:
        return "torch"  # float64 (references) always runs on PyTorch
    return name


def fused_experts(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    expert_map: Optional[torch.Tensor] = None,
    activation: str = "silu",
    backend: str = "auto",
    w13_bias: Optional[torch.Tensor] = None,
    w2_bias: Optional[torch.Tensor] = None,
    quant=None,
    w13_scale: Optional[torch.Tensor] = None,
    w2_scale: Optional[torch.Tensor] = None,
    w13_zero: Optional[torch.Tensor] = None,
    w2_zero: Optional[torch.Tensor] = None,
    a13_scale: Optional[torch.Tensor] = None,
    a2_scale: Optional[torch.Tensor] = None,
    apply_router_weight_on_input: bool = False,
    _aligned=None,
    _config=None,
    _backend: Optional[str] = None,
    _layer_checked: bool = False,
    _grouped_routing: bool = False,
) -> torch.Tensor:
    """Run the chosen experts of every token and sum their outputs by routing weight.

    ``out[m] = sum_j topk_weights[m, j] * w2[e] @ act(w13[e, :I] @ x[m]) * (w13[e, I:] @ x[m])`` with
    ``e = expert_map[topk_ids[m, j]]`` (or ``topk_ids[m, j]`` without a map); choices whose expert maps to -1
    contribute nothing. Shapes and dtypes: see the module docstring. Returns ``[M, H]`` in x's dtype.

    ``w13_bias [E, 2I]`` and ``w2_bias [E, H]`` (optional, gpt-oss) are added to the two GEMM outputs of each
    expert, before the activation and before the routing weight. Both backends run them, and
    ``activation="swigluoai"`` (gpt-oss's clamped SwiGLU, :mod:`moekit.activations`).

    Quantized experts: ``quant`` is a :class:`moekit.QuantScheme` (or its name); w13/w2 are then the
    qweights of :func:`moekit.quant.quantize_weights` with their ``w13_scale``/``w2_scale`` (and
    ``w13_zero``/``w2_zero`` for zero-point schemes); ``a13_scale``/``a2_scale`` are optional static
    per-tensor activation scales. Layouts and shapes: :mod:`moekit.quant.moe` and :mod:`moekit.quant.weights`.

    ``apply_router_weight_on_input`` (Llama-4's MoE; vLLM's argument of that name): the routing weight scales
    the token's input instead of the expert's output, ``out[m] = w2[e] @ act(...(w[m] * x[m]))``, the activation
    then acting on scaled values. Only with top_k == 1 (one weight per token; ``MoEInputError`` otherwise). The
    input is scaled in float32 and rounded once to x's dtype before the experts run with unit weights (one
    elementwise pass over x; with quantized activations the scaled input is what gets quantized, and static
    ``a13_scale`` values must cover it).
    """
    from moekit.quant.scheme import as_scheme

    scheme = as_scheme(quant, "quant")
    _check_experts_args(hidden_states, w13, w2, topk_weights, topk_ids, expert_map, activation, backend,
                        quantized=scheme.is_quantized, layer_checked=_layer_checked)
    if expert_map is not None:
        expert_map = expert_map.contiguous()  # the kernels index it without a stride
    if envs.get("MOEKIT_VALIDATE"):
        _check_values(w13.shape[0], topk_ids, expert_map)
    qargs = dict(w13_scale=w13_scale, w2_scale=w2_scale, w13_zero=w13_zero, w2_zero=w2_zero, a13_scale=a13_scale,
                 a2_scale=a2_scale)
    if scheme.is_quantized:
        from moekit.quant.moe import check_quant_args

        check_quant_args(scheme, hidden_states, w13, w2, **qargs)
    else:
        for name, t in qargs.items():
            check_arg(t is None, name, "None without a quantization scheme (quant=None)", type(t).__name__)
    e, i2 = w13.shape[:2]
    h = hidden_states.shape[1]
    for name, b, shape in (("w13_bias", w13_bias, (e, i2)), ("w2_bias", w2_bias, (e, h))):
        if b is not None:
            check_arg(isinstance(b, torch.Tensor) and tuple(b.shape) == shape and b.is_floating_point(), name,
                      f"a floating-point tensor of shape {shape}",
                      f"{b.dtype} tensor of shape {tuple(b.shape)}" if isinstance(b, torch.Tensor) else type(b).__name__)
            check_arg(b.device == hidden_states.device, name, f"device {hidden_states.device}", b.device)
            check_arg(b.stride(-1) == 1, name, "a contiguous last dimension", f"strides {b.stride()}")
    x = hidden_states if hidden_states.is_contiguous() else hidden_states.contiguous()
    check_arg(isinstance(apply_router_weight_on_input, bool), "apply_router_weight_on_input", "a bool",
              type(apply_router_weight_on_input).__name__)
    if apply_router_weight_on_input:
        check_arg(topk_weights.shape[1] == 1, "apply_router_weight_on_input",
                  "top_k == 1 (one routing weight per token to scale its input by)", f"top_k={topk_weights.shape[1]}")
        x = (x.float() * topk_weights.float()).to(x.dtype)
        topk_weights = torch.ones_like(topk_weights)
    # _backend: fused_moe's decode path already resolved it (and _config, _aligned: looked up, aligned)
    chosen = _backend or resolve_backend(backend, x, scheme)
    if chosen == "torch":
        from moekit.torch_experts import fused_experts_torch

        aq = iq = None
        if scheme.is_quantized:
            from moekit.quant.moe import torch_quant_operands

            w13, w2, aq, iq = torch_quant_operands(scheme, x, w13, w2, **qargs)
        return fused_experts_torch(x, w13, w2, topk_weights, topk_ids, expert_map=expert_map, activation=activation,
                                   w13_bias=w13_bias, w2_bias=w2_bias, act_quant=aq, inter_quant=iq)
    from moekit.triton_experts import fused_experts_triton

    # unquantized: quant is the "none" scheme and every qarg is None (checked above)
    return fused_experts_triton(x, w13, w2, topk_weights, topk_ids, expert_map=expert_map, activation=activation,
                                aligned=_aligned, config=_config, quant=scheme, w13_bias=w13_bias, w2_bias=w2_bias,
                                grouped_routing=_grouped_routing, **qargs)


def fused_moe(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    router_logits: torch.Tensor,
    top_k: int,
    *,
    renormalize: bool = True,
    scoring: str = "softmax",
    num_expert_group: Optional[int] = None,
    topk_group: Optional[int] = None,
    correction_bias: Optional[torch.Tensor] = None,
    expert_map: Optional[torch.Tensor] = None,
    activation: str = "silu",
    backend: str = "auto",
    w13_bias: Optional[torch.Tensor] = None,
    w2_bias: Optional[torch.Tensor] = None,
    quant=None,
    w13_scale: Optional[torch.Tensor] = None,
    w2_scale: Optional[torch.Tensor] = None,
    w13_zero: Optional[torch.Tensor] = None,
    w2_zero: Optional[torch.Tensor] = None,
    a13_scale: Optional[torch.Tensor] = None,
    a2_scale: Optional[torch.Tensor] = None,
    apply_router_weight_on_input: bool = False,
) -> torch.Tensor:
    """One MoE layer: route with :func:`moekit.select_experts`, then :func:`moekit.fused_experts`.

    ``router_logits`` is ``[M, E_global]`` (``E_global == E`` without ``expert_map``). All other arguments:
    see those two functions. Returns ``[M, H]`` in ``hidden_states``' dtype.
    """
    _check_layer_args(hidden_states, w13, w2, expert_map, activation, backend,
                      quantized=quant is not None and as_scheme(quant, "quant").is_quantized)
    check_arg(isinstance(router_logits, torch.Tensor) and router_logits.dim() == 2, "router_logits",
              "a 2-D tensor [M, E]", getattr(router_logits, "shape", type(router_logits).__name__))
    check_arg(router_logits.device == hidden_states.device, "router_logits",
              f"device {hidden_states.device} (that of hidden_states)", router_logits.device)
    check_arg(router_logits.shape[0] == hidden_states.shape[0], "router_logits",
              f"{hidden_states.shape[0]} rows (M of hidden_states)", f"shape {tuple(router_logits.shape)}")
    if expert_map is None:
        check_arg(router_logits.shape[1] == w13.shape[0], "router_logits",
                  f"E={w13.shape[0]} columns (experts in w13)", f"shape {tuple(router_logits.shape)}")
    else:
        check_arg(expert_map.numel() == router_logits.shape[1], "expert_map",
                  f"{router_logits.shape[1]} entries (E_global, the columns of router_logits)",
                  f"{expert_map.numel()} entries")
        expert_map = expert_map.contiguous()  # the kernels index it without a stride
    aligned = config = fast = None
    if activation in ACTIVATIONS and (quant is None or isinstance(quant, QuantScheme)):
        fast = _route_and_align_if_decode(hidden_states, w13, router_logits, top_k, renormalize, scoring,
                                          expert_map, backend, quant, a13_scale is not None or a2_scale is not None,
                                          dict(num_expert_group=num_expert_group, topk_group=topk_group,
                                               correction_bias=correction_bias))
    if fast is not None:
        topk_weights, topk_ids, aligned, config = fast
    else:
        topk_weights, topk_ids = select_experts(
            router_logits, top_k, renormalize=renormalize, scoring=scoring, num_expert_group=num_expert_group,
            topk_group=topk_group, correction_bias=correction_bias,
        )
    return fused_experts(hidden_states, w13, w2, topk_weights, topk_ids, expert_map=expert_map,
                         activation=activation, backend=backend, w13_bias=w13_bias, w2_bias=w2_bias, quant=quant,
                         w13_scale=w13_scale, w2_scale=w2_scale, w13_zero=w13_zero, w2_zero=w2_zero,
                         a13_scale=a13_scale, a2_scale=a2_scale,
                         apply_router_weight_on_input=apply_router_weight_on_input, _aligned=aligned, _config=config,
                         _backend=None if fast is None else "triton", _layer_checked=True,
                         _grouped_routing=grouped_routing(num_expert_group))


def _route_and_align_if_decode(x, w13, router_logits, top_k, renormalize, scoring, expert_map, backend,
                               quant=None, static_act_scales=False, choice=None):
    """Decode fast path of fused_moe on the Triton backend: routing and token alignment in one launch
    (saves a launch and a round trip through memory). Returns (topk_weights, topk_ids, aligned, config), the
    config then serving fused_experts too (one backend resolution and one lookup per call), or None when
    it does not apply. Where the decode GEMV kernels serve (``triton_experts.use_decode_gemv``) there is
    nothing to align: the routing kernel's (topk_weights, topk_ids, None, None). ``quant``: a QuantScheme
    (or None); its kernel config decides the alignment block. ``choice``: fused_moe's grouped top-k and
    correction-bias arguments (num_expert_group, topk_group, correction_bias)."""
    # (fused_moe checked the layer, and router_logits' shape and device, first)
    if not (x.dtype in _KERNEL_DTYPES and router_logits.dtype in _KERNEL_DTYPES and x.shape[0] > 0
            and isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1
            and (x.is_cuda or x.device.type == "cpu" and backend == "triton")):
        return None  # not applicable; select_experts / fused_experts validate and report bad input
    from moekit.kernels.align import route_align_applicable

    m, e_route = router_logits.shape
    scheme = quant if quant is not None and quant.is_quantized else None
    choice = choice or {}
    grouped = grouped_routing(choice.get("num_expert_group"))
    if (not route_align_applicable(m, e_route, top_k, grouped)
            or resolve_backend(backend, x, scheme) != "triton"):
        return None
    validate_routing(router_logits, top_k, scoring, **choice)
    from moekit.triton_experts import use_decode_gemv

    if use_decode_gemv(m, e_route, top_k, scheme, static_act_scales, grouped):  # the GEMV kernels need no alignment
        return (*select_experts(router_logits, top_k, renormalize=renormalize, scoring=scoring, **choice), None, None)
    from moekit.align import route_and_align
    from moekit.configs import get_config

    e, i2 = w13.shape[:2]  # H from x: packed weights hold H / 2 bytes
    if scheme is None:
        config = get_config(e, i2 // 2, x.shape[1], top_k, m, x.dtype)
    else:
        from moekit.quant.triton_moe import quant_config

        config = quant_config(e, i2 // 2, x.shape[1], top_k, m, scheme)
    return (*route_and_align(router_logits, top_k, renormalize, scoring, e, config.BLOCK_SIZE_M, expert_map,
                             **choice), config)
