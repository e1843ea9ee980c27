"""The value types of training recipes: how an AST expression becomes a checked value.

A recipe setting or a call argument has a type (`Num`, `Lit`, `Word`, `ListOf`, `Calls`)
that converts the expression written for it, reporting a mistake as a located diagnostic,
turns a checked value back into an expression (`expr`) for re-checking with changes
(command-line overrides), and shows it to people (`show`: messages, never parsed). Calls are declared as `CallSpec`s, each argument an `Arg` with
its type and default; the components that implement them (datasets, schedules,
augmentations, optimizers) declare their families beside their code with `family`.

    spec = CallSpec("step", "multiply the rate by gamma every `every` epochs",
                    (Arg("every", POS), Arg("gamma", Num(range=Range(0, 1, lo_open=True)), 0.1)))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from dslc.diagnostics import Diagnostic, Span, did_you_mean, printable
from dslc.frontend import ast

REQUIRED = object()  # an argument or setting without a default


@dataclass(frozen=True, slots=True)
class CallValue:
    """A checked call such as sgd(lr=0.1, ...): every argument in declaration order."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    def __getitem__(self, key: str):
        return dict(self.args)[key]

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    def with_arg(self, key: str, value) -> "CallValue":
        return CallValue(self.name, tuple((k, value if k == key else v) for k, v in self.args))


# ---- value types: each converts an AST expression or raises Bad ----------------

class Bad(Exception):
    """A value that cannot be used; carries its diagnostic, or None when already reported."""

    def __init__(self, diag: Diagnostic | None = None):
        self.diag = diag


def number_of(e):
    """The number an expression writes (`3`, `-1e-3`, `--2`), or None; a loop, since a
    command line could write ten thousand minus signs."""
    sign = 1
    while isinstance(e, ast.Neg):
        sign, e = -sign, e.operand
    return sign * e.value if isinstance(e, ast.Num) else None


def _num_expr(v, span: Span):
    """A number as the expression that writes it: a negative one is a negation."""
    return ast.Neg(ast.Num(-v, span), span) if v < 0 else ast.Num(v, span)


