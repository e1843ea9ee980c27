"""Optimizer update ops: the arithmetic of one training step as ordinary graph nodes.

The training-step pass (dslc/passes/train_step.py) writes each update rule of the
CS231n notes with these ops, so the step can be printed, verified and compiled
like the forward. Each op computes ONE new value (a parameter or one optimizer
state); the learning rate `lr` and the step count `step` are scalar graph inputs,
read at run time, so a schedule never recompiles and Adam's bias correction
1 - beta^t is computed from the actual step, never baked in.

Their inputs are values, not things to differentiate: category "optimizer", no
gradient rules.
"""
from __future__ import annotations

import numpy as np

from dslc.ir.types import TensorType
from dslc.ops.registry import Attr, OpDef, Sample, Scalar, ShapeError, expect_float, register


def _update_shape(what: str, tensors: int):
    """The first `tensors` inputs share one shape (the parameter's); the rest are scalars."""
    def rule(ins, attrs):
        for t in ins:
            expect_float(t, what)
        if len({t.dtype for t in ins}) > 1:
            raise ShapeError(f"{what}: mixed dtypes {', '.join(t.show() for t in ins)}", code="E0305")
        for t in ins[1:tensors]:
            if t.shape != ins[0].shape:
                raise ShapeError(f"{what}: {t.show()} does not match the parameter {ins[0].show()}")
        for t in ins[tensors:]:
            if t.rank:
                raise ShapeError(f"{what}: learning rate and step must be scalars, got {t.show()}")
        return ins[0]
    return rule


def _samples(tensors: int, scalars: int, attrs: dict | None = None, domain: str = "any"):
    w, s = TensorType("f64", (3, 4)), TensorType("f64", ())
    return (Sample((w,) * tensors + (s,) * scalars, attrs or {}, domain),)


def _optimizer_op(name, inputs, tensors, formula, fn, flops, scalar: Scalar, attrs=(), sample_attrs=None,
                  domain="any"):
    return register(OpDef(
        name, "optimizer", inputs, attrs, shape=_update_shape(name, tensors), formula=formula,
        flops=lambda ins, out, a: flops * out.numel(),
        reference=lambda *xs, **a: np.asarray(fn(*xs, **a), dtype=xs[0].dtype),
        samples=_samples(tensors, len(inputs) - tensors, sample_attrs, domain), scalar=scalar))


_optimizer_op("sgd_step", ("w", "g", "lr"), 2, "w - lr * g",
              lambda w, g, lr: w - lr * g, 2, Scalar.both("{0} - {2} * {1}"))

# CS231n's momentum keeps a velocity in parameter units: v = mu v - lr g; w += v.
_optimizer_op("momentum_velocity", ("v", "g", "lr"), 2, "momentum * v - lr * g",
              lambda v, g, lr, momentum: momentum * v - lr * g, 3, Scalar.both("{momentum} * {0} - {2} * {1}"),
              attrs=(Attr("momentum", "float", 0.9),))

# The Nesterov look-ahead rewritten on the stored parameter (CS231n):
# w += -mu v_prev + (1 + mu) v.
_optimizer_op("nesterov_step", ("w", "v_prev", "v"), 3, "w - momentum * v_prev + (1 + momentum) * v",
              lambda w, v_prev, v, momentum: w - momentum * v_prev + (1 + momentum) * v, 4,
              Scalar.both("{0} - {momentum} * {1} + (1.0 + {momentum}) * {2}"),
              attrs=(Attr("momentum", "float", 0.9),))

_optimizer_op("accumulate_square", ("cache", "g"), 2, "cache + g^2  (adagrad)",
              lambda c, g: c + g * g, 2, Scalar.both("{0} + {1} * {1}"))


def _moving_average(attrs) -> str:
    return ("{decay} * {0} + (1.0 - {decay}) * ({1} * {1})" if attrs["square"]
            else "{decay} * {0} + (1.0 - {decay}) * {1}")

# One op for RMSProp's cache and both Adam moments: they differ only in decay and
# whether the gradient is squared.
_optimizer_op("moving_average", ("m", "x"), 2, "decay * m + (1 - decay) * (x^2 if square else x)",
              lambda m, x, decay, square: decay * m + (1 - decay) * (x * x if square else x), 4,
              Scalar(_moving_average, _moving_average),
              attrs=(Attr("decay", "float", 0.99), Attr("square", "bool", False)),
              sample_attrs={"decay": 0.9, "square": True})

_optimizer_op("adaptive_step", ("w", "g", "cache", "lr"), 3, "w - lr * g / (sqrt(cache) + eps)  (adagrad, rmsprop)",
              lambda w, g, c, lr, eps: w - lr * g / (np.sqrt(c) + eps), 5,
              Scalar("{0} - {3} * {1} / (math.sqrt({2}) + {eps})", "{0} - {3} * {1} / (sqrt({2}) + {eps})"),
              attrs=(Attr("eps", "float", 1e-8),), domain="positive")


def _adam_ref(w, m, v, lr, step, beta1, beta2, eps, weight_decay):
    mhat = m / (1 - beta1 ** step)
    vhat = v / (1 - beta2 ** step)
    return w - lr * (mhat / (np.sqrt(vhat) + eps) + weight_decay * w)


# weight_decay here is AdamW's decoupled decay (Loshchilov & Hutter): it shrinks w
# directly instead of entering the moments; 0 gives plain Adam.
_optimizer_op("adam_step", ("w", "m", "v", "lr", "step"), 3,
              "w - lr * (mhat / (sqrt(vhat) + eps) + weight_decay * w),  "
              "mhat = m / (1 - beta1^step), vhat = v / (1 - beta2^step)",
              _adam_ref, 12,
              Scalar("{0} - {3} * ({1} * (1.0 / (1.0 - {beta1} ** {4})) / (math.sqrt({2} * (1.0 / (1.0 - {beta2} ** {4})))"
                     " + {eps}) + {weight_decay} * {0})",
                     "{0} - {3} * ({1} * (1.0 / (1.0 - pow({beta1}, {4}))) / (sqrt({2} * (1.0 / (1.0 - pow({beta2}, {4}))))"
                     " + {eps}) + {weight_decay} * {0})"),
              attrs=(Attr("beta1", "float", 0.9), Attr("beta2", "float", 0.999), Attr("eps", "float", 1e-8),
                     Attr("weight_decay", "float", 0.0)),
              sample_attrs={"weight_decay": 0.01}, domain="positive")
