"""Shape ops: flatten, reshape, transpose, concat, pad, slice. They move data, compute nothing.

The batch dimension N is symbolic, so these rules do dimension arithmetic on
`Sym`s: reshape of f32[N, 1, 28, 28] to [-1, 784] is f32[N, 784]. An axis that is
padded, sliced or concatenated must have a fixed size; N + 2 is not a dimension.

Gradients only move data back: reshape/flatten reshape back, transpose applies the
inverse permutation, pad slices its border off, concat slices each input's part out,
and slice scatters into zeros (`slice_grad`).
"""
from __future__ import annotations

import numpy as np

from dslc.ir.types import Sym, TensorType, dim_div, prod
from dslc.ops.registry import Attr, OpDef, Sample, ShapeError, expect_static, normalize_axis, register


def _no_flops(ins, out, attrs) -> int:
    return 0  # data movement only


def _f32(*shape) -> TensorType:
    return TensorType("f32", shape)


def reshape_back(b, g: str, like: str) -> str:
    """`g` reshaped to `like`'s shape, the symbolic batch dimension written as -1 (found at run time)."""
    shape = b.type(like).shape
    if sum(not isinstance(d, int) for d in shape) > 1:
        raise ShapeError(f"cannot reshape a gradient back to {b.type(like).show()}: "
                         "more than one symbolic dimension", code="E0303")
    return b.reshape(g, shape=tuple(d if isinstance(d, int) else -1 for d in shape))


# ---- flatten ---------------------------------------------------------------------------

def _flatten_shape(ins, attrs):
    x = ins[0]
    start = normalize_axis(attrs["start"], x.rank, "flatten") if x.rank else 0
    return TensorType(x.dtype, x.shape[:start] + (prod(x.shape[start:]),))


register(OpDef(
    "flatten", "shape", ("x",), (Attr("start", "int", 1, doc="first axis folded"),),
    shape=_flatten_shape, formula="[N, C, H, W] -> [N, C*H*W]  (axes from `start` on are folded)",
    flops=_no_flops, reference=lambda x, start: x.reshape(x.shape[:start] + (-1,)),
    grad=lambda b, n, g: (reshape_back(b, g, n.inputs[0]),),
    samples=(Sample((_f32(2, 3, 4, 5),)), Sample((_f32(2, 3, 4),), {"start": 2}))))


# ---- reshape ---------------------------------------------------------------------------

def _reshape_shape(ins, attrs):
    x, target = ins[0], tuple(attrs["shape"])
    free = [i for i, d in enumerate(target) if d == -1]
    if len(free) > 1:
        raise ShapeError(f"reshape: at most one -1 may be inferred, got {list(target)}", code="E0310")
    total = prod(x.shape)
    if not free:
        if prod(target) != total:
            raise ShapeError(f"reshape: cannot reshape {x.show()} ({total} elements) to {list(target)} "
                             f"({prod(target)} elements)", code="E0313",
                             hint=None if x.is_static else "write -1 for the batch dimension, e.g. [-1, ...]")
        return TensorType(x.dtype, target)
    known = prod(d for d in target if d != -1)
    inferred = dim_div(total, known)
    if inferred is None:
        raise ShapeError(f"reshape: cannot reshape {x.show()} ({total} elements) to {list(target)}: "
                         f"{total} is not a multiple of {known}", code="E0313")
    i = free[0]
    return TensorType(x.dtype, target[:i] + (inferred,) + target[i + 1:])


register(OpDef(
    "reshape", "shape", ("x",), (Attr("shape", "shape", doc="new sizes; one may be -1 (inferred)"),),
    shape=_reshape_shape, formula="same elements in row-major order, new shape; -1 = total / product of the rest",
    flops=_no_flops, reference=lambda x, shape: x.reshape(shape),
    grad=lambda b, n, g: (reshape_back(b, g, n.inputs[0]),),
    doc="Row-major, like NumPy. Write -1 for the batch: reshape(x, [-1, 784]) of f32[N, 1, 28, 28] is f32[N, 784].",
    samples=(Sample((_f32(2, 1, 4, 3),), {"shape": (-1, 12)}), Sample((_f32(6, 2),), {"shape": (3, 4)}))))


# ---- transpose -------------------------------------------------------------------------

