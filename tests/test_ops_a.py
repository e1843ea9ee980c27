"""Ops of shape.py, reduce.py, elementwise.py, math_ops.py, index.py, linalg.py, image.py, loss.py
and regression.py: shape rules, NumPy references against PyTorch, and gradient rules against
central differences.

Gradients are checked in float64 with h = 1e-6 on graphs built by GraphBuilder and
differentiated by the autodiff pass; the error measure is
max |analytic - numeric| / max |numeric| (relative to the largest gradient entry),
required below 1e-6. References are compared with PyTorch (rtol 1e-5 in float32,
1e-10 in float64) and must keep the input's dtype; PyTorch is an optional oracle, and
without it only those comparisons are skipped. Graphs run on the reference executor.
"""
from __future__ import annotations

import numpy as np
import pytest

import dslc
from dslc import reference
from dslc.diagnostics import CompileError
from dslc.ir.builder import GraphBuilder, complete_attrs
from dslc.ir.graph import Output
from dslc.ir.types import NUMPY_DTYPE, Sym, TensorType
from dslc.ops import registry
from dslc.ops.registry import ShapeError
from dslc.passes.autodiff import differentiate

try:
    import torch
    F = torch.nn.functional
except ImportError:  # the optional oracle: only the tests that compare with it need it
    torch = F = None
needs_torch = pytest.mark.skipif(torch is None, reason="compares with PyTorch, which is not installed")

MODULES = {f"dslc.ops.{m}" for m in ("shape", "reduce", "elementwise", "math_ops", "index", "linalg", "image", "loss",
                                      "regression")}
OPS = sorted(n for n, op in registry.all_ops().items() if op.shape.__module__ in MODULES)
N = Sym.of("N")


def T(dtype, *shape):
    return TensorType(dtype, shape)


def infer(op, *types, **attrs):
    opdef = registry.get(op)
    return opdef.shape(list(types), dict(complete_attrs(opdef, attrs)))


# ---- registry completeness --------------------------------------------------------------

@pytest.mark.parametrize("name", OPS)
def test_every_op_is_complete(name):
    op = registry.get(name)
    assert op.formula and op.flops and op.reference and op.samples
    assert (op.grad is None) == (op.category in ("derivative", "index"))  # index ops: integer in or out


def test_the_new_ops_exist():
    for name in ("reshape", "transpose", "concat", "pad", "slice", "zeros_like", "softmax", "log_softmax",
                 "maxout", "svm", "mse", "l1_loss", "bce_with_logits"):
        assert name in OPS


# ---- shape rules: good inputs ----------------------------------------------------------

