"""Convolution and pooling over NCHW images.

conv2d's weight is (C_out, C_in/groups, kh, kw). `pad=same` pads so that the output
has ceil(H/stride) rows (TensorFlow's rule, asymmetric when the total is odd: the
extra row goes bottom/right); `pad=valid` is no padding.

All four ops slide a window over the padded image; one `Window` (kernel, stride,
dilation, padding and output size) serves their shape rules and references. The
references use im2col: `Window.view` is a strided view [N, C, Ho, Wo, kh, kw] of
every window (no copy), and `Window.fold` is its adjoint (col2im), which scatters
window-shaped cotangents back onto the image: the input gradients of all four ops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dslc.ir.graph import Init
from dslc.ir.types import TensorType
from dslc.ops.registry import (Attr, OpDef, ParamSlot, Sample, ShapeError, expect_float, expect_rank,
                               expect_static, pair, register)


def same_padding(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding that makes the output ceil(size/stride) long."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def out_size(size: int, k: int, stride: int, dilation: int, pads: tuple[int, int], what: str) -> int:
    span = (k - 1) * dilation + 1
    if size + sum(pads) < span:
        raise ShapeError(f"{what}: the window ({span} wide after dilation) is larger than the padded input "
                         f"({size} + {sum(pads)})", code="E0311")
    return (size + sum(pads) - span) // stride + 1


@dataclass(frozen=True)
class Window:
    """The geometry of a sliding window over [N, C, H, W]: pairs (rows, columns) each."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))
    out: tuple[int, int]

    def pad(self, x, value: float = 0.0):
        return np.pad(x, ((0, 0), (0, 0)) + self.pads, constant_values=value)

    def view(self, xp):
        """[N, C, Hp, Wp] (already padded) -> read-only view [N, C, Ho, Wo, kh, kw]."""
        (kh, kw), (sh, sw), (dh, dw), (ho, wo) = self.kernel, self.stride, self.dilation, self.out
        v = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        return v[:, :, :(ho - 1) * sh + 1:sh, :(wo - 1) * sw + 1:sw, ::dh, ::dw]

    def fold(self, cols, size: tuple[int, int]):
        """Adjoint of pad-then-view: sum [N, C, Ho, Wo, kh, kw] back onto an unpadded [N, C, H, W]."""
        (kh, kw), (sh, sw), (dh, dw), (ho, wo) = self.kernel, self.stride, self.dilation, self.out
        (pt, pb), (pl, pr) = self.pads
        out = np.zeros(cols.shape[:2] + (size[0] + pt + pb, size[1] + pl + pr), cols.dtype)
        # One vectorised add per kernel offset: within one offset no two windows overlap.
        for u in range(kh):
            for v in range(kw):
                out[:, :, u * dh:u * dh + (ho - 1) * sh + 1:sh, v * dw:v * dw + (wo - 1) * sw + 1:sw] += cols[..., u, v]
        return out[:, :, pt:pt + size[0], pl:pl + size[1]]


def window(attrs, size, what: str) -> Window:
    """The Window of conv2d or a pooling op for an input of spatial `size` (checks the attributes)."""
    for key in ("kernel", "stride", "dilation"):
        if attrs.get(key) is not None and any(v <= 0 for v in pair(attrs[key])):
            raise ShapeError(f"{what}: {key} must be positive, got {attrs[key]}", code="E0310")
    kernel = pair(attrs["kernel"])
    stride = kernel if attrs.get("stride") is None else pair(attrs["stride"])  # pooling: stride=none
    dilation = pair(attrs.get("dilation", 1))
    pad = attrs["pad"]
    if pad == "same":
        pads = (same_padding(size[0], kernel[0], stride[0], dilation[0]),
                same_padding(size[1], kernel[1], stride[1], dilation[1]))
    elif pad == "valid":
        pads = ((0, 0), (0, 0))
    else:
        if any(v < 0 for v in pair(pad)):
            raise ShapeError(f"{what}: pad must be non-negative, got {pad}", code="E0310")
        ph, pw = pair(pad)
        pads = ((ph, ph), (pw, pw))
    out = (out_size(size[0], kernel[0], stride[0], dilation[0], pads[0], what),
           out_size(size[1], kernel[1], stride[1], dilation[1], pads[1], what))
    return Window(kernel, stride, dilation, pads, out)


