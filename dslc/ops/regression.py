"""Regression losses and metrics: a prediction and a float target of the same shape.

Each loss is the mean over every element of one expression of a prediction p and its
target t (`OpDef.pointwise`), so both generators write it as one loop over the pairs,
summed in double; its gradient is elementwise, scaled by g / count, where the count is
taken from the run-time shape (`expand(g, like, mean=True)`: the batch N is symbolic).

    mse      (p - t)^2                     l1_loss  |p - t|
    huber    0.5 d^2 if |d| < delta else delta (|d| - delta / 2),  d = p - t
    bce      -(t log p + (1 - t) log(1 - p))       p a probability
    bce_with_logits   bce of sigmoid(x), computed without overflow
    mae      |p - t| (a metric)                    r2  1 - sum (p - t)^2 / sum (t - mean t)^2

Every rule gives the target's gradient too (a target may be computed, and gradient
checks cover every float input), though a target read from data is never differentiated.
"""
from __future__ import annotations

import numpy as np

from dslc.ir.types import TensorType
from dslc.ops.registry import Attr, OpDef, Sample, Scalar, ShapeError, expect_float, register


def _f32(*shape) -> TensorType:
    return TensorType("f32", shape)


def _scalar(x, like):
    return np.asarray(x, dtype=like.dtype)


def _pair_shape(what: str, first: str):
    def rule(ins, attrs):
        x, t = ins
        expect_float(x, what)
        expect_float(t, what)
        if x.dtype != t.dtype:
            raise ShapeError(f"{what}: dtypes differ, {x.show()} and {t.show()}", code="E0305")
        if x.shape != t.shape:
            raise ShapeError(f"{what}: {first} {x.show()} and target {t.show()} differ in shape", code="E0308",
                             hint="the target must have exactly the shape of the " + first)
        return TensorType(x.dtype, ())
    return rule


def _mean_of(b, g, like):
    """g / (number of elements of `like`), broadcast to its shape: the count is known at run time only."""
    return b.expand(g, like, mean=True)


def _const(b, n, value: float) -> str:
    return b.const(value, n.type.dtype)


def _mse_grad(b, n, g):
    d = b.sub(*n.inputs)
    dp = b.mul(b.mul(d, _const(b, n, 2.0)), _mean_of(b, g, d))
    return dp, b.neg(dp)


def _l1_grad(b, n, g):
    d = b.sub(*n.inputs)
    # |d| has a kink at 0: sign(0) = 0 (the subgradient of minimum norm).
    dp = b.mul(b.sign(d), _mean_of(b, g, d))
    return dp, b.neg(dp)


def _huber_grad(b, n, g):
    d = b.sub(*n.inputs)
    delta = n.attr("delta")
    # d huber / d d = clip(d, -delta, delta): continuous at |d| = delta, where both pieces agree
    dp = b.mul(b.clip(d, min=-delta, max=delta), _mean_of(b, g, d))
    return dp, b.neg(dp)


def _huber_shape(ins, attrs):
    if not attrs["delta"] > 0:  # 0 makes the loss 0, a negative delta makes it negative
        raise ShapeError(f"huber: delta must be positive, got {attrs['delta']:g}", code="E0310",
                         hint="delta is where the square turns linear (PyTorch's HuberLoss requires delta > 0)")
    return _pair_shape("huber", "prediction")(ins, attrs)


def _huber_ref(p, t, delta):
    d = np.abs(p - t)
    return _scalar(np.mean(np.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta))), p)


def _bce_ref(p, t):
    # PyTorch's BCELoss: each log is clamped at -100, so p = 0 or 1 gives a finite loss.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p, log_q = np.maximum(np.log(p), -100.0), np.maximum(np.log(1 - p), -100.0)
    return _scalar(-np.mean(t * log_p + (1 - t) * log_q), p)


def _bce_grad(b, n, g):
    p, t = n.inputs
    one, w = _const(b, n, 1.0), _mean_of(b, g, p)
    q = b.sub(one, p)
    # d/dp: (p - t) / (p (1 - p)), the denominator kept from 0 at 1e-12 as PyTorch's BCELoss does;
    # d/dt: log(1 - p) - log p, each log clamped at -100 as in the loss
    dp = b.div(b.sub(p, t), b.maximum(b.mul(p, q), _const(b, n, 1e-12)))
    floor = _const(b, n, -100.0)
    dt = b.sub(b.maximum(b.log(q), floor), b.maximum(b.log(p), floor))
    return b.mul(dp, w), b.mul(dt, w)


def _bce_logits_ref(x, t):
    # max(x, 0) - x t + log(1 + exp(-|x|)) equals -t log s - (1 - t) log(1 - s), s = sigmoid(x), without overflow.
    return _scalar(np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))), x)


def _bce_logits_grad(b, n, g):
    x, t = n.inputs
    w = _mean_of(b, g, x)
    return b.mul(b.sub(b.sigmoid(x), t), w), b.mul(b.neg(x), w)


_PAIR_SAMPLES = (Sample((_f32(3, 4), _f32(3, 4))), Sample((_f32(2, 3, 2), _f32(2, 3, 2))))
_KINKS = tuple(Sample(s.inputs, domain="kinks") for s in _PAIR_SAMPLES)
# probabilities for bce: p and t drawn in 0.05..0.95
_PROBS = (Sample((_f32(3, 4), _f32(3, 4)), domain="probability"),)


def _pair(name: str, category: str, formula: str, reference, grad, pointwise: Scalar, flops: int = 3, attrs=(),
          samples=_PAIR_SAMPLES, doc: str = "", first: str = "prediction", shape=None):
    register(OpDef(name, category, ("pred", "target"), attrs, shape=shape or _pair_shape(name, first), formula=formula,
                   flops=lambda ins, out, a: flops * ins[0].numel(), reference=reference, grad=grad,
                   samples=samples, pointwise=pointwise, doc=doc))