GOOD = [
    ("reshape", [T("f32", N, 1, 28, 28)], {"shape": (-1, 784)}, T("f32", N, 784)),
    ("reshape", [T("f32", N, 784)], {"shape": (-1, 392)}, T("f32", Sym(2, ("N",)), 392)),
    ("reshape", [T("f32", N, 784)], {"shape": (-1, 1, 28, 28)}, T("f32", N, 1, 28, 28)),
    ("reshape", [T("i64", 6, 2)], {"shape": (3, 4)}, T("i64", 3, 4)),
    ("flatten", [T("f32", N, 64, 7, 7)], {}, T("f32", N, 3136)),
    ("flatten", [T("f32", N, 3, 4, 5)], {"start": -2}, T("f32", N, 3, 20)),
    ("transpose", [T("f32", N, 3, 5)], {"perm": (0, 2, 1)}, T("f32", N, 5, 3)),
    ("transpose", [T("f32", N, 3, 5)], {}, T("f32", 5, 3, N)),
    ("transpose", [T("f32", N, 3, 5)], {"perm": (-1, 0, 1)}, T("f32", 5, N, 3)),
    ("concat", [T("f32", N, 3, 8), T("f32", N, 5, 8)], {}, T("f32", N, 8, 8)),
    ("concat", [T("f32", N, 2), T("f32", N, 1), T("f32", N, 4)], {"axis": -1}, T("f32", N, 7)),
    ("pad", [T("f32", N, 16, 8, 8)], {"pads": (0, 0, 8, 8, 0, 0, 0, 0)}, T("f32", N, 32, 8, 8)),
    ("pad", [T("f32", 3, 4)], {"pads": (1, 2, 0, 3), "value": -1.0}, T("f32", 6, 7)),
    ("slice", [T("f32", N, 16, 32, 32)], {"axis": 2, "step": 2}, T("f32", N, 16, 16, 32)),
    ("slice", [T("f32", N, 16, 31, 31)], {"axis": -1, "step": 2}, T("f32", N, 16, 31, 16)),
    ("slice", [T("f32", N, 10)], {"axis": 1, "start": -5, "stop": 100}, T("f32", N, 5)),
    ("slice", [T("f32", N, 7)], {"axis": 1, "start": 1, "stop": -1, "step": 3}, T("f32", N, 2)),
    ("softmax", [T("f32", N, 10)], {}, T("f32", N, 10)),
    ("log_softmax", [T("f64", N, 3, 4)], {"axis": 1}, T("f64", N, 3, 4)),
    ("maxout", [T("f32", N, 12)], {"k": 3}, T("f32", N, 4)),
    ("maxout", [T("f32", N, 8, 5, 5)], {"k": 2}, T("f32", N, 4, 5, 5)),
    ("prelu", [T("f32", N, 3, 4, 4), T("f32", 3)], {}, T("f32", N, 3, 4, 4)),
    ("add", [T("f32", N, 10), T("f32", 10)], {}, T("f32", N, 10)),
    ("mul", [T("f32", N, 1, 3), T("f32", 4, 1)], {}, T("f32", N, 4, 3)),
    ("sum", [T("f32", N, 3, 4)], {"axis": (1,), "keepdims": True}, T("f32", N, 1, 4)),
    ("mean", [T("f32", N, 3, 4)], {}, T("f32")),
    ("matmul", [T("f32", N, 4), T("f32", 4, 5)], {}, T("f32", N, 5)),
    ("matmul", [T("f32", 4, N), T("f32", 5, 4)], {"transpose_a": True, "transpose_b": True}, T("f32", N, 5)),
    ("linear", [T("f32", N, 4), T("f32", 4, 5), T("f32", 5)], {"out": 5}, T("f32", N, 5)),
    ("cross_entropy", [T("f32", N, 10), T("i64", N)], {}, T("f32")),
    ("svm", [T("f64", N, 10), T("i32", N)], {"margin": 2.0}, T("f64")),
    ("accuracy", [T("f32", N, 10), T("i64", N)], {}, T("f32")),
    ("mse", [T("f32", N, 3), T("f32", N, 3)], {}, T("f32")),
    ("l1_loss", [T("f64", N, 3, 2), T("f64", N, 3, 2)], {}, T("f64")),
    ("bce_with_logits", [T("f32", N, 1), T("f32", N, 1)], {}, T("f32")),
    ("l2", [T("f32", 4, 5), T("f32", 5, 2)], {}, T("f32")),
]


@pytest.mark.parametrize("op,ins,attrs,want", GOOD, ids=[g[0] for g in GOOD])
def test_shape_rule(op, ins, attrs, want):
    assert infer(op, *ins, **attrs) == want


# ---- shape rules: every mistake, with its message --------------------------------------

