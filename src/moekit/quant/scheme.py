"""QuantScheme: how an MoE layer's weights (and activations) are quantized. Self-contained; no kernels here.

=================================  ============  ==========  ===========  ==============  ==========
constructor                        weight_dtype  act_dtype   granularity  block / group   ``name``
=================================  ============  ==========  ===========  ==============  ==========
``QuantScheme.none()``             bf16          None        None         -               none
``QuantScheme.fp8_block(128,128)`` fp8           fp8         block        (128, 128)      fp8_block128x128
``QuantScheme.fp8_tensor()``       fp8           fp8         tensor       -               fp8_tensor
``QuantScheme.fp8_channel()``      fp8           fp8         channel      -               fp8_channel
``QuantScheme.int8_channel()``     int8          int8        channel      -               int8_channel
``QuantScheme.int8_weight_only()`` int8          None        channel      -               int8_weight_only
``QuantScheme.int4_weight_only()`` int4          None        group        128             int4_weight_only_g128
``QuantScheme.mxfp4()``            mxfp4         None        group        32 (MX block)   mxfp4
``QuantScheme.mxfp4("mma")``       mxfp4         None        group        32 (MX block)   mxfp4_mma
=================================  ============  ==========  ===========  ==============  ==========

``layout`` (mxfp4 only) says how the packed codes are ordered: "plain" (two codes per byte along K, low nibble
first, as checkpoints ship them) or "mma" (each 64-code chunk of a row permuted so that one 32-bit word holds
the codes one thread of a Hopper warpgroup MMA needs; :func:`moekit.quant.weights.mma_layout` converts once,
at load time; H and I multiples of 64). Same bytes, same scales; the Triton kernels decode "mma" with fewer
instructions on Hopper.

``act_dtype=None`` means weight-only: activations stay in the layer's compute dtype. For fp8 and int8 w8a8,
"channel" means per-output-channel weight scales and per-token activation scales, "tensor" one scale each,
"block" one scale per ``block_shape=(block_n, block_k)`` weight tile and per ``(token, block_k)`` activation
group. ``None`` passed wherever a scheme is expected means unquantized.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional, Tuple, Union

from moekit.errors import MoEInputError

UNQUANTIZED_DTYPES = ("bf16", "fp16", "fp32")
WEIGHT_DTYPES = UNQUANTIZED_DTYPES + ("fp8", "int8", "int4", "mxfp4")
GRANULARITIES = ("tensor", "channel", "block", "group")
MX_BLOCK = 32
LAYOUTS = ("plain", "mma")
#: K (H and I) must be a multiple of this for the "mma" layout (its chunk of codes).
MMA_CHUNK = 64

# weight_dtype -> (allowed act_dtype values, allowed granularities)
_RULES = {
    "fp8": (("fp8",), ("tensor", "channel", "block")),
    "int8": (("int8", None), ("tensor", "channel", "group")),
    "int4": ((None,), ("channel", "group")),
    "mxfp4": ((None,), ("group",)),
}


def _bad(field: str, expected: str, actual) -> MoEInputError:
    return MoEInputError(f"QuantScheme.{field}: expected {expected}, got {actual!r}")


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    weight_dtype: str = "bf16"
    act_dtype: Optional[str] = None
    granularity: Optional[str] = None
    block_shape: Optional[Tuple[int, int]] = None
    group_size: Optional[int] = None
    zero_point: bool = False
    layout: str = "plain"

    def __post_init__(self) -> None:
        w = self.weight_dtype
        if w not in WEIGHT_DTYPES:
            raise _bad("weight_dtype", f"one of {WEIGHT_DTYPES}", w)
        if self.layout not in LAYOUTS:
            raise _bad("layout", f"one of {LAYOUTS}", self.layout)
        if self.layout != "plain" and w != "mxfp4":
            raise _bad("layout", f"'plain' for weight_dtype={w!r} (only mxfp4 has other layouts)", self.layout)
        if self.block_shape is not None:
            bs = self.block_shape
            if isinstance(bs, list):
                bs = tuple(bs)
                object.__setattr__(self, "block_shape", bs)
            if not (isinstance(bs, tuple) and len(bs) == 2
                    and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in bs)):
                raise _bad("block_shape", "None or a (block_n, block_k) pair of positive ints", self.block_shape)
        if self.group_size is not None and not (
            isinstance(self.group_size, int) and not isinstance(self.group_size, bool) and self.group_size > 0
        ):
            raise _bad("group_size", "None or a positive int", self.group_size)
        if not isinstance(self.zero_point, bool):
            raise _bad("zero_point", "a bool", self.zero_point)

        if w in UNQUANTIZED_DTYPES:
            for field in ("act_dtype", "granularity", "block_shape", "group_size"):
                if getattr(self, field) is not None:
                    raise _bad(field, f"None for unquantized weight_dtype={w!r}", getattr(self, field))
            if self.zero_point:
                raise _bad("zero_point", f"False for unquantized weight_dtype={w!r}", self.zero_point)
            return

        acts, grans = _RULES[w]
        if self.act_dtype not in acts:
            raise _bad("act_dtype", f"one of {acts} for weight_dtype={w!r}", self.act_dtype)
        if self.granularity not in grans:
            raise _bad("granularity", f"one of {grans} for weight_dtype={w!r}", self.granularity)
        g = self.granularity
        if (g == "block") != (self.block_shape is not None):
            raise _bad("block_shape", "a (block_n, block_k) pair exactly when granularity='block'", self.block_shape)
        if (g == "group") != (self.group_size is not None):
            raise _bad("group_size", "a positive int exactly when granularity='group'", self.group_size)
        if w == "mxfp4" and self.group_size != MX_BLOCK:
            raise _bad("group_size", f"{MX_BLOCK} for mxfp4 (the MX block size)", self.group_size)
        if self.zero_point and self.act_dtype is not None:
            raise _bad("zero_point", "False unless weight-only (act_dtype=None)", self.zero_point)
        if self.zero_point and w == "mxfp4":
            raise _bad("zero_point", "False for mxfp4", self.zero_point)
        if self.act_dtype == "int8" and g == "group":
            raise _bad("granularity", "'tensor' or 'channel' for int8 w8a8", g)

    # ----------------------------------------------------------------------------------------- constructors
    @classmethod
    def none(cls, dtype: str = "bf16") -> "QuantScheme":
        """Unquantized weights in ``dtype`` ('bf16', 'fp16' or 'fp32')."""
        if dtype not in UNQUANTIZED_DTYPES:
            raise MoEInputError(f"dtype: expected one of {UNQUANTIZED_DTYPES}, got {dtype!r}")
        return cls(weight_dtype=dtype)

    @classmethod
    def fp8_block(cls, block_n: int = 128, block_k: int = 128) -> "QuantScheme":
        return cls("fp8", "fp8", "block", block_shape=(block_n, block_k))

    @classmethod
    def fp8_tensor(cls) -> "QuantScheme":
        return cls("fp8", "fp8", "tensor")

    @classmethod
    def fp8_channel(cls) -> "QuantScheme":
        return cls("fp8", "fp8", "channel")

    @classmethod
    def int8_channel(cls) -> "QuantScheme":
        return cls("int8", "int8", "channel")

    @classmethod
    def int8_weight_only(cls) -> "QuantScheme":
        return cls("int8", None, "channel")

    @classmethod
    def int4_weight_only(cls, group_size: int = 128, zero_point: bool = False) -> "QuantScheme":
        return cls("int4", None, "group", group_size=group_size, zero_point=zero_point)

    @classmethod
    def mxfp4(cls, layout: str = "plain") -> "QuantScheme":
        """gpt-oss style mxfp4 weights; ``layout`` "mma" for weights converted by
        :func:`moekit.quant.weights.mma_layout` (module docstring)."""
        return cls("mxfp4", None, "group", group_size=MX_BLOCK, layout=layout)

    @classmethod
    def standard(cls) -> Tuple["QuantScheme", ...]:
        """The schemes shown in support matrices, in display order."""
        return (
            cls.none(), cls.fp8_block(128, 128), cls.fp8_channel(), cls.fp8_tensor(), cls.int8_channel(),
            cls.int8_weight_only(), cls.int4_weight_only(), cls.mxfp4(),
        )

    @classmethod
    def from_name(cls, name: str) -> "QuantScheme":
        """Inverse of :attr:`name` ('fp8_block128x128', 'int4_weight_only_g64_zp', 'none_fp16', ...)."""
        if not isinstance(name, str):
            raise MoEInputError(f"name: expected a scheme name string, got {type(name).__name__}")
        n = name.strip().lower()
        simple = {
            "none": cls.none, "bf16": cls.none, "fp8_tensor": cls.fp8_tensor, "fp8_channel": cls.fp8_channel,
            "int8_channel": cls.int8_channel, "int8_weight_only": cls.int8_weight_only, "mxfp4": cls.mxfp4,
            "mxfp4_mma": lambda: cls.mxfp4("mma"),
        }
        if n in simple:
            return simple[n]()
        if n in ("fp16", "fp32", "none_fp16", "none_fp32"):
            return cls.none(n[-4:])
        m = re.fullmatch(r"fp8_block(\d+)x(\d+)", n)
        if m:
            return cls.fp8_block(int(m.group(1)), int(m.group(2)))
        m = re.fullmatch(r"(int8|int4)_weight_only(?:_(channel|g(\d+)))?(_zp)?", n)
        if m:
            w, kind, group, zp = m.group(1), m.group(2), m.group(3), bool(m.group(4))
            if kind is None:
                kind = "channel" if w == "int8" else "g128"
                group = None if w == "int8" else "128"
            if kind == "channel":
                return cls(w, None, "channel", zero_point=zp)
            return cls(w, None, "group", group_size=int(group), zero_point=zp)
        if n == "int8_tensor":
            return cls("int8", "int8", "tensor")
        known = ", ".join(s.name for s in cls.standard())
        raise MoEInputError(f"name: expected a scheme name such as {known}, got {name!r}")

    # ----------------------------------------------------------------------------------------- properties
    @property
    def is_quantized(self) -> bool:
        return self.weight_dtype not in UNQUANTIZED_DTYPES

    @property
    def weight_only(self) -> bool:
        """Quantized weights, activations left in the compute dtype."""
        return self.is_quantized and self.act_dtype is None

    @property
    def name(self) -> str:
        w = self.weight_dtype
        if not self.is_quantized:
            return "none" if w == "bf16" else f"none_{w}"
        zp = "_zp" if self.zero_point else ""
        if w == "fp8":
            if self.granularity == "block":
                return f"fp8_block{self.block_shape[0]}x{self.block_shape[1]}"
            return f"fp8_{self.granularity}"
        if w == "mxfp4":
            return "mxfp4" if self.layout == "plain" else f"mxfp4_{self.layout}"
        if self.act_dtype is not None:  # int8 w8a8
            return f"int8_{self.granularity}"
        base = f"{w}_weight_only"
        if self.granularity == "group":
            return f"{base}_g{self.group_size}{zp}"
        return f"{base}{zp}" if w == "int8" else f"{base}_channel{zp}"

    def __str__(self) -> str:
        return self.name


def as_scheme(scheme: Union[None, str, QuantScheme], argname: str = "scheme") -> QuantScheme:
    """None -> unquantized; a name -> :meth:`QuantScheme.from_name`; a QuantScheme -> itself."""
    if scheme is None:
        return QuantScheme.none()
    if isinstance(scheme, QuantScheme):
        return scheme
    if isinstance(scheme, str):
        try:
            return QuantScheme.from_name(scheme)
        except MoEInputError as e:
            raise MoEInputError(f"{argname}: {str(e).split(': ', 1)[1]}") from None
    raise MoEInputError(f"{argname}: expected None, a scheme name or a QuantScheme, got {type(scheme).__name__}")
