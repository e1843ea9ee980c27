"""softmax, log_softmax, the classification losses (softmax-cross-entropy and the multiclass
hinge `svm`, forward and backward, one kernel each) and accuracy.

softmax/log_softmax normalise along any axis of a C-contiguous array, seen as
[A, K, B] (K the axis; A, B the products of the axes before and after it), as
the references in dslc/ops/elementwise.py: shift by the max, exp, sum, divide.

The losses take logits [N, K] and integer labels [N] (int32 or int64):
    loss   = mean_i (logsumexp(z_i) - z_i[y_i])
    dlogit = (softmax(z_i) - onehot(y_i)) * g / N
    svm    = mean_i sum_{j != y_i} max(0, z_ij - z_iy_i + margin), its gradient 0 at the hinge
N is read from the arrays (the batch size is only known at run time). Scalars are
0-d arrays, as the NumPy reference returns them: `loss[()]`, `g[()]`.

These run on classifier heads (N x 10 for the models here): microseconds of work,
less than waking Numba's thread pool costs, so they are sequential.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _view(x, axis):
    """x as [A, K, B] around `axis` (negative counts from the end)."""
    axis = axis % x.ndim
    a = 1
    for d in range(axis):
        a *= x.shape[d]
    return x.reshape(a, x.shape[axis], -1)


@njit(cache=True, inline="always")
def _max_lse(z, a, b):
    """(max_k z[a, k, b], log sum_k exp(z[a, k, b] - max)), in float64."""
    m = z[a, 0, b]
    for k in range(1, z.shape[1]):
        m = max(m, z[a, k, b])
    s = 0.0
    for k in range(z.shape[1]):
        s += np.exp(np.float64(z[a, k, b]) - m)
    return np.float64(m), np.log(s)


@njit(cache=True)
def _normalise(x, out, axis, log):
    z, y = _view(x, axis), _view(out, axis)
    for a in range(z.shape[0]):
        for b in range(z.shape[2]):
            m, lse = _max_lse(z, a, b)
            for k in range(z.shape[1]):
                t = z[a, k, b] - m - lse
                y[a, k, b] = t if log else np.exp(t)


@njit(cache=True)
def softmax_forward(x, out, axis):
    """out = exp(x - max) / sum exp(x - max) along `axis`."""
    _normalise(x, out, axis, False)


@njit(cache=True)
def log_softmax_forward(x, out, axis):
    """out = x - max - log sum exp(x - max) along `axis`."""
    _normalise(x, out, axis, True)


@njit(cache=True)
def softmax_cross_entropy_forward(logits, labels, loss):
    """loss[()] = mean_i -log softmax(logits_i)[labels_i]; a label outside [0, K) is a ValueError
    (it would index past the row: the reference's one-hot has no such class either)."""
    z = logits.reshape(logits.shape[0], logits.shape[1], 1)
    total = 0.0
    for i in range(z.shape[0]):
        if labels[i] < 0 or labels[i] >= z.shape[1]:
            raise ValueError("cross_entropy: a label is outside [0, classes)")
        m, lse = _max_lse(z, i, 0)
        total += m + lse - z[i, labels[i], 0]
    loss[()] = total / z.shape[0]


@njit(cache=True)
def softmax_cross_entropy_backward(logits, labels, g, dlogits):
    """dlogits = (softmax(logits) - onehot(labels)) * g / N."""
    z = logits.reshape(logits.shape[0], logits.shape[1], 1)
    scale = np.float64(g[()]) / z.shape[0]
    for i in range(z.shape[0]):
        m, lse = _max_lse(z, i, 0)
        for k in range(z.shape[1]):
            p = np.exp(z[i, k, 0] - m - lse)
            dlogits[i, k] = (p - (k == labels[i])) * scale


@njit(cache=True)
def accuracy(logits, label, out):
    """out[()] = the fraction of rows whose first maximum is at the label (np.argmax's tie rule)."""
    hits = 0
    for i in range(logits.shape[0]):
        best = 0
        for k in range(1, logits.shape[1]):
            if logits[i, k] > logits[i, best]:
                best = k
        hits += best == label[i]
    out[()] = hits / logits.shape[0]


@njit(cache=True, inline="always")
def _hinge_check(scores, labels):
    for i in range(scores.shape[0]):
        if labels[i] < 0 or labels[i] >= scores.shape[1]:
            raise ValueError("svm: a label is outside [0, classes)")


@njit(cache=True)
def svm_forward(scores, labels, loss, margin):
    """loss[()] = mean_i sum_{j != y_i} max(0, s_ij - s_iy_i + margin): the multiclass hinge."""
    _hinge_check(scores, labels)
    total = 0.0
    for i in range(scores.shape[0]):
        right = np.float64(scores[i, labels[i]])
        for k in range(scores.shape[1]):
            m = scores[i, k] - right + margin
            if k != labels[i] and m > 0:
                total += m
    loss[()] = total / scores.shape[0]


@njit(cache=True)
def svm_backward(scores, labels, g, dscores, margin):
    """dscores = [m_ij > 0] * g / N off the label, -(their count) * g / N at it; 0 at the hinge."""
    _hinge_check(scores, labels)
    scale = np.float64(g[()]) / scores.shape[0]
    for i in range(scores.shape[0]):
        right = np.float64(scores[i, labels[i]])
        count = 0
        for k in range(scores.shape[1]):
            on = k != labels[i] and scores[i, k] - right + margin > 0
            dscores[i, k] = scale if on else 0.0
            count += on
        dscores[i, labels[i]] = -count * scale
