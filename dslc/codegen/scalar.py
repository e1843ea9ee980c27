"""Scalar expressions of the elementwise ops: what one element of a fused loop computes.

`{0}`, `{1}`, ... are the op's inputs at the current element (already plain names:
the generator binds every operand to a local first, so repeating `{0}` never repeats
work); `{name}` is an attribute, written as a Python literal. Per-channel inputs of
`channel` ops (prelu's slope, batchnorm's statistics) arrive as the channel's scalar.

Each entry must agree with the op's NumPy `reference`; tests/test_numba_backend.py runs
every op's samples through both. Arithmetic happens in the generated code's types:
float32 operands with a float literal are computed in float64 and rounded once on
store, which is within float32 rounding of the reference's op-by-op float32 results.

These strings belong in the op blocks (dslc/ops/*.py, as a `scalar` field); they live
here until the op registry grows that field, so the generator has one table to read.
"""
from __future__ import annotations

from typing import Callable, Mapping

# Constants hoisted to the generated module's top, referenced by name below.
CONSTANTS = {"SQRT1_2": "0.7071067811865476", "INV_SQRT_2PI": "0.3989422804014327"}

SCALAR: dict[str, str | Callable[[Mapping], str]] = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
    "neg": "-{0}",
    "relu": "max({0}, 0.0)",
    "leaky_relu": "{0} if {0} > 0.0 else {alpha} * {0}",
    "elu": "{0} if {0} > 0.0 else {alpha} * math.expm1(min({0}, 0.0))",
    "gelu": "0.5 * {0} * (1.0 + math.erf({0} * SQRT1_2))",
    # Two branches so that exp never overflows, as in the reference.
    "sigmoid": "1.0 / (1.0 + math.exp(-{0})) if {0} >= 0.0 else math.exp({0}) / (1.0 + math.exp({0}))",
    "tanh": "math.tanh({0})",
    "step": "1.0 if {0} > 0.0 else {low}",
    "elu_deriv": "1.0 if {0} > 0.0 else {alpha} * math.exp(min({0}, 0.0))",
    "gelu_deriv": "0.5 * (1.0 + math.erf({0} * SQRT1_2)) + {0} * math.exp(-0.5 * {0} * {0}) * INV_SQRT_2PI",
    "sigmoid_deriv": "{0} * (1.0 - {0})",
    "tanh_deriv": "1.0 - {0} * {0}",
    "rsqrt": "1.0 / math.sqrt({0})",
    "sign": "1.0 if {0} > 0.0 else (-1.0 if {0} < 0.0 else {0} * 0.0)",
    "prelu": "{0} if {0} > 0.0 else {1} * {0}",
    "prelu_deriv": "1.0 if {0} > 0.0 else {1}",
    "batchnorm": "({0} - {3}) * ({1} / math.sqrt({4} + {eps})) + {2}",
    "batchnorm_grad_x": "{0} * ({1} / math.sqrt({2} + {eps}))",
    # optimizer updates (dslc/ops/optim.py)
    "sgd_step": "{0} - {2} * {1}",
    "momentum_velocity": "{momentum} * {0} - {2} * {1}",
    "nesterov_step": "{0} - {momentum} * {1} + (1.0 + {momentum}) * {2}",
    "accumulate_square": "{0} + {1} * {1}",
    "moving_average": lambda a: ("{decay} * {0} + (1.0 - {decay}) * ({1} * {1})" if a["square"]
                                 else "{decay} * {0} + (1.0 - {decay}) * {1}"),
    "adaptive_step": "{0} - {3} * {1} / (math.sqrt({2}) + {eps})",
    "adam_step": ("{0} - {3} * (({1} / (1.0 - {beta1} ** {4})) / (math.sqrt({2} / (1.0 - {beta2} ** {4})) + {eps})"
                  " + {weight_decay} * {0})"),
}


def has_scalar(op: str) -> bool:
    return op in SCALAR


def expression(op: str, operands: list[str], attrs: Mapping) -> str:
    """The expression of `op` applied to `operands` (local names) with its attributes.

    >>> expression("leaky_relu", ["x"], {"alpha": 0.01})
    'x if x > 0.0 else 0.01 * x'
    """
    template = SCALAR[op]
    if callable(template):
        template = template(attrs)
    values = {k: repr(v) for k, v in attrs.items() if isinstance(v, (int, float, bool))}
    return template.format(*operands, **values)