BAD = [
    ("reshape", [T("f32", N, 784)], {"shape": (-1, -1)}, "at most one -1", None),
    ("reshape", [T("f32", 6, 4)], {"shape": (5, 5)}, r"cannot reshape f32\[6, 4\] \(24 elements\) to \[5, 5\]", None),
    ("reshape", [T("f32", N, 784)], {"shape": (28, 28)}, "cannot reshape", "write -1 for the batch"),
    ("reshape", [T("f32", N, 10)], {"shape": (-1, 3)}, r"10\*N is not a multiple of 3", None),
    ("flatten", [T("f32", N, 3)], {"start": 2}, "axis 2 is out of range for rank 2", None),
    ("transpose", [T("f32", N, 3, 5)], {"perm": (0, 1)}, "names 2 axes, the input has 3", None),
    ("transpose", [T("f32", N, 3, 5)], {"perm": (0, 1, 1)}, "is not a permutation", None),
    ("transpose", [T("f32", N, 3, 5)], {"perm": (0, 1, 3)}, "axis 3 is out of range", None),
    ("concat", [T("f32", N, 3), T("f64", N, 3)], {}, "dtypes differ", None),
    ("concat", [T("f32", N, 3, 4), T("f32", N, 3, 5)], {}, "differ outside axis 1", "same shape except"),
    ("concat", [T("f32", N, 3), T("f32", N, 3, 1)], {}, "differ outside axis 1", None),
    ("concat", [T("f32", N, 3), T("f32", N, 3)], {"axis": 0}, "must be a fixed size", None),
    ("concat", [T("f32", N, 3), T("f32", N, 3)], {"axis": 2}, "out of range", None),
    ("pad", [T("f32", N, 16, 8, 8)], {"pads": (0, 0, 8, 8)}, "expected 8 values", "0, 0, 1, 1, 1, 1, 1, 1"),
    ("pad", [T("f32", N, 16)], {"pads": 2}, "expected 4 values", None),
    ("pad", [T("f32", N, 16)], {"pads": (1, 0, 0, 0)}, "cannot pad axis 0 of f32\\[N, 16\\]: its size N", None),
    ("slice", [T("f32", N, 8)], {"axis": 1, "step": 0}, "step must be positive", None),
    ("slice", [T("f32", N, 8)], {"axis": 1, "step": -1}, "step must be positive", None),
    ("slice", [T("f32", N, 8)], {"axis": 0, "stop": 2}, "must be a fixed size", None),
    ("slice", [T("f32", N, 8)], {"axis": 1, "start": 5, "stop": 5}, "selects nothing", None),
    ("slice", [T("f32", N, 8)], {"axis": 2}, "out of range", None),
    ("softmax", [T("i64", N, 10)], {}, "floating-point", None),
    ("softmax", [T("f32")], {}, "out of range for rank 0", None),
    ("log_softmax", [T("f32", N, 10)], {"axis": 2}, "out of range", None),
    ("maxout", [T("f32", N, 10)], {"k": 3}, "k=3 must divide the 10 channels", "C / k"),
    ("maxout", [T("f32", N, 10)], {"k": 0}, "k=0 must divide", None),
    ("maxout", [T("f32", N)], {"k": 2}, "expects rank 2", "axis 1"),
    ("maxout", [T("f32", 3, N)], {"k": 2}, "must be a fixed size", None),
    ("prelu", [T("f32", N)], {}, "expects rank", "one slope per channel"),
    ("prelu", [T("f32", N, 3), T("f32", 4)], {}, "does not fit", None),
    ("relu", [T("i32", N, 3)], {}, "floating-point", None),
    ("add", [T("f32", N, 3), T("f32", N, 4)], {}, "do not broadcast", None),
    ("add", [T("f32", N, 3), T("f64", N, 3)], {}, "dtypes differ", None),
    ("div", [T("i64", N, 3), T("i64")], {}, r"'/' divides floating-point tensors, got i64\[N, 3\]", "// is the floor"),
    ("softplus", [T("f32", N, 3)], {"beta": 0.0}, "beta must be positive, got 0", "sharpness"),
    ("huber", [T("f32", N, 3), T("f32", N, 3)], {"delta": 0.0}, "delta must be positive, got 0", "delta > 0"),
    ("huber", [T("f32", N, 3), T("f32", N, 3)], {"delta": -1.0}, "delta must be positive, got -1", None),
    ("sum", [T("f32", N, 3)], {"axis": (1, -1)}, "repeats an axis", None),
    ("mean", [T("f32", N, 3)], {"axis": (2,)}, "out of range", None),
    ("matmul", [T("f32", N, 3, 4), T("f32", 4, 5)], {}, "expects rank 2", "flatten it first"),
    ("matmul", [T("f32", N, 3), T("f32", 4, 5)], {}, "inner dimensions differ", None),
    ("matmul", [T("f32", N, 4), T("f64", 4, 5)], {}, "dtypes differ", None),
    ("linear", [T("f32", N, 64, 7, 7)], {"out": 10}, "expects rank 2", "insert flatten"),
    ("linear", [T("f32", 3, N)], {"out": 10}, "fixed number of input features", None),
    ("linear", [T("f32", N, 3)], {"out": 0}, "out must be positive", None),
    ("linear", [T("f32", N, 3), T("f32", 4, 10)], {"out": 10}, "does not fit", None),
    ("cross_entropy", [T("f32", N, 10), T("f32", N)], {}, "labels must be integers", None),
    ("cross_entropy", [T("f32", N, 10, 2), T("i64", N)], {}, "expects rank 2", "flatten first"),
    ("svm", [T("f32", N, 10), T("i64", N, 1)], {}, r"labels i64\[N, 1\] do not match .* expected \[N\]", None),
    ("accuracy", [T("i64", N, 10), T("i64", N)], {}, "floating-point", None),
    ("mse", [T("f32", N, 3), T("f32", N, 4)], {}, "differ in shape", "exactly the shape"),
    ("l1_loss", [T("f32", N, 3), T("f64", N, 3)], {}, "dtypes differ", None),
    ("bce_with_logits", [T("f32", N, 3), T("i64", N, 3)], {}, "floating-point", None),
    ("l1", [T("f32", 3, 4), T("f64", 3)], {}, "mixed dtypes", None),
]


@pytest.mark.parametrize("op,ins,attrs,message,hint", BAD, ids=[b[0] for b in BAD])
def test_shape_error(op, ins, attrs, message, hint):
    with pytest.raises(ShapeError, match=message) as err:
        infer(op, *ins, **attrs)
    if hint is not None:
        assert hint in err.value.hint


# ---- inputs drawn from a sample ----------------------------------------------------------

