"""batchnorm: training forward with batch statistics, its backward, and inference.

Works on [N, C, ...] (NCHW images or NC features): each kernel views x as
[N, C, S] (S = product of the spatial axes, 1 for NC) and runs one channel per
parallel iteration, so the per-channel sums need no atomics; a channel's data is
N contiguous runs of S elements.

Training forward in two passes over x (the fewest: statistics must be known
before anything is normalised):
    1. shifted sums  s1 = sum(x - k), s2 = sum((x - k)^2), k = the channel's first
       value, in float64; mean = k + s1/M, var = s2/M - (s1/M)^2 (biased, as the
       reference's `var`). The shift keeps the one-pass formula from cancelling
       when |mean| >> std.
    2. y = (x - mean) * gamma / sqrt(var + eps) + beta.
The batch mean and biased var are written out for the backward and the running
statistics (the unbiased variance the running update needs is var * M/(M-1)).

Backward (given the same batch mean/var), with xhat = (x - mean)/sigma, M = N*S:
    dbeta = sum g,  dgamma = sum g*xhat,
    dx = gamma/sigma * (g - dbeta/M - xhat * dgamma/M)
which is what autodiff builds from batchnorm_grad_x, batchnorm_grad_gamma and the
gradients of `mean` and `var`, in two passes instead of six.

fastmath is limited to reassociation and contraction, so Numba may vectorise the
float64 sums (a reordering changes them far below float32 rounding) while NaN and
inf keep their IEEE behaviour.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

FAST = {"reassoc", "contract"}


@njit(cache=True, parallel=True, fastmath=FAST)
def batchnorm_forward_train(x, gamma, beta, out, mean, var, eps):
    """out = batchnorm of x with its own batch statistics; mean, var (biased) written per channel."""
    flat, y = x.reshape(x.shape[0], x.shape[1], -1), out.reshape(x.shape[0], x.shape[1], -1)
    n, ch, size = flat.shape
    count = n * size
    for c in prange(ch):
        k = np.float64(flat[0, c, 0])
        s1 = s2 = 0.0
        for i in range(n):
            for j in range(size):
                d = flat[i, c, j] - k
                s1 += d
                s2 += d * d
        m = s1 / count
        mu = k + m
        v = max(s2 / count - m * m, 0.0)
        scale = gamma[c] / np.sqrt(v + eps)
        for i in range(n):
            for j in range(size):
                y[i, c, j] = (flat[i, c, j] - mu) * scale + beta[c]
        mean[c] = mu
        var[c] = v


@njit(cache=True, parallel=True, fastmath=FAST)
def batchnorm_backward(g, x, gamma, mean, var, dx, dgamma, dbeta, eps):
    """dx, dgamma, dbeta of the training batchnorm, given its batch mean and biased var."""
    flat_g, flat_x = g.reshape(x.shape[0], x.shape[1], -1), x.reshape(x.shape[0], x.shape[1], -1)
    flat_dx = dx.reshape(x.shape[0], x.shape[1], -1)
    n, ch, size = flat_x.shape
    count = n * size
    for c in prange(ch):
        mu, inv = np.float64(mean[c]), 1.0 / np.sqrt(np.float64(var[c]) + eps)
        sg = sgx = 0.0
        for i in range(n):
            for j in range(size):
                gv = np.float64(flat_g[i, c, j])
                sg += gv
                sgx += gv * (flat_x[i, c, j] - mu)
        a, b, d = gamma[c] * inv, sg / count, sgx * inv * inv / count
        for i in range(n):
            for j in range(size):
                flat_dx[i, c, j] = a * (flat_g[i, c, j] - b - (flat_x[i, c, j] - mu) * d)
        dbeta[c] = sg
        dgamma[c] = sgx * inv


@njit(cache=True, parallel=True)
def batchnorm_forward_infer(x, gamma, beta, mean, var, out, eps):
    """out = (x - mean) * gamma / sqrt(var + eps) + beta with the running statistics."""
    flat, y = x.reshape(x.shape[0], x.shape[1], -1), out.reshape(x.shape[0], x.shape[1], -1)
    n, ch, size = flat.shape
    for c in prange(ch):
        mu, scale = np.float64(mean[c]), gamma[c] / np.sqrt(np.float64(var[c]) + eps)
        for i in range(n):
            for j in range(size):
                y[i, c, j] = (flat[i, c, j] - mu) * scale + beta[c]
