"""Register-blocked sums over the taps of a convolution, written as explicit vectors: the
inner loops of strided.py's direct convolutions.

    tap_sums(x, wk, offs, y, x_at, w_at, offs_at, y_at, length, y_row, outs, taps)
        y[y_at + o*y_row + q] = sum_t wk[w_at + ((o // OUTS)*taps + t)*OUTS + o % OUTS] * x[x_at + offs[offs_at + t] + q]
        for o < outs, q < length
    tap_dots(g, x, offs, acc, g_at, g_row, x_at, offs_at, acc_at, length, outs, taps, images, g_image, x_image)
        acc[acc_at + (o*taps + t)*LANES + lane] += sum over m < images and q = lane (mod lanes) of
        g[g_at + m*g_image + o*g_row + q] * x[x_at + m*x_image + offs[offs_at + t] + q],
        q < length (a multiple of the vector's lanes)

A convolution over one image's (zero-padded) input, read as one flat run per channel, is
for each output channel o and flat output position q a sum over taps t (an input channel
and a kernel offset) of a weight times x at q + offs[t]. tap_sums keeps OUTS output
channels of one vector of positions in registers while it walks the taps: each tap is
one load of x and OUTS multiply-adds with a weight broadcast from memory, so x is read
from cache once per OUTS outputs and the weights, packed [outs // OUTS, taps, OUTS], as
one stream. A row's last position, where one is left over, goes the other way round (`across`):
each position is one vector of the block's OUTS outputs, so a tap is one load of the
block's weights and per position one value of x broadcast and one multiply-add, where
one position at a time had made each tap OUTS scalar loads and multiply-adds. A Winograd
grid of 7 x 7 tiles (a 14x14 image at batch 1: 49 positions, 32 outputs, 32 taps) took
0.79 us against 0.64 for 48 positions so, and 1.01 against 0.75 before (one thread, the
Xeon); in small_cnn's saliency gradient, alternated in one process, the two Winograd passes
36.4 and 40.2 us against 37.2 and 42.4, the same bits. So the packed weights are whole
blocks, zeros past the last output, as the three packers make them. Only a last single
position goes so: taking the last 2 and 4 too added about 3 s to compiling a Winograd
forward and 5 to its input gradient, where tap_sums is inlined.

tap_dots is tap_sums' adjoint with respect to the weights (the weight gradient): DOTS_OUTS x DOTS_TAPS accumulators of lanes, the sums over positions kept per lane in
`acc` (the caller adds the lanes at the end), over a block of images per block of
accumulators: an 8x8 image's run is 5 vectors, too few to pay for loading the block.

Why not im2col and a BLAS call, as conv.py does: for resnet20's stride-2 convolutions
(16 -> 32 channels to 16x16, 32 -> 64 to 8x8, batch 128, two threads) the per-image
GEMMs (M = 32, K = 144, N = 256) ran at 133-164 GFLOP/s with im2col and OpenBLAS's
packing of it on top, 2-3 times the FLOP floor per pass; these loops, reading the planes
in place, ran the forward's arithmetic at 170-215 GFLOP/s.

The vectors are lanes.VECTOR_BYTES wide, loaded and stored unaligned. Multiply-adds are
fused (llvm.fma), taps summed in order, so the sums are those of a loop over t.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from dslc.kernels.geometry import TAP_OUTS
from dslc.runtime.cpu.blas import num_threads
from dslc.runtime.cpu.lanes import VECTOR_BYTES, element_pointer, flat_floats, over_rows, splat

OUTS = TAP_OUTS  # output channels per block of tap_sums (geometry.TAP_OUTS)
DOTS_OUTS, DOTS_TAPS = 4, 6  # tap_dots' block: 24 accumulators of the 32 AVX-512 registers


@njit(cache=True)
def shares(n, c_out, rows):
    """(parts, groups) of a convolution pass by tap_sums over n images into c_out channels,
    with a workspace of `rows` slots: the images split among the slots, and with fewer
    images than threads to run them, each image's output channels too, in `groups` runs of
    whole OUTS blocks (share). A part then sets up its image's input itself (transforms or
    pads it), work the groups repeat, so there are no more groups than threads. The values
    do not depend on the split: each output channel is the same sums in the same order."""
    if n >= rows:
        return rows, 1
    groups = max(1, min(min(rows, num_threads()) // n, -(-c_out // OUTS)))
    return n * groups, groups


@njit(cache=True)
def share(n, c_out, parts, groups, p):
    """Part p's images [lo, hi) and output channels [o0, o1) of `shares`' split."""
    images = parts // groups
    at, g = p // groups, p % groups
    blocks = -(-c_out // OUTS)
    return (n * at // images, n * (at + 1) // images, blocks * g // groups * OUTS,
            min(c_out, blocks * (g + 1) // groups * OUTS))


def lanes_of(itemsize: int) -> int:
    """Lanes of one vector of items of this size."""
    return VECTOR_BYTES // itemsize


def _vector_tools(context, builder, dtype, lanes):
    """(item type, its size, the vector type of `lanes` (the item itself for one), llvm.fma of it)."""
    item = context.get_data_type(dtype)
    size = context.get_abi_sizeof(item)
    kind = ir.VectorType(item, lanes) if lanes > 1 else item
    name = f"llvm.fma.v{lanes}f{8 * size}" if lanes > 1 else f"llvm.fma.f{8 * size}"
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(kind, [kind] * 3), name)
    return item, size, kind, fma


def _arrays(a, b, c, offs):
    """Whether a, b, c are flat float arrays of one dtype and offs an array of uint64: the
    types the intrinsics compile for (any other call fails to type)."""
    return (flat_floats(a, b, c) and a.dtype == b.dtype == c.dtype and isinstance(offs, types.Array)
            and offs.dtype == types.uint64)


def _uints(context, builder, sig, args, first):
    """Arguments first.. as uint64 values."""
    return [context.cast(builder, args[i], sig.args[i], types.uint64) for i in range(first, len(args))]


@intrinsic
def tap_sums(typingctx, x, wk, offs, y, x_at, w_at, offs_at, y_at, length, y_row, outs, taps):
    """See the module docstring."""
    if not _arrays(x, wk, y, offs):
        return None

    def codegen(context, builder, sig, args):
        xd, wd, od, yd = (context.make_array(sig.args[i])(context, builder, args[i]).data for i in range(4))
        dtype = sig.args[0].dtype
        xs, ws, os_, ys, total, row, nouts, ntaps = _uints(context, builder, sig, args, 4)
        const = lambda v: ir.Constant(total.type, v)
        blocks = builder.udiv(builder.add(nouts, const(OUTS - 1)), const(OUTS))
        accs = {}  # lanes -> the accumulators of a chunk of that many positions

        def sums(kind, count, lanes, tap, finish):
            """For each block of OUTS outputs: `count` accumulators of type `kind` from zero,
            tap(slots, w_t, off) at each tap (w_t: where the block's weights for the tap start,
            off: where the tap reads x), then finish(slots, the block's first output)."""
            slots = accs.setdefault(lanes, [cgutils.alloca_once(builder, kind) for _ in range(count)])
            with cgutils.for_range(builder, blocks) as ob:
                for acc in slots:
                    builder.store(ir.Constant(kind, None), acc)
                w_block = builder.add(ws, builder.mul(ob.index, builder.mul(ntaps, const(OUTS))))
                with cgutils.for_range(builder, ntaps) as t:
                    off = builder.load(element_pointer(builder, od, builder.add(os_, t.index), total.type))
                    tap(slots, builder.add(w_block, builder.mul(t.index, const(OUTS))), off)
                finish(slots, builder.mul(ob.index, const(OUTS)))

        def stored(o, at, value, kind, size):
            """value stored at y[ys + o*row + at] if o is one of the outputs."""
            with builder.if_then(builder.icmp_unsigned("<", o, nouts)):
                where = builder.add(builder.add(ys, builder.mul(o, row)), at)
                builder.store(value, element_pointer(builder, yd, where, kind), align=size)

        def chunk(_, q, lanes):
            if lanes == 1:
                return across(q, lanes)
            item, size, kind, fma = _vector_tools(context, builder, dtype, lanes)
            x_q = builder.add(xs, q)

            def tap(slots, w_t, off):
                xv = builder.load(element_pointer(builder, xd, builder.add(x_q, off), kind), align=size)
                for j, acc in enumerate(slots):
                    wv = splat(builder, builder.load(element_pointer(builder, wd, builder.add(w_t, const(j)), item)), lanes)
                    builder.store(builder.call(fma, [wv, xv, builder.load(acc)]), acc)

            def finish(slots, first):
                for j, acc in enumerate(slots):
                    stored(builder.add(first, const(j)), q, builder.load(acc), kind, size)
            sums(kind, OUTS, lanes, tap, finish)

        def across(q, lanes):
            """Columns q to q + lanes (a row's last one), each as one vector of
            the block's OUTS outputs: per tap one load of the block's weights, and per column one
            value of x broadcast, and one multiply-add."""
            item, size, kind, fma = _vector_tools(context, builder, dtype, OUTS)
            x_q = builder.add(xs, q)

            def tap(slots, w_t, off):
                wv = builder.load(element_pointer(builder, wd, w_t, kind), align=size)
                at = builder.add(x_q, off)
                for c, acc in enumerate(slots):
                    xv = splat(builder, builder.load(element_pointer(builder, xd, builder.add(at, const(c)), item)), OUTS)
                    builder.store(builder.call(fma, [wv, xv, builder.load(acc)]), acc)

            def finish(slots, first):
                for c, acc in enumerate(slots):
                    value = builder.load(acc)
                    for j in range(OUTS):
                        stored(builder.add(first, const(j)), builder.add(q, const(c)),
                               builder.extract_element(value, ir.Constant(ir.IntType(32), j)), item, size)
            sums(kind, lanes, -lanes, tap, finish)

        item_size = context.get_abi_sizeof(context.get_data_type(dtype))
        over_rows(builder, const(1), total, lanes_of(item_size), chunk)
        return context.get_dummy_value()

    return types.none(*(x, wk, offs, y, x_at, w_at, offs_at, y_at, length, y_row, outs, taps)), codegen


@intrinsic
def tap_dots(typingctx, g, x, offs, acc, g_at, g_row, x_at, offs_at, acc_at, length, outs, taps, images, g_image,
             x_image):
    """See the module docstring."""
    if not _arrays(g, x, acc, offs):
        return None

    def codegen(context, builder, sig, args):
        gd, xd, od, ad = (context.make_array(sig.args[i])(context, builder, args[i]).data for i in range(4))
        dtype = sig.args[0].dtype
        lanes_n = lanes_of(context.get_abi_sizeof(context.get_data_type(dtype)))
        item, size, kind, fma = _vector_tools(context, builder, dtype, lanes_n)
        gs, grow, xs, os_, acs, total, nouts, ntaps, nimages, g_step, x_step = _uints(context, builder, sig, args, 4)
        const = lambda v: ir.Constant(total.type, v)
        lanes = const(lanes_n)
        slots = [[cgutils.alloca_once(builder, kind) for _ in range(DOTS_TAPS)] for _ in range(DOTS_OUTS)]
        last = lambda n: builder.sub(n, const(1))
        o_blocks = builder.udiv(builder.add(nouts, const(DOTS_OUTS - 1)), const(DOTS_OUTS))
        t_blocks = builder.udiv(builder.add(ntaps, const(DOTS_TAPS - 1)), const(DOTS_TAPS))
        with cgutils.for_range(builder, o_blocks) as ob, cgutils.for_range(builder, t_blocks) as tb:
            # rows past the last output or tap read the last one's (in bounds) and are not stored
            outs_ = [builder.add(builder.mul(ob.index, const(DOTS_OUTS)), const(j)) for j in range(DOTS_OUTS)]
            ts = [builder.add(builder.mul(tb.index, const(DOTS_TAPS)), const(k)) for k in range(DOTS_TAPS)]
            o_in = [builder.icmp_unsigned("<", o, nouts) for o in outs_]
            t_in = [builder.icmp_unsigned("<", t, ntaps) for t in ts]
            g_rows = [builder.add(gs, builder.mul(builder.select(ok, o, last(nouts)), grow)) for o, ok in zip(outs_, o_in)]
            x_taps = [builder.add(xs, builder.load(element_pointer(
                builder, od, builder.add(os_, builder.select(ok, t, last(ntaps))), total.type))) for t, ok in zip(ts, t_in)]
            acc_at = [[builder.add(acs, builder.mul(builder.add(builder.mul(o, ntaps), t), lanes)) for t in ts] for o in outs_]
            for j in range(DOTS_OUTS):
                for k in range(DOTS_TAPS):
                    builder.store(ir.Constant(kind, None), slots[j][k])
            with cgutils.for_range(builder, nimages) as m, \
                    cgutils.for_range_slice(builder, const(0), total, lanes) as (q, _):
                xq, gq = builder.add(q, builder.mul(m.index, x_step)), builder.add(q, builder.mul(m.index, g_step))
                xv = [builder.load(element_pointer(builder, xd, builder.add(at, xq), kind), align=size) for at in x_taps]
                for j in range(DOTS_OUTS):
                    gv = builder.load(element_pointer(builder, gd, builder.add(g_rows[j], gq), kind), align=size)
                    for k in range(DOTS_TAPS):
                        builder.store(builder.call(fma, [gv, xv[k], builder.load(slots[j][k])]), slots[j][k])
            for j in range(DOTS_OUTS):
                for k in range(DOTS_TAPS):
                    with builder.if_then(builder.and_(o_in[j], t_in[k])):
                        ptr = element_pointer(builder, ad, acc_at[j][k], kind)
                        builder.store(builder.fadd(builder.load(ptr, align=size), builder.load(slots[j][k])), ptr,
                                      align=size)
        return context.get_dummy_value()

    return types.none(*(g, x, offs, acc, g_at, g_row, x_at, offs_at, acc_at, length, outs, taps, images, g_image,
                        x_image)), codegen
