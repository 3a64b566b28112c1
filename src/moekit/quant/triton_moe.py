"""The Triton backend for quantized experts: activation quantization + the two GEMM kernels in quant mode.

Per scheme (launches at decode, besides align and top-k sum):
  fp8_block(bn, bk)   x -> per-token-group fp8 (1 kernel); GEMM 1 quantizes its output per (row, g columns)
                      in the epilogue, g = its BLOCK_N when that divides bk, else bk (q fp8 [P, I] + scale
                      [P, ceil(I/g)]): groups as fine as or finer than DeepSeek's 128 (more accurate, and
                      decode keeps BLOCK_N small); GEMM 2 applies both scales inside the K loop with
                      BLOCK_K <= g. BLOCK_K must divide bk: a config that breaks this is corrected (warned
                      once). On Hopper with >= 32 rows per expert both GEMMs are the Gluon kernels of
                      :mod:`moekit.kernels.moe_gemm_sm90` instead (g = 128; :func:`fp8_block_gluon`).
  fp8/int8 tensor     x -> per-tensor (dynamic: amax + quantize kernels; static a13_scale: 1 kernel); GEMM 1
                      with a static a2_scale quantizes in its epilogue, else writes bf16 and the per-tensor
                      kernels quantize it (rows past the padded length are skipped).
  fp8/int8 channel    x -> per-token (1 kernel); GEMM 1 writes the intermediate in x's dtype and one Triton
                      per-row kernel quantizes it (a row's scale needs all I columns, which no single GEMM 1
                      program owns); both scales applied in the GEMM epilogues.
  weight-only         int8 / int4 codes decoded in the GEMM K loops; activations stay in x's dtype. int4
                      bytes are split into their two nibbles, which meet the even and odd K columns of the
                      activation (two half-depth dots), so codes are never interleaved in registers.
  mxfp4               ``tl.dot_scaled`` (bf16/fp16 activations, e2m1 weights, e8m0 scales) where the device
                      has it (:func:`mxfp4_dot_scaled`); else decoded like int4 (the Triton interpreter, fp32).
"""
from __future__ import annotations

import functools
from dataclasses import replace

import torch

from moekit.align import moe_align_block_size
from moekit.configs import gemm2_config, get_config, tail_tile
from moekit.kernels.moe_gemm import GemmQuant, moe_gemm1, moe_gemm2
from moekit.kernels.moe_sum import moe_sum
from moekit.quant.moe import act_dtype
from moekit.quant.ops import _qparams, per_tensor_quant, per_token_group_quant, per_token_quant
from moekit.quant.scheme import MMA_CHUNK, QuantScheme

_WEIGHT_ONLY_MODE = {"int8": 3, "int4": 4, "mxfp4": 5}


def _fix_block_k(config, bk: int, least: int = 16):
    """BLOCK_K must divide the scale block ``bk``: the largest power of two <= min(BLOCK_K, bk) dividing it,
    and at least ``least`` (packed int4/mxfp4: 32, so each half-K dot is >= 16 deep)."""
    new = config.BLOCK_SIZE_K
    if bk % new:
        new = 16
        while new * 2 <= min(config.BLOCK_SIZE_K, bk) and bk % (new * 2) == 0:
            new *= 2
    new = max(new, least)
    if new == config.BLOCK_SIZE_K:
        return config
    from moekit.envs import warn_once

    warn_once(f"quant-block-k-{config.BLOCK_SIZE_K}-{bk}-{least}",
              f"BLOCK_SIZE_K={config.BLOCK_SIZE_K} does not suit the scale block/group {bk}"
              + (f" (packed 4-bit weights need >= {least})" if least > 16 else "") + f"; using {new}")
    return replace(config, BLOCK_SIZE_K=new)


def quant_config(E: int, N: int, K: int, top_k: int, M: int, scheme: QuantScheme):
    """The kernel config of a quantized layer (before the BLOCK_K corrections below): the tuned file of the
    scheme's dtype name and block shape, else the heuristic. Also used by fused_moe's decode fast path,
    whose alignment block must be this config's BLOCK_SIZE_M."""
    return get_config(E, N, K, top_k, M, scheme,
                      block_shape=scheme.block_shape if scheme.granularity == "block" else None)


