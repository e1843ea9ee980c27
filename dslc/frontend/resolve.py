"""Elaboration: a model's AST -> the typed graph IR, with every mistake located.

Blocks are expanded where they are called (their layers get hierarchical names such
as `residual_1.conv_bn_relu.conv2d`), `repeat` is unrolled, hyper-parameters are
plain Python values folded at compile time, and each op call is bound to its
`OpDef` (calls.py): tensor inputs first, then attributes by position or keyword,
then the parameters the layer creates, then the op's shape rule gives the result type.

Errors do not stop elaboration: the failing value becomes `POISON`, which silences
everything computed from it, so independent mistakes are all reported in one run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dslc.deep import deep
from dslc.diagnostics import CompileError, Diagnostic, Span, UsageError, did_you_mean, give_as, given_as
from dslc.frontend import ast
from dslc.frontend.calls import Calls
from dslc.frontend.check_blocks import check_uncalled
from dslc.frontend.program import Program
from dslc.frontend.values import (HYPER_TYPES, POISON, Abort, FoldError, ParamGroup, Scope, Symbol, Tensor,
                                  as_hyper, describe, fold, poisoned)
from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Graph, Output
from dslc.ir.types import DTYPES, MAX_ELEMENTS, Dim, Sym, TensorType
from dslc.ops import registry

# A parameter's role decides what treats it as a weight: l1/l2(weights), weight decay (the
# optimizer's decay_roles), `dslc check`. state is never trained (a constant buffer).
ROLES = ("weight", "bias", "scale", "shift", "state")

# Unrolling limits: a real model stays far below them; a runaway `repeat` or a block
# that calls itself twice per level would otherwise take forever instead of failing.
MAX_REPEAT = 10_000
MAX_STEPS = 100_000
# Nested expressions, counting into the blocks they call: more than any program needs, and
# few enough that elaboration stays far below deep.RECURSION_LIMIT (about 6 frames a level).
MAX_DEPTH = 5_000


class _Halt(Exception):
    """Stops the whole elaboration (the unrolling budget is spent)."""


@dataclass
class Elaborator(Calls):
    program: Program
    builder: GraphBuilder = field(default_factory=GraphBuilder)
    errors: list[Diagnostic] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    steps: int = 0  # statements run so far, against MAX_STEPS
    depth: int = 0  # expressions being evaluated, one inside the other, against MAX_DEPTH
    called: set[str] = field(default_factory=set)  # the blocks elaboration has called

    # ---- diagnostics

    def error(self, scope: Scope, code: str, message: str, span: Span | None, hint: str | None = None) -> Abort:
        """Record a diagnostic (once: a block called twice reports its mistake once) and
        return the exception that unwinds the current statement."""
        if not any(e.code == code and e.message == message and e.span == span for e in self.errors):
            d = Diagnostic(code, message, span, hint)
            for block, call_span, times in _chain_notes(scope.chain):
                d.with_note(call_span, f"in block '{block}' called here"
                            + (f" ({times} times, recursively)" if times > 1 else ""))
            self.errors.append(d)
        return Abort()

    # ---- models

    def model(self, mdef: ast.ModelDef, overrides: dict[str, Any]) -> Graph:
        check_overrides(mdef, overrides)
        scope = Scope("", {})
        scope.vars.update(self._bind_hyper(mdef, overrides))
        try:
            self.block_body(mdef.body, scope)
        except _Halt:
            pass
        else:  # what nothing called was not checked: check it without arguments
            self.errors += check_uncalled(self.program, self.called, mdef.name)
        if not self.errors:
            self._check_model(mdef)
        if self.errors:
            raise CompileError(self.errors, self.program.sources)
        return self.builder.graph(mdef.name, self.outputs, "typed")

    def _bind_hyper(self, mdef: ast.ModelDef, overrides: dict[str, Any]) -> dict:
        """The hyper-parameters' values: `overrides` (already checked) or the defaults."""
        values: dict[str, Any] = {}
        scope = Scope("", values)
        for f in mdef.formals:
            if f.name in values:
                self.error(scope, "E0204", f"parameter '{f.name}' is declared twice", f.span)
                continue
            values[f.name] = POISON  # until it is bound: later mistakes about it are not new
            if f.type is None:
                self.error(scope, "E0230", f"model parameter '{f.name}' needs a type (int, float, bool or str)",
                           f.span)
                continue
            if f.type not in HYPER_TYPES:
                self.error(scope, "E0231", f"unknown hyper-parameter type '{f.type}'", f.span,
                           did_you_mean(f.type, HYPER_TYPES) or "one of int, float, bool, str")
                continue
            if f.name in overrides:
                values[f.name] = as_hyper(overrides[f.name], f.type)
                continue
            if f.default is None:
                self.error(scope, "E0232", f"hyper-parameter '{f.name}' has no default; give one with "
                           f"{give_as(f.name)}", f.span)
                continue
            try:
                value = self.tensor_or_value(f.default, scope)
            except Abort:
                continue
            checked = as_hyper(value, f.type)
            if checked is None:
                self.error(scope, "E0233", f"hyper-parameter '{f.name}' is {f.type}, got {describe(value)}",
                           f.default.span)
                continue
            values[f.name] = checked
        return values

    def _check_model(self, mdef: ast.ModelDef) -> None:
        if not any(o.kind in ("output", "loss") for o in self.outputs):
            self.errors.append(Diagnostic("E0240", f"model '{mdef.name}' has no output and no loss",
                                          mdef.name_span, hint="add `output NAME = value` or `loss ...`"))

    # ---- statements

    def block_body(self, stmts, scope: Scope) -> None:
        for stmt in stmts:
            if scope.returned is not None:
                self.error(scope, "E0245", "statement after return", stmt.span)
                return
            self.steps += 1
            if self.steps > MAX_STEPS:
                self.error(scope, "E0259", f"the model unrolls to more than {MAX_STEPS} statements", stmt.span,
                           hint="a repeat count or a block calling itself is probably larger than meant")
                raise _Halt()
            try:
                self.stmt(stmt, scope)
            except Abort:
                if isinstance(stmt, ast.Return):
                    scope.returned = POISON
                target = getattr(stmt, "target", None) or getattr(stmt, "name", None)
                if target and not isinstance(stmt, ast.OutputDecl):
                    scope.vars[target] = POISON

    def stmt(self, s, scope: Scope) -> None:
        model_only = (ast.InputDecl, ast.ParamDecl, ast.OutputDecl, ast.MetricDecl, ast.LossDecl)
        if scope.in_block and isinstance(s, model_only):
            kind = type(s).__name__.replace("Decl", "").lower()
            raise self.error(scope, "E0246", f"'{kind}' is not allowed inside block '{scope.in_block}'",
                             s.span, hint="declare inputs, parameters, outputs and losses in the model")
        if isinstance(s, ast.InputDecl):
            t = self.tensor_type(s.type, scope, allow_symbolic=True)
            self._check_free(s.name, s.span, scope)
            scope.vars[s.name] = Tensor(self.builder.source(s.name, "input", t, {}, s.span), t)
        elif isinstance(s, ast.ParamDecl):
            self.param_decl(s, scope)
        elif isinstance(s, ast.Assign):
            self.assign(s, scope)
        elif isinstance(s, ast.OutputDecl):
            self.output(s, scope)
        elif isinstance(s, ast.MetricDecl):
            self.metric(s, scope)
        elif isinstance(s, ast.LossDecl):
            self.loss(s, scope)
        elif isinstance(s, ast.Return):
            if not scope.in_block:
                raise self.error(scope, "E0247", "'return' outside a block", s.span,
                                 hint="a model ends with `output` or `loss`")
            scope.returned = self.tensor_or_value(s.value, scope)
        elif isinstance(s, ast.Repeat):
            self.repeat(s, scope)

    def repeat(self, s: ast.Repeat, scope: Scope) -> None:
        count = self.tensor_or_value(s.count, scope)
        if type(count) is not int or count < 0:
            raise self.error(scope, "E0248", f"repeat count must be a non-negative int, got {describe(count)}",
                             s.count.span)
        if count > MAX_REPEAT:
            raise self.error(scope, "E0248", f"repeat count {count} is too large (at most {MAX_REPEAT})",
                             s.count.span)
        for i in range(count):
            if s.index:
                scope.vars[s.index] = i
            self.block_body(s.body, scope)

    def _check_free(self, name: str, span: Span, scope: Scope) -> None:
        if name in scope.vars:
            raise self.error(scope, "E0249", f"'{name}' is already defined", span)
        if self.builder.taken(name):
            raise self.error(scope, "E0249", f"'{name}' is already the name of a layer", span,
                             hint="declare inputs and parameters before the layers, or rename it")

    def param_decl(self, s: ast.ParamDecl, scope: Scope) -> None:
        t = self.tensor_type(s.type, scope, allow_symbolic=False)
        if s.init is None:
            raise self.error(scope, "E0220", f"parameter '{s.name}' needs an initialiser", s.span,
                             hint="for example `= kaiming()` or `= zeros()`")
        init = self.init_value(s.init, scope)
        self._check_free(s.name, s.span, scope)
        role = s.role or ("weight" if t.rank >= 2 else "bias")
        if role not in ROLES:
            raise self.error(scope, "E0223", f"unknown parameter role '{role}'", s.role_span,
                             did_you_mean(role, ROLES) or f"roles: {', '.join(ROLES)}")
        attrs = {"init": init, "trainable": role != "state", "role": role}
        name = self.builder.source(s.name, "param", t, attrs, s.span)
        if role == "weight":
            self.weights.append(name)
        scope.vars[s.name] = Tensor(name, t)

    def assign(self, s: ast.Assign, scope: Scope) -> None:
        if s.label is None:
            scope.vars[s.target] = self.tensor_or_value(s.value, scope)
            return
        # A label names the statement's single layer, or prefixes its several layers.
        label = scope.prefix + s.label
        if self.builder.taken(label):
            raise self.error(scope, "E0250", f"layer name '{s.label}' is already used", s.span)
        mark = len(self.builder.nodes)
        sub = Scope(label + ".", scope.vars, scope.in_block, scope.chain)
        value = self.tensor_or_value(s.value, sub)
        created = [n for n in self.builder.nodes[mark:] if n.op not in ("param", "const")]
        if len(created) == 1:
            value = self._rename_prefix(mark, created[0].name, label, value)
        self.builder.reserve(label)
        scope.vars[s.target] = value

    def _rename_prefix(self, mark: int, old: str, new: str, value):
        """Rename the one layer made since `mark` (and its parameters) from `old` to `new`."""
        def rn(name: str) -> str:
            return new + name[len(old):] if name == old or name.startswith(old + ".") else name
        tail = self.builder.nodes[mark:]
        del self.builder.nodes[mark:]
        for n in tail:
            self.builder.index.pop(n.name)
        for n in tail:
            self.builder.append(n.replace(name=rn(n.name), inputs=tuple(rn(i) for i in n.inputs)))
        self.weights[:] = [rn(w) for w in self.weights]
        return Tensor(rn(value.name), value.type) if isinstance(value, Tensor) else value

    def output(self, s: ast.OutputDecl, scope: Scope) -> None:
        if any(o.name == s.name and o.kind == "output" for o in self.outputs):
            raise self.error(scope, "E0251", f"output '{s.name}' is declared twice", s.span)
        if s.value is None:
            if s.name not in scope.vars:
                raise self.error(scope, "E0201", f"unknown name '{s.name}'", s.span,
                                 did_you_mean(s.name, scope.vars))
            value = scope.vars[s.name]
        else:
            value = self.tensor_or_value(s.value, scope)
            scope.vars.setdefault(s.name, value)
        t = self.want_tensor(value, s.value.span if s.value else s.span, scope, f"output '{s.name}'")
        self.outputs.append(Output("output", s.name, t.name))

    def metric(self, s: ast.MetricDecl, scope: Scope) -> None:
        # `metric accuracy(logits, y)` is named after the call, `metric err` after the variable.
        name = s.name or (s.value.func if isinstance(s.value, ast.Call) else
                          s.value.id if isinstance(s.value, ast.Name) else None)
        if name is None:
            raise self.error(scope, "E0252", "cannot name this metric", s.span,
                             hint="write `metric NAME = expression`")
        if any(o.kind == "metric" and o.name == name for o in self.outputs):
            raise self.error(scope, "E0251", f"metric '{name}' is declared twice", s.span)
        t = self.want_tensor(self.tensor_or_value(s.value, scope), s.value.span, scope, f"metric '{name}'")
        if t.type.rank != 0:
            raise self.error(scope, "E0321", f"metric '{name}' must be a scalar, got {t.type}", s.value.span,
                             hint="reduce it with mean(...)")
        self.outputs.append(Output("metric", name, t.name))

    def loss(self, s: ast.LossDecl, scope: Scope) -> None:
        if any(o.kind == "loss" for o in self.outputs):
            raise self.error(scope, "E0253", "a model has one loss; this is the second", s.span,
                             hint="add the terms together: loss a + b")
        t = self.want_tensor(self.tensor_or_value(s.value, scope), s.value.span, scope, "loss")
        if t.type.rank != 0:
            raise self.error(scope, "E0320", f"the loss must be a scalar, got {t.type}", s.value.span,
                             hint="reduce it with mean(...) or sum(...)")
        if not t.type.is_float:
            raise self.error(scope, "E0302", f"the loss must be floating-point, got {t.type}", s.value.span)
        self.outputs.append(Output("loss", "loss", t.name))

    # ---- types

    def tensor_type(self, te: ast.TensorTypeExpr, scope: Scope, allow_symbolic: bool) -> TensorType:
        if te.dtype not in DTYPES:
            raise self.error(scope, "E0260", f"unknown dtype '{te.dtype}'", te.dtype_span,
                             did_you_mean(te.dtype, DTYPES) or f"one of {', '.join(DTYPES)}")
        dims: list[Dim] = []
        for d in te.dims:
            value = self.tensor_or_value(d, scope)
            if isinstance(value, Symbol):
                if not allow_symbolic:
                    raise self.error(scope, "E0261", f"parameter shapes must be fixed; '{value.id}' is not "
                                     "a hyper-parameter", d.span, did_you_mean(value.id, scope.vars))
                dims.append(Sym.of(value.id))
            elif type(value) is int and value > 0:
                dims.append(value)
            else:
                raise self.error(scope, "E0262", f"a dimension must be a positive int or a symbol, got "
                                 f"{describe(value)}", d.span)
        return TensorType(te.dtype, tuple(dims))

    # ---- expressions

    def tensor_or_value(self, e, scope: Scope):
        value = self.eval(e, scope)
        if poisoned(value):
            raise Abort()
        return value

    def want_tensor(self, value, span: Span, scope: Scope, what: str) -> Tensor:
        if value is POISON:
            raise Abort()
        if isinstance(value, Tensor):
            return value
        if isinstance(value, Symbol):
            raise self.unknown_name(value, scope)
        raise self.error(scope, "E0270", f"{what} must be a tensor, got {describe(value)}", span)

    def unknown_name(self, sym: Symbol, scope: Scope, also: tuple[str, ...] = ()) -> Abort:
        """E0201 at `sym`, suggesting a variable in scope, or a name of `also` that is no
        variable (`weights`, the group a regulariser takes)."""
        candidates = [k for k, v in scope.vars.items() if v is not POISON] + list(also)
        return self.error(scope, "E0201", f"unknown name '{sym.id}'", sym.span, did_you_mean(sym.id, candidates))

    def eval(self, e, scope: Scope):
        """Value of an expression: a Python value, a Tensor, a Symbol, Init, ParamGroup, or POISON.

        A pipeline `x |> f |> g` and a sum `a + b + c` nest to the left as deep as they are
        long; their left spine is walked here in a loop, so a 300-stage pipeline costs no
        recursion. Only nesting in brackets recurses, bounded by MAX_DEPTH.
        """
        spine = []
        while (isinstance(e, ast.Call) and e.piped is not None) or isinstance(e, (ast.BinOp, ast.Neg)):
            spine.append(e)
            e = e.piped if isinstance(e, ast.Call) else e.left if isinstance(e, ast.BinOp) else e.operand
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.error(scope, "E0257", f"expressions nest more than {MAX_DEPTH} deep here, counting "
                                 "the blocks they call", e.span, hint="name intermediate values: `y = f(x)`")
            value = self._leaf(e, scope)
            for outer in reversed(spine):
                if isinstance(outer, ast.Call):
                    value = self.call(outer, scope, piped=value)
                elif isinstance(outer, ast.Neg):
                    value = self.arith("neg", [value], [outer.operand.span], outer.span, scope)
                else:
                    right = self.eval(outer.right, scope)
                    value = self.arith(outer.op, [value, right], [outer.left.span, outer.right.span], outer.span,
                                       scope)
            return value
        finally:
            self.depth -= 1

    def _leaf(self, e, scope: Scope):
        """Value of an expression that is not a pipeline stage, a binary operation or a negation."""
        if isinstance(e, (ast.Num, ast.Str, ast.Bool)):
            return e.value
        if isinstance(e, ast.Name):
            if e.id in scope.vars:
                return scope.vars[e.id]
            if e.id == "weights":
                return ParamGroup(tuple(self.weights))
            return Symbol(e.id, e.span)
        if isinstance(e, ast.ListLit):
            return [self.eval(i, scope) for i in e.items]
        if isinstance(e, ast.Call):
            return self.call(e, scope)
        raise TypeError(f"unknown expression {e!r}")

    def arith(self, op: str, values: list, spans: list[Span], span: Span, scope: Scope):
        if any(poisoned(v) for v in values):
            return POISON
        for v, s in zip(values, spans):
            if isinstance(v, Symbol):
                raise self.unknown_name(v, scope)
            if not isinstance(v, (Tensor, int, float)) or isinstance(v, bool):
                raise self.error(scope, "E0271", f"cannot use {describe(v)} in arithmetic", s)
        if not any(isinstance(v, Tensor) for v in values):
            try:
                return fold(op, values)
            except FoldError as err:
                raise self.error(scope, err.code, err.message, span) from None
        if op == "matmul" and not all(isinstance(v, Tensor) for v in values):
            raise self.error(scope, "E0271", "'@' needs two tensors", span)
        if op == "matmul" and all(v.type.rank == 3 for v in values):
            op = "bmm"  # [B, n, k] @ [B, k, m]: one product per leading index
        dtype = next(v.type.dtype for v in values if isinstance(v, Tensor))
        names = [v.name if isinstance(v, Tensor) else self.constant(v, dtype, s).name for v, s in zip(values, spans)]
        return self.make_node(op, names, {}, span, self.builder.unique(scope.prefix + op), scope)

    def constant(self, value, dtype: str, span: Span) -> Tensor:
        """A number as a scalar constant of `dtype`: `x * 0.5`, `maximum(x, 0)`."""
        t = TensorType(dtype, ())
        return Tensor(self.builder.source(self.builder.unique("const"), "const", t, {"value": float(value)}, span), t)

    def make_node(self, op: str, inputs: list[str], attrs: dict, span: Span, name: str, scope: Scope) -> Tensor:
        """Append a node named `name` (already unique); a shape error becomes a diagnostic."""
        self._integer_operands(op, [self.builder.index[i] for i in inputs], span, scope)
        try:
            node = self.builder.add(op, inputs, attrs, span, name=name)
        except registry.ShapeError as err:
            raise self.error(scope, err.code, err.message, span, err.hint) from None
        type_ = self.builder.type_of(node)
        count = type_.numel()
        if count > MAX_ELEMENTS:  # `pad=9223372036854775807`, `upsample(scale=2**40)`, `one_hot(i, 2**62)`
            raise self.error(scope, "E0315", f"{op}: its result {type_.show()} would hold {count:,} elements "
                             f"per example, more than a 64-bit machine can address (at most {MAX_ELEMENTS:,})", span)
        return Tensor(node, type_)

    def _integer_operands(self, op: str, nodes, span: Span, scope: Scope) -> None:
        """Numbers and exponents meeting an integer tensor (README, "Integer tensors").

        A number takes the tensor's dtype (`constant`), so it must be a whole number the
        constant holds exactly: `i * 2.5` would silently be `i * 2`. An integer power is
        exact, and an integer, only for an exponent known to be a whole number >= 0:
        `i ** -1` has no integer value (NumPy refuses it), and a tensor's are not known here.
        """
        for n in nodes:
            if n.op != "const" or n.type.is_float:
                continue
            v, top = float(n.attr("value")), _EXACT_INT[n.type.dtype]
            if not v.is_integer():
                raise self.error(scope, "E0275", f"{v!r} is not a whole number, and meets an {n.type.dtype} tensor "
                                 "(it would be truncated)", n.span, _NO_CAST)
            if abs(v) > top:
                raise self.error(scope, "E0275", f"{v:g} is too large for a constant of an {n.type.dtype} tensor "
                                 f"(at most {top} in magnitude, held exactly)", n.span)
        if op != "pow" or any(n.type.is_float for n in nodes):  # mixed dtypes: the shape rule says so
            return
        y = nodes[1]
        if y.op != "const":
            raise self.error(scope, "E0276", f"the exponent of an integer power must be a number, not the tensor "
                             f"'{y.name}'", span, "an integer power is exact for a whole number >= 0 written in the "
                             "program, such as i ** 2")
        if y.attr("value") < 0:
            raise self.error(scope, "E0276", f"the exponent of an integer power must be >= 0, got {y.attr('value'):g}",
                             y.span, "i ** -1 is not an integer (NumPy refuses it too); " + _NO_CAST)


