"""Pooling over NCHW images: max, average (count_include_pad) and global average.

Window geometry as in dslc/ops/conv.py (kernel, stride, asymmetric padding); the
output size is read from `out`, and `_rows`/`_cols` clip each window to the image,
so padding is never materialised: for max it acts as -inf, for avg as zeros that
still count in the divisor kh*kw (PyTorch's count_include_pad=True).

maxpool's gradient goes to the first maximum of each window in row-major order, the
reference's argmax convention; the backward recomputes it from x (the op
`maxpool_grad(g, x)` carries no indices). A NaN in a window is its maximum (like
np.max) and the first NaN takes the gradient (like np.argmax).

Every kernel is parallel over the N*C planes: a plane's windows, even overlapping
ones, are all handled by one thread, so the backward's `+=` never races.
"""
from __future__ import annotations

from numba import njit, prange

from dslc.ops.conv import window


@njit(cache=True, inline="always")
def _clip(start, k, size):
    """[start, start + k) clipped to [0, size)."""
    return max(start, 0), min(start + k, size)


@njit(cache=True, inline="always")
def _first_max(plane, r0, r1, c0, c1):
    """(row, col) of the first maximum of plane[r0:r1, c0:c1], row-major; NaN beats everything."""
    best, br, bc = plane[r0, c0], r0, c0
    for r in range(r0, r1):
        for c in range(c0, c1):
            v = plane[r, c]
            take = (v > best) | ((v != v) & (best == best))  # selects, not branches (see forward)
            best = v if take else best
            br = r if take else br
            bc = c if take else bc
    return br, bc


@njit(cache=True, parallel=True)
def maxpool_forward(x, out, kh, kw, stride_h, stride_w, pad_t, pad_l):
    """out[n, c, i, j] = max of the window at (i*sh - pt, j*sw - pl), padding excluded."""
    n, ch, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for t in prange(n * ch):
        plane, dst = x[t // ch, t % ch], out[t // ch, t % ch]
        for i in range(ho):
            r0, r1 = _clip(i * stride_h - pad_t, kh, h)
            for j in range(wo):
                c0, c1 = _clip(j * stride_w - pad_l, kw, w)
                best = plane[r0, c0]  # the value alone: no index to track
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        v = plane[r, c]
                        # A select, not a branch: random data mispredicts a branch half the
                        # time (3x slower). Once best is NaN nothing is greater: it stays.
                        best = v if (v > best) | (v != v) else best
                dst[i, j] = best


@njit(cache=True, parallel=True)
def maxpool_backward(g, x, dx, kh, kw, stride_h, stride_w, pad_t, pad_l):
    """dx = g routed to the first maximum of each window (summed where windows overlap)."""
    n, ch, h, w = x.shape
    ho, wo = g.shape[2], g.shape[3]
    for t in prange(n * ch):
        plane, src, dst = x[t // ch, t % ch], g[t // ch, t % ch], dx[t // ch, t % ch]
        dst[:] = 0
        for i in range(ho):
            r0, r1 = _clip(i * stride_h - pad_t, kh, h)
            for j in range(wo):
                c0, c1 = _clip(j * stride_w - pad_l, kw, w)
                br, bc = _first_max(plane, r0, r1, c0, c1)
                dst[br, bc] += src[i, j]


@njit(cache=True, parallel=True)
def avgpool_forward(x, out, kh, kw, stride_h, stride_w, pad_t, pad_l):
    """out[n, c, i, j] = sum of the window's in-image values / (kh*kw)."""
    n, ch, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    scale = 1.0 / (kh * kw)
    for t in prange(n * ch):
        plane, dst = x[t // ch, t % ch], out[t // ch, t % ch]
        for i in range(ho):
            r0, r1 = _clip(i * stride_h - pad_t, kh, h)
            for j in range(wo):
                c0, c1 = _clip(j * stride_w - pad_l, kw, w)
                s = 0.0
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        s += plane[r, c]
                dst[i, j] = s * scale


@njit(cache=True, parallel=True)
def avgpool_backward(g, dx, kh, kw, stride_h, stride_w, pad_t, pad_l):
    """dx = each g[n, c, i, j] / (kh*kw) spread over its window's in-image positions."""
    n, ch, h, w = dx.shape
    ho, wo = g.shape[2], g.shape[3]
    scale = 1.0 / (kh * kw)
    for t in prange(n * ch):
        src, dst = g[t // ch, t % ch], dx[t // ch, t % ch]
        dst[:] = 0
        for i in range(ho):
            r0, r1 = _clip(i * stride_h - pad_t, kh, h)
            for j in range(wo):
                c0, c1 = _clip(j * stride_w - pad_l, kw, w)
                share = src[i, j] * scale
                for r in range(r0, r1):
                    for c in range(c0, c1):
                        dst[r, c] += share


@njit(cache=True, parallel=True)
def global_avgpool_forward(x, out):
    """out[n, c] = mean over the spatial axes of x [N, C, ...] (any number of them)."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    ch, size = flat.shape[1], flat.shape[2]
    for t in prange(flat.shape[0] * ch):
        s = 0.0
        for k in range(size):
            s += flat[t // ch, t % ch, k]
        out[t // ch, t % ch] = s / size


@njit(cache=True, parallel=True)
def global_avgpool_backward(g, dx):
    """dx[n, c, ...] = g[n, c] / (number of spatial positions)."""
    flat = dx.reshape(dx.shape[0], dx.shape[1], -1)
    ch, size = flat.shape[1], flat.shape[2]
    for t in prange(flat.shape[0] * ch):
        flat[t // ch, t % ch, :] = g[t // ch, t % ch] / size


def pool_geometry(attrs, size, what: str = "maxpool") -> tuple[int, int, int, int, int, int]:
    """(kh, kw, stride_h, stride_w, pad_t, pad_l) of a maxpool/avgpool node for input (H, W).

    >>> pool_geometry({"kernel": 3, "stride": 2, "pad": 1}, (5, 6))
    (3, 3, 2, 2, 1, 1)
    """
    win = window(attrs, tuple(size), what)
    return win.kernel + win.stride + (win.pads[0][0], win.pads[1][0])