#: How GEMM 2 of the fp8 block path handles a K step wider than GEMM 1's output group ``g`` (the config's
#: BLOCK_SIZE_N under the weight's 128 scale block: GEMM 1 quantizes its output per BLOCK_SIZE_N columns, e.g. the
#: H100 DeepSeek-V3 file at M <= 128). "ka" (shipped): the step keeps BLOCK_SIZE_K and spans several activation
#: groups (:func:`moekit.kernels.moe_gemm._rescaled_groups`, a rescaled float16 MMA operand), where BLOCK_SIZE_M <
#: 64 (fp8 dots of fewer rows run as float16 MMAs anyway) and K (= I) makes at least :data:`KA_MIN_STEPS` steps;
#: else "none", BLOCK_SIZE_K cut to ``g``. Other arms of the A/B: "stages" (num_stages times BLOCK_SIZE_K / g), "n"
#: (BLOCK_SIZE_N times it), "both". Measured on the H100, whole forward, arms interleaved
#: (``benchmarks/ab_gemm2_split.py``, ``ab_gemm2_split{,_ka}_H100_session17.json``), DeepSeek-V3 fp8 block M=8 /
#: 16 / 32 / 64 / 128, none -> both -> ka: 866.3 -> 844.8 -> 783.0 us, 1299.1 -> 1263.6 -> 1175.2, 1801.9 -> 1749.9
#: -> 1632.4, 2210.1 -> 2144.6 -> 2003.3, 2654.6 -> 2573.9 -> 2446.2 (ka 1.085-1.106x); its TP8 slice (I = 256, two
#: K steps) M=8 127.7 / 132.0 / 133.2, hence the step count.
GEMM2_SPLIT_RULE = "ka"
KA_MIN_STEPS = 8

#: Dynamic per-tensor fp8 / int8 w8a8: GEMM 1's epilogue raises the max |output| into a buffer (one atomic max
#: per program, ``OUT_QUANT`` 3 of :mod:`moekit.kernels.moe_gemm`) that x's quantization zeroed, so GEMM 2's
#: activation is quantized without an amax pass over the [P, I] intermediate (the same scale, bit for bit).
GEMM1_AMAX = True


def gemm2_split_config(config, g: int, k: int):
    """GEMM 2's config on the fp8 block path when GEMM 1 quantizes its output in groups of ``g`` columns and
    GEMM 2's K is ``k``: the config itself where a step may span groups (:data:`GEMM2_SPLIT_RULE`), else
    BLOCK_SIZE_K at most ``g`` with the rule's make-up for the shorter step."""
    rule = GEMM2_SPLIT_RULE
    if rule == "ka":
        if config.BLOCK_SIZE_M < 64 and k >= KA_MIN_STEPS * config.BLOCK_SIZE_K:
            return config
        rule = "none"
    bk = min(config.BLOCK_SIZE_K, g)
    f = config.BLOCK_SIZE_K // bk
    cfg = replace(config, BLOCK_SIZE_K=bk)
    if f > 1 and rule in ("stages", "both"):
        cfg = replace(cfg, num_stages=cfg.num_stages * f)
    if f > 1 and rule in ("n", "both"):
        cfg = replace(cfg, BLOCK_SIZE_N=cfg.BLOCK_SIZE_N * f)
    return cfg


#: Swapped operands for small-M w8a8 tiles (:func:`w8a8_swap_ab`): None is the rule; True / False force them on
#: or off everywhere, every w8a8 granularity included (tests and A/B arms set it, users have no reason to).
W8A8_SWAP_AB = None


