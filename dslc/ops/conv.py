"""Convolution and pooling over NCHW images.

conv2d's weight is (C_out, C_in/groups, kh, kw). `pad=same` pads so that the output
has ceil(H/stride) rows (TensorFlow's rule, asymmetric when the total is odd: the
extra row goes bottom/right); `pad=valid` is no padding.
"""
from __future__ import annotations

from dslc.ir.graph import Init
from dslc.ir.types import TensorType
from dslc.ops.registry import (Attr, OpDef, ParamSlot, ShapeError, expect_float, expect_rank, expect_static,
                               pair, register)


def same_padding(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding that makes the output ceil(size/stride) long."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv_padding(h: int, w: int, attrs, kernel) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) for the `pad` attribute of conv2d or a pooling op."""
    pad = attrs["pad"]
    stride, dilation = pair(attrs["stride"]), pair(attrs.get("dilation", 1))
    if pad == "same":
        return (same_padding(h, kernel[0], stride[0], dilation[0]),
                same_padding(w, kernel[1], stride[1], dilation[1]))
    if pad == "valid":
        return (0, 0), (0, 0)
    ph, pw = pair(pad)
    return (ph, ph), (pw, pw)


def out_size(size: int, k: int, stride: int, dilation: int, pads: tuple[int, int], what: str) -> int:
    span = (k - 1) * dilation + 1
    if size + sum(pads) < span:
        raise ShapeError(f"{what}: the window ({span} wide after dilation) is larger than the padded input "
                         f"({size} + {sum(pads)})", code="E0311")
    return (size + sum(pads) - span) // stride + 1


def _check_window(attrs, what: str, keys=("stride", "dilation")) -> None:
    for key in ("kernel",) + keys:
        if key in attrs and any(v <= 0 for v in pair(attrs[key])):
            raise ShapeError(f"{what}: {key} must be positive, got {attrs[key]}", code="E0310")
    pad = attrs.get("pad")
    if pad not in ("same", "valid", None) and any(v < 0 for v in pair(pad)):
        raise ShapeError(f"{what}: pad must be non-negative, got {pad}", code="E0310")


def _in_channels(ins, attrs) -> int:
    x = ins[0]
    expect_float(x, "conv2d")
    expect_rank(x, 4, "conv2d", hint="conv2d takes images [N, C, H, W]")
    c = expect_static(x.shape[1], "conv2d input channels")
    g = attrs["groups"]
    if g <= 0 or c % g or attrs["out"] % g:
        raise ShapeError(f"conv2d: groups={g} must divide both input channels ({c}) and out ({attrs['out']})",
                         code="E0312")
    return c


def _conv_shape(ins, attrs):
    c = _in_channels(ins, attrs)
    _check_window(attrs, "conv2d")
    if attrs["out"] <= 0:
        raise ShapeError(f"conv2d: out must be positive, got {attrs['out']}", code="E0310")
    x = ins[0]
    kh, kw = pair(attrs["kernel"])
    h, w = (expect_static(d, "conv2d spatial size") for d in x.shape[2:])
    (pt, pb), (pl, pr) = conv_padding(h, w, attrs, (kh, kw))
    (sh, sw), (dh, dw) = pair(attrs["stride"]), pair(attrs["dilation"])
    if len(ins) > 1 and ins[1].shape != (attrs["out"], c // attrs["groups"], kh, kw):
        raise ShapeError(f"conv2d: weight {ins[1].show()} does not fit")
    return TensorType(x.dtype, (x.shape[0], attrs["out"], out_size(h, kh, sh, dh, (pt, pb), "conv2d"),
                                out_size(w, kw, sw, dw, (pl, pr), "conv2d")))


def _conv_flops(ins, out, attrs):
    kh, kw = pair(attrs["kernel"])
    per_out = 2 * (ins[0].shape[1] // attrs["groups"]) * kh * kw
    return out.numel() * (per_out + (1 if attrs["bias"] else 0))


register(OpDef(
    "conv2d", "layer", ("x",),
    (Attr("out", "int", doc="output channels"), Attr("kernel", "ints", 3), Attr("stride", "ints", 1),
     Attr("pad", "pad", 0, doc="int, pair, same or valid"), Attr("dilation", "ints", 1), Attr("groups", "int", 1),
     Attr("bias", "bool", True), Attr("init", "init", Init("kaiming")), Attr("bias_init", "init", Init("zeros"))),
    params=(ParamSlot("weight", "weight",
                      lambda ins, a: (a["out"], _in_channels(ins, a) // a["groups"]) + pair(a["kernel"]), "init"),
            ParamSlot("bias", "bias", lambda ins, a: (a["out"],), "bias_init", present=lambda a: a["bias"])),
    shape=_conv_shape,
    formula="y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] * xpad[n, g(o)*C/G + c, i*s + u*d, j*s + v*d]",
    flops=_conv_flops))
