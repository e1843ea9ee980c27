"""Library kernels for the CPU backend: the heavy ops, compiled once by Numba and cached.

The Numba code generator writes fused elementwise loop nests per model; everything
that is not elementwise (matrix products, convolutions, pooling, batch statistics,
softmax with its loss) is a model-independent kernel here, one module per family:

    blas.py       single-threaded BLAS GEMM on row-major blocks, for kernels that thread themselves
    few_rows.py   products of at most 8 rows (a linear layer at a small batch) that read op(b) in place
    gemm.py       GEMM with transpose flags, linear forward (+ bias, relu)
    conv.py       conv2d forward, grad-input, grad-weight (im2col + GEMM); workspace sizes
    winograd.py   3x3 stride-1 convolutions by Winograd F(2x2, 3x3), same signatures as conv.py's
    strided.py    convolutions computed directly from their input's phase planes (strided; stride-1 forwards)
    taps.py       register-blocked sums over a convolution's taps (strided.py's inner loops)
    lanes.py      explicit-vector passes over runs of a flat array (Winograd's transforms), u64
    pool.py       max/avg pooling and global average pooling, forward and backward
    softmax.py    softmax, log_softmax, softmax-cross-entropy forward and backward
    runner.py     a generated module bound to one planned arena (CompiledGraph)
    bound_calls.py  a driver's calls bound once to their arguments and compiled entry points
    build.py      the kernels a module calls, compiled before its first step, in worker processes
    executor.py   the trainer's Executor interface on top of the runner
    profile.py    per-kernel timing of a step (DSLC_DEBUG>=2)
    kernel_cache.py  drops Numba's cached kernels of this package when any of its sources changed

Conventions shared by every kernel:
- Outputs and workspaces are preallocated by the caller and passed in; a kernel never
  allocates anything that grows with the batch or the images, so a training step's
  memory is planned once (the convolutions' tables of packed weights and tap offsets,
  kilobytes, are made per call).
- Arrays are C-contiguous NCHW (images) or row-major [N, F] (features), float32 or
  float64; Numba compiles one specialisation per dtype, both cached on disk.
- Numba revalidates a cached kernel against its own file only, not the helpers it
  inlined from other files (blas.gemm_block), and a stale kernel can crash. So the
  package keeps a hash of all its sources beside Numba's cache and drops the cache
  of every kernel here when any file changed (kernel_cache.py, imported by the modules
  others inline from, before any kernel is loaded).
- Reductions of float32 data accumulate in float64: batch statistics over 10^5
  elements would otherwise drift past float32's 1e-4 test tolerance.

Threading. One pool of threads runs here, Numba's (OpenMP) workers: BLAS is made
single-threaded (blas.py) and kernels call it inside their own parallel loops, each
thread on its own block, because a second pool (OpenBLAS's spinning workers) and
Numba's fight over a small machine's cores. Numba's workers must not busy-wait after
a parallel loop for long either, or they steal the cores the Python code between
kernels needs: OMP_WAIT_POLICY=passive makes them sleep. Sleeping at once costs ~22 us
per parallel loop, though, to wake them for the next kernel, a step's Python gap away
(more after a long sleep: 72 us after 400 us). GOMP_SPINCOUNT=10000 lets them spin
first, long enough to catch the next kernel of a step and the next call of the compiled
API, whose Python between two calls (copying the feeds in and the gradient out,
comparing what the prologue reads) is 30-40 us on the 2-core EPYC and 45-65 on the
2-core Xeon (2.3 GHz, Python about 1.7 times as slow). A spin count is iterations, not
time: 1000 spun 25-30 us on the EPYC and 3000 70-80 (an empty parallel loop took 1.5 us
up to 60 us after the last one, 15-26 us from 80 us on); on the Xeon 3000 spun 45 us and
10000 170, and waking a worker there cost 40-50 us. At 3000 the Xeon's worker slept
between two saliency gradients of small_cnn at batch 1: 0.28-0.45 ms a call against
0.26-0.35 at 10000, alternated run by run (benchmarks/api_grad.py). Training steps were
no slower beyond the noise (benchmarks/train_step.py, one run each: small_cnn 14.1 ->
11.0 ms, mlp 3.3 -> 3.5, lenet5 3.9 -> 3.8), nor was the test suite, two processes on the
two cores (9:56 and 10:43 at 3000, 9:47 at 10000). A worker still sleeps between epochs
and while the trainer evaluates or saves. libgomp reads both once, when it is loaded, so
they are set below before Numba is imported (a user's values win), and
`openmp_env` gives them to the processes dslc starts (search trials, MPI ranks).
"""
from __future__ import annotations

import os

OPENMP_WAITING = {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "10000"}


def openmp_env() -> dict[str, str]:
    """The OpenMP waiting settings this process runs with (the user's, else dslc's)."""
    return {k: os.environ.get(k, v) for k, v in OPENMP_WAITING.items()}


os.environ.update(openmp_env())