def w8a8_swap_ab(x: torch.Tensor, block_m: int, scheme: QuantScheme, spans_groups: bool = False) -> bool:
    """Whether a Triton w8a8 GEMM on ``x``'s device runs its K steps with the weight tile as the MMA's left
    operand (:func:`moekit.kernels.moe_gemm._mma_step`): Hopper (sm_90), whose 8-bit warpgroup MMAs need >= 64
    rows on that side, tiles of fewer than 64 token rows (which Triton otherwise runs as float16 ``mma.sync``
    after upcasting both 8-bit tiles in registers: 453 against 270 SASS instructions per 16x128x128 K step of
    GEMM 1, ``tools/sass_loops.py gemm1 --fp8-block 128 [--swap]``), fp8 128x128 blocks, and (``spans_groups``)
    not GEMM 2 steps spanning several activation groups (rule "ka", a float16 operand either way).
    Whole forward on the H100, arms interleaved (``benchmarks/ab_swap_ab.py``, ``ab_swap_ab_H100_session18.json``):
    Qwen3 fp8 block M=16 / 32 / 64 / 128 / 256 1.035x / 1.032x / 1.025x / 1.020x / 1.012x, DeepSeek-V3 M=256
    1.020x, its TP8 slice M=8 / 64 1.032x / 1.017x; DeepSeek-V3 M=16 / 64 ("ka" steps in GEMM 2) 0.98x, so not
    there; per tensor (Mixtral M=16 / 64 / 256 1.005x / 1.012x / 1.000x) and per channel (Qwen3 0.981x / 1.009x /
    1.003x) within noise, so off."""
    if W8A8_SWAP_AB is not None:
        return W8A8_SWAP_AB
    from moekit.platform import on_sm90, platform_of

    return (scheme.granularity == "block" and not spans_groups and x.device.type == "cuda" and block_m < 64
            and on_sm90(platform_of(x.device)))


#: Swapped operands for int8 / int4 weight-only GEMMs (:func:`weight_only_swap_ab`): None is the rule; True / False
#: force them on or off (tests and A/B arms set it).
WEIGHT_ONLY_SWAP_AB = None


def weight_only_swap_ab(x: torch.Tensor, config, scheme: QuantScheme) -> bool:
    """Whether the int8 / int4 weight-only GEMMs run ``dot(decoded weight, tokens^T)`` (the weight the MMA's left
    operand, :func:`moekit.kernels.moe_gemm._weight_only_dot`) instead of ``dot(tokens, decoded weight)``: on
    Hopper a warpgroup MMA reads its left operand from registers, so the weight decoded there is not stored to
    shared memory every K step; its right operand (the tokens) is the tile Triton stages. Where it measured
    faster (whole forward, H100, arms interleaved, ``benchmarks/ab_weight_only_swap.py``,
    ``ab_weight_only_swap_H100_session23.json``): int4 on Hopper with 16-bit activations, tiles of >= 32 (now
    64, below) token rows and >= 64 weight rows (a warpgroup MMA's M side): Mixtral M=256 / 1024 / 4096 1.23x /
    1.24x / 1.24x, Qwen3 1.05x / 1.13x / 1.14x. Not below 32 rows (Qwen3 M=64, 16-row tiles: 0.94x; Mixtral M=64,
    32-row tiles: 1.00x) and not int8 (Qwen3 M=256 / 4096 0.90x / 0.86x; why was not profiled). Since int4 is
    decoded by inline PTX (:func:`int4_ptx_decode`, session 24) the plain form gained more where tiles are small
    (Mixtral M=64, 32-row tiles: plain 587 against swapped 675 us; Qwen3 M=256, 32-row tiles: 251 against 253;
    ``ab_int4_asm_H100_session24.log``), so tiles of >= 64 token rows now."""
    if WEIGHT_ONLY_SWAP_AB is not None:
        return WEIGHT_ONLY_SWAP_AB and scheme.weight_dtype in ("int8", "int4")
    from moekit.platform import on_sm90, platform_of

    return (scheme.weight_dtype == "int4" and x.device.type == "cuda" and x.dtype in (torch.bfloat16, torch.float16)
            and config.BLOCK_SIZE_M >= 64 and config.BLOCK_SIZE_N >= 64 and on_sm90(platform_of(x.device)))


#: int4 weights decoded by inline PTX where :func:`int4_ptx_decode` allows: None is the rule; True / False force it
#: on (where it can run: bf16 on an NVIDIA sm_80+ GPU) or off (the arms of ``benchmarks/ab_weight_only_swap.py``).
INT4_PTX_DECODE = None