def draw(types, domain, dtype, rng):
    """Arrays for `types` (float dtypes replaced by `dtype`); labels in [0, last dim of input 0)."""
    out = []
    for t in types:
        shape = t.bind({"N": 3})
        if not t.is_float:
            out.append(rng.integers(0, types[0].bind({"N": 3})[-1], size=shape).astype(NUMPY_DTYPE[t.dtype]))
            continue
        x = rng.standard_normal(shape)
        if domain == "positive":
            x = rng.uniform(0.5, 2.0, shape)
        elif domain == "probability":
            x = rng.uniform(0.05, 0.95, shape)
        elif domain == "kinks":  # |x| >= 0.1: finite differences never cross a kink
            x = np.where(x >= 0, 1, -1) * (0.1 + np.abs(x))
        out.append(np.asarray(x, dtype=dtype))
    return out


def cases(with_grad: bool = False):
    for name in OPS:
        op = registry.get(name)
        if with_grad and op.grad is None:
            continue
        for k, s in enumerate(op.samples):
            yield pytest.param(name, s, id=f"{name}-{k}")


# ---- references against PyTorch ---------------------------------------------------------

def _t(a):
    return torch.from_numpy(np.array(a))  # a copy; ascontiguousarray would make 0-d arrays 1-d


def _vjp(f, x, g, *rest):
    """The cotangent of x for output cotangent g (torch autograd): the oracle of *_grad ops."""
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(f(x, *rest), x, g)[0]


def _deriv(f, x):
    return _vjp(f, x, torch.ones_like(x))


def _broadcast(x, other):
    """x expanded to the broadcast shape of x and other: one derivative per output element."""
    return torch.broadcast_to(x, torch.broadcast_shapes(x.shape, other.shape))


def _axes(x, axis):
    return tuple(range(x.ndim)) if axis is None else tuple(axis)


def _maxout(x, k):
    # Group g is channels g*k .. g*k + k - 1, so x[:, j::k] is member j of every group.
    return torch.stack([x[:, j::k] for j in range(k)]).amax(0)


def _slice(x, axis, start, stop, step):
    idx = list(range(x.shape[axis]))[start:stop:step]
    return torch.index_select(x, axis, torch.tensor(idx))


def _reduce(x, axis, keepdims, mean=False):
    return (torch.mean if mean else torch.sum)(x, dim=_axes(x, axis), keepdim=keepdims)


def _pad(x, pads, value):
    pairs = list(zip(pads[0::2], pads[1::2]))
    return F.pad(x, [p for pair in reversed(pairs) for p in pair], value=value)  # torch starts at the last axis


def _linear(x, w, b=None, **_):
    return F.linear(x, w.T, b)


def _extremum(x, axis, keepdims, mode="max"):
    fn = torch.amax if mode == "max" else torch.amin
    return fn(x, dim=_axes(x, None if axis is None else (axis,)), keepdim=keepdims)


def _argmax(x, axis, keepdims):
    if axis is None:
        return torch.argmax(x).reshape((1,) * x.ndim if keepdims else ())
    return torch.argmax(x, dim=axis, keepdim=keepdims)


def _gather(x, index, axis):
    return torch.gather(x, axis, index.unsqueeze(axis)).squeeze(axis)


def _bmm(x, y, transpose_a, transpose_b):
    return torch.bmm(x.transpose(1, 2) if transpose_a else x, y.transpose(1, 2) if transpose_b else y)


def _upsample(x, scale, mode):
    scale = (scale, scale) if isinstance(scale, int) else tuple(scale)
    return F.interpolate(x, scale_factor=scale, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))


def _lrn(x, size, alpha, beta, k):
    # torch takes [N, C, ...] of rank 3 at least: a [N, C] input gets a spatial axis of 1
    flat = x.ndim == 2
    y = F.local_response_norm(x[..., None] if flat else x, size, alpha, beta, k)
    return y[..., 0] if flat else y


def _r2(p, t):
    return 1 - ((p - t) ** 2).sum() / ((t - t.mean()) ** 2).sum()


