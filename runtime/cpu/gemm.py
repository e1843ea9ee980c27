"""Matrix products: GEMM with transpose flags and the linear layer, split over threads.

Every product is single-threaded BLAS sgemm/dgemm (blas.gemm_block) on a block of the
output: a parallel loop gives each thread a band of rows (or of columns, when the
output is wider than tall) and each band is one BLAS call reading the operands in
place, transposed or not, through its leading dimensions: no copy (with at most
few_rows.FEW_ROWS rows, a linear layer at a small batch, the block is few_rows.py's loops,
which read op(b) once where BLAS would pack it). Products below MIN_SPLIT multiply-adds
run as one call, since waking the threads costs more, unless they have few rows and a
large op(b) to read (MIN_SPLIT_READ).

A product of few rows with b (not transposed, nor a) taller than wide (a linear layer's
forward at a small batch: 3136 x 128 in small_cnn) splits its depth instead: each of
DEPTH_PARTS parts multiplies a run of b's rows, read in place as one contiguous block, into
a partial product, and the partials are added in part order. Bands of columns would give
each thread a strided half of every row of b. The parts are as many whatever the threads,
so the sums are the same bits on one thread as on all (where one thread runs them in turn).

linear's weight is (in, out), so y = x @ W + b. Its backward is no kernel of its own: the
graph differentiates it into dx = g @ W^T and dW = x^T @ g (`gemm` with transpose flags)
and db = sum_n g (a generated kernel), as the registry's `matmul` and `sum`.

    gemm(a, b, out, trans_a, trans_b)            # out = op(a) @ op(b)
    linear_forward(x, w, b, y, relu=True)        # y = max(x @ w + b, 0)
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from dslc.runtime.cpu.blas import gemm_block, num_threads
from dslc.runtime.cpu.few_rows import FEW_ROWS
from dslc.runtime.cpu.lanes import u64

MIN_SPLIT = 1 << 19  # multiply-adds: about 50 us on one core, several times the cost of a parallel loop
# elements of op(b) from which a product of few rows splits anyway: reading b is its time, and
# two cores read it faster. small_cnn's fc at batch 1 (b 3136 x 128, 401k multiply-adds)
# took 28 us forward and 24 for its input gradient on one core, 20 and 15 on two (the EPYC).
MIN_SPLIT_READ = 1 << 17
# partial products of a depth split (the module docstring): a multiple of the usual thread
# counts. small_cnn's fc forward at batch 1 took 13 us so against 18 in column bands, and at
# 4 rows 21 against 26, on two threads of the EPYC (buffers aligned as the arena's).
DEPTH_PARTS = 8


@njit(cache=True, inline="always")
def _parts(m, n, k):
    large = m * n * k >= MIN_SPLIT or (m <= FEW_ROWS and n * k >= MIN_SPLIT_READ)
    return num_threads() if large and max(m, n) >= 2 * num_threads() else 1


@njit(inline="always")
def _band(n, p, parts):
    """Columns [lo, hi) of band p of `parts` over n columns, split at multiples of 16 elements
    where each band has that many: where the arena's rows start on a cache line
    (memory_plan.ALIGN), a band then shares no line with the one before. few_rows.py adds into
    its band of c once per four rows of b, and two threads adding into one line took 2.5
    times as long as one thread's whole product (small_cnn's fc at 2 rows)."""
    line = 16 if n >= 16 * parts else 1
    lo = n * p // parts // line * line
    hi = n if p == parts - 1 else n * (p + 1) // parts // line * line
    return lo, hi


@njit(inline="always")
def _no(x):
    """False, as a value of the run: called with literal True/False flags, gemm would be
    compiled again for them (Numba specialises on literal arguments); with flags computed
    at run time, kernels here share the one compile of gemm the drivers call."""
    return x.size < 0


@njit(cache=True, parallel=True)
def gemm(a, b, out, trans_a, trans_b):
    """out = op(a) @ op(b), op = transpose when its flag is set (the registry's `matmul`)."""
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    parts = _parts(m, n, k)
    if m <= FEW_ROWS and not (trans_a or trans_b) and k > n and n * k >= MIN_SPLIT_READ:  # on one thread too
        _depth_split(a, b, out)
    elif parts == 1:
        gemm_block(a, b, out, trans_a, trans_b, False)
    elif m >= n:  # bands of rows of out: rows of op(a)
        for p in prange(parts):
            lo, hi = m * p // parts, m * (p + 1) // parts
            if trans_a:
                gemm_block(a[:, lo:hi], b, out[lo:hi], True, trans_b, False)
            else:
                gemm_block(a[lo:hi], b, out[lo:hi], False, trans_b, False)
    else:  # bands of columns of out: columns of op(b), apart by whole cache lines
        for p in prange(parts):
            lo, hi = _band(n, np.int64(p), parts)
            if trans_b:
                gemm_block(a, b[lo:hi], out[:, lo:hi], trans_a, True, False)
            else:
                gemm_block(a, b[:, lo:hi], out[:, lo:hi], trans_a, False, False)


@njit(inline="always")
def _depth_split(a, b, out):
    """out = a @ b as DEPTH_PARTS partial products over runs of b's rows, added in order."""
    m, n = out.shape
    k = b.shape[0]
    partial = np.empty((DEPTH_PARTS, m, n), out.dtype)
    for p in prange(DEPTH_PARTS):
        lo, hi = _band(k, np.int64(p), DEPTH_PARTS)
        gemm_block(a[:, lo:hi], b[lo:hi], partial[p], False, False, False)
    for i in range(m):  # loops, not array expressions: each of those is a parallel loop of its own here
        for j in range(u64(n)):
            total = partial[0, i, j]
            for p in range(1, DEPTH_PARTS):
                total += partial[p, i, j]
            out[i, j] = total


@njit(cache=True)
def linear_forward(x, w, b, out, relu):
    """out = x @ w (+ b) (then max(., 0) when relu): [N, in] @ [in, out] -> [N, out].

    The bias and relu are a fused epilogue, one pass over `out` while it is still in
    cache. `b` may be None (bias=false); Numba compiles that case without the add.
    relu keeps NaN (like np.maximum): only values below zero are replaced.
    """
    no = _no(out)
    gemm(x, w, out, no, no)
    if b is None and not relu:
        return
    n, m = out.shape
    for i in range(n):
        for j in range(m):
            v = out[i, j]
            if b is not None:
                v += b[j]
            out[i, j] = 0 if relu and v < 0 else v


@njit(cache=True, parallel=True)
def bmm(a, b, out, trans_a, trans_b):
    """out[i] = op(a[i]) @ op(b[i]) for every leading index i (the registry's `bmm`): one BLAS
    call per product, the products spread over the threads (a Gram matrix per image)."""
    for i in prange(out.shape[0]):
        gemm_block(a[i], b[i], out[i], trans_a, trans_b, False)
