"""conv2d forward, input gradient and weight/bias gradient: im2col + GEMM, one image per thread.

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

A strided convolution whose input splits into phase planes as wide as its output
(geometry.phased: a 3x3 stride-2 convolution padded 1, a 1x1 stride-2 one, on even
sizes) reads each channel through them: P[ph, pw][r, q] = x[c, r*sh + ph, q*sw + pw], so
tap (u, v) of every output pixel is one plane shifted by whole rows and columns, and a
col row is again one long copy (then its edge columns zeroed), not a strided gather per
output row; the input gradient adds col rows into the planes and scatters them back
once. Only the phases some tap reads are split (a 1x1 stride-2 convolution reads one). On
resnet20's 16 -> 32 stride-2 convolution at batch 128 (two threads) this took the forward
from 4.7 to 3.1 ms, the input gradient from 4.1 to 2.9 and the weight gradient from 4.7
to 3.3.

Rows of col are channel-major, so group g's rows are one contiguous block, as are its
weights in W.reshape(O, C/G*kh*kw). Because an image's output is already [O, pixels],
the GEMM writes (or reads) it in place: no scatter or gather. Blocks of rows keep col
within a core's L2 cache (geometry.COL_BLOCK elements) from im2col to the GEMM.

Threads: each kernel is a parallel loop over `parts` (the threads, at most N), part p
taking images [N*p/parts, N*(p+1)/parts) with its own slot of the workspace; its GEMMs
are single-threaded BLAS calls (dslc/runtime/cpu/blas.py). The weight gradient sums
each part's images into the part's own partial, then adds the partials in part order,
so the result does not depend on which thread ran first. A 1x1 convolution with stride
1 and no padding needs no im2col: x_i itself is col.

The workspace is [parts, slot]: one row per part holding [col block | dW partial |
phase planes] (`workspace_shape`); a slot sized for the largest convolution serves them all. The
number of parts comes from the workspace, not from Numba's thread count (reading that
inside a kernel keeps Numba from caching it). Kernels check the geometry against the array shapes and
raise ValueError on a mismatch instead of reading out of bounds.
"""
from __future__ import annotations

from numba import njit, prange

from dslc.kernels import geometry as _geometry
from dslc.runtime.cpu.blas import gemm_block
from dslc.runtime.cpu.lanes import u64
from dslc.kernels.geometry import geometry, workspace_shape  # noqa: F401  (the kernels' sizes, re-exported)

_tile_rows = njit(cache=True)(_geometry.tile_rows)
_phased = njit(cache=True)(_geometry.phased)


# ---- data movement ----------------------------------------------------------------------

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


@njit(cache=True, inline="always")
def _zero_edges(cf, d0, first, last, w, j0, j1):
    """Zero columns [0, j0) and [j1, w) of rows [first, last) of the col row at cf[d0:], seen as [rows, w]."""
    for i in range(first, last):
        for j in range(j0):
            cf[d0 + i * w + j] = 0
        for j in range(j1, w):
            cf[d0 + i * w + j] = 0


@njit(cache=True, inline="always")
def _phase_taps(u, v, pt, pl, sh, sw, r0, r1, hp, wo):
    """Where tap (u, v) reads in the phase planes for output rows [r0, r1): the plane's
    offset (in planes of hp x wo), the shift (di, dj) in plane rows and columns, the rows
    [ia, ib) and the columns [j0, j1) that read inside the image."""
    a, b = u - pt, v - pl
    di, dj = a // sh, b // sw  # floor division: a tap above or left of the image shifts by -1
    ia = min(max(r0, -di), r1)
    ib = max(ia, min(r1, hp - di))
    j0, j1 = max(0, -dj), min(wo, wo - dj)
    return ((a % sh) * sw + b % sw) * hp * wo, di, dj, ia, ib, j0, max(j0, j1)


@njit(cache=True, inline="always")
def _tapped(ph, pw, kh, kw, pt, pl, sh, sw):
    """Whether a tap reads phase (ph, pw): tap u reads row phase (u - pt) mod sh, so the
    first that reads ph is (ph + pt) mod sh (a 1x1 stride-2 convolution reads one phase)."""
    return (ph + pt) % sh < kh and (pw + pl) % sw < kw


@njit(cache=True)
def _split_phases(flat, at, h, w, sh, sw, planes, kh, kw, pt, pl):
    """planes[(ph*sw + pw)*hp*wp + r*wp + q] = flat[at + (r*sh + ph)*w + q*sw + pw]: one
    channel (h x w at flat[at:]) as its sh*sw phase planes of hp x wp = h/sh x w/sw (those
    a tap reads)."""
    hp, wp = h // sh, w // sw
    for ph in range(sh):
        for pw in range(sw):
            if not _tapped(ph, pw, kh, kw, pt, pl, sh, sw):
                continue
            for r in range(hp):
                dst, src = u64((ph * sw + pw) * hp * wp + r * wp), u64(at + (r * sh + ph) * w + pw)
                for q in range(u64(wp)):
                    planes[dst + q] = flat[src + q * u64(sw)]


