"""Programmatic dependent launch (PDL) inside moekit's kernels: a kernel launched with it may start while the
kernel before it in the stream is still running, and waits (``griddepcontrol.wait``) only where it first
needs that kernel's results. Hopper (sm_90) and later; the host-side decision is
:func:`moekit.platform.programmatic_launch`.

What a PDL kernel may do before its :func:`wait`: read data that no kernel still running can change (weights;
and, transitively, the outputs of a kernel two launches back when the kernel between them only signals
:func:`launch_dependents` after its own wait: then every earlier kernel has completed and its writes are
visible); compute addresses. It writes nothing before its wait. A kernel that calls
:func:`launch_dependents` lets the next PDL kernel launch before it finishes (without the call that happens
when it completes). Both instructions are no-ops in a kernel launched without PDL.

The helpers take ``ON`` (a constexpr) so one kernel source serves both launches, and Triton's CPU interpreter
(which has no inline assembly) never reaches them: kernels pass ``ON=False`` there.

Chained kernels (:func:`chain`, launched with :func:`chained_launch`): the kernels of the grouped forward after
the routing kernel (alignment, activation quantization, both GEMMs, the top-k sum) start with a wait and then
let the next kernel launch. So a kernel's successor is launched once all of its programs have started (a
multi-wave GEMM's last wave), its programs take SMs as ours retire, and it begins the moment ours completes:
the launch latency and the ramp between kernels overlap the tail of the one before. Every kernel of the chain
waits first, so every earlier kernel has completed when one runs (the chain is as ordered as plain launches).
A forward chains its kernels only where that measured faster (:func:`chain_applies`, set around the forward by
:func:`chaining`); kernels launched outside a forward (the quantization ops on their own) chain wherever the
device allows.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from moekit.platform import programmatic_launch


@triton.jit
def wait(ON: tl.constexpr):
    """Block until the kernel before this one has completed and its writes are visible (when ``ON``)."""
    if ON:
        gdc_wait()


@triton.jit
def launch_dependents(ON: tl.constexpr):
    """Let the next kernel, if launched with PDL, start now (when ``ON``); it still waits for this one's
    writes with its own :func:`wait`."""
    if ON:
        gdc_launch_dependents()


@triton.jit
def chain(ON: tl.constexpr):
    """The first statement of a chained kernel: :func:`wait`, then :func:`launch_dependents` (when ``ON``)."""
    wait(ON)
    launch_dependents(ON)


#: The grouped forward chains its kernels up to this many token slots per expert (M * top_k / E). H100, whole
#: forward, plain launches against chained, arms interleaved (``benchmarks/ab_pdl.py``,
#: ``ab_pdl_grouped{,2}_H100_session19.json``, ``ab_pdl_prefill_H100_session19.json``): Qwen3-30B-A3B (E=128, k=8)
#: fp8 block M=8 / 16 / 32 / 64 / 256 / 1024 1.009x / 1.023x / 1.017x / 1.015x / 1.014x / 1.007x, bf16 M=16-1024
#: 1.006-1.009x, Mixtral (E=8, k=2) fp8 per tensor M=16 / 64 / 256 1.004x / 1.008x / 1.000x, DeepSeek-V3 fp8 block
#: M=16 / 256 1.002x / 1.001x; above 64 slots per expert it lost: Mixtral bf16 M=1024 (256 per expert) 1905.1 ->
#: 1943.1 us, fp8 per tensor 0.997x, Qwen3 bf16 M=4096 0.998x (Mixtral bf16 M=4096 1.005x). H200 with the rule
#: (``ab_pdl_grouped_H200_session19.json``): Qwen3 fp8 block M=16 / 64 / 256 1.028x / 1.018x / 1.019x, bf16 M=64 /
#: 1024 1.010x / 1.002x, Mixtral fp8 per tensor M=64 / 256 1.009x / 0.994x, bf16 M=256 1.011x.
CHAIN_MAX_SLOTS_PER_EXPERT = 64

_forward = threading.local()


def chain_applies(num_slots: int, num_experts: int) -> bool:
    """Whether a grouped forward of ``num_slots`` token slots (M * top_k) over ``num_experts`` experts chains its
    kernels (:data:`CHAIN_MAX_SLOTS_PER_EXPERT`; the device must allow it as well, :func:`chained_launch`)."""
    return num_slots <= CHAIN_MAX_SLOTS_PER_EXPERT * max(num_experts, 1)


@contextlib.contextmanager
def chaining(on: bool, device=None) -> Iterator[None]:
    """Within this block (one forward, this thread) :func:`chained_launch` chains kernels only if ``on``; with
    ``device`` (the forward's) the device check is made once here rather than at every launch."""
    prev = getattr(_forward, "on", None), getattr(_forward, "args", None)
    _forward.on = on
    _forward.args = _launch_args(device) if on and device is not None else None
    try:
        yield
    finally:
        _forward.on, _forward.args = prev


def _launch_args(device) -> dict:
    return dict(PDL=True, launch_pdl=True) if programmatic_launch(device) else {}


def chained_launch(device) -> dict:
    """Launch arguments of a kernel that begins with :func:`chain`: ``PDL`` and Triton's ``launch_pdl`` where
    :func:`moekit.platform.programmatic_launch` allows it on ``device`` and no enclosing :func:`chaining` block
    turned it off, else none (``PDL`` defaults to off)."""
    on: Optional[bool] = getattr(_forward, "on", None)
    if on is False:
        return {}
    args = getattr(_forward, "args", None)
    return dict(args) if on and args is not None else _launch_args(device)
