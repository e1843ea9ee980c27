"""Tensor types: a dtype and a shape whose dimensions are integers or symbols.

A symbolic dimension is a monomial `coef * N * T ...` (`Sym`), enough for the batch
dimension to flow through flatten and reshape: flatten of f32[N, 64, 7, 7] is
f32[N, 3136], and reshape(x, [-1, 784]) of f32[N, 1, 28, 28] recovers N.

    >>> TensorType("f32", (Sym.of("N"), 3)).show()
    'f32[N, 3]'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

DTYPES = ("f32", "f64", "i32", "i64")
FLOAT_DTYPES = ("f32", "f64")
NUMPY_DTYPE = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64"}
# The most elements one example of a tensor may hold. NumPy indexes bytes with a signed
# 64-bit ssize_t and refuses a larger array with a ValueError ("Maximum allowed dimension
# exceeded"), not a MemoryError; and any float tensor may be computed in float64
# (gradcheck), 8 bytes an element. A larger tensor is a shape no machine can run.
MAX_ELEMENTS = (2**63 - 1) // 8


@dataclass(frozen=True, slots=True, order=True)
class Sym:
    """coef * product(symbols); symbols kept sorted so equal monomials compare equal."""

    coef: int
    syms: tuple[str, ...]

    @staticmethod
    def of(name: str) -> "Sym":
        return Sym(1, (name,))

    def __str__(self) -> str:
        body = "*".join(self.syms)
        return body if self.coef == 1 else f"{self.coef}*{body}"


Dim = Union[int, Sym]


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if isinstance(a, int):
        a, b = b, a
    assert isinstance(a, Sym)  # one of the two is symbolic, and it is now `a`
    if isinstance(b, int):
        return Sym(a.coef * b, a.syms) if b != 0 else 0
    return Sym(a.coef * b.coef, tuple(sorted(a.syms + b.syms)))


def dim_div(a: Dim, b: Dim) -> Dim | None:
    """Exact division of dimensions, or None where it is not exact (or not decidable)."""
    if isinstance(b, int):
        if b == 0:
            return None
        if isinstance(a, int):
            return a // b if a % b == 0 else None
        if a.coef % b:
            return None
        return a.coef // b if not a.syms else Sym(a.coef // b, a.syms)
    if isinstance(a, int):
        return None
    rest = list(a.syms)
    for s in b.syms:
        if s not in rest:
            return None
        rest.remove(s)
    if a.coef % b.coef:
        return None
    coef = a.coef // b.coef
    return Sym(coef, tuple(rest)) if rest else coef


def prod(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def parse_dim(text: str | int) -> Dim:
    """Inverse of str() for dimensions, used by the JSON reader."""
    if isinstance(text, int):
        return text
    parts = text.split("*")
    coef = int(parts[0]) if parts[0].isdigit() else 1
    syms = tuple(sorted(p for p in parts if not p.isdigit()))
    return Sym(coef, syms)


def dim_json(d: Dim) -> int | str:
    return d if isinstance(d, int) else str(d)


@dataclass(frozen=True, slots=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self, bindings: dict[str, int] | None = None) -> int:
        """Element count; symbols take their value from `bindings` (default 1, i.e. per example)."""
        return math.prod(concrete(d, bindings) for d in self.shape)

    def bind(self, bindings: dict[str, int]) -> tuple[int, ...]:
        return tuple(concrete(d, bindings) for d in self.shape)

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(dtype, self.shape)

    def show(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    __str__ = show


def concrete(d: Dim, bindings: dict[str, int] | None = None) -> int:
    if isinstance(d, int):
        return d
    bindings = bindings or {}
    return d.coef * math.prod(bindings.get(s, 1) for s in d.syms)


def scalar(dtype: str = "f32") -> TensorType:
    return TensorType(dtype, ())
