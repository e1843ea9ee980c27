"""Window geometry and workspace sizes of the convolution and pooling kernels, without Numba.

The code generator needs these numbers to write a kernel call (dslc/codegen/externs.py)
and the runner to size the shared workspace; keeping them out of the kernel modules
means generating source never imports Numba (`dslc compile` of a cached model is fast).
"""
from __future__ import annotations

import os

from dslc.ops.conv import window

# Elements of one thread's im2col block: a block of output rows of one image whose
# columns (kernel taps x pixels) stay in the core's L2 cache between im2col and GEMM.
COL_BLOCK = 1 << 17
# Floats of one thread's Winograd block (its V and M), and the fewest channels in and out
# for which Winograd beats im2col (runtime/cpu/winograd.py; measured: benchmarks/kernels.py).
WINOGRAD_BLOCK = 1 << 18
WINOGRAD_MIN_CHANNELS = 16
# Rows of at most this many tiles are laid out without a column of padding tiles
# (winograd_columns).
WINOGRAD_DENSE_TILES = 7
# Positions per vector of the direct convolutions' runs (runtime/cpu/taps.py): a run is a
# whole number of vectors of float32 (16 lanes) and of float64 (8).
RUN_LANES = 16
# Output channels per register block of taps.tap_sums (runtime/cpu/taps.py; measured: 8
# and 16 alike, 4 slower): its packed weights come in whole blocks.
TAP_OUTS = 8
# Elements of the planes and output gradients of one thread's block of images in the
# weight gradient of a strided convolution (runtime/cpu/strided.py): near the core's L2.
PHASE_BLOCK = 1 << 17


def geometry(attrs, size) -> tuple[int, int, int, int, int, int, int, int]:
    """(stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w) of a conv2d node.

    attrs: the node's attributes (kernel, stride, pad, dilation); size: input (H, W).
    >>> geometry({"kernel": 3, "stride": 2, "pad": "same", "dilation": 1}, (5, 6))
    (2, 2, 1, 1, 0, 1, 1, 1)
    """
    win = window(attrs, tuple(size), "conv2d")
    (sh, sw), (dh, dw), ((pt, pb), (pl, pr)) = win.stride, win.dilation, win.pads
    return sh, sw, pt, pb, pl, pr, dh, dw


def pool_geometry(attrs, size, what: str = "maxpool") -> tuple[int, int, int, int, int, int]:
    """(kh, kw, stride_h, stride_w, pad_t, pad_l) of a maxpool/avgpool node for input (H, W).

    >>> pool_geometry({"kernel": 3, "stride": 2, "pad": 1}, (5, 6))
    (3, 3, 2, 2, 1, 1)
    """
    win = window(attrs, tuple(size), what)
    return win.kernel + win.stride + (win.pads[0][0], win.pads[1][0])


def default_parts() -> int:
    """Threads Numba starts with (NUMBA_NUM_THREADS, else the CPU count): workspace slots to plan."""
    return int(os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count() or 1)


