"""Library kernels for the CPU backend: the heavy ops, compiled once by Numba and cached.

The Numba code generator writes fused elementwise loop nests per model; everything
that is not elementwise (matrix products, convolutions, pooling, batch statistics,
softmax with its loss) is a model-independent kernel here, one module per family:

    gemm.py       GEMM with transpose flags, linear forward (+ bias, relu) and backward
    conv.py       conv2d forward, grad-input, grad-weight, bias grad (im2col + GEMM); workspace sizes
    pool.py       max/avg pooling and global average pooling, forward and backward
    batchnorm.py  batchnorm training forward (batch statistics), backward, inference
    softmax.py    softmax, log_softmax, softmax-cross-entropy forward and backward

Conventions shared by every kernel:
- Outputs and workspaces are preallocated by the caller and passed in; a kernel never
  allocates in steady state, so a training step's memory is planned once.
- Arrays are C-contiguous NCHW (images) or row-major [N, F] (features), float32 or
  float64; Numba compiles one specialisation per dtype, both cached on disk.
- A kernel calls only njit helpers of its own file: Numba's cache notices changes to
  the kernel's source file, not to a callee's in another file.
- Reductions of float32 data accumulate in float64: batch statistics over 10^5
  elements would otherwise drift past float32's 1e-4 test tolerance.

Threading. Two pools of threads run here: Numba's workers (parallel loops) and
OpenBLAS's (inside `np.dot`). Two rules keep them from fighting on a small machine:
1. Numba's OpenMP workers must not busy-wait after a parallel loop, or they steal the
   cores BLAS needs next (a parallel loop after a BLAS call was measured 15x slower on
   2 cores). OMP_WAIT_POLICY=passive makes them sleep; libgomp reads it once, when it
   is loaded, so it is set below before Numba is imported (a user's value wins).
2. BLAS is never called from inside a parallel loop: OpenBLAS (pthreads build) then
   warns "Detect OpenMP Loop" and runs 5-20x slower. Kernels alternate instead: a
   parallel Numba loop moves data, then one large BLAS call uses all cores.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