# The largest constant of each integer dtype: constants are kept as float64, whose integers
# are exact below 2^53 (2^53 + 1 would already be read as 2^53).
_EXACT_INT = {"i32": 2 ** 31 - 1, "i64": 2 ** 53 - 1}
_NO_CAST = ("dslc has no cast from integers to floats: only a tensor declared as floats (f32, f64) computes in "
            "floating point")


def _chain_notes(chain):
    """The block call chain, innermost first, with a recursion's repeated calls folded into one."""
    notes: list[list] = []
    for block, span in reversed(chain):
        if notes and notes[-1][0] == block and notes[-1][1] == span:
            notes[-1][2] += 1
        else:
            notes.append([block, span, 1])
    return notes


@deep
def elaborate(program: Program, model: str, overrides: dict[str, Any] | None = None) -> Graph:
    """The typed graph of `model`; raises CompileError with every mistake found, and
    UsageError when `overrides` (--set, or dslc.load's keywords) name or give a
    hyper-parameter wrongly."""
    return Elaborator(program).model(program.models[model], overrides or {})


def check_overrides(mdef: ast.ModelDef, overrides: dict[str, Any]) -> None:
    """Every hyper-parameter given from outside (--set, or dslc.load's keywords) names one of
    the model's, with a value of its type; a mistake is the caller's (UsageError), all of
    them in one message, each named as it was given (diagnostics.given_as)."""
    declared = {f.name: f.type for f in mdef.formals}
    problems = []
    for key, value in overrides.items():
        named = given_as(key)
        if key not in declared:
            hint = did_you_mean(key, declared) or (f"'{mdef.name}' takes: {', '.join(sorted(declared))}" if declared
                                                   else f"'{mdef.name}' has no hyper-parameters")
            problems.append(f"{named}: model '{mdef.name}' has no hyper-parameter '{key}'; {hint}")
        elif declared[key] in HYPER_TYPES and as_hyper(value, declared[key]) is None:
            problems.append(f"{named}: hyper-parameter '{key}' is {declared[key]}, got {describe(value)}")
    if problems:
        raise UsageError("\n".join(problems))
