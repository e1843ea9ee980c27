"""Normalisation layers: batchnorm, layernorm, groupnorm, instancenorm (and `var`).

batchnorm (Ioffe & Szegedy 2015) normalises each channel (axis 1) over the batch
(and the spatial axes for images). Its node's inputs are (x, gamma, beta, mean,
var): in the typed and inference graphs mean/var are the running statistics; the
training-mode lowering (`train`) substitutes the batch statistics, computed by
`mean` and `var` nodes, and adds the running update
running = (1 - momentum) * running + momentum * batch (PyTorch's convention; the
running variance uses the unbiased batch variance). Because batchnorm has a
gradient for its mean and var inputs too, autodiff then differentiates through
the batch statistics with no special case.

groupnorm (Wu & He 2018) normalises each example over groups of C/G channels (and
all the remaining axes); layernorm is groupnorm with one group and instancenorm
with one channel per group. These behave the same in training and inference.
Every layer here learns a per-channel (axis 1) scale gamma and shift beta.
"""
from __future__ import annotations

import numpy as np

from dslc.ir.graph import Init
from dslc.ir.types import TensorType
from dslc.ops.reduce import reduced_axes
from dslc.ops.registry import (Attr, OpDef, ParamSlot, Sample, Scalar, ShapeError, expect_float, expect_rank,
                               expect_static, register)


def bn_axes(ndim: int) -> tuple[int, ...]:
    """Every axis but the channel axis 1."""
    return (0,) + tuple(range(2, ndim))


def per_channel(v, ndim: int):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _channels(ins, what, ranks=(2, 3, 4, 5)) -> int:
    x = ins[0]
    expect_float(x, what)
    expect_rank(x, ranks, what)
    return expect_static(x.shape[1], f"{what} channels")


def _eps(attrs, what: str) -> None:
    if attrs["eps"] <= 0:
        raise ShapeError(f"{what}: eps must be positive, got {attrs['eps']}", code="E0310")


def _fits(ins, c: int, what: str) -> None:
    for t in ins[1:]:
        if t.shape != (c,):
            raise ShapeError(f"{what}: per-channel tensor {t.show()} does not fit {c} channels")


_f64 = lambda *shape: TensorType("f64", shape)
_C = lambda what: (lambda ins, a: (_channels(ins, what),))
_AFFINE = lambda what: (ParamSlot("gamma", "scale", _C(what), Init("ones")),
                        ParamSlot("beta", "shift", _C(what), Init("zeros")))


# ---- var: the batch variance; differentiable, since batch statistics are --------------

def _var_shape(ins, attrs):
    x = ins[0]
    expect_float(x, "var")
    axes = reduced_axes(x, attrs["axis"], "var")
    return TensorType(x.dtype, tuple(1 if i in axes else d for i, d in enumerate(x.shape)
                                     if attrs["keepdims"] or i not in axes))


def _np_axes(axis, ndim):
    return tuple(range(ndim)) if axis is None else tuple(a % ndim for a in axis)


def _var_grad_ref(g, x, axis, keepdims, unbiased):
    axes = _np_axes(axis, x.ndim)
    if not keepdims:
        g = g.reshape([1 if i in axes else d for i, d in enumerate(x.shape)])
    # The count comes from the runtime shape: the batch size may be symbolic.
    n = int(np.prod([x.shape[a] for a in axes]))
    return (g * 2 * (x - x.mean(axis=axes, keepdims=True)) / (n - int(unbiased))).astype(x.dtype)


_VAR_ATTRS = (Attr("axis", "optional_axes", None, doc="axes to reduce; none = all"), Attr("keepdims", "bool", False),
              Attr("unbiased", "bool", False, doc="divide by n - 1 instead of n"))

register(OpDef(
    "var", "reduce", ("x",), _VAR_ATTRS, shape=_var_shape,
    formula="mean of (x - mean(x))^2 over `axis`  (times n/(n-1) if unbiased; n from the runtime shape)",
    flops=lambda ins, out, a: 3 * ins[0].numel(),
    reference=lambda x, axis, keepdims, unbiased: x.var(axis=_np_axes(axis, x.ndim), ddof=int(unbiased),
                                                        keepdims=keepdims).astype(x.dtype),
    grad=lambda b, n, g: (b.var_grad(g, n.inputs[0], **n.attr_dict),),
    samples=(Sample((_f64(4, 3, 2),), {"axis": (0, 2)}), Sample((_f64(5, 3),), {"axis": (0,), "unbiased": True})),
    sweep="reduce"))

