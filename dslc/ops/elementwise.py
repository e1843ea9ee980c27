"""Elementwise ops: arithmetic with NumPy broadcasting, the activation functions,
and the activations over one axis (softmax, log_softmax, maxout).

Gradient rules return one cotangent per input in the input's *broadcast* shape;
autodiff un-broadcasts them (one helper, dslc/passes/autodiff.py). At a kink the
convention is stated beside the rule.
"""
from __future__ import annotations

import math

import numpy as np

from dslc.ir.graph import Init
from dslc.ir.types import TensorType
from dslc.ops.registry import (Attr, OpDef, ParamSlot, Sample, Scalar, ShapeError, expect_float, expect_rank,
                               expect_static, normalize_axis, register)


def _erf(x):
    """scipy.special.erf, imported on first use: SciPy's import costs a fifth of a second of
    every process start (the warm start of `dslc compile`), and only gelu's references need it."""
    from scipy.special import erf
    return erf(x)


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


def _f32(*shape) -> TensorType:
    return TensorType("f32", shape)


def _samples(*inputs, domain="any", **attrs) -> tuple[Sample, ...]:
    return (Sample(tuple(_f32(*s) for s in inputs), attrs, domain),)


# Broadcasting both ways: a row vector against a matrix, and [2, 1, 3] against [4, 1].
_BROADCAST = (Sample((_f32(3, 4), _f32(4))), Sample((_f32(2, 1, 3), _f32(4, 1))))


def _binary(name: str, formula: str, fn, grad, scalar: Scalar, samples=_BROADCAST, shape=None) -> OpDef:
    return register(OpDef(
        name, "arithmetic", ("x", "y"), (),
        shape=shape or (lambda ins, attrs: broadcast(ins[0], ins[1], name)),
        formula=formula, flops=_numel_flops(1), reference=fn, grad=grad, samples=samples, elementwise="broadcast",
        scalar=scalar))


_binary("add", "x + y", np.add, lambda b, n, g: (g, g), Scalar.both("{0} + {1}"))
_binary("sub", "x - y", np.subtract, lambda b, n, g: (g, b.neg(g)), Scalar.both("{0} - {1}"))
_binary("mul", "x * y", np.multiply, lambda b, n, g: (b.mul(g, n.inputs[1]), b.mul(g, n.inputs[0])),
        Scalar.both("{0} * {1}"))


def _div_shape(ins, attrs):
    """True division has no integer result: 7 / 2 in an i64 tensor would be 3 (or 3.5 cut)."""
    out = broadcast(ins[0], ins[1], "div")
    if not out.is_float:
        raise ShapeError(f"'/' divides floating-point tensors, got {ins[0].show()} and {ins[1].show()}",
                         code="E0302", hint="// is the floor division of integers (-7 // 2 is -4); dslc has no "
                         "cast from integers to floats: only a tensor declared as floats (f32, f64) divides")
    return out


# d(x/y)/dy = -x/y^2 = -(x/y)/y, reusing the forward result.
_binary("div", "x / y  (floating-point tensors; // divides integers)", np.divide,
        lambda b, n, g: (b.div(g, n.inputs[1]), b.neg(b.mul(g, b.div(n.name, n.inputs[1])))),
        Scalar.both("{0} / {1}"), samples=tuple(Sample(s.inputs, domain="positive") for s in _BROADCAST),
        shape=_div_shape)


def _same(what: str):
    def rule(ins, attrs):
        expect_float(ins[0], what)
        return ins[0]
    return rule


def _unary(name: str, formula: str, fn, grad, scalar: Scalar, attrs=(), flops: int = 1, category="activation",
           domain="any", shape=None) -> OpDef:
    return register(OpDef(name, category, ("x",), attrs, shape=shape or _same(name), formula=formula,
                          flops=_numel_flops(flops), reference=fn, grad=grad,
                          samples=_samples((3, 5), domain=domain), elementwise="broadcast", scalar=scalar))


_unary("neg", "-x", np.negative, lambda b, n, g: (b.neg(g),), Scalar.both("-{0}"), category="arithmetic")