def oracles() -> dict:
    """PyTorch's version of every op, by name (built when asked: PyTorch may be absent)."""
    return {
        "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y, "div": lambda x, y: x / y,
        "neg": lambda x: -x, "relu": torch.relu, "leaky_relu": lambda x, alpha: F.leaky_relu(x, alpha),
        "elu": lambda x, alpha: F.elu(x, alpha), "gelu": F.gelu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
        "step": lambda x, low: _deriv(lambda v: F.leaky_relu(v, low), x),
        "elu_deriv": lambda x, alpha: _deriv(lambda v: F.elu(v, alpha), x),
        "gelu_deriv": lambda x: _deriv(F.gelu, x),
        "sigmoid_deriv": lambda s: s - s * s, "tanh_deriv": lambda t: 1 - t ** 2,  # given the forward result
        "rsqrt": torch.rsqrt,
        "prelu": lambda x, alpha, init: F.prelu(x, alpha), "prelu_deriv": lambda x, alpha: _deriv(lambda v: F.prelu(v, alpha), x),
        "softmax": lambda x, axis: torch.softmax(x, axis), "log_softmax": lambda x, axis: torch.log_softmax(x, axis),
        "maxout": _maxout, "maxout_grad": lambda x, g, k: _vjp(_maxout, x, g, k),
        "sum": _reduce, "mean": lambda x, axis, keepdims: _reduce(x, axis, keepdims, True),
        "expand": lambda g, like, axis, keepdims, mean: _vjp(_reduce, like, g, axis, keepdims, mean),
        "matmul": lambda x, y, transpose_a, transpose_b: (x.T if transpose_a else x) @ (y.T if transpose_b else y),
        "linear": _linear,
        "cross_entropy": F.cross_entropy,
        "cross_entropy_grad": lambda x, y, g: _vjp(F.cross_entropy, x, g, y),
        # torch divides the hinge sum by the number of classes C; CS231n's svm does not.
        "svm": lambda x, y, margin: F.multi_margin_loss(x, y, margin=margin) * x.shape[1],
        "svm_grad": lambda x, y, g, margin: _vjp(lambda v: F.multi_margin_loss(v, y, margin=margin) * v.shape[1], x, g),
        "accuracy": lambda x, y: (x.argmax(1) == y).to(x.dtype).mean(),
        "mse": F.mse_loss, "l1_loss": F.l1_loss, "bce_with_logits": F.binary_cross_entropy_with_logits,
        "l1": lambda *xs: sum(x.abs().sum() for x in xs), "l2": lambda *xs: sum((x ** 2).sum() for x in xs),
        "elastic": lambda *xs, beta: sum((beta * x ** 2 + x.abs()).sum() for x in xs), "sign": torch.sign,
        "flatten": lambda x, start: torch.flatten(x, start), "reshape": lambda x, shape: x.reshape(shape),
        "transpose": lambda x, perm: x.permute(perm or tuple(reversed(range(x.ndim)))),
        "concat": lambda *xs, axis: torch.cat(xs, axis), "pad": _pad, "slice": _slice,
        "slice_grad": lambda g, like, **a: _vjp(_slice, like, g, *a.values()),
        "zeros_like": torch.zeros_like,
        # math_ops.py
        "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs,
        "clip": lambda x, min, max: torch.clamp(x, min, max),  # noqa: A006
        "clip_mask": lambda x, min, max: _deriv(lambda v: torch.clamp(v, min, max), x),  # noqa: A006
        "pow": torch.pow, "floor_div": lambda x, y: torch.div(x, y, rounding_mode="floor"),
        "pow_deriv_base": lambda x, y: _deriv(lambda v: torch.pow(v, y), _broadcast(x, y)),
        "pow_deriv_exponent": lambda x, y: _deriv(lambda v: torch.pow(x, v), _broadcast(y, x)),
        "maximum": torch.maximum, "minimum": torch.minimum,
        "greater_share": lambda x, y: (x > y).to(x.dtype) + 0.5 * (x == y).to(x.dtype),
        "softplus": lambda x, beta: F.softplus(x, beta), "selu": F.selu,
        # reduce.py, index.py, linalg.py
        "max": _extremum, "min": lambda x, axis, keepdims: _extremum(x, axis, keepdims, "min"),
        "extremum_grad": lambda x, g, axis, keepdims, mode: _vjp(_extremum, x, g, axis, keepdims, mode),
        "argmax": _argmax, "gather": _gather,
        "gather_grad": lambda g, index, like, axis: _vjp(_gather, like, g, index, axis),
        "one_hot": lambda index, classes, dtype: F.one_hot(index, classes).to(getattr(torch, NUMPY_DTYPE[dtype])),
        "stack": lambda *xs, axis: torch.stack(xs, axis), "unstack": lambda g, axis, index: torch.select(g, axis, index),
        "nll_loss": F.nll_loss, "nll_loss_grad": lambda x, y, g: _vjp(F.nll_loss, x, g, y),
        "bmm": _bmm,
        # image.py
        "upsample": _upsample, "upsample_grad": lambda g, like, scale, mode: _vjp(_upsample, like, g, scale, mode),
        "lrn": _lrn, "lrn_grad": lambda x, g, size, alpha, beta, k: _vjp(_lrn, x, g, size, alpha, beta, k),
        # regression.py
        "huber": lambda p, t, delta: F.huber_loss(p, t, delta=delta), "bce": F.binary_cross_entropy,
        "mae": F.l1_loss, "r2": _r2,
    }