register(OpDef(
    "var_grad", "derivative", ("g", "x"), _VAR_ATTRS, shape=lambda ins, attrs: ins[1],
    formula="g * 2 (x - mean(x)) / (n - unbiased), g broadcast over `axis`",
    flops=lambda ins, out, a: 4 * out.numel(), reference=_var_grad_ref, sweep="map",
    samples=(Sample((_f64(3), _f64(4, 3, 2)), {"axis": (0, 2)}),)))


# ---- batchnorm ------------------------------------------------------------------------

def _bn_shape(ins, attrs):
    c = _channels(ins, "batchnorm")
    _eps(attrs, "batchnorm")
    if not 0.0 <= attrs["momentum"] <= 1.0:
        raise ShapeError(f"batchnorm: momentum must be in [0, 1], got {attrs['momentum']}", code="E0310")
    _fits(ins, c, "batchnorm")
    return ins[0]


def _bn_ref(x, gamma, beta, mean, var, momentum, eps):
    inv = 1.0 / np.sqrt(var + eps)
    return ((x - per_channel(mean, x.ndim)) * per_channel(inv * gamma, x.ndim) + per_channel(beta, x.ndim)).astype(x.dtype)


def _bn_grad(b, n, g):
    x, gamma, beta, mean, var = n.inputs
    axes, eps, dtype = bn_axes(n.type.rank), n.attr("eps"), n.type.dtype
    dx = b.batchnorm_grad_x(g, gamma, var, eps=eps)
    dgamma = b.batchnorm_grad_gamma(g, x, mean, var, eps=eps)
    # d/dmean = -sum(dx); d/dvar = -1/2 gamma sum(g (x - mean)) (var + eps)^(-3/2) = -1/2 gamma dgamma / (var + eps)
    dvar = b.mul(b.mul(dgamma, gamma), b.div(b.const(-0.5, dtype), b.add(var, b.const(eps, dtype))))
    return dx, dgamma, b.sum(g, axis=axes), b.neg(b.sum(dx, axis=axes)), dvar


def _bn_train(b, node):
    """Batch statistics in, running statistics updated: (value, [(state, new value), ...])."""
    x, gamma, beta, running_mean, running_var = node.inputs
    momentum, eps, xt = node.attr("momentum"), node.attr("eps"), b.type(x)
    axes = bn_axes(xt.rank)
    mean, var = b.mean(x, axis=axes), b.var(x, axis=axes)
    y = b.named(node.name, "batchnorm", x, gamma, beta, mean, var, span=node.span, momentum=momentum, eps=eps)
    keep, take = b.const(1.0 - momentum, xt.dtype), b.const(momentum, xt.dtype)
    # The unbiased variance's n/(n-1) is computed by `var` from the runtime batch size.
    unbiased = b.var(x, axis=axes, unbiased=True)
    return y, [(running_mean, b.add(b.mul(keep, running_mean), b.mul(take, mean))),
               (running_var, b.add(b.mul(keep, running_var), b.mul(take, unbiased)))]


def over_examples_alone(graph) -> list[str]:
    """The batchnorms of `graph` whose statistics are over the batch axis alone (an input of
    rank 2, [N, C], as after a linear layer): a training batch of one example gives each of
    them a variance of 0/0 for its running variance (n / (n - 1)), NaN from then on, which
    the trainer and the compiled API's step refuse (PyTorch raises the same way)."""
    return [n.name for n in graph.of_op("batchnorm") if graph[n.inputs[0]].type.rank == 2]