# relu'(0) = 0 (the subgradient PyTorch and the CS231n notes use). NaN stays NaN, as
# np.maximum: CUDA's fmax would return 0, hence the comparison. The mask reads the output
# (relu(x) > 0 exactly where x > 0; step(NaN) = 0 either way), so the input need not
# outlive the forward and relu joins the epilogue or sweep of what feeds it (a batchnorm).
_unary("relu", "max(x, 0)", lambda x: np.maximum(x, 0),
       lambda b, n, g: (b.mul(g, b.step(n.name)),),
       Scalar("max({0}, 0.0)", "({0} < 0.0 ? 0.0 : {0})"), domain="kinks")
_unary("leaky_relu", "x if x > 0 else alpha * x  (at 0: slope alpha)",
       lambda x, alpha: np.where(x > 0, x, alpha * x),
       lambda b, n, g: (b.mul(g, b.step(n.inputs[0], low=n.attr("alpha"))),),
       Scalar("{0} if {0} > 0.0 else {alpha} * {0}", "({0} > 0.0 ? {0} : {alpha} * {0})"),
       attrs=(Attr("alpha", "float", 0.01),), flops=2, domain="kinks")
# elu is C1 for alpha = 1 only; at 0 the slope is alpha (the x <= 0 branch), as in PyTorch.
_unary("elu", "x if x > 0 else alpha * (exp(x) - 1)",
       lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
       lambda b, n, g: (b.mul(g, b.elu_deriv(n.inputs[0], alpha=n.attr("alpha"))),),
       Scalar("{0} if {0} > 0.0 else {alpha} * math.expm1(min({0}, 0.0))",
              "({0} > 0.0 ? {0} : {alpha} * expm1(fmin({0}, 0.0)))"),
       attrs=(Attr("alpha", "float", 1.0),), flops=4, domain="kinks")
_unary("gelu", "x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))  (exact, not the tanh approximation)",
       lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))).astype(x.dtype),
       lambda b, n, g: (b.mul(g, b.gelu_deriv(n.inputs[0])),),
       Scalar("0.5 * {0} * (1.0 + math.erf({0} * SQRT1_2))", "0.5 * {0} * (1.0 + erf({0} * SQRT1_2))"), flops=8)
# Two branches so that exp never overflows, as in the reference. On the CPU a float32
# element's exp is one the loop vectorises (dslc/runtime/cpu/elementary.py), as tanh's.
_unary("sigmoid", "1 / (1 + exp(-x))", lambda x: _sigmoid(x),
       lambda b, n, g: (b.mul(g, b.sigmoid_deriv(n.name)),),
       Scalar("1.0 / (1.0 + elementary.exp(-{0})) if {0} >= 0.0 else elementary.exp({0}) / (1.0 + elementary.exp({0}))",
              "({0} >= 0.0 ? 1.0 / (1.0 + exp(-{0})) : exp({0}) / (1.0 + exp({0})))"), flops=4)
# On the CPU a float32 element's tanh is a rational function the loop vectorises (libm's
# tanh, called per element, does not): dslc/runtime/cpu/elementary.py.
_unary("tanh", "tanh(x)", np.tanh, lambda b, n, g: (b.mul(g, b.tanh_deriv(n.name)),),
       Scalar("elementary.tanh({0})", "tanh({0})"), flops=4)


# softplus, computed as max(z, 0) + log1p(exp(-|z|)), z = beta x: never overflows. Its
# derivative is sigmoid(beta x). PyTorch switches to the identity above a threshold; this
# form is already exact there, so there is none.
def _softplus_shape(ins, attrs):
    if not attrs["beta"] > 0:  # 0 divides by zero (inf); a negative beta is a smooth min(x, 0), no relu
        raise ShapeError(f"softplus: beta must be positive, got {attrs['beta']:g}", code="E0310",
                         hint="beta is the sharpness: 1 is the usual softplus, larger is closer to relu")
    return _same("softplus")(ins, attrs)


