"""The data movement of im2col convolution, as parallel Numba loops.

A convolution of a chunk of `nb` images becomes one GEMM per group on two matrices:

    col [C*kh*kw, nb*Ho*Wo]   col[(c*kh + u)*kw + v, b*Ho*Wo + i*Wo + j] = xpad[n0+b, c, i*sh + u*dh, j*sw + v*dw]
    mat [O,       nb*Ho*Wo]   mat[o, b*Ho*Wo + i*Wo + j] = y[n0+b, o, i, j]  (output, or its gradient)

Rows are channel-major, so group g's rows of col are one contiguous block, as its
weights are in W.reshape(O, C/G*kh*kw). Putting the whole chunk's pixels side by
side makes the GEMM wide enough for BLAS to use every core well; the price is that
`mat` is [O, pixels] while NCHW wants [pixels of an image, O] per image, so `scatter`
(forward) and `gather` (backward) move it, fusing the bias add into the move.

Every loop here is parallel over (image, channel) pairs: each pair owns disjoint
rows of col and one plane of the image, so no two threads write the same element
(col2im accumulates overlapping windows of one plane inside one thread).
Padding is never materialised: `_span` clips each kernel offset to the columns that
land inside the image and the rest of col is written as zeros.
"""
from __future__ import annotations

from numba import njit, prange


@njit(cache=True, inline="always")
def _span(offset, stride, size, count):
    """The j in [0, count) with 0 <= j*stride + offset < size, as a half-open range."""
    lo = 0 if offset >= 0 else (stride - 1 - offset) // stride
    hi = (size - 1 - offset) // stride + 1 if size - 1 - offset >= 0 else 0
    hi = min(hi, count)
    return lo, max(lo, hi)


@njit(cache=True, parallel=True)
def im2col(x, n0, nb, col, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """Fill col [C*kh*kw, nb*ho*wo] from images x[n0:n0+nb] (zeros where the window is in padding)."""
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    hw = ho * wo
    for t in prange(nb * c_in):
        b, c = t // c_in, t % c_in
        for u in range(kh):
            for v in range(kw):
                row = (c * kh + u) * kw + v
                off = v * dw - pl
                j0, j1 = _span(off, sw, w, wo)
                for i in range(ho):
                    base = b * hw + i * wo
                    r = i * sh - pt + u * dh
                    if r < 0 or r >= h:
                        col[row, base:base + wo] = 0
                        continue
                    col[row, base:base + j0] = 0
                    for j in range(j0, j1):
                        col[row, base + j] = x[n0 + b, c, r, j * sw + off]
                    col[row, base + j1:base + wo] = 0


@njit(cache=True, parallel=True)
def col2im(col, n0, nb, dx, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):
    """dx[n0:n0+nb] = the adjoint of im2col: each col entry added back where it was read from."""
    c_in, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    hw = ho * wo
    for t in prange(nb * c_in):
        b, c = t // c_in, t % c_in
        plane = dx[n0 + b, c]
        plane[:] = 0
        for u in range(kh):
            for v in range(kw):
                row = (c * kh + u) * kw + v
                off = v * dw - pl
                j0, j1 = _span(off, sw, w, wo)
                for i in range(ho):
                    r = i * sh - pt + u * dh
                    if 0 <= r < h:
                        base = b * hw + i * wo
                        for j in range(j0, j1):
                            plane[r, j * sw + off] += col[row, base + j]


@njit(cache=True, parallel=True)
def scatter(mat, n0, nb, y, bias):
    """y[n0+b, o] = mat[o, b*hw:(b+1)*hw] (+ bias[o]): GEMM result to NCHW; bias may be None."""
    o_all = y.shape[1]
    hw = y.shape[2] * y.shape[3]
    flat = y.reshape(y.shape[0], o_all, hw)
    for t in prange(nb * o_all):
        b, o = t // o_all, t % o_all
        if bias is None:
            flat[n0 + b, o, :] = mat[o, b * hw:(b + 1) * hw]
        else:
            bo = bias[o]
            for k in range(hw):
                flat[n0 + b, o, k] = mat[o, b * hw + k] + bo


@njit(cache=True, parallel=True)
def gather(g, n0, nb, mat):
    """mat[o, b*hw:(b+1)*hw] = g[n0+b, o]: NCHW gradient to the GEMM layout (scatter's adjoint)."""
    o_all = g.shape[1]
    hw = g.shape[2] * g.shape[3]
    flat = g.reshape(g.shape[0], o_all, hw)
    for t in prange(nb * o_all):
        b, o = t // o_all, t % o_all
        mat[o, b * hw:(b + 1) * hw] = flat[n0 + b, o, :]
