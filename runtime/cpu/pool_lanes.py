"""The 2x2, stride-2 max and average pools over rows of windows, written as explicit vectors (pool.py).

    max_2x2(x, out, x_start, out_start, width, out_width, windows, rows)
    route_2x2(x, g, dx, x_start, g_start, width, g_width, windows, rows, positive)
    mean_2x2(x, out, x_start, out_start, width, out_width, windows, rows)
    spread_2x2(g, dx, g_start, dx_start, g_width, width, windows, rows)

Window row r of a plane is two rows of x, at x_start + 2 r width and `width` further on;
its `windows` results (or gradients) are a row of out (or g) at out_start + r out_width.
`max_2x2` writes each window's maximum (a NaN where the window holds one, a + b + c + d,
as np.max gives a NaN); `route_2x2` writes dx over the same two rows: each g at its
window's first maximum in row-major order (the first NaN where the window holds one, as
np.argmax picks it), 0 in the other three cells; with `positive`, only where that maximum
is above 0 (a relu's gradient folded in: dslc/passes/pool_relu.py). Both are selects on
plain compares, exact for any value: an infinite g stays infinite at its winner and 0
elsewhere. `mean_2x2` writes (((a + b) + c) + d) * 0.25 in the input's type (pool.py's
general loop adds in that order, in float64), and `spread_2x2` a quarter of each g into
its window's four cells
(LeNet-5's average pools at batch 128 took 1.9 of its step's 11.3 ms one window at a time).

Why vectors by hand: the loops over a row of windows that pool.py had vectorised only
from 16 windows a row (one AVX-512 vector of them), so the rows of small images (14 or
7 windows, as in models/small_cnn.net) ran one window at a time, and the backward needed
two passes over such a row to route NaN exactly. Here a row goes in runs of 16 windows
(8 in float64), then what is left as one masked run (lanes.over_rows): one load of
2 * lanes values per input row, shuffled apart into the windows' left and right values,
and the gradient's four cells shuffled back into two stores. A row of 14 windows is one
run of 16 lanes, 14 of them loaded and stored; a row of 7, one of 8. Each run costs about
the same whatever its width, and the cascade of shorter runs (8 + 4 + 2 for 14 windows)
this replaced made the backward twice as slow on small_cnn's 28x28 and 14x14 planes.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from dslc.runtime.cpu.lanes import VECTOR_BYTES, flat_floats, merge_pairs, over_rows, pair_masks, run_access, split_pairs


def _window_rows(context, builder, sig, args, chunk):
    """Unpack (x, y, ..., six offsets, flags) and run chunk(arrays, item, load, store, top,
    bottom, y_row, lanes, flags) over every run of windows: top and bottom are where the
    run's two rows start in x, y_row where its results start; load(array, at, kind) and
    store(value, array, at) move vectors; flags are the trailing arguments as i1 values."""
    count = sum(isinstance(t, types.Array) for t in sig.args)
    arrays = [context.make_array(t)(context, builder, a).data for t, a in zip(sig.args[:count], args[:count])]
    item = context.get_data_type(sig.args[0].dtype)
    size = context.get_abi_sizeof(item)
    x_start, y_start, width, y_width, windows, rows = (
        context.cast(builder, a, t, types.uint64) for t, a in zip(sig.args[count:count + 6], args[count:count + 6]))
    flags = [context.cast(builder, a, t, types.boolean) for t, a in zip(sig.args[count + 6:], args[count + 6:])]

    def run(row, m, lanes, valid):
        x_top = builder.add(x_start, builder.add(builder.mul(row, builder.add(width, width)), builder.add(m, m)))
        y_row = builder.add(y_start, builder.add(builder.mul(row, y_width), m))
        # a masked run: its results and gradients under one mask, its pairs of x under the other
        load, store = run_access(builder, size, pair_masks(builder, lanes, valid))
        chunk(arrays, item, load, store, x_top, builder.add(x_top, width), y_row, lanes, flags)

    over_rows(builder, rows, windows, VECTOR_BYTES // size, run, masked=True)
    return context.get_dummy_value()


def _corners(builder, x, load, top, bottom, item, lanes):
    """(a, b, c, d): the top-left, top-right, bottom-left and bottom-right values of `lanes` windows."""
    wide = ir.VectorType(item, 2 * lanes)
    return (*split_pairs(builder, load(x, top, wide), lanes), *split_pairs(builder, load(x, bottom, wide), lanes))


def _larger(builder, p, q):
    """q where q > p, else p (Python's max(p, q))."""
    return builder.select(builder.fcmp_ordered(">", q, p), q, p)


def _maximum(builder, a, b, c, d):
    return _larger(builder, _larger(builder, a, b), _larger(builder, c, d))


def _is_nan(builder, v):
    return builder.fcmp_unordered("uno", v, v)


def _first(builder, hits):
    """Of four masks, each lane's first hit only (the last is taken where none of the first
    three hits): [h0, h1 & !h0, h2 & !(h0 | h1), !(h0 | h1 | h2)]."""
    firsts, seen = [], None
    for h in hits[:3]:
        firsts.append(h if seen is None else builder.and_(h, builder.not_(seen)))
        seen = h if seen is None else builder.or_(seen, h)
    return firsts + [builder.not_(seen)]


def _max_chunk(builder):
    def chunk(arrays, item, load, store, top, bottom, y_row, lanes, flags):
        x, out = arrays
        a, b, c, d = _corners(builder, x, load, top, bottom, item, lanes)
        nan = builder.or_(builder.or_(_is_nan(builder, a), _is_nan(builder, b)),
                          builder.or_(_is_nan(builder, c), _is_nan(builder, d)))
        total = builder.fadd(builder.fadd(builder.fadd(a, b), c), d)
        store(builder.select(nan, total, _maximum(builder, a, b, c, d)), out, y_row)
    return chunk


def _route_chunk(builder):
    def chunk(arrays, item, load, store, top, bottom, g_row, lanes, flags):
        x, g, dx = arrays
        corners = _corners(builder, x, load, top, bottom, item, lanes)
        m = _maximum(builder, *corners)
        nans = [_is_nan(builder, v) for v in corners]
        nan = builder.or_(builder.or_(nans[0], nans[1]), builder.or_(nans[2], nans[3]))
        gv = load(g, g_row, ir.VectorType(item, lanes))
        zero = ir.Constant(gv.type, None)
        # positive: a window routes nothing unless its maximum is above 0 (a NaN one never)
        above = builder.and_(builder.fcmp_ordered(">", m, zero), builder.not_(nan))
        routes = builder.select(flags[0], above, ir.Constant(above.type, [1] * lanes))
        wins = [builder.and_(routes, builder.select(nan, n, w)) for n, w in
                zip(_first(builder, nans), _first(builder, [builder.fcmp_ordered("==", v, m) for v in corners]))]
        cells = [builder.select(w, gv, zero) for w in wins]
        store(merge_pairs(builder, cells[0], cells[1], lanes), dx, top)
        store(merge_pairs(builder, cells[2], cells[3], lanes), dx, bottom)
    return chunk


def _mean_chunk(builder):
    def chunk(arrays, item, load, store, top, bottom, y_row, lanes, flags):
        x, out = arrays
        a, b, c, d = _corners(builder, x, load, top, bottom, item, lanes)
        total = builder.fadd(builder.fadd(builder.fadd(a, b), c), d)
        store(builder.fmul(total, ir.Constant(total.type, [0.25] * lanes)), out, y_row)
    return chunk


def _spread_chunk(builder):
    def chunk(arrays, item, load, store, top, bottom, g_row, lanes, flags):
        dx, g = arrays  # dx first: the windows' rows are its rows (_window_rows' x)
        share = builder.fmul(load(g, g_row, ir.VectorType(item, lanes)), ir.Constant(ir.VectorType(item, lanes),
                                                                                      [0.25] * lanes))
        both = merge_pairs(builder, share, share, lanes)
        store(both, dx, top)
        store(both, dx, bottom)
    return chunk


def _offsets(*ints):
    return all(isinstance(t, types.Integer) for t in ints)


def _rows_of_windows(a, b, offsets, chunk, flags=()):
    """The typing of an intrinsic over rows of windows (_window_rows): two arrays of one float
    dtype, six integer offsets, boolean flags; None for other argument types."""
    if not (flat_floats(a, b) and a.dtype == b.dtype and _offsets(*offsets)
            and all(isinstance(f, types.Boolean) for f in flags)):
        return None
    sig = types.none(a, b, *offsets, *flags)
    return sig, lambda context, builder, sig, args: _window_rows(context, builder, sig, args, chunk(builder))


@intrinsic
def max_2x2(typingctx, x, out, x_start, out_start, width, out_width, windows, rows):
    """out[out_start + r out_width + j] = the maximum of window j of window row r (see the
    module docstring), for j < windows, r < rows."""
    return _rows_of_windows(x, out, (x_start, out_start, width, out_width, windows, rows), _max_chunk)


@intrinsic
def route_2x2(typingctx, x, g, dx, x_start, g_start, width, g_width, windows, rows, positive):
    """dx over the window rows r < rows of x: g[g_start + r g_width + j] at the first
    maximum of window j (if above 0, with `positive`), 0 in its other cells (see the
    module docstring)."""
    if not (flat_floats(x, g, dx) and x.dtype == g.dtype == dx.dtype
            and _offsets(x_start, g_start, width, g_width, windows, rows) and isinstance(positive, types.Boolean)):
        return None
    sig = types.none(x, g, dx, x_start, g_start, width, g_width, windows, rows, positive)
    return sig, lambda context, builder, sig, args: _window_rows(context, builder, sig, args, _route_chunk(builder))


@intrinsic
def mean_2x2(typingctx, x, out, x_start, out_start, width, out_width, windows, rows):
    """out[out_start + r out_width + j] = the mean of window j of window row r (see the
    module docstring), for j < windows, r < rows."""
    return _rows_of_windows(x, out, (x_start, out_start, width, out_width, windows, rows), _mean_chunk)


@intrinsic
def spread_2x2(typingctx, dx, g, dx_start, g_start, width, g_width, windows, rows):
    """dx over the window rows r < rows (two rows of `width` each, from dx_start): a quarter
    of g[g_start + r g_width + j] in each cell of window j (see the module docstring)."""
    return _rows_of_windows(dx, g, (dx_start, g_start, width, g_width, windows, rows), _spread_chunk)