_unary("softplus", "log(1 + exp(beta x)) / beta  (a smooth relu)",
       lambda x, beta: ((np.maximum(beta * x, 0) + np.log1p(np.exp(-np.abs(beta * x)))) / beta).astype(x.dtype),
       lambda b, n, g: (b.mul(g, b.sigmoid(n.inputs[0] if n.attr("beta") == 1.0 else
                                           b.mul(n.inputs[0], b.const(n.attr("beta"), n.type.dtype)))),),
       Scalar("(max({0} * {beta}, 0.0) + math.log1p(math.exp(-abs({0} * {beta})))) / {beta}",
              "(fmax({0} * {beta}, 0.0) + log1p(exp(-fabs({0} * {beta})))) / {beta}"),
       attrs=(Attr("beta", "float", 1.0, doc="sharpness, positive: larger is closer to relu"),), flops=6,
       shape=_softplus_shape)

# selu (Klambauer et al. 2017): scale * elu(x, alpha) with the paper's fixed constants, which
# keep activations near zero mean and unit variance. At 0 the slope is scale * alpha, as elu's.
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
_unary("selu", f"{SELU_SCALE:.4f} * (x if x > 0 else {SELU_ALPHA:.4f} * (exp(x) - 1))",
       lambda x: (SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))).astype(x.dtype),
       lambda b, n, g: (b.mul(g, b.mul(b.elu_deriv(n.inputs[0], alpha=SELU_ALPHA), b.const(SELU_SCALE, n.type.dtype))),),
       Scalar(f"{SELU_SCALE!r} * ({{0}} if {{0}} > 0.0 else {SELU_ALPHA!r} * math.expm1(min({{0}}, 0.0)))",
              f"{SELU_SCALE!r} * ({{0}} > 0.0 ? {{0}} : {SELU_ALPHA!r} * expm1(fmin({{0}}, 0.0)))"),
       flops=4, domain="kinks")


def _sigmoid(x):
    # Written to avoid overflow for large |x| in either direction.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


# ---- derivative helpers: ops that only gradient rules emit ------------------------

def _helper(name: str, formula: str, fn, scalar: Scalar, attrs=(), flops: int = 2, domain: str = "kinks",
            category: str = "derivative", grad=None) -> OpDef:
    # The gradient rules' helpers need no gradient of their own: autodiff is first-order here.
    return register(OpDef(name, category, ("x",), attrs, shape=_same(name), formula=formula,
                          flops=_numel_flops(flops), reference=fn, samples=_samples((3, 5), domain=domain),
                          elementwise="broadcast", scalar=scalar, grad=grad))


_helper("step", "1 if x > 0 else low", lambda x, low: np.where(x > 0, 1.0, low).astype(x.dtype),
        Scalar("1.0 if {0} > 0.0 else {low}", "({0} > 0.0 ? 1.0 : {low})"), attrs=(Attr("low", "float", 0.0),), flops=1)
_helper("elu_deriv", "1 if x > 0 else alpha * exp(x)",
        lambda x, alpha: np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0))).astype(x.dtype),
        Scalar("1.0 if {0} > 0.0 else {alpha} * math.exp(min({0}, 0.0))",
               "({0} > 0.0 ? 1.0 : {alpha} * exp(fmin({0}, 0.0)))"),
        attrs=(Attr("alpha", "float", 1.0),))
_helper("gelu_deriv", "Phi(x) + x * phi(x)",
        lambda x: (0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))
        .astype(x.dtype),
        Scalar("0.5 * (1.0 + math.erf({0} * SQRT1_2)) + {0} * math.exp(-0.5 * {0} * {0}) * INV_SQRT_2PI",
               "0.5 * (1.0 + erf({0} * SQRT1_2)) + {0} * exp(-0.5 * {0} * {0}) * INV_SQRT_2PI"), flops=10)
