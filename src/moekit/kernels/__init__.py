"""Triton kernels and their launchers, one concept per file.

* ``routing.py``  - softmax / sigmoid top-k routing in one launch.
* ``align.py``    - sort token slots by expert, padded to BLOCK_M, without host synchronization.
* ``moe_gemm.py`` - the two grouped expert GEMMs (gate/up with fused activation; down with routing weight).
* ``moe_gemm_sm90.py`` - the same two GEMMs for fp8 128x128-block weights on Hopper, in Gluon (asynchronous
  wgmma: each K step's block scales are applied while the next step's MMA runs).
* ``moe_gemv.py`` - the decode path: two GEMV kernels over unaligned slots, the second summing the top-k.
* ``moe_sum.py``  - the top-k reduction.
* ``linear_gemm.py`` / ``linear_gemv.py`` / ``linear_gemv_mma.py`` - the dense router's (:mod:`moekit.linear`)
  tiled and split-K GEMM, its CUDA-core GEMV for one token, its tensor-core GEMV for up to 16 tokens.

Importing this package needs ``triton``; the rest of moekit works without it.
"""
import triton
import triton.language as tl


@triton.jit
def tile_ids(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped launch order for tiled GEMMs: GROUP_M consecutive M-blocks share each weight tile while it
    is in L2. Returns (pid_m, pid_n) of program ``pid``."""
    width = GROUP_M * num_pid_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % width) % size_m)
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


def warps_for(tile: int, per_thread: int) -> int:
    """Fewest warps (1..8) that keep about ``per_thread`` elements of a ``tile``-element block per thread.
    Small tiles stay in one warp, whose reductions are register shuffles rather than shared-memory round
    trips: that is what decode-sized, latency-bound kernels need."""
    need = -(-tile // (32 * per_thread))
    return max(1, min(8, 1 << (need - 1).bit_length()))
