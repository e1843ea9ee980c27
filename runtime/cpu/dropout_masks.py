"""Dropout masks filled in parallel from a counter-based generator (philox.py's definition).

    fill_mask(flat, draw_seed(rng), p=0.5, scale=2.0)   # flat[i] = scale if u(seed, i) < p else 0

Why. The CPU runner used to fill each mask with `rng.random(out=flat)` then a serial
`u < p` pass: a sequential generator, on the main thread only, 0.19 ms of mlp_bn's 3 ms
step at batch 128 (128 x (512 + 256) draws) while the second core idled. Now a step
draws one 64-bit seed per mask from that generator, so a checkpointed generator state
still resumes the same masks, and element i is Philox-4x32-10 of (seed, i) (philox.py):
any thread computes any block, in any order, with identical results, and the CUDA runner
computes the same mask with philox.mask. Measured on the 2-core EPYC (one process,
medians of interleaved repeats, quiet machine): mlp_bn's two masks (98,304 elements)
took 0.19 ms; now 0.055 ms on one thread, 0.028 ms on two while the workers are awake
(0.033 ms with the seeds' draws); waking them costs ~20-30 us, which the step's first
kernel pays otherwise, so in mlp_bn's training step (2.6-3.0 ms) the saving is 0.13-0.16
ms, 5%, with these masks on two threads or on one alike. Larger masks gain the second
core: 1M elements 0.25 ms against 0.49 ms.
"""
from __future__ import annotations

from dslc.runtime.cpu import kernel_cache  # noqa: F401  (drops the package's stale cached kernels first)

import numpy as np
from numba import njit, prange

from dslc.runtime.cpu.philox import LOW, S8, S32, philox, threshold

BLOCK = 2048  # counters (8192 elements) per parallel task

_philox = njit(inline="always")(philox)  # inlined in Numba IR: LLVM alone left it a call, unvectorised


@njit(cache=True)
def _fill_block(out, first, k0, k1, keep, scale):
    """Counters first, first + 1, ... into `out`, the slice of the mask from element 4 * first.
    Indices from range(n) are provably >= 0, so Numba emits no negative-index wraparound and
    LLVM vectorises the loop (8 counters a step with AVX-512; an index that might be negative
    left it scalar, 7x slower)."""
    zero, full = np.uint64(0), out.size // 4
    for t in range(full):
        c = first + np.uint64(t)
        w0, w1, w2, w3 = _philox(c & LOW, c >> S32, zero, zero, k0, k1)
        out[4 * t] = scale if (w0 >> S8) < keep else 0.0
        out[4 * t + 1] = scale if (w1 >> S8) < keep else 0.0
        out[4 * t + 2] = scale if (w2 >> S8) < keep else 0.0
        out[4 * t + 3] = scale if (w3 >> S8) < keep else 0.0
    if out.size % 4:  # the mask's last 1-3 elements: the first words of one more counter
        c = first + np.uint64(full)
        w = _philox(c & LOW, c >> S32, zero, zero, k0, k1)
        for q in range(out.size % 4):
            out[4 * full + q] = scale if (w[q] >> S8) < keep else 0.0


@njit(cache=True, parallel=True)
def _fill(out, seed, keep, scale):
    """The mask in tasks of BLOCK counters, one task per prange iteration."""
    k0, k1, n = seed & LOW, seed >> S32, out.size
    for b in prange((n + 4 * BLOCK - 1) // (4 * BLOCK)):
        start = 4 * BLOCK * b
        _fill_block(out[start:min(n, start + 4 * BLOCK)], np.uint64(BLOCK * b), k0, k1, keep, scale)


def fill_mask(flat: np.ndarray, seed, p: float, scale: float) -> None:
    """Fill the flat float array `flat` with the dropout mask of `seed` (philox.mask's):
    scale where u(seed, i) < p (p = keep probability), else 0. Threads over blocks, but a
    mask of one block runs on this thread (waking the others costs more); allocates nothing."""
    seed, keep, scale = np.uint64(seed), np.uint64(threshold(p)), flat.dtype.type(scale)
    if flat.size <= 4 * BLOCK:
        _fill_block(flat, np.uint64(0), seed & LOW, seed >> S32, keep, scale)
    else:
        _fill(flat, seed, keep, scale)
