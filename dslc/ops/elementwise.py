"""Elementwise ops: arithmetic with NumPy broadcasting, and the activation functions.

Gradient rules return one cotangent per input in the input's *broadcast* shape;
autodiff un-broadcasts them (one helper, dslc/passes/autodiff.py). At a kink the
convention is stated beside the rule.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from dslc.ir.graph import Init
from dslc.ir.types import TensorType
from dslc.ops.registry import Attr, OpDef, ParamSlot, ShapeError, expect_float, expect_rank, register


def broadcast(a: TensorType, b: TensorType, what: str) -> TensorType:
    """NumPy broadcasting of two types; symbolic dimensions must match exactly or meet a 1."""
    if a.dtype != b.dtype:
        raise ShapeError(f"{what}: dtypes differ, {a.show()} and {b.show()}", code="E0305")
    out = []
    for i in range(1, max(a.rank, b.rank) + 1):
        da = a.shape[-i] if i <= a.rank else 1
        db = b.shape[-i] if i <= b.rank else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise ShapeError(f"{what}: shapes {a.show()} and {b.show()} do not broadcast "
                             f"(dimension {max(a.rank, b.rank) - i}: {da} vs {db})", code="E0306")
    return TensorType(a.dtype, tuple(reversed(out)))


def _numel_flops(k: int = 1):
    return lambda ins, out, attrs: k * out.numel()


def _binary(name: str, formula: str, fn, grad, flops: int = 1) -> OpDef:
    return register(OpDef(
        name, "arithmetic", ("x", "y"), (),
        shape=lambda ins, attrs: broadcast(ins[0], ins[1], name),
        formula=formula, flops=_numel_flops(flops), reference=fn, grad=grad))


_binary("add", "x + y", np.add, lambda b, n, g: (g, g))
_binary("sub", "x - y", np.subtract, lambda b, n, g: (g, b.neg(g)))
_binary("mul", "x * y", np.multiply, lambda b, n, g: (b.mul(g, n.inputs[1]), b.mul(g, n.inputs[0])))
_binary("div", "x / y", np.divide,
        lambda b, n, g: (b.div(g, n.inputs[1]), b.neg(b.mul(g, b.div(n.name, n.inputs[1])))))


def _same(what: str):
    def rule(ins, attrs):
        expect_float(ins[0], what)
        return ins[0]
    return rule


def _unary(name: str, formula: str, fn, grad, attrs=(), flops: int = 1, category="activation") -> OpDef:
    return register(OpDef(name, category, ("x",), attrs, shape=_same(name), formula=formula,
                          flops=_numel_flops(flops), reference=fn, grad=grad))


_unary("neg", "-x", np.negative, lambda b, n, g: (b.neg(g),), category="arithmetic")

# relu'(0) = 0 (the subgradient PyTorch and the CS231n notes use).
_unary("relu", "max(x, 0)", lambda x: np.maximum(x, 0),
       lambda b, n, g: (b.mul(g, b.step(n.inputs[0])),))
_unary("leaky_relu", "x if x > 0 else alpha * x  (at 0: slope alpha)",
       lambda x, alpha: np.where(x > 0, x, alpha * x),
       lambda b, n, g: (b.mul(g, b.step(n.inputs[0], low=n.attr("alpha"))),),
       attrs=(Attr("alpha", "float", 0.01),), flops=2)
_unary("elu", "x if x > 0 else alpha * (exp(x) - 1)",
       lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
       lambda b, n, g: (b.mul(g, b.elu_deriv(n.inputs[0], alpha=n.attr("alpha"))),),
       attrs=(Attr("alpha", "float", 1.0),), flops=4)
_unary("gelu", "x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))  (exact, not the tanh approximation)",
       lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))).astype(x.dtype),
       lambda b, n, g: (b.mul(g, b.gelu_deriv(n.inputs[0])),), flops=8)
_unary("sigmoid", "1 / (1 + exp(-x))", lambda x: _sigmoid(x),
       lambda b, n, g: (b.mul(g, b.sigmoid_deriv(n.name)),), flops=4)
_unary("tanh", "tanh(x)", np.tanh, lambda b, n, g: (b.mul(g, b.tanh_deriv(n.name)),), flops=4)


def _sigmoid(x):
    # Written to avoid overflow for large |x| in either direction.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


# ---- derivative helpers: ops that only gradient rules emit ------------------------

def _helper(name: str, formula: str, fn, attrs=(), flops: int = 2) -> OpDef:
    # Their own gradients are never needed: autodiff is first-order here.
    return register(OpDef(name, "derivative", ("x",), attrs, shape=_same(name), formula=formula,
                          flops=_numel_flops(flops), reference=fn))


_helper("step", "1 if x > 0 else low", lambda x, low: np.where(x > 0, 1.0, low).astype(x.dtype),
        attrs=(Attr("low", "float", 0.0),), flops=1)
_helper("elu_deriv", "1 if x > 0 else alpha * exp(x)",
        lambda x, alpha: np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0))).astype(x.dtype),
        attrs=(Attr("alpha", "float", 1.0),))
_helper("gelu_deriv", "Phi(x) + x * phi(x)",
        lambda x: (0.5 * (1.0 + erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))
        .astype(x.dtype), flops=10)
_helper("sigmoid_deriv", "s * (1 - s), given s = sigmoid(x)", lambda s: s * (1 - s))
_helper("tanh_deriv", "1 - t^2, given t = tanh(x)", lambda t: 1 - t * t)


# ---- prelu: a learnable slope per channel (axis 1), He et al. 2015 -----------------

def _per_channel(alpha, x):
    return alpha.reshape((1, -1) + (1,) * (x.ndim - 2))


def _prelu_shape(ins, attrs):
    x = ins[0]
    expect_float(x, "prelu")
    expect_rank(x, (2, 3, 4, 5), "prelu", hint="prelu learns one slope per channel (axis 1)")
    if len(ins) > 1 and ins[1].shape != (x.shape[1],):
        raise ShapeError(f"prelu: slope shape {ins[1].show()} does not fit input {x.show()}")
    return x


def _prelu_grad(b, n, g):
    x, alpha = n.inputs
    # At x = 0 the slope branch is taken; both branches give 0 there for d/dalpha.
    others = tuple(i for i in range(n.type.rank) if i != 1)
    return b.mul(g, b.prelu_deriv(x, alpha)), b.sum(b.mul(g, b.mul(x, b.step(b.neg(x)))), axis=others)


register(OpDef(
    "prelu", "activation", ("x",), (Attr("init", "init", Init("constant", (("value", 0.25),))),),
    params=(ParamSlot("alpha", "shift", lambda ins, a: (ins[0].shape[1],), "init"),),
    shape=_prelu_shape, formula="x if x > 0 else alpha[c] * x  (alpha learned per channel, initially 0.25)",
    flops=_numel_flops(2), reference=lambda x, alpha: np.where(x > 0, x, _per_channel(alpha, x) * x),
    grad=_prelu_grad))
register(OpDef("prelu_deriv", "derivative", ("x", "alpha"), (), shape=lambda ins, attrs: ins[0],
               formula="1 if x > 0 else alpha[c]", flops=_numel_flops(1),
               reference=lambda x, alpha: np.where(x > 0, 1.0, _per_channel(alpha, x)).astype(x.dtype)))
