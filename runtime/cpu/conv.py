"""conv2d forward, input gradient and weight/bias gradient: im2col + BLAS GEMM.

Layouts as in dslc/ops/conv.py: x [N, C, H, W], w [O, C/G, kh, kw], y [N, O, Ho, Wo];
geometry comes from its `Window` (use `geometry(attrs, size)` below), so `pad=same`
with an odd total pads one more at the bottom/right, exactly like the reference.

The batch is processed in chunks of `nb` images, each chunk as GEMMs on two matrices

    col [C*kh*kw, nb*Ho*Wo]  col[(c*kh + u)*kw + v, b*Ho*Wo + i*Wo + j] = xpad[n0+b, c, i*sh + u*dh, j*sw + v*dw]
    mat [O,       nb*Ho*Wo]  mat[o, b*Ho*Wo + i*Wo + j] = y[n0+b, o, i, j]  (the output, or its gradient)

    forward      col = im2col(x chunk);  mat_g = W_g @ col_g;    y chunk = scatter(mat) + b
    grad-input   mat = gather(g chunk);  col_g = W_g^T @ mat_g;  dx chunk = col2im(col)
    grad-weight  col = im2col(x chunk);  mat = gather(g chunk);  dW_g += mat_g @ col_g^T

Rows of col are channel-major, so group g's rows are one contiguous block, as are
its weights in W.reshape(O, C/G*kh*kw). Putting a chunk's pixels side by side makes
each GEMM wide (>= TARGET_COLUMNS pixels) so BLAS keeps both cores busy, while col
stays a few MB; the price is that mat is [O, pixels] where NCHW is [image, O, pixels],
so `scatter`/`gather` move it (the bias add rides along).

The data moves are parallel Numba loops over (image, channel) pairs: a pair owns
disjoint rows of col and one plane of the image, so no two threads write the same
element (col2im sums overlapping windows of a plane inside one thread). Each GEMM
is one BLAS call between those loops, never inside one (see the package docstring).
Padding is never materialised: `_span` clips each kernel offset to the columns that
land in the image and the rest of col is written as zeros.

All three kernels take one flat workspace of `workspace_size(...)` elements (the
same size serves all three, so a model can share one buffer among its convs):
[col | mat | dW partial]. The chunk size follows from the workspace's size. Kernels
check the geometry against the array shapes and raise ValueError on a mismatch
instead of reading out of bounds.

The helpers live in this file, not a module of their own, because Numba's on-disk
cache of a kernel is invalidated only by changes to the kernel's own source file.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from dslc.ops.conv import window

TARGET_COLUMNS = 4096  # output pixels per GEMM: past this BLAS runs near peak on 2 cores


# ---- data movement: parallel Numba loops --------------------------------------------

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
        src = x[n0 + b, c]
        for u in range(kh):
            for v in range(kw):
                dst = col[(c * kh + u) * kw + v, b * hw:(b + 1) * hw]
                off = v * dw - pl
                j0, j1 = _span(off, sw, w, wo)
                for i in range(ho):
                    r, base = i * sh - pt + u * dh, i * wo
                    if r < 0 or r >= h:
                        dst[base:base + wo] = 0
                        continue
                    dst[base:base + j0] = 0
                    if sw == 1:  # contiguous: a vectorised copy
                        dst[base + j0:base + j1] = src[r, j0 + off:j1 + off]
                    else:
                        for j in range(j0, j1):
                            dst[base + j] = src[r, j * sw + off]
                    dst[base + j1:base + wo] = 0


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
                src = col[(c * kh + u) * kw + v, b * hw:(b + 1) * hw]
                off = v * dw - pl
                j0, j1 = _span(off, sw, w, wo)
                for i in range(ho):
                    r = i * sh - pt + u * dh
                    if 0 <= r < h:
                        dst, base = plane[r], i * wo
                        for j in range(j0, j1):
                            dst[j * sw + off] += src[base + j]


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


# ---- the kernels -----------------------------------------------------------------------

def geometry(attrs, size) -> tuple[int, int, int, int, int, int, int, int]:
    """(stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w) of a conv2d/pool node.

    attrs: the node's attributes (kernel, stride, pad, dilation); size: input (H, W).
    >>> geometry({"kernel": 3, "stride": 2, "pad": "same", "dilation": 1}, (5, 6))
    (2, 2, 1, 1, 0, 1, 1, 1)
    """
    win = window(attrs, tuple(size), "conv2d")
    (sh, sw), (dh, dw), ((pt, pb), (pl, pr)) = win.stride, win.dilation, win.pads
    return sh, sw, pt, pb, pl, pr, dh, dw


def workspace_size(x_shape, w_shape, out_hw, chunk: int | None = None) -> int:
    """Elements of the flat workspace for conv2d_forward/grad_input/grad_weight.

    x_shape [N, C, H, W], w_shape [O, C/G, kh, kw], out_hw (Ho, Wo); chunk: images per
    GEMM (default: enough for TARGET_COLUMNS output pixels).
    >>> workspace_size((64, 32, 14, 14), (64, 32, 3, 3), (14, 14))
    1467264
    """
    n, c = x_shape[:2]
    o, cg, kh, kw = w_shape
    hw = out_hw[0] * out_hw[1]
    nb = min(n, chunk or -(-TARGET_COLUMNS // hw))
    return (c * kh * kw + o) * nb * hw + o * cg * kh * kw


@njit(cache=True)
def _check(x_shape, w_shape, y_shape, sh, sw, pt, pb, pl, pr, dh, dw, groups):
    """Raise unless y [N, O, Ho, Wo] is conv2d(x [N, C, H, W], w [O, C/G, kh, kw]) for this geometry."""
    n, c, h, wd = x_shape
    o, cg, kh, kw = w_shape
    ho = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    wo = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    if groups <= 0 or c != cg * groups or o % groups != 0:
        raise ValueError("conv2d: channels do not match groups")
    if y_shape[0] != n or y_shape[1] != o or y_shape[2] != ho or y_shape[3] != wo or ho <= 0 or wo <= 0:
        raise ValueError("conv2d: output shape does not match the input, weight and geometry")


@njit(cache=True)
def _chunk(ws, rows, hw, n, reserved):
    """Images per chunk that the workspace holds: rows*nb*hw elements plus `reserved`."""
    nb = min(n, (ws.size - reserved) // (rows * hw))
    if nb < 1:
        raise ValueError("conv2d: workspace too small; size it with workspace_size")
    return nb


@njit(cache=True)
def conv2d_forward(x, w, b, out, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups,
                   col_workspace):
    """out = conv2d(x, w) + b (b may be None), NCHW; see the module docstring."""
    _check(x.shape, w.shape, out.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    n, c = x.shape[0], x.shape[1]
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    k, hw = c * kh * kw, ho * wo
    kg, og = k // groups, o // groups
    w2 = w.reshape(o, kg)
    chunk = _chunk(col_workspace, k + o, hw, n, o * kg)
    for n0 in range(0, n, chunk):
        nb = min(chunk, n - n0)
        col = col_workspace[:k * nb * hw].reshape(k, nb * hw)
        mat = col_workspace[k * nb * hw:(k + o) * nb * hw].reshape(o, nb * hw)
        im2col(x, n0, nb, col, kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, ho, wo)
        for g in range(groups):
            np.dot(w2[g * og:(g + 1) * og], col[g * kg:(g + 1) * kg], mat[g * og:(g + 1) * og])
        scatter(mat, n0, nb, out, b)


@njit(cache=True)
def conv2d_grad_input(g, w, dx, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups,
                      col_workspace):
    """dx = the transposed convolution of g by w (the registry's conv2d_grad_input)."""
    _check(dx.shape, w.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    n, c = dx.shape[0], dx.shape[1]
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = g.shape[2], g.shape[3]
    k, hw = c * kh * kw, ho * wo
    kg, og = k // groups, o // groups
    w2 = w.reshape(o, kg)
    chunk = _chunk(col_workspace, k + o, hw, n, o * kg)
    for n0 in range(0, n, chunk):
        nb = min(chunk, n - n0)
        col = col_workspace[:k * nb * hw].reshape(k, nb * hw)
        mat = col_workspace[k * nb * hw:(k + o) * nb * hw].reshape(o, nb * hw)
        gather(g, n0, nb, mat)
        for grp in range(groups):
            np.dot(w2[grp * og:(grp + 1) * og].T, mat[grp * og:(grp + 1) * og], col[grp * kg:(grp + 1) * kg])
        col2im(col, n0, nb, dx, kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, ho, wo)


@njit(cache=True)
def conv2d_grad_weight(g, x, dw, db, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups,
                       col_workspace):
    """dw = sum over images and pixels of g x window^T; db = sum of g over (N, Ho, Wo), or None.

    The first chunk's GEMM writes dw directly; later chunks write a partial in the
    workspace's tail and add it, since `np.dot(..., out)` cannot accumulate.
    """
    _check(x.shape, dw.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    n, c = x.shape[0], x.shape[1]
    o, kh, kw = dw.shape[0], dw.shape[2], dw.shape[3]
    ho, wo = g.shape[2], g.shape[3]
    k, hw = c * kh * kw, ho * wo
    kg, og = k // groups, o // groups
    dw2 = dw.reshape(o, kg)
    part = col_workspace[col_workspace.size - o * kg:].reshape(o, kg)
    chunk = _chunk(col_workspace, k + o, hw, n, o * kg)
    for n0 in range(0, n, chunk):
        nb = min(chunk, n - n0)
        col = col_workspace[:k * nb * hw].reshape(k, nb * hw)
        mat = col_workspace[k * nb * hw:(k + o) * nb * hw].reshape(o, nb * hw)
        im2col(x, n0, nb, col, kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, ho, wo)
        gather(g, n0, nb, mat)
        target = dw2 if n0 == 0 else part
        for grp in range(groups):
            np.dot(mat[grp * og:(grp + 1) * og], col[grp * kg:(grp + 1) * kg].T, target[grp * og:(grp + 1) * og])
        if n0 > 0:
            dw2 += part
    if db is not None:
        conv2d_grad_bias(g, db)


@njit(cache=True, parallel=True)
def conv2d_grad_bias(g, db):
    """db[o] = sum_{n, i, j} g[n, o, i, j], accumulated in float64; parallel over channels."""
    flat = g.reshape(g.shape[0], g.shape[1], -1)
    for o in prange(g.shape[1]):
        s = 0.0
        for i in range(g.shape[0]):
            for j in range(flat.shape[2]):
                s += flat[i, o, j]
        db[o] = s