_pair("mse", "loss", "mean over all elements of (pred - target)^2", lambda p, t: _scalar(np.mean((p - t) ** 2), p),
      _mse_grad, Scalar.both("({0} - {1}) * ({0} - {1})"))
_pair("l1_loss", "loss", "mean over all elements of |pred - target|", lambda p, t: _scalar(np.mean(np.abs(p - t)), p),
      _l1_grad, Scalar("abs({0} - {1})", "fabs({0} - {1})"), samples=_KINKS)
_pair("huber", "loss", "mean of 0.5 d^2 if |d| < delta else delta * (|d| - delta / 2),  d = pred - target",
      _huber_ref, _huber_grad,
      Scalar("0.5 * ({0} - {1}) * ({0} - {1}) if abs({0} - {1}) < {delta} else {delta} * (abs({0} - {1}) - 0.5 * {delta})",
             "(fabs({0} - {1}) < {delta} ? 0.5 * ({0} - {1}) * ({0} - {1}) : {delta} * (fabs({0} - {1}) - 0.5 * {delta}))"),
      flops=5, attrs=(Attr("delta", "float", 1.0, doc="where the square turns linear (positive)"),),
      samples=tuple(Sample(s.inputs, {"delta": 0.5}, "kinks") for s in _PAIR_SAMPLES), shape=_huber_shape,
      doc="PyTorch's HuberLoss (SmoothL1Loss times delta): quadratic near 0, linear beyond delta, robust to outliers.")
_pair("bce", "loss", "mean of -(t log p + (1 - t) log(1 - p)),  p = pred in (0, 1), each log at least -100",
      _bce_ref, _bce_grad,
      Scalar("-({1} * max(math.log({0}), -100.0) + (1.0 - {1}) * max(math.log(1.0 - {0}), -100.0))",
             "-({1} * fmax(log({0}), -100.0) + (1.0 - {1}) * fmax(log(1.0 - {0}), -100.0))"),
      flops=6, samples=_PROBS,
      doc="Binary cross-entropy of probabilities (after a sigmoid); bce_with_logits takes the logits instead "
          "and is exact where the sigmoid saturates.")
_pair("bce_with_logits", "loss", "mean of max(x, 0) - x * t + log(1 + exp(-|x|))  (= bce(sigmoid(x), t), t in [0, 1])",
      _bce_logits_ref, _bce_logits_grad,
      Scalar("max({0}, 0.0) - {0} * {1} + math.log1p(math.exp(-abs({0})))",
             "fmax({0}, 0.0) - {0} * {1} + log1p(exp(-fabs({0})))"), flops=6, first="logits")

_pair("mae", "metric", "mean over all elements of |pred - target|  (mean absolute error)",
      lambda p, t: _scalar(np.mean(np.abs(p - t)), p), _l1_grad, Scalar("abs({0} - {1})", "fabs({0} - {1})"),
      samples=_KINKS)


# ---- r2: the coefficient of determination -----------------------------------------------

def _r2_ref(p, t):
    # in float64, as both kernels accumulate: 1 - R/T cancels where the fit is no better than
    # the mean, and float32 sums then lose four digits of the oracle
    p64, t64 = p.astype(np.float64), t.astype(np.float64)
    residual = np.sum((p64 - t64) ** 2)
    if np.sum((t64 - t64.flat[0]) ** 2) == 0:  # a constant target, tested as both kernels test it:
        # nothing to explain, so 1 for a perfect prediction, else 0 (scikit-learn's force_finite)
        return _scalar(residual if np.isnan(residual) else float(residual == 0), p)
    total = np.sum((t64 - t64.mean()) ** 2)
    return _scalar(1.0 - residual / total, p)


def _r2_grad(b, n, g):
    p, t = n.inputs
    # r2 = 1 - R / T, R = sum (p - t)^2, T = sum (t - mean t)^2 (whose mean term sums to 0 in dT/dt):
    # d r2/dp = -2 (p - t) / T;  d r2/dt = 2 (p - t) / T + 2 R (t - mean t) / T^2
    # A constant target (max t = min t, the value's own test) makes r2 a constant 1 or 0: its
    # gradient is 0 there, and T (0, or rounding's speck) is replaced by 1 so nothing divides by it.
    d, centred = b.sub(p, t), b.sub(t, b.mean(t))
    varies = b.step(b.sub(b.max(t), b.min(t)))  # 1 if the targets differ, else 0 (NaN: 0, T stays NaN)
    total = b.add(b.sum(b.mul(centred, centred)), b.sub(_const(b, n, 1.0), varies))
    two = b.div(b.mul(b.mul(g, _const(b, n, 2.0)), varies), total)
    dp = b.mul(b.neg(d), two)
    dt = b.mul(b.add(d, b.mul(centred, b.div(b.sum(b.mul(d, d)), total))), two)
    return dp, dt


register(OpDef(
    "r2", "metric", ("pred", "target"), (), shape=_pair_shape("r2", "prediction"),
    formula="1 - sum (pred - target)^2 / sum (target - mean target)^2  (the batch's coefficient of determination)",
    flops=lambda ins, out, a: 5 * ins[0].numel(), reference=_r2_ref, grad=_r2_grad, samples=_PAIR_SAMPLES,
    doc="1 is a perfect fit, 0 no better than predicting the mean target. Computed per batch and averaged over "
        "an epoch's batches (a validation split of at most 512 examples is one batch): with very small batches "
        "it reads lower than the R^2 of the whole split. A batch whose targets are all equal (a batch of one) "
        "has nothing to explain: r2 is 1 if every prediction is exact, else 0 (scikit-learn's force_finite)."))
