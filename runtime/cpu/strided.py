"""conv2d forward, input gradient and weight gradient for strided convolutions that read
their input through its phase planes (dslc/runtime/cpu/phases.py): conv.py's kernels,
compiled with that im2col (their `phased` argument).

`geometry.uses_phases` chooses this module where the call is generated (the static
shapes: strided, undilated, the input's sides multiples of the strides and the output as
wide as a plane), as it chooses winograd.py; a model without such a convolution never
compiles it (these kernels took 7 s more to compile than conv.py's alone when both
im2cols lived in every conv.py kernel). The workspace's slot has room for one channel's
planes (geometry.workspace_shape).
"""
from __future__ import annotations

from numba import njit

from dslc.kernels import geometry as _geometry
from dslc.runtime.cpu import conv

_phased = njit(cache=True)(_geometry.phased)


@njit(cache=True)
def _require(x_shape, out_shape, sh, sw, pt, pb, pl, pr, dh, dw, groups, w_shape):
    conv._check(x_shape, w_shape, out_shape, sh, sw, pt, pb, pl, pr, dh, dw, groups)
    if not _phased(sh, sw, dh, dw, x_shape[2], x_shape[3], out_shape[3]):
        raise ValueError("conv2d: not a phased convolution (geometry.phased); use conv.py's kernels")


@njit(cache=True)
def conv2d_forward(x, w, b, out, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace):
    """out = conv2d(x, w) + b (b may be None), NCHW, for a convolution geometry.phased accepts."""
    _require(x.shape, out.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, w.shape)
    conv.conv2d_forward(x, w, b, out, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace, True)


@njit(cache=True)
def conv2d_grad_input(g, w, dx, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace):
    """dx = the transposed convolution of g by w."""
    _require(dx.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, w.shape)
    conv.conv2d_grad_input(g, w, dx, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, workspace, True)


@njit(cache=True)
def conv2d_grad_weight(g, x, dw, db, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups,
                       workspace):
    """dw = the weight gradient; db = sum of g over (N, Ho, Wo), or None."""
    _require(x.shape, g.shape, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups, dw.shape)
    conv.conv2d_grad_weight(g, x, dw, db, stride_h, stride_w, pad_t, pad_b, pad_l, pad_r, dil_h, dil_w, groups,
                            workspace, True)
