"""The syntax tree of a .net file: one frozen dataclass per grammar rule.

The tree is a faithful, validation-free picture of the text; every node keeps its
`Span` so that later stages can point at it. Meaning (names, shapes, ops) is given in
resolve.py, where errors can be collected and reported with those spans.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from dslc.diagnostics import Span


# ---- expressions --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True, slots=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True, slots=True)
class ListLit:
    items: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Kwarg:
    name: str
    value: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    """`f(a, b, k=v)`; `x |> f(b)` is a Call whose `piped` is x (it becomes the first argument)."""

    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[Kwarg, ...]
    span: Span
    func_span: Span
    piped: "Expr | None" = None


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # add sub mul div floor_div pow matmul
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class Neg:
    operand: "Expr"
    span: Span


Expr = Union[Num, Str, Bool, Name, ListLit, Call, BinOp, Neg]


# ---- statements -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TensorTypeExpr:
    dtype: str
    dims: tuple[Expr, ...]
    span: Span
    dtype_span: Span


@dataclass(frozen=True, slots=True)
class InputDecl:
    name: str
    type: TensorTypeExpr
    span: Span


@dataclass(frozen=True, slots=True)
class ParamDecl:
    name: str
    type: TensorTypeExpr
    init: Expr | None
    span: Span
    role: str | None = None  # `as bias`: declared, else from the rank
    role_span: Span | None = None


@dataclass(frozen=True, slots=True)
class Assign:
    target: str
    value: Expr
    label: str | None
    span: Span


@dataclass(frozen=True, slots=True)
class OutputDecl:
    name: str
    value: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class MetricDecl:
    name: str | None
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class LossDecl:
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Return:
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Repeat:
    count: Expr
    index: str | None
    body: tuple["Stmt", ...]
    span: Span


Stmt = Union[InputDecl, ParamDecl, Assign, OutputDecl, MetricDecl, LossDecl, Return, Repeat]


# ---- top level ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Formal:
    """A block or model parameter: a tensor if `type` is None, else a hyper-parameter."""

    name: str
    type: str | None
    default: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class BlockDef:
    name: str
    formals: tuple[Formal, ...]
    body: tuple[Stmt, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class ModelDef:
    name: str
    formals: tuple[Formal, ...]
    body: tuple[Stmt, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class RecipeEntry:
    key: str
    value: Expr
    span: Span
    key_span: Span


@dataclass(frozen=True, slots=True)
class SearchBlock:
    """`search { key = distribution ... }` inside a train block; `name` is what was written
    (the recipe checks it is `search`); entries' keys may be dotted (`optimizer.lr`)."""

    name: str
    entries: tuple[RecipeEntry, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class TrainDef:
    model: str
    alias: str | None
    entries: tuple[RecipeEntry, ...]
    span: Span
    model_span: Span
    searches: tuple[SearchBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class Import:
    path: str
    span: Span


@dataclass(frozen=True, slots=True)
class Module:
    """One parsed file."""

    file: str
    imports: tuple[Import, ...]
    blocks: tuple[BlockDef, ...]
    models: tuple[ModelDef, ...]
    trains: tuple[TrainDef, ...]
