"""conv2d forward, input gradient and weight gradient: im2col + GEMM, one image per thread.

3x3 stride-1 ungrouped convolutions with enough channels run by Winograd instead
(dslc/runtime/cpu/winograd.py: the same three entry points); `geometry.uses_winograd`
chooses, where the call is generated (dslc/codegen/externs.py), from the static shapes.

Layouts as in dslc/ops/conv.py: x [N, C, H, W], w [O, C/G, kh, kw], y [N, O, Ho, Wo];
geometry comes from its `Window` (`geometry(attrs, size)`, dslc/kernels/geometry.py),
so `pad=same` with an odd total pads one more at the bottom/right, like the reference.

For one image and a block of its output rows [r0, r1), with P = (r1 - r0) * Wo pixels:

    col [C*kh*kw, P]   col[(c*kh + u)*kw + v, p] = xpad[c, i*sh + u*dh, j*sw + v*dw],  p = (i - r0)*Wo + j
    y_i [O, Ho*Wo]     the image's output (or output gradient): NCHW already is [O, pixels]

    forward      col = im2col(x_i);  y_i[g][:, block] = W_g @ col_g
    grad-input   col_g = W_g^T @ g_i[g][:, block];  dx_i += col2im(col)
    grad-weight  col = im2col(x_i);  dW_g += g_i[g][:, block] @ col_g^T

An undilated convolution runs by strided.py instead, directly from the input's phase
planes: its forward, and its gradients with enough channels or taps (geometry.pass_modules:
measured faster).

Rows of col are channel-major, so group g's rows are one contiguous block, as are its
weights in W.reshape(O, C/G*kh*kw). Because an image's output is already [O, pixels],
the GEMM writes (or reads) it in place: no scatter or gather. Blocks of rows keep col
within a core's L2 cache (geometry.COL_BLOCK elements) from im2col to the GEMM.

Threads: each kernel is a parallel loop over `parts` (the threads, at most N), part p
taking images [N*p/parts, N*(p+1)/parts) with its own slot of the workspace; its GEMMs
are single-threaded BLAS calls (dslc/runtime/cpu/blas.py). The weight gradient sums
each part's images into the part's own partial, then adds the partials in part order,
so the result does not depend on which thread ran first. With fewer images than slots
the input gradient splits each image's sum over channels among the slots instead, and
adds their partial images the same way (conv2d_grad_input). A 1x1 convolution with stride
1 and no padding needs no im2col: x_i itself is col.

The workspace is [parts, slot]: one row per part holding [col block | dW partial, or the
input gradient's partial image] (`workspace_shape`); a slot sized for the largest convolution serves them all. The
number of parts comes from the workspace, not from Numba's thread count (reading that
inside a kernel keeps Numba from caching it). Kernels check the geometry against the array shapes and
raise ValueError on a mismatch instead of reading out of bounds.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from dslc.kernels import geometry as _geometry
from dslc.runtime.cpu.blas import gemm_block
from dslc.runtime.cpu.few_rows import FEW_ROWS
from dslc.runtime.cpu.lanes import u64
from dslc.kernels.geometry import geometry, workspace_shape  # noqa: F401  (the kernels' sizes, re-exported)

_tile_rows = njit(cache=True)(_geometry.tile_rows)
# rows of col (C*kh*kw) below which a part's share of the input gradient goes to few_rows.py's
# loops in blocks of FEW_ROWS (_channel_share), not to sgemm, whose packing pays from about 16
FEW_PRODUCTS = 2 * FEW_ROWS


@njit(cache=True, inline="always")
def rectify(y, at, count):
    """y[at:at + count] = max(y, 0), NaN kept as np.maximum keeps it: the relu a conv2d's
    generated epilogue would apply (dslc/codegen/numba_loops.py), done by the forward
    kernels on output they have just written, instead of a pass over it from memory.
    Flat unsigned indices: no view whose reference count threads would share."""
    start = u64(at)
    for q in range(u64(count)):
        v = y[start + q]
        y[start + q] = 0 if v < 0 else v


# ---- data movement ----------------------------------------------------------------------

@njit(cache=True, inline="always")
def _zero_edges(cf, d0, first, last, w, j0, j1):
    """Zero columns [0, j0) and [j1, w) of rows [first, last) of the col row at cf[d0:], seen as
    [rows, w]: what a long im2col copy of a shifted plane wrapped around its edges."""
    for i in range(first, last):
        for j in range(j0):
            cf[d0 + i * w + j] = 0
        for j in range(j1, w):
            cf[d0 + i * w + j] = 0


@njit(cache=True, inline="always")
def _span(offset, stride, size, count):
    """The j in [0, count) with 0 <= j*stride + offset < size, as a half-open range."""
    lo = 0 if offset >= 0 else (stride - 1 - offset) // stride
    hi = (size - 1 - offset) // stride + 1 if size - 1 - offset >= 0 else 0
    hi = min(hi, count)
    return lo, max(lo, hi)


@njit(cache=True, inline="always")
def _rows_in(r0, r1, u, sh, pt, dh, h):
    """The output rows [ia, ib) within [r0, r1) whose kernel row u reads inside the image."""
    lo, hi = _span(u * dh - pt, sh, h, r1)
    ia = min(max(lo, r0), r1)
    return ia, max(hi, ia)


# The two loops below index flat arrays rather than slicing per output row: every slice
# is a new array view whose reference count lives on the parent's (the workspace's)
# cache line, and two threads updating it thousands of times per image stop scaling.
# The long copies do slice, once per col row, so that they vectorise.

@njit(cache=True)
def _im2col(src, col, r0, r1, kh, kw, sh, sw, pt, pl, dh, dw, wo):
    """Fill col [C*kh*kw, (r1-r0)*wo] from one image src [C, H, W] (zeros where a window is in padding).

    With stride 1 and wo == W (`same` padding) a col row is the image plane shifted by a
    constant, so it is one long vectorised copy whose wrapped-around edge columns are
    then zeroed; otherwise each output row is copied on its own.
    """
    c_in, h, w = src.shape
    flat, cf = src.reshape(-1), col.reshape(-1)
    n = (r1 - r0) * wo
    for c in range(c_in):
        for u in range(kh):
            ia, ib = _rows_in(r0, r1, u, sh, pt, dh, h)
            for v in range(kw):
                d0 = ((c * kh + u) * kw + v) * n
                off = v * dw - pl
                j0, j1 = _span(off, sw, w, wo)
                for q in range(d0, d0 + (ia - r0) * wo):
                    cf[q] = 0
                for q in range(d0 + (ib - r0) * wo, d0 + n):
                    cf[q] = 0
                if ib == ia:
                    continue
                if sh == 1 and sw == 1 and wo == w and j1 > j0:
                    q0, q1 = d0 + (ia - r0) * w + j0, d0 + (ib - r0 - 1) * w + j1
                    s0 = (c * h + ia - pt + u * dh) * w + off + j0
                    seg, part = cf[q0:q1], flat[s0:s0 + q1 - q0]
                    for q in range(seg.size):
                        seg[q] = part[q]
                    _zero_edges(cf, d0, ia - r0, ib - r0, w, j0, j1)
                    continue
                for i in range(ia, ib):
                    b = d0 + (i - r0) * wo
                    start = (c * h + i * sh - pt + u * dh) * w + off
                    for j in range(j0):
                        cf[b + j] = 0
                    for j in range(j0, j1):
                        cf[b + j] = flat[start + j * sw]
                    for j in range(j1, wo):
                        cf[b + j] = 0


@njit(cache=True)
def _col2im(col, dst, r0, r1, kh, kw, sh, sw, pt, pl, dh, dw, wo):
    """dst [C, H, W] += the adjoint of _im2col: each col entry added back where it was read from.

    The stride-1, wo == W case mirrors _im2col's: the edge columns of col (which belong
    to no pixel) are zeroed, then the row is added as one long vectorised span.
    """
    c_in, h, w = dst.shape
    flat, cf = dst.reshape(-1), col.reshape(-1)
    n = (r1 - r0) * wo
    for c in range(c_in):
        for u in range(kh):
            ia, ib = _rows_in(r0, r1, u, sh, pt, dh, h)
            if ib == ia:
                continue
            for v in range(kw):
                d0 = ((c * kh + u) * kw + v) * n
                off = v * dw - pl
                j0, j1 = _span(off, sw, w, wo)
                if sh == 1 and sw == 1 and wo == w and j1 > j0:
                    _zero_edges(cf, d0, ia - r0, ib - r0, w, j0, j1)
                    q0, q1 = d0 + (ia - r0) * w + j0, d0 + (ib - r0 - 1) * w + j1
                    s0 = (c * h + ia - pt + u * dh) * w + off + j0
                    seg, part = flat[s0:s0 + q1 - q0], cf[q0:q1]
                    for q in range(seg.size):
                        seg[q] += part[q]
                    continue
                for i in range(ia, ib):
                    b = d0 + (i - r0) * wo
                    start = (c * h + i * sh - pt + u * dh) * w + off
                    for j in range(j0, j1):
                        flat[start + j * sw] += cf[b + j]


# ---- shared checks ------------------------------------------------------------------------

@njit(cache=True)
def _check(x_shape, w_shape, y_shape, sh, sw, pt, pb, pl, pr, dh, dw, groups):
    """Raise unless y [N, O, Ho, Wo] is conv2d(x [N, C, H, W], w [O, C/G, kh, kw]) for this geometry."""
    n, c, h, wd = x_shape
    o, cg, kh, kw = w_shape
    ho = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    wo = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    if groups <= 0 or c != cg * groups or o % groups != 0:
        raise ValueError("conv2d: channels do not match groups")
    if y_shape[0] != n or y_shape[1] != o or y_shape[2] != ho or y_shape[3] != wo or ho <= 0 or wo <= 0:
        raise ValueError("conv2d: output shape does not match the input, weight and geometry")


@njit(cache=True)
def _plan(workspace, n, k, o, kg, ho, wo, direct):
    """(parts, output rows per block, col elements): a part per workspace row, at most one per
    image, each slot [col block | dW partial]."""
    rows = ho if direct else _tile_rows(k, ho, wo)
    cols = k * rows * wo
    if workspace.shape[1] < cols + o * kg or workspace.shape[0] < 1:
        raise ValueError("conv2d: workspace too small; size it with workspace_shape")
    return min(n, workspace.shape[0]), rows, cols


@njit(cache=True, inline="always")
def _is_direct(kh, kw, sh, sw, pt, pb, pl, pr):
    """A 1x1, stride-1, unpadded convolution: the image itself is the im2col matrix."""
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pb == 0 and pl == 0 and pr == 0


# ---- the kernels -----------------------------------------------------------------------

@njit(cache=True, parallel=True)
def conv2d_forward(x, w, b, out, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace,
                   relu):
    """out = conv2d(x, w) + b (b may be None), NCHW, then max(out, 0) with relu (a fused
    epilogue: rectify); see the module docstring."""
    _check(x.shape, w.shape, out.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    n, c = x.shape[0], x.shape[1]
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    k, hw = c * kh * kw, ho * wo
    kg, og = k // groups, o // groups
    w2 = w.reshape(o, kg)
    direct = _is_direct(kh, kw, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r)
    parts, rows, cols = _plan(workspace, n, k, o, kg, ho, wo, direct)
    flat = out.reshape(-1)
    for p in prange(parts):
        block = workspace[p, :cols]
        for i in range(n * p // parts, n * (p + 1) // parts):
            y = out[i].reshape(o, hw)
            for r0 in range(0, ho, rows):
                r1 = min(ho, r0 + rows)
                if direct:
                    col = x[i].reshape(k, hw)
                else:
                    col = block[:k * (r1 - r0) * wo].reshape(k, (r1 - r0) * wo)
                    _im2col(x[i], col, r0, r1, kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, wo)
                for g in range(groups):
                    gemm_block(w2[g * og:(g + 1) * og], col[g * kg:(g + 1) * kg],
                               y[g * og:(g + 1) * og, r0 * wo:r1 * wo], False, False, False)
            if b is not None:
                for oi in range(o):
                    y[oi] += b[oi]
            if relu:
                rectify(flat, i * o * hw, o * hw)


@njit(cache=True, parallel=True)
def conv2d_grad_input(g, w, dx, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace):
    """dx = the transposed convolution of g by w (the registry's conv2d_grad_input).

    With fewer images than slots (a saliency map's first layer: one image, 32 -> 1
    channels), each image's sum over g's channels is split instead (_channel_share): part p
    takes a run of the channels into a partial dx of its own, and the partials are added in
    part order. Each thread then reads only the channels of g it wrote itself in the
    backward before (a max pool's, split by planes). Read whole by one thread, half of g
    came from the other core, and that core's next write of it had to take the lines back.
    Timed in small_cnn's saliency gradient at batch 1, old and new alternately in one
    process (2026-12-07): where the EPYC's two vCPUs sat apart (a cache line's round trip
    310-420 ns) the step took 197 us against 222, the max pool's backward 9.5 against 35.8
    and this gradient 12.4 against 11.5; where they shared a cache (50-110 ns) 139 against
    138. On one thread the parts run in turn: 12.5 us against 7.1 (the step 207 against 202)."""
    _check(dx.shape, w.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    n, o, k = dx.shape[0], w.shape[0], dx.shape[1] * w.shape[2] * w.shape[3]
    direct = _is_direct(w.shape[2], w.shape[3], stride_h, stride_w, pad_t, pad_b, pad_l, pad_r)
    parts, rows, cols = _plan(workspace, n, k, o, k // groups, g.shape[2], g.shape[3], direct)
    slots, plane = workspace.shape[0], dx[0].size
    split = parts < slots and groups == 1 and not direct and o >= 2 * slots and workspace.shape[1] >= cols + n * plane
    if parts == 1 and not split:  # a parallel loop of one part still starts the threads (1.45 us on the EPYC)
        _grad_input_part(g, w, dx, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, groups, workspace, direct,
                         np.int64(0))
        return
    count = slots if split else parts
    for p in prange(count):  # one loop for both: compiling the kernel took 12.2 s with two, 9.3 with one
        if split:
            _channel_share(g, w, workspace, np.int64(p), slots, rows, cols, dx.shape[1:], stride_h, stride_w, pad_t,
                           pad_l, dil_h, dil_w)
        else:
            _grad_input_part(g, w, dx, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, groups, workspace, direct,
                             np.int64(p))
    if split:
        for i in range(n):
            sum_parts(workspace, cols + i * plane, plane, slots, dx[i].reshape(-1))


@njit(cache=True)
def _grad_input_part(g, w, dx, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, groups, workspace, direct, p):
    """Part p's images of conv2d_grad_input: w^T @ g per block of output rows, then col2im
    (or straight into dx for a 1x1 convolution, whose col is the image)."""
    n, c = dx.shape[0], dx.shape[1]
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = g.shape[2], g.shape[3]
    k, hw = c * kh * kw, ho * wo
    kg, og = k // groups, o // groups
    w2 = w.reshape(o, kg)
    parts, rows, cols = _plan(workspace, n, k, o, kg, ho, wo, direct)
    block = workspace[p, :cols]
    for i in range(n * p // parts, n * (p + 1) // parts):
        gi = g[i].reshape(o, hw)
        if direct:
            col = dx[i].reshape(k, hw)
            for grp in range(groups):
                gemm_block(w2[grp * og:(grp + 1) * og], gi[grp * og:(grp + 1) * og],
                           col[grp * kg:(grp + 1) * kg], True, False, False)
            continue
        dx[i][:] = 0
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            col = block[:k * (r1 - r0) * wo].reshape(k, (r1 - r0) * wo)
            for grp in range(groups):
                gemm_block(w2[grp * og:(grp + 1) * og], gi[grp * og:(grp + 1) * og, r0 * wo:r1 * wo],
                           col[grp * kg:(grp + 1) * kg], True, False, False)
            _col2im(col, dx[i], r0, r1, kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, wo)


@njit(cache=True)
def _channel_share(g, w, workspace, p, slots, rows, cols, dx_shape, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w):
    """Part p's run of g's channels [o0, o1) of each image's input gradient (ungrouped, not
    1x1 direct), into partial images at workspace[p, cols:], one after another: w[o0:o1]^T @ g
    per block of output rows, then col2im.

    The product's rows are the part's weights transposed, so that below FEW_PRODUCTS rows
    gemm_block gives blocks of at most FEW_ROWS of them to few_rows.py's loops, not to sgemm:
    run on both threads at once right after small_cnn's first max pool backward, where the
    EPYC's vCPUs sat apart, sgemm (and taps.tap_sums) left that backward taking 19.7-28.9 us
    against 7.2 after few_rows (7.4 alone), for reasons not found; all read only the part's
    own channels of g. few_rows also took 10.2 us for both parts against 10.9 for loops of
    this module's own (one thread: 9.4 against 11.5)."""
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = g.shape[2], g.shape[3]
    c, h, wd = dx_shape
    k, plane = c * kh * kw, c * h * wd
    o0, o1 = o * p // slots, o * (p + 1) // slots
    w2 = w.reshape(o, k)
    w_t = np.empty((k, o1 - o0), w.dtype)
    for r in range(k):
        for t in range(o1 - o0):
            w_t[r, t] = w2[o0 + t, r]
    blocks = -(-k // FEW_ROWS) if k < FEW_PRODUCTS else 1
    for i in range(g.shape[0]):
        gi = g[i].reshape(o, ho * wo)
        partial = workspace[p, cols + i * plane:cols + (i + 1) * plane]
        partial[:] = 0
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            col = workspace[p, :k * (r1 - r0) * wo].reshape(k, (r1 - r0) * wo)
            for b in range(blocks):
                lo, hi = k * b // blocks, k * (b + 1) // blocks
                gemm_block(w_t[lo:hi], gi[o0:o1, r0 * wo:r1 * wo], col[lo:hi], False, False, False)
            _col2im(col, partial.reshape(c, h, wd), r0, r1, kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
                    wo)


@njit(cache=True, parallel=True)
def conv2d_grad_weight(g, x, dw, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace):
    """dw = sum over images and pixels of g x window^T. (A bias's gradient is the graph's own
    sum over (N, Ho, Wo), a generated kernel: dslc/ops/conv.py.)"""
    _check(x.shape, dw.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    n, c = x.shape[0], x.shape[1]
    o, kh, kw = dw.shape[0], dw.shape[2], dw.shape[3]
    ho, wo = g.shape[2], g.shape[3]
    k, hw = c * kh * kw, ho * wo
    kg, og = k // groups, o // groups
    direct = _is_direct(kh, kw, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r)
    parts, rows, cols = _plan(workspace, n, k, o, kg, ho, wo, direct)
    for p in prange(parts):
        block = workspace[p, :cols]
        partial = workspace[p, cols:cols + o * kg].reshape(o, kg)
        first = True
        for i in range(n * p // parts, n * (p + 1) // parts):
            gi = g[i].reshape(o, hw)
            for r0 in range(0, ho, rows):
                r1 = min(ho, r0 + rows)
                if direct:
                    col = x[i].reshape(k, hw)
                else:
                    col = block[:k * (r1 - r0) * wo].reshape(k, (r1 - r0) * wo)
                    _im2col(x[i], col, r0, r1, kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, wo)
                for grp in range(groups):
                    gemm_block(gi[grp * og:(grp + 1) * og, r0 * wo:r1 * wo], col[grp * kg:(grp + 1) * kg],
                               partial[grp * og:(grp + 1) * og], False, True, not first)
                first = False
    sum_parts(workspace, cols, o * kg, parts, dw.reshape(-1))


@njit(cache=True)
def sum_parts(workspace, at, size, parts, out):
    """out (flat, `size`) = the sum of the parts' partials workspace[p, at:at + size], added
    in part order: the same sum whichever thread finished first. out may be part 0's own."""
    out[:] = workspace[0, at:at + size]
    for p in range(1, parts):
        out += workspace[p, at:at + size]

