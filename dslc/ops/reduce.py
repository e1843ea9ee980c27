"""Reductions: sum and mean over some axes (all by default).

Their gradient `expand` broadcasts the cotangent back over the reduced axes; for a
mean it also divides by the count, taken from the run-time shape (N is symbolic).
"""
from __future__ import annotations

import numpy as np

from dslc.ir.types import TensorType
from dslc.ops.registry import Attr, OpDef, Sample, ShapeError, expect_float, normalize_axis, register


def reduced_axes(t: TensorType, axis, what: str) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(t.rank))
    axes = tuple(normalize_axis(a, t.rank, what) for a in axis)
    if len(set(axes)) != len(axes):
        raise ShapeError(f"{what}: axis {list(axis)} repeats an axis", code="E0304")
    return tuple(sorted(axes))


def _reduce_shape(what):
    def rule(ins, attrs):
        x = ins[0]
        expect_float(x, what)
        axes = reduced_axes(x, attrs["axis"], what)
        keep = attrs["keepdims"]
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
        return TensorType(x.dtype, shape)
    return rule


def _np_axes(axis):
    return None if axis is None else tuple(axis)


def _f32(*shape) -> TensorType:
    return TensorType("f32", shape)


# A full reduction, one axis kept as 1, and two axes counted from the end.
_SAMPLES = (Sample((_f32(3, 5),)), Sample((_f32(2, 3, 4),), {"axis": (1,), "keepdims": True}),
            Sample((_f32(2, 3, 4),), {"axis": (-1, 0)}))


_ATTRS = (Attr("axis", "optional_axes", None, doc="axes to reduce; none = all"), Attr("keepdims", "bool", False))

register(OpDef(
    "sum", "reduce", ("x",), _ATTRS, shape=_reduce_shape("sum"),
    formula="sum of x over `axis`", flops=lambda ins, out, a: ins[0].numel(),
    reference=lambda x, axis, keepdims: np.asarray(x.sum(axis=_np_axes(axis), keepdims=keepdims)),
    grad=lambda b, n, g: (b.expand(g, n.inputs[0], axis=n.attr("axis"), keepdims=n.attr("keepdims")),),
    samples=_SAMPLES, sweep="reduce"))

register(OpDef(
    "mean", "reduce", ("x",), _ATTRS, shape=_reduce_shape("mean"),
    formula="mean of x over `axis`", flops=lambda ins, out, a: ins[0].numel(),
    reference=lambda x, axis, keepdims: np.asarray(x.mean(axis=_np_axes(axis), keepdims=keepdims)),
    # The count is taken from the runtime shape: N may be symbolic.
    grad=lambda b, n, g: (b.expand(g, n.inputs[0], axis=n.attr("axis"), keepdims=n.attr("keepdims"), mean=True),),
    samples=_SAMPLES, sweep="reduce"))


def _expand_ref(g, like, axis, keepdims, mean):
    axes = tuple(range(like.ndim)) if axis is None else tuple(a % like.ndim for a in axis)
    if not keepdims:
        g = g.reshape([1 if i in axes else d for i, d in enumerate(like.shape)])
    out = np.broadcast_to(g, like.shape)
    if mean:
        out = out / max(int(np.prod([like.shape[a] for a in axes])), 1)
    return np.array(out, dtype=like.dtype)  # a copy; keeps 0-d results 0-d


register(OpDef(
    "expand", "derivative", ("g", "like"), _ATTRS + (Attr("mean", "bool", False),),
    shape=lambda ins, attrs: ins[1],
    formula="g broadcast back over the reduced `axis` to the shape of `like` (divided by the count if mean)",
    flops=lambda ins, out, a: out.numel(), reference=_expand_ref, sweep="map",
    samples=(Sample((_f32(3, 1), _f32(3, 4)), {"axis": (1,), "keepdims": True, "mean": True}),
             Sample((_f32(), _f32(2, 3)),))))