@njit(cache=True)
def _merge_phases(planes, flat, at, h, w, sh, sw, kh, kw, pt, pl):
    """flat[at:] (one channel, h x w) += its phase planes: the adjoint of _split_phases."""
    hp, wp = h // sh, w // sw
    for ph in range(sh):
        for pw in range(sw):
            if not _tapped(ph, pw, kh, kw, pt, pl, sh, sw):
                continue
            for r in range(hp):
                src, dst = u64((ph * sw + pw) * hp * wp + r * wp), u64(at + (r * sh + ph) * w + pw)
                for q in range(u64(wp)):
                    flat[dst + q * u64(sw)] += planes[src + q]


@njit(cache=True)
def _im2col_phased(src, col, r0, r1, kh, kw, sh, sw, pt, pl, wo, planes):
    """_im2col for a `phased` convolution: per channel, its phase planes, then each col row
    as one long copy from its plane, shifted, with the rows and edge columns that read
    padding zeroed."""
    c_in, h, w = src.shape
    flat, cf = src.reshape(-1), col.reshape(-1)
    n, hp = (r1 - r0) * wo, h // sh
    for c in range(c_in):
        _split_phases(flat, c * h * w, h, w, sh, sw, planes, kh, kw, pt, pl)
        for u in range(kh):
            for v in range(kw):
                at, di, dj, ia, ib, j0, j1 = _phase_taps(u, v, pt, pl, sh, sw, r0, r1, hp, wo)
                d0 = ((c * kh + u) * kw + v) * n
                if j1 == j0:  # every column reads padding
                    ia = ib
                for q in range(u64((ia - r0) * wo)):
                    cf[u64(d0) + q] = 0
                for q in range(u64((r1 - ib) * wo)):
                    cf[u64(d0 + (ib - r0) * wo) + q] = 0
                if ib == ia:
                    continue
                q0, q1 = d0 + (ia - r0) * wo + j0, d0 + (ib - r0 - 1) * wo + j1
                s0 = u64(at + (ia + di) * wo + j0 + dj)
                for q in range(u64(q1 - q0)):
                    cf[u64(q0) + q] = planes[s0 + q]
                _zero_edges(cf, d0, ia - r0, ib - r0, wo, j0, j1)


@njit(cache=True)
def _col2im_phased(col, dst, r0, r1, kh, kw, sh, sw, pt, pl, wo, planes):
    """_col2im for a `phased` convolution: per channel, the col rows added into its phase
    planes (each one long span, its edge columns zeroed first), then the planes into dst."""
    c_in, h, w = dst.shape
    flat, cf = dst.reshape(-1), col.reshape(-1)
    n, hp = (r1 - r0) * wo, h // sh
    for c in range(c_in):
        for q in range(u64(h * w)):
            planes[q] = 0
        for u in range(kh):
            for v in range(kw):
                at, di, dj, ia, ib, j0, j1 = _phase_taps(u, v, pt, pl, sh, sw, r0, r1, hp, wo)
                if ib == ia or j1 == j0:
                    continue
                d0 = ((c * kh + u) * kw + v) * n
                _zero_edges(cf, d0, ia - r0, ib - r0, wo, j0, j1)
                q0, q1 = d0 + (ia - r0) * wo + j0, d0 + (ib - r0 - 1) * wo + j1
                s0 = u64(at + (ia + di) * wo + j0 + dj)
                for q in range(u64(q1 - q0)):
                    planes[s0 + q] += cf[u64(q0) + q]
        _merge_phases(planes, flat, c * h * w, h, w, sh, sw, kh, kw, pt, pl)


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


@njit(cache=True, inline="always")
def _fill_col(src, col, r0, r1, kh, kw, sh, sw, pt, pl, dh, dw, wo, phased, planes):
    if phased:
        _im2col_phased(src, col, r0, r1, kh, kw, sh, sw, pt, pl, wo, planes)
    else:
        _im2col(src, col, r0, r1, kh, kw, sh, sw, pt, pl, dh, dw, wo)


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
def _plan(workspace, n, k, o, kg, ho, wo, direct, planes):
    """(parts, output rows per block, col elements): a part per workspace row, at most one per
    image, each slot [col block | dW partial | `planes` elements of phase planes]."""
    rows = ho if direct else _tile_rows(k, ho, wo)
    cols = k * rows * wo
    if workspace.shape[1] < cols + o * kg + planes or workspace.shape[0] < 1:
        raise ValueError("conv2d: workspace too small; size it with workspace_shape")
    return min(n, workspace.shape[0]), rows, cols


@njit(cache=True, inline="always")
def _is_direct(kh, kw, sh, sw, pt, pb, pl, pr):
    """A 1x1, stride-1, unpadded convolution: the image itself is the im2col matrix."""
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pb == 0 and pl == 0 and pr == 0