@needs_torch
def test_every_op_has_an_oracle():
    assert set(oracles()) == set(OPS)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,sample", list(cases()))
def test_reference_keeps_dtype_and_follows_the_shape_rule(name, sample, dtype):
    op = registry.get(name)
    xs = draw(sample.inputs, sample.domain, dtype, np.random.default_rng(0))
    got = np.asarray(op.reference(*xs, **dict(complete_attrs(op, sample.attrs))))
    out = infer(name, *sample.inputs, **sample.attrs)
    floats = out.is_float and any(t.is_float for t in sample.inputs)  # else its type is its own (argmax, one_hot)
    assert got.dtype == (np.dtype(dtype) if floats else NUMPY_DTYPE[out.dtype]), "the reference must keep the dtype"
    assert got.shape == tuple(out.shape)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,sample", list(cases()))
def test_reference_matches_torch(name, sample, dtype):
    op = registry.get(name)
    attrs = dict(complete_attrs(op, sample.attrs))
    xs = draw(sample.inputs, sample.domain, dtype, np.random.default_rng(0))
    got = np.asarray(op.reference(*xs, **attrs))
    want = oracles()[name](*map(_t, xs), **attrs).detach().numpy()
    tol = 1e-5 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_maxout_gradient_goes_to_the_first_maximum():
    x = np.array([[2.0, 2.0, 5.0, 5.0]])  # two groups of k = 2, each a tie
    got = registry.get("maxout_grad").reference(x, np.array([[10.0, 20.0]]), k=2)
    np.testing.assert_array_equal(got, [[10.0, 0.0, 20.0, 0.0]])


def test_hinge_derivative_is_zero_on_the_margin():
    # s_1 - s_0 + 1 = 0 exactly: the margin is met, not violated, so no gradient.
    s, y = np.array([[1.0, 0.0, -5.0]]), np.array([0])
    assert registry.get("svm").reference(s, y, margin=1.0) == 0.0
    np.testing.assert_array_equal(registry.get("svm_grad").reference(s, y, np.array(1.0), margin=1.0), [[0, 0, 0]])


POW_AT_ZERO = """
model m {
    input x : f32[N, 4]
    param p : f32[4] = constant(2.0)
    h = relu(x)
    loss sum(h ** p) + sum(h ** 0) + sum(h ** 2) + sum(h ** 3)
}
"""


