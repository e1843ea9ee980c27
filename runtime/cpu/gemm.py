"""Matrix products through BLAS: GEMM with transpose flags and the linear layer.

`np.dot` inside @njit on contiguous float32/float64 matrices calls the BLAS sgemm /
dgemm that SciPy ships (OpenBLAS), at BLAS speed; a hand-written Numba loop nest
reaches about a third of that, so every product here is one `np.dot` into a
preallocated `out`. A transposed operand is passed as `a.T`, an F-contiguous view
that BLAS reads through its transpose flag: no copy.

linear's weight is (in, out), so y = x @ W + b; its backward pieces are
dx = g @ W^T, dW = x^T @ g, db = sum_n g (the registry's `matmul` and `sum`).

    linear_forward(x, w, b, y, relu=True)        # y = max(x @ w + b, 0)
    linear_backward(x, w, g, dx, dw, db)         # any of dx, db may be None
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def gemm(a, b, out, trans_a, trans_b):
    """out = op(a) @ op(b), op = transpose when its flag is set (the registry's `matmul`).

    Each flag combination is its own `np.dot` call: `a` and `a.T` have different
    Numba types (C and F layout), so they cannot share one variable.
    """
    if trans_a:
        if trans_b:
            np.dot(a.T, b.T, out)
        else:
            np.dot(a.T, b, out)
    elif trans_b:
        np.dot(a, b.T, out)
    else:
        np.dot(a, b, out)


@njit(cache=True)
def linear_forward(x, w, b, out, relu):
    """out = x @ w (+ b) (then max(., 0) when relu): [N, in] @ [in, out] -> [N, out].

    The bias and relu are a fused epilogue, one pass over `out` while it is still in
    cache. `b` may be None (bias=false); Numba compiles that case without the add.
    relu keeps NaN (like np.maximum): only values below zero are replaced.
    """
    np.dot(x, w, out)
    if b is None and not relu:
        return
    n, m = out.shape
    for i in range(n):
        for j in range(m):
            v = out[i, j]
            if b is not None:
                v += b[j]
            out[i, j] = 0 if relu and v < 0 else v


@njit(cache=True)
def bias_grad(g, db):
    """db[j] = sum_i g[i, j]: the bias gradient of linear, accumulated in float64.

    Column by column with a scalar accumulator: no temporary array, and a batch of
    rows (N <= a few hundred) stays in L1 across the columns.
    """
    for j in range(g.shape[1]):
        s = 0.0
        for i in range(g.shape[0]):
            s += g[i, j]
        db[j] = s


@njit(cache=True)
def linear_backward(x, w, g, dx, dw, db):
    """dx = g @ w^T, dw = x^T @ g, db = sum_n g, for y = x @ w + b.

    dx is None for a layer fed by data (no input gradient wanted); db is None
    without a bias. A fused relu's mask is applied to g by the caller beforehand.
    """
    if dx is not None:
        np.dot(g, w.T, dx)
    np.dot(x.T, g, dw)
    if db is not None:
        bias_grad(g, db)
