"""The device moekit runs on, and every device fact moekit relies on, in one place.

* :func:`current_platform` detects the device once (through torch) and caches it.
* :func:`fake_platform` overrides it inside a ``with`` block, so every rule can be tested on a CPU.
* Arch predicates (``on_gfx9`` ...) take an optional platform and test the **gfx arch string** on ROCm,
  never the capability tuple: HIP reports capability numbers that alias CUDA's (gfx906 says 9.0 like an
  H100, gfx1201 says 12.0 like an RTX PRO 6000), so :class:`Platform` keeps ``capability=None`` on ROCm.
* Hardware features (fp8 matrix cores, ``tl.dot_scaled``, int8 matrix cores, Triton targets) are data in
  :data:`FEATURES`; :func:`has_feature` answers them with a reason that backends show to users.
* :func:`fp8_dtype` / :func:`fp8_max` decide e4m3fn vs e4m3fnuz; :func:`shared_memory_per_block` gives
  the per-block shared memory (LDS) limit the tuned-config validator needs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import re
import threading
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch

from moekit.errors import MoEInputError

VENDORS = ("cuda", "rocm", "xpu", "cpu")

KiB = 1024
GiB = 1024**3

# --------------------------------------------------------------------------------------------------------
# Device facts (data)
# --------------------------------------------------------------------------------------------------------

#: Arch families. Patterns are fnmatch globs over the bare gfx name (feature suffixes like ":xnack-" removed).
GFX9_ARCHES = ("gfx90a", "gfx942", "gfx950")  # CDNA2/3/4; not gfx906 (Vega20) nor gfx908 (CDNA1)
GFX1X_ARCHES = ("gfx11??", "gfx12??")  # RDNA3/3.5 and RDNA4; not gfx10xx (RDNA1/2)
GFX12X_ARCHES = ("gfx12??",)
FP8_FNUZ_ARCHES = ("gfx940", "gfx941", "gfx942")  # MI300 series: fp8 with NaN-at-negative-zero encoding


@dataclasses.dataclass(frozen=True)
class Feature:
    """A hardware feature: present on CUDA inside ``[cuda_min, cuda_below)`` and on the listed ROCm arches."""

    name: str
    description: str
    cuda_min: Optional[Tuple[int, int]]  # None: never on CUDA
    cuda_below: Optional[Tuple[int, int]]  # None: no upper bound
    rocm_arches: Tuple[str, ...]  # fnmatch patterns; empty: never on ROCm
    verb: str = "has"  # reasons read "<device> has [no] <description>" or "<device> is [not] <description>"

    def cuda_window(self) -> str:
        if self.cuda_min is None:
            return "none"
        lo = f"{self.cuda_min[0]}.{self.cuda_min[1]}"
        if self.cuda_below is None:
            return f">= {lo}"
        return f"{lo} <= capability < {self.cuda_below[0]}.{self.cuda_below[1]}"


FEATURES: Dict[str, Feature] = {
    f.name: f
    for f in (
        Feature(
            "triton_target",
            "a Triton GPU target",
            cuda_min=(8, 0),
            cuda_below=None,
            rocm_arches=("gfx908", *GFX9_ARCHES, *GFX1X_ARCHES),
            verb="is",
        ),
        Feature(
            "fp8_mma",
            "fp8 (e4m3) matrix cores usable from Triton tl.dot",
            cuda_min=(8, 9),
            cuda_below=None,
            rocm_arches=("gfx942", "gfx950", *GFX12X_ARCHES),
        ),
        Feature(
            "int8_mma",
            "int8 matrix cores usable from Triton tl.dot",
            cuda_min=(8, 0),
            cuda_below=None,
            rocm_arches=GFX9_ARCHES,
        ),
        Feature(
            "grouped_mm_bf16",
            "torch._grouped_mm for bf16 on the GPU (the PyTorch backend's grouped GEMM)",
            cuda_min=(9, 0),
            cuda_below=(10, 0),  # torch 2.8 runs it on 9.x only (raises elsewhere); later ones: not verified here
            rocm_arches=(),
        ),
        Feature(
            "pdl",
            "programmatic dependent launch (griddepcontrol: a kernel starts while the one before it finishes)",
            cuda_min=(9, 0),
            cuda_below=None,
            rocm_arches=(),
        ),
        Feature(
            "dot_scaled",
            "Triton tl.dot_scaled (microscaling mxfp4 x bf16/fp8)",
            cuda_min=(9, 0),
            cuda_below=(11, 0),
            rocm_arches=(*GFX9_ARCHES, *GFX1X_ARCHES),
        ),
    )
}

#: Largest shared memory (LDS on AMD) one block may opt into, in bytes. CUDA keys: (major, minor);
#: ROCm keys: gfx patterns, first match wins. Used when torch does not report the opt-in limit.
SHARED_MEMORY_PER_BLOCK_CUDA: Dict[Tuple[int, int], int] = {
    (7, 0): 96 * KiB,
    (7, 5): 64 * KiB,
    (8, 0): 163 * KiB,  # A100
    (8, 6): 99 * KiB,
    (8, 7): 163 * KiB,  # Orin
    (8, 9): 99 * KiB,  # L4, L40S, RTX 40xx
    (9, 0): 227 * KiB,  # H100, H200
    (10, 0): 227 * KiB,  # B200
    (10, 3): 227 * KiB,  # B300
    (11, 0): 227 * KiB,  # Thor
    (12, 0): 99 * KiB,  # RTX 50xx, RTX PRO 6000 Blackwell
    (12, 1): 99 * KiB,  # DGX Spark
}
SHARED_MEMORY_PER_BLOCK_ROCM: Tuple[Tuple[str, int], ...] = (
    ("gfx950", 160 * KiB),  # MI350/MI355
    ("gfx9*", 64 * KiB),  # MI50..MI325
    ("gfx1*", 64 * KiB),  # RDNA
)

#: PCI device id -> name used in tuned-config file names, for ROCm devices whose driver name is generic.
ROCM_DEVICE_ID_NAMES: Dict[int, str] = {
    0x66A1: "AMD_Instinct_MI50",
    0x738C: "AMD_Instinct_MI100",
    0x740C: "AMD_Instinct_MI250X",
    0x74A0: "AMD_Instinct_MI300A",
    0x74A1: "AMD_Instinct_MI300X",
    0x74B5: "AMD_Instinct_MI300X",  # MI300X virtual function
    0x74A2: "AMD_Instinct_MI308X",
    0x74A5: "AMD_Instinct_MI325X",
    0x74B9: "AMD_Instinct_MI325X",  # MI325X virtual function
    0x74A9: "AMD_Instinct_MI300X_HF",
    0x74BD: "AMD_Instinct_MI300X_HF",
    0x75A0: "AMD_Instinct_MI350X",
    0x75A3: "AMD_Instinct_MI355X",
    0x744C: "AMD_Radeon_RX7900XTX",
    0x73BF: "AMD_Radeon_RX6900XT",
    0x150E: "AMD_Radeon_890M",
    0x1586: "AMD_Radeon_8060S",
    0x7550: "AMD_Radeon_RX9070XT",
    0x7551: "AMD_Radeon_R9700",
}
#: Driver names that say nothing about the SKU; when we see one and cannot read the PCI id we warn once.
GENERIC_ROCM_NAMES = ("", "AMD Radeon Graphics", "AMD Radeon Device", "Device")

# --------------------------------------------------------------------------------------------------------
# Platform
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Platform:
    """One device, as moekit sees it.

    ``capability`` is set on CUDA only and ``gcn_arch`` on ROCm only (see the module docstring).
    ``shared_memory_per_block`` is the opt-in per-block limit in bytes (None where unknown, e.g. CPU).
    """

    vendor: str
    device_name: str
    capability: Optional[Tuple[int, int]] = None
    gcn_arch: Optional[str] = None
    total_memory: int = 0
    multiprocessor_count: int = 0
    shared_memory_per_block: Optional[int] = None
    pci_device_id: Optional[int] = None
    device_index: int = 0
    runtime_version: Optional[str] = None
    fake: bool = False

    def __post_init__(self) -> None:
        if self.vendor not in VENDORS:
            raise MoEInputError(f"Platform.vendor: expected one of {VENDORS}, got {self.vendor!r}")
        if self.vendor == "cuda":
            cap = self.capability
            if not (isinstance(cap, tuple) and len(cap) == 2 and all(isinstance(c, int) for c in cap)):
                raise MoEInputError(f"Platform.capability: expected (major, minor) ints on cuda, got {cap!r}")
        elif self.capability is not None:
            raise MoEInputError(
                f"Platform.capability: expected None on {self.vendor} (arch predicates use gcn_arch on ROCm), "
                f"got {self.capability!r}"
            )
        if self.vendor == "rocm":
            if not (isinstance(self.gcn_arch, str) and re.fullmatch(r"gfx[0-9a-f]+", self.gcn_arch)):
                raise MoEInputError(
                    f"Platform.gcn_arch: expected a bare gfx arch like 'gfx942' on rocm, got {self.gcn_arch!r}"
                )
        elif self.gcn_arch is not None:
            raise MoEInputError(f"Platform.gcn_arch: expected None on {self.vendor}, got {self.gcn_arch!r}")

    @property
    def is_gpu(self) -> bool:
        return self.vendor in ("cuda", "rocm", "xpu")

    @property
    def arch(self) -> str:
        """Short arch label: 'sm90', 'gfx942', 'xpu', 'cpu'."""
        if self.vendor == "cuda":
            return f"sm{self.capability[0]}{self.capability[1]}"
        if self.vendor == "rocm":
            return self.gcn_arch
        return self.vendor

    def describe(self) -> str:
        """One line: 'NVIDIA A100-SXM4-80GB (cuda, capability 8.0)'."""
        if self.vendor == "cuda":
            detail = f"cuda, capability {self.capability[0]}.{self.capability[1]}"
        elif self.vendor == "rocm":
            detail = f"rocm, {self.gcn_arch}"
        else:
            detail = self.vendor
        return f"{self.device_name} ({detail}{', fake' if self.fake else ''})"


def _cuda(name, cap, mem_gib, sms) -> Platform:
    return Platform(
        "cuda", name, capability=cap, total_memory=int(mem_gib * GiB), multiprocessor_count=sms,
        shared_memory_per_block=SHARED_MEMORY_PER_BLOCK_CUDA.get(cap), runtime_version="fake", fake=True,
    )


def _rocm(name, arch, mem_gib, cus, pci_id=None) -> Platform:
    return Platform(
        "rocm", name, gcn_arch=arch, total_memory=int(mem_gib * GiB), multiprocessor_count=cus,
        shared_memory_per_block=_rocm_shared_memory(arch), pci_device_id=pci_id, runtime_version="fake",
        fake=True,
    )


def _rocm_shared_memory(arch: str) -> Optional[int]:
    for pattern, size in SHARED_MEMORY_PER_BLOCK_ROCM:
        if fnmatch.fnmatchcase(arch, pattern):
            return size
    return None


#: Fake platforms by short key, for tests and ``moekit info --platform``.
PRESETS: Dict[str, Platform] = {
    "h100": _cuda("NVIDIA H100 80GB HBM3", (9, 0), 79.6, 132),
    "h200": _cuda("NVIDIA H200", (9, 0), 139.8, 132),
    "b200": _cuda("NVIDIA B200", (10, 0), 178.4, 148),
    "rtx_pro_6000": _cuda("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", (12, 0), 95.0, 188),
    "a100": _cuda("NVIDIA A100-SXM4-80GB", (8, 0), 79.2, 108),
    "mi300x": _rocm("AMD Instinct MI300X", "gfx942", 191.5, 304, 0x74A1),
    "mi355": _rocm("AMD Instinct MI355X", "gfx950", 287.6, 256, 0x75A3),
    "r9700": _rocm("AMD Radeon Graphics", "gfx1201", 31.9, 64, 0x7551),  # generic driver name, mapped by PCI id
    "rx7900": _rocm("AMD Radeon RX 7900 XTX", "gfx1100", 24.0, 96, 0x744C),
    "gfx1030": _rocm("AMD Radeon RX 6900 XT", "gfx1030", 16.0, 80, 0x73BF),
    "gfx906": _rocm("AMD Instinct MI50", "gfx906", 32.0, 60, 0x66A1),
    "cpu": Platform("cpu", "cpu"),  # what CPU tensors run on (platform_of): nothing about it is fake
}

# --------------------------------------------------------------------------------------------------------
# Detection and the fake-platform override
# --------------------------------------------------------------------------------------------------------

_lock = threading.Lock()
_detected: Dict[Tuple[str, int], Platform] = {}
_override: list = []  # stack of fake platforms (module global: seen by every thread)


def _bare_arch(gcn_arch_name: str) -> str:
    """'gfx942:sramecc+:xnack-' -> 'gfx942'."""
    return gcn_arch_name.split(":", 1)[0].strip().lower()


def _rocm_pci_device_id(props, index: int) -> Optional[int]:
    pci = getattr(props, "pci_device_id", None)
    if isinstance(pci, int) and pci > 0:
        return pci
    try:
        import amdsmi  # optional; ships with ROCm
    except ImportError:
        return None
    try:
        amdsmi.amdsmi_init()
        try:
            visible = os.environ.get("HIP_VISIBLE_DEVICES") or os.environ.get("CUDA_VISIBLE_DEVICES")
            physical = index
            if visible:
                ids = [v.strip() for v in visible.split(",") if v.strip()]
                if index < len(ids) and ids[index].isdigit():
                    physical = int(ids[index])
            handle = amdsmi.amdsmi_get_processor_handles()[physical]
            raw = amdsmi.amdsmi_get_gpu_asic_info(handle)["device_id"]
            return int(raw, 16) if isinstance(raw, str) else int(raw)
        finally:
            amdsmi.amdsmi_shut_down()
    except Exception:  # noqa: BLE001 - amdsmi failures only cost us the marketing name
        return None


def _detect(index: Optional[int]) -> Platform:
    if torch.cuda.is_available():
        idx = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(idx)
        optin = getattr(props, "shared_memory_per_block_optin", None)
        common = dict(
            device_name=props.name,
            total_memory=int(props.total_memory),
            multiprocessor_count=int(props.multi_processor_count),
            device_index=idx,
        )
        if torch.version.hip is not None:
            arch = _bare_arch(getattr(props, "gcnArchName", "") or "")
            pci = _rocm_pci_device_id(props, idx)
            if pci not in ROCM_DEVICE_ID_NAMES and props.name.strip() in GENERIC_ROCM_NAMES:
                from moekit.envs import warn_once

                warn_once(
                    "rocm-device-name",
                    f"ROCm device {idx} reports the generic name {props.name!r} and its PCI device id could not "
                    "be read (install amdsmi, which ships with ROCm); tuned-config file names fall back to "
                    "the driver's name, so tuned configs for this GPU may not be found.",
                )
            return Platform(
                "rocm", gcn_arch=arch, pci_device_id=pci,
                shared_memory_per_block=optin or _rocm_shared_memory(arch),
                runtime_version=f"hip {torch.version.hip}", **common,
            )
        cap = (int(props.major), int(props.minor))
        return Platform(
            "cuda", capability=cap,
            shared_memory_per_block=optin or SHARED_MEMORY_PER_BLOCK_CUDA.get(cap),
            runtime_version=f"cuda {torch.version.cuda}", **common,
        )
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        idx = xpu.current_device() if index is None else index
        props = xpu.get_device_properties(idx)
        return Platform(
            "xpu", props.name, total_memory=int(getattr(props, "total_memory", 0)),
            multiprocessor_count=int(getattr(props, "gpu_subslice_count", 0) or getattr(props, "max_compute_units", 0)),
            device_index=idx, runtime_version=f"xpu {getattr(props, 'driver_version', '?')}",
        )
    return Platform("cpu", "cpu", total_memory=_host_memory())


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def current_platform(device_index: Optional[int] = None) -> Platform:
    """The platform moekit runs on (the innermost :func:`fake_platform` when one is active).

    Detected once per device and cached; ``device_index`` defaults to the current device.
    """
    if _override:
        return _override[-1]
    key = ("current", -1) if device_index is None else ("index", int(device_index))
    with _lock:
        if key not in _detected:
            _detected[key] = _detect(device_index)
        return _detected[key]


def _clear_cache() -> None:
    """Forget detected platforms (tests)."""
    with _lock:
        _detected.clear()


def resolve_platform(platform: Union[None, str, Platform], argname: str = "platform") -> Platform:
    """None -> current platform; a preset key -> that fake platform; a Platform -> itself."""
    if platform is None:
        return current_platform()
    if isinstance(platform, Platform):
        return platform
    if isinstance(platform, str):
        key = platform.strip().lower().replace("-", "_")
        if key in PRESETS:
            return PRESETS[key]
        raise MoEInputError(f"{argname}: expected one of {sorted(PRESETS)} or a Platform, got {platform!r}")
    raise MoEInputError(f"{argname}: expected None, a preset name or a Platform, got {type(platform).__name__}")


@contextlib.contextmanager
def fake_platform(platform: Union[str, Platform]) -> Iterator[Platform]:
    """Within the block, :func:`current_platform` returns ``platform`` (a preset key or a Platform).

    The override is process-wide (visible to all threads); nested blocks stack.
    """
    p = resolve_platform(platform)
    with _lock:
        _override.append(p)
    try:
        yield p
    finally:
        with _lock:
            for i in range(len(_override) - 1, -1, -1):
                if _override[i] is p:
                    del _override[i]
                    break


# --------------------------------------------------------------------------------------------------------
# Predicates
# --------------------------------------------------------------------------------------------------------


def _p(platform: Optional[Platform]) -> Platform:
    return current_platform() if platform is None else resolve_platform(platform)


def _arch_in(platform: Platform, patterns: Sequence[str]) -> bool:
    return platform.vendor == "rocm" and any(fnmatch.fnmatchcase(platform.gcn_arch, pat) for pat in patterns)


def on_cuda(platform: Optional[Platform] = None) -> bool:
    return _p(platform).vendor == "cuda"


def on_rocm(platform: Optional[Platform] = None) -> bool:
    return _p(platform).vendor == "rocm"


def on_xpu(platform: Optional[Platform] = None) -> bool:
    return _p(platform).vendor == "xpu"


def on_cpu(platform: Optional[Platform] = None) -> bool:
    return _p(platform).vendor == "cpu"


def on_gfx9(platform: Optional[Platform] = None) -> bool:
    """CDNA2+ data-center AMD GPUs: gfx90a, gfx942, gfx950 (not gfx906 / gfx908)."""
    return _arch_in(_p(platform), GFX9_ARCHES)


def on_gfx942(platform: Optional[Platform] = None) -> bool:
    return _arch_in(_p(platform), ("gfx942",))


def on_gfx950(platform: Optional[Platform] = None) -> bool:
    return _arch_in(_p(platform), ("gfx950",))


def on_gfx1x(platform: Optional[Platform] = None) -> bool:
    """RDNA3/3.5/4: gfx11xx and gfx12xx (not gfx10xx)."""
    return _arch_in(_p(platform), GFX1X_ARCHES)


def on_gfx12x(platform: Optional[Platform] = None) -> bool:
    return _arch_in(_p(platform), GFX12X_ARCHES)


def cuda_capability_in(
    lo: Tuple[int, int], below: Optional[Tuple[int, int]] = None, platform: Optional[Platform] = None
) -> bool:
    """True on CUDA when ``lo <= capability < below`` (no upper bound when ``below`` is None)."""
    p = _p(platform)
    if p.vendor != "cuda":
        return False
    return tuple(lo) <= p.capability and (below is None or p.capability < tuple(below))


def on_sm80_plus(platform: Optional[Platform] = None) -> bool:
    return cuda_capability_in((8, 0), None, platform)


def on_sm89_plus(platform: Optional[Platform] = None) -> bool:
    return cuda_capability_in((8, 9), None, platform)


def on_sm90(platform: Optional[Platform] = None) -> bool:
    """Hopper (9.x)."""
    return cuda_capability_in((9, 0), (10, 0), platform)


def on_sm100(platform: Optional[Platform] = None) -> bool:
    """Data-center Blackwell (10.x)."""
    return cuda_capability_in((10, 0), (11, 0), platform)


def on_sm120(platform: Optional[Platform] = None) -> bool:
    """Consumer / workstation Blackwell (12.x)."""
    return cuda_capability_in((12, 0), (13, 0), platform)


#: Predicates shown by ``moekit info``, by name.
PREDICATES = {
    f.__name__: f
    for f in (
        on_cuda, on_rocm, on_xpu, on_cpu, on_gfx9, on_gfx942, on_gfx950, on_gfx1x, on_gfx12x,
        on_sm80_plus, on_sm89_plus, on_sm90, on_sm100, on_sm120,
    )
}


def predicates(platform: Optional[Platform] = None) -> Dict[str, bool]:
    p = _p(platform)
    return {name: fn(p) for name, fn in PREDICATES.items()}


# --------------------------------------------------------------------------------------------------------
# Features, fp8 format, shared memory, config names
# --------------------------------------------------------------------------------------------------------


def has_feature(name: str, platform: Optional[Platform] = None) -> Tuple[bool, str]:
    """Whether ``platform`` has hardware feature ``name`` (a key of :data:`FEATURES`), and why."""
    if name not in FEATURES:
        raise MoEInputError(f"name: expected one of {sorted(FEATURES)}, got {name!r}")
    f = FEATURES[name]
    p = _p(platform)

    def said(subject: str, ok: bool) -> str:
        neg = {"has": "has no", "is": "is not"}[f.verb]
        return f"{subject} {f.verb if ok else neg} {f.description}"

    if p.vendor == "cuda":
        cap = f"capability {p.capability[0]}.{p.capability[1]}"
        if f.cuda_min is None:
            return False, said(f"NVIDIA {cap}", False)
        ok = cuda_capability_in(f.cuda_min, f.cuda_below, p)
        return ok, f"{said(cap, ok)} (needs {f.cuda_window()})"
    if p.vendor == "rocm":
        arches = ", ".join(a.replace("??", "xx") for a in f.rocm_arches) or "none"
        ok = _arch_in(p, f.rocm_arches)
        return ok, f"{said(p.gcn_arch, ok)} (arches: {arches})"
    return False, said(p.vendor, False)


def fp8_dtype(platform: Optional[Platform] = None) -> torch.dtype:
    """The fp8 format moekit stores weights/activations in on ``platform``.

    ``float8_e4m3fnuz`` on MI300 (gfx940/941/942), ``float8_e4m3fn`` everywhere else (NVIDIA, gfx950, gfx12,
    and CPU/torch paths).
    """
    return torch.float8_e4m3fnuz if _arch_in(_p(platform), FP8_FNUZ_ARCHES) else torch.float8_e4m3fn


def fp8_max(platform: Optional[Platform] = None) -> float:
    """Largest finite value of :func:`fp8_dtype`: 448.0 for e4m3fn, 240.0 for e4m3fnuz."""
    return float(torch.finfo(fp8_dtype(platform)).max)


def shared_memory_per_block(platform: Optional[Platform] = None) -> Optional[int]:
    """Opt-in shared memory (LDS) per block in bytes, None where unknown (CPU, unlisted arch)."""
    p = _p(platform)
    if p.shared_memory_per_block is not None:
        return p.shared_memory_per_block
    if p.vendor == "cuda":
        return SHARED_MEMORY_PER_BLOCK_CUDA.get(p.capability)
    if p.vendor == "rocm":
        return _rocm_shared_memory(p.gcn_arch)
    return None


def device_name_for_configs(platform: Optional[Platform] = None) -> str:
    """The device name in tuned-config file names: spaces -> '_', ROCm PCI ids mapped by one table."""
    p = _p(platform)
    if p.vendor == "rocm" and p.pci_device_id in ROCM_DEVICE_ID_NAMES:
        return ROCM_DEVICE_ID_NAMES[p.pci_device_id]
    return "_".join(p.device_name.split())


def triton_interpreter_active() -> bool:
    """True when Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``, Triton's own variable)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: dtypes whose arithmetic Triton's CPU interpreter gets wrong (seen with triton 3.6: bfloat16 products are
#: off by orders of magnitude; float16, float32 and fp8 are right). Kernels never run there on these.
INTERPRETER_WRONG_DTYPES = (torch.bfloat16,)


def interpreter_runs(dtype: torch.dtype) -> Tuple[bool, str]:
    """Whether moekit's Triton kernels may run on CPU tensors of ``dtype``: only in Triton's interpreter
    (``TRITON_INTERPRET=1``) and in a dtype it computes right. Returns (ok, why not)."""
    if not triton_interpreter_active():
        return False, "Triton runs on CPU only under TRITON_INTERPRET=1"
    if dtype in INTERPRETER_WRONG_DTYPES:
        return False, f"Triton's CPU interpreter computes {str(dtype).replace('torch.', '')} wrongly"
    return True, ""


def programmatic_launch(device: torch.device) -> bool:
    """Whether moekit launches its chained kernels on ``device`` with programmatic dependent launch
    (:mod:`moekit.kernels.pdl`): a CUDA GPU with the "pdl" feature (sm_90 and later), not under Triton's
    interpreter, and ``MOEKIT_PDL`` on."""
    from moekit import envs

    d = torch.device(device)
    if d.type != "cuda" or triton_interpreter_active() or not envs.get("MOEKIT_PDL"):
        return False
    return has_feature("pdl", platform_of(d))[0]


def platform_of(device: torch.device) -> Platform:
    """The platform that runs tensors on ``device``: the CPU preset for CPU tensors, else that GPU (its own
    index: machines may mix GPU models)."""
    d = torch.device(device)
    return PRESETS["cpu"] if d.type == "cpu" else current_platform(d.index)
