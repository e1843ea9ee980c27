"""3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3): forward, input and weight gradient.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016). Each 2x2 block
of outputs (a tile) of one image and output channel is

    Y = A^T [ sum_c (G w[o, c] G^T) * (B^T d[c] B) ] A      (* elementwise, 4x4)

with d[c] the 4x4 input patch under the tile and

    B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
    A^T = [1 1 1 0; 0 1 -1 -1]

so for each of the 16 positions xi of the 4x4 transform the sum over channels is a GEMM:
M[xi] (O x T) = U[xi] (O x C) @ V[xi] (C x T), T tiles. 16 products of 4x4 values replace
the 36 of a direct 3x3 over a 2x2 tile: 2.25 times fewer multiply-adds, the transforms of
the data costing only additions.

    forward      U = G w G^T;  V = B^T d B;  M[xi] = U[xi] @ V[xi];  y = A^T M A (+ bias)
    grad-input   the forward of g with w rotated by 180 degrees and its channels swapped,
                 padded 2 - pad: a stride-1 convolution's adjoint is a convolution
    grad-weight  dU[xi] = sum over tiles of Mg[xi] V[xi]^T with Mg = A g A^T (the output
                 transform's adjoint), then dw = G^T dU G: 16 GEMMs over the tiles

The forward's products M[xi] = U[xi] @ V[xi] are taps.tap_sums over the channels (U packed
for it by _weights), not BLAS calls: with K = C from 16 to 64 OpenBLAS packs V[xi] before
each product, and measured alternately on two threads of the EPYC at batch 128 the
forward and input gradient of a 32-channel convolution took 0.91-0.95 times as long at
16x16 and 32x32 (neutral, within 6% either way, at 16 channels and at 8x8 and 14x14).
The weight gradient's products keep gemm_block (tap_dots was slower there).

Layouts. Each channel of the padded input is split into its four parity planes
P[2r + s][ti*We + j] = xpad[2ti + r, 2j + s] (zeros in the padding), and tiles are
numbered q = ti*We + tj on a grid of We columns (geometry.winograd_columns). Element (k, l)
of tile q's 4x4 patch is then P[2(k%2) + l%2][q + (k//2)*We + l//2]: a tile reads the
next tile's column. On wide images We = tw + 1, a column of padding tiles computed and
dropped; on narrow ones We = tw, no padding tiles, and four more planes hold P one column
on, which the patch reads for l >= 2 instead. Every entry of V, M and Mg is a signed sum
of runs of the slot at fixed offsets (a patch read directly would stride by 2, in rows of
16). Each transform of a channel is one pass over its tiles that loads a vector of tiles
from each input run and stores every output run
(lanes.signed_sums: 16 loads and 16 stores for the input transform, where one loop per
output, which was all LLVM would vectorise, made 80 and re-read each plane four times:
the input transform of a 32x32 channel 2.3 times faster, of an 8x8 one 3.2 times); the
split into planes and the interleave back into rows move a row's column pairs as vectors
(lanes.deinterleave, lanes.interleave). A padding tile's outputs are never written, its
gradients are zeros. Each thread takes a run of images, a block of `images` at a
time (geometry.winograd_images: V and M of a block stay near the core's L2); its
workspace slot holds [dU | P | V | M] (geometry.winograd_slot; the dU region is the weight
gradient's). The forward and the input gradient read U from a table of their own that
transform_weights fills (geometry.winograd_table), which the generated drivers run before
the pass, or in their prologue where the weights never change.

The passes index the flat slot with unsigned offsets rather than slicing it: a slice is
a new view whose reference count lives on the workspace's, which two threads would
update hundreds of times per image (conv.py saw the same), and a signed index makes
Numba test it for wrap-around, which keeps LLVM from vectorising the loop.

Why not F(4x4, 3x3), which needs 36 products per 16 outputs (1.78 times fewer) and moves
2.25 values of V and M per output instead of 4: it was built (forward and input gradient,
16 phase planes, its transforms as two passes in registers) and measured alternately with
this module on two threads of the EPYC at batch 128 (32 at 14x14), and was slower at every
resnet20 and small_cnn shape: 1.06-1.27 times at 32x32 and 16x16, 1.5-1.8 at 14x14 and
8x8. Its GEMMs took 0.6 of these at 32x32 (at 14x14 and 8x8 the padding tiles ate the
saving), but its input transform, as fast per output as this one's while the data sat in
L1, was 2-3 times slower in place: 36 runs of V written per vector of tiles where this
writes 16, and a block's V and M no longer near L2.

The weight gradient sums each thread's images into its slot's dU, then the partials in
part order (the same result whichever thread finished first), as conv.py does.

Numba compiles a helper once for each list of argument types it is called with, and a
call from compiled code types a constant as a Literal of its own (`False`, `0`) and a
prange index as int64 where the function is typed but uint64 in the parallel loop's
body. So the calls pass `np.int64(p)` and `np.bool_(flag)`: without the casts
_forward_part, the largest helper, compiled four times for the forward and the input
gradient, 15 of the 22 s this module took to build.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from dslc.kernels import geometry as _geometry
from dslc.runtime.cpu.blas import gemm_block
from dslc.runtime.cpu.conv import _check, rectify, sum_parts
from dslc.runtime.cpu.lanes import deinterleave, interleave, like, signed_sums, u64
from dslc.runtime.cpu.taps import OUTS, share, shares, tap_sums

_images = njit(cache=True)(_geometry.winograd_images)
_columns = njit(cache=True)(_geometry.winograd_columns)
_planes = njit(cache=True)(_geometry.winograd_planes)
_applies = njit(cache=True)(_geometry.winograd)
_outs = njit(cache=True)(_geometry.winograd_outs)
_RUN = 16  # filters per run through the transforms' buffers (_weights, _unweights)


_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
# the transforms of a tile as signed sums of its entries (row-major 4x4 or 2x2):
# V = B^T d B, y = A^T M A, Mg = A g A^T (vec(P X Q) = kron(P, Q^T) vec(X), row-major)
_data_map = signed_sums(np.kron(_BT, _BT))
_output_map = signed_sums(np.kron(_AT, _AT))
_grad_map = signed_sums(np.kron(_AT.T, _AT.T))


@njit(cache=True, inline="always")
def _patch(at_p, plane, we, shifted, k, col):
    """Where element (k, col) of tile 0's patch starts in the planes at f[at_p:] (tile q's is
    q further on): parity plane 2(k%2) + col%2, shifted k//2 rows of the tile grid (we tiles
    each), and for col >= 2 the next column: col//2 tiles on, or in the `shifted` copy."""
    on = col // 2  # the next column: in the shifted planes, or one tile on (no branch: 16
    # inlined copies of one cost 1.6 s of compiling)
    return u64(at_p + (2 * (k % 2) + col % 2 + 4 * on * shifted) * plane + (k // 2) * we + on * (1 - shifted))


@njit(cache=True)
def _layout(c_in, c_out, th, tw, tb):
    """Offsets of the slot's regions U [16, O, C] (packed: _weights), P [4 or 8, plane],
    V [16, C, tb] and M [16, O, tb], the plane's length, the slot's size, and the grid's
    columns we (tw: the planes have shifted copies; tw + 1: a column of padding tiles)."""
    we = _columns(tw)
    count, plane = _planes(th, tw, we)
    at_p = 16 * _outs(c_out) * c_in
    at_v = at_p + count * plane
    at_m = at_v + 16 * c_in * tb
    return at_p, at_v, at_m, plane, at_m + 16 * c_out * tb, we


@njit(cache=True, inline="always")
def _gt4(y0, y1, y2, y3):
    """G^T (y0, y1, y2, y3), the adjoint of G (_g_row)."""
    h = 0.5 * (y1 + y2)
    return y0 + h, 0.5 * (y1 - y2), h + y3


@njit(cache=True, inline="always")
def _g_row(s, a, b, c, d, o, n, k):
    """d[o + j] = row k (1 or 2) of G times (s[a + j], s[b + j], s[c + j]), for j < n. G's
    rows are [1 0 0], [1/2 1/2 1/2], [1/2 -1/2 1/2], [0 0 1]: rows 0 and 3 are copies. One
    output run per loop, so LLVM's overlap tests are three and it vectorises (_weights)."""
    for j in range(n):
        x0, x1, x2 = s[a + j], s[b + j], s[c + j]
        h = 0.5 * (x0 + x2)
        d[o + j] = h + 0.5 * x1 if k == 1 else h - 0.5 * x1


@njit(cache=True)
def _weights(w, u, flip, p0, p1):
    """U[xi][p - p0, q] = (G w[p, q] G^T)[xi] for the filters p0 <= p < p1 of the convolution;
    with flip, of w[q, p] rotated by 180 degrees: the weights of the input gradient's
    convolution (w is [O, C, 3, 3] either way). u is flat,
    each U[xi] packed as taps.tap_sums reads its weights: [P / OUTS, Q, OUTS], that is
    u[(xi * blocks + p // OUTS) * Q * OUTS + q * OUTS + p % OUTS]; a block's lanes past P
    are zeros.

    G w G^T is taken as two products with G (columns, then rows; in double), over runs of
    filters rather than one filter at a time: a block of OUTS values of p and _RUN of q is
    copied tap by tap into a double scratch whose j-th column is filter (q, p) with
    j = q * OUTS + p % OUTS, the order of u's runs, and then each product row is one loop
    over j that LLVM vectorises, its result stored straight into u's run. Its rows are
    padded off 4 KiB apart (rows a multiple of 4 KiB apart share the L1's sets: a scratch
    of 512 filters ran 4 times slower), and a run of 16 filters keeps it in L1. Measured on
    the EPYC, one thread: 64x32 filters 30 -> 11 us, 64x64 59 -> 21 (a saliency gradient
    of small_cnn at batch 1 transforms 64x32 twice); the values are the same, each an
    output of the same double operations."""
    total, n_q = (w.shape[1], w.shape[0]) if flip else (w.shape[0], w.shape[1])
    n_p = p1 - p0
    stride = u64(_outs(n_p) * n_q)  # one U[xi]
    row = u64(_RUN * OUTS + 8)
    s = np.empty(15 * (_RUN * OUTS + 8), np.float64)  # rows 0-8: the taps (a, b) at 3a + b;
    wf = w.reshape(w.size)  # 9-14: rows 1 and 2 of G times column b, at 9 + 2b and 10 + 2b
    for pb in range(_outs(n_p) // OUTS):
        for q0 in range(0, n_q, _RUN):
            q1 = min(n_q, q0 + _RUN)
            m = u64((q1 - q0) * OUTS)
            for q in range(q0, q1):
                for lane in range(OUTS):
                    p = pb * OUTS + lane
                    at = u64((q - q0) * OUTS + lane)
                    src = u64((q * total + p0 + p) * 9) if flip else u64(((p0 + p) * n_q + q) * 9)
                    for t in range(9):
                        tap = wf[src + u64(t)] if p < n_p else 0.0
                        s[u64(8 - t if flip else t) * row + at] = tap
            for b in range(3):  # G times column b: rows 0 and 3 are taps (0, b) and (2, b)
                _g_row(s, u64(b) * row, u64(3 + b) * row, u64(6 + b) * row, s, u64(9 + 2 * b) * row, m, 1)
                _g_row(s, u64(b) * row, u64(3 + b) * row, u64(6 + b) * row, s, u64(10 + 2 * b) * row, m, 2)
            base = u64(pb * n_q * OUTS + q0 * OUTS)
            for a in range(4):  # row a of G w (three runs) times G^T: values 4a to 4a + 3
                r0 = u64(2 * a) * row if a % 3 == 0 else u64(8 + a) * row
                r1 = u64(2 * a + 1) * row if a % 3 == 0 else u64(10 + a) * row
                r2 = u64(2 * a + 2) * row if a % 3 == 0 else u64(12 + a) * row
                o = u64(4 * a) * stride + base
                for j in range(m):
                    u[o + j] = s[r0 + j]
                _g_row(s, r0, r1, r2, u, o + stride, m, 1)
                _g_row(s, r0, r1, r2, u, o + u64(2) * stride, m, 2)
                for j in range(m):
                    u[o + u64(3) * stride + j] = s[r2 + j]


@njit(cache=True)
def _unweights(du, dw, scratch):
    """dw[o, c] = G^T du[:, o, c] G, the adjoint of _weights (two products with G^T, in double),
    a run of filters at a time read from du's 16 planes into a buffer at the start of
    `scratch`: the planes lie O*C floats apart, often a multiple of 4 KiB, and reading a
    filter's 16 values straight from them hit one set of the L1 cache 16 times. Once per
    weight gradient, so left a filter at a time."""
    run = min(_RUN, scratch.size // 16)
    buf = scratch[:16 * run].reshape(16, run)
    for o in range(dw.shape[0]):
        for c0 in range(0, dw.shape[1], run):
            c1 = min(dw.shape[1], c0 + run)
            for xi in range(16):
                for c in range(c0, c1):
                    buf[xi, c - c0] = du[xi, o, c]
            for c in range(c0, c1):
                k = c - c0
                # G^T times each column b of du (values b, 4 + b, 8 + b, 12 + b)
                r0 = _gt4(buf[0, k], buf[4, k], buf[8, k], buf[12, k])
                r1 = _gt4(buf[1, k], buf[5, k], buf[9, k], buf[13, k])
                r2 = _gt4(buf[2, k], buf[6, k], buf[10, k], buf[14, k])
                r3 = _gt4(buf[3, k], buf[7, k], buf[11, k], buf[15, k])
                # then each row i times G (constant indices: unrolled)
                dw[o, c, 0, 0], dw[o, c, 0, 1], dw[o, c, 0, 2] = _gt4(r0[0], r1[0], r2[0], r3[0])
                dw[o, c, 1, 0], dw[o, c, 1, 1], dw[o, c, 1, 2] = _gt4(r0[1], r1[1], r2[1], r3[1])
                dw[o, c, 2, 0], dw[o, c, 2, 1], dw[o, c, 2, 2] = _gt4(r0[2], r1[2], r2[2], r3[2])


@njit(cache=True)
def _split(src, at, rows, cols, pt, pl, f, planes, plane, th, we, shifted):
    """The four parity planes of one channel (src[at:], rows x cols) padded by pt, pl, into
    f[planes + k*plane:]: f[planes + (2r + s)*plane + ti*we + j] = xpad[2ti + r, 2j + s] for
    ti <= th, j < we; with `shifted`, after them the four one column on, xpad[2ti + r, 2j + 2 + s].

    Column pair m of a source row (2m, 2m + 1) is padded column 2m + pl: its first column
    goes to plane pl % 2 at j = m + pl // 2, its second to the other plane at j = m + (pl + 1) // 2.
    So the planes are zeroed in one pass (the padding), and the source rows of each parity
    are one `deinterleave` over them (vectors of pairs). Row by row, in loops of 4 to 16
    pairs with the padding at each row's ends, the split cost 1.5 to 2.3 times as much. The
    shifted planes are a copy one on, and then the last column of each row."""
    j0, j1 = pl // 2, (pl + 1) // 2  # where the even and the odd source columns start
    n1 = max(0, min(cols // 2, we - j1))  # odd columns in the plane: the pairs (j1 >= j0)
    n0 = max(0, min((cols + 1) // 2, we - j0))  # even columns: n1, or one or two more
    lo, hi = min(pt, 2 * th + 2), min(2 * th + 2, rows + pt)  # the padded rows that hold source rows
    start = u64(planes)
    for q in range(u64(4 * plane)):  # padding first: one pass, then the rows over it
        f[start + q] = 0
    for r in range(lo, min(hi, lo + 2)):  # the source rows of each parity, every other one
        first = u64(planes + 2 * (r % 2) * plane + (r // 2) * we)
        even, odd = first + u64((pl % 2) * plane), first + u64((1 - pl % 2) * plane)
        deinterleave(src, u64(at + (r - pt) * cols), u64(2 * cols), f, even + u64(j0), odd + u64(j1), u64(we), n1,
                     (hi - r + 1) // 2)
        for m in range(n1, n0):  # an odd width's last column, or one the odd plane had no room for
            for i in range(r, hi, 2):
                f[even + u64((i - r) // 2 * we + j0 + m)] = src[at + (i - pt) * cols + 2 * m]
    if shifted:
        one = u64(1)
        for p in range(4):
            at_s, at_q = u64(planes + (4 + p) * plane), u64(planes + p * plane)
            for q in range(u64(plane - 1)):
                f[at_s + q] = f[at_q + q + one]
        for s in range(2):
            col = 2 * we + s - pl
            for r in range(2 * th + 2):
                last = u64(planes + (4 + 2 * (r % 2) + s) * plane + (r // 2) * we + we - 1)
                f[last] = src[at + (r - pt) * cols + col] if lo <= r < hi and col < cols else 0


@njit(cache=True, inline="always")
def _regions(at, rows, row, tb, base):
    """Where row `row` of region [16, rows, tb] at f[at:] (V or M) starts for each transform
    position xi = 4a + b (16 offsets), from the first tile `base`."""
    r, s = at + row * tb + base, rows * tb
    return (u64(r), u64(r + s), u64(r + 2 * s), u64(r + 3 * s), u64(r + 4 * s), u64(r + 5 * s), u64(r + 6 * s),
            u64(r + 7 * s), u64(r + 8 * s), u64(r + 9 * s), u64(r + 10 * s), u64(r + 11 * s), u64(r + 12 * s),
            u64(r + 13 * s), u64(r + 14 * s), u64(r + 15 * s))


@njit(cache=True, inline="always")
def _patches(at_p, plane, we, shifted):
    """Where each entry (k, l) of tile 0's 4x4 patch starts in the planes, row-major."""
    p = lambda k, col: _patch(at_p, plane, we, shifted, k, col)
    return (p(0, 0), p(0, 1), p(0, 2), p(0, 3), p(1, 0), p(1, 1), p(1, 2), p(1, 3),
            p(2, 0), p(2, 1), p(2, 2), p(2, 3), p(3, 0), p(3, 1), p(3, 2), p(3, 3))


@njit(cache=True, inline="always")
def _plane_starts(at_p, plane):
    """Where each parity plane p starts: entry (p // 2, p % 2) of tile 0's 2x2 block."""
    return u64(at_p), u64(at_p + plane), u64(at_p + 2 * plane), u64(at_p + 3 * plane)


@njit(cache=True)
def _input_transform(x, at, c_in, c0, c1, h, w, f, lay, tb, base, th, tw, pt, pl):
    """V[xi, c, base + q] = (B^T d B)[xi] of every tile q of channels c0 <= c < c1 of one image
    (x[at:], [C, H, W])."""
    at_p, at_v, _, plane, _, we = lay
    shifted = we == tw  # no padding tiles: the planes have shifted copies
    ins = _patches(at_p, plane, we, np.int64(shifted))
    for c in range(c0, c1):
        _split(x, at + c * h * w, h, w, pt, pl, f, at_p, plane, th, we, shifted)
        _data_map(f, th * we, ins, _regions(at_v, c_in, c, tb, base))


@njit(cache=True)
def _output_transform(f, lay, tb, c_out, base, th, tw, y, at, ho, wo, bias, o0):
    """y[at:] ([O, Ho, Wo]) = A^T M A (+ bias[o0 + o]) of every tile of one image, through the planes."""
    at_p, _, at_m, plane, _, we = lay
    outs = _plane_starts(at_p, plane)
    for o in range(c_out):
        _output_map(f, th * we, _regions(at_m, c_out, o, tb, base), outs)
        add = like(y, 0.0 if bias is None else bias[o0 + o])
        for i in range(min(ho, 2)):  # interleave the four planes into the image's rows, each parity's
            even = u64(at_p + 2 * i * plane)
            interleave(y, u64(at + (o * ho + i) * wo), u64(2 * wo), f, even, even + u64(plane), u64(we), wo // 2,
                       (ho - i + 1) // 2, add)
        if wo % 2:  # an odd width's last column
            for i in range(ho):
                y[at + (o * ho + i) * wo + wo - 1] = f[at_p + 2 * (i % 2) * plane + (i // 2) * we + wo // 2] + add


@njit(cache=True)
def _grad_transform(g, at, c_out, ho, wo, f, lay, tb, base, th, tw):
    """Mg[xi, o, base + q] = (A g A^T)[xi] of every 2x2 tile q of one image's output gradient
    (g[at:], [O, Ho, Wo]; zeros past its edges, so in the padding tiles where there are any)."""
    at_p, _, at_m, plane, _, we = lay
    ins = _plane_starts(at_p, plane)
    for o in range(c_out):
        _split(g, at + o * ho * wo, ho, wo, np.int64(0), np.int64(0), f, at_p, plane, th - 1, we, np.bool_(False))
        _grad_map(f, th * we, ins, _regions(at_m, c_out, o, tb, base))


@njit(cache=True)
def _plan(x_shape, c_out, ho, wo, workspace):
    """(th, tw, grid, images per block, tb, layout, parts) of a pass over x [N, C, H, W] with
    c_out channels and an output of ho x wo; raises if the workspace is too small."""
    n, c_in = x_shape[0], x_shape[1]
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    grid = th * _columns(tw)
    per = _images(c_in, c_out, grid, n)
    tb = per * grid
    lay = _layout(c_in, c_out, th, tw, tb)
    if workspace.shape[1] < lay[4] or workspace.shape[0] < 1:
        raise ValueError("conv2d: workspace too small for Winograd; size it with workspace_shape")
    return th, tw, grid, per, tb, lay, min(n, workspace.shape[0])


@njit(cache=True)
def _slot(workspace, p, n, c_in, c_out, tb, lay, parts):
    """Part p's slot f, its dU [16, O, C] (the weight gradient's), V [16, C, tb] and
    M [16, O, tb], and its images [lo, hi) of the batch of n."""
    f = workspace[p]
    u = f[:16 * c_out * c_in].reshape(16, c_out, c_in)
    v = f[lay[1]:lay[2]].reshape(16, c_in, tb)
    m = f[lay[2]:lay[4]].reshape(16, c_out, tb)
    return f, u, v, m, n * p // parts, n * (p + 1) // parts


@njit(cache=True)
def _require(w_shape, sh, sw, pt, pb, pl, pr, dh, dw, groups, c_in, c_out):
    if not _applies(w_shape[2], w_shape[3], sh, sw, dh, dw, groups, pt, pb, pl, pr, c_in, c_out):
        raise ValueError("conv2d: not a Winograd convolution (geometry.winograd); use conv.py's kernels")


@njit(cache=True)
def _check_table(u, n_p, n_q):
    """A ValueError unless u holds a table of n_p filters of n_q channels (geometry.winograd_table)."""
    if u.size < 16 * _outs(n_p) * n_q:
        raise ValueError("conv2d: the Winograd table is too small; size it with geometry.winograd_table")


@njit(cache=True)
def transform_weights(w, u, flip):
    """u = U of every filter of w, packed as _weights packs it: the forward's table, or with
    flip the input gradient's (w rotated by 180 degrees, its channels swapped), which
    conv2d_forward and conv2d_grad_input read. The generated drivers run it once per step,
    or once per parameter load where w never changes (their prologue): the compiled API's
    calls with the same parameters then transform nothing. Each part of a pass transformed
    its own filters at every call before, 5 us for 32 x 32 filters on one core of the EPYC,
    twice in a saliency gradient of small_cnn at batch 1 (10 of its 180 us)."""
    n_p, n_q = (w.shape[1], w.shape[0]) if flip else (w.shape[0], w.shape[1])
    if w.shape[2] != 3 or w.shape[3] != 3:
        raise ValueError("winograd: transform_weights takes 3x3 filters")
    _check_table(u, n_p, n_q)
    _weights(w, u, np.bool_(flip), np.int64(0), np.int64(n_p))


def table(w: np.ndarray, flip: bool = False) -> np.ndarray:
    """A new table of w's filters (transform_weights) for conv2d_forward, or with flip for
    conv2d_grad_input: for callers outside the generated drivers, which fill tables the
    runner allocates (the tests, benchmarks/kernels.py). It starts as NaN, so that an entry
    transform_weights failed to write poisons what reads it."""
    n_p, n_q = (w.shape[1], w.shape[0]) if flip else (w.shape[0], w.shape[1])
    u = np.full(_geometry.winograd_table(n_p, n_q), np.nan, w.dtype)
    transform_weights(w, u, flip)
    return u


@njit(cache=True)
def _v_rows(c_in, tb):
    """Where each channel's row of V[xi] starts, from V[xi]'s start: tap_sums' offsets."""
    rows = np.empty(c_in, np.uint64)
    for c in range(c_in):
        rows[c] = c * tb
    return rows


@njit(cache=True)
def _products(f, u, rows, lay, tb, cols, c_in, c_out, o0, o1, c0, c1):
    """M[xi][o - o0] = the sum over channels c0 <= c < c1 of U[xi][o, c] V[xi][c] for the outputs
    o0 <= o < o1 (o0 a multiple of OUTS) and `cols` tiles: taps.tap_sums a block of OUTS outputs
    at a time, since the table u packs a block's weights over all c_in channels. One function
    for _forward_part and _channel_part, so that tap_sums' code is compiled once for both."""
    table = _outs(c_out) * c_in  # one U[xi]
    for xi in range(16):
        for b0 in range(o0, o1, OUTS):
            tap_sums(f, u, rows, f, u64(lay[1] + xi * c_in * tb), u64(xi * table + b0 * c_in + c0 * OUTS), u64(c0),
                     u64(lay[2] + (xi * (o1 - o0) + b0 - o0) * tb), u64(cols), u64(tb), u64(min(OUTS, o1 - b0)),
                     u64(c1 - c0))


@njit(cache=True)
def _forward_part(x, u, b, out, pt, pl, relu, workspace, p, parts, groups):
    """Part p's images and output channels (taps.shares) of the Winograd forward (the module
    docstring's forward): per block of images V, the 16 products with the table u's U of the
    part's filters (transform_weights: the weights', or for the input gradient the flipped
    ones), y."""
    n, c_in, h, wd = x.shape
    c_out, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    th, tw, grid, per, tb = _plan(x.shape, c_out, ho, wo, workspace)[:5]
    lo, hi, o0, o1 = share(n, c_out, parts, groups, p)
    lay = _layout(c_in, o1 - o0, th, tw, tb)  # within the slot planned for all c_out channels
    xf, yf, f = x.reshape(-1), out.reshape(-1), workspace[p]
    rows = _v_rows(c_in, tb)
    for i0 in range(lo, hi, per):
        i1 = min(hi, i0 + per)
        for i in range(i0, i1):
            _input_transform(xf, i * c_in * h * wd, c_in, np.int64(0), c_in, h, wd, f, lay, tb, (i - i0) * grid, th, tw, pt, pl)
        _products(f, u, rows, lay, tb, (i1 - i0) * grid, c_in, c_out, o0, o1, np.int64(0), c_in)
        for i in range(i0, i1):
            at = (i * c_out + o0) * ho * wo
            _output_transform(f, lay, tb, o1 - o0, (i - i0) * grid, th, tw, yf, at, ho, wo, b, o0)
            if relu:
                rectify(yf, at, (o1 - o0) * ho * wo)


# ---- the entry points: conv.py's signatures and checks -----------------------------------

@njit(cache=True, parallel=True)
def conv2d_forward(x, w, u, b, out, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace,
                   relu):
    """out = conv2d(x, w) + b (b may be None), NCHW, then max(out, 0) with relu (conv.rectify),
    for a convolution geometry.winograd accepts; u is w's table (transform_weights(w, u, False)).

    With fewer images than threads each image's output channels are split too (taps.shares),
    each part transforming the image itself: at batch 1 the second thread had nothing to do.
    Measured on the 2-core EPYC, small_cnn's 32 -> 64 channel forward at 14x14 took 57 us on
    one thread and 34-44 us on two, its input gradient 61 and 38-49. Splitting the image's
    transform between the parts as well, a second parallel loop doing the products once
    the transforms were done, took longer: 42-58 and 52-66 us."""
    _check(x.shape, w.shape, out.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    _require(w.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, x.shape[1], w.shape[0])
    _plan(x.shape, out.shape[1], out.shape[2], out.shape[3], workspace)  # raises before the threads
    _check_table(u, w.shape[0], w.shape[1])
    parts, split = shares(x.shape[0], out.shape[1], workspace.shape[0])
    for p in prange(parts):
        _forward_part(x, u, b, out, pad_t, pad_l, np.bool_(relu), workspace, np.int64(p), np.int64(parts),
                      np.int64(split))


@njit(cache=True, parallel=True)
def conv2d_grad_input(g, w, u, dx, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace):
    """dx = the transposed convolution of g by w: the forward of g by w flipped, padded 2 - pad
    (u: the flipped filters' table, transform_weights(w, u, True)).

    With fewer images than slots and at least two of g's channels per slot, each image's sum
    over g's channels is split instead (_channel_part), as conv.py's input gradient does:
    part p transforms a run of the channels and sums their products into a partial dx of its
    own, and the partials are added in part order. Each thread then transforms only the
    channels of g it wrote itself in the backward before (a max pool's, split by planes),
    where split by output channels each part transformed all of them, half from the other
    core. Measured on the 2-core Xeon, small_cnn's 64 -> 32 channel input gradient at 14x14
    and batch 1: each part's transform of all 64 channels had taken 30 of its 55 us, and the
    pass 66-70 us alone, 53-57 so. In the saliency gradient, old and new alternately in one
    process (2026-12-08, a fast minute and a slow one): this pass 54 against 63 us and 69
    against 79, the whole step 203 against 215 and 286 against 290. The partials are added
    by each part for a run of dx's channels, the planes the max pool's backward after it
    gives that thread: added by one thread, that backward read half of them from the other
    core and the step gained nothing (184 against 183)."""
    _check(dx.shape, w.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    _require(w.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, dx.shape[1], w.shape[0])
    n, slots, plane = g.shape[0], workspace.shape[0], dx[0].size
    lay = _plan(g.shape, dx.shape[1], dx.shape[2], dx.shape[3], workspace)[5]
    _check_table(u, w.shape[1], w.shape[0])
    split = n < slots and g.shape[1] >= 2 * slots and workspace.shape[1] >= lay[4] + n * plane
    parts, groups_ = shares(n, dx.shape[1], slots)
    count = slots if split else parts
    for p in prange(count):  # one loop for both, as conv.py's (one compile of the loop)
        if split:
            _channel_part(g, u, dx, 2 - pad_t, 2 - pad_l, workspace, np.int64(p), np.int64(slots))
        else:
            _forward_part(g, u, None, dx, 2 - pad_t, 2 - pad_l, np.bool_(False), workspace, np.int64(p),
                          np.int64(parts), np.int64(groups_))
    if split:  # each part adds the partials of a run of dx's channels: those it will read next
        for p in prange(slots):
            c0, c1 = _channel_run(dx.shape[1], slots, p)
            at, run = c0 * dx[0, 0].size, (c1 - c0) * dx[0, 0].size
            for i in range(n):
                sum_parts(workspace, lay[4] + i * plane + at, run, slots, dx[i].reshape(-1)[at:at + run])


@njit(cache=True)
def _channel_run(channels, slots, p):
    """Part p's run [c0, c1) of `channels` split among `slots` parts: the channels of g it
    transforms, and the planes of dx whose partials it adds (conv2d_grad_input)."""
    return channels * p // slots, channels * (p + 1) // slots


@njit(cache=True)
def _channel_part(g, u, dx, pt, pl, workspace, p, slots):
    """Part p's run of g's channels [c0, c1) of the input gradient of every image, into its
    slot's partial images after the layout (conv2d_grad_input): V of the run's channels,
    the 16 products over them (taps.tap_sums, a block of OUTS outputs at a time: the table
    packs each block's weights over all the channels), y = A^T M A."""
    n, c_in, h, wd = g.shape
    c_out, ho, wo = dx.shape[1], dx.shape[2], dx.shape[3]
    th, tw, grid, per, tb, lay, _ = _plan(g.shape, c_out, ho, wo, workspace)
    c0, c1 = _channel_run(c_in, slots, p)
    gf, f, plane = g.reshape(-1), workspace[p], c_out * ho * wo
    rows = _v_rows(c_in, tb)
    for i0 in range(0, n, per):
        i1 = min(n, i0 + per)
        for i in range(i0, i1):
            _input_transform(gf, i * c_in * h * wd, c_in, c0, c1, h, wd, f, lay, tb, (i - i0) * grid, th, tw, pt, pl)
        _products(f, u, rows, lay, tb, (i1 - i0) * grid, c_in, c_out, np.int64(0), c_out, c0, c1)
        for i in range(i0, i1):
            _output_transform(f, lay, tb, c_out, (i - i0) * grid, th, tw, f, lay[4] + i * plane, ho, wo, None,
                              np.int64(0))


@njit(cache=True)
def _grad_weight_part(g, x, pt, pl, workspace, p):
    """Part p's images of the weight gradient, summed into its slot's dU."""
    n, c_in, h, wd = x.shape
    c_out, ho, wo = g.shape[1], g.shape[2], g.shape[3]
    th, tw, grid, per, tb, lay, parts = _plan(x.shape, c_out, ho, wo, workspace)
    xf, gf = x.reshape(-1), g.reshape(-1)
    f, du, v, m, lo, hi = _slot(workspace, p, n, c_in, c_out, tb, lay, parts)
    for i0 in range(lo, hi, per):
        i1 = min(hi, i0 + per)
        for i in range(i0, i1):
            _input_transform(xf, i * c_in * h * wd, c_in, np.int64(0), c_in, h, wd, f, lay, tb, (i - i0) * grid, th, tw, pt, pl)
            _grad_transform(gf, i * c_out * ho * wo, c_out, ho, wo, f, lay, tb, (i - i0) * grid, th, tw)
        cols = (i1 - i0) * grid
        for xi in range(16):
            gemm_block(m[xi, :, :cols], v[xi, :, :cols], du[xi], False, True, i0 != lo)


@njit(cache=True, parallel=True)
def conv2d_grad_weight(g, x, dw, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace):
    """dw = the weight gradient [O, C, 3, 3] for output gradient g."""
    _check(x.shape, dw.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups)
    _require(dw.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, x.shape[1], dw.shape[0])
    c_out, c_in = dw.shape[0], dw.shape[1]
    lay, parts = _plan(x.shape, c_out, g.shape[2], g.shape[3], workspace)[5:]
    for p in prange(parts):
        _grad_weight_part(g, x, pad_t, pad_l, workspace, np.int64(p))
    sum_parts(workspace, 0, 16 * c_out * c_in, parts, workspace[0, :16 * c_out * c_in])
    total = workspace[0, :16 * c_out * c_in].reshape(16, c_out, c_in)
    _unweights(total, dw, workspace[0, lay[1]:lay[2]])  # part 0's V region: done with
