"""slice, its gradient and pad: the shape ops that move data between arrays of different sizes.

Any rank, C-contiguous. A slice along `axis` sees both arrays as [A, D, B] around that
axis (A, B the products of the sizes before and after it), so it is A*K copies of a
run of B contiguous elements, K the slice's length:

    slice_forward   out[a, k, b] = x[a, first + k*step, b]
    slice_backward  dx[a, d, b]  = g[a, k, b] where d = first + k*step, else 0

`first` is the slice's first index (Python's start:stop:step already resolved against
the axis size by the generator, dslc/codegen/externs.py), the length is read from the
output. ResNet's option-A shortcut is slice(axis=2, step=2) |> slice(axis=3, step=2)
|> pad(channels): three of these per downsampling block, forward and backward.

pad writes `value` into the border and x into the interior; `before` holds the
padding before each axis (after is what the output's size leaves). Its gradient is a
chain of slices (dslc/ops/shape.py), so it needs no kernel of its own.

Each kernel sees its arrays as [A, D, B] around the sliced axis and is parallel over A:
every element is written by one thread, so nothing races and nothing allocates. The
loops go through the flat arrays with unsigned indices (lanes.u64), which LLVM
vectorises, not through row views or [a, d, b] indexing: a row view per element (the
last axis, B = 1, the second slice of option A) was 3-8 times slower, indexing [a, d, 0]
tested every index for wrap-around (128x16x16x32 -> 128x16x16x16: 0.63 ms forward and
0.61 backward on two threads of the EPYC, then 0.08 and 0.10), and pad's row views, two
per 16-element row of resnet20's channel padding, touched the parent's reference count
from both threads.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from dslc.runtime.cpu.lanes import u64


@njit(cache=True, inline="always")
def _around(shape, axis):
    """(A, B): the products of the sizes before and after `axis`."""
    a, b = 1, 1
    for d in range(axis):
        a *= shape[d]
    for d in range(axis + 1, len(shape)):
        b *= shape[d]
    return a, b


@njit(cache=True)
def _check(small, big, axis, first, step):
    """Raise unless `small` is a slice of `big` along `axis` starting at `first`: same sizes
    elsewhere, and every index first + k*step inside big's axis."""
    if small.ndim != big.ndim or not 0 <= axis < big.ndim or step <= 0:
        raise ValueError("slice: the arrays' ranks or the axis do not match")
    for d in range(big.ndim):
        if d != axis and small.shape[d] != big.shape[d]:
            raise ValueError("slice: the arrays differ outside the sliced axis")
    if small.shape[axis] > 0 and (first < 0 or first + (small.shape[axis] - 1) * step >= big.shape[axis]):
        raise ValueError("slice: the slice runs outside the axis")


@njit(cache=True)
def _as_3d(big, small, axis, first, step):
    """big [A, D, B] and small [A, K, B] around `axis`, once small is checked to be big's slice."""
    _check(small, big, axis, first, step)
    a, b = _around(big.shape, axis)
    return big.reshape(a, big.shape[axis], b), small.reshape(a, small.shape[axis], b)


@njit(cache=True, parallel=True)
def slice_forward(x, out, axis, first, step):
    """out = x[..., first::step, ...] on `axis`, as long as out is."""
    src, dst = _as_3d(x, out, axis, first, step)
    d, k, b = src.shape[1], dst.shape[1], dst.shape[2]
    xf, of = x.reshape(x.size), out.reshape(out.size)
    if b == 1:  # the last axis: one element a run, vectorised along the slice instead
        for i in prange(src.shape[0]):
            for j in range(k):
                of[u64(i * k + j)] = xf[u64(i * d + first + j * step)]
        return
    for i in prange(src.shape[0]):
        for j in range(k):
            at, to = u64((i * d + first + j * step) * b), u64((i * k + j) * b)
            for q in range(u64(b)):
                of[to + q] = xf[at + q]


@njit(cache=True, parallel=True)
def slice_backward(g, dx, axis, first, step):
    """dx = zeros with g written at [..., first::step, ...] on `axis` (the registry's slice_grad)."""
    dst, src = _as_3d(dx, g, axis, first, step)
    d, k, b = dst.shape[1], src.shape[1], dst.shape[2]
    gf, df = g.reshape(g.size), dx.reshape(dx.size)
    for i in prange(dst.shape[0]):
        start = u64(i * d * b)
        for q in range(u64(d * b)):  # zeros, then g over them: no test per element
            df[start + q] = 0
        if b == 1:  # the last axis, as in slice_forward
            for j in range(k):
                df[u64(i * d + first + j * step)] = gf[u64(i * k + j)]
            continue
        for j in range(k):
            at, to = u64((i * k + j) * b), u64((i * d + first + j * step) * b)
            for q in range(u64(b)):
                df[to + q] = gf[at + q]


@njit(cache=True)  # not inlined: the parallel loop would see its index reassigned
def _source_row(r, shape, out_shape, before):
    """The row of x (all axes but the last, row-major) that lands in row r of the padded
    output, or -1 where row r is border."""
    rest, at, scale = np.int64(r), np.int64(0), np.int64(1)
    for d in range(len(shape) - 2, -1, -1):
        i = rest % out_shape[d] - before[d]
        rest //= out_shape[d]
        if i < 0 or i >= shape[d]:
            return np.int64(-1)
        at += i * scale
        scale *= shape[d]
    return at


@njit(cache=True, parallel=True)
def pad_forward(x, out, before, value):
    """out = x surrounded by `value`: x at offset before[d] along every axis d."""
    if x.ndim != out.ndim or len(before) != x.ndim:
        raise ValueError("pad: the arrays' ranks do not match the padding")
    for d in range(x.ndim):
        if before[d] < 0 or before[d] + x.shape[d] > out.shape[d]:
            raise ValueError("pad: x does not fit in the output at this offset")
    last = x.ndim - 1
    w, wo = x.shape[last], out.shape[last]
    xf, of = x.reshape(x.size), out.reshape(out.size)
    fill = out.dtype.type(value)
    lo = before[last]
    # every output row: the border value where no row of x lands, else the row of x in
    # the middle and `value` on both sides of it
    for r in prange(out.size // wo):
        at = _source_row(np.int64(r), x.shape, out.shape, before)  # int64 where typed and in the loop: one compile
        row = u64(r * wo)
        if at < 0:
            for q in range(u64(wo)):
                of[row + q] = fill
            continue
        for q in range(u64(lo)):
            of[row + q] = fill
        part, mid = u64(at * w), row + u64(lo)
        for q in range(u64(w)):
            of[mid + q] = xf[part + q]
        for q in range(u64(lo + w), u64(wo)):
            of[row + q] = fill