def int4_ptx_decode(x: torch.Tensor, scheme: QuantScheme) -> bool:
    """Whether int4 weight-only GEMMs on ``x`` decode the codes by inline PTX
    (:func:`moekit.kernels.quant.int4_bf16_scaled`: bit placement under bf16 128.0, two exact bf16x2 FMAs, the
    scale rounded to bf16) instead of Triton integer and float32 ops: bf16 activations on an NVIDIA sm_80+ GPU
    (``fma.rn.bf16x2``). SASS per K step of GEMM 1 (128 x 128 x 64 tile, 8 warps, ``tools/sass_loops.py gemm1
    --weight-only int4 [--swap] [--int4-asm]``): 468 -> 310 instructions plain, 484 -> 416 swapped."""
    if INT4_PTX_DECODE is False or scheme.weight_dtype != "int4":
        return False
    return _bf16x2_ptx(x)


def _bf16x2_ptx(x: torch.Tensor) -> bool:
    """Whether inline PTX with packed bf16 arithmetic (``fma.rn.bf16x2``) serves ``x``: bf16 on NVIDIA sm_80+."""
    from moekit.platform import on_sm80_plus, platform_of

    return x.device.type == "cuda" and x.dtype == torch.bfloat16 and on_sm80_plus(platform_of(x.device))


def mxfp4_mma_ptx_decode(x: torch.Tensor) -> bool:
    """Whether mxfp4 GEMMs on ``x`` with weights in the "mma" layout decode them by inline PTX
    (:func:`moekit.kernels.quant.mxfp4_mma_words`) instead of Triton ops: bf16 activations on an NVIDIA sm_80+
    GPU (``fma.rn.bf16x2``), unless :data:`MX_PTX_DECODE` is off."""
    return MX_PTX_DECODE and _bf16x2_ptx(x)


def mxfp4_dot_scaled(x: torch.Tensor) -> bool:
    """Whether mxfp4 GEMMs on ``x``'s device use ``tl.dot_scaled`` (the device has it, see the
    ``dot_scaled`` platform feature, and the activations are bf16/fp16) rather than moekit's in-kernel
    decode (the Triton interpreter has no ``dot_scaled``; float32 activations are not an MX operand)."""
    from moekit.platform import has_feature, platform_of

    if x.device.type != "cuda" or x.dtype not in (torch.bfloat16, torch.float16):
        return False
    return has_feature("dot_scaled", platform_of(x.device))[0]


#: mxfp4 decoded by inline PTX where :func:`mxfp4_ptx_decode` (grouped GEMMs) and :func:`mxfp4_gemv_ptx_decode`
#: (decode GEMVs) allow; False is ``tl.dot_scaled`` / the Triton-ops decode everywhere (the other arm of
#: ``benchmarks/ab_mxfp4_decode.py``; benchmarks set it, users have no reason to).
MX_PTX_DECODE = True


def mxfp4_ptx_decode(x: torch.Tensor, block_m: int, block_k: int) -> bool:
    """Whether mxfp4 GEMMs on ``x`` decode the weights with moekit's inline PTX
    (:func:`moekit.kernels.quant.mxfp4_bf16_scaled`: 250 instructions per K step of a 16x64x32 tile against
    314 for ``tl.dot_scaled``'s upcast on Hopper, ``tools/sass_loops.py``) instead of ``tl.dot_scaled``:
    Hopper (sm_90, where ``tl.dot_scaled`` decodes in software; Blackwell's MMAs take mxfp4 natively), bf16
    activations, K steps of one to four 32-code scale groups (``BLOCK_SIZE_K`` 32, 64 or 128) and
    tiles of at least 32 token rows. Measured on the H100, gpt-oss-20b, whole
    forward, the two arms interleaved (``benchmarks/ab_mxfp4_decode.py``,
    ``ab_mxfp4_decode_H100_session8_all_configs.json``): 1.09-1.25x at M=128..4096 (32- to 128-row tiles);
    with 16-row tiles 1.07x at M=16 but 0.93x / 0.92x at M=32 / 64, so those keep ``tl.dot_scaled``. With
    this rule: H100 1.09-1.17x, H200 1.06-1.24x at M=128..4096, 1.00x at M=16 / 64
    (``ab_mxfp4_decode_{H100,H200}_session8_rule.json``). K steps of 64 / 128 codes (session 9) cut the
    per-code overhead further: 1.16-1.39x over 32-code steps (``ab_mxfp4_bk64_H100_session9.json``)."""
    from moekit.platform import on_sm90, platform_of

    if not MX_PTX_DECODE or x.device.type != "cuda" or x.dtype != torch.bfloat16:
        return False
    return block_k in (32, 64, 128) and block_m >= 32 and on_sm90(platform_of(x.device))


