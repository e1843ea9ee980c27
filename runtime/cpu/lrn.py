"""Local response normalisation across channels (AlexNet's), forward and backward.

x [N, C, ...] is seen as [N, C, S]; for each (n, s) the channels c normalise by
    S_c = k + alpha / size * sum_{c' in window(c)} x[c']^2,  window(c) = c - size // 2 .. c + (size - 1) // 2
    y_c = x_c * S_c^-beta
    dx_j = g_j S_j^-beta - 2 alpha beta / size * x_j * sum_{c: j in window(c)} g_c x_c S_c^(-beta-1)
(dslc/ops/image.py). The backward recomputes S_c for each c it reads (size more sums:
nothing is stored between the passes, so nothing is allocated). Examples are spread over
the threads; sums are in float64.
"""
from __future__ import annotations

from numba import njit, prange


@njit(cache=True, inline="always")
def _scale(z, n, c, s, size, alpha, k):
    """S_c at (n, s) of z [N, C, S]."""
    acc = 0.0
    for q in range(max(0, c - size // 2), min(z.shape[1], c + (size - 1) // 2 + 1)):
        v = float(z[n, q, s])
        acc += v * v
    return k + alpha / size * acc


@njit(cache=True, parallel=True)
def lrn_forward(x, out, size, alpha, beta, k):
    z = x.reshape(x.shape[0], x.shape[1], -1)
    y = out.reshape(z.shape)
    for n in prange(z.shape[0]):
        for s in range(z.shape[2]):
            for c in range(z.shape[1]):
                y[n, c, s] = z[n, c, s] * _scale(z, n, c, s, size, alpha, k) ** -beta


@njit(cache=True, parallel=True)
def lrn_backward(x, g, dx, size, alpha, beta, k):
    z = x.reshape(x.shape[0], x.shape[1], -1)
    gz, d = g.reshape(z.shape), dx.reshape(z.shape)
    for n in prange(z.shape[0]):
        for s in range(z.shape[2]):
            for j in range(z.shape[1]):
                acc = 0.0  # over the channels c whose window holds j
                for c in range(max(0, j - (size - 1) // 2), min(z.shape[1], j + size // 2 + 1)):
                    acc += gz[n, c, s] * z[n, c, s] * _scale(z, n, c, s, size, alpha, k) ** (-beta - 1.0)
                d[n, j, s] = (gz[n, j, s] * _scale(z, n, j, s, size, alpha, k) ** -beta
                              - 2.0 * alpha * beta / size * z[n, j, s] * acc)