_helper("sigmoid_deriv", "s * (1 - s), given s = sigmoid(x)", lambda s: s * (1 - s), Scalar.both("{0} * (1.0 - {0})"))
_helper("tanh_deriv", "1 - t^2, given t = tanh(x)", lambda t: 1 - t * t, Scalar.both("1.0 - {0} * {0}"))
# Made by passes (fold-batchnorm's gamma / sqrt(var + eps), the training step's gradient
# clipping), not by a gradient rule; a folded graph is differentiated where the compiled API
# takes a gradient with respect to a running variance: d/dx x^(-1/2) = -r^3 / 2, r = rsqrt(x).
_helper("rsqrt", "1 / sqrt(x)", lambda x: (1.0 / np.sqrt(x)).astype(x.dtype),
        Scalar("1.0 / math.sqrt({0})", "1.0 / sqrt({0})"), flops=2, domain="positive", category="rewrite",
        grad=lambda b, n, g: (b.mul(g, b.mul(b.const(-0.5, n.type.dtype), b.mul(n.name, b.mul(n.name, n.name)))),))


# ---- prelu: a learnable slope per channel (axis 1), He et al. 2015 -----------------

def _per_channel(alpha, x):
    return alpha.reshape((1, -1) + (1,) * (x.ndim - 2))


def _prelu_channels(ins) -> int:
    x = ins[0]
    expect_float(x, "prelu")
    expect_rank(x, (2, 3, 4, 5), "prelu", hint="prelu learns one slope per channel (axis 1)")
    return expect_static(x.shape[1], "prelu channels")


def _prelu_shape(ins, attrs):
    c = _prelu_channels(ins)
    if len(ins) > 1 and ins[1].shape != (c,):
        raise ShapeError(f"prelu: slope shape {ins[1].show()} does not fit input {ins[0].show()}")
    return ins[0]


def _prelu_grad(b, n, g):
    x, alpha = n.inputs
    # At x = 0 the slope branch is taken; both branches give 0 there for d/dalpha.
    others = tuple(i for i in range(n.type.rank) if i != 1)
    return b.mul(g, b.prelu_deriv(x, alpha)), b.sum(b.mul(g, b.mul(x, b.step(b.neg(x)))), axis=others)


_PRELU_SAMPLES = (Sample((_f32(2, 3, 4), _f32(3)), domain="kinks"), Sample((_f32(4, 2), _f32(2)), domain="kinks"))

register(OpDef(
    "prelu", "activation", ("x",), (Attr("init", "init", Init("constant", (("value", 0.25),))),),
    params=(ParamSlot("alpha", "shift", lambda ins, a: (_prelu_channels(ins),), "init"),),
    shape=_prelu_shape, formula="x if x > 0 else alpha[c] * x  (alpha learned per channel, initially 0.25)",
    flops=_numel_flops(2), reference=lambda x, alpha, init: np.where(x > 0, x, _per_channel(alpha, x) * x),
    grad=_prelu_grad, samples=_PRELU_SAMPLES, elementwise="channel",
    scalar=Scalar("{0} if {0} > 0.0 else {1} * {0}", "({0} > 0.0 ? {0} : {1} * {0})")))
register(OpDef("prelu_deriv", "derivative", ("x", "alpha"), (), shape=_prelu_shape,
               formula="1 if x > 0 else alpha[c]", flops=_numel_flops(1),
               reference=lambda x, alpha: np.where(x > 0, 1.0, _per_channel(alpha, x)).astype(x.dtype),
               samples=_PRELU_SAMPLES, elementwise="channel",
               scalar=Scalar("1.0 if {0} > 0.0 else {1}", "({0} > 0.0 ? 1.0 : {1})")))


# ---- activations over one axis ---------------------------------------------------

def _axis_shape(what: str):
    def rule(ins, attrs):
        x = ins[0]
        expect_float(x, what)
        normalize_axis(attrs["axis"], x.rank, what)
        return x
    return rule


