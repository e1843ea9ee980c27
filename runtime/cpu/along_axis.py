"""Kernels that work along one axis: max, min and argmax, gather and its gradient, one-hot
codes, stacking and unstacking, the nll loss, and r2.

Each sees its arrays as [A, K, B] around the axis (K the axis; A, B the products of the axes
before and after it: dslc/ops/reduce.axis_view), or with `whole` as [1, size, 1], so one
kernel serves every rank and axis and the batch is read from the arrays at run time. The
first extremum along the axis is np.argmax's (NaN before any number), and max/min return
its value, so a NaN propagates as in np.max. An index outside its axis is a ValueError,
as cross_entropy's label is (the NumPy reference rejects it too).

They run on small tensors (heads, per-example scores): sequential.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from dslc.runtime.cpu.softmax import _view as around_axis  # [A, K, B] around an axis, as softmax sees rows


@njit(cache=True, inline="always")
def _view(x, axis, whole):
    """x as [A, K, B] around `axis` (negative counts from the end), or [1, size, 1] when whole."""
    if whole:
        return x.reshape(1, x.size, 1)
    return around_axis(x, axis)


@njit(cache=True, inline="always")
def _first(z, a, b, smallest):
    """The index along K of the first max (min when smallest) of z[a, :, b]; a NaN wins."""
    best = 0
    if z[a, 0, b] != z[a, 0, b]:
        return 0
    for k in range(1, z.shape[1]):
        v = z[a, k, b]
        if v != v:
            return k
        if (v < z[a, best, b]) if smallest else (v > z[a, best, b]):
            best = k
    return best


@njit(cache=True)
def extremum(x, out, axis, whole, smallest):
    """out = max (or min) of x along `axis` (over everything when whole): the registry's max, min."""
    z = _view(x, axis, whole)
    y = out.reshape(z.shape[0], z.shape[2])
    for a in range(z.shape[0]):
        for b in range(z.shape[2]):
            y[a, b] = z[a, _first(z, a, b, smallest), b]


@njit(cache=True)
def extremum_grad(x, g, dx, axis, whole, smallest):
    """dx = g at the first max (min) of x along `axis`, 0 elsewhere."""
    z, d = _view(x, axis, whole), _view(dx, axis, whole)
    gz = g.reshape(z.shape[0], z.shape[2])
    for a in range(z.shape[0]):
        for b in range(z.shape[2]):
            at = _first(z, a, b, smallest)
            for k in range(z.shape[1]):
                d[a, k, b] = gz[a, b] if k == at else 0.0


@njit(cache=True)
def argmax(x, out, axis, whole):
    """out (int64) = the index of the first max of x along `axis` (in the flattened x when whole)."""
    z = _view(x, axis, whole)
    y = out.reshape(z.shape[0], z.shape[2])
    for a in range(z.shape[0]):
        for b in range(z.shape[2]):
            y[a, b] = _first(z, a, b, False)


@njit(cache=True)
def gather(x, index, out, axis):
    """out[a, b] = x[a, index[a, b], b] around `axis`."""
    z = _view(x, axis, False)
    idx, y = index.reshape(z.shape[0], z.shape[2]), out.reshape(z.shape[0], z.shape[2])
    for a in range(z.shape[0]):
        for b in range(z.shape[2]):
            k = idx[a, b]
            if k < 0 or k >= z.shape[1]:
                raise ValueError("gather: an index is outside its axis")
            y[a, b] = z[a, k, b]


@njit(cache=True)
def gather_grad(g, index, dx, axis):
    """dx = zeros with g[a, b] at [a, index[a, b], b]."""
    d = _view(dx, axis, False)
    gz, idx = g.reshape(d.shape[0], d.shape[2]), index.reshape(d.shape[0], d.shape[2])
    for a in range(d.shape[0]):
        for b in range(d.shape[2]):
            for k in range(d.shape[1]):
                d[a, k, b] = gz[a, b] if k == idx[a, b] else 0.0


@njit(cache=True)
def one_hot(index, out):
    """out[..., c] = 1 where index[...] == c, else 0 (classes: out's last axis)."""
    k = out.shape[out.ndim - 1]
    idx, y = index.reshape(-1), out.reshape(-1, k)
    for i in range(idx.size):
        if idx[i] < 0 or idx[i] >= k:
            raise ValueError("one_hot: an index is outside [0, classes)")
        for c in range(k):
            y[i, c] = 1.0 if c == idx[i] else 0.0


@njit(cache=True)
def stack_part(x, out, axis, slot):
    """out[a, slot, b] = x[a, b]: input `slot` of a stack along `axis` of out."""
    y = _view(out, axis, False)
    xs = x.reshape(y.shape[0], y.shape[2])
    for a in range(y.shape[0]):
        for b in range(y.shape[2]):
            y[a, slot, b] = xs[a, b]


@njit(cache=True)
def unstack(g, out, axis, slot):
    """out[a, b] = g[a, slot, b]: one input's part of a stacked tensor (stack's gradient)."""
    z = _view(g, axis, False)
    y = out.reshape(z.shape[0], z.shape[2])
    for a in range(z.shape[0]):
        for b in range(z.shape[2]):
            y[a, b] = z[a, slot, b]


@njit(cache=True)
def nll_loss_forward(logp, labels, loss):
    """loss[()] = mean_i -logp[i, labels[i]]."""
    total = 0.0
    for i in range(logp.shape[0]):
        if labels[i] < 0 or labels[i] >= logp.shape[1]:
            raise ValueError("nll_loss: a label is outside [0, classes)")
        total -= logp[i, labels[i]]
    loss[()] = total / logp.shape[0]


@njit(cache=True)
def nll_loss_backward(logp, labels, g, dlogp):
    """dlogp = -g / N at [i, labels[i]], 0 elsewhere."""
    scale = -np.float64(g[()]) / logp.shape[0]
    for i in range(logp.shape[0]):
        for k in range(logp.shape[1]):
            dlogp[i, k] = scale if k == labels[i] else 0.0


@njit(cache=True, error_model="numpy")
def r2(pred, target, out):
    """out[()] = 1 - sum (p - t)^2 / sum (t - mean t)^2 over every element. The target's
    sums are shifted by its first element, so a large mean does not cancel its spread.
    A constant target (every t equals the first: s2 == 0) has no spread to explain: 1 for a
    perfect prediction, else 0, NaN stays NaN (scikit-learn's force_finite; the reference's rule)."""
    p, t = pred.reshape(-1), target.reshape(-1)
    shift = np.float64(t[0])
    residual = s1 = s2 = 0.0
    for i in range(t.size):
        d = np.float64(p[i]) - t[i]
        residual += d * d
        u = t[i] - shift
        s1 += u
        s2 += u * u
    if s2 == 0.0:
        out[()] = residual if residual != residual else (1.0 if residual == 0.0 else 0.0)
    else:
        out[()] = 1.0 - residual / (s2 - s1 * s1 / t.size)
