"""Passes over runs of one flat array, written as explicit vectors: the signed sums the
Winograd transforms are made of and the split of rows into column pairs and back
(winograd.py, and strided.py's phase planes), and the unsigned index they all use.

    apply = signed_sums(matrix)                 # matrix [outputs, inputs] of -1, 0, 1; at import
    apply(f, n, ins, outs)                      # f[outs[j] + q] = sum_i matrix[j, i] f[ins[i] + q]
                                                # for q < n; ins, outs: tuples of uint64 offsets
    deinterleave(src, start, src_step, f, even, odd, step, n, rows)  # rows' n column pairs into
    interleave(y, start, y_step, f, even, odd, step, n, rows, add)   # two runs each, and back

A transform maps the 16 (or 4) values of each Winograd tile to 16 (or 4) others, and the
tiles lie in runs: entry i of every tile is one run of f starting at ins[i]. `apply` loads a
vector of each input run, forms every output from them and stores it, then moves on a
vector of tiles: one pass reads each input once. Written as loops, the same map needed one
pass per output (`f[dst + q] = c0 f[s0 + q] + ...`), each re-reading its inputs, because
LLVM's loop vectoriser must prove that a store does not overwrite a later load, and with
16 output runs and 16 input runs at run-time offsets in one array that takes hundreds of
run-time overlap tests: it gives up and leaves the loop scalar. The input transform of a
32x32 channel ran 2.3 times faster this way, of an 8x8 one 3.2 times. The caller
promises what the tests would have checked: no output run overlaps an input run.

The vectors are 64 bytes (16 float32 or 8 float64 lanes: one AVX-512 register, two AVX2
ones, which LLVM splits them into where AVX-512 is missing), loaded and stored unaligned;
the last n % lanes tiles go as one masked vector (masked_load, masked_store): one at
a time, the 8 tiles past a 14x14 image's 48 had cost twice what its 48 did. Each output is its terms added left to right,
as a loop would, and a coefficient of 1 or -1 is an addition or a subtraction, no
multiply, so the sums are those of the scalar formula.

Every offset is unsigned (`u64`): Numba tests a signed index for wrap-around on every
access, which keeps LLVM from vectorising a loop, and slicing instead would touch the
parent array's reference count, which the threads share.
"""
from __future__ import annotations

from dslc.runtime.cpu import kernel_cache  # noqa: F401  (drops the package's stale cached kernels first)

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

VECTOR_BYTES = 64


@njit(cache=True, inline="always")
def u64(v):
    """v as an unsigned index (see the module docstring)."""
    return np.uint64(v)


def like(f, v):
    """v as a number of f's dtype (a bias added in float32 stays float32)."""
    return f.dtype.type(v)


@overload(like, inline="always")
def _like_impl(f, v):
    kind = as_dtype(f.dtype).type
    return lambda f, v: kind(v)


