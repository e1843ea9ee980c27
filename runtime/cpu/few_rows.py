"""Products with a few rows, c (+)= a @ op(b) for a of at most FEW_ROWS rows: op(b) read once, in place.

    few_rows(a, b, c, trans_b, accumulate, lo, hi)   # columns lo:hi of c = a @ op(b), op(b) = b^T
                                                     # with trans_b; c += ... with accumulate

Why not BLAS: sgemm first copies all of op(b) into blocks of its own layout, and with a
few rows of a that copy costs more than the product. On one core of the EPYC, small_cnn's
fully connected layer (b 3136 x 128, 1.6 MB: a linear layer at a small batch) took 148 us
through sgemm at 4 rows and its input gradient (b transposed) 156, against 24 and 26 for
one row through GEMV, which reads b once. These loops read b once for every four rows of
a: 43 and 50 us at 4 rows, 21 and 22 at 1 (GEMV's 24 and 26), 127 and 122 at 8 (sgemm
185 and 181); from 16 rows sgemm's packing pays and blas.gemm_block calls it.

a @ b: each row of c is a sum of rows of b scaled by a's entries. Four rows of c take
four rows of b at a time, so one load of b's vector serves four rows and each store of
c carries four multiply-adds; LLVM vectorises along the row (fastmath contraction: fused
multiply-adds). a @ b^T: each entry is a dot product of a row of a with a row of b; four
rows of b share the loads of a's row, each a vectorised sum (reassociation lets LLVM keep
a vector of partial sums; the order is fixed for a build, as BLAS's is for its kernels).
Float32 sums stay float32, as in sgemm.

A thread's band of columns is named by lo:hi rather than passed as a slice (b[:, lo:hi]
is an array of any layout to Numba), and the loops along a row count in unsigned
integers: a signed index of unknown sign is tested for wrap-around on every access,
which keeps LLVM from vectorising the loop (lanes.py), and a band's loop ran 3.5 times
slower so. a, b and c may have any row stride.
"""
from __future__ import annotations

from dslc.runtime.cpu import kernel_cache  # noqa: F401  (drops the package's stale cached kernels first)

from numba import njit

from dslc.runtime.cpu.lanes import like, u64

FEW_ROWS = 8


@njit(cache=True)
def few_rows(a, b, c, trans_b, accumulate, lo, hi):
    """Columns lo:hi of c = a @ op(b), or c += ... with accumulate, for a of up to FEW_ROWS rows."""
    if trans_b:
        _dots(a, b, c, accumulate, lo, hi)
        return
    if not accumulate:
        c[:, lo:hi] = 0
    m, k = a.shape
    whole = k - k % 4  # a row's last k % 4 products go one by one (_one_row)
    i = 0
    while i + 4 <= m:
        _four_rows(a, b, c, i, whole, lo, hi)
        i += 4
    if i + 2 <= m:
        _two_rows(a, b, c, i, whole, lo, hi)
        i += 2
    for r in range(i, m):
        _one_row(a, b, c, r, 0, k, lo, hi)
    for r in range(i):
        _one_row(a, b, c, r, whole, k, lo, hi)


@njit(cache=True, fastmath={"contract"})
def _four_rows(a, b, c, i, k, lo, hi):
    """c[i:i+4, lo:hi] += a[i:i+4, :k] @ b[:k, lo:hi], k a multiple of 4: four rows of b at a time."""
    for p in range(0, k, 4):
        x00, x01, x02, x03 = a[i, p], a[i, p + 1], a[i, p + 2], a[i, p + 3]
        x10, x11, x12, x13 = a[i + 1, p], a[i + 1, p + 1], a[i + 1, p + 2], a[i + 1, p + 3]
        x20, x21, x22, x23 = a[i + 2, p], a[i + 2, p + 1], a[i + 2, p + 2], a[i + 2, p + 3]
        x30, x31, x32, x33 = a[i + 3, p], a[i + 3, p + 1], a[i + 3, p + 2], a[i + 3, p + 3]
        for j in range(u64(lo), u64(hi)):
            b0, b1, b2, b3 = b[p, j], b[p + 1, j], b[p + 2, j], b[p + 3, j]
            c[i, j] += x00 * b0 + x01 * b1 + x02 * b2 + x03 * b3
            c[i + 1, j] += x10 * b0 + x11 * b1 + x12 * b2 + x13 * b3
            c[i + 2, j] += x20 * b0 + x21 * b1 + x22 * b2 + x23 * b3
            c[i + 3, j] += x30 * b0 + x31 * b1 + x32 * b2 + x33 * b3


@njit(cache=True, fastmath={"contract"})
def _two_rows(a, b, c, i, k, lo, hi):
    """_four_rows for two rows of a."""
    for p in range(0, k, 4):
        x00, x01, x02, x03 = a[i, p], a[i, p + 1], a[i, p + 2], a[i, p + 3]
        x10, x11, x12, x13 = a[i + 1, p], a[i + 1, p + 1], a[i + 1, p + 2], a[i + 1, p + 3]
        for j in range(u64(lo), u64(hi)):
            b0, b1, b2, b3 = b[p, j], b[p + 1, j], b[p + 2, j], b[p + 3, j]
            c[i, j] += x00 * b0 + x01 * b1 + x02 * b2 + x03 * b3
            c[i + 1, j] += x10 * b0 + x11 * b1 + x12 * b2 + x13 * b3


@njit(cache=True, fastmath={"contract"})
def _one_row(a, b, c, i, start, k, lo, hi):
    """c[i, lo:hi] += a[i, start:k] @ b[start:k, lo:hi]: four rows of b at a time, then one by one."""
    p = start
    while p + 4 <= k:
        x0, x1, x2, x3 = a[i, p], a[i, p + 1], a[i, p + 2], a[i, p + 3]
        for j in range(u64(lo), u64(hi)):
            c[i, j] += x0 * b[p, j] + x1 * b[p + 1, j] + x2 * b[p + 2, j] + x3 * b[p + 3, j]
        p += 4
    for q in range(p, k):
        x = a[i, q]
        for j in range(u64(lo), u64(hi)):
            c[i, j] += x * b[q, j]


@njit(cache=True, fastmath={"reassoc", "contract"})
def _dots(a, b, c, accumulate, lo, hi):
    """c[:, lo:hi] (+)= a @ b[lo:hi]^T: for four rows of b at a time, their dot products with each row of a."""
    m, k = a.shape
    zero = like(c, 0)
    four = hi - (hi - lo) % 4
    for q in range(lo, four, 4):
        for i in range(m):
            s0 = s1 = s2 = s3 = zero
            for j in range(k):
                x = a[i, j]
                s0 += x * b[q, j]
                s1 += x * b[q + 1, j]
                s2 += x * b[q + 2, j]
                s3 += x * b[q + 3, j]
            if accumulate:
                s0, s1, s2, s3 = s0 + c[i, q], s1 + c[i, q + 1], s2 + c[i, q + 2], s3 + c[i, q + 3]
            c[i, q], c[i, q + 1], c[i, q + 2], c[i, q + 3] = s0, s1, s2, s3
    for q in range(four, hi):
        for i in range(m):
            s = zero
            for j in range(k):
                s += a[i, j] * b[q, j]
            c[i, q] = s + c[i, q] if accumulate else s
