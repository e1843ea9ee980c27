"""conv2d forward, input gradient and weight gradient computed directly from the input's
zero-padded phase planes (no im2col, no BLAS): strided convolutions, and the passes of
stride-1 ones that im2col + GEMM would make too thin.

`geometry.pass_modules` chooses this module for each pass of an undilated convolution
where the call is generated, as it chooses winograd.py: resnet's 3x3 stride-2 convolutions
padded 1, a 1x1 stride-2 shortcut, a 7x7 stride-2 stem and AlexNet's 11x11 stride 4 on 227
(their forward and weight gradient, and with enough input channels their input gradient);
a first layer's 3x3 from 1 or 3 channels, its forward; LeNet-5's unpadded 5x5
convolutions, all three. With stride 1 there is one plane, the image itself padded, so a
convolution with few input channels is a few long runs of multiply-adds where im2col +
GEMM made a GEMM too thin (K = C*kh*kw) to pay for its packing.

Each channel of an image splits into its sh*sw phase planes P[ph, pw][r, q] = x[r*sh + ph,
q*sw + pw], stored zero-padded (geometry.phase_layout) so that every tap (u, v) of every
output pixel (i, j) reads one stored plane at the flat position i*wq + j plus a constant
offset. Then, on the flat grid of ho rows of wq (the columns past wo computed and dropped):

    forward      y[o, s] = sum over (c, u, v) of w[o, c, u, v] P_c[s + off(u, v)]    (taps.tap_sums)
    grad-input   dP_c[s'] = sum over (o, (u, v) of that phase) of w[o, c, u, v] g[o, s' - off(u, v)]:
                 the same sums, over the output gradient (zeros past its edges) into the
                 planes' gradients, which interleave back into dx
    grad-weight  dw[o, c, u, v] = sum over images and s of g[o, s] P_c[s + off(u, v)]  (taps.tap_dots)

With stride 2 the planes come from the rows by lanes.deinterleave and go back by
lanes.interleave; other strides move them element by element.

Threads: a parallel loop over `parts` (the workspace's rows, at most N), part p taking
images [N*p/parts, N*(p+1)/parts) in its own slot (geometry.phase_slot); an ungrouped
forward of fewer images than threads also splits each image's output channels
(taps.shares): small_cnn's first layer at batch 1, 1 -> 32 channels at 28x28, had one
thread. The weight gradient sums each part's images in its slot's lanes, then the parts
in part order (the same result whichever thread finished first).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from dslc.kernels import geometry as _geometry
from dslc.runtime.cpu.conv import _check, sum_parts
from dslc.runtime.cpu.lanes import VECTOR_BYTES, deinterleave, interleave, like, u64
from dslc.runtime.cpu.taps import OUTS, share, shares, tap_dots, tap_sums

_phased = njit(cache=True)(_geometry.phased)
_layout = njit(cache=True)(_geometry.phase_layout)
_need = njit(cache=True)(_geometry.phase_need)


@njit(cache=True)
def _plan(x_shape, w_shape, out_shape, sh, sw, pt, pb, pl, pr, dh, dw, groups, workspace):
    """The planes' layout and the parts; raises unless out_shape is the convolution's
    (conv.py's check), the geometry phased and the workspace large enough."""
    _check(x_shape, w_shape, out_shape, sh, sw, pt, pb, pl, pr, dh, dw, groups)
    c, h, w, out_hw = x_shape[1], x_shape[2], x_shape[3], out_shape[2:]
    o, cg, kh, kw = w_shape
    if not _phased(dh, dw):
        raise ValueError("conv2d: not a phased convolution (geometry.phased); use conv.py's kernels")
    lay = _layout(kh, kw, sh, sw, pt, pl, h, w, out_hw[0], out_hw[1], c, o, x_shape[0])
    if workspace.shape[0] < 1 or workspace.shape[1] < _need(lay, c, o, cg * kh * kw, sh * sw):
        raise ValueError("conv2d: workspace too small; size it with workspace_shape")
    return lay, min(x_shape[0], workspace.shape[0])


@njit(cache=True, inline="always")
def _offset(u, v, kh, kw, sh, sw, pt, pl, wq, top, left, plane):
    """Where tap (u, v) reads, from the start of its channel's planes: its phase's plane,
    shifted by whole rows and columns (non-negative: top and left pad the planes)."""
    a, b = u - pt, v - pl
    return ((a % sh) * sw + b % sw) * plane + (a // sh + top) * wq + b // sw + left


@njit(cache=True)
def _tap_offsets(kh, kw, sh, sw, pt, pl, lay, cg):
    """The forward's taps (c, u, v) of a group in order: where each reads in the planes."""
    top, left, wq, plane = lay[0], lay[1], lay[2], lay[3]
    offs = np.empty(cg * kh * kw, np.uint64)
    for c in range(cg):
        for u in range(kh):
            for v in range(kw):
                offs[(c * kh + u) * kw + v] = c * sh * sw * plane + _offset(u, v, kh, kw, sh, sw, pt, pl, wq, top, left,
                                                                            plane)
    return offs


@njit(cache=True)
def _phases(img, at, h, w, sh, sw, f, first, plane, wq, back):
    """One channel's image (img[at:], h x w) into its sh*sw phase planes, phase (ph, pw)'s
    first data element at f[first + (ph*sw + pw)*plane] and its rows wq apart (only that
    data is written: the padding stays as zeroed); with `back`, the planes back into the
    image, every element of which is written (the input gradient's). Where a side is no
    multiple of its stride the later phases are a row or a column short (227 rows in
    phases of 4: 57, 57, 57 and 56 rows), the place past them left as padding."""
    for ph in range(sh):  # a phase past a side smaller than the stride has no rows
        rows = (h - ph + sh - 1) // sh
        even = first + ph * sw * plane
        if sw == 2:
            if back:
                interleave(img, u64(at + ph * w), u64(sh * w), f, u64(even), u64(even + plane), u64(wq),
                           u64(w // 2), u64(rows), like(img, 0.0))
            else:
                deinterleave(img, u64(at + ph * w), u64(sh * w), f, u64(even), u64(even + plane), u64(wq),
                             u64(w // 2), u64(rows))
            if w % 2:  # an odd width's last column: the even phase's last
                for r in range(rows):
                    k, j = u64(even + r * wq + w // 2), u64(at + (r * sh + ph) * w + w - 1)
                    if back:
                        img[j] = f[k]
                    else:
                        f[k] = img[j]
            continue
        for pw in range(sw):
            for r in range(rows):
                for q in range((w - pw + sw - 1) // sw):
                    k, j = u64(even + pw * plane + r * wq + q), u64(at + (r * sh + ph) * w + q * sw + pw)
                    if back:
                        img[j] = f[k]
                    else:
                        f[k] = img[j]


@njit(cache=True)
def _reached(k, s, p, out, size):
    """Along one axis (kernel k, stride s, padding before p, `out` outputs), for each phase,
    the plane rows (of `size`) [lo, hi) that some window reads: none for a phase no tap
    reads (a 1x1 stride-2 kernel's odd rows), and not the last rows a window stops short of."""
    lo, hi = np.zeros(s, np.int64), np.zeros(s, np.int64)
    for ph in range(s):
        first, last = size, -1
        for u in range(k):
            if (u - p) % s == ph:
                first, last = min(first, (u - p) // s), max(last, (u - p) // s)
        if last >= first:
            lo[ph], hi[ph] = max(0, first), min(size, out + last)
    return lo, hi


@njit(cache=True)
def _clear_unread(f, start, lay, rows, cols, hp, wp, sh, sw):
    """Zero the pixels of one channel's planes at f[start:] that no window reads (rows and
    cols: _reached's ranges). The weight gradient sums over the whole run, the dropped
    columns and the run's tail included, where the output gradient is zero; an inf or NaN
    in a pixel the convolution never reads would still make 0 * inf = NaN there."""
    top, left, wq, plane = lay[0], lay[1], lay[2], lay[3]
    for ph in range(sh):
        for pw in range(sw):
            base = start + (ph * sw + pw) * plane + top * wq + left
            for r in range(hp):
                inside = rows[0][ph] <= r < rows[1][ph]
                for q in range(wp):
                    if not (inside and cols[0][pw] <= q < cols[1][pw]):
                        f[u64(base + r * wq + q)] = 0


@njit(cache=True)
def _rows_in(src, at, rows, cols, f, start, step):
    """src[at:] ([rows, cols]) into rows of `step` at f[start:]."""
    for r in range(rows):
        a, b = u64(at + r * cols), u64(start + r * step)
        for q in range(u64(cols)):
            f[b + q] = src[a + q]


@njit(cache=True)
def _pack_forward(w, groups, kh, kw):
    """w [O, C/G, kh, kw] as tap_sums reads it: per group, blocks of OUTS outputs, each
    [taps, OUTS] (zeros past the group's last output)."""
    o, cg = w.shape[0], w.shape[1]
    og, taps = o // groups, cg * kh * kw
    blocks = (og + OUTS - 1) // OUTS
    wk = np.zeros(groups * blocks * taps * OUTS, w.dtype)
    w2 = w.reshape(o, taps)
    for g in range(groups):
        for k in range(og):
            at = ((g * blocks + k // OUTS) * taps) * OUTS + k % OUTS
            for t in range(taps):
                wk[at + t * OUTS] = w2[g * og + k, t]
    return wk


@njit(cache=True)
def _pack_backward(w, groups, kh, kw, sh, sw, pt, pl, lay):
    """w as the input gradient's tap_sums read it, with where each tap reads in the output
    gradient: per group and phase, the taps (o, u, v) with (u, v) of that phase, in blocks
    of OUTS input channels. Returns (weights, offsets, where each (group, phase) starts in
    both, taps of each)."""
    o, cg = w.shape[0], w.shape[1]
    og, phases = o // groups, sh * sw
    top, left, wq, plane, front, row = lay[0], lay[1], lay[2], lay[3], lay[6], lay[8]
    blocks = (cg + OUTS - 1) // OUTS
    count = np.zeros(phases, np.int64)
    for u in range(kh):
        for v in range(kw):
            count[((u - pt) % sh) * sw + (v - pl) % sw] += og
    wk = np.zeros(groups * blocks * og * kh * kw * OUTS, w.dtype)
    offs = np.empty(groups * og * kh * kw, np.uint64)
    w_at, o_at = np.empty(groups * phases, np.int64), np.empty(groups * phases, np.int64)
    wn, on = 0, 0
    for g in range(groups):
        for ph in range(phases):
            w_at[g * phases + ph], o_at[g * phases + ph] = wn, on
            t = 0
            for k in range(og):
                for u in range(kh):
                    for v in range(kw):
                        if ((u - pt) % sh) * sw + (v - pl) % sw != ph:
                            continue
                        offs[on + t] = k * row + front - (_offset(u, v, kh, kw, sh, sw, pt, pl, wq, top, left, plane)
                                                          - ph * plane)
                        for c in range(cg):
                            wk[wn + ((c // OUTS) * count[ph] + t) * OUTS + c % OUTS] = w[g * og + k, c, u, v]
                        t += 1
            wn += blocks * count[ph] * OUTS
            on += count[ph]
    return wk, offs, w_at, o_at, count


# ---- the entry points: conv.py's signatures and checks -----------------------------------

@njit(cache=True, parallel=True)
def conv2d_forward(x, w, b, out, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace,
                   relu):
    """out = conv2d(x, w) + b (b may be None), NCHW, then max(out, 0) with relu (conv.rectify),
    for a convolution geometry.phased accepts."""
    lay, parts = _plan(x.shape, w.shape, out.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w,
                       groups, workspace)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    og, taps, wq, run, planes = o // groups, cg * kh * kw, lay[2], lay[4], lay[7]
    interior = lay[0] * wq + lay[1]  # a plane's first data element: past `top` rows and `left` columns
    wk = _pack_forward(w, groups, kh, kw)
    offs = _tap_offsets(kh, kw, stride_h, stride_w, pad_t, pad_l, lay, cg)
    blocks = (og + OUTS - 1) // OUTS
    xf, yf = x.reshape(-1), out.reshape(-1)
    parts, split = shares(n, o, workspace.shape[0]) if groups == 1 else (parts, 1)
    for p in prange(parts):
        f = workspace[p]
        f[:planes] = 0
        lo, hi, o0, o1 = share(n, o, parts, split, p)  # o0, o1 = 0, o unless split
        for i in range(lo, hi):
            for ci in range(c):
                _phases(xf, (i * c + ci) * h * wd, h, wd, stride_h, stride_w, f,
                        ci * stride_h * stride_w * lay[3] + interior, lay[3], wq, np.bool_(False))
            if split > 1:  # one group: this part's blocks of its outputs
                tap_sums(f, wk, offs, f, u64(0), u64(o0 * taps), u64(0), u64(planes + o0 * run), u64(run), u64(run),
                         u64(o1 - o0), u64(taps))
            else:
                for g in range(groups):
                    tap_sums(f, wk, offs, f, u64(g * cg * stride_h * stride_w * lay[3]),
                             u64(g * blocks * taps * OUTS), u64(0), u64(planes + g * og * run), u64(run), u64(run),
                             u64(og), u64(taps))
            for oi in range(o0, o1):
                _rows_out(f, planes + oi * run, wq, yf, (i * o + oi) * ho * wo, ho, wo,
                          like(yf, 0.0 if b is None else b[oi]), np.bool_(relu))


@njit(cache=True)
def _rows_out(f, start, step, y, at, rows, cols, add, relu):
    """y[at:] ([rows, cols]) = the first cols of each row of `step` at f[start:], plus add,
    then with relu max(., 0) as conv.rectify takes it (NaN kept): in the same pass, where a
    pass of rectify after it read and wrote the part's output again (a thread's 16 channels
    of small_cnn's first layer, 50 KB, more than the L1 holds). In its saliency gradient at
    batch 1, alternated in one process: that forward 13.8 and 16.4 us against 15.3 and 17.5."""
    for r in range(rows):
        a, b = u64(start + r * step), u64(at + r * cols)
        for q in range(u64(cols)):
            v = f[a + q] + add
            y[b + q] = 0 if relu and v < 0 else v


@njit(cache=True, parallel=True)
def conv2d_grad_input(g, w, dx, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace):
    """dx = the transposed convolution of g by w."""
    lay, parts = _plan(dx.shape, w.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w,
                       groups, workspace)
    n, c, h, wd = dx.shape
    o, cg, kh, kw = w.shape
    ho, wo = g.shape[2], g.shape[3]
    phases, og = stride_h * stride_w, o // groups
    top, wq, run_in, front, row = lay[0], lay[2], lay[5], lay[6], lay[8]
    wk, offs, w_at, o_at, count = _pack_backward(w, groups, kh, kw, stride_h, stride_w, pad_t, pad_l, lay)
    gf, xf = g.reshape(-1), dx.reshape(-1)
    for p in prange(parts):
        f = workspace[p]
        f[:o * row] = 0
        for i in range(n * p // parts, n * (p + 1) // parts):
            for oi in range(o):
                _rows_in(gf, (i * o + oi) * ho * wo, ho, wo, f, oi * row + front, wq)
            for grp in range(groups):
                for ph in range(phases):
                    at = grp * phases + ph
                    tap_sums(f, wk, offs, f, u64(grp * og * row + top * wq), u64(w_at[at]), u64(o_at[at]),
                             u64(o * row + (grp * cg * phases + ph) * run_in), u64(run_in),
                             u64(phases * run_in), u64(cg), u64(count[ph]))
            for ci in range(c):  # each phase's gradient: the rows that hold data, run_in apart
                _phases(xf, (i * c + ci) * h * wd, h, wd, stride_h, stride_w, f,
                        o * row + ci * phases * run_in + lay[1], run_in, wq, np.bool_(True))


@njit(cache=True, parallel=True)
def conv2d_grad_weight(g, x, dw, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace):
    """dw = the weight gradient."""
    lay, parts = _plan(x.shape, dw.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w,
                       groups, workspace)
    n, c, h, wd = x.shape
    o, cg, kh, kw = dw.shape
    ho, wo = g.shape[2], g.shape[3]
    og, taps, wq, run, front, planes, row, per = o // groups, cg * kh * kw, lay[2], lay[4], lay[6], lay[7], lay[8], lay[9]
    interior = lay[0] * wq + lay[1]  # a plane's first data element
    lanes = VECTOR_BYTES // x.itemsize  # tap_dots' lanes
    at_g, at_acc = per * planes, per * (planes + o * row)  # [planes of `per` images | their gradients | lanes]
    offs = _tap_offsets(kh, kw, stride_h, stride_w, pad_t, pad_l, lay, cg)
    xf, gf = x.reshape(-1), g.reshape(-1)
    hp, wp = -(-h // stride_h), -(-wd // stride_w)  # phase_layout's: the first phases' rows and columns
    rows, cols = _reached(kh, stride_h, pad_t, ho, hp), _reached(kw, stride_w, pad_l, wo, wp)
    unread = rows[0].min() > 0 or rows[1].min() < hp or cols[0].min() > 0 or cols[1].min() < wp
    for p in prange(parts):
        f = workspace[p]
        f[:at_acc + o * taps * lanes] = 0
        lo, hi = n * p // parts, n * (p + 1) // parts
        for i0 in range(lo, hi, per):
            i1 = min(hi, i0 + per)
            for i in range(i0, i1):
                for ci in range(c):
                    at = (i - i0) * planes + ci * stride_h * stride_w * lay[3]
                    _phases(xf, (i * c + ci) * h * wd, h, wd, stride_h, stride_w, f, at + interior, lay[3], wq,
                            np.bool_(False))
                    if unread:
                        _clear_unread(f, at, lay, rows, cols, hp, wp, stride_h, stride_w)
                for oi in range(o):
                    _rows_in(gf, (i * o + oi) * ho * wo, ho, wo, f, at_g + ((i - i0) * o + oi) * row + front, wq)
            for grp in range(groups):
                tap_dots(f, f, offs, f, u64(at_g + grp * og * row + front), u64(row),
                         u64(grp * cg * stride_h * stride_w * lay[3]), u64(0), u64(at_acc + grp * og * taps * lanes),
                         u64(run), u64(og), u64(taps), u64(i1 - i0), u64(o * row), u64(planes))
        for k in range(o * taps):  # each dw entry's lanes added, into the start of the lanes (k <= k*lanes)
            s = f[at_acc + k * lanes]
            for lane in range(1, lanes):
                s += f[at_acc + k * lanes + lane]
            f[at_acc + k] = s
    sum_parts(workspace, at_acc, o * taps, parts, dw.reshape(-1))