def mxfp4_gemv_ptx_decode(x: torch.Tensor, scheme) -> bool:
    """Whether the decode GEMVs (:func:`moekit.kernels.moe_gemv.moe_gemv`) decode mxfp4 codes of ``scheme`` with
    inline PTX (:func:`moekit.kernels.quant.mxfp4_f32_scaled_down`: float16 bit placement, halves converted in
    place) instead of Triton integer ops: any NVIDIA GPU (the PTX is plain integer and conversion
    instructions), mxfp4 weights, unless :data:`MX_PTX_DECODE` is off."""
    from moekit.platform import on_cuda, platform_of

    if not MX_PTX_DECODE or scheme is None or scheme.weight_dtype != "mxfp4" or x.device.type != "cuda":
        return False
    return on_cuda(platform_of(x.device))


#: fp8 128x128-block layers on Hopper run the Gluon grouped GEMMs of :mod:`moekit.kernels.moe_gemm_sm90` where
#: :func:`fp8_block_gluon` allows; False is the Triton kernels everywhere (the other arm of
#: ``benchmarks/ab_fp8_block_gluon.py``; benchmarks set it, users have no reason to).
FP8_BLOCK_GLUON = True
#: ... from this many routed rows per expert on average (M * top_k / E): below it tiles of 64 rows are mostly
#: padding, and the Triton kernels' smaller tiles win.
FP8_BLOCK_GLUON_MIN_ROWS = 32


def fp8_block_gluon(x: torch.Tensor, scheme: QuantScheme, adt, m: int, top_k: int, e: int, h: int, i: int,
                    activation: str, has_bias: bool) -> bool:
    """:func:`fp8_block_gluon_applies` for a layer on ``x``'s device."""
    from moekit.platform import platform_of

    if x.device.type != "cuda":
        return False
    return fp8_block_gluon_applies(platform_of(x.device), scheme, adt, m, top_k, e, h, i, activation, has_bias)


def fp8_block_gluon_applies(platform, scheme: QuantScheme, adt, m: int, top_k: int, e: int, h: int, i: int,
                            activation: str = "silu", has_bias: bool = False) -> bool:
    """Whether an fp8 block layer on ``platform`` runs the Gluon kernels (asynchronous wgmma: step k's product
    is scaled while step k + 1's MMA runs, which Triton's ``tl.dot`` cannot express): Hopper, e4m3fn
    activations (the platform's fp8), 128x128 blocks, H and I multiples of 256 (even numbers of 128-deep K
    steps in both GEMMs), SiLU without expert biases, and at least :data:`FP8_BLOCK_GLUON_MIN_ROWS` rows per
    expert.
    Whole forward against the Triton kernels, arms interleaved (``benchmarks/ab_fp8_block_gluon.py``): H100
    DeepSeek-V3 / Qwen3 M=4096 1.22x / 1.21x, M=1024 (32 / 64 rows per expert) 1.04x / 1.13x
    (``ab_fp8_block_gluon_H100_session10.json``), 16 rows per expert 0.99x / 0.99x
    (``ab_fp8_block_gluon_threshold_H100_session10.log``); H200 1.24x / 1.24x at M=4096, 1.19x /
    1.18x at M=1024, DeepSeek-V3 at 16 rows 1.08x (``ab_fp8_block_gluon_H200_session10.json``)."""
    from moekit.platform import on_sm90

    if not FP8_BLOCK_GLUON or adt != torch.float8_e4m3fn:
        return False
    if scheme.block_shape != (128, 128) or h % 256 or i % 256 or activation != "silu" or has_bias:
        return False
    if m * top_k < FP8_BLOCK_GLUON_MIN_ROWS * e or not on_sm90(platform):
        return False
    return gluon_kernels() is not None


