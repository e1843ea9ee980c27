"""Normalisation layers: batchnorm, layernorm, groupnorm, instancenorm.

batchnorm (Ioffe & Szegedy 2015) normalises each channel (axis 1) over the batch
(and the spatial axes for images). Its node's inputs are (x, gamma, beta, mean,
var): in the typed and inference graphs mean/var are the running statistics; the
training-mode lowering substitutes the batch statistics and adds the running
update running = (1 - momentum) * running + momentum * batch (PyTorch's
convention; the running variance uses the unbiased batch variance).
"""
from __future__ import annotations

import numpy as np

from dslc.ir.graph import Init
from dslc.ops.registry import Attr, OpDef, ParamSlot, ShapeError, expect_float, expect_rank, expect_static, register


def _channels(ins, what) -> int:
    x = ins[0]
    expect_float(x, what)
    expect_rank(x, (2, 3, 4), what)
    return expect_static(x.shape[1], f"{what} channels")


def _bn_shape(ins, attrs):
    c = _channels(ins, "batchnorm")
    if not 0.0 <= attrs["momentum"] <= 1.0 or attrs["eps"] <= 0:
        raise ShapeError("batchnorm: momentum must be in [0, 1] and eps positive", code="E0310")
    for t in ins[1:]:
        if t.shape != (c,):
            raise ShapeError(f"batchnorm: statistic {t.show()} does not fit {c} channels")
    return ins[0]


def bn_axes(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def per_channel(v, ndim: int):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _bn_ref(x, gamma, beta, mean, var, momentum, eps):
    inv = 1.0 / np.sqrt(var + eps)
    return ((x - per_channel(mean, x.ndim)) * per_channel(inv * gamma, x.ndim) + per_channel(beta, x.ndim)).astype(x.dtype)


_C = lambda ins, a: (_channels(ins, "batchnorm"),)

register(OpDef(
    "batchnorm", "norm", ("x",), (Attr("momentum", "float", 0.1), Attr("eps", "float", 1e-5)),
    params=(ParamSlot("gamma", "scale", _C, Init("ones")), ParamSlot("beta", "shift", _C, Init("zeros")),
            ParamSlot("running_mean", "state", _C, Init("zeros")), ParamSlot("running_var", "state", _C, Init("ones"))),
    shape=_bn_shape,
    formula="y = gamma[c] * (x - mean[c]) / sqrt(var[c] + eps) + beta[c]; mean/var over N (and H, W)",
    flops=lambda ins, out, a: 4 * out.numel(), reference=_bn_ref))