# ---- the kernels -----------------------------------------------------------------------

@njit(cache=True, parallel=True)
def conv2d_forward(x, w, b, out, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups,
                   workspace):
    """out = conv2d(x, w) + b (b may be None), NCHW; see the module docstring."""
    _check(x.shape, w.shape, out.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    n, c = x.shape[0], x.shape[1]
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    k, hw = c * kh * kw, ho * wo
    kg, og = k // groups, o // groups
    w2 = w.reshape(o, kg)
    direct = _is_direct(kh, kw, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r)
    h, wd = x.shape[2], x.shape[3]
    phased = _phased(stride_h, stride_w, dil_h, dil_w, h, wd, wo)
    parts, rows, cols = _plan(workspace, n, k, o, kg, ho, wo, direct, h * wd if phased else 0)
    for p in prange(parts):
        block, planes = workspace[p, :cols], workspace[p, cols + o * kg:]
        for i in range(n * p // parts, n * (p + 1) // parts):
            y = out[i].reshape(o, hw)
            for r0 in range(0, ho, rows):
                r1 = min(ho, r0 + rows)
                if direct:
                    col = x[i].reshape(k, hw)
                else:
                    col = block[:k * (r1 - r0) * wo].reshape(k, (r1 - r0) * wo)
                    _fill_col(x[i], col, r0, r1, kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, wo,
                              phased, planes)
                for g in range(groups):
                    gemm_block(w2[g * og:(g + 1) * og], col[g * kg:(g + 1) * kg],
                               y[g * og:(g + 1) * og, r0 * wo:r1 * wo], False, False, False)
            if b is not None:
                for oi in range(o):
                    y[oi] += b[oi]


@njit(cache=True, parallel=True)
def conv2d_grad_input(g, w, dx, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups,
                      workspace):
    """dx = the transposed convolution of g by w (the registry's conv2d_grad_input)."""
    _check(dx.shape, w.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    n, c = dx.shape[0], dx.shape[1]
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = g.shape[2], g.shape[3]
    k, hw = c * kh * kw, ho * wo
    kg, og = k // groups, o // groups
    w2 = w.reshape(o, kg)
    direct = _is_direct(kh, kw, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r)
    h, wd = dx.shape[2], dx.shape[3]
    phased = _phased(stride_h, stride_w, dil_h, dil_w, h, wd, wo)
    parts, rows, cols = _plan(workspace, n, k, o, kg, ho, wo, direct, h * wd if phased else 0)
    for p in prange(parts):
        block, planes = workspace[p, :cols], workspace[p, cols + o * kg:]
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
                if phased:
                    _col2im_phased(col, dx[i], r0, r1, kh, kw, stride_h, stride_w, pad_t, pad_l, wo, planes)
                else:
                    _col2im(col, dx[i], r0, r1, kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, wo)


@njit(cache=True, parallel=True)
def conv2d_grad_weight(g, x, dw, db, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups,
                       workspace):
    """dw = sum over images and pixels of g x window^T; db = sum of g over (N, Ho, Wo), or None."""
    _check(x.shape, dw.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    n, c = x.shape[0], x.shape[1]
    o, kh, kw = dw.shape[0], dw.shape[2], dw.shape[3]
    ho, wo = g.shape[2], g.shape[3]
    k, hw = c * kh * kw, ho * wo
    kg, og = k // groups, o // groups
    direct = _is_direct(kh, kw, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r)
    h, wd = x.shape[2], x.shape[3]
    phased = _phased(stride_h, stride_w, dil_h, dil_w, h, wd, wo)
    parts, rows, cols = _plan(workspace, n, k, o, kg, ho, wo, direct, h * wd if phased else 0)
    for p in prange(parts):
        block, planes = workspace[p, :cols], workspace[p, cols + o * kg:]
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
                    _fill_col(x[i], col, r0, r1, kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, wo,
                              phased, planes)
                for grp in range(groups):
                    gemm_block(gi[grp * og:(grp + 1) * og, r0 * wo:r1 * wo], col[grp * kg:(grp + 1) * kg],
                               partial[grp * og:(grp + 1) * og], False, True, not first)
                first = False
    dw2 = dw.reshape(o, kg)
    dw2[:] = workspace[0, cols:cols + o * kg].reshape(o, kg)
    for p in range(1, parts):  # in part order: the same sum whichever thread finished first
        dw2 += workspace[p, cols:cols + o * kg].reshape(o, kg)
    if db is not None:
        conv2d_grad_bias(g, db)


@njit(cache=True, parallel=True)
def conv2d_grad_bias(g, db):
    """db[o] = sum_{n, i, j} g[n, o, i, j], accumulated in float64; parallel over channels."""
    flat = g.reshape(g.shape[0], g.shape[1], -1)
    for o in prange(g.shape[1]):
        s = 0.0
        for i in range(g.shape[0]):
            for j in range(flat.shape[2]):
                s += flat[i, o, j]
        db[o] = s
