"""Matrix products: `x @ W` (matmul), the fully-connected layer (linear) and batched products (bmm).

Weights are laid out (in, out), so `linear` is exactly `x @ W + b`, as in the
from-scratch networks of the lectures; fan_in is the first dimension.
"""
from __future__ import annotations

import numpy as np

from dslc.ir.graph import Init
from dslc.ir.types import TensorType
from dslc.ops.registry import Attr, OpDef, ParamSlot, Sample, ShapeError, expect_float, expect_rank, register


def _f32(*shape) -> TensorType:
    return TensorType("f32", shape)


def _matmul_shape(ins, attrs):
    a, b = ins
    for t, side in ((a, "left"), (b, "right")):
        expect_float(t, "matmul")
        expect_rank(t, 2, f"matmul ({side} side)", hint="flatten it first" if t.rank > 2 else None)
    if a.dtype != b.dtype:
        raise ShapeError(f"matmul: dtypes differ, {a.show()} and {b.show()}", code="E0305")
    n, k = a.shape[::-1] if attrs["transpose_a"] else a.shape
    k2, m = b.shape[::-1] if attrs["transpose_b"] else b.shape
    if k != k2:
        raise ShapeError(f"matmul: inner dimensions differ, {a.show()} @ {b.show()} ({k} vs {k2})", code="E0307")
    return TensorType(a.dtype, (n, m))


def _matmul_ref(a, b, transpose_a, transpose_b):
    return (a.T if transpose_a else a) @ (b.T if transpose_b else b)


def _product_grad(product: str):
    """The gradient rule of `product` (matmul, or bmm: the same, product by product)."""
    def rule(b, n, g):
        mm = getattr(b, product)
        x, y = n.inputs
        ta, tb = n.attr("transpose_a"), n.attr("transpose_b")
        # C = op(A) op(B): dA = g op(B)^T (transposed back if A was), likewise dB.
        dx = mm(y, g, transpose_a=tb, transpose_b=True) if ta else mm(g, y, transpose_b=not tb)
        dy = mm(g, x, transpose_a=True, transpose_b=ta) if tb else mm(x, g, transpose_a=not ta)
        return dx, dy
    return rule


def _product_flops(ins, out, attrs):
    """2 K per output element, K the summed axis of op(x): its last, or its next-to-last if transposed."""
    k = ins[0].shape[-2] if attrs["transpose_a"] else ins[0].shape[-1]
    return 2 * out.numel() * k


register(OpDef(
    "matmul", "linalg", ("x", "y"),
    (Attr("transpose_a", "bool", False), Attr("transpose_b", "bool", False)),
    shape=_matmul_shape, formula="out[i, j] = sum_k x[i, k] * y[k, j]  (written x @ y)",
    flops=_product_flops, reference=_matmul_ref, grad=_product_grad("matmul"), epilogue_host=True,
    samples=(Sample((_f32(3, 4), _f32(4, 5))),
             Sample((_f32(4, 3), _f32(4, 5)), {"transpose_a": True}),
             Sample((_f32(3, 4), _f32(5, 4)), {"transpose_b": True}),
             Sample((_f32(4, 3), _f32(5, 4)), {"transpose_a": True, "transpose_b": True}))))


def _linear_in(ins) -> int:
    x = ins[0]
    expect_float(x, "linear")
    expect_rank(x, 2, "linear", hint="insert flatten" if x.rank > 2 else None)
    if not isinstance(x.shape[1], int):
        raise ShapeError(f"linear needs a fixed number of input features, got {x.show()}", code="E0303")
    return x.shape[1]


def _linear_shape(ins, attrs):
    d_in = _linear_in(ins)
    if attrs["out"] <= 0:
        raise ShapeError(f"linear: out must be positive, got {attrs['out']}", code="E0310")
    if len(ins) > 1 and ins[1].shape != (d_in, attrs["out"]):
        raise ShapeError(f"linear: weight {ins[1].show()} does not fit ({d_in}, {attrs['out']})")
    return TensorType(ins[0].dtype, (ins[0].shape[0], attrs["out"]))


def _linear_ref(x, w, b=None, **attrs):
    y = x @ w
    return y + b if b is not None else y


def _linear_grad(b, n, g):
    x, w, *bias = n.inputs
    grads = [b.matmul(g, w, transpose_b=True), b.matmul(x, g, transpose_a=True)]
    return grads + [b.sum(g, axis=(0,))] * len(bias)


register(OpDef(
    "linear", "layer", ("x",),
    (Attr("out", "int", doc="output features"), Attr("bias", "bool", True),
     Attr("init", "init", Init("kaiming"), doc="weight initialiser"), Attr("bias_init", "init", Init("zeros"))),
    params=(ParamSlot("weight", "weight", lambda ins, a: (_linear_in(ins), a["out"]), "init"),
            ParamSlot("bias", "bias", lambda ins, a: (a["out"],), "bias_init", present=lambda a: a["bias"])),
    shape=_linear_shape, formula="y = x @ W + b,  W: (in, out), b: (out)",
    flops=lambda ins, out, a: 2 * out.numel() * _linear_in(ins) + (out.numel() if a["bias"] else 0),
    reference=_linear_ref, grad=_linear_grad, epilogue_host=True,
    samples=(Sample((_f32(3, 4), _f32(4, 5), _f32(5)), {"out": 5}),
             Sample((_f32(2, 3), _f32(3, 2)), {"out": 2, "bias": False}))))


# ---- batched matmul: one product per leading index -------------------------------------

def _bmm_shape(ins, attrs):
    a, b = ins
    for t, side in ((a, "left"), (b, "right")):
        expect_float(t, "bmm")
        expect_rank(t, 3, f"bmm ({side} side)", hint="bmm multiplies [B, n, k] by [B, k, m]; reshape to rank 3")
    if a.dtype != b.dtype:
        raise ShapeError(f"bmm: dtypes differ, {a.show()} and {b.show()}", code="E0305")
    if a.shape[0] != b.shape[0]:
        raise ShapeError(f"bmm: batch sizes differ, {a.show()} and {b.show()}", code="E0307")
    n, k = a.shape[:0:-1] if attrs["transpose_a"] else a.shape[1:]
    k2, m = b.shape[:0:-1] if attrs["transpose_b"] else b.shape[1:]
    if k != k2:
        raise ShapeError(f"bmm: inner dimensions differ, {a.show()} @ {b.show()} ({k} vs {k2})", code="E0307")
    return TensorType(a.dtype, (a.shape[0], n, m))


def _bmm_ref(a, b, transpose_a, transpose_b):
    return np.matmul(a.transpose(0, 2, 1) if transpose_a else a, b.transpose(0, 2, 1) if transpose_b else b)


register(OpDef(
    "bmm", "linalg", ("x", "y"), (Attr("transpose_a", "bool", False), Attr("transpose_b", "bool", False)),
    shape=_bmm_shape, formula="out[b, i, j] = sum_k x[b, i, k] * y[b, k, j]  (a matmul per leading index b)",
    flops=_product_flops, reference=_bmm_ref, grad=_product_grad("bmm"),
    doc="The Gram matrices of a batch of features F [N, C, H*W]: bmm(F, F, transpose_b=true) is [N, C, C].",
    samples=(Sample((_f32(2, 3, 4), _f32(2, 4, 5))),
             Sample((_f32(2, 4, 3), _f32(2, 4, 5)), {"transpose_a": True}),
             Sample((_f32(3, 2, 4), _f32(3, 5, 4)), {"transpose_b": True}),
             Sample((_f32(2, 4, 3), _f32(2, 5, 4)), {"transpose_a": True, "transpose_b": True}))))
