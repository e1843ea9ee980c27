"""Binding a call `f(args, k=v)` to what `f` names: an op, a block or an initialiser.

For an op: its tensor inputs come first (`x |> op(...)` supplies the first), further
positional arguments fill its attributes in declaration order, keywords name them;
then the parameters the layer creates are added as inputs, and the op's shape rule
types the node. A block is inlined: its body runs in a fresh `Scope` whose names are
the block's formals, and its layers get the instance's name as prefix.

`Calls` is a mixin of the `Elaborator` (resolve.py), which supplies `error`, `eval`,
`want_tensor`, `unknown_name`, `make_node` and `block_body`.
"""
from __future__ import annotations

from typing import Any, Callable

from dslc.diagnostics import Span, did_you_mean
from dslc.frontend import ast
from dslc.frontend.values import (HYPER_TYPES, POISON, Abort, ParamGroup, Poison, Scope, Symbol, Tensor, as_hyper,
                                  describe, poisoned)
from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Init
from dslc.ir.types import TensorType
from dslc.ops import registry
from dslc.ops.attrs import AttrError, convert_attr, convert_init
from dslc.ops.init import INITS

MAX_BLOCK_DEPTH = 64
# Attribute kinds for which a bare name is a value (pad=same, init=xavier): a misspelt
# one gets the attribute's own did-you-mean, not "unknown name".
_SYMBOL_KINDS = ("enum", "init", "pad", "str")