def _image(t: TensorType, what: str) -> tuple[int, int]:
    """Check an NCHW image type; its static spatial size."""
    expect_float(t, what)
    expect_rank(t, 4, what, hint=f"{what} takes images [N, C, H, W]")
    return expect_static(t.shape[2], f"{what} spatial size"), expect_static(t.shape[3], f"{what} spatial size")


# ---- conv2d ---------------------------------------------------------------------------

def _in_channels(ins, attrs) -> int:
    x = ins[0]
    _image(x, "conv2d")
    c = expect_static(x.shape[1], "conv2d input channels")
    g = attrs["groups"]
    if g <= 0 or c % g or attrs["out"] % g:
        raise ShapeError(f"conv2d: groups={g} must divide both input channels ({c}) and out ({attrs['out']})",
                         code="E0312")
    return c


def _conv_shape(ins, attrs):
    c = _in_channels(ins, attrs)
    if attrs["out"] <= 0:
        raise ShapeError(f"conv2d: out must be positive, got {attrs['out']}", code="E0310")
    x = ins[0]
    win = window(attrs, x.shape[2:], "conv2d")
    if len(ins) > 1 and ins[1].shape != (attrs["out"], c // attrs["groups"]) + win.kernel:
        raise ShapeError(f"conv2d: weight {ins[1].show()} does not fit")
    return TensorType(x.dtype, (x.shape[0], attrs["out"]) + win.out)


def _conv_flops(ins, out, attrs):
    kh, kw = pair(attrs["kernel"])
    per_out = 2 * (ins[0].shape[1] // attrs["groups"]) * kh * kw
    return out.numel() * (per_out + (1 if attrs["bias"] else 0))


def _grouped(a, groups: int):
    """[N, C, ...] -> [N, G, C/G, ...]: the channel axis split by group."""
    return a.reshape(a.shape[:1] + (groups, -1) + a.shape[2:])


def _conv_ref(x, w, b=None, **attrs):
    win, groups = window(attrs, x.shape[2:], "conv2d"), attrs["groups"]
    cols = _grouped(win.view(win.pad(x)), groups)  # [N, G, C/G, Ho, Wo, kh, kw]
    y = np.einsum("ngchwuv,gocuv->ngohw", cols, w.reshape((groups, -1) + w.shape[1:]), optimize=True)
    y = y.reshape((x.shape[0], -1) + win.out)
    return (y + b.reshape(1, -1, 1, 1) if b is not None else y).astype(x.dtype)


def _conv_grad_input_ref(g, w, size, **attrs):
    win, groups = window(attrs, size, "conv2d"), attrs["groups"]
    cols = np.einsum("ngohw,gocuv->ngchwuv", _grouped(g, groups), w.reshape((groups, -1) + w.shape[1:]),
                     optimize=True)
    return win.fold(cols.reshape((g.shape[0], -1) + cols.shape[3:]), size).astype(g.dtype)


def _conv_grad_weight_ref(g, x, **attrs):
    win, groups = window(attrs, x.shape[2:], "conv2d"), attrs["groups"]
    cols = _grouped(win.view(win.pad(x)), groups)
    dw = np.einsum("ngohw,ngchwuv->gocuv", _grouped(g, groups), cols, optimize=True)
    return dw.reshape((-1,) + dw.shape[2:]).astype(x.dtype)


_GEOMETRY = ("kernel", "stride", "pad", "dilation", "groups")


def _conv_grad(b, n, g):
    x, w, *bias = n.inputs
    geom = {k: n.attr(k) for k in _GEOMETRY}
    dx = b.conv2d_grad_input(g, w, size=tuple(b.type(x).shape[2:]), **geom)
    dw = b.conv2d_grad_weight(g, x, **geom)
    return (dx, dw) + tuple(b.sum(g, axis=(0, 2, 3)) for _ in bias)


_CONV_ATTRS = (Attr("out", "int", doc="output channels"), Attr("kernel", "ints", 3), Attr("stride", "ints", 1),
               Attr("pad", "pad", 0, doc="int, pair, same or valid"), Attr("dilation", "ints", 1),
               Attr("groups", "int", 1))
_GEOM_ATTRS = tuple(a for a in _CONV_ATTRS if a.name in _GEOMETRY)
_f64 = lambda *shape: TensorType("f64", shape)

register(OpDef(
    "conv2d", "layer", ("x",),
    _CONV_ATTRS + (Attr("bias", "bool", True), Attr("init", "init", Init("kaiming")),
                   Attr("bias_init", "init", Init("zeros"))),
    params=(ParamSlot("weight", "weight",
                      lambda ins, a: (a["out"], _in_channels(ins, a) // a["groups"]) + pair(a["kernel"]), "init"),
            ParamSlot("bias", "bias", lambda ins, a: (a["out"],), "bias_init", present=lambda a: a["bias"])),
    shape=_conv_shape,
    formula="y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] * xpad[n, g(o)*C/G + c, i*s + u*d, j*s + v*d]",
    flops=_conv_flops, reference=_conv_ref, grad=_conv_grad, epilogue_host=True,
    samples=(Sample((_f64(2, 3, 5, 5), _f64(4, 3, 3, 3), _f64(4)), {"out": 4}),
             Sample((_f64(2, 4, 6, 5), _f64(6, 2, 2, 3)),
                    {"out": 6, "kernel": (2, 3), "stride": 2, "pad": "same", "dilation": (1, 2), "groups": 2,
                     "bias": False}))))


def _conv_grad_input_shape(ins, attrs):
    g, w = ins
    return TensorType(g.dtype, (g.shape[0], w.shape[1] * attrs["groups"]) + tuple(attrs["size"]))


register(OpDef(
    "conv2d_grad_input", "derivative", ("g", "w"), _GEOM_ATTRS + (Attr("size", "ints", doc="input H, W"),),
    shape=_conv_grad_input_shape,
    formula="dx = col2im(sum_o g[n, o, i, j] * W[o, c, u, v])  (the transposed convolution of g by W)",
    flops=lambda ins, out, a: 2 * ins[0].numel() * ins[1].numel() // expect_static(ins[1].shape[0], "weight"),
    reference=_conv_grad_input_ref,
    samples=(Sample((_f64(2, 4, 3, 3), _f64(4, 3, 3, 3)), {"size": (5, 5), "kernel": 3, "stride": 1, "pad": 0,
                                                           "dilation": 1, "groups": 1}),)))

register(OpDef(
    "conv2d_grad_weight", "derivative", ("g", "x"), _GEOM_ATTRS,
    shape=lambda ins, attrs: TensorType(ins[1].dtype, (ins[0].shape[1], ins[1].shape[1] // attrs["groups"])
                                        + pair(attrs["kernel"])),
    formula="dW[o, c, u, v] = sum_{n, i, j} g[n, o, i, j] * xpad[n, g(o)*C/G + c, i*s + u*d, j*s + v*d]",
    flops=lambda ins, out, a: 2 * ins[0].numel() * out.numel() // expect_static(out.shape[0], "weight"),
    reference=_conv_grad_weight_ref,
    samples=(Sample((_f64(2, 4, 3, 3), _f64(2, 3, 5, 5)), {"kernel": 3, "stride": 1, "pad": 0, "dilation": 1,
                                                           "groups": 1}),)))


# ---- pooling --------------------------------------------------------------------------

def _pool_shape(what: str):
    def rule(ins, attrs):
        x = ins[0]
        win = window(attrs, _image(x, what), what)
        # PyTorch's rule: no window may lie wholly in the padding.
        if any(p > k // 2 for pads, k in zip(win.pads, win.kernel) for p in pads):
            raise ShapeError(f"{what}: pad {attrs['pad']} is more than half the kernel {attrs['kernel']}",
                             code="E0310")
        return TensorType(x.dtype, x.shape[:2] + win.out)
    return rule


def _pool_flops(ins, out, attrs):
    kh, kw = pair(attrs["kernel"])
    return out.numel() * kh * kw


_POOL_ATTRS = (Attr("kernel", "ints", 2), Attr("stride", "optional_ints", None, doc="none = kernel"),
               Attr("pad", "pad", 0, doc="int, pair, same or valid"))


def _maxpool_ref(x, **attrs):
    win = window(attrs, x.shape[2:], "maxpool")
    return win.view(win.pad(x, -np.inf)).max(axis=(-2, -1))


def _maxpool_grad_ref(g, x, positive=False, **attrs):
    win = window(attrs, x.shape[2:], "maxpool")
    cols = win.view(win.pad(x, -np.inf))
    first = cols.reshape(cols.shape[:4] + (-1,)).argmax(axis=-1)  # first maximum, row-major
    onehot = np.arange(cols.shape[-2] * cols.shape[-1]) == first[..., None]
    dx = win.fold((onehot * g[..., None]).reshape(cols.shape), x.shape[2:]).astype(x.dtype)
    return np.where(x > 0, dx, 0).astype(x.dtype) if positive else dx


register(OpDef(
    "maxpool", "pool", ("x",), _POOL_ATTRS, shape=_pool_shape("maxpool"),
    formula="y[n, c, i, j] = max_{u, v} xpad[n, c, i*s + u, j*s + v]  (padding is -inf); "
            "gradient: the first maximum of each window (row-major) takes all of g",
    flops=_pool_flops, reference=_maxpool_ref,
    grad=lambda b, n, g: (b.maxpool_grad(g, n.inputs[0], **n.attr_dict),),
    samples=(Sample((_f64(2, 3, 4, 4),)), Sample((_f64(1, 2, 5, 6),), {"kernel": 3, "stride": 2, "pad": 1}))))

register(OpDef(
    "maxpool_grad", "derivative", ("g", "x"),
    _POOL_ATTRS + (Attr("positive", "bool", False, doc="only where x > 0: a relu's gradient folded in "
                                                          "(dslc/passes/pool_relu.py)"),),
    shape=lambda ins, attrs: ins[1],
    formula="dx[n, c, h, w] = sum of g[n, c, i, j] over the windows whose first maximum is at (h, w) "
            "(0 where x <= 0 when positive)",
    flops=_pool_flops, reference=_maxpool_grad_ref,
    samples=(Sample((_f64(2, 3, 2, 2), _f64(2, 3, 4, 4))),
             Sample((_f64(2, 3, 2, 2), _f64(2, 3, 4, 4)), {"positive": True}),
             Sample((_f64(1, 2, 3, 3), _f64(1, 2, 5, 6)), {"kernel": 3, "stride": 2, "pad": 1, "positive": True}))))


def _avgpool_ref(x, **attrs):
    win = window(attrs, x.shape[2:], "avgpool")
    return win.view(win.pad(x)).mean(axis=(-2, -1)).astype(x.dtype)


def _avgpool_grad_ref(g, size, **attrs):
    win = window(attrs, size, "avgpool")
    share = (g / (win.kernel[0] * win.kernel[1]))[..., None, None]
    return win.fold(np.broadcast_to(share, g.shape + win.kernel), size).astype(g.dtype)


register(OpDef(
    "avgpool", "pool", ("x",), _POOL_ATTRS, shape=_pool_shape("avgpool"),
    formula="y[n, c, i, j] = mean_{u, v} xpad[n, c, i*s + u, j*s + v]  (padding zeros count: "
            "always divided by kh*kw, PyTorch's count_include_pad=True)",
    flops=_pool_flops, reference=_avgpool_ref,
    grad=lambda b, n, g: (b.avgpool_grad(g, size=tuple(b.type(n.inputs[0]).shape[2:]), **n.attr_dict),),
    samples=(Sample((_f64(2, 3, 4, 4),)), Sample((_f64(1, 2, 5, 6),), {"kernel": 3, "stride": 2, "pad": 1}))))

register(OpDef(
    "avgpool_grad", "derivative", ("g",), _POOL_ATTRS + (Attr("size", "ints", doc="input H, W"),),
    shape=lambda ins, attrs: TensorType(ins[0].dtype, ins[0].shape[:2] + tuple(attrs["size"])),
    formula="dx[n, c, h, w] = sum of g[n, c, i, j] / (kh*kw) over the windows covering (h, w)",
    flops=_pool_flops, reference=_avgpool_grad_ref,
    samples=(Sample((_f64(2, 3, 2, 2),), {"size": (4, 4)}),)))


def _global_shape(ins, attrs):
    x = ins[0]
    expect_float(x, "global_avgpool")
    expect_rank(x, (3, 4, 5), "global_avgpool", hint="it averages the spatial axes of [N, C, H, W]")
    return TensorType(x.dtype, x.shape[:2])


register(OpDef(
    "global_avgpool", "pool", ("x",), (), shape=_global_shape,
    formula="y[n, c] = mean_{h, w} x[n, c, h, w]  ([N, C, H, W] -> [N, C], as Keras: no flatten needed)",
    flops=lambda ins, out, a: ins[0].numel(),
    reference=lambda x: x.mean(axis=tuple(range(2, x.ndim))).astype(x.dtype),
    # The count H*W is taken from the runtime shape inside `expand`.
    grad=lambda b, n, g: (b.expand(g, n.inputs[0], axis=tuple(range(2, b.type(n.inputs[0]).rank)), keepdims=False,
                                   mean=True),),
    samples=(Sample((_f64(2, 3, 4, 5),)),)))
