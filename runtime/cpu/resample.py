"""Upsampling by integer factors (nearest, bilinear) and its gradient, plane by plane.

Output row i of an input of `size` rows upsampled `scale` times reads (PyTorch's
nn.Upsample, align_corners=False; dslc/ops/image.py):
    nearest   row i // scale
    bilinear  rows lo and hi = min(lo + 1, size - 1) with weights 1 - f and f, where
              src = max((i + 0.5) / scale - 0.5, 0), lo = floor(src), f = src - lo
and columns likewise. The gradient is a gather: input row r sums the output rows that
read it, all within (r - 1) * scale .. (r + 2) * scale, each times its weight, so every
element of dx is written by one thread. Planes ([N * C]) are spread over the threads.
"""
from __future__ import annotations

from numba import njit, prange


@njit(cache=True, inline="always")
def _source(i, scale, size, bilinear):
    """(lo, hi, f): output row i reads rows lo and hi with weights 1 - f and f."""
    if not bilinear:
        return i // scale, i // scale, 0.0
    src = max((i + 0.5) / scale - 0.5, 0.0)
    lo = int(src)
    return lo, min(lo + 1, size - 1), src - lo


@njit(cache=True, inline="always")
def _weight(i, r, scale, size, bilinear):
    """The weight with which output row i reads input row r (0 if it does not)."""
    lo, hi, f = _source(i, scale, size, bilinear)
    return (1.0 - f) * (lo == r) + f * (hi == r)


@njit(cache=True, parallel=True)
def upsample_forward(x, out, sh, sw, bilinear):
    """out [N, C, H*sh, W*sw] = x [N, C, H, W] upsampled (see the module docstring)."""
    h, w = x.shape[2], x.shape[3]
    xs = x.reshape(-1, h, w)
    ys = out.reshape(-1, out.shape[2], out.shape[3])
    for p in prange(xs.shape[0]):
        for i in range(ys.shape[1]):
            r0, r1, fr = _source(i, sh, h, bilinear)
            for j in range(ys.shape[2]):
                c0, c1, fc = _source(j, sw, w, bilinear)
                top = (1.0 - fc) * xs[p, r0, c0] + fc * xs[p, r0, c1]
                bottom = (1.0 - fc) * xs[p, r1, c0] + fc * xs[p, r1, c1]
                ys[p, i, j] = (1.0 - fr) * top + fr * bottom


@njit(cache=True, parallel=True)
def upsample_backward(g, dx, sh, sw, bilinear):
    """dx [N, C, H, W] = the sum, over the outputs that read each element, of g times the weight."""
    h, w = dx.shape[2], dx.shape[3]
    gs = g.reshape(-1, g.shape[2], g.shape[3])
    ds = dx.reshape(-1, h, w)
    for p in prange(ds.shape[0]):
        for r in range(h):
            i0, i1 = max(0, (r - 1) * sh), min(gs.shape[1], (r + 2) * sh)
            for c in range(w):
                j0, j1 = max(0, (c - 1) * sw), min(gs.shape[2], (c + 2) * sw)
                acc = 0.0
                for i in range(i0, i1):
                    wi = _weight(i, r, sh, h, bilinear)
                    if wi == 0.0:
                        continue
                    for j in range(j0, j1):
                        wj = _weight(j, c, sw, w, bilinear)
                        if wj != 0.0:
                            acc += wi * wj * gs[p, i, j]
                ds[p, r, c] = acc