def _perm(rank: int, perm) -> tuple[int, ...]:
    if perm is None:  # the NumPy default: reverse the axes
        return tuple(reversed(range(rank)))
    if len(perm) != rank:
        raise ShapeError(f"transpose: perm {list(perm)} names {len(perm)} axes, the input has {rank}", code="E0304")
    out = tuple(normalize_axis(p, rank, "transpose") for p in perm)
    if sorted(out) != list(range(rank)):
        raise ShapeError(f"transpose: perm {list(perm)} is not a permutation of the axes 0..{rank - 1}",
                         code="E0304")
    return out


def _transpose_shape(ins, attrs):
    x = ins[0]
    return TensorType(x.dtype, tuple(x.shape[i] for i in _perm(x.rank, attrs["perm"])))


def _transpose_grad(b, n, g):
    inverse = tuple(int(i) for i in np.argsort(_perm(n.type.rank, n.attr("perm"))))
    return (b.transpose(g, perm=inverse),)


register(OpDef(
    "transpose", "shape", ("x",), (Attr("perm", "optional_axes", None, doc="new order of axes; none = reversed"),),
    shape=_transpose_shape, formula="out.shape[i] = x.shape[perm[i]];  out[idx] = x[idx permuted back]",
    flops=_no_flops, reference=lambda x, perm: np.transpose(x, perm), grad=_transpose_grad,
    samples=(Sample((_f32(2, 3, 4),), {"perm": (0, 2, 1)}), Sample((_f32(3, 5),)))))


# ---- concat ----------------------------------------------------------------------------

def _concat_shape(ins, attrs):
    first = ins[0]
    axis = normalize_axis(attrs["axis"], first.rank, "concat")
    for t in ins[1:]:
        if t.dtype != first.dtype:
            raise ShapeError(f"concat: dtypes differ, {first.show()} and {t.show()}", code="E0305")
        if t.rank != first.rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
            raise ShapeError(f"concat: {first.show()} and {t.show()} differ outside axis {axis}", code="E0314",
                             hint="all inputs must have the same shape except along `axis`")
    size = sum(expect_static(t.shape[axis], f"concat: the size along axis {axis}") for t in ins)
    return TensorType(first.dtype, first.shape[:axis] + (size,) + first.shape[axis + 1:])


def _concat_grad(b, n, g):
    axis, start, parts = normalize_axis(n.attr("axis"), n.type.rank, "concat"), 0, []
    for x in n.inputs:
        size = b.type(x).shape[axis]
        parts.append(b.slice(g, axis=axis, start=start, stop=start + size))
        start += size
    return tuple(parts)


register(OpDef(
    "concat", "shape", ("*xs",), (Attr("axis", "int", 1),),
    shape=_concat_shape, formula="inputs joined along `axis` (channels by default): [N, C1, ...] ++ [N, C2, ...]",
    flops=_no_flops, reference=lambda *xs, axis: np.concatenate(xs, axis=axis), grad=_concat_grad,
    doc="concat(a, b, c, axis=1). The joined axis must have a fixed size (not the batch N).",
    samples=(Sample((_f32(2, 3, 4), _f32(2, 2, 4))), Sample((_f32(3, 2), _f32(3, 1), _f32(3, 4)), {"axis": -1}))))


# ---- pad -------------------------------------------------------------------------------

def pad_pairs(rank: int, pads) -> tuple[tuple[int, int], ...]:
    """The flat `pads` list [before0, after0, before1, after1, ...] as one pair per axis."""
    pads = (pads,) if isinstance(pads, int) else tuple(pads)
    if len(pads) != 2 * rank:
        example = ", ".join(["0, 0"] + ["1, 1"] * (rank - 1)) if rank else ""
        raise ShapeError(f"pad: expected {2 * rank} values (before, after for each of the {rank} axes), "
                         f"got {len(pads)}", hint=f"e.g. pad(x, [{example}]) pads every axis but the first by 1",
                         code="E0310")
    return tuple(zip(pads[0::2], pads[1::2]))


def _pad_shape(ins, attrs):
    x, out = ins[0], []
    for axis, (d, (lo, hi)) in enumerate(zip(x.shape, pad_pairs(x.rank, attrs["pads"]))):
        if isinstance(d, Sym) and lo + hi:
            raise ShapeError(f"pad: cannot pad axis {axis} of {x.show()}: its size {d} is symbolic", code="E0303")
        out.append(d + lo + hi if lo + hi else d)
    return TensorType(x.dtype, tuple(out))