register(OpDef(
    "batchnorm", "norm", ("x",), (Attr("momentum", "float", 0.1), Attr("eps", "float", 1e-5)),
    params=_AFFINE("batchnorm") + (ParamSlot("running_mean", "state", _C("batchnorm"), Init("zeros")),
                                   ParamSlot("running_var", "state", _C("batchnorm"), Init("ones"))),
    shape=_bn_shape,
    formula="y = gamma[c] * (x - mean[c]) / sqrt(var[c] + eps) + beta[c]; in training mean/var are the batch's "
            "(over N, and H, W; biased var), in inference the running statistics",
    flops=lambda ins, out, a: 4 * out.numel(), reference=_bn_ref, grad=_bn_grad, train=_bn_train,
    elementwise="channel",
    scalar=Scalar("({0} - {3}) * ({1} / math.sqrt({4} + {eps})) + {2}",
                  "({0} - {3}) * ({1} / sqrt({4} + {eps})) + {2}"),
    samples=(Sample((_f64(4, 3, 2, 2), _f64(3), _f64(3), _f64(3), _f64(3)), domain="positive"),
             Sample((_f64(5, 4), _f64(4), _f64(4), _f64(4), _f64(4)), domain="positive"))))


def _bn_grad_gamma_ref(g, x, mean, var, eps):
    xhat = (x - per_channel(mean, x.ndim)) / per_channel(np.sqrt(var + eps), x.ndim)
    return (g * xhat).sum(axis=bn_axes(x.ndim)).astype(x.dtype)


register(OpDef(
    "batchnorm_grad_x", "derivative", ("g", "gamma", "var"), (Attr("eps", "float", 1e-5),),
    shape=lambda ins, attrs: ins[0], formula="g * gamma[c] / sqrt(var[c] + eps)",
    flops=lambda ins, out, a: out.numel(),
    reference=lambda g, gamma, var, eps: (g * per_channel(gamma / np.sqrt(var + eps), g.ndim)).astype(g.dtype),
    scalar=Scalar("{0} * ({1} / math.sqrt({2} + {eps}))", "{0} * ({1} / sqrt({2} + {eps}))"), sweep="map",
    samples=(Sample((_f64(4, 3, 2, 2), _f64(3), _f64(3)), domain="positive"),)))

register(OpDef(
    "batchnorm_grad_gamma", "derivative", ("g", "x", "mean", "var"), (Attr("eps", "float", 1e-5),),
    shape=lambda ins, attrs: TensorType(ins[1].dtype, (ins[1].shape[1],)),
    formula="sum_{n, h, w} g * (x - mean[c]) / sqrt(var[c] + eps)",
    flops=lambda ins, out, a: 3 * ins[0].numel(), reference=_bn_grad_gamma_ref, sweep="reduce",
    samples=(Sample((_f64(4, 3, 2, 2), _f64(4, 3, 2, 2), _f64(3), _f64(3)), domain="positive"),)))


# ---- groupnorm, layernorm, instancenorm -----------------------------------------------

def _normalised(x, groups: int, eps: float):
    """(xhat, 1/sigma), both grouped as [N, G, -1]: statistics per example and group."""
    xg = x.reshape(x.shape[0], groups, -1)
    inv = 1.0 / np.sqrt(xg.var(axis=-1, keepdims=True) + eps)
    return (xg - xg.mean(axis=-1, keepdims=True)) * inv, inv


def _gn_ref(x, gamma, beta, groups, eps):
    xhat = _normalised(x, groups, eps)[0].reshape(x.shape)
    return (xhat * per_channel(gamma, x.ndim) + per_channel(beta, x.ndim)).astype(x.dtype)


def _gn_grad_input_ref(g, x, gamma, groups, eps):
    xhat, inv = _normalised(x, groups, eps)
    d = (g * per_channel(gamma, x.ndim)).reshape(xhat.shape)
    # The normalisation's Jacobian-vector product: remove the mean and the xhat component of d.
    dx = inv * (d - d.mean(axis=-1, keepdims=True) - xhat * (d * xhat).mean(axis=-1, keepdims=True))
    return dx.reshape(x.shape).astype(x.dtype)


def _gn_grad_gamma_ref(g, x, groups, eps):
    return (g * _normalised(x, groups, eps)[0].reshape(x.shape)).sum(axis=bn_axes(x.ndim)).astype(x.dtype)