def copies_of_16_bytes(*tensors: torch.Tensor) -> bool:
    """Whether the Gluon kernels' cp.async copies can move 16 bytes at a time from these (weight) tensors: a
    contiguous last dimension, 16-byte-aligned base and strides. Views that break this (an odd offset into a
    larger buffer) keep the Triton kernels, which Gluon would otherwise fail to compile for."""
    return all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0
               and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1]) for t in tensors)


@functools.lru_cache(maxsize=None)
def gluon_kernels():
    """:mod:`moekit.kernels.moe_gemm_sm90`, or None (warned once) where this triton has no Gluon Hopper API
    (moekit allows triton >= 3.2; the kernels were written and measured with 3.6): the Triton kernels run."""
    try:
        from moekit.kernels import moe_gemm_sm90
    except (ImportError, AttributeError) as err:
        import triton

        from moekit.envs import warn_once

        warn_once("gluon-missing", f"triton {triton.__version__} has no usable Gluon Hopper API ({err}); fp8 "
                                   "block layers keep the Triton kernels (triton 3.6 runs faster Gluon ones)")
        return None
    return moe_gemm_sm90


def _weight_quant(scheme: QuantScheme, scale, zero, block_k: int, mx_dot: bool = False,
                  asm_decode: bool = False, swap_ab: bool = False) -> GemmQuant:
    """The weight half of a GemmQuant for a weight-only scheme (``swap_ab``: :func:`weight_only_swap_ab`)."""
    scale = scale.contiguous()
    zero = None if zero is None else zero.contiguous()
    if scale.dim() == 2:  # channel: [E, N]
        strides, gk = (scale.stride(0), scale.stride(1), 0), 1
    else:  # group: [E, N, ngroups]
        strides, gk = tuple(scale.stride()), scheme.group_size
    # int8/int4: one scale per column per K step when BLOCK_K divides the group (channel: gk = 1, stride 0)
    tile = scheme.weight_dtype != "mxfp4" and (scale.dim() == 2 or gk % block_k == 0)
    return GemmQuant(_WEIGHT_ONLY_MODE[scheme.weight_dtype], b_scale=scale, b_strides=strides, b_zero=zero,
                     group_k=gk, scale_tile=tile, mx_dot=mx_dot, asm_decode=asm_decode, swap_ab=swap_ab)


def _w8a8_weight(scheme: QuantScheme, scale) -> dict:
    if scheme.granularity == "block":
        return dict(b_scale=scale, b_strides=tuple(scale.stride()), group_n=scheme.block_shape[0],
                    group_k=scheme.block_shape[1])
    if scheme.granularity == "tensor":
        return dict(b_scale=scale, b_strides=(scale.stride(0), 0, 0))
    return dict(b_scale=scale, b_strides=(scale.stride(0), scale.stride(1), 0))


def _quant_rows(scheme: QuantScheme, t, dt, static=None, npp=None, amax=None, zero=None):
    """Quantize activation rows; returns (q, scale, (stride_row, stride_group)). ``amax`` / ``zero``: per tensor,
    the buffers of :func:`moekit.quant.ops.per_tensor_quant` (None elsewhere)."""
    if scheme.granularity == "block":
        q, s = per_token_group_quant(t, scheme.block_shape[1], dt, npp=npp)
        return q, s, (s.stride(0), s.stride(1))
    if scheme.granularity == "channel":
        q, s = per_token_quant(t, dt, npp=npp)
        return q, s, (s.stride(0), 0)
    q, s = per_tensor_quant(t, dt, static, npp=npp, amax=amax, zero=zero)
    return q, s, (0, 0)


