"""Signed sums of a few runs of one flat array, the passes the Winograd transforms are made
of (winograd.py), and the unsigned index the phase planes use too (phases.py).

    sum4(f, dst, n, s0, s1, s2, s3, c0, c1, c2, c3)   # f[dst + q] = c0 f[s0 + q] + ... + c3 f[s3 + q]

Every offset is unsigned (`u64`): Numba tests a signed index for wrap-around on every
access, which keeps LLVM from vectorising the loop, and slicing instead would touch the
parent array's reference count, which the threads share. The coefficients are cast to the
array's dtype (`like`), so a float32 pass stays in float32, twice the lanes of float64.
`fastmath` allows contraction into fused multiply-adds only: the sums keep their order.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import overload
from numba.np.numpy_support import as_dtype

FAST = {"contract"}


@njit(cache=True, inline="always")
def u64(v):
    """v as an unsigned index (see the module docstring)."""
    return np.uint64(v)


def like(f, v):
    """v as a number of f's dtype."""
    return f.dtype.type(v)


@overload(like, inline="always")
def _like_impl(f, v):
    kind = as_dtype(f.dtype).type
    return lambda f, v: kind(v)


@njit(cache=True, fastmath=FAST)
def sum3(f, dst, n, s0, s1, s2, c0, c1, c2, add, accumulate):
    """f[dst + q] (+)= add + c0 f[s0 + q] + c1 f[s1 + q] + c2 f[s2 + q], q < n (with
    `accumulate`, += and no add)."""
    c0, c1, c2, add = like(f, c0), like(f, c1), like(f, c2), like(f, add)
    if accumulate:
        for q in range(u64(n)):
            f[dst + q] += c0 * f[s0 + q] + c1 * f[s1 + q] + c2 * f[s2 + q]
    else:
        for q in range(u64(n)):
            f[dst + q] = add + c0 * f[s0 + q] + c1 * f[s1 + q] + c2 * f[s2 + q]


@njit(cache=True, fastmath=FAST)
def sum4(f, dst, n, s0, s1, s2, s3, c0, c1, c2, c3):
    """f[dst + q] = c0 f[s0 + q] + c1 f[s1 + q] + c2 f[s2 + q] + c3 f[s3 + q], q < n."""
    c0, c1, c2, c3 = like(f, c0), like(f, c1), like(f, c2), like(f, c3)
    for q in range(u64(n)):
        f[dst + q] = c0 * f[s0 + q] + c1 * f[s1 + q] + c2 * f[s2 + q] + c3 * f[s3 + q]