def softmax_ref(x, axis=-1):
    # Shifting by the max makes exp overflow-free without changing the result.
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def log_softmax_ref(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


_AXIS = (Attr("axis", "int", -1, doc="the axis that sums to one (classes)"),)
_AXIS_SAMPLES = (Sample((_f32(3, 5),)), Sample((_f32(2, 3, 4),), {"axis": 1}))


def _softmax_grad(b, n, g):
    s, axis = n.name, (n.attr("axis"),)
    # ds_i/dx_j = s_i (delta_ij - s_j)  =>  dx = s * (g - sum(g * s))
    return (b.mul(s, b.sub(g, b.sum(b.mul(g, s), axis=axis, keepdims=True))),)


def _log_softmax_grad(b, n, g):
    x, axis = n.inputs[0], n.attr("axis")
    # d log s_i / dx_j = delta_ij - s_j  =>  dx = g - softmax(x) * sum(g)
    return (b.sub(g, b.mul(b.softmax(x, axis=axis), b.sum(g, axis=(axis,), keepdims=True))),)


register(OpDef(
    "softmax", "activation", ("x",), _AXIS, shape=_axis_shape("softmax"),
    formula="softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x)  along `axis`",
    flops=_numel_flops(5), reference=softmax_ref, grad=_softmax_grad, samples=_AXIS_SAMPLES))
register(OpDef(
    "log_softmax", "activation", ("x",), _AXIS, shape=_axis_shape("log_softmax"),
    formula="log_softmax(x)_i = x_i - m - log sum_j exp(x_j - m),  m = max x  along `axis`",
    flops=_numel_flops(5), reference=log_softmax_ref, grad=_log_softmax_grad, samples=_AXIS_SAMPLES))


# ---- maxout (Goodfellow et al. 2013): the max over groups of k channels -----------

def _maxout_shape(ins, attrs):
    x, k = ins[0], attrs["k"]
    expect_float(x, "maxout")
    expect_rank(x, (2, 3, 4, 5), "maxout", hint="maxout groups the channels (axis 1) of [N, C, ...]")
    c = expect_static(x.shape[1], "maxout channels")
    if k <= 0 or c % k:
        raise ShapeError(f"maxout: k={k} must divide the {c} channels of {x.show()}", code="E0312",
                         hint="the output has C / k channels, so k must be a divisor of C")
    return TensorType(x.dtype, (x.shape[0], c // k) + x.shape[2:])


def _groups(x, k):
    """[N, C, ...] -> [N, C/k, k, ...]: channel c goes to group c // k."""
    return x.reshape(x.shape[:1] + (x.shape[1] // k, k) + x.shape[2:])


def _maxout_grad_ref(x, g, k):
    # Ties: argmax picks the first maximum of each group, and only it gets the gradient.
    z = _groups(x, k)
    first = np.expand_dims(z.argmax(axis=2), 2)
    picked = np.arange(k).reshape((1, 1, k) + (1,) * (x.ndim - 2)) == first
    return (picked * np.expand_dims(g, 2)).reshape(x.shape).astype(x.dtype)


_K = (Attr("k", "int", doc="channels per group"),)

register(OpDef(
    "maxout", "activation", ("x",), _K, shape=_maxout_shape,
    formula="y[n, c, ...] = max_{j < k} x[n, c*k + j, ...]  (out channels C / k)",
    flops=lambda ins, out, a: ins[0].numel(), reference=lambda x, k: _groups(x, k).max(axis=2),
    grad=lambda b, n, g: (b.maxout_grad(n.inputs[0], g, k=n.attr("k")),),
    doc="Channels c*k .. c*k + k - 1 form group c. Gradient at a tie: the first maximum of the group gets it all.",
    samples=(Sample((_f32(2, 6, 3),), {"k": 3}, "kinks"), Sample((_f32(3, 4),), {"k": 2}, "kinks"))))
register(OpDef(
    "maxout_grad", "derivative", ("x", "g"), _K, shape=lambda ins, attrs: ins[0],
    formula="g routed to the first maximum of each group of k channels, 0 elsewhere",
    flops=lambda ins, out, a: out.numel(), reference=_maxout_grad_ref,
    samples=(Sample((_f32(2, 6, 3), _f32(2, 2, 3)), {"k": 3}, "kinks"),)))
