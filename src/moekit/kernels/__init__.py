"""Triton kernels and their launchers, one concept per file.

* ``routing.py``  - softmax / sigmoid top-k routing in one launch.
* ``align.py``    - sort token slots by expert, padded to BLOCK_M, without host synchronization.
* ``moe_gemm.py`` - the two grouped expert GEMMs (gate/up with fused activation; down with routing weight).
* ``moe_sum.py``  - the top-k reduction.

Importing this package needs ``triton``; the rest of moekit works without it.
"""


def warps_for(tile: int, per_thread: int) -> int:
    """Fewest warps (1..8) that keep about ``per_thread`` elements of a ``tile``-element block per thread.
    Small tiles stay in one warp, whose reductions are register shuffles rather than shared-memory round
    trips: that is what decode-sized, latency-bound kernels need."""
    need = -(-tile // (32 * per_thread))
    return max(1, min(8, 1 << (need - 1).bit_length()))