def _quote(s: str) -> str:
    """A string as a .net literal, for messages: escapes for quotes and backslashes, and
    control characters escaped as messages escape them."""
    return '"' + printable(s.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _fmt(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else repr(v)


def _describe(e) -> str:
    if isinstance(e, (ast.Num, ast.Neg)) and number_of(e) is not None:
        return f"the number {number_of(e)}"
    return {ast.Str: "a string", ast.Bool: "true/false", ast.ListLit: "a list"}.get(type(e)) or (
        f"the name '{e.id}'" if isinstance(e, ast.Name) else
        f"a call to {e.func}()" if isinstance(e, ast.Call) else "an expression")


def _wrong(typ, e, label: str) -> Bad:
    return Bad(Diagnostic("E0502", f"{label} must be {typ.what}, got {_describe(e)}", e.span))


@dataclass(frozen=True)
class Range:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v) -> bool:
        return ((self.lo is None or v > self.lo or (v == self.lo and not self.lo_open))
                and (self.hi is None or v < self.hi or (v == self.hi and not self.hi_open)))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


POSITIVE, NONNEG = Range(0, lo_open=True), Range(0)
PROB, FRACTION, BELOW_ONE = Range(0, 1), Range(0, 1, True, True), Range(0, 1, hi_open=True)


@dataclass(frozen=True)
class Num:
    integer: bool = False
    range: Range | None = None

    @property
    def what(self) -> str:
        return "an integer" if self.integer else "a number"

    def accepts(self, e) -> bool:
        return number_of(e) is not None

    def convert(self, e, label: str, errors):
        written = number_of(e)
        if written is None or (self.integer and isinstance(written, float) and not written.is_integer()):
            raise _wrong(self, e, label)
        v = int(written) if self.integer else float(written)
        if not math.isfinite(v) or (self.range and v not in self.range):
            bound = f"{self.range}" if self.range else "finite"
            raise Bad(Diagnostic("E0505", f"{label} must be {bound}, got {written}", e.span))
        return v

    def expr(self, v, span: Span):
        return _num_expr(v, span)

    def show(self, v) -> str:
        return _fmt(v)


@dataclass(frozen=True)
class Lit:
    """A literal of one AST kind: a string (TEXT) or true/false (FLAG)."""

    node: type
    what: str

    def accepts(self, e) -> bool:
        return isinstance(e, self.node)

    def convert(self, e, label: str, errors):
        if not self.accepts(e):
            raise _wrong(self, e, label)
        return e.value

    def expr(self, v, span: Span):
        return self.node(v, span)

    def show(self, v) -> str:
        return _quote(v) if isinstance(v, str) else _fmt(v)


TEXT, FLAG = Lit(ast.Str, "a string"), Lit(ast.Bool, "true or false")


@dataclass(frozen=True)
class Word:
    """A bare name (or a string) such as `per_channel`; any name when `choices` is empty."""

    choices: tuple[str, ...] = ()

    @property
    def what(self) -> str:
        return f"one of {', '.join(self.choices)}" if self.choices else "a name"

    def accepts(self, e) -> bool:
        return isinstance(e, (ast.Name, ast.Str))

    def convert(self, e, label: str, errors):
        if not self.accepts(e):
            raise _wrong(self, e, label)
        v = e.id if isinstance(e, ast.Name) else e.value
        if self.choices and v not in self.choices:
            raise Bad(Diagnostic("E0503", f"{label} must be {self.what}, got '{v}'", e.span,
                                  did_you_mean(v, self.choices)))
        return v

    def expr(self, v: str, span: Span):
        return ast.Str(v, span)

    def show(self, v: str) -> str:
        return v if v.isidentifier() and v.isascii() else _quote(v)


@dataclass(frozen=True)
class ListOf:
    """A list `[a, b]`; a single item stands for a list of one. `size` fixes the length."""

    item: Any
    size: int | None = None

    @property
    def what(self) -> str:
        return f"a list{f' of {self.size}' if self.size else ''} (each {self.item.what})"

    def accepts(self, e) -> bool:
        return isinstance(e, ast.ListLit) or self.item.accepts(e)

    def convert(self, e, label: str, errors):
        if not self.accepts(e):
            raise _wrong(self, e, label)
        items = e.items if isinstance(e, ast.ListLit) else (e,)
        if self.size is not None and len(items) != self.size:
            raise Bad(Diagnostic("E0502", f"{label} must be a list of {self.size} values, got {len(items)}",
                                  e.span))
        out, ok = [], True
        for item in items:
            try:
                out.append(self.item.convert(item, label, errors))
            except Bad as bad:
                ok = False
                errors.extend([bad.diag] if bad.diag else [])
        if not ok:
            raise Bad()
        return tuple(out)

    def expr(self, v, span: Span):
        return ast.ListLit(tuple(self.item.expr(x, span) for x in v), span)

    def show(self, v) -> str:
        return "[" + ", ".join(self.item.show(x) for x in v) + "]"


@dataclass(frozen=True)
class Arg:
    """One argument of a recipe call; `default` may be a function of the other arguments."""

    name: str
    type: Any
    default: Any = REQUIRED
    doc: str = ""
    positional: bool = True


@dataclass(frozen=True)
class CallSpec:
    """A call a setting accepts; `check(args)` returns (code, argument, message) for a bad combination."""

    name: str
    doc: str
    args: tuple[Arg, ...] = ()
    check: Callable[[dict], tuple[str, str, str] | None] | None = None

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)

    def make(self, **given) -> CallValue:
        """The call with `given` arguments and defaults for the rest (no checking)."""
        args = {a.name: given.get(a.name, a.default) for a in self.args}
        for a in self.args:
            if callable(a.default) and a.name not in given:
                args[a.name] = a.default(args)
        return CallValue(self.name, tuple(args.items()))


def arg_expr(e, spec: CallSpec, name: str):
    """The expression written for argument `name` of call `e`, or None when it was left out."""
    if not isinstance(e, ast.Call):
        return None
    for kw in e.kwargs:
        if kw.name == name:
            return kw.value
    args = ((e.piped,) if e.piped is not None else ()) + e.args
    positional = [a.name for a in spec.args if a.positional]
    i = positional.index(name) if name in positional else len(args)
    return args[i] if i < len(args) else None


