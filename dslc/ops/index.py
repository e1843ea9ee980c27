"""Indexing: gather one element along an axis, one-hot codes, and stacking tensors on a new axis.

Every kernel here sees its tensors as [A, K, B] around the axis (reduce.axis_view): K is
the gathered, coded or stacked axis, A and B the products of the axes before and after it.

    gather(logits, label)              f32[N, C], i64[N] -> f32[N]: logits[n, label[n]]
    one_hot(label, 10)                 i64[N] -> f32[N, 10]
    stack(a, b, c)                     three f32[N, D] -> f32[N, 3, D]

Gradients move values back: gather's scatters into zeros (`gather_grad`), stack's takes
each input's slice back out (`unstack`); one_hot reads only integers and has none.
"""
from __future__ import annotations

import numpy as np

from dslc.ir.types import TensorType
from dslc.ops.reduce import axis_view
from dslc.ops.registry import Attr, OpDef, Sample, ShapeError, expect_float, normalize_axis, register


def _f32(*shape) -> TensorType:
    return TensorType("f32", shape)


def _i64(*shape) -> TensorType:
    return TensorType("i64", shape)


def _expect_index(t: TensorType, what: str) -> None:
    if t.is_float:
        raise ShapeError(f"{what}: indices must be integers (i32 or i64), got {t.show()}", code="E0302")


# ---- gather: out[a, b] = x[a, index[a, b], b] ------------------------------------------------

def _gather_shape(ins, attrs):
    x, index = ins[0], ins[1]
    expect_float(x, "gather")
    _expect_index(index, "gather")
    axis = normalize_axis(attrs["axis"], x.rank, "gather")
    want = x.shape[:axis] + x.shape[axis + 1:]
    if index.shape != want:
        raise ShapeError(f"gather: indices {index.show()} do not fit {x.show()} along axis {axis}: expected "
                         f"[{', '.join(map(str, want))}], the input without that axis", code="E0308")
    return TensorType(x.dtype, index.shape)


def _gather_ref(x, index, axis):
    a, k, b = axis_view(x.shape, axis)
    idx = index.reshape(a, 1, b)
    if np.any((idx < 0) | (idx >= k)):
        raise ValueError(f"gather: an index is outside [0, {k})")
    return np.take_along_axis(x.reshape(a, k, b), idx, axis=1).reshape(index.shape)


def _gather_grad_ref(g, index, like, axis):
    a, k, b = axis_view(like.shape, axis)
    hit = np.arange(k).reshape(1, k, 1) == index.reshape(a, 1, b)
    return (hit * g.reshape(a, 1, b)).reshape(like.shape).astype(g.dtype)


_AXIS = (Attr("axis", "int", 1, doc="the axis indexed (classes, for [N, C])"),)

register(OpDef(
    "gather", "shape", ("x", "index"), _AXIS, shape=_gather_shape, integer_inputs=(1,),
    formula="out[a, b] = x[a, index[a, b], b] around `axis`: x without that axis, one element picked",
    flops=lambda ins, out, a: 0, reference=_gather_ref,
    grad=lambda b, n, g: (b.gather_grad(g, n.inputs[1], n.inputs[0], axis=n.attr("axis")), None),
    doc="gather(log_softmax(logits), label) is each example's log-probability of its label; an index outside "
        "the axis is an error (NaN on the GPU).",
    samples=(Sample((_f32(3, 5), _i64(3))), Sample((_f32(2, 4, 3), _i64(2, 3))),
             Sample((_f32(4, 2), _i64(2)), {"axis": 0}))))
register(OpDef(
    "gather_grad", "derivative", ("g", "index", "like"), _AXIS, shape=lambda ins, attrs: ins[2],
    integer_inputs=(1,), formula="zeros shaped like `like`, with g[a, b] at [a, index[a, b], b]",
    flops=lambda ins, out, a: 0, reference=_gather_grad_ref,
    samples=(Sample((_f32(3), _i64(3), _f32(3, 5))),)))


# ---- one_hot: out[..., c] = 1 where index == c ----------------------------------------------

def _one_hot_shape(ins, attrs):
    _expect_index(ins[0], "one_hot")
    if attrs["classes"] <= 0:
        raise ShapeError(f"one_hot: classes must be positive, got {attrs['classes']}", code="E0310")
    return TensorType(attrs["dtype"], ins[0].shape + (attrs["classes"],))


def _one_hot_ref(index, classes, dtype):
    if np.any((index < 0) | (index >= classes)):
        raise ValueError(f"one_hot: an index is outside [0, {classes})")
    return (index[..., None] == np.arange(classes)).astype(np.float32 if dtype == "f32" else np.float64)


register(OpDef(
    "one_hot", "index", ("index",),
    (Attr("classes", "int", doc="the length of each code"),
     Attr("dtype", "enum", "f32", ("f32", "f64"), doc="the codes' float type (a float64 graph casts it)")),
    shape=_one_hot_shape, integer_inputs=(0,),
    formula="out[..., c] = 1 if index[...] == c else 0  (a new last axis of `classes`)",
    flops=lambda ins, out, a: 0, reference=_one_hot_ref,
    doc="one_hot(label, 10) of i64[N] is f32[N, 10]: targets for mse or bce_with_logits from class labels.",
    samples=(Sample((_i64(4),), {"classes": 5}), Sample((_i64(2, 3),), {"classes": 4}))))


# ---- stack: inputs side by side along a new axis --------------------------------------------

def _stack_shape(ins, attrs):
    first = ins[0]
    for t in ins[1:]:
        if t != first:
            raise ShapeError(f"stack: inputs differ, {first.show()} and {t.show()}", code="E0314",
                             hint="every input must have the same shape and dtype")
    axis = normalize_axis(attrs["axis"], first.rank + 1, "stack")
    return TensorType(first.dtype, first.shape[:axis] + (len(ins),) + first.shape[axis:])


def _unstack_shape(ins, attrs):
    g = ins[0]
    axis = normalize_axis(attrs["axis"], g.rank, "unstack")
    return TensorType(g.dtype, g.shape[:axis] + g.shape[axis + 1:])


register(OpDef(
    "stack", "shape", ("*xs",), (Attr("axis", "int", 1, doc="where the new axis goes (after the batch)"),),
    shape=_stack_shape, formula="out[a, k, b] = xs[k][a, b]: the inputs along a new axis of len(xs)",
    flops=lambda ins, out, a: 0, reference=lambda *xs, axis: np.stack(xs, axis=axis),
    grad=lambda b, n, g: tuple(b.unstack(g, axis=n.attr("axis"), index=k) for k in range(len(n.inputs))),
    doc="stack(a, b, c) of three f32[N, D] is f32[N, 3, D]; concat joins along an existing axis instead.",
    samples=(Sample((_f32(3, 4), _f32(3, 4))), Sample((_f32(2, 3), _f32(2, 3), _f32(2, 3)), {"axis": -1}),
             Sample((_f32(2, 2), _f32(2, 2)), {"axis": 0}))))
register(OpDef(
    "unstack", "derivative", ("g",), (Attr("axis", "int"), Attr("index", "int")), shape=_unstack_shape,
    formula="g[a, index, b]: one input's part of a stacked tensor", flops=lambda ins, out, a: 0,
    reference=lambda g, axis, index: np.take(g, index, axis=axis),
    samples=(Sample((_f32(3, 2, 4),), {"axis": 1, "index": 1}),)))
