"""The values an expression can have while a model is elaborated, and compile-time arithmetic.

A .net expression evaluates to a `Tensor` (a node of the graph being built), a
plain Python value (int, float, bool, str, list: hyper-parameters and attributes),
a `Symbol` (a bare name bound to nothing, e.g. `same` or `xavier`), an `Init`, the
`ParamGroup` `weights`, or `POISON`: the value of anything that already failed, so
that one mistake is reported once and not again by everything computed from it.
Names are bound to values in a `Scope` (the model's, or one per block instance).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dslc.diagnostics import CompileError, Span, UsageError, printable
from dslc.frontend.ast import Bool, Name, Neg, Num, Str
from dslc.frontend.parse import parse_expression
from dslc.ir.graph import Init
from dslc.ir.types import TensorType

HYPER_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
INT_MAX = 2**63 - 1  # compile-time integers must fit the int64 of later stages


@dataclass(frozen=True)
class Tensor:
    """A tensor value during elaboration: a node name and its type."""

    name: str
    type: TensorType


@dataclass(frozen=True)
class Symbol:
    """A bare name bound to nothing: valid as an enum attribute (pad=same) or an initialiser."""

    id: str
    span: Span


@dataclass(frozen=True)
class ParamGroup:
    """`weights`: every parameter with the weight role defined so far (for l1/l2/elastic)."""

    names: tuple[str, ...]


class Poison:
    def __repr__(self):
        return "POISON"


POISON = Poison()


class Abort(Exception):
    """Unwinds one statement after its diagnostic has been recorded."""


@dataclass
class Scope:
    prefix: str  # "" for the model, "residual_1." inside a block instance
    vars: dict[str, Any]
    in_block: str | None = None
    chain: tuple[tuple[str, Span], ...] = ()  # block calls that led here, for notes
    returned: Any = None


def poisoned(v) -> bool:
    """True if `v` is POISON or a list holding it: its mistake has been reported already."""
    return v is POISON or (isinstance(v, list) and any(poisoned(i) for i in v))


def as_hyper(value, type_name: str):
    """`value` as a hyper-parameter of type `type_name`, or None if it is not one (a float
    must be finite and an int must fit in int64, as written in a file)."""
    if type_name == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value) if abs(value) <= INT_MAX else math.inf  # a huge int overflows a float
        return number if math.isfinite(number) else None
    if type_name == "int" and type(value) is int:
        return value if abs(value) <= INT_MAX else None
    if type_name == "bool" and isinstance(value, bool):
        return value
    if type_name == "str" and isinstance(value, (str, Symbol)):
        return value.id if isinstance(value, Symbol) else value
    return None


def literal(raw, where: str):
    """A hyper-parameter override as a value: a string (from --set) is read as one .net
    literal (`64`, `-1e-3`, `true`, `"text"`, or a bare word, taken as a string); any other
    value is used as given. A string that is no literal is a UsageError naming `where`.

    >>> literal("1e-3", "--set lr=1e-3"), literal("relu", "--set act=relu")
    (0.001, 'relu')
    """
    if not isinstance(raw, str):
        return raw
    try:
        e = parse_expression(raw.strip(), where)
    except CompileError as err:
        raise UsageError(f"{where}: cannot read {raw!r} as a value: {err.diagnostics[0].message}") from None
    sign = 1
    while isinstance(e, Neg):
        sign, e = -sign, e.operand
    if isinstance(e, Num):
        return sign * e.value
    if sign == 1 and isinstance(e, (Str, Bool)):
        return e.value
    if sign == 1 and isinstance(e, Name):
        return e.id
    raise UsageError(f"{where}: a hyper-parameter is a number, true, false or a string, not {raw!r}")


def literals(sets: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameter overrides (KEY -> --set value) as values: {"width": "32"} -> {"width": 32}."""
    return {key: literal(raw, f"--set {key}={printable(str(raw))}") for key, raw in sets.items()}


def describe(v) -> str:
    """A value as a message shows it: 'the int 3', 'a tensor f32[N, 10]'."""
    if isinstance(v, Tensor):
        return f"a tensor {v.type}"
    if isinstance(v, Symbol):
        return f"the name '{v.id}'"
    if isinstance(v, bool):
        return f"the bool {str(v).lower()}"
    if isinstance(v, int):
        return f"the int {v}"
    if isinstance(v, float):
        return f"the float {v:g}"
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, Init):
        return f"the initialiser {v}"
    if isinstance(v, ParamGroup):
        return "the parameter group 'weights'"
    return repr(v)


class FoldError(Exception):
    """Compile-time arithmetic failed; resolve.py reports it with the expression's span."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def fold(op: str, values: list):
    """Arithmetic on compile-time numbers (hyper-parameters), done now. `/` of two ints that
    divide exactly stays an int; `//` rounds down (an int for two ints: `pad=k // 2`).

    >>> fold("div", [6, 3]), fold("div", [7, 2]), fold("floor_div", [7, 2]), fold("pow", [2, 10])
    (2, 3.5, 3, 1024)
    """
    if op == "neg":
        return -values[0]
    a, b = values
    if op == "matmul":
        raise FoldError("E0271", "'@' needs two tensors")
    if op in ("div", "floor_div") and b == 0:
        raise FoldError("E0272", "division by zero")
    if op == "div":
        out = a // b if type(a) is int and type(b) is int and a % b == 0 else a / b
    elif op == "floor_div":
        out = a // b if type(a) is int and type(b) is int else float(math.floor(a / b))
    elif op == "pow":
        out = _power(a, b)
    else:
        out = {"add": a + b, "sub": a - b, "mul": a * b}[op]
    if (type(out) is int and abs(out) > INT_MAX) or (isinstance(out, float) and not math.isfinite(out)):
        raise FoldError("E0273", f"compile-time arithmetic overflows: {a} {_SYMBOL[op]} {b}")
    return out


def _power(a, b):
    """a ** b: an int for ints and b >= 0 (never computed when it cannot fit int64, so 10 ** 10 ** 9
    is an error at once, not an hour of multiplying), else a real float."""
    if a == 0 and b < 0:
        raise FoldError("E0272", f"0 ** {b}: division by zero")
    if type(a) is int and type(b) is int and b >= 0:
        if abs(a) > 1 and b * math.log2(abs(a)) > 64:
            raise FoldError("E0273", f"compile-time arithmetic overflows: {a} ** {b}")
        return a ** b
    if a < 0 and b != int(b):
        raise FoldError("E0274", f"{a} ** {b} is not a real number")
    try:
        return math.pow(a, b)
    except OverflowError:
        raise FoldError("E0273", f"compile-time arithmetic overflows: {a} ** {b}") from None


_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floor_div": "//", "pow": "**"}
