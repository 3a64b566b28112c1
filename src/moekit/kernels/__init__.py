"""Triton kernels and their launchers, one concept per file.

* ``routing.py``  - softmax / sigmoid top-k routing in one launch.
* ``align.py``    - sort token slots by expert, padded to BLOCK_M, without host synchronization.
* ``moe_gemm.py`` - the two grouped expert GEMMs (gate/up with fused activation; down with routing weight).
* ``moe_sum.py``  - the top-k reduction.

Importing this package needs ``triton``; the rest of moekit works without it.
"""
