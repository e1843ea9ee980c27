"""Products with a few rows, c (+)= a @ op(b) for a of at most FEW_ROWS rows: op(b) read once, in place.

    few_rows(a, b, c, k, n, trans_b, accumulate)   # c[:, :n] = a[:, :k] @ op(b), op(b) = b[:n, :k]^T
                                                   # with trans_b, else b[:k, :n]; += with accumulate

Why not BLAS: sgemm first copies all of op(b) into blocks of its own layout, and with a
few rows of a that copy costs more than the product. On one core of the EPYC, small_cnn's
fully connected layer (b 3136 x 128, 1.6 MB: a linear layer at a small batch) took 148 us
through sgemm at 4 rows and its input gradient (b transposed) 156. These loops read b
once for every four rows of a: 36 and 69 us at 4 rows, 71 and 125 at 8 (sgemm 185 and
181). At one row BLAS's GEMV reads b once too: 23 us for the forward against 29 here, which
blas.gemm_block keeps, 26 for the input gradient against 23. From 16 rows on sgemm's
packing pays, and gemm_block calls it from FEW_ROWS + 1.

a @ b: each row of c is a sum of rows of b scaled by a's entries. Four rows of c take
four rows of b at a time, so one load of b's vector serves four rows and each store of
c carries four multiply-adds; LLVM vectorises along the row. a @ b^T: each entry is a
dot product of a row of a with a row of b; four rows of b share the loads of a's row,
each a vectorised sum. fastmath allows reassociation and contraction (fused
multiply-adds): LLVM keeps vectors of partial sums, in an order fixed for a build, as
BLAS's is for its kernels. Float32 sums stay float32, as in sgemm.

Compiled once per dtype, as a C function under a name of its own (`symbol`, as Numba's
numba_xxgemm is), which blas.gemm_block calls by that name with pointers and leading
dimensions: called as a jitted function, few_rows was linked into every kernel calling
gemm_block and optimised again there, once per call site and layout (gemm's compile took
14 s where it had taken 4). The loops along a row count in unsigned integers: a signed
index is tested for wrap-around on every access, which keeps LLVM from vectorising the
loop (lanes.py; a loop from lo to hi ran 3.5 times slower so).
"""
from __future__ import annotations

from dslc.runtime.cpu import kernel_cache  # noqa: F401  (drops the package's stale cached kernels first)

import numpy as np
from llvmlite import binding
from numba import carray, cfunc, config, njit, types

from dslc.runtime.cpu.lanes import like, u64

FEW_ROWS = 8


@njit(inline="always")
def few_rows(a, b, c, k, n, trans_b, accumulate):
    """c[:, :n] = a[:, :k] @ op(b), or c += ... with accumulate, for a of up to FEW_ROWS rows."""
    if trans_b:
        _dots(a, b, c, k, n, accumulate)
        return
    m = a.shape[0]
    if not accumulate:
        for i in range(m):
            for j in range(u64(n)):
                c[i, j] = 0
    whole = k - k % 4  # a row's last k % 4 products go one by one (_one_row)
    i = 0
    while i + 4 <= m:
        _four_rows(a, b, c, i, whole, n)
        i += 4
    if i + 2 <= m:
        _two_rows(a, b, c, i, whole, n)
        i += 2
    for r in range(m):  # rows past the blocks whole, the blocks' rows from `whole` on
        _one_row(a, b, c, r, whole if r < i else np.int64(0), k, n)


@njit(inline="always")
def _four_rows(a, b, c, i, k, n):
    """c[i:i+4, :n] += a[i:i+4, :k] @ b[:k, :n], k a multiple of 4: four rows of b at a time."""
    for p in range(0, k, 4):
        x00, x01, x02, x03 = a[i, p], a[i, p + 1], a[i, p + 2], a[i, p + 3]
        x10, x11, x12, x13 = a[i + 1, p], a[i + 1, p + 1], a[i + 1, p + 2], a[i + 1, p + 3]
        x20, x21, x22, x23 = a[i + 2, p], a[i + 2, p + 1], a[i + 2, p + 2], a[i + 2, p + 3]
        x30, x31, x32, x33 = a[i + 3, p], a[i + 3, p + 1], a[i + 3, p + 2], a[i + 3, p + 3]
        for j in range(u64(n)):
            b0, b1, b2, b3 = b[p, j], b[p + 1, j], b[p + 2, j], b[p + 3, j]
            c[i, j] += x00 * b0 + x01 * b1 + x02 * b2 + x03 * b3
            c[i + 1, j] += x10 * b0 + x11 * b1 + x12 * b2 + x13 * b3
            c[i + 2, j] += x20 * b0 + x21 * b1 + x22 * b2 + x23 * b3
            c[i + 3, j] += x30 * b0 + x31 * b1 + x32 * b2 + x33 * b3


