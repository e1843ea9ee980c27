"""The dropout mask's definition: Philox-4x32-10 of (seed, element), in plain NumPy.

    seed = draw_seed(rng)                       # one 64-bit draw from the step's NumPy Generator
    mask((128, 512), np.float32, seed, 0.5, 2.0)   # [i] = 2.0 if u(seed, i) < 0.5 else 0

Both runners fill a mask from this definition: the CPU one with the parallel Numba kernel
of dropout_masks.py (which compiles `philox` itself), the CUDA one on the host with `mask`
before uploading it, so one generator state gives one mask on either. This module imports
no Numba (the CUDA side must not load it: test_cuda_codegen), and it sits in runtime/cpu
because Numba inlines `philox` into cached kernels here, and the package's stale-cache
check (blas.py) hashes this folder's sources only.

Why Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011;
Random123; cuRAND's PHILOX4_32_10, behind PyTorch's CUDA dropout, and TensorFlow's
stateless default): a keyed bijection of a 128-bit counter, designed for exactly this use
(streams selected by key, elements by counter) and published as passing TestU01's BigCrush
over the many key and counter patterns its authors tried, sequential counters included.
A 64-bit finaliser (SplitMix64's) over seed + i * golden is cheaper but is a hash of a
single 64-bit word: seeds that differ by a multiple of the golden step give shifted copies
of one stream, a weakness Philox's separate key does not have. Philox's 32 x 32 -> 64
multiplies vectorise (vpmuludq), and one counter gives four 32-bit words, so counter
j = i // 4 (key = the seed's two halves) serves elements 4j .. 4j+3, word i % 4.

Element i is kept (u < p, p the keep probability) with u = (word >> 8) / 2**24, the word's
24 high bits as a uniform in [0, 1) (exact in float32); that is tested as the integer
k < ceil(p * 2**24), the same comparison without a conversion (`threshold`).
"""
from __future__ import annotations

import math

import numpy as np

# Philox-4x32 multipliers and Weyl key increments (Random123, philox.h)
M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
LOW, S32, S8 = np.uint64(0xFFFFFFFF), np.uint64(32), np.uint64(8)


def philox(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1): four 32-bit words.
    Every value is a uint64 (scalar or array) below 2**32, so each 32 x 32 product is
    exact: NumPy runs this on arrays, Numba compiles it for scalars.

    >>> [hex(w) for w in philox(*[np.uint64(0)] * 6)]   # Random123's kat_vectors
    ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = (p1 >> S32) ^ c1 ^ k0, p1 & LOW, (p0 >> S32) ^ c3 ^ k1, p0 & LOW
        k0, k1 = (k0 + W0) & LOW, (k1 + W1) & LOW
    return c0, c1, c2, c3


def threshold(p: float) -> int:
    """The k (24-bit) that keep: k < ceil(p * 2**24) exactly when k / 2**24 < p."""
    return math.ceil(p * (1 << 24))


def draw_seed(rng: np.random.Generator) -> np.uint64:
    """One full 64-bit seed from `rng`, one per mask (a mask given by name draws none, as
    before). `integers` rather than `bit_generator.random_raw()`: raw words are 32 bits
    for MT19937, one of the bit generators a checkpoint may restore (runtime/rng.py), and
    64 random bits make two masks of a run sharing a key unlikely (~3e-6 after 10^6 steps
    of 10 masks)."""
    return rng.integers(0, 1 << 64, dtype=np.uint64)


def mask(shape: tuple[int, ...], dtype, seed, p: float, scale: float) -> np.ndarray:
    """The mask of `seed` as a new array (dropout_masks.fill_mask writes the same in place):
    `scale` where u(seed, i) < p, else 0, vectorised over counters."""
    n = math.prod(shape)
    seed, j = np.uint64(seed), np.arange((n + 3) // 4, dtype=np.uint64)
    zero = np.zeros_like(j)
    words = np.stack(philox(j & LOW, j >> S32, zero, zero, seed & LOW, seed >> S32), axis=1).reshape(-1)[:n]
    return np.where((words >> S8) < np.uint64(threshold(p)), np.dtype(dtype).type(scale), 0).astype(dtype).reshape(shape)
