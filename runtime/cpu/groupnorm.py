"""groupnorm (and so layernorm and instancenorm): forward, input gradient, scale gradient.

x is [N, C, ...]; each kernel views it as [N, G, M], M = C/G * S (S the product of the
spatial axes, 1 for [N, C] features): a group of one example is M contiguous elements,
channel c of it the run of S elements at (c mod C/G) * S. layernorm is G = 1,
instancenorm G = C (dslc/ops/norm.py). Per example and group, in float64:

    mean = sum(x) / M,  var = sum((x - mean)^2) / M  (two passes: no cancellation)
    y    = (x - mean) / sigma * gamma[c] + beta[c],   sigma = sqrt(var + eps)

The input gradient, with xhat = (x - mean) / sigma and d = g * gamma[c]:

    dx = (d - mean(d) - xhat * mean(d * xhat)) / sigma

and the scale gradient dgamma[c] = sum_{n, s} g * xhat (beta's is a plain sum, which
the generator writes as a reduce kernel).

forward and grad-input run one (example, group) per parallel iteration: its statistics
are that iteration's alone. grad-gamma sums per channel over examples, so it first writes
every (example, group)'s mean and 1/sigma into the workspace, then runs one channel per
iteration; `workspace_elements` sizes what it needs. fastmath as in batchnorm.py:
reassociation and contraction only.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

FAST = {"reassoc", "contract"}


def workspace_elements(x_shape, groups: int) -> int:
    """Workspace elements groupnorm_grad_gamma needs: a mean and a 1/sigma per (example, group)."""
    return 2 * x_shape[0] * groups


@njit(cache=True, inline="always")
def _grouped(x, groups):
    """x as [N, G, M]; a ValueError unless G divides the channels."""
    if groups <= 0 or x.shape[1] % groups != 0:
        raise ValueError("groupnorm: groups must divide the channels")
    return x.reshape(x.shape[0], groups, -1)


@njit(cache=True, inline="always", fastmath=FAST)
def _stats(row, eps):
    """(mean, 1/sigma) of one group's M values, in float64."""
    s = 0.0
    for q in range(row.size):
        s += row[q]
    mean = s / row.size
    v = 0.0
    for q in range(row.size):
        d = row[q] - mean
        v += d * d
    return mean, 1.0 / np.sqrt(v / row.size + eps)


@njit(cache=True, parallel=True, fastmath=FAST)
def groupnorm_forward(x, gamma, beta, out, groups, eps):
    """out = groupnorm of x with per-channel gamma, beta (see the module docstring)."""
    xs, ys = _grouped(x, groups), _grouped(out, groups)
    n, m = xs.shape[0], xs.shape[2]
    per = x.shape[1] // groups
    size = m // per
    for t in prange(n * groups):
        i, grp = t // groups, t % groups
        row, dst = xs[i, grp], ys[i, grp]
        mean, inv = _stats(row, eps)
        for cc in range(per):
            c = grp * per + cc
            scale = inv * gamma[c]
            shift = beta[c] - mean * scale
            for s in range(cc * size, (cc + 1) * size):
                dst[s] = row[s] * scale + shift


@njit(cache=True, parallel=True, fastmath=FAST)
def groupnorm_grad_input(g, x, gamma, dx, groups, eps):
    """dx of groupnorm for output gradient g (the registry's groupnorm_grad_input)."""
    xs, gs, ds = _grouped(x, groups), _grouped(g, groups), _grouped(dx, groups)
    n, m = xs.shape[0], xs.shape[2]
    per = x.shape[1] // groups
    size = m // per
    for t in prange(n * groups):
        i, grp = t // groups, t % groups
        row, grow, dst = xs[i, grp], gs[i, grp], ds[i, grp]
        mean, inv = _stats(row, eps)
        sd = sdx = 0.0  # sum of d and of d * xhat
        for cc in range(per):
            gam = np.float64(gamma[grp * per + cc])
            for s in range(cc * size, (cc + 1) * size):
                d = grow[s] * gam
                sd += d
                sdx += d * (row[s] - mean)
        mean_d, mean_dx = sd / m, sdx * inv / m
        for cc in range(per):
            gam = np.float64(gamma[grp * per + cc])
            for s in range(cc * size, (cc + 1) * size):
                xhat = (row[s] - mean) * inv
                dst[s] = (grow[s] * gam - mean_d - xhat * mean_dx) * inv


@njit(cache=True, parallel=True, fastmath=FAST)
def groupnorm_grad_gamma(g, x, dgamma, groups, eps, workspace):
    """dgamma[c] = sum_{n, s} g * xhat (the registry's groupnorm_grad_gamma)."""
    xs = _grouped(x, groups)
    n = xs.shape[0]
    if workspace.size < 2 * n * groups:
        raise ValueError("groupnorm_grad_gamma: workspace too small; size it with workspace_elements")
    stats = workspace.reshape(-1)
    for t in prange(n * groups):
        mean, inv = _stats(xs[t // groups, t % groups], eps)
        stats[2 * t], stats[2 * t + 1] = mean, inv
    flat_g, flat_x = g.reshape(n, x.shape[1], -1), x.reshape(n, x.shape[1], -1)
    per = x.shape[1] // groups
    for c in prange(x.shape[1]):
        total = 0.0
        for i in range(n):
            t = i * groups + c // per
            mean, inv = np.float64(stats[2 * t]), np.float64(stats[2 * t + 1])
            acc = 0.0
            for s in range(flat_x.shape[2]):
                acc += flat_g[i, c, s] * (flat_x[i, c, s] - mean)
            total += acc * inv
        dgamma[c] = total
