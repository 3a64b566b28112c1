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
"""
from __future__ import annotations

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


def chained_launch(device) -> dict:
    """Launch arguments of a kernel that begins with :func:`chain`: ``PDL`` and Triton's ``launch_pdl`` where
    :func:`moekit.platform.programmatic_launch` allows it on ``device``, else none (``PDL`` defaults to off)."""
    return dict(PDL=True, launch_pdl=True) if programmatic_launch(device) else {}
