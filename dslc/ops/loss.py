"""Losses, metrics and regularisers: each yields a scalar.

Classification losses take logits f32[N, C] and integer labels i64[N] and average
over the batch; labels are never differentiated. Regularisers take any number of
tensors, usually the parameter group `weights` (every weight of linear, conv2d and
`param` of rank >= 2; never biases or batchnorm scale/shift).
"""
from __future__ import annotations

import numpy as np

from dslc.ir.types import TensorType
from dslc.ops.registry import Attr, OpDef, ShapeError, expect_float, expect_rank, register


def _class_shape(what: str, out_dtype=None):
    def rule(ins, attrs):
        logits, label = ins
        expect_float(logits, what)
        expect_rank(logits, 2, f"{what} logits", hint="flatten first" if logits.rank > 2 else None)
        if label.dtype not in ("i32", "i64"):
            raise ShapeError(f"{what}: labels must be integers (i32 or i64), got {label.show()}", code="E0302")
        if label.shape != logits.shape[:1]:
            raise ShapeError(f"{what}: labels {label.show()} do not match logits {logits.show()}; "
                             f"expected [{logits.shape[0]}]", code="E0308")
        return TensorType(out_dtype or logits.dtype, ())
    return rule


def log_softmax_rows(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _ce_ref(logits, label):
    return -log_softmax_rows(logits)[np.arange(len(label)), label].mean(dtype=logits.dtype)


register(OpDef(
    "cross_entropy", "loss", ("logits", "label"), (),
    shape=_class_shape("cross_entropy"), integer_inputs=(1,),
    formula="mean_i -log softmax(logits_i)[label_i]", flops=lambda ins, out, a: 4 * ins[0].numel(),
    reference=_ce_ref, grad=lambda b, n, g: (b.cross_entropy_grad(*n.inputs, g), None)))


def _ce_grad_ref(logits, label, g):
    p = np.exp(log_softmax_rows(logits))
    p[np.arange(len(label)), label] -= 1
    return (p * (g / len(label))).astype(logits.dtype)


register(OpDef(
    "cross_entropy_grad", "derivative", ("logits", "label", "g"), (),
    shape=lambda ins, attrs: ins[0], formula="(softmax(logits) - onehot(label)) * g / N",
    flops=lambda ins, out, a: 5 * ins[0].numel(), reference=_ce_grad_ref, integer_inputs=(1,)))


register(OpDef(
    "accuracy", "metric", ("logits", "label"), (),
    shape=_class_shape("accuracy"), integer_inputs=(1,),
    formula="mean_i [argmax(logits_i) == label_i]", flops=lambda ins, out, a: ins[0].numel(),
    reference=lambda logits, label: np.asarray((logits.argmax(axis=1) == label).mean(), dtype=logits.dtype)))


def _reg_shape(what):
    def rule(ins, attrs):
        for t in ins:
            expect_float(t, what)
        if len({t.dtype for t in ins}) > 1:
            raise ShapeError(f"{what}: mixed dtypes", code="E0305")
        return TensorType(ins[0].dtype, ())
    return rule


def _regulariser(name, formula, per_tensor, grad, attrs=()):
    register(OpDef(
        name, "regulariser", ("*xs",), attrs, shape=_reg_shape(name), formula=formula,
        flops=lambda ins, out, a: 2 * sum(t.numel() for t in ins),
        reference=lambda *xs, **a: np.asarray(sum(per_tensor(x, **a).sum() for x in xs), dtype=xs[0].dtype),
        grad=grad))


# |w| has a kink at 0: sign(0) = 0 is used (the subgradient of minimum norm).
_regulariser("l1", "sum_w sum |w|", lambda w: np.abs(w),
             lambda b, n, g: tuple(b.mul(b.sign(x), g) for x in n.inputs))
_regulariser("l2", "sum_w sum w^2", lambda w: w * w,
             lambda b, n, g: tuple(b.mul(b.mul(x, g), b.const(2.0, n.type.dtype)) for x in n.inputs))
_regulariser("elastic", "sum_w sum (beta * w^2 + |w|)  (CS231n's elastic net)",
             lambda w, beta: beta * w * w + np.abs(w),
             lambda b, n, g: tuple(b.mul(b.add(b.mul(x, b.const(2 * n.attr("beta"), n.type.dtype)), b.sign(x)), g)
                                   for x in n.inputs),
             attrs=(Attr("beta", "float", 0.5),))

register(OpDef("sign", "derivative", ("x",), (), shape=lambda ins, attrs: ins[0], formula="sign(x), 0 at 0",
               flops=lambda ins, out, a: out.numel(), reference=np.sign))