def _pad_grad(b, n, g):
    x = n.inputs[0]
    for axis, (d, (lo, hi)) in enumerate(zip(b.type(x).shape, pad_pairs(n.type.rank, n.attr("pads")))):
        if lo or hi:  # cut the border back off
            g = b.slice(g, axis=axis, start=lo, stop=lo + d)
    return (g,)


register(OpDef(
    "pad", "shape", ("x",),
    (Attr("pads", "ints", doc="flat (before, after) per axis: [b0, a0, b1, a1, ...]"),
     Attr("value", "float", 0.0, doc="the value written in the border")),
    shape=_pad_shape,
    formula="out = x surrounded by `value`: pads [0,0, 4,4, 0,0, 0,0] on [N, C, H, W] adds 4 channels on each side",
    flops=_no_flops,
    reference=lambda x, pads, value: np.pad(x, pad_pairs(x.ndim, pads), constant_values=value),
    grad=_pad_grad,
    doc="pads lists (before, after) for every axis in order, flat. ResNet option-A shortcut: "
        "x |> slice(axis=2, step=2) |> slice(axis=3, step=2) |> pad([0,0, c/4,c/4, 0,0, 0,0]).",
    samples=(Sample((_f32(2, 3, 2, 2),), {"pads": (0, 0, 2, 1, 0, 0, 1, 0)}),
             Sample((_f32(3, 4),), {"pads": (1, 2, 0, 3), "value": -1.0}))))


# ---- slice -----------------------------------------------------------------------------

def _index(ndim: int, axis: int, start, stop, step) -> tuple:
    """The NumPy index that applies Python's start:stop:step to one axis."""
    return (slice(None),) * (axis % ndim) + (slice(start, stop, step),)


def _slice_shape(ins, attrs):
    x = ins[0]
    axis = normalize_axis(attrs["axis"], x.rank, "slice")
    if attrs["step"] <= 0:
        raise ShapeError(f"slice: step must be positive, got {attrs['step']}", code="E0310")
    size = expect_static(x.shape[axis], f"slice: the size of axis {axis}")
    n = len(range(*slice(attrs["start"], attrs["stop"], attrs["step"]).indices(size)))
    if n == 0:
        raise ShapeError(f"slice: {attrs['start']}:{'' if attrs['stop'] is None else attrs['stop']}:"
                         f"{attrs['step']} selects nothing from axis {axis} of {x.show()}", code="E0310")
    return TensorType(x.dtype, x.shape[:axis] + (n,) + x.shape[axis + 1:])


_SLICE_ATTRS = (Attr("axis", "int"), Attr("start", "int", 0), Attr("stop", "optional_int", None, doc="none = end"),
                Attr("step", "int", 1))

register(OpDef(
    "slice", "shape", ("x",), _SLICE_ATTRS, shape=_slice_shape,
    formula="x[..., start:stop:step, ...] on `axis` (Python slice semantics, step > 0)",
    flops=_no_flops,
    reference=lambda x, axis, start, stop, step: x[_index(x.ndim, axis, start, stop, step)],
    grad=lambda b, n, g: (b.slice_grad(g, n.inputs[0], **n.attr_dict),),
    doc="slice(x, axis=2, step=2) keeps every other row; start and stop may be negative (from the end).",
    samples=(Sample((_f32(2, 3, 5, 4),), {"axis": 2, "step": 2}),
             Sample((_f32(3, 7),), {"axis": -1, "start": -5, "stop": 6, "step": 3}))))


def _slice_grad_ref(g, like, axis, start, stop, step):
    out = np.zeros(like.shape, dtype=g.dtype)
    out[_index(like.ndim, axis, start, stop, step)] = g
    return out


register(OpDef(
    "slice_grad", "derivative", ("g", "like"), _SLICE_ATTRS,
    shape=lambda ins, attrs: ins[1].with_dtype(ins[0].dtype),
    formula="zeros shaped like `like`, with g written at [..., start:stop:step, ...] on `axis`",
    flops=_no_flops, reference=_slice_grad_ref,
    samples=(Sample((_f32(2, 3, 3), _f32(2, 3, 5)), {"axis": 2, "step": 2}),)))


register(OpDef(
    "zeros_like", "derivative", ("x",), (), shape=lambda ins, attrs: ins[0],
    formula="zeros of x's shape and dtype (the gradient of a value the loss does not use)",
    flops=_no_flops, reference=np.zeros_like, samples=(Sample((_f32(3, 5),)),)))