@needs_torch
@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_pow_gradient_at_base_zero_is_torchs(net, device):
    """At x = 0, d/dx x^0 is 0 (not 0 * 0^-1 = NaN) and d/dy x^y is 0 for y >= 0 (not 0 * ln 0
    = NaN, or 1 * -inf at y = 0): PyTorch's pow_backward rules, relu's zeros meeting a learned exponent."""
    x = np.array([[-1.0, 0.0, 2.0, -3.0]], np.float32)
    p = np.array([2.0, 0.0, 3.0, 1.5], np.float32)
    loss, grads = dslc.load(net(POW_AT_ZERO)).compile(device).grad({"p": p}, {"x": x}, wrt=["x", "p"])
    tx, tp = torch.tensor(x, requires_grad=True), torch.tensor(p, requires_grad=True)
    h = torch.relu(tx)
    want = (h ** tp).sum() + (h ** 0.0).sum() + (h ** 2.0).sum() + (h ** 3.0).sum()
    want.backward()
    assert loss == pytest.approx(want.item())
    np.testing.assert_allclose(grads["x"], tx.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(grads["p"], tp.grad.numpy(), rtol=1e-6)


@needs_torch
@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_floor_div_is_exact_for_integers_and_pythons_for_floats(net, device):
    """Integers divide exactly (2^53 + 3 is no double), flooring (-7 // 2 is -4), x // 0 is 0
    and -2^63 // -1 wraps to -2^63 as in NumPy (the compiled // gave 0); floats as Python and
    PyTorch divide: 7.0 // 0.1 is 69, though 7.0 / 0.1 is 70.0, and 2.5 // -1.0 is -3.0."""
    c = dslc.load(net("""
model m {
    input i : i64[N]
    input j : i64[N]
    input x : f64[N]
    input y : f64[N]
    output q = i // j
    output h = i // 2
    output r = x // y
}
""")).compile(device)
    i, j = [2 ** 53 + 3, -7, 7, -7, 5, 0, -2 ** 63, 9], [2, 2, -2, -2, 0, 3, -1, -1]
    x, y = [7.0, -7.0, 1.0, 7.5, 0.3, -0.0, 2.5, 0.0], [0.1, 2.0, 0.0, -2.0, 0.1, 5.0, -1.0, -1.0]
    got = c.forward({}, {"i": np.array(i), "j": np.array(j), "x": np.array(x), "y": np.array(y)})
    wrap = lambda v: (v + 2 ** 63) % 2 ** 64 - 2 ** 63  # into int64, as NumPy's // wraps
    assert got["q"].tolist() == [wrap(a // b) if b else 0 for a, b in zip(i, j)]
    assert got["h"].tolist() == [a // 2 for a in i]
    want = torch.div(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64), rounding_mode="floor")
    np.testing.assert_array_equal(got["r"], want.numpy())


def test_softmax_is_stable_for_huge_logits():
    x = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    assert np.isfinite(registry.get("softmax").reference(x, axis=-1)).all()
    assert np.isfinite(registry.get("log_softmax").reference(x, axis=-1)).all()
    assert np.isfinite(registry.get("bce_with_logits").reference(x, np.ones_like(x)))


# ---- gradients: autodiff against central differences -----------------------------------

def interpret(graph, feeds):
    """The value of every node by the reference executor, which checks each result's shape."""
    return reference.evaluate(graph, feeds, {})


def loss_graph(op, types, attrs):
    """sum(op(x...) * r) for a fixed random r (or op(x...) itself when it is a scalar)."""
    b = GraphBuilder()
    names = [b.source(f"x{k}", "input", t) for k, t in enumerate(types)]
    out = b.add(op, names, attrs)
    loss = out
    if b.type_of(out).rank:
        r = b.source("r", "input", b.type_of(out))
        loss = b.add("sum", [b.add("mul", [out, r])])
    wrt = [x for k, x in enumerate(names) if k not in registry.get(op).integer_inputs]
    return b.graph("g", [Output("loss", "loss", loss)], "typed"), wrt


def check_gradient(op, types, attrs, feeds_list, rng):
    graph, wrt = loss_graph(op, types, attrs)
    feeds = {f"x{k}": v for k, v in enumerate(feeds_list)}
    if "r" in graph:
        feeds["r"] = rng.standard_normal(graph["r"].type.bind({"N": 3}))  # draw() binds N = 3 too
    back = differentiate(graph, wrt)
    values = interpret(back, feeds)
    grads = {o.name: values[o.value] for o in back.outputs_of("grad")}
    h = 1e-6
    for name in wrt:
        x = feeds[name]
        numeric = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + h
            up = interpret(graph, feeds)[graph.loss]
            x[i] = old - h
            down = interpret(graph, feeds)[graph.loss]
            x[i] = old
            numeric[i] = (up - down) / (2 * h)
        err = np.abs(grads[name] - numeric).max() / max(np.abs(numeric).max(), 1e-12)
        assert err < 1e-6, f"{op}: d loss / d {name}: relative error {err:.2e}"


def _f64(t):
    return t.with_dtype("f64") if t.is_float else t


@pytest.mark.parametrize("name,sample", list(cases(with_grad=True)))
def test_gradient(name, sample):
    rng = np.random.default_rng(1)
    types = [_f64(t) for t in sample.inputs]
    check_gradient(name, types, sample.attrs, draw(types, sample.domain, "float64", rng), rng)


# Gradients through a symbolic batch N: counts (means) and shapes are taken at run time.
SYMBOLIC = [
    ("flatten", [T("f64", N, 2, 3)], {}),
    ("reshape", [T("f64", N, 2, 3)], {"shape": (-1, 3)}),
    ("transpose", [T("f64", N, 2, 3)], {"perm": (2, 0, 1)}),
    ("concat", [T("f64", N, 2), T("f64", N, 3)], {}),
    ("pad", [T("f64", N, 2, 3)], {"pads": (0, 0, 1, 1, 2, 0)}),
    ("slice", [T("f64", N, 5)], {"axis": 1, "start": 1, "step": 2}),
    ("softmax", [T("f64", N, 4)], {}),
    ("log_softmax", [T("f64", N, 4)], {"axis": 1}),
    ("maxout", [T("f64", N, 4)], {"k": 2}),
    ("mean", [T("f64", N, 4)], {"axis": (0,)}),
    ("linear", [T("f64", N, 3), T("f64", 3, 2), T("f64", 2)], {"out": 2}),
    ("cross_entropy", [T("f64", N, 4), T("i64", N)], {}),
    ("svm", [T("f64", N, 4), T("i64", N)], {}),
    ("mse", [T("f64", N, 3), T("f64", N, 3)], {}),
    ("l1_loss", [T("f64", N, 3), T("f64", N, 3)], {}),
    ("bce_with_logits", [T("f64", N, 3), T("f64", N, 3)], {}),
    ("huber", [T("f64", N, 3), T("f64", N, 3)], {"delta": 0.5}),
    ("max", [T("f64", N, 4)], {"axis": 1}),
    ("gather", [T("f64", N, 4), T("i64", N)], {}),
    ("nll_loss", [T("f64", N, 4), T("i64", N)], {}),
    ("stack", [T("f64", N, 2), T("f64", N, 2)], {}),
    ("bmm", [T("f64", N, 2, 3), T("f64", N, 3, 2)], {}),
    ("r2", [T("f64", N, 3), T("f64", N, 3)], {}),
]


@pytest.mark.parametrize("op,types,attrs", SYMBOLIC, ids=[s[0] for s in SYMBOLIC])
def test_gradient_with_symbolic_batch(op, types, attrs):
    rng = np.random.default_rng(2)
    check_gradient(op, types, attrs, draw(types, "kinks", "float64", rng), rng)


# ---- end to end through the language ----------------------------------------------------

MODEL = """
block shortcut_a(x, planes: int) {
    # ResNet option A: subsample rows and columns, zero-pad the new channels.
    return x |> slice(axis=2, step=2) |> slice(axis=3, step=2) |> pad([0,0, planes/4, planes/4, 0,0, 0,0])
}
model m(k: int = 2) {
    input image : f32[N, 1, 28, 28]
    input y : i64[N]
    input t : f32[N, 10]
    a = image |> reshape([-1, 784])
    b = reshape(image, [-1, 28, 28]) |> transpose([0, 2, 1]) |> flatten
    c = concat(a, b, axis=1) |> linear(12) |> maxout(k)
    s = shortcut_a(image |> conv2d(16, kernel=3, pad=same), 32)
    logits = c |> linear(10)
    output probs = softmax(logits)
    output lp = log_softmax(logits, axis=1)
    output sc = s
    loss svm(logits, y, margin=1.0) + mse(logits, t) + l1_loss(logits, t) + bce_with_logits(logits, t)
}
"""


def test_new_ops_in_the_language(net):
    g = dslc.load(net(MODEL)).graph
    show = {n.name: n.type.show() for n in g.nodes}
    assert show["reshape"] == "f32[N, 784]" and show["reshape_1"] == "f32[N, 28, 28]"
    assert show["transpose"] == "f32[N, 28, 28]" and show["concat"] == "f32[N, 1568]"
    assert show["maxout"] == "f32[N, 6]"
    assert show["shortcut_a.slice_1"] == "f32[N, 16, 14, 14]" and show["shortcut_a.pad"] == "f32[N, 32, 14, 14]"
    assert {"softmax", "log_softmax", "svm", "mse", "l1_loss", "bce_with_logits"} <= {n.op for n in g.nodes}
    assert g[g.loss].type.show() == "f32[]"


def test_language_model_gradient(net):
    """A .net model using the new ops, differentiated and checked against finite differences."""
    g = dslc.load(net("""
model m {
    input x : f64[N, 2, 3]
    input y : i64[N]
    param W : f64[6, 4] = normal()
    h = x |> transpose([0, 2, 1]) |> reshape([-1, 6])
    z = concat(h @ W, slice(h, axis=1, step=2), axis=1) |> pad([0, 0, 1, 0])
    loss svm(z, y) + mse(maxout(z, 2), log_softmax(z |> slice(axis=1, stop=4)))
}""")).graph
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((3, 2, 3)), "y": rng.integers(0, 8, 3), "W": rng.standard_normal((6, 4))}
    inputs = g.replace(nodes=[n.replace(op="input", attrs=()) if n.op == "param" else n for n in g.nodes])
    back = differentiate(inputs, ["W", "x"])
    values = interpret(back, feeds)
    for o in back.outputs_of("grad"):
        x, h = feeds[o.name], 1e-6
        numeric = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            x[i] += h
            up = interpret(inputs, feeds)[inputs.loss]
            x[i] -= 2 * h
            numeric[i] = (up - interpret(inputs, feeds)[inputs.loss]) / (2 * h)
            x[i] += h
        assert np.abs(values[o.value] - numeric).max() < 1e-6 * np.abs(numeric).max()


@pytest.mark.parametrize("body,message", [
    ("y = pad(x, [1, 1])", "pad: expected 4 values"),
    ("y = maxout(x, 3)", "k=3 must divide the 8 channels"),
    ("y = reshape(x, [3, 8])", "cannot reshape f32[N, 8]"),
    ("y = slice(x, axis=1, step=0)", "step must be positive"),
    ("y = concat(x, transpose(x), axis=1)", "differ outside axis 1"),
])
def test_mistakes_in_the_language(net, body, message):
    with pytest.raises(CompileError) as err:
        dslc.load(net(f"model m {{\n input x : f32[N, 8]\n {body}\n output y\n}}"))
    assert message in err.value.diagnostics[0].message