def fused_experts_triton_quant(x, w13, w2, topk_weights, topk_ids, *, expert_map=None, activation="silu",
                               config=None, scheme: QuantScheme, w13_scale=None, w2_scale=None, w13_zero=None,
                               w2_zero=None, a13_scale=None, a2_scale=None, aligned=None, w13_bias=None,
                               w2_bias=None, slots_per_expert: float):
    """``slots_per_expert``: routed rows per expert on average (M * top_k over the global experts), for GEMM 2's
    config (:func:`moekit.configs.gemm2_config`); the rest as :func:`moekit.triton_experts.fused_experts_triton`."""
    m, h = x.shape
    e, i2 = w13.shape[:2]
    i = i2 // 2
    top_k = topk_ids.shape[1]
    if m == 0:
        return x.new_empty((0, h))
    adt = act_dtype(scheme, x.device)
    if config is None:
        config = quant_config(e, i, h, top_k, m, scheme)
    block = scheme.granularity == "block" and adt is not None
    mma = scheme.layout == "mma"
    if mma:  # mxfp4 words: K steps of whole 64-code chunks
        least = MMA_CHUNK
    else:  # packed: each half-K dot >= 16 deep
        least = 32 if scheme.weight_dtype in ("int4", "mxfp4") else 16
    if block:
        config = _fix_block_k(config, scheme.block_shape[1], least)
    elif scheme.weight_only and scheme.granularity == "group" and scheme.weight_dtype != "mxfp4":  # int8 / int4
        config = _fix_block_k(config, scheme.group_size, least)
    elif least > 16:  # int4 per channel, mxfp4: only the packed floor applies. mxfp4 K steps may span several
        # 32-code scale groups (tl.dot_scaled reads [BLOCK_N, BLOCK_K / 32] scales, the in-kernel decode one
        # scale per byte row): BLOCK_K = 32 made every step a 16-byte-per-row load.
        config = _fix_block_k(config, config.BLOCK_SIZE_K, least)
    gluon = (block and fp8_block_gluon(x, scheme, adt, m, top_k, e, h, i, activation, w13_bias is not None)
             and copies_of_16_bytes(w13, w2))
    if gluon:
        moe_gemm_sm90 = gluon_kernels()
        config = replace(config, BLOCK_SIZE_M=moe_gemm_sm90.GEMM1_TILE[0])
    topk_weights = topk_weights.float().contiguous()
    topk_ids = topk_ids.contiguous()
    # else fused_moe's route-and-align launch; the Gluon kernels read full tiles only (no tail tiles)
    if aligned is None or aligned.block_m != config.BLOCK_SIZE_M or (gluon and aligned.tile_rows is not None):
        aligned = moe_align_block_size(topk_ids, e, config.BLOCK_SIZE_M, expert_map, use_triton=True,
                                       min_tile=None if gluon else tail_tile(config, e))
    p = aligned.sorted_ids.numel()
    npp = aligned.num_padded
    args = (aligned.sorted_ids, aligned.expert_ids, npp)
    tiles = dict(tile_rows=aligned.tile_rows, min_tile=aligned.min_tile)  # the Gluon kernels take none
    cfg2 = config  # GEMM 2's config (fp8 block: BLOCK_K within GEMM 1's output group)

    if adt is None:  # weight-only
        # mxfp4 takes the swapped layout with tl.dot_scaled where it exists, and always in the mma layout
        mx_dot = mma or (scheme.weight_dtype == "mxfp4" and mxfp4_dot_scaled(x))
        if mma:
            asm_decode = mxfp4_mma_ptx_decode(x)
        else:
            asm_decode = ((mx_dot and mxfp4_ptx_decode(x, config.BLOCK_SIZE_M, config.BLOCK_SIZE_K))
                          or int4_ptx_decode(x, scheme))
        swap = weight_only_swap_ab(x, config, scheme)
        q1 = _weight_quant(scheme, w13_scale, w13_zero, config.BLOCK_SIZE_K, mx_dot, asm_decode, swap)
        q2 = _weight_quant(scheme, w2_scale, w2_zero, config.BLOCK_SIZE_K, mx_dot, asm_decode, swap)
        q1.mx_words = q2.mx_words = mma
        inter = torch.empty((p, i), dtype=x.dtype, device=x.device)
        moe_gemm1(x, w13, inter, *args, top_k, config, activation, quant=q1, bias=w13_bias, **tiles)
        a2 = inter
    else:
        int_acc = adt == torch.int8
        mode = 2 if block else 1
        # dynamic per-tensor activation of GEMM 2: its amax comes from GEMM 1's epilogue into this buffer,
        # which x's quantization zeroes (both launches before GEMM 1's on the stream)
        amax = (torch.empty(1, dtype=torch.float32, device=x.device)
                if GEMM1_AMAX and scheme.granularity == "tensor" and a2_scale is None else None)
        xq, xs, xstr = _quant_rows(scheme, x, adt, a13_scale, zero=amax)
        swap = not gluon and w8a8_swap_ab(x, config.BLOCK_SIZE_M, scheme)
        q1 = GemmQuant(mode, a_scale=xs, a_strides=xstr, int_acc=int_acc, swap_ab=swap,
                       **_w8a8_weight(scheme, w13_scale))
        q2 = GemmQuant(mode, int_acc=int_acc, swap_ab=swap, **_w8a8_weight(scheme, w2_scale))
        if gluon:  # both GEMMs in Gluon; GEMM 1's output groups are its tiles' columns (128)
            inter = torch.empty((p, i), dtype=adt, device=x.device)
            inter_s = torch.empty((p, i // moe_gemm_sm90.GEMM1_TILE[1]), dtype=torch.float32, device=x.device)
            moe_gemm_sm90.moe_gemm1_fp8_block_sm90(xq, xs, w13, w13_scale, inter, inter_s, *args, top_k,
                                                   config.GROUP_SIZE_M, _qparams(adt)[1])
            a2, q2.a_scale = inter, inter_s
        elif block:
            # GEMM 1 quantizes its output per (row, BLOCK_N columns): a divisor of the weight block, so that
            # group is the block or finer and decode keeps enough programs (BLOCK_N = 128 gave qwen3 M=1 only
            # 48). GEMM 2's K step must then not straddle two activation groups.
            bk = scheme.block_shape[1]
            g = config.BLOCK_SIZE_N if config.BLOCK_SIZE_N <= bk and bk % config.BLOCK_SIZE_N == 0 else bk
            cfg1 = replace(config, BLOCK_SIZE_N=g)
            cfg2 = gemm2_split_config(config, g, i)
            inter = torch.empty((p, i), dtype=adt, device=x.device)
            inter_s = torch.empty((p, -(-i // g)), dtype=torch.float32, device=x.device)
            q1.out_quant, q1.out_scale, q1.out_stride, q1.out_qparams = 1, inter_s, inter_s.stride(0), _qparams(adt)
            moe_gemm1(xq, w13, inter, *args, top_k, cfg1, activation, quant=q1, bias=w13_bias, **tiles)
            a2, q2.a_scale, q2.a_strides = inter, inter_s, (inter_s.stride(0), inter_s.stride(1))
            q2.a_group_k = g
            q2.swap_ab = w8a8_swap_ab(x, cfg2.BLOCK_SIZE_M, scheme, spans_groups=cfg2.BLOCK_SIZE_K > g)
        elif scheme.granularity == "tensor" and a2_scale is not None:
            inter = torch.empty((p, i), dtype=adt, device=x.device)
            q1.out_quant, q1.out_scale, q1.out_qparams = 2, a2_scale.reshape(1).float(), _qparams(adt)
            moe_gemm1(xq, w13, inter, *args, top_k, config, activation, quant=q1, bias=w13_bias, **tiles)
            a2, q2.a_scale, q2.a_strides = inter, q1.out_scale, (0, 0)
        else:
            inter = torch.empty((p, i), dtype=x.dtype, device=x.device)
            if amax is not None:
                q1.out_quant, q1.out_scale = 3, amax
            moe_gemm1(xq, w13, inter, *args, top_k, config, activation, quant=q1, bias=w13_bias, **tiles)
            a2, q2.a_scale, q2.a_strides = _quant_rows(scheme, inter, adt, None, npp=npp, amax=amax)
        if not (gluon or block):  # per tensor / per channel: GEMM 2 may take wider tiles than GEMM 1
            cfg2 = gemm2_config(config, i, slots_per_expert)
    out = torch.empty((m, h), dtype=x.dtype, device=x.device)
    direct = top_k == 1 and expert_map is None  # GEMM 2 writes the output rows itself
    y = out if direct else torch.empty((m * top_k, h), dtype=x.dtype, device=x.device)
    if gluon:
        moe_gemm_sm90.moe_gemm2_fp8_block_sm90(a2, q2.a_scale, w2, w2_scale, y, topk_weights, *args,
                                               config.GROUP_SIZE_M)
    else:
        moe_gemm2(a2, w2, y, topk_weights, *args, cfg2, quant=q2, bias=w2_bias, **tiles)
    return out if direct else moe_sum(y, out, topk_ids, e, expert_map)
