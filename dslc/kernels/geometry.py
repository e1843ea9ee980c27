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


def workspace_shape(x_shape, w_shape, out_hw, parts: int | None = None) -> tuple[int, int]:
    """(parts, slot elements) of the workspace for conv2d_forward/grad_input/grad_weight
    (dslc.runtime.cpu.conv): one slot per thread that works on its own images at once.

    x_shape [N, C, H, W], w_shape [O, C/G, kh, kw], out_hw (Ho, Wo); parts: the threads
    (default: default_parts()). A slot holds one im2col block and one weight-gradient partial.
    >>> workspace_shape((64, 32, 14, 14), (64, 32, 3, 3), (14, 14), parts=2)
    (2, 74880)
    """
    c = x_shape[1]
    o, cg, kh, kw = w_shape
    k = c * kh * kw
    return max(1, parts or default_parts()), k * tile_rows(k, *out_hw) * out_hw[1] + o * cg * kh * kw