def signed_sums(matrix):
    """A Numba intrinsic apply(f, n, ins, outs) computing, for q < n, f[outs[j] + q] =
    sum_i matrix[j][i] f[ins[i] + q]: f a flat float array, ins and outs tuples of uint64
    offsets, one per input and one per output of the matrix."""
    rows = tuple(tuple(int(c) for c in row) for row in np.asarray(matrix))
    if any(c not in (-1, 0, 1) for row in rows for c in row):
        raise ValueError("signed_sums: coefficients must be -1, 0 or 1")

    @intrinsic
    def apply(typingctx, f, n, ins, outs):
        offsets = lambda t, size: isinstance(t, types.UniTuple) and t.dtype == types.uint64 and len(t) == size
        if not (flat_floats(f) and isinstance(n, types.Integer) and offsets(ins, len(rows[0]))
                and offsets(outs, len(rows))):
            return None

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            item = context.get_data_type(f.dtype)
            size = context.get_abi_sizeof(item)
            ins_at = [builder.extract_value(args[2], i) for i in range(len(rows[0]))]
            outs_at = [builder.extract_value(args[3], j) for j in range(len(rows))]
            total = context.cast(builder, args[1], n, types.uint64)
            lanes = ir.Constant(total.type, VECTOR_BYTES // size)
            whole = builder.mul(builder.udiv(total, lanes), lanes)

            kind = ir.VectorType(item, VECTOR_BYTES // size)

            def step(q, masks):
                load, store = run_access(builder, size, masks)
                values = [load(data, builder.add(start, q), kind) for start in ins_at]
                for row, dest in zip(rows, outs_at):
                    store(_signed_sum(builder, row, values, kind), data, builder.add(dest, q))

            with cgutils.for_range_slice(builder, ir.Constant(total.type, 0), whole, lanes) as (q, _):
                step(q, {})
            rest = builder.sub(total, whole)
            with builder.if_then(builder.icmp_unsigned("!=", rest, ir.Constant(total.type, 0))):
                step(whole, {kind.count: lane_mask(builder, rest, kind.count)})
            return context.get_dummy_value()

        return types.none(f, n, ins, outs), codegen

    return apply


def _pairs_codegen(interleave):
    """The code of `deinterleave` or `interleave` (below), whose arguments are the array of
    pairs, where the first row of them starts, the step from row to row, the array of the two
    runs, where each starts, their step from row to row, the pairs in a row, the rows (and
    for `interleave` what to add). In each row, runs of `lanes` pairs move as one load of
    2 * lanes values and two shuffles (or two loads and one shuffle), then the rest of the
    row as one masked run (over_rows). One call does a block of rows: a call per row of 8
    to 16 pairs cost more in loop set-up than in moving them."""
    def codegen(context, builder, sig, args):
        pairs, singles = (context.make_array(sig.args[i])(context, builder, args[i]).data for i in (0, 3))
        item = context.get_data_type(sig.args[0].dtype)
        size = context.get_abi_sizeof(item)
        first_pair, pair_step, first_one, first_two, single_step, total, rows = (
            context.cast(builder, args[i], sig.args[i], types.uint64) for i in (1, 2, 4, 5, 6, 7, 8))
        add = context.cast(builder, args[9], sig.args[9], sig.args[0].dtype) if interleave else None
        const = lambda v: ir.Constant(total.type, v)

        def chunk(pair_start, one_start, two_start, m, lanes, valid):
            kind = ir.VectorType(item, lanes) if lanes > 1 else item
            wide = ir.VectorType(item, 2 * lanes)
            at_pair = builder.add(pair_start, builder.add(m, m))
            at_one, at_two = builder.add(one_start, m), builder.add(two_start, m)
            load, store = run_access(builder, size, pair_masks(builder, lanes, valid))
            if interleave:
                a = builder.fadd(load(singles, at_one, kind), splat(builder, add, lanes))
                b = builder.fadd(load(singles, at_two, kind), splat(builder, add, lanes))
                if lanes == 1:
                    store(a, pairs, at_pair)
                    store(b, pairs, builder.add(at_pair, const(1)))
                else:
                    store(merge_pairs(builder, a, b, lanes), pairs, at_pair)
                return
            if lanes == 1:
                a = load(pairs, at_pair, item)
                b = load(pairs, builder.add(at_pair, const(1)), item)
            else:
                a, b = split_pairs(builder, load(pairs, at_pair, wide), lanes)
            store(a, singles, at_one)
            store(b, singles, at_two)

        def row_chunk(row, m, lanes, valid):
            chunk(*(builder.add(first, builder.mul(row, step)) for first, step in
                    ((first_pair, pair_step), (first_one, single_step), (first_two, single_step))), m, lanes, valid)

        over_rows(builder, rows, total, VECTOR_BYTES // size, row_chunk, masked=True)
        return context.get_dummy_value()
    return codegen


def over_rows(builder, rows, total, widest, chunk, masked=False):
    """chunk(row, m, lanes) for every row < rows, covering m in [0, total) of each: runs of
    `widest` lanes, then at most one run of half as many, and so on down to one lane (a row
    of 15 takes 8 + 4 + 2 + 1). rows and total are uint64 values; so are row and m.

    With `masked`, what a row has left after its whole runs is one run instead, of the
    fewest lanes (a power of two) that hold it, called chunk(row, m, lanes, valid) with
    `valid` the lanes in use (a uint64; None for a whole run or a single lane): a row of 14
    takes one run of 16 lanes, 14 of them valid, which the chunk loads and stores under
    lane_mask(valid) (masked_load, masked_store). Rows of a few vectors spent most of their
    time in the short runs: the 2x2 max pool's backward on rows of 14 and 7 windows took
    4 times as long per element as on rows of 16."""
    const = lambda v: ir.Constant(total.type, v)
    whole = builder.mul(builder.udiv(total, const(widest)), const(widest))
    run = (lambda row, m, lanes: chunk(row, m, lanes, None)) if masked else chunk
    with cgutils.for_range(builder, rows) as row:
        with cgutils.for_range_slice(builder, const(0), whole, const(widest)) as (m, _):
            run(row.index, m, widest)
        if masked:
            _rest(builder, row.index, whole, builder.sub(total, whole), widest, chunk)
        else:
            _shorter_runs(builder, row.index, whole, total, widest, chunk)


def _shorter_runs(builder, row, m, total, lanes, chunk):
    """over_rows's runs past the whole ones: at most one of each half width, down to one lane."""
    const = lambda v: ir.Constant(total.type, v)
    while lanes > 1:
        lanes //= 2
        room = builder.icmp_unsigned(">=", builder.sub(total, m), const(lanes))
        with builder.if_then(room):
            chunk(row, m, lanes)
        m = builder.select(room, builder.add(m, const(lanes)), m)


def _rest(builder, row, m, rest, lanes, chunk):
    """The masked run of over_rows covering `rest` < `lanes` values from m, if any."""
    const = lambda v: ir.Constant(rest.type, v)
    if lanes == 1:
        with builder.if_then(builder.icmp_unsigned("!=", rest, const(0))):
            chunk(row, m, 1, None)
        return
    with builder.if_else(builder.icmp_unsigned(">", rest, const(lanes // 2))) as (fits, fewer):
        with fits:
            chunk(row, m, lanes, rest)
        with fewer:
            _rest(builder, row, m, rest, lanes // 2, chunk)


def lane_mask(builder, valid, lanes):
    """The <lanes x i1> mask of lanes i < valid (a uint64)."""
    index = ir.VectorType(valid.type, lanes)
    return builder.icmp_unsigned("<", ir.Constant(index, list(range(lanes))), splat(builder, valid, lanes))


def _masked(builder, name, kind, args):
    """A call of LLVM's masked load or store intrinsic on vectors of type `kind`."""
    element = "f32" if kind.element == ir.FloatType() else "f64"
    result = kind if name == "load" else ir.VoidType()
    types_ = [a.type for a in args]
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, types_),
                                        f"llvm.masked.{name}.v{kind.count}{element}.p0")
    return builder.call(fn, args)


def masked_load(builder, pointer, kind, mask, align):
    """The vector of type `kind` at `pointer`, its lanes outside `mask` zero and never read."""
    return _masked(builder, "load", kind, [pointer, ir.Constant(ir.IntType(32), align), mask, ir.Constant(kind, None)])


def masked_store(builder, value, pointer, mask, align):
    """Store the lanes of `value` inside `mask` at `pointer`; memory under the others is untouched."""
    _masked(builder, "store", value.type, [value, pointer, ir.Constant(ir.IntType(32), align), mask])


def pair_masks(builder, lanes, valid):
    """The masks of a run of `lanes` pairs of which `valid` are in use (over_rows's masked
    run): its vectors of one value per pair, and of both values of each pair; none (every
    lane in use) where valid is None."""
    if valid is None:
        return {}
    return {lanes: lane_mask(builder, valid, lanes), 2 * lanes: lane_mask(builder, builder.add(valid, valid), 2 * lanes)}


def run_access(builder, size, masks):
    """load(base, at, kind) and store(value, base, at): a value at element `at` of the array
    data `base`, aligned to `size` bytes; a vector whose lane count has a mask in `masks`
    moves under it (masked_load, masked_store), anything else whole."""
    def load(base, at, kind):
        pointer = element_pointer(builder, base, at, kind)
        if isinstance(kind, ir.VectorType) and kind.count in masks:
            return masked_load(builder, pointer, kind, masks[kind.count], size)
        return builder.load(pointer, align=size)

    def store(value, base, at):
        pointer = element_pointer(builder, base, at, value.type)
        if isinstance(value.type, ir.VectorType) and value.type.count in masks:
            masked_store(builder, value, pointer, masks[value.type.count], size)
        else:
            builder.store(value, pointer, align=size)
    return load, store


def element_pointer(builder, base, at, kind):
    """A pointer of type kind* to element `at` of the array data `base`."""
    return builder.bitcast(builder.gep(base, [at], inbounds=True), kind.as_pointer())


def split_pairs(builder, both, lanes):
    """(even lanes, odd lanes) of the 2 * lanes vector `both`: the two values of each pair apart."""
    return tuple(builder.shuffle_vector(both, both, shuffle_mask([2 * i + k for i in range(lanes)])) for k in (0, 1))


def merge_pairs(builder, a, b, lanes):
    """The 2 * lanes vector a0 b0 a1 b1 ...: split_pairs undone."""
    return builder.shuffle_vector(a, b, shuffle_mask([i // 2 + lanes * (i % 2) for i in range(2 * lanes)]))


def shuffle_mask(order):
    """A constant shuffle mask."""
    return ir.Constant(ir.VectorType(ir.IntType(32), len(order)), order)


def splat(builder, value, lanes):
    """`value` in every one of `lanes` lanes (itself for one lane)."""
    if lanes == 1:
        return value
    kind = ir.VectorType(value.type, lanes)
    one = builder.insert_element(ir.Constant(kind, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, one, shuffle_mask([0] * lanes))


def flat_floats(*arrays):
    """Whether each Numba type is a one-dimensional float array."""
    return all(isinstance(a, types.Array) and isinstance(a.dtype, types.Float) and a.ndim == 1 for a in arrays)


@intrinsic
def deinterleave(typingctx, src, start, src_step, f, even, odd, step, n, rows):
    """f[even + r*step + m] = src[start + r*src_step + 2m] and f[odd + r*step + m] =
    src[start + r*src_step + 2m + 1] for m < n, r < rows: the even and odd columns of `rows`
    rows into two runs each (the runs must not overlap the rows)."""
    if not (flat_floats(src, f) and f.dtype == src.dtype):
        return None
    return types.none(src, start, src_step, f, even, odd, step, n, rows), _pairs_codegen(False)


@intrinsic
def interleave(typingctx, y, start, y_step, f, even, odd, step, n, rows, add):
    """y[start + r*y_step + 2m] = f[even + r*step + m] + add and y[start + r*y_step + 2m + 1] =
    f[odd + r*step + m] + add for m < n, r < rows: two runs merged into each row's even and
    odd columns."""
    if not (flat_floats(y, f) and y.dtype == f.dtype):
        return None
    return types.none(y, start, y_step, f, even, odd, step, n, rows, add), _pairs_codegen(True)


def _signed_sum(builder, row, values, kind):
    """The sum of values[i] * row[i] (row of -1, 0, 1), left to right; zero if row is."""
    total = None
    for c, v in zip(row, values):
        if c and total is None:
            total = v if c == 1 else builder.fneg(v)
        elif c:
            total = builder.fadd(total, v) if c == 1 else builder.fsub(total, v)
    return ir.Constant(kind, None) if total is None else total
