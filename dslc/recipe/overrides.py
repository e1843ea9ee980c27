"""Command-line overrides of a recipe: `--set epochs=5 --set optimizer.lr=3e-3`.

An override is a value, never source text: each one is read on its own as exactly one
.net expression (`parse_expression`), or taken as a plain string where the setting wants
text (`--set init.path=runs/a/best`), or built directly from a Python value. The recipe is
then rebuilt as an AST, its unchanged settings turned back into expressions by their value
types (`expr`), the overrides put in, and the whole checked again by `recipe.validate`, so
a value passes exactly the checks it would pass written in the file, cross-setting rules
included. Nothing is rendered to text and parsed again: a `}` in a value is a syntax error
in that value, not the end of the recipe.

Every expression carries a span whose file names where it came from (`--set
optimizer.lr=-1`, or `the recipe's schedule`), which is how an error is attributed:

    apply_overrides(r, {"epochs": "5", "optimizer.lr": "0.01", "augment": "[hflip()]"})
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from dslc.diagnostics import CompileError, Diagnostic, Span, UsageError, did_you_mean, printable
from dslc.frontend import ast
from dslc.frontend.parse import parse_expression
from dslc.recipe.schema import KEYS, Recipe, validate
from dslc.frontend.recipe_values import TEXT, Bad, CallValue, ListOf, Word


def apply_overrides(recipe: Recipe, sets: dict[str, Any], model_graph=None) -> Recipe:
    """The recipe with command-line settings applied and re-checked; raises UsageError.

    Whole settings are applied first, then `key.arg` ones to the resulting calls, and the
    result is checked once, as a file with all of them written in would be (`--epochs 1
    --set schedule.warmup=0` is a valid pair even though the file's warm-up is 1 epoch);
    `epochs` replaces `steps` and the reverse. A value is a string to read as a .net value
    (`"0.01"`, `"adam(lr=1e-3)"`), or a bool, int or float.
    """
    if not sets:
        return recipe
    whole = [k for k in sets if "." not in k and not getattr(KEYS.get(k), "moves_to", None)]
    return _apply(recipe, {k: sets[k] for k in [*whole, *(k for k in sets if k not in whole)]}, model_graph)


def value_expr(raw: Any, typ, where: str):
    """The expression an override gives, spanning `where`: Python values directly, a string
    as one .net expression, or as a string literal where the type wants text and the value
    is not written as a string or a list."""
    span = Span(where, 1, 1, 1, 1)
    if isinstance(raw, bool):
        return ast.Bool(raw, span)
    if isinstance(raw, (int, float)):
        return ast.Neg(ast.Num(-raw, span), span) if raw < 0 else ast.Num(raw, span)
    text = str(raw).strip()
    wants_text = isinstance(typ, Word) or typ is TEXT or (isinstance(typ, ListOf) and typ.item is TEXT)
    if wants_text and not text.startswith(('"', "[")):
        return ast.Str(text, span)
    try:
        return parse_expression(text, where)
    except CompileError as e:
        raise UsageError(f"{where}: cannot read {printable(text)!r} as a value: {e.diagnostics[0].message}") from None


def read_setting(key: str, raw: Any) -> Any:
    """The value `--set key=raw` gives the whole setting `key` on its own, checked as that
    setting's type checks it; UsageError when it gives none (`--set split=}`)."""
    spec = KEYS[key]
    where = _label(key, raw)
    return _converted(spec, value_expr(raw, spec.type, where), where)


class Flagged(int):
    """A setting's value given by a flag of its own (`--epochs 3`): an int wherever it goes
    (config.json records 3), but messages name the flag the user typed, not `--set epochs=3`."""

    flag: str

    def __new__(cls, value: int, flag: str):
        self = super().__new__(cls, value)
        self.flag = flag
        return self

    def __getnewargs__(self):  # what pickle and deepcopy pass __new__: the flag too, not the int alone
        return int(self), self.flag


def _label(dotted: str, raw: Any) -> str:
    if isinstance(raw, Flagged):
        return f"{raw.flag} {int(raw)}"
    return f"--set {dotted}={printable(str(raw))}"


def _apply(recipe: Recipe, sets: dict[str, Any], model_graph) -> Recipe:
    values = dict(recipe.entries)
    exprs: dict[str, Any] = {}  # setting -> its new expression
    args: dict[str, dict[str, Any]] = {}  # setting -> argument -> its new expression
    origin: dict[str, list[str]] = {}  # setting -> the --set labels that change it
    for dotted, raw in sets.items():
        key, _, arg = dotted.partition(".")
        spec = KEYS.get(key)
        if spec is None:
            raise UsageError(f"--set {dotted}: recipes have no setting '{key}'; "
                             + (did_you_mean(key, KEYS) or f"settings: {', '.join(KEYS)}"))
        if spec.moves_to and not arg:
            key, arg = spec.moves_to
            spec = KEYS[key]
        where = _label(dotted, raw)
        origin.setdefault(key, []).append(where.removeprefix("--set "))
        if not arg:
            exprs[key] = value_expr(raw, spec.type, where)
            if spec.excludes:
                values[spec.excludes] = None
            if any(_changes_arg_of(k) == key for k in sets):
                values[key] = _converted(spec, exprs[key], where)  # what `key.arg` overrides then change
            continue
        call = values.get(key)
        if not isinstance(call, CallValue):
            state = "none" if call is None else "not a single call"
            raise UsageError(f"--set {dotted}: '{key}' is {state} here; set it whole first, e.g. --set {key}=...")
        a = spec.type.family[call.name].arg(arg)
        if a is None:
            hint = did_you_mean(arg, [x.name for x in spec.type.family[call.name].args])
            raise UsageError(f"--set {dotted}: {call.name}() has no argument '{arg}'" + (f"; {hint}" if hint else ""))
        args.setdefault(key, {})[arg] = value_expr(raw, a.type, where)
    for key, new in args.items():
        exprs[key] = _call_with(values[key], KEYS[key].type.family[values[key].name], new,
                                Span("--set " + ", ".join(origin[key]), 1, 1, 1, 1))
    result, diagnostics = validate(_train_def(recipe, values, exprs), model_graph)
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        raise UsageError("\n".join(_message(d) for d in errors))
    return replace(result, span=recipe.span, space=recipe.space)


def _changes_arg_of(dotted: str) -> str | None:
    """The setting whose call argument an override changes (`optimizer.lr`, or a shorthand
    such as `weight_decay`), or None for a whole setting."""
    key, _, arg = dotted.partition(".")
    moves = getattr(KEYS.get(key), "moves_to", None)
    return key if arg else moves[0] if moves else None


def _converted(spec, e, where: str):
    """The value a whole setting's expression gives on its own; UsageError when it has none."""
    errors: list[Diagnostic] = []
    try:
        return spec.type.convert(e, spec.name, errors)
    except Bad as bad:
        found = [bad.diag] if bad.diag else errors
        raise UsageError("\n".join(_message(d) for d in found) or f"{where}: not a value of '{spec.name}'") from None


def _call_with(call: CallValue, spec, new: dict[str, Any], span: Span) -> ast.Call:
    """`call` as an expression with the arguments in `new` replaced. An argument still equal
    to its derived default (stop's mode follows its metric) is left out, so it is derived again."""
    kept = [a for a in spec.args if a.name in new or not (callable(a.default) and call[a.name] == a.default(
        call.kwargs))]
    return ast.Call(call.name, (), tuple(ast.Kwarg(a.name, new.get(a.name) or a.type.expr(call[a.name], span), span)
                                         for a in kept), span, span)


def _train_def(recipe: Recipe, values: dict[str, Any], exprs: dict[str, Any]) -> ast.TrainDef:
    """The recipe as a train block: `exprs` for the settings overridden, the others written
    back from their values (a setting that is off and cannot be, data, is left out)."""
    entries = []
    for key, value in values.items():
        spec = KEYS[key]
        if key in exprs:
            e = exprs[key]
        elif value is None:
            if not spec.optional:
                continue
            e = ast.Name("none", Span(f"the recipe's {key}", 1, 1, 1, 1))
        else:
            e = spec.type.expr(value, Span(f"the recipe's {key}", 1, 1, 1, 1))
        entries.append(ast.RecipeEntry(key, e, e.span, e.span))
    span = Span(f"recipe '{recipe.name}'", 1, 1, 1, 1)
    alias = recipe.name if recipe.name != recipe.model else None
    return ast.TrainDef(recipe.model, alias, tuple(entries), span, span)


def _message(d: Diagnostic) -> str:
    """One line: where (an override, or the recipe's unchanged setting), the message, and the
    overrides a note names (`--epochs 1` against the file's warm-up of 1 epoch)."""
    where = printable(d.span.file) if d.span else "recipe"
    settings = [printable(span.file) for span, _ in d.notes if span is not None and span.file.startswith("--")]
    return (f"{where}: {d.message}" + (f" ({d.hint})" if d.hint else "")
            + (f"; given {', '.join(settings)}" if settings else ""))