@dataclass(frozen=True)
class Calls:
    """One call of a family, e.g. an optimizer; `bare_number` names the call a lone number means."""

    family: dict[str, CallSpec]
    noun: str
    bare_number: str | None = None

    @property
    def what(self) -> str:
        return f"{'a number or ' if self.bare_number else ''}a {self.noun} such as {next(iter(self.family))}(...)"

    def accepts(self, e) -> bool:
        return isinstance(e, (ast.Call, ast.Name)) or (self.bare_number is not None and number_of(e) is not None)

    def convert(self, e, label: str, errors):
        if not self.accepts(e):
            raise _wrong(self, e, label)
        if not isinstance(e, (ast.Call, ast.Name)):
            spec = self.family[self.bare_number]
            return spec.make(**{spec.args[0].name: spec.args[0].type.convert(e, label, errors)})
        name, name_span = (e.func, e.func_span) if isinstance(e, ast.Call) else (e.id, e.span)
        spec = self.family.get(name)
        if spec is None:
            raise Bad(Diagnostic("E0503", f"unknown {self.noun} '{name}'", name_span,
                                  did_you_mean(name, self.family) or f"expected one of: {', '.join(self.family)}"))
        args = self._bind(spec, e, label, errors)
        if spec.check and (problem := spec.check(args)):
            code, arg, message = problem
            raise Bad(Diagnostic(code, f"{label} {spec.name}(): {message}", (arg_expr(e, spec, arg) or e).span))
        return CallValue(spec.name, tuple((a.name, args[a.name]) for a in spec.args))

    def _bind(self, spec: CallSpec, e, label: str, errors) -> dict:
        """Match the written arguments to `spec`, convert them and fill in the defaults."""
        label = f"{label} {spec.name}()"
        given: dict[str, Any] = {}
        positional = [a for a in spec.args if a.positional]
        written = ((e.piped,) if getattr(e, "piped", None) is not None else ()) + getattr(e, "args", ())
        problems = [Diagnostic("E0504", f"{label} takes {len(positional)} positional argument(s), got "
                               f"{len(written)}", x.span) for x in written[len(positional):]][:1]
        pairs = [(a, x) for a, x in zip(positional, written)]
        for kw in getattr(e, "kwargs", ()):
            a = spec.arg(kw.name)
            if a is None:
                problems.append(Diagnostic("E0504", f"{label} has no argument '{kw.name}'", kw.span,
                                           did_you_mean(kw.name, [x.name for x in spec.args])))
            elif any(a is b for b, _ in pairs):
                problems.append(Diagnostic("E0504", f"{label}: argument '{kw.name}' is given twice", kw.span))
            else:
                pairs.append((a, kw.value))
        for a, x in pairs:
            try:
                given[a.name] = a.type.convert(x, f"{label}: {a.name}", errors)
            except Bad as bad:
                problems.extend([bad.diag] if bad.diag else [])
                given[a.name] = REQUIRED  # reported; keeps it from also counting as missing
        missing = [a.name for a in spec.args if a.default is REQUIRED and a.name not in given]
        if missing:
            problems.append(Diagnostic("E0504", f"{label} needs argument(s) {', '.join(missing)}", e.span,
                                       f"write e.g. {spec.name}({', '.join(f'{m}=...' for m in missing)})"))
        if problems or any(v is REQUIRED for v in given.values()):
            errors.extend(sorted(problems, key=lambda d: (d.span.line, d.span.col)))
            raise Bad()
        return spec.make(**given).kwargs

    def expr(self, v: CallValue, span: Span):
        """`name(arg=value, ...)` with every argument written out, all at `span`."""
        spec = self.family[v.name]
        return ast.Call(v.name, (), tuple(ast.Kwarg(a.name, a.type.expr(v[a.name], span), span) for a in spec.args),
                        span, span)

    def show(self, v: CallValue) -> str:
        spec = self.family[v.name]
        return f"{v.name}(" + ", ".join(f"{a.name}={a.type.show(v[a.name])}" for a in spec.args) + ")"



def family(*specs: CallSpec) -> dict[str, CallSpec]:
    """The calls a setting accepts, by name, in the order `dslc` lists them."""
    return {s.name: s for s in specs}


def when(bad: Callable[[dict], bool], code: str, arg: str, message: str):
    """A CallSpec check: `message` (formatted with the arguments) about `arg` when `bad(args)`."""
    return lambda args: (code, arg, message.format(**args)) if bad(args) else None


INT_POS, POS, NONNEG_NUM = Num(True, POSITIVE), Num(range=POSITIVE), Num(range=NONNEG)