@njit(inline="always")
def _two_rows(a, b, c, i, k, n):
    """_four_rows for two rows of a."""
    for p in range(0, k, 4):
        x00, x01, x02, x03 = a[i, p], a[i, p + 1], a[i, p + 2], a[i, p + 3]
        x10, x11, x12, x13 = a[i + 1, p], a[i + 1, p + 1], a[i + 1, p + 2], a[i + 1, p + 3]
        for j in range(u64(n)):
            b0, b1, b2, b3 = b[p, j], b[p + 1, j], b[p + 2, j], b[p + 3, j]
            c[i, j] += x00 * b0 + x01 * b1 + x02 * b2 + x03 * b3
            c[i + 1, j] += x10 * b0 + x11 * b1 + x12 * b2 + x13 * b3


@njit(inline="always")
def _one_row(a, b, c, i, start, k, n):
    """c[i, :n] += a[i, start:k] @ b[start:k, :n]: four rows of b at a time, then one by one."""
    p = start
    while p + 4 <= k:
        x0, x1, x2, x3 = a[i, p], a[i, p + 1], a[i, p + 2], a[i, p + 3]
        for j in range(u64(n)):
            c[i, j] += x0 * b[p, j] + x1 * b[p + 1, j] + x2 * b[p + 2, j] + x3 * b[p + 3, j]
        p += 4
    for q in range(p, k):
        x = a[i, q]
        for j in range(u64(n)):
            c[i, j] += x * b[q, j]


@njit(inline="always")
def _dots(a, b, c, k, n, accumulate):
    """c[:, :n] (+)= a[:, :k] @ b[:n, :k]^T: for four rows of b at a time, their dot products with each row of a."""
    m = a.shape[0]
    zero = like(c, 0)
    four = n - n % 4
    for q in range(0, four, 4):
        for i in range(m):
            s0 = s1 = s2 = s3 = zero
            for j in range(u64(k)):
                x = a[i, j]
                s0 += x * b[q, j]
                s1 += x * b[q + 1, j]
                s2 += x * b[q + 2, j]
                s3 += x * b[q + 3, j]
            if accumulate:
                s0, s1, s2, s3 = s0 + c[i, q], s1 + c[i, q + 1], s2 + c[i, q + 2], s3 + c[i, q + 3]
            c[i, q], c[i, q + 1], c[i, q + 2], c[i, q + 3] = s0, s1, s2, s3
    for q in range(four, n):
        for i in range(m):
            s = zero
            for j in range(u64(k)):
                s += a[i, j] * b[q, j]
            c[i, q] = s + c[i, q] if accumulate else s


def _entry(a, b, c, m, k, n, lda, ldb, ldc, trans_b, accumulate):
    """few_rows over pointers: a [m, lda], b [n or k, ldb] (trans_b or not), c [m, ldc]."""
    few_rows(carray(a, (m, lda)), carray(b, (n if trans_b else k, ldb)), carray(c, (m, ldc)), k, n,
             trans_b != 0, accumulate != 0)


def symbol(dtype) -> str:
    """The name under which few_rows for `dtype` (a Numba float type) is callable from compiled code."""
    return f"dslc_few_rows_{dtype}"


def signature(dtype):
    """The C signature of `symbol(dtype)`: three pointers, m, k, n, three leading dimensions, two flags."""
    ptr = types.CPointer(dtype)
    return types.void(ptr, ptr, ptr, *[types.intp] * 8)


_JIT = not config.DISABLE_JIT  # type: ignore[attr-defined]  # without it gemm_block's Python body runs
for _dtype in (types.float32, types.float64) if _JIT else ():
    _compiled = cfunc(signature(_dtype), cache=True, fastmath={"reassoc", "contract"})(_entry)
    binding.add_symbol(symbol(_dtype), _compiled.address)
