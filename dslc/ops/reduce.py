"""Reductions: sum and mean over some axes (all by default); max, min and argmax along one.

The gradient of sum and mean, `expand`, broadcasts the cotangent back over the reduced
axes; for a mean it also divides by the count, taken from the run-time shape (N is
symbolic). max and min route it to the first extremum along the axis (`extremum_grad`);
argmax is an integer index and has none. The kernels of max, min and argmax see their
input as [A, K, B] around the axis (`axis_view`).
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


# ---- max, min and argmax along one axis (or over everything) ------------------------------

def axis_view(shape: tuple[int, ...], axis: int | None) -> tuple[int, int, int]:
    """(A, K, B): `shape` seen as [A, K, B] around `axis` (K the axis); every element in K
    when axis is None. The kernels of both backends see arrays this way."""
    if axis is None:
        return 1, int(np.prod(shape, dtype=np.int64)), 1
    axis %= len(shape)
    return int(np.prod(shape[:axis], dtype=np.int64)), shape[axis], int(np.prod(shape[axis + 1:], dtype=np.int64))


def _one_axis_shape(what: str, dtype: str | None = None):
    def rule(ins, attrs):
        x = ins[0]
        expect_float(x, what)
        axis = attrs["axis"]
        if x.rank == 0:
            raise ShapeError(f"{what}: the input is a scalar, {x.show()}; there is nothing to reduce", code="E0304")
        kept = () if axis is None else (normalize_axis(axis, x.rank, what),)
        shape = tuple(1 for _ in x.shape) if axis is None else tuple(
            1 if i in kept else d for i, d in enumerate(x.shape))
        if not attrs["keepdims"]:
            shape = () if axis is None else tuple(d for i, d in enumerate(x.shape) if i not in kept)
        return TensorType(dtype or x.dtype, shape)
    return rule


_ONE_AXIS = (Attr("axis", "optional_int", None, doc="the axis; none = over every element"),
             Attr("keepdims", "bool", False))
_ONE_AXIS_SAMPLES = (Sample((_f32(3, 5),)), Sample((_f32(2, 3, 4),), {"axis": 1, "keepdims": True}),
                     Sample((_f32(2, 3, 4),), {"axis": -1}))


def _extremum_ref(x, axis, keepdims, smallest: bool):
    return np.asarray((np.min if smallest else np.max)(x, axis=axis, keepdims=keepdims))


def _extremum_grad_ref(x, g, axis, keepdims, mode):
    a, k, b = axis_view(x.shape, axis)
    # np.argmax/argmin: the first extremum, a NaN before anything (it is the max and the min)
    first = (np.argmin if mode == "min" else np.argmax)(x.reshape(a, k, b), axis=1)
    picked = np.arange(k).reshape(1, k, 1) == first[:, None, :]
    return (picked * g.reshape(a, 1, b)).reshape(x.shape).astype(x.dtype)


def _extremum(name: str, smallest: bool):
    register(OpDef(
        name, "reduce", ("x",), _ONE_AXIS, shape=_one_axis_shape(name),
        formula=f"the {'smallest' if smallest else 'largest'} element of x along `axis` (NaN if there is one)",
        flops=lambda ins, out, a: ins[0].numel(),
        reference=lambda x, axis, keepdims: _extremum_ref(x, axis, keepdims, smallest),
        # A tie: the first extremum along the axis takes the whole gradient (as maxpool's windows).
        grad=lambda b, n, g: (b.extremum_grad(n.inputs[0], g, axis=n.attr("axis"), keepdims=n.attr("keepdims"),
                                              mode=name),),
        doc=f"{name}(x, axis=1) of f32[N, C] is f32[N]; the gradient goes to the first {name}imum along the axis. "
            f"Compare {'minimum' if smallest else 'maximum'}(x, y), elementwise.",
        samples=_ONE_AXIS_SAMPLES))


_extremum("max", False)
_extremum("min", True)

register(OpDef(
    "extremum_grad", "derivative", ("x", "g"), _ONE_AXIS + (Attr("mode", "enum", "max", ("max", "min")),),
    shape=lambda ins, attrs: ins[0], formula="g routed to the first max (or min) of x along `axis`, 0 elsewhere",
    flops=lambda ins, out, a: out.numel(), reference=_extremum_grad_ref,
    samples=(Sample((_f32(2, 3, 4), _f32(2, 4)), {"axis": 1}), Sample((_f32(3, 5), _f32()), {"mode": "min"}))))

register(OpDef(
    "argmax", "index", ("x",), _ONE_AXIS, shape=_one_axis_shape("argmax", "i64"),
    formula="the index of the first largest element of x along `axis` (i64; over the flattened x when none)",
    flops=lambda ins, out, a: ins[0].numel(),
    reference=lambda x, axis, keepdims: np.asarray(np.argmax(x, axis=axis, keepdims=keepdims), np.int64),
    doc="argmax(logits, axis=1) is each example's predicted class, an i64 index (it has no gradient): "
        "one_hot and gather read it.",
    samples=_ONE_AXIS_SAMPLES))