def tile_rows(k: int, ho: int, wo: int) -> int:
    """Output rows per im2col block: all of them when k*ho*wo fits COL_BLOCK, else balanced
    blocks of at most COL_BLOCK elements (at least one row)."""
    most = max(1, min(ho, COL_BLOCK // max(1, k * wo)))
    tiles = -(-ho // most)
    return -(-ho // tiles)


def phased(dh: int, dw: int) -> bool:
    """Whether a convolution can run directly from its input's phase planes
    (dslc.runtime.cpu.strided): undilated, any stride, padding and size. With stride 1 there
    is one plane, the image itself zero-padded; with stride s, s x s planes (resnet's 3x3
    stride-2 convolutions padded 1, a 1x1 stride-2 shortcut, a 7x7 stride-2 stem), the later
    ones a row or column short where a side is no multiple of the stride (AlexNet's 11x11
    stride 4 on 227: phases of 57, 57, 57 and 56 rows). The planes are as wide as the
    output needs (phase_layout's wq) and the columns past it are computed and dropped.
    Until 2026-12-07 the sides had to be multiples of the strides and the output exactly as
    wide as a plane (w / sw == wo), which left LeNet-5's unpadded 5x5 convolutions and
    AlexNet's first to im2col; all three passes agree with conv.py's for these
    (tests/test_cpu_kernels.py: DIRECT_CASES, PHASED_CASES).
    >>> phased(1, 1), phased(2, 2)
    (True, False)
    """
    return dh == 1 and dw == 1


def phase_layout(kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, h: int, w: int, ho: int, wo: int,
                 c: int, o: int, n: int) -> tuple[int, int, int, int, int, int, int, int, int, int]:
    """The zero-padded phase planes of a `phased` convolution (dslc.runtime.cpu.strided) from
    c to o channels at batch n: (top, left, wq, plane, run, run_in, front, planes, row,
    images).

    Phase (ph, pw) of a channel, P[r, q] = x[c, r*sh + ph, q*sw + pw], is stored with `top`
    zero rows above and `left` zero columns before it in a plane of `plane` = hq * wq
    elements, so that tap (u, v), which reads P at row i + (u - pt) // sh and column
    j + (v - pl) // sw for output pixel (i, j), reads the stored plane at the flat position
    i*wq + j plus a non-negative offset (at most `front`). The output is computed on the
    same grid, ho rows of wq, the columns past wo computed and dropped: a `run` of ho*wq
    rounded up to RUN_LANES; run_in: the rows of a plane that hold data, from the start
    of the first (top*wq on), rounded up likewise. planes: the elements
    of an image's c*sh*sw planes, with room for the last one's run past its end; row: of
    an output channel's gradient, `front` zeros before its run, and room for a plane's
    run_in after. images: per block of the weight gradient, as many as keep their planes and
    output gradients within PHASE_BLOCK elements.
    >>> phase_layout(3, 3, 2, 2, 1, 1, 32, 32, 16, 16, 16, 32, 128)
    (1, 1, 17, 289, 272, 272, 18, 18786, 307, 4)
    """
    hp, wp = -(-h // sh), -(-w // sw)  # the first phases' rows and columns (later ones may be one short)
    top, left = -((-pt) // sh), -((-pl) // sw)  # the most a tap reads above or left of a plane
    below, right = (kh - 1 - pt) // sh, (kw - 1 - pl) // sw  # and below or right of an output pixel
    hq, wq = top + max(hp, ho + below), left + max(wp, wo + right)
    plane = hq * wq
    run, run_in = -(-ho * wq // RUN_LANES) * RUN_LANES, -(-hp * wq // RUN_LANES) * RUN_LANES
    front = (top + below) * wq + left + right
    planes, row = c * sh * sw * plane + run + front, front + max(top * wq + run_in, run)
    images = max(1, min(n, PHASE_BLOCK // (planes + o * row)))
    return top, left, wq, plane, run, run_in, front, planes, row, images


def phase_slot(c: int, o: int, cg: int, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, h: int, w: int,
               ho: int, wo: int, n: int) -> int:
    """Elements of one thread's slot for a `phased` convolution (dslc.runtime.cpu.strided)."""
    return phase_need(phase_layout(kh, kw, sh, sw, pt, pl, h, w, ho, wo, c, o, n), c, o, cg * kh * kw, sh * sw)


def phase_need(layout, c: int, o: int, taps: int, phases: int) -> int:
    """The slot a `phased` convolution's kernels use, from its phase_layout: the forward
    [planes | outputs], the input gradient [output gradient | input planes' gradients],
    the weight gradient [a block of images' planes | their output gradients | RUN_LANES
    lanes of each dw entry]."""
    run, run_in, planes, row, images = layout[4], layout[5], layout[7], layout[8], layout[9]
    return max(planes + o * run, o * row + c * phases * run_in, images * (planes + o * row) + o * taps * RUN_LANES)


def pass_modules(kh: int, kw: int, geom, groups: int, c: int, o: int) -> tuple[str, str, str]:
    """The library modules (dslc.runtime.cpu) of a convolution's forward, input gradient and
    weight gradient, from c to o channels; geom is its `geometry` (strides, pads, dilations).
    Each pass goes where it was measured faster, im2col + GEMM -> direct, timed alternately
    on two threads of the EPYC:

    - 3x3 stride 1 with enough channels: all three by Winograd (`winograd`).
    - strided and undilated: the forward directly from the phase planes (strided.py);
      the input gradient likewise with enough input channels, as at stride 1, and the
      weight gradient unless the kernel is 1x1 with more than TAP_OUTS outputs (batch 128
      unless said): forward 3x32 3x3 stride 2 unpadded 0.75 -> 0.38 ms, 16x32
      0.97 -> 0.43, 16x32 at 15x15 padded 1 1.37 -> 0.54, 32x64 at 7x7 1.04 -> 0.82, 64x128
      1x1 at 15x15 (batch 64) 0.68 -> 0.54, 3x96 11x11 stride 4 at 227x227 (batch 16, AlexNet's
      first) 27.6 -> 16.2; input gradient 16x32 1.00 -> 0.44, 1.13 -> 0.53, 32x64 0.85 ->
      0.84, but 3x32 0.70 -> 0.80, 3x96 11x11 27.1 -> 44.3 and 64x128 1x1 0.54 -> 0.59;
      weight gradient 0.81 -> 0.52, 1.13 -> 0.67, 1.59 -> 0.61, 1.21 -> 1.10, 27.7 -> 17.6,
      but 64x128 1x1 0.77 -> 1.04 and 32x64 1x1 at 16x16 0.50 -> 0.71.
    - stride 1 and undilated: the forward directly from the zero-padded image; the input
      gradient likewise when a group has at least 3/4 of a block of TAP_OUTS input channels
      (tap_sums computes that gradient's channels in such blocks); the weight gradient
      likewise for kernels of 25 taps or more with at most 64 outputs per group, or for
      TAP_OUTS outputs per group or fewer.
      im2col's GEMM is thin when C*kh*kw is small (batch 128 unless said): forward 1x32 3x3 at
      28x28 (batch 32) 0.18-0.30 -> 0.13-0.25 ms, 3x32 3x3 at 32x32 2.74 -> 1.64, 3x64 7x7
      21.5 -> 15.1, 64x256 1x1 at 8x8 (batch 64) 0.98 -> 0.81, and with fewer outputs than
      a block 1x6 5x5 at 28x28 0.47 -> 0.26, 3x4 3x3 0.59 -> 0.33, 16x2 3x3 0.79 -> 0.43;
      input gradient 64x256 1x1 0.95 -> 0.81, 8x32 5x5 7.6 -> 4.4, 6x16 5x5 unpadded at
      14x14 (LeNet-5's C3) 1.48 -> 0.80, but 1x32 3x3 0.42 -> 2.77 and 3x32 3x3 1.74 ->
      3.47 (blocks of 8 input channels holding one or three); weight gradient 6x16 5x5
      unpadded 1.97 -> 0.58, 3x16 5x5 9.4 -> 3.0, 1x6 5x5 0.77 -> 0.55, 3x4 3x3 0.70 ->
      0.44, 16x2 3x3 0.88 -> 0.29, 32x64 5x5 at 16x16 (batch 64) 23.0 -> 19.5, but 1x32 3x3
      2.0 -> 2.3, 3x32 3x3 3.8 -> 3.7, 64x256 1x1 1.25 -> 2.11 and 96x256 5x5 at 27x27
      (batch 16, AlexNet's second) 134 -> 148.
    - otherwise im2col + GEMM (conv.py).
    >>> pass_modules(3, 3, (1, 1, 1, 1, 1, 1, 1, 1), 1, 1, 32)
    ('strided', 'conv', 'conv')
    >>> pass_modules(5, 5, (1, 1, 0, 0, 0, 0, 1, 1), 1, 6, 16)
    ('strided', 'strided', 'strided')
    """
    sh, sw, pt, pb, pl, pr, dh, dw = geom
    if winograd(kh, kw, sh, sw, dh, dw, groups, pt, pb, pl, pr, c, o):
        return "winograd", "winograd", "winograd"
    if not phased(dh, dw):
        return "conv", "conv", "conv"
    direct = lambda yes: "strided" if yes else "conv"
    grad_input = direct(4 * (c // groups) >= 3 * TAP_OUTS)
    if sh > 1 or sw > 1:
        return "strided", grad_input, direct(kh * kw > 1 or o // groups <= TAP_OUTS)
    return "strided", grad_input, direct((kh * kw >= 25 and o // groups <= 64) or o // groups <= TAP_OUTS)


def conv_modules(attrs, size, c_in: int, c_out: int) -> tuple[str, str, str]:
    """pass_modules of a conv2d node (attributes: kernel, stride, pad, dilation, groups) on an
    input of spatial `size` from c_in to c_out channels: what the generated calls name.
    >>> conv_modules({"kernel": 3, "stride": 2, "pad": 1, "dilation": 1, "groups": 1}, (32, 32), 16, 32)
    ('strided', 'strided', 'strided')
    """
    win = window(attrs, tuple(size), "conv2d")
    (kh, kw) = win.kernel
    return pass_modules(kh, kw, geometry(attrs, size), attrs["groups"], c_in, c_out)


def winograd(kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, groups: int, pt: int, pb: int, pl: int, pr: int,
             c_in: int, c_out: int) -> bool:
    """Whether a convolution runs by Winograd F(2x2, 3x3) (dslc.runtime.cpu.winograd): 3x3,
    stride 1, undilated, ungrouped, padded at most 2 on each side (so that its input
    gradient, padded 2 - pad, is one too), at least WINOGRAD_MIN_CHANNELS in and out (a first
    layer's 3 channels make GEMMs too thin to gain; im2col wins there).
    >>> winograd(3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 32, 64), winograd(3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 32, 64)
    (True, False)
    """
    return (kh == 3 and kw == 3 and sh == 1 and sw == 1 and dh == 1 and dw == 1 and groups == 1
            and max(pt, pb, pl, pr) <= 2 and min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS)


def uses_winograd(attrs, size, c_in: int, c_out: int) -> bool:
    """Whether a conv2d node (attributes: kernel, stride, pad, dilation, groups) on an input of
    spatial `size` from c_in to c_out channels, and its gradients, run by Winograd.
    >>> uses_winograd({"kernel": 3, "stride": 1, "pad": "same", "dilation": 1, "groups": 1}, (14, 14), 32, 64)
    True
    """
    kh, kw = window(attrs, tuple(size), "conv2d").kernel
    sh, sw, pt, pb, pl, pr, dh, dw = geometry(attrs, size)
    return winograd(kh, kw, sh, sw, dh, dw, attrs["groups"], pt, pb, pl, pr, c_in, c_out)


def winograd_images(c_in: int, c_out: int, tiles: int, n: int) -> int:
    """Images per Winograd block: as many as keep its V and M (16 * (C + O) * tiles floats
    each image) within WINOGRAD_BLOCK, at least one, at most the batch."""
    return max(1, min(n, WINOGRAD_BLOCK // (16 * (c_in + c_out) * tiles)))


def winograd_columns(tw: int) -> int:
    """Columns of a Winograd image's grid of tiles, tw tiles wide (runtime/cpu/winograd.py).
    A tile reads the column of the next one, so the planes have one column more than the
    tiles, and numbered with the planes' columns the grid has a column of padding tiles,
    computed and dropped: 1 / (tw + 1) of the GEMMs' work, a fifth for 8x8 images. At most
    WINOGRAD_DENSE_TILES wide, the grid is the tiles alone, and a copy of the planes one
    column on supplies the next column. Measured per convolution pass (forward, input or
    weight gradient, batch 128 or 64): 8x8 images 12-23% faster, 14x14 14-20%; 16x16 7-9%
    slower and 32x32 13-32% (the copy costs more than the 1 / 9 or 1 / 17 it saves).
    >>> winograd_columns(7), winograd_columns(16)
    (7, 17)
    """
    return tw if tw <= WINOGRAD_DENSE_TILES else tw + 1


def winograd_planes(th: int, tw: int, we: int) -> tuple[int, int]:
    """(planes, elements of each) of a Winograd image's channel split into parity planes:
    four of th + 1 rows of we = winograd_columns(tw) (and one element more, where the grid
    has padding tiles), and four copies one column on where it has none."""
    return (4, (th + 1) * we + 1) if we > tw else (8, (th + 1) * we)


def winograd_outs(c_out: int) -> int:
    """Output channels of a Winograd slot's transformed weights U: whole TAP_OUTS blocks, as
    taps.tap_sums reads them (runtime/cpu/winograd.py)."""
    return -(-c_out // TAP_OUTS) * TAP_OUTS


def winograd_table(c_out: int, c_in: int) -> int:
    """Elements of a Winograd pass's table of transformed weights, U for c_out filters of c_in
    channels each (runtime/cpu/winograd.transform_weights): 16 values per filter, in whole
    TAP_OUTS blocks of filters."""
    return 16 * winograd_outs(c_out) * c_in


def winograd_slot(c_in: int, c_out: int, out_hw, n: int) -> int:
    """Elements of one thread's slot for a Winograd convolution from c_in to c_out channels
    with output out_hw at batch n: [U | P | V | M] (runtime/cpu/winograd.py)."""
    th, tw = -(-out_hw[0] // 2), -(-out_hw[1] // 2)
    we = winograd_columns(tw)
    grid = th * we
    count, plane = winograd_planes(th, tw, we)
    return (winograd_table(c_out, c_in) + count * plane
            + 16 * (c_in + c_out) * winograd_images(c_in, c_out, grid, n) * grid)


def workspace_shape(x_shape, w_shape, out_hw, geom, parts: int | None = None) -> tuple[int, int]:
    """(parts, slot elements) of the workspace for conv2d_forward/grad_input/grad_weight
    (dslc.runtime.cpu.conv): one slot per thread that works on its own images at once.

    x_shape [N, C, H, W], w_shape [O, C/G, kh, kw], out_hw (Ho, Wo), geom the convolution's
    `geometry` (strides, pads, dilations); parts: the threads (default: default_parts()).
    A slot holds one im2col block and one weight-gradient partial, or, where the
    convolution runs by strided.py (`phased`) or by Winograd, what its forward, input and
    weight gradient need.
    >>> workspace_shape((64, 32, 14, 14), (64, 32, 3, 3), (14, 14), (1, 1, 2, 2, 2, 2, 2, 2), parts=2)  # dilated: im2col
    (2, 74880)
    """
    n, c, h, w = x_shape
    o, cg, kh, kw = w_shape
    k = c * kh * kw
    slots = max(1, parts or default_parts())
    # beside the block: a weight-gradient partial, or with fewer images than slots the
    # input gradient's partial images (conv.py's _channel_share)
    slot = k * tile_rows(k, *out_hw) * out_hw[1] + max(o * cg * kh * kw, n * c * h * w if n < slots else 0)
    sh, sw, pt, pb, pl, pr, dh, dw = geom
    modules = pass_modules(kh, kw, geom, c // cg, c, o)
    if set(modules) == {"strided"}:
        slot = 0  # no im2col block
    if "strided" in modules:
        slot = max(slot, phase_slot(c, o, cg, kh, kw, sh, sw, pt, pl, h, w, out_hw[0], out_hw[1], n))
    if "winograd" in modules:
        partials = n * c * h * w if n < slots else 0  # the input gradient's (winograd._channel_part)
        slot = max(slot, winograd_slot(c, o, out_hw, n), winograd_slot(o, c, (h, w), n) + partials)
    return slots, slot
