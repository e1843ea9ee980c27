"""Scalar expressions of the elementwise and optimizer ops: what one element of a loop computes.

The expressions themselves live in each op's block (`OpDef.scalar`, dslc/ops/*.py), next
to the reference they must agree with; this module is how the generators read them.

`{0}`, `{1}`, ... are the op's inputs at the current element (already plain names: the
generators bind every operand to a local first, so repeating `{0}` never repeats work);
`{name}` is an attribute, written as a literal of the target language. Per-channel
inputs of `channel` ops (prelu's slope, batchnorm's statistics) arrive as the channel's
scalar.

Arithmetic happens in the generated code's types: on the CPU, float32 operands with a
float literal are computed in float64 and rounded once on store; the CUDA generator
loads every operand as a double for the same reason. Both are within float32 rounding
of the reference's op-by-op float32 results.

    >>> expression("leaky_relu", ["x"], {"alpha": 0.01})
    'x if x > 0.0 else 0.01 * x'
    >>> expression("leaky_relu", ["x"], {"alpha": 0.01}, target="cuda")
    '(x > 0.0 ? x : 0.01 * x)'
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

from dslc.ops import registry

TARGETS = ("cpu", "cuda")

# Constants the expressions name, defined at the top of every generated module (as Python
# globals on the CPU, `constexpr double` in CUDA).
CONSTANTS = {"SQRT1_2": "0.7071067811865476", "INV_SQRT_2PI": "0.3989422804014327"}
# The module of functions the CPU expressions name besides math's (elementary.tanh: a tanh
# the loops vectorise), imported by every generated module.
CPU_IMPORT = "from dslc.runtime.cpu import elementary"


def _table(target: str) -> dict[str, str | Callable[[Mapping], str]]:
    return {name: getattr(op.scalar, target) for name, op in sorted(registry.all_ops().items())
            if op.scalar is not None}


# op -> its CPU (Python) template: the table the Numba generator and its tests read.
SCALAR = _table("cpu")
CUDA = _table("cuda")


def has_scalar(op: str) -> bool:
    return op in SCALAR


def literal(value, target: str = "cpu") -> str:
    """An attribute value as a literal: Python's repr, or C's spelling of booleans."""
    if isinstance(value, bool) and target == "cuda":
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value) and target == "cuda":
        return {"inf": "DSLC_INF", "-inf": "(-DSLC_INF)"}.get(repr(value), "DSLC_NAN")  # library.PRELUDE
    return repr(value)


def expression(op: str, operands: list[str], attrs: Mapping, target: str = "cpu") -> str:
    """The expression of `op` applied to `operands` (local names) with its attributes."""
    return _fill((SCALAR if target == "cpu" else CUDA)[op], operands, attrs, target)


def has_summand(op: str) -> bool:
    """Whether `op` is a regulariser the generators write as a loop (OpDef.summand)."""
    return registry.get(op).summand is not None


def summand(op: str, x: str, attrs: Mapping, target: str = "cpu") -> str:
    """The term element `x` adds to the sum of regulariser `op`.

    >>> summand("elastic", "x", {"beta": 0.5}, target="cuda")
    '0.5 * x * x + fabs(x)'
    """
    return _fill(getattr(registry.get(op).summand, target), [x], attrs, target)


def has_pointwise(op: str) -> bool:
    """Whether `op` is a mean over element pairs the generators write as a loop (OpDef.pointwise)."""
    return registry.get(op).pointwise is not None


def pointwise(op: str, pred: str, target: str, attrs: Mapping, target_lang: str = "cpu") -> str:
    """The term one pair of elements adds to the mean of a pointwise loss or metric `op`.

    >>> pointwise("mse", "p", "t", {})
    '(p - t) * (p - t)'
    """
    return _fill(getattr(registry.get(op).pointwise, target_lang), [pred, target], attrs, target_lang)


def _fill(template, operands: list[str], attrs: Mapping, target: str) -> str:
    if callable(template):
        template = template(attrs)
    values = {k: literal(v, target) for k, v in attrs.items() if isinstance(v, (int, float, bool))}
    return template.format(*operands, **values)
