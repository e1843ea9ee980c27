"""The op registry: every op of the language is one `OpDef`, defined once.

An op block (in elementwise.py, linalg.py, conv.py, ...) puts side by side
everything the compiler knows about the op: its tensor inputs, attributes with
defaults, the parameters it creates when used as a layer, its shape rule, FLOPs,
its formula for `dslc ops`, the NumPy reference semantics, the gradient rule, and
(for ops whose training behaviour differs) a training-mode lowering. Later stages
look ops up here by name; a registry test fails when an op lacks a rule.

Shape rules receive the types of *all* node inputs (user inputs, then the op's
parameters) and the attribute dict, and raise `ShapeError` for a user mistake.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from dslc.ir.graph import Init
from dslc.ir.types import TensorType

REQUIRED = object()


class ShapeError(Exception):
    """A shape or attribute mistake found by a rule; resolve.py attaches the span."""

    def __init__(self, message: str, hint: str | None = None, code: str = "E0301"):
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


@dataclass(frozen=True)
class Attr:
    """One attribute. kind: int, float, bool, str, enum, ints (int or list of ints), init, axes."""

    name: str
    kind: str
    default: Any = REQUIRED
    choices: tuple = ()
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class ParamSlot:
    """A parameter a layer creates: `linear(10)` creates `linear.weight` and `linear.bias`.

    `shape(input_types, attrs)` gives its shape; `init` is an attribute name holding an
    Init or a fixed Init; `present(attrs)` says whether it exists (bias=false drops it).
    role: weight (regularised by l1/l2/elastic), bias, scale, shift, or state (not trained).
    """

    name: str
    role: str
    shape: Callable[[Sequence[TensorType], Mapping], tuple]
    init: str | Init
    present: Callable[[Mapping], bool] = lambda attrs: True


@dataclass(frozen=True)
class Sample:
    """Concrete inputs for the registry-generated tests: the types of ALL node inputs
    (user inputs then parameters), attributes, and the domain values are drawn from.

    domain: "any" (standard normal), "positive" (0.5..2), "kinks" (|x| >= 0.1, keeps
    finite differences away from relu/abs/max kinks), "probability" (0.05..0.95). Integer inputs are labels drawn
    in [0, classes) where classes is the last dimension of the first input.
    """

    inputs: tuple[TensorType, ...]
    attrs: dict = field(default_factory=dict)
    domain: str = "any"


@dataclass(frozen=True)
class Scalar:
    """What one element of a generated loop computes, for each code generator.

    `cpu` is a Python expression (Numba compiles it; `math.*` functions), `cuda` a CUDA C
    expression over doubles (`exp`, `erf`, `pow`, `?:`). `{0}`, `{1}`, ... are the op's
    inputs at the current element (plain local names, so repeating one repeats no work),
    `{name}` an attribute as a literal. Either may instead be a function of the attribute
    dict returning the template, for ops whose formula depends on an attribute. Named
    constants (SQRT1_2, INV_SQRT_2PI) are defined by dslc/codegen/scalar.py for both.
    Each must agree with the op's `reference`; the backends' tests run every sample.
    """

    cpu: str | Callable[[Mapping], str]
    cuda: str | Callable[[Mapping], str]

    @staticmethod
    def both(template: str) -> "Scalar":
        """The same text is valid Python and CUDA C (arithmetic only)."""
        return Scalar(template, template)


@dataclass(frozen=True)
class OpDef:
    name: str
    category: str
    inputs: tuple[str, ...]  # user-supplied tensors; a trailing '*xs' takes any number
    attrs: tuple[Attr, ...]
    shape: Callable[[Sequence[TensorType], Mapping], TensorType]
    formula: str
    params: tuple[ParamSlot, ...] = ()
    flops: Callable[[Sequence[TensorType], TensorType, Mapping], int] | None = None
    reference: Callable[..., Any] | None = None
    grad: Callable[..., Any] | None = None
    train: Callable[..., Any] | None = None  # training-mode lowering (dropout, batchnorm)
    integer_inputs: tuple[int, ...] = ()  # inputs that are labels/indices: never differentiated
    samples: tuple[Sample, ...] = ()  # for the tests generated from the registry
    # How an elementwise op indexes its inputs, for fusion: "broadcast" (NumPy rules) or
    # "channel" (the first input elementwise, the others per channel along axis 1). None:
    # not elementwise (reductions, matmul, convolutions, shape ops).
    elementwise: str | None = None
    # Elementwise and optimizer ops: the per-element expression the code generators emit.
    scalar: Scalar | None = None
    # Regularisers (a sum over every element of every input): the term one element adds.
    summand: Scalar | None = None
    # Losses and metrics that are the mean, over every element, of one expression of a
    # prediction {0} and a target {1} of the same shape (mse, huber, mae): the term one pair adds.
    pointwise: Scalar | None = None
    # A library op a fused elementwise tail may follow in the same kernel (matmul, linear,
    # conv2d): the library writes the output, the tail then runs over it in place.
    epilogue_host: bool = False
    # How a batchnorm-like sweep (dslc/kernels/grouping.py) takes an op that is not
    # elementwise: "reduce" (a per-channel sum over every axis but 1) or "map" (per element).
    sweep: str | None = None
    doc: str = ""

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[-1].startswith("*")

    def attr(self, name: str) -> Attr | None:
        return next((a for a in self.attrs if a.name == name), None)


OPS: dict[str, OpDef] = {}

# Categories of ops the compiler emits itself (gradients, optimizer updates, fused
# kernels, graph sources, a data-parallel step's collectives, the rewrites of the passes:
# fold-batchnorm's rsqrt): a program may not call them and `dslc ops` does not list them.
INTERNAL = ("source", "derivative", "optimizer", "kernel", "collective", "rewrite")


def register(op: OpDef) -> OpDef:
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} defined twice")
    OPS[op.name] = op
    return op


def get(name: str) -> OpDef:
    return OPS[name]


def all_ops() -> dict[str, OpDef]:
    """Every op: whoever imports this module imports the package first, whose __init__ registers each family."""
    return OPS


def epilogue_host(name: str) -> bool:
    """Whether op `name` may host a fused elementwise tail (OpDef.epilogue_host)."""
    op = all_ops().get(name)
    return op is not None and op.epilogue_host


# ---- helpers shared by shape rules ---------------------------------------------------

def expect_rank(t: TensorType, ranks, what: str, hint: str | None = None) -> None:
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if t.rank not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ShapeError(f"{what} expects rank {want}, got {t.show()}", hint)


def expect_float(t: TensorType, what: str) -> None:
    if not t.is_float:
        raise ShapeError(f"{what} expects a floating-point tensor, got {t.show()}", code="E0302")


def expect_static(d, what: str) -> int:
    if not isinstance(d, int):
        raise ShapeError(f"{what} must be a fixed size, got symbolic dimension {d}", code="E0303")
    return d


def normalize_axis(axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"{what}: axis {axis} is out of range for rank {rank}", code="E0304")
    return axis % rank


def pair(v, what: str = "a window attribute") -> tuple[int, int]:
    """An int-or-pair attribute (kernel, stride, pad) as a pair; a longer list is a mistake."""
    if isinstance(v, int):
        return v, v
    if len(v) != 2:
        raise ShapeError(f"{what} takes an int or a pair [height, width], got {list(v)}", code="E0310")
    return int(v[0]), int(v[1])
