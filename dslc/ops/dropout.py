"""Stochastic regularisers: dropout, dropconnect, stochastic depth.

All three are *inverted*: in training, the kept values are scaled by 1/(1-p) so
that the expectation is unchanged, and inference is the deterministic layer
(identity, or a plain linear layer for dropconnect) with no rescaling. So the
`reference` is inference semantics, and each op's `train` hook lowers the node to
a multiplication by a `random` source node (dist bernoulli, p = keep probability,
scale = 1/keep) that the executor draws afresh every step:

    train(b, node) -> (value_name, [])     # no running state
"""
from __future__ import annotations

from typing import Any

from dslc.ir.graph import Init
from dslc.ir.types import TensorType
from dslc.ops import registry
from dslc.ops.registry import (Attr, OpDef, ParamSlot, Sample, ShapeError, expect_float, expect_rank,
                               expect_static, register)


def _check_p(attrs, what: str) -> None:
    if not 0.0 <= attrs["p"] < 1.0:
        raise ShapeError(f"{what}: p is the drop probability and must be in [0, 1), got {attrs['p']}",
                         code="E0310")


def _mask(b, node, type_: TensorType) -> str:
    """A fresh `random` source named after the layer: scale 1/keep with probability keep, else 0."""
    keep = 1.0 - node.attr("p")
    gb = b._b  # the GraphBuilder under the GradBuilder: sources are appended there
    return gb.source(gb.unique(node.name + ".mask"), "random", type_,
                     {"dist": "bernoulli", "p": keep, "scale": 1.0 / keep}, node.span)


def _same(what: str, ranks=None):
    def rule(ins, attrs):
        expect_float(ins[0], what)
        if ranks:
            expect_rank(ins[0], ranks, what)
        _check_p(attrs, what)
        return ins[0]
    return rule


_f64 = lambda *shape: TensorType("f64", shape)
_identity: dict[str, Any] = dict(flops=lambda ins, out, a: out.numel(), reference=lambda x, p: x, grad=lambda b, n, g: (g,))


# ---- dropout (Srivastava et al. 2014): each element independently ---------------------

def _dropout_train(b, node):
    x = node.inputs[0]
    if node.attr("p") == 0.0:
        return x, []
    return b.named(node.name, "mul", x, _mask(b, node, b.type(x)), span=node.span), []


register(OpDef(
    "dropout", "regulariser_layer", ("x",), (Attr("p", "float", 0.5, doc="drop probability"),),
    shape=_same("dropout"), train=_dropout_train,
    formula="training: x * m, m = 1/(1-p) with probability 1-p else 0, per element; inference: x",
    samples=(Sample((_f64(3, 4),)), Sample((_f64(2, 3, 2, 2),), {"p": 0.2})), **_identity))


# ---- stochastic depth (Huang et al. 2016): a whole residual branch per example ---------

def _stochastic_depth_train(b, node):
    x = node.inputs[0]
    if node.attr("p") == 0.0:
        return x, []
    t = b.type(x)
    mask = _mask(b, node, TensorType(t.dtype, t.shape[:1] + (1,) * (t.rank - 1)))
    return b.named(node.name, "mul", x, mask, span=node.span), []


register(OpDef(
    "stochastic_depth", "regulariser_layer", ("x",), (Attr("p", "float", 0.2, doc="drop probability"),),
    shape=_same("stochastic_depth", (2, 3, 4, 5)), train=_stochastic_depth_train,
    formula="training: x * m[n], m[n] = 1/(1-p) with probability 1-p else 0, one draw per example "
            "(mask [N, 1, 1, 1]); inference: x.  Used on a residual branch: relu(x + (y |> stochastic_depth))",
    samples=(Sample((_f64(3, 2, 2, 2),)),), **_identity))


# ---- dropconnect (Wan et al. 2013): a linear layer whose weights are dropped ----------

def _in_features(ins, attrs) -> int:
    x = ins[0]
    expect_float(x, "dropconnect")
    expect_rank(x, 2, "dropconnect", hint="insert flatten" if x.rank > 2 else None)
    _check_p(attrs, "dropconnect")
    if attrs["out"] <= 0:
        raise ShapeError(f"dropconnect: out must be positive, got {attrs['out']}", code="E0310")
    return expect_static(x.shape[1], "dropconnect input features")


def _dropconnect_shape(ins, attrs):
    x, d_in = ins[0], _in_features(ins, attrs)
    if len(ins) > 1 and ins[1].shape != (d_in, attrs["out"]):
        raise ShapeError(f"dropconnect: weight {ins[1].show()} does not fit ({d_in}, {attrs['out']})")
    return TensorType(x.dtype, (x.shape[0], attrs["out"]))


def _dropconnect_train(b, node):
    x, w, *bias = node.inputs
    linear = {k: node.attr(k) for k in ("out", "bias", "init", "bias_init")}
    if node.attr("p") > 0.0:
        w = b.mul(w, _mask(b, node, b.type(w)))
    return b.named(node.name, "linear", x, w, *bias, span=node.span, **linear), []


def _linear_ref(x, w, b=None, **attrs):
    return registry.get("linear").reference(x, w, b)


register(OpDef(
    "dropconnect", "layer", ("x",),
    (Attr("out", "int", doc="output features"), Attr("p", "float", 0.5, doc="drop probability of each weight"),
     Attr("bias", "bool", True), Attr("init", "init", Init("kaiming")), Attr("bias_init", "init", Init("zeros"))),
    params=(ParamSlot("weight", "weight", lambda ins, a: (_in_features(ins, a), a["out"]), "init"),
            ParamSlot("bias", "bias", lambda ins, a: (a["out"],), "bias_init", present=lambda a: a["bias"])),
    shape=_dropconnect_shape, train=_dropconnect_train,
    formula="training: y = x @ (W * M) + b, M[i, j] = 1/(1-p) with probability 1-p else 0, one mask per "
            "step shared by the batch; inference: y = x @ W + b  (W: (in, out); the bias is never dropped)",
    flops=lambda ins, out, a: 2 * out.numel() * _in_features(ins, a) + (out.numel() if a["bias"] else 0),
    reference=_linear_ref, grad=lambda b, n, g: registry.get("linear").grad(b, n, g),
    samples=(Sample((_f64(3, 4), _f64(4, 5), _f64(5)), {"out": 5}),)))