def _gn_grad(groups_of):
    def rule(b, n, g):
        x, gamma, beta = n.inputs
        k = {"groups": groups_of(n), "eps": n.attr("eps")}
        return (b.groupnorm_grad_input(g, x, gamma, **k), b.groupnorm_grad_gamma(g, x, **k),
                b.sum(g, axis=bn_axes(n.type.rank)))
    return rule


def _gn_shape(ins, attrs):
    c = _channels(ins, "groupnorm")
    _eps(attrs, "groupnorm")
    if attrs["groups"] <= 0 or c % attrs["groups"]:
        raise ShapeError(f"groupnorm: groups={attrs['groups']} must divide the {c} channels", code="E0312",
                         hint="groupnorm(groups=G): G must divide C = x.shape[1]")
    _fits(ins, c, "groupnorm")
    return ins[0]


def _norm_shape(what, ranks):
    def rule(ins, attrs):
        c = _channels(ins, what, ranks)
        _eps(attrs, what)
        _fits(ins, c, what)
        return ins[0]
    return rule


_EPS = Attr("eps", "float", 1e-5)
_norm_flops = lambda ins, out, a: 7 * out.numel()
_SAMPLES = lambda shape: (Sample((_f64(*shape), _f64(shape[1]), _f64(shape[1]))),)

register(OpDef(
    "groupnorm", "norm", ("x",), (Attr("groups", "int", 32), _EPS), params=_AFFINE("groupnorm"),
    shape=_gn_shape,
    formula="y = gamma[c] * (x - mean) / sqrt(var + eps) + beta[c]; mean/var per example over the C/G "
            "channels of c's group and all remaining axes",
    flops=_norm_flops, reference=_gn_ref, grad=_gn_grad(lambda n: n.attr("groups")),
    samples=(Sample((_f64(2, 4, 3, 2), _f64(4), _f64(4)), {"groups": 2}),)))

register(OpDef(
    "layernorm", "norm", ("x",), (_EPS,), params=_AFFINE("layernorm"), shape=_norm_shape("layernorm", (2, 3, 4, 5)),
    formula="y = gamma[c] * (x - mean) / sqrt(var + eps) + beta[c]; mean/var per example over all axes "
            "but 0 (groupnorm with 1 group); gamma, beta per channel c = axis 1",
    flops=_norm_flops, reference=lambda x, gamma, beta, eps: _gn_ref(x, gamma, beta, 1, eps),
    grad=_gn_grad(lambda n: 1), samples=_SAMPLES((3, 5)) + _SAMPLES((2, 3, 2, 2))))

register(OpDef(
    "instancenorm", "norm", ("x",), (_EPS,), params=_AFFINE("instancenorm"),
    shape=_norm_shape("instancenorm", (3, 4, 5)),
    formula="y = gamma[c] * (x - mean[n, c]) / sqrt(var[n, c] + eps) + beta[c]; mean/var over H, W "
            "(groupnorm with groups = C)",
    flops=_norm_flops, reference=lambda x, gamma, beta, eps: _gn_ref(x, gamma, beta, x.shape[1], eps),
    grad=_gn_grad(lambda n: n.type.shape[1]), samples=_SAMPLES((2, 3, 2, 3))))

_GN_ATTRS = (Attr("groups", "int"), _EPS)

register(OpDef(
    "groupnorm_grad_input", "derivative", ("g", "x", "gamma"), _GN_ATTRS, shape=lambda ins, attrs: ins[1],
    formula="dx = (d - mean(d) - xhat * mean(d * xhat)) / sigma per example and group, d = g * gamma[c]",
    flops=lambda ins, out, a: 8 * out.numel(), reference=_gn_grad_input_ref,
    samples=(Sample((_f64(2, 4, 3), _f64(2, 4, 3), _f64(4)), {"groups": 2}),)))

register(OpDef(
    "groupnorm_grad_gamma", "derivative", ("g", "x"), _GN_ATTRS,
    shape=lambda ins, attrs: TensorType(ins[1].dtype, (ins[1].shape[1],)),
    formula="sum_{n, h, w} g * xhat", flops=lambda ins, out, a: 6 * ins[0].numel(), reference=_gn_grad_gamma_ref,
    samples=(Sample((_f64(2, 4, 3), _f64(2, 4, 3)), {"groups": 2}),)))
