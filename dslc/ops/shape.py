"""Shape ops: flatten, reshape, transpose, concat, pad, slice. They move data, compute nothing."""
from __future__ import annotations

from dslc.ir.types import TensorType, prod
from dslc.ops.registry import Attr, OpDef, normalize_axis, register


def _flatten_shape(ins, attrs):
    x = ins[0]
    start = normalize_axis(attrs["start"], x.rank, "flatten") if x.rank else 0
    return TensorType(x.dtype, x.shape[:start] + (prod(x.shape[start:]),))


register(OpDef(
    "flatten", "shape", ("x",), (Attr("start", "int", 1, doc="first axis folded"),),
    shape=_flatten_shape, formula="[N, C, H, W] -> [N, C*H*W]  (axes from `start` on are folded)",
    flops=lambda ins, out, a: 0,
    reference=lambda x, start: x.reshape(x.shape[:start] + (-1,)),
    grad=lambda b, n, g: (b.reshape(g, shape=tuple(_concrete_or_minus1(n.inputs[0], b))),)))


def _concrete_or_minus1(name, b):
    """A reshape target for `name`'s shape: its sizes, with the one symbolic dimension as -1."""
    shape = b.type(name).shape
    return [d if isinstance(d, int) else -1 for d in shape]
