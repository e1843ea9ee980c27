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

The 2x2, stride-2, unpadded max pool (nearly every CNN's) has its own loops: the four
values of a window are loaded and compared as scalars, and the backward writes each
input position once with its final value (no zeroing pass, no `+=`, no branch), which is
several times faster than the general loops over a clipped window.
"""
from __future__ import annotations

from numba import njit, prange

from dslc.kernels.geometry import pool_geometry  # noqa: F401  (the kernels' geometry, re-exported)


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


@njit(cache=True, inline="always")
def _is_2x2(kh, kw, stride_h, stride_w, pad_t, pad_l):
    return kh == 2 and kw == 2 and stride_h == 2 and stride_w == 2 and pad_t == 0 and pad_l == 0


@njit(cache=True, parallel=True)
def _maxpool_2x2_forward(x, out):
    """Each window's maximum as max(max(a, b), max(c, d)), then, where the window holds a
    NaN, the NaN (a + b + c + d): plain compares and selects over a row, which LLVM
    vectorises. A NaN-aware compare per value in the chain kept the loop scalar: 0.53
    against 0.20 ms for 64x32x28x28 on two threads."""
    ch, ho, wo = x.shape[1], out.shape[2], out.shape[3]
    for t in prange(x.shape[0] * ch):
        plane, dst = x[t // ch, t % ch], out[t // ch, t % ch]
        for i in range(ho):
            top, bottom, row = plane[2 * i], plane[2 * i + 1], dst[i]
            for j in range(wo):
                a, b = top[2 * j], top[2 * j + 1]
                c, d = bottom[2 * j], bottom[2 * j + 1]
                nan = (a != a) | (b != b) | (c != c) | (d != d)
                row[j] = (a + b + c + d) if nan else max(max(a, b), max(c, d))


ONE_PASS_WINDOWS = 16  # a row's windows from which _route_row's vector loop pays (AVX-512: 16 lanes)


@njit(cache=True, inline="always")
def _route_row(top, bottom, gr, dtop, dbottom, wo):
    """One row of windows: each g to its window's first maximum, +0 to the other three cells,
    by plain compares and selects in one pass that LLVM vectorises; True if the row holds a
    NaN, whose windows this pass may route wrongly (_route_row_exact redoes the row)."""
    nan = False
    for j in range(wo):
        a, b = top[2 * j], top[2 * j + 1]
        c, d = bottom[2 * j], bottom[2 * j + 1]
        m = max(max(a, b), max(c, d))
        gv = gr[j]
        dtop[2 * j] = gv if a == m else 0.0
        dtop[2 * j + 1] = gv if (b == m) & (a != m) else 0.0
        dbottom[2 * j] = gv if (c == m) & (a != m) & (b != m) else 0.0
        dbottom[2 * j + 1] = gv if (a != m) & (b != m) & (c != m) else 0.0
        nan |= (a != a) | (b != b) | (c != c) | (d != d)
    return nan


@njit(cache=True, inline="always")
def _route_row_exact(plane, src, dst, i, wo):
    """Row i of windows where one may hold a NaN (the first NaN takes the gradient), in two
    passes: the winners (0-3, row-major) parked in each window's first cell of dst, then
    the four cells. Indexed in place: a row view per row, in every thread, would update
    the shared parent arrays' reference counts (3x slower on rows of 7-14 windows)."""
    for j in range(wo):
        a, b = plane[2 * i, 2 * j], plane[2 * i, 2 * j + 1]
        c, d = plane[2 * i + 1, 2 * j], plane[2 * i + 1, 2 * j + 1]
        m = max(max(a, b), max(c, d))
        w = 3  # the first position holding the maximum: selects on plain compares
        w = 2 if c == m else w
        w = 1 if b == m else w
        w = 0 if a == m else w
        if (a != a) | (b != b) | (c != c) | (d != d):  # rare: the first NaN takes it
            w = 0 if a != a else (1 if b != b else (2 if c != c else 3))
        dst[2 * i, 2 * j] = w
    for j in range(wo):
        w = int(dst[2 * i, 2 * j])
        gv = src[i, j]
        dst[2 * i, 2 * j] = gv if w == 0 else 0.0
        dst[2 * i, 2 * j + 1] = gv if w == 1 else 0.0
        dst[2 * i + 1, 2 * j] = gv if w == 2 else 0.0
        dst[2 * i + 1, 2 * j + 1] = gv if w == 3 else 0.0


@njit(cache=True, parallel=True)
def _maxpool_2x2_backward(g, x, dx):
    """Each g goes to its window's first maximum (exact for any g: selects, not a 0/1 mask,
    which would turn an inf into NaN), a row of windows at a time: one pass of compares and
    selects that vectorises, then, for a row that holds a NaN, the exact routing again
    (the first NaN takes it). Rows shorter than ONE_PASS_WINDOWS windows take the two
    passes alone: the vector loop would not run once, and with 14 or 8 windows a row the
    one pass was 8-14% slower. On two threads of the EPYC, measured alternately with the
    two passes on every row, 128x32x32x32 (16 windows a row) took 1.7-2.6 ms (median 2.0)
    against 2.55-2.7; an earlier scalar one-pass form, each window's stores waiting on
    compares of data loaded just before, with NaN-aware compares throughout, took 10 ms on
    one core."""
    ch = x.shape[1]
    ho, wo = g.shape[2], g.shape[3]
    for t in prange(x.shape[0] * ch):
        plane, src, dst = x[t // ch, t % ch], g[t // ch, t % ch], dx[t // ch, t % ch]
        for i in range(ho):
            if wo >= ONE_PASS_WINDOWS and not _route_row(plane[2 * i], plane[2 * i + 1], src[i], dst[2 * i],
                                                         dst[2 * i + 1], wo):
                continue
            _route_row_exact(plane, src, dst, i, wo)
        if 2 * ho < dst.shape[0] or 2 * wo < dst.shape[1]:  # an odd last row or column: in no window
            dst[2 * ho:, :] = 0
            dst[:, 2 * wo:] = 0


@njit(cache=True, parallel=True)
def maxpool_forward(x, out, kh, kw, stride_h, stride_w, pad_t, pad_l):
    """out[n, c, i, j] = max of the window at (i*sh - pt, j*sw - pl), padding excluded."""
    if _is_2x2(kh, kw, stride_h, stride_w, pad_t, pad_l):
        _maxpool_2x2_forward(x, out)
        return
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
    if _is_2x2(kh, kw, stride_h, stride_w, pad_t, pad_l):
        _maxpool_2x2_backward(g, x, dx)
        return
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
