"""Losses, metrics and regularisers: each yields a scalar.

Classification losses take logits f32[N, C] (or log-probabilities, nll_loss) and
integer labels i64[N] and average over the batch; labels are never differentiated.
Regression losses are in regression.py. Regularisers take any number of tensors,
usually the parameter group `weights` (every weight-role parameter: of linear,
conv2d, a `param` of rank >= 2 unless declared otherwise; never biases or batchnorm
scale/shift).

A mean's count includes the symbolic batch N, so it is never a constant in the
graph: gradients scale by `expand(g, like, mean=True)`, which divides by the count
of `like` at run time.
"""
from __future__ import annotations

import numpy as np

from dslc.ir.types import TensorType
from dslc.ops.elementwise import log_softmax_ref
from dslc.ops.registry import Attr, OpDef, Sample, Scalar, ShapeError, expect_float, expect_rank, register


def _f32(*shape) -> TensorType:
    return TensorType("f32", shape)


def _scalar(x, like):
    return np.asarray(x, dtype=like.dtype)


# ---- classification: logits [N, C], labels [N] ----------------------------------------

def _class_shape(what: str):
    def rule(ins, attrs):
        logits, label = ins
        expect_float(logits, what)
        expect_rank(logits, 2, f"{what} logits", hint="flatten first" if logits.rank > 2 else None)
        if label.dtype not in ("i32", "i64"):
            raise ShapeError(f"{what}: labels must be integers (i32 or i64), got {label.show()}", code="E0302")
        if label.shape != logits.shape[:1]:
            raise ShapeError(f"{what}: labels {label.show()} do not match logits {logits.show()}; "
                             f"expected [{logits.shape[0]}]", code="E0308")
        return TensorType(logits.dtype, ())
    return rule


def _grad_shape(ins, attrs):
    return ins[0]


_CLASS_SAMPLES = (Sample((_f32(4, 5), TensorType("i64", (4,)))),)
_CLASS_GRAD_SAMPLES = (Sample((_f32(4, 5), TensorType("i64", (4,)), _f32())),)


def _labels(label, scores, what: str):
    """`label`, checked to lie in [0, classes) as the CPU kernels check it (the same message):
    indexing with it, NumPy would read a negative label from the end, a silently wrong loss."""
    if label.size and (label.min() < 0 or label.max() >= scores.shape[1]):
        raise ValueError(f"{what}: a label is outside [0, classes)")
    return label


def _ce_ref(logits, label):
    label = _labels(label, logits, "cross_entropy")
    return _scalar(-log_softmax_ref(logits, axis=1)[np.arange(len(label)), label].mean(), logits)


register(OpDef(
    "cross_entropy", "loss", ("logits", "label"), (),
    shape=_class_shape("cross_entropy"), integer_inputs=(1,),
    formula="mean_i -log softmax(logits_i)[label_i]", flops=lambda ins, out, a: 4 * ins[0].numel(),
    reference=_ce_ref, grad=lambda b, n, g: (b.cross_entropy_grad(*n.inputs, g), None),
    samples=_CLASS_SAMPLES))


def _ce_grad_ref(logits, label, g):
    p = np.exp(log_softmax_ref(logits, axis=1))
    p[np.arange(len(label)), _labels(label, logits, "cross_entropy")] -= 1
    return (p * (g / len(label))).astype(logits.dtype)


register(OpDef(
    "cross_entropy_grad", "derivative", ("logits", "label", "g"), (),
    shape=_grad_shape, formula="(softmax(logits) - onehot(label)) * g / N",
    flops=lambda ins, out, a: 5 * ins[0].numel(), reference=_ce_grad_ref, integer_inputs=(1,),
    samples=_CLASS_GRAD_SAMPLES))


def _nll_ref(logp, label):
    return _scalar(-logp[np.arange(len(label)), _labels(label, logp, "nll_loss")].mean(), logp)


def _nll_grad_ref(logp, label, g):
    out = np.zeros_like(logp)
    out[np.arange(len(label)), _labels(label, logp, "nll_loss")] = -g / len(label)
    return out


register(OpDef(
    "nll_loss", "loss", ("logp", "label"), (), shape=_class_shape("nll_loss"), integer_inputs=(1,),
    formula="mean_i -logp[i, label_i]  (logp: log-probabilities, e.g. log_softmax(logits, axis=1))",
    flops=lambda ins, out, a: ins[1].numel(), reference=_nll_ref,
    grad=lambda b, n, g: (b.nll_loss_grad(*n.inputs, g), None),
    doc="nll_loss(log_softmax(logits, axis=1), label) is cross_entropy(logits, label), as in PyTorch.",
    samples=_CLASS_SAMPLES))
register(OpDef(
    "nll_loss_grad", "derivative", ("logp", "label", "g"), (), shape=_grad_shape,
    formula="-g / N at [i, label_i], 0 elsewhere", flops=lambda ins, out, a: out.numel(), reference=_nll_grad_ref,
    integer_inputs=(1,), samples=_CLASS_GRAD_SAMPLES))


def _hinge_margins(s, label, margin):
    """m[i, j] = s[i, j] - s[i, y_i] + margin for j != y_i, and 0 at j = y_i (excluded from the sum)."""
    m = s - s[np.arange(len(label)), _labels(label, s, "svm")][:, None] + margin
    m[np.arange(len(label)), label] = 0
    return m


