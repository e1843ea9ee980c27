"""Elaboration: a model's AST -> the typed graph IR, with every mistake located.

Blocks are expanded where they are called (their layers get hierarchical names such
as `residual_1.conv_bn_relu.conv2d`), `repeat` is unrolled, hyper-parameters are
plain Python values folded at compile time, and each op call is bound to its
`OpDef`: tensor inputs first, then attributes by position or keyword, then the
parameters the layer creates, then the op's shape rule gives the result type.

Errors do not stop elaboration: the failing value becomes `POISON`, which silences
everything computed from it, so independent mistakes are all reported in one run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dslc.diagnostics import CompileError, Diagnostic, Span, did_you_mean
from dslc.frontend import ast
from dslc.frontend.program import Program
from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Graph, Init, Output
from dslc.ir.types import DTYPES, Sym, TensorType
from dslc.ops import registry
from dslc.ops.attrs import AttrError, convert_attr, convert_init
from dslc.ops.init import INITS

HYPER_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
MAX_BLOCK_DEPTH = 64


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


class _Poison:
    def __repr__(self):
        return "POISON"


POISON = _Poison()


class _Abort(Exception):
    """Unwinds one statement after its diagnostic has been recorded."""


@dataclass
class Scope:
    prefix: str  # "" for the model, "residual_1." inside a block instance
    vars: dict[str, Any]
    in_block: str | None = None
    chain: tuple[tuple[str, Span], ...] = ()  # block calls that led here, for notes
    returned: Any = None


@dataclass
class Elaborator:
    program: Program
    builder: GraphBuilder = field(default_factory=GraphBuilder)
    errors: list[Diagnostic] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)

    # ---- diagnostics

    def error(self, scope: Scope, code: str, message: str, span: Span, hint: str | None = None) -> _Abort:
        d = Diagnostic(code, message, span, hint)
        for block, call_span in reversed(scope.chain):
            d.with_note(call_span, f"in block '{block}' called here")
        self.errors.append(d)
        return _Abort()

    # ---- models

    def model(self, mdef: ast.ModelDef, overrides: dict[str, Any], override_span: Span | None) -> Graph:
        scope = Scope("", {})
        hyper = self._bind_hyper(mdef, overrides, override_span)
        scope.vars.update(hyper)
        self.block_body(mdef.body, scope)
        if not self.errors:
            self._check_model(mdef)
        if self.errors:
            raise CompileError(self.errors)
        return self.builder.graph(mdef.name, self.outputs, "typed")

    def _bind_hyper(self, mdef: ast.ModelDef, overrides: dict[str, Any], span: Span | None) -> dict:
        values: dict[str, Any] = {}
        scope = Scope("", values)
        for f in mdef.formals:
            if f.type is None:
                self.error(scope, "E0230", f"model parameter '{f.name}' needs a type (int, float, bool or str)",
                           f.span)
                continue
            if f.type not in HYPER_TYPES:
                self.error(scope, "E0231", f"unknown hyper-parameter type '{f.type}'", f.span,
                           did_you_mean(f.type, HYPER_TYPES))
                continue
            if f.name in overrides:
                value = overrides[f.name]
            elif f.default is not None:
                try:
                    value = self.eval(f.default, scope)
                except _Abort:
                    continue
            else:
                self.error(scope, "E0232", f"hyper-parameter '{f.name}' has no default; give one with "
                           f"--set {f.name}=VALUE", f.span)
                continue
            checked = _as_hyper(value, f.type)
            if checked is None:
                where = f.default.span if f.name not in overrides and f.default is not None else f.span
                self.error(scope, "E0233", f"hyper-parameter '{f.name}' is {f.type}, got {_describe(value)}",
                           where)
                continue
            values[f.name] = checked
        known = {f.name for f in mdef.formals}
        for k in overrides:
            if k not in known:
                hint = did_you_mean(k, known) or (f"'{mdef.name}' takes: {', '.join(sorted(known))}" if known
                                                  else f"'{mdef.name}' has no hyper-parameters")
                self.error(scope, "E0234", f"--set {k}: model '{mdef.name}' has no hyper-parameter '{k}'",
                           span or mdef.name_span, hint)
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
            try:
                self.stmt(stmt, scope)
            except _Abort:
                if isinstance(stmt, ast.Return):
                    scope.returned = POISON
                target = getattr(stmt, "target", None) or getattr(stmt, "name", None)
                if target and not isinstance(stmt, (ast.OutputDecl,)):
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
                raise self.error(scope, "E0247", "'return' outside a block", s.span)
            scope.returned = self.eval(s.value, scope)
        elif isinstance(s, ast.Repeat):
            count = self.eval(s.count, scope)
            if type(count) is not int or count < 0:
                raise self.error(scope, "E0248", f"repeat count must be a non-negative int, got {_describe(count)}",
                                 s.count.span)
            for i in range(count):
                if s.index:
                    scope.vars[s.index] = i
                self.block_body(s.body, scope)

    def _check_free(self, name: str, span: Span, scope: Scope) -> None:
        if name in scope.vars:
            raise self.error(scope, "E0249", f"'{name}' is already defined", span)

    def param_decl(self, s: ast.ParamDecl, scope: Scope) -> None:
        t = self.tensor_type(s.type, scope, allow_symbolic=False)
        if s.init is None:
            raise self.error(scope, "E0220", f"parameter '{s.name}' needs an initialiser", s.span,
                             hint="for example `= kaiming()` or `= zeros()`")
        init = self.init_value(s.init, scope)
        self._check_free(s.name, s.span, scope)
        role = "weight" if t.rank >= 2 else "bias"
        name = self.builder.source(s.name, "param", t, {"init": init, "trainable": True, "role": role}, s.span)
        if role == "weight":
            self.weights.append(name)
        scope.vars[s.name] = Tensor(name, t)

    def assign(self, s: ast.Assign, scope: Scope) -> None:
        if s.label is None:
            scope.vars[s.target] = self.tensor_or_value(s.value, scope)
            return
        # A label names the statement's single layer, or prefixes its several layers.
        label = scope.prefix + s.label
        if label in self.builder.index or label in self.builder._taken:
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
        name = s.name or (s.value.func if isinstance(s.value, ast.Call) else None)
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
        dims = []
        for d in te.dims:
            value = self.eval(d, scope, symbols=True)
            if isinstance(value, Symbol):
                if not allow_symbolic:
                    raise self.error(scope, "E0261", f"parameter shapes must be fixed; '{value.id}' is not "
                                     "a hyper-parameter", d.span, did_you_mean(value.id, scope.vars))
                dims.append(Sym.of(value.id))
            elif type(value) is int and value > 0:
                dims.append(value)
            else:
                raise self.error(scope, "E0262", f"a dimension must be a positive int or a symbol, got "
                                 f"{_describe(value)}", d.span)
        return TensorType(te.dtype, tuple(dims))

    # ---- expressions

    def tensor_or_value(self, e, scope: Scope):
        value = self.eval(e, scope)
        if value is POISON:
            raise _Abort()
        return value

    def want_tensor(self, value, span: Span, scope: Scope, what: str) -> Tensor:
        if value is POISON:
            raise _Abort()
        if isinstance(value, Tensor):
            return value
        if isinstance(value, Symbol):
            raise self.unknown_name(value, scope)
        raise self.error(scope, "E0270", f"{what} must be a tensor, got {_describe(value)}", span)

    def unknown_name(self, sym: Symbol, scope: Scope) -> _Abort:
        candidates = [k for k, v in scope.vars.items() if v is not POISON]
        return self.error(scope, "E0201", f"unknown name '{sym.id}'", sym.span, did_you_mean(sym.id, candidates))

    def eval(self, e, scope: Scope, symbols: bool = False):
        """Value of an expression: a Python value, a Tensor, a Symbol, Init, ParamGroup, or POISON."""
        if isinstance(e, (ast.Num, ast.Str, ast.Bool)):
            return e.value
        if isinstance(e, ast.Name):
            if e.id in scope.vars:
                return scope.vars[e.id]
            if e.id == "weights":
                return ParamGroup(tuple(self.weights))
            return Symbol(e.id, e.span)
        if isinstance(e, ast.ListLit):
            return [self.eval(i, scope, symbols) for i in e.items]
        if isinstance(e, ast.Neg):
            v = self.eval(e.operand, scope)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v
            return self.arith("neg", [v], [e.operand.span], e.span, scope)
        if isinstance(e, ast.BinOp):
            a, b = self.eval(e.left, scope), self.eval(e.right, scope)
            return self.arith(e.op, [a, b], [e.left.span, e.right.span], e.span, scope)
        if isinstance(e, ast.Call):
            return self.call(e, scope)
        raise TypeError(f"unknown expression {e!r}")

    def arith(self, op: str, values: list, spans: list[Span], span: Span, scope: Scope):
        if any(v is POISON for v in values):
            return POISON
        for v, s in zip(values, spans):
            if isinstance(v, Symbol):
                raise self.unknown_name(v, scope)
            if not isinstance(v, (Tensor, int, float)) or isinstance(v, bool):
                raise self.error(scope, "E0271", f"cannot use {_describe(v)} in arithmetic", s)
        if not any(isinstance(v, Tensor) for v in values):
            return _fold(op, values, span, self, scope)
        if op == "matmul" and not all(isinstance(v, Tensor) for v in values):
            raise self.error(scope, "E0271", "'@' needs two tensors", span)
        dtype = next(v.type.dtype for v in values if isinstance(v, Tensor))
        names = [v.name if isinstance(v, Tensor) else self.builder.const(float(v), dtype, span) for v in values]
        return self.make_node(op, names, {}, span, self.builder.unique(scope.prefix + op), scope)

    def make_node(self, op: str, inputs: list[str], attrs: dict, span: Span, name: str, scope: Scope) -> Tensor:
        """Append a node named `name` (already unique); a shape error becomes a diagnostic."""
        try:
            node = self.builder.add(op, inputs, attrs, span, name=name)
        except registry.ShapeError as err:
            raise self.error(scope, err.code, err.message, span, err.hint) from None
        return Tensor(node, self.builder.type_of(node))

    def init_value(self, e, scope: Scope) -> Init:
        """An initialiser written as `xavier`, `xavier()` or `kaiming(mode=fan_out)`."""
        v = self.eval(e, scope)
        if isinstance(v, Init):
            return v
        if isinstance(v, Symbol) and v.id in INITS:
            return Init(v.id)
        name = v.id if isinstance(v, Symbol) else None
        raise self.error(scope, "E0221", f"expected an initialiser, got {name or _describe(v)}", e.span,
                         did_you_mean(name, INITS) if name else f"one of {', '.join(INITS)}")

    # ---- calls

    def call(self, c: ast.Call, scope: Scope):
        if c.func in self.program.blocks:
            return self.block_call(c, scope)
        if c.func in INITS:
            return self.init_call(c, scope)
        ops = registry.all_ops()
        if c.func not in ops or ops[c.func].category == "source":
            known = list(ops) + list(self.program.blocks) + list(INITS)
            raise self.error(scope, "E0202", f"unknown op or block '{c.func}'", c.func_span,
                             did_you_mean(c.func, known) or "`dslc ops` lists every op")
        return self.op_call(ops[c.func], c, scope)

    def _args(self, c: ast.Call, scope: Scope) -> tuple[list, list[Span]]:
        args = ([c.piped] if c.piped is not None else []) + list(c.args)
        return [self.eval(a, scope) for a in args], [a.span for a in args]

    def init_call(self, c: ast.Call, scope: Scope) -> Init:
        if c.piped is not None:
            raise self.error(scope, "E0222", f"'{c.func}' is an initialiser, not a layer", c.func_span)
        spec = INITS[c.func]
        names = [a[0] for a in spec.args]
        if len(c.args) > len(names):
            raise self.error(scope, "E0211", f"{c.func}() takes at most {len(names)} arguments", c.span)
        given = dict(zip(names, c.args))
        for kw in c.kwargs:
            if kw.name not in names:
                raise self.error(scope, "E0210", f"{c.func}() has no argument '{kw.name}'", kw.span,
                                 did_you_mean(kw.name, names) or (f"it takes: {', '.join(names)}" if names else
                                                                  "it takes no arguments"))
            given[kw.name] = kw.value
        out = []
        for name, default, choices in spec.args:
            if name not in given:
                continue
            try:
                out.append((name, convert_init(self.eval(given[name], scope), default, choices, name)))
            except AttrError as err:
                raise self.error(scope, "E0212", f"{c.func}(): {err}", given[name].span, err.hint)
        return Init(c.func, tuple(sorted(out)))

    def op_call(self, op: registry.OpDef, c: ast.Call, scope: Scope):
        values, spans = self._args(c, scope)
        if any(v is POISON for v in values):
            return POISON
        n_in = len(values) if op.variadic else len(op.inputs)
        if op.variadic:
            n_in = next((i for i, v in enumerate(values) if not isinstance(v, (Tensor, ParamGroup))), len(values))
        tensors, positional = values[:n_in], values[n_in:]
        inputs: list[str] = []
        for v, s, slot in zip(tensors, spans, op.inputs + (op.inputs[-1:] * len(tensors) if op.variadic else ())):
            if isinstance(v, ParamGroup) and op.variadic:
                inputs.extend(v.names)
                continue
            inputs.append(self.want_tensor(v, s, scope, f"{op.name} input '{slot.lstrip('*')}'").name)
        if len(inputs) < len(op.inputs) and not op.variadic:
            missing = ", ".join(op.inputs[len(inputs):])
            raise self.error(scope, "E0213", f"{op.name} expects {len(op.inputs)} tensor input"
                             f"{'s' if len(op.inputs) > 1 else ''} ({', '.join(op.inputs)}); missing {missing}",
                             c.span, hint="`x |> op(...)` passes x as the first input")
        if op.variadic and not inputs:
            raise self.error(scope, "E0213", f"{op.name} expects at least one tensor input", c.span)
        attrs = self._bind_attrs(op, positional, spans[n_in:], c, scope)
        base = scope.prefix + op.name
        name = self.builder.unique(base)
        inputs += self._make_params(op, inputs, attrs, name, c.span, scope)
        return self.make_node(op.name, inputs, attrs, c.span, name, scope)

    def _bind_attrs(self, op: registry.OpDef, positional, spans, c: ast.Call, scope: Scope) -> dict:
        names = [a.name for a in op.attrs]
        if len(positional) > len(names):
            raise self.error(scope, "E0211", f"{op.name} takes {len(op.inputs)} tensor input(s) and "
                             f"{len(names)} attribute(s); got {len(positional)} extra positional argument(s)",
                             spans[len(names)] if spans[len(names):] else c.span,
                             hint=f"its attributes are: {', '.join(names)}" if names else None)
        raw = dict(zip(names, zip(positional, spans)))
        for kw in c.kwargs:
            if kw.name not in names:
                raise self.error(scope, "E0210", f"{op.name} has no attribute '{kw.name}'", kw.span,
                                 did_you_mean(kw.name, names) or (f"its attributes are: {', '.join(names)}"
                                                                  if names else f"{op.name} takes no attributes"))
            if kw.name in raw:
                raise self.error(scope, "E0214", f"attribute '{kw.name}' given twice", kw.span)
            raw[kw.name] = (self.eval(kw.value, scope), kw.value.span)
        out = {}
        for a in op.attrs:
            if a.name not in raw:
                if a.required:
                    raise self.error(scope, "E0215", f"{op.name} needs attribute '{a.name}'", c.span,
                                     f"for example {op.name}({a.name}=...)")
                continue
            value, span = raw[a.name]
            if value is POISON:
                raise _Abort()
            if isinstance(value, Tensor):
                raise self.error(scope, "E0216", f"{op.name} attribute '{a.name}' must be a compile-time "
                                 "value, got a tensor", span)
            try:
                out[a.name] = convert_attr(a, value)
            except AttrError as err:
                if isinstance(value, Symbol) and a.kind not in ("enum", "init"):
                    raise self.unknown_name(value, scope)
                raise self.error(scope, "E0212", f"{op.name} attribute '{a.name}': {err}", span, err.hint)
        return out

    def _make_params(self, op: registry.OpDef, inputs: list[str], attrs: dict, name: str, span: Span,
                     scope: Scope) -> list[str]:
        types = [self.builder.type_of(i) for i in inputs]
        full = {a.name: a.default for a in op.attrs if not a.required} | attrs
        made = []
        for slot in op.params:
            if not slot.present(full):
                continue
            try:
                shape = tuple(slot.shape(types, full))
            except registry.ShapeError as err:
                raise self.error(scope, err.code, err.message, span, err.hint)
            bad = [d for d in shape if not isinstance(d, int)]
            if bad:
                raise self.error(scope, "E0303", f"{op.name} would create parameter '{slot.name}' of symbolic "
                                 f"shape [{', '.join(map(str, shape))}]", span,
                                 hint="parameters need fixed sizes; only the batch dimension may be symbolic")
            init = full[slot.init] if isinstance(slot.init, str) else slot.init
            dtype = next((t.dtype for t in types if t.is_float), "f32")
            pname = f"{name}.{slot.name}"
            self.builder.source(pname, "param", TensorType(dtype, shape),
                                {"init": init, "trainable": slot.role != "state", "role": slot.role}, span)
            if slot.role == "weight":
                self.weights.append(pname)
            made.append(pname)
        return made

    def block_call(self, c: ast.Call, scope: Scope):
        block = self.program.blocks[c.func]
        if len(scope.chain) >= MAX_BLOCK_DEPTH:
            raise self.error(scope, "E0255", f"block '{c.func}' calls itself without end", c.func_span)
        values, spans = self._args(c, scope)
        if any(v is POISON for v in values):
            return POISON
        formals = {f.name: f for f in block.formals}
        if len(values) > len(block.formals):
            raise self.error(scope, "E0211", f"block '{block.name}' takes {len(block.formals)} argument(s), "
                             f"got {len(values)}", c.span)
        bound = {f.name: (v, s) for f, v, s in zip(block.formals, values, spans)}
        for kw in c.kwargs:
            if kw.name not in formals:
                raise self.error(scope, "E0210", f"block '{block.name}' has no parameter '{kw.name}'", kw.span,
                                 did_you_mean(kw.name, formals))
            if kw.name in bound:
                raise self.error(scope, "E0214", f"argument '{kw.name}' given twice", kw.span)
            bound[kw.name] = (self.eval(kw.value, scope), kw.value.span)
        name = self.builder.unique(scope.prefix + block.name)
        inner = Scope(name + ".", {}, block.name, scope.chain + ((block.name, c.span),))
        for f in block.formals:
            if f.name in bound:
                value, span = bound[f.name]
            elif f.default is not None:
                value, span = self.eval(f.default, inner), f.default.span
            else:
                raise self.error(scope, "E0217", f"block '{block.name}' needs argument '{f.name}'", c.span)
            if value is POISON:
                return POISON
            if f.type is None:
                value = self.want_tensor(value, span, scope, f"block '{block.name}' argument '{f.name}'")
            else:
                checked = _as_hyper(value, f.type) if f.type in HYPER_TYPES else None
                if checked is None:
                    raise self.error(scope, "E0233", f"block '{block.name}' parameter '{f.name}' is {f.type}, "
                                     f"got {_describe(value)}", span)
                value = checked
            inner.vars[f.name] = value
        self.block_body(block.body, inner)
        if inner.returned is None:
            raise self.error(scope, "E0256", f"block '{block.name}' returns nothing", block.name_span,
                             hint="end the block with `return VALUE`")
        return inner.returned


def _as_hyper(value, type_name: str):
    if type_name == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type_name == "int" and type(value) is int:
        return value
    if type_name == "bool" and isinstance(value, bool):
        return value
    if type_name == "str" and isinstance(value, (str, Symbol)):
        return value.id if isinstance(value, Symbol) else value
    return None


def _describe(v) -> str:
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


def _fold(op: str, values, span: Span, el: Elaborator, scope: Scope):
    """Arithmetic on compile-time numbers (hyper-parameters), done now."""
    if op == "neg":
        return -values[0]
    a, b = values
    if op == "div":
        if b == 0:
            raise el.error(scope, "E0272", "division by zero", span)
        return a // b if type(a) is int and type(b) is int and a % b == 0 else a / b
    if op == "matmul":
        raise el.error(scope, "E0271", "'@' needs two tensors", span)
    return {"add": a + b, "sub": a - b, "mul": a * b}[op]


def elaborate(program: Program, model: str, overrides: dict[str, Any] | None = None,
              override_span: Span | None = None) -> Graph:
    """The typed graph of `model`; raises CompileError with every mistake found."""
    return Elaborator(program).model(program.models[model], overrides or {}, override_span)
