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
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


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