def _svm_grad_ref(logits, label, g, margin):
    # max(0, m) has derivative 0 at m = 0: only strictly violated margins count.
    active = (_hinge_margins(logits, label, margin) > 0).astype(logits.dtype)
    active[np.arange(len(label)), label] = -active.sum(axis=1)
    return (active * (g / len(label))).astype(logits.dtype)


_MARGIN = (Attr("margin", "float", 1.0, doc="the margin Delta"),)

register(OpDef(
    "svm", "loss", ("logits", "label"), _MARGIN,
    shape=_class_shape("svm"), integer_inputs=(1,),
    formula="mean_i sum_{j != y_i} max(0, s_ij - s_i,y_i + margin)  (multiclass hinge, CS231n)",
    flops=lambda ins, out, a: 4 * ins[0].numel(),
    reference=lambda s, label, margin: _scalar(np.maximum(_hinge_margins(s, label, margin), 0).sum(axis=1).mean(), s),
    grad=lambda b, n, g: (b.svm_grad(*n.inputs, g, margin=n.attr("margin")), None),
    doc="Scores [N, C] and integer labels [N]. At the hinge (a margin met exactly) the gradient is 0.",
    samples=_CLASS_SAMPLES + (Sample(_CLASS_SAMPLES[0].inputs, {"margin": 0.5}),)))
register(OpDef(
    "svm_grad", "derivative", ("logits", "label", "g"), _MARGIN,
    shape=_grad_shape,
    formula="d/ds_ij = [m_ij > 0] * g / N for j != y_i;  d/ds_i,y_i = -sum_j [m_ij > 0] * g / N",
    flops=lambda ins, out, a: 4 * ins[0].numel(), reference=_svm_grad_ref, integer_inputs=(1,),
    samples=_CLASS_GRAD_SAMPLES))


register(OpDef(
    "accuracy", "metric", ("logits", "label"), (),
    shape=_class_shape("accuracy"), integer_inputs=(1,),
    formula="mean_i [argmax(logits_i) == label_i]", flops=lambda ins, out, a: ins[0].numel(),
    reference=lambda logits, label: _scalar((logits.argmax(axis=1) == label).mean(), logits),
    # Piecewise constant in the logits: its derivative is 0 wherever it exists.
    grad=lambda b, n, g: (b.zeros_like(n.inputs[0]), None), samples=_CLASS_SAMPLES))


# ---- regularisers over a group of tensors ---------------------------------------------

def _reg_shape(what):
    def rule(ins, attrs):
        for t in ins:
            expect_float(t, what)
        if len({t.dtype for t in ins}) > 1:
            raise ShapeError(f"{what}: mixed dtypes {', '.join(t.show() for t in ins)}", code="E0305")
        return TensorType(ins[0].dtype, ())
    return rule


_REG_SAMPLES = (Sample((_f32(3, 4), _f32(2, 2, 3)), domain="kinks"),)


def _regulariser(name, formula, per_tensor, grad, summand: Scalar, attrs=()):
    register(OpDef(
        name, "regulariser", ("*xs",), attrs, shape=_reg_shape(name), formula=formula,
        flops=lambda ins, out, a: 2 * sum(t.numel() for t in ins),
        reference=lambda *xs, **a: _scalar(sum(per_tensor(x, **a).sum() for x in xs), xs[0]),
        grad=grad, samples=_REG_SAMPLES, summand=summand))


# |w| has a kink at 0: sign(0) = 0 is used (the subgradient of minimum norm).
_regulariser("l1", "sum_w sum |w|", lambda w: np.abs(w),
             lambda b, n, g: tuple(b.mul(b.sign(x), g) for x in n.inputs), Scalar("abs({0})", "fabs({0})"))
_regulariser("l2", "sum_w sum w^2", lambda w: w * w,
             lambda b, n, g: tuple(b.mul(b.mul(x, g), b.const(2.0, n.type.dtype)) for x in n.inputs),
             Scalar.both("{0} * {0}"))
_regulariser("elastic", "sum_w sum (beta * w^2 + |w|)  (CS231n's elastic net)",
             lambda w, beta: beta * w * w + np.abs(w),
             lambda b, n, g: tuple(b.mul(b.add(b.mul(x, b.const(2 * n.attr("beta"), n.type.dtype)), b.sign(x)), g)
                                   for x in n.inputs),
             Scalar("{beta} * {0} * {0} + abs({0})", "{beta} * {0} * {0} + fabs({0})"), attrs=(Attr("beta", "float", 0.5),))

register(OpDef("sign", "derivative", ("x",), (), shape=lambda ins, attrs: ins[0], formula="sign(x), 0 at 0",
               flops=lambda ins, out, a: out.numel(), reference=np.sign,
               samples=(Sample((_f32(3, 5),), domain="kinks"),), elementwise="broadcast",
               scalar=Scalar("1.0 if {0} > 0.0 else (-1.0 if {0} < 0.0 else {0} * 0.0)",
                             "({0} > 0.0 ? 1.0 : ({0} < 0.0 ? -1.0 : {0} * 0.0))")))
