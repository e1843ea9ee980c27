"""Signed sums of runs of one flat array, written as explicit vectors: the passes the Winograd
transforms are made of (winograd.py), and the unsigned index the phase planes use too
(phases.py).

    apply = signed_sums(matrix)        # matrix [outputs, inputs] of -1, 0, 1; once, at import
    apply(f, n, ins, outs)             # f[outs[j] + q] = sum_i matrix[j, i] f[ins[i] + q], q < n

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
the last n % lanes tiles go one at a time. Each output is its terms added left to right,
as a loop would, and a coefficient of 1 or -1 is an addition or a subtraction, no
multiply, so the sums are those of the scalar formula.

Every offset is unsigned (`u64`): Numba tests a signed index for wrap-around on every
access, which keeps LLVM from vectorising a loop, and slicing instead would touch the
parent array's reference count, which the threads share.
"""
from __future__ import annotations

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
    sum_i matrix[j][i] f[ins[i] + q]: f a flat float array, ins and outs uint64 arrays of
    the matrix's inputs and outputs (their first that many entries are read)."""
    rows = tuple(tuple(int(c) for c in row) for row in np.asarray(matrix))
    if any(c not in (-1, 0, 1) for row in rows for c in row):
        raise ValueError("signed_sums: coefficients must be -1, 0 or 1")

    @intrinsic
    def apply(typingctx, f, n, ins, outs):
        if not (isinstance(f, types.Array) and isinstance(f.dtype, types.Float) and f.ndim == 1
                and isinstance(n, types.Integer) and all(isinstance(a, types.Array) and a.dtype == types.uint64
                                                         for a in (ins, outs))):
            return None

        def codegen(context, builder, sig, args):
            array = lambda i: context.make_array(sig.args[i])(context, builder, args[i]).data
            data, starts, dests = array(0), array(2), array(3)
            item = context.get_data_type(f.dtype)
            size = context.get_abi_sizeof(item)
            offset = lambda at, i: builder.load(builder.gep(at, [ir.Constant(ir.IntType(64), i)]))
            ins_at = [offset(starts, i) for i in range(len(rows[0]))]
            outs_at = [offset(dests, j) for j in range(len(rows))]
            total = context.cast(builder, args[1], n, types.uint64)
            lanes = ir.Constant(total.type, VECTOR_BYTES // size)
            whole = builder.mul(builder.udiv(total, lanes), lanes)

            def step(q, kind):
                at = lambda start: builder.bitcast(builder.gep(data, [builder.add(start, q)], inbounds=True),
                                                   kind.as_pointer())
                values = [builder.load(at(start), align=size) for start in ins_at]
                for row, dest in zip(rows, outs_at):
                    builder.store(_signed_sum(builder, row, values, kind), at(dest), align=size)

            zero, one = ir.Constant(total.type, 0), ir.Constant(total.type, 1)
            with cgutils.for_range_slice(builder, zero, whole, lanes) as (q, _):
                step(q, ir.VectorType(item, VECTOR_BYTES // size))
            with cgutils.for_range_slice(builder, whole, total, one) as (q, _):
                step(q, item)
            return context.get_dummy_value()

        return types.none(f, n, ins, outs), codegen

    return apply


def _signed_sum(builder, row, values, kind):
    """The sum of values[i] * row[i] (row of -1, 0, 1), left to right; zero if row is."""
    total = None
    for c, v in zip(row, values):
        if c and total is None:
            total = v if c == 1 else builder.fneg(v)
        elif c:
            total = builder.fadd(total, v) if c == 1 else builder.fsub(total, v)
    return ir.Constant(kind, None) if total is None else total