class Calls:
    # What the Elaborator (resolve.py) supplies; declared here for readers and the type checker.
    program: Any  # the Program being elaborated
    builder: GraphBuilder
    weights: list[str]
    called: set[str]
    error: Callable[..., Abort]
    eval: Callable[[Any, Scope], Any]
    want_tensor: Callable[[Any, Span, Scope, str], Tensor]
    unknown_name: Callable[..., Abort]  # (sym, scope, also=()): E0201 with its did-you-mean
    make_node: Callable[[str, list[str], dict, Span, str, Scope], Tensor]
    constant: Callable[[Any, str, Span], Tensor]
    block_body: Callable[[Any, Scope], None]

    def call(self, c: ast.Call, scope: Scope, piped=None):
        """The value of call `c`; `piped` is the value of `c.piped` when the caller has it."""
        if c.func in self.program.blocks:
            return self.block_call(c, scope, piped)
        if c.func in INITS:
            return self.init_call(c, scope)
        op = registry.all_ops().get(c.func)
        if op is None:
            known = [n for n, o in registry.all_ops().items() if o.category not in registry.INTERNAL]
            raise self.error(scope, "E0202", f"unknown op or block '{c.func}'", c.func_span,
                             did_you_mean(c.func, known + list(self.program.blocks) + list(INITS))
                             or "`dslc ops` lists every op")
        if op.category in registry.INTERNAL:
            raise self.error(scope, "E0205", f"'{c.func}' is an op the compiler emits itself ({op.category}); "
                             "a program cannot call it", c.func_span,
                             "declare inputs and parameters with `input` and `param`" if op.category == "source"
                             else "`dslc ops` lists the ops a program can call")
        return self.op_call(op, c, scope, piped)

    def _args(self, c: ast.Call, scope: Scope, piped=None) -> tuple[list, list]:
        """The values and spans of the positional arguments, the piped value first."""
        args = ([c.piped] if c.piped is not None else []) + list(c.args)
        values = [piped if piped is not None and a is c.piped else self.eval(a, scope) for a in args]
        return values, [a.span for a in args]

    # ---- initialisers

    def init_value(self, e, scope: Scope) -> Init:
        """An initialiser written as `xavier`, `xavier()` or `kaiming(mode=fan_out)`."""
        if isinstance(e, ast.Call) and e.func not in INITS and e.func not in self.program.blocks:
            raise self.error(scope, "E0221", f"unknown initialiser '{e.func}'", e.func_span,
                             did_you_mean(e.func, INITS) or f"one of {', '.join(INITS)}")
        v = self.eval(e, scope)
        if poisoned(v):
            raise Abort()
        if isinstance(v, Init):
            return v
        if isinstance(v, Symbol) and v.id in INITS:
            return Init(v.id)
        name = v.id if isinstance(v, Symbol) else None
        raise self.error(scope, "E0221", f"expected an initialiser, got {name or describe(v)}", e.span,
                         did_you_mean(name, INITS) if name else f"one of {', '.join(INITS)}")

    def init_call(self, c: ast.Call, scope: Scope) -> Init | Poison:
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
            if kw.name in given:
                raise self.error(scope, "E0214", f"argument '{kw.name}' given twice", kw.span)
            given[kw.name] = kw.value
        out = []
        for name, default, choices in spec.args:
            if name not in given:
                continue
            value = self.eval(given[name], scope)
            if poisoned(value):
                return POISON
            try:
                out.append((name, convert_init(value, default, choices, name)))
            except AttrError as err:
                raise self.error(scope, "E0212", f"{c.func}(): {err}", given[name].span, err.hint) from None
        return Init(c.func, tuple(sorted(out)))

    # ---- ops

    def op_call(self, op: registry.OpDef, c: ast.Call, scope: Scope, piped=None):
        values, spans = self._args(c, scope, piped)
        if any(poisoned(v) for v in values):
            return POISON
        n_in = len(op.inputs)
        if op.variadic:
            n_in = next((i for i, v in enumerate(values) if not isinstance(v, (Tensor, ParamGroup))), len(values))
            self._misspelt_input(op, values, n_in, scope)
        tensors, positional = values[:n_in], values[n_in:]
        slots = op.inputs + (op.inputs[-1:] * len(tensors) if op.variadic else ())
        like = next((v for v in tensors if isinstance(v, Tensor)), None)
        if op.elementwise == "broadcast" and like is not None:
            # a number in a tensor slot of a broadcasting op is a scalar: maximum(x, 0), pow(x, 2)
            tensors = [self.constant(v, like.type.dtype, s) if _is_number(v) else v for v, s in zip(tensors, spans)]
        inputs: list[str] = []
        for v, s, slot in zip(tensors, spans, slots):
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
        name = self.builder.unique(scope.prefix + op.name)
        inputs += self._make_params(op, inputs, attrs, name, c, scope)
        return self.make_node(op.name, inputs, attrs, c.span, name, scope)

    def _misspelt_input(self, op: registry.OpDef, values: list, n_in: int, scope: Scope) -> None:
        """Unknown name for a bare name among a variadic op's inputs, where it can only be a
        misspelt tensor: first (`l2(weightz)`), before a tensor (`stack(xx, x)`), or where no
        attribute takes a name (`l2(W, weightz)`). Elsewhere it binds an attribute, as `pad=same` does."""
        for i in range(n_in, len(values)):
            v, k = values[i], i - n_in
            if not isinstance(v, Symbol):
                continue
            takes_name = k < len(op.attrs) and op.attrs[k].kind.removeprefix("optional_") in _SYMBOL_KINDS
            if n_in == 0 or not takes_name or any(isinstance(w, (Tensor, ParamGroup)) for w in values[i + 1:]):
                raise self.unknown_name(v, scope, ("weights",) if op.category == "regulariser" else ())

    def _bind_attrs(self, op: registry.OpDef, positional, spans, c: ast.Call, scope: Scope) -> dict:
        names = [a.name for a in op.attrs]
        if len(positional) > len(names):
            raise self.error(scope, "E0211", f"{op.name} takes {len(op.inputs)} tensor input(s) and "
                             f"{len(names)} attribute(s); got {len(positional)} extra positional argument(s)",
                             spans[len(names)], hint=f"its attributes are: {', '.join(names)}" if names else None)
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
            if poisoned(value):
                raise Abort()
            if _has_tensor(value):
                raise self.error(scope, "E0216", f"{op.name} attribute '{a.name}' must be a compile-time "
                                 "value, got a tensor", span)
            try:
                out[a.name] = convert_attr(a, value)
            except AttrError as err:
                if isinstance(value, Symbol) and a.kind.removeprefix("optional_") not in _SYMBOL_KINDS:
                    raise self.unknown_name(value, scope) from None
                raise self.error(scope, "E0212", f"{op.name} attribute '{a.name}': {err}", span, err.hint) from None
        return out

    def _make_params(self, op: registry.OpDef, inputs: list[str], attrs: dict, name: str, c: ast.Call,
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
                raise self.error(scope, err.code, err.message, c.span, err.hint) from None
            if not all(isinstance(d, int) for d in shape):
                raise self.error(scope, "E0303", f"{op.name} would create parameter '{slot.name}' of symbolic "
                                 f"shape [{', '.join(map(str, shape))}]", c.span,
                                 hint="parameters need fixed sizes; only the batch dimension may be symbolic")
            init = full[slot.init] if isinstance(slot.init, str) else slot.init
            dtype = next((t.dtype for t in types if t.is_float), "f32")
            pname = f"{name}.{slot.name}"
            self.builder.source(pname, "param", TensorType(dtype, shape),
                                {"init": init, "trainable": slot.role != "state", "role": slot.role}, c.span)
            if slot.role == "weight":
                self.weights.append(pname)
            made.append(pname)
        return made

    # ---- blocks

    def block_call(self, c: ast.Call, scope: Scope, piped=None):
        block = self.program.blocks[c.func]
        if len(scope.chain) >= MAX_BLOCK_DEPTH:
            raise self.error(scope, "E0255", f"block '{c.func}' calls itself without end", c.func_span)
        self.called.add(c.func)
        values, spans = self._args(c, scope, piped)
        if any(poisoned(v) for v in values):
            return POISON
        formals = {}
        for f in block.formals:
            if f.name in formals:
                raise self.error(scope, "E0204", f"parameter '{f.name}' is declared twice", f.span)
            if f.type is not None and f.type not in HYPER_TYPES:
                raise self.error(scope, "E0231", f"unknown hyper-parameter type '{f.type}'", f.span,
                                 did_you_mean(f.type, HYPER_TYPES) or
                                 "one of int, float, bool, str; a tensor parameter has no type")
            formals[f.name] = f
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
            if poisoned(value):
                return POISON
            if f.type is None:
                value = self.want_tensor(value, span, scope, f"block '{block.name}' argument '{f.name}'")
            else:
                checked = as_hyper(value, f.type)
                if checked is None:
                    raise self.error(scope, "E0233", f"block '{block.name}' parameter '{f.name}' is {f.type}, "
                                     f"got {describe(value)}", span)
                value = checked
            inner.vars[f.name] = value
        self.block_body(block.body, inner)
        if inner.returned is None:  # reported with the call site as a note
            raise self.error(inner, "E0256", f"block '{block.name}' returns nothing", block.name_span,
                             hint="end the block with `return VALUE`")
        return inner.returned


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _has_tensor(v) -> bool:
    return isinstance(v, Tensor) or (isinstance(v, list) and any(_has_tensor(i) for i in v))
