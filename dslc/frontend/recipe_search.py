"""Search spaces: the `search { ... }` block of a recipe and `dslc search --space KEY=DIST`.

    train digits_mlp {
        ...
        search {
            lr     = loguniform(1e-4, 1e-1)      # the optimizer's rate, sampled on a log scale
            hidden = choice(32, 64, 128, 256)    # a hyper-parameter of the model
        }
    }

A key is anything `--set` takes: a recipe setting (`batch`), a call's argument
(`optimizer.lr`, `schedule.warmup`), a shorthand (`lr`, `weight_decay`) or a model
hyper-parameter (`hidden`). A value is a distribution:

    uniform(low, high)          a number drawn uniformly
    loguniform(low, high)       a number whose logarithm is uniform (0 < low): rates, decays
    int_uniform(low, high)      an integer in [low, high]
    int_loguniform(low, high)   an integer, log scale (0 < low): widths
    choice(a, b, ...)           one of the values (numbers, strings, true/false, names, calls)

Every bound and value is checked as the setting would check it (a negative learning rate
is E0505 here too), and an integer setting takes only integer distributions or choices;
mistakes specific to the block are E0515. A trial applies a point of the space as --set
pairs (`value_text`), so it trains exactly as `dslc train ... --set` would.

    space, errors = check_space(train.searches, values, hyper={"hidden": "int"})
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from dslc.diagnostics import Diagnostic, Span, did_you_mean
from dslc.frontend import ast
from dslc.frontend.recipe_values import Bad, CallValue, Num, number_of

CODE = "E0515"
KINDS = ("uniform", "loguniform", "int_uniform", "int_loguniform", "choice")


@dataclass(frozen=True)
class Dimension:
    """One axis of a search space. `low`/`high` bound a numeric distribution; `choices` are the
    values of a choice, each a number, a boolean or the .net text of the value."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    span: Span | None = None

    @property
    def log(self) -> bool:
        return self.kind in ("loguniform", "int_loguniform") or (
            self.kind == "choice" and _numeric(self.choices) and min(self.choices) > 0
            and max(self.choices) / min(self.choices) >= 8)

    @property
    def integer(self) -> bool:
        return self.kind.startswith("int_")

    def show(self) -> str:
        """The distribution for people to read, numbers to 4 significant digits: a refined
        round's bounds are any floats (0.0031622776601683794); the values sampled stay exact."""
        if self.kind == "choice":
            return f"choice({', '.join(map(shown, self.choices))})"
        return f"{self.kind}({shown(self.low)}, {shown(self.high)})"

    def to_json(self) -> dict:
        return {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high, "choices": list(self.choices)}

    @classmethod
    def from_json(cls, d: Mapping) -> "Dimension":
        return cls(d["key"], d["kind"], d.get("low"), d.get("high"), tuple(d.get("choices", ())))


def _numeric(values) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def shown(v) -> str:
    """A point's value for people to read (a table, a progress line): floats to 4 significant digits."""
    return f"{v:.4g}" if isinstance(v, float) else value_text(v)


def value_text(v) -> str:
    """A point's value as --set text: numbers as Python writes them, true/false, text as it is."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return repr(v)
    return repr(v) if isinstance(v, (int, float)) else str(v)


# ---- checking ------------------------------------------------------------------------------

def check_space(blocks: tuple[ast.SearchBlock, ...], values: Mapping[str, Any], keys: Mapping,
                hyper: Mapping[str, str] | None = None) -> tuple[tuple[Dimension, ...], list[Diagnostic]]:
    """The dimensions of a train block's search blocks and every mistake in them. `values` are
    the recipe's checked settings, `keys` recipe.KEYS, `hyper` the model's hyper-parameters
    and their types (None: not known, any other key is taken as one)."""
    errors: list[Diagnostic] = []
    for extra in blocks[1:]:
        errors.append(Diagnostic(CODE, "a recipe has one search block", extra.name_span)
                      .with_note(blocks[0].name_span, "the first one is here"))
    dims: dict[str, Dimension] = {}
    for block in blocks[:1]:
        if block.name != "search":
            errors.append(Diagnostic(CODE, f"unknown block '{block.name}' in a train block", block.name_span,
                                     "the one block a recipe holds is `search { KEY = DISTRIBUTION ... }`"))
            continue
        for entry in block.entries:
            setting = setting_key(entry.key, keys)  # `lr` and `optimizer.lr` are one setting
            if setting in dims:
                first = dims[setting]
                what = (f"'{entry.key}' is searched twice" if first.key == entry.key
                        else f"'{first.key}' and '{entry.key}' are one setting, searched twice")
                errors.append(Diagnostic("E0508", what, entry.key_span).with_note(first.span, "first here"))
                continue
            dim = dimension(entry.key, entry.value, entry.key_span, values, keys, hyper, errors)
            if dim is not None:
                dims[setting] = dim
    return tuple(dims.values()), errors


def setting_key(key: str, keys: Mapping) -> str:
    """The setting a search key names: a shorthand (`lr`) as the call argument it moves to
    (`optimizer.lr`), any other key as it is. Two keys of one setting are one dimension."""
    spec = keys.get(key)
    return ".".join(spec.moves_to) if spec is not None and spec.moves_to else key


def setting_type(key: str, values: Mapping[str, Any], keys: Mapping, hyper: Mapping[str, str] | None):
    """(value type, label) that checks values of --set `key`; (None, label) for a model
    hyper-parameter of unknown type; raises LookupError (with a hint) for an unknown key."""
    head, _, arg = key.partition(".")
    spec = keys.get(head)
    if spec is not None and spec.moves_to and not arg:
        head, arg = spec.moves_to
        spec = keys[head]
    if spec is None:
        if "." not in key and (hyper is None or key in hyper):
            kind = (hyper or {}).get(key)
            return (Num(True) if kind == "int" else Num() if kind == "float" else None), key
        known = list(keys) + list(hyper or ())
        raise LookupError(did_you_mean(head, known) or f"settings: {', '.join(keys)}; "
                          f"hyper-parameters: {', '.join(hyper or ()) or 'none'}")
    if not arg:
        return spec.type, key
    call = values.get(head)
    found = spec.type.family[call.name].arg(arg) if isinstance(call, CallValue) else None
    if found is None:
        what = f"{call.name}()" if isinstance(call, CallValue) else f"'{head}'"
        raise LookupError(f"{what} has no argument '{arg}'")
    return found.type, f"{head} {call.name}(): {arg}"


def dimension(key: str, e, key_span: Span, values: Mapping[str, Any], keys: Mapping,
              hyper: Mapping[str, str] | None, errors: list[Diagnostic]) -> Dimension | None:
    """The Dimension `key = e` writes, or None after reporting why it is not one."""
    try:
        typ, label = setting_type(key, values, keys, hyper)
    except LookupError as hint:
        errors.append(Diagnostic(CODE, f"'{key}' is neither a recipe setting nor a hyper-parameter of the model",
                                 key_span, str(hint)))
        return None
    if not isinstance(e, ast.Call) or e.func not in KINDS or e.kwargs or e.piped is not None:
        errors.append(Diagnostic(CODE, f"{key} must be a distribution: {', '.join(f'{k}(...)' for k in KINDS)}",
                                 e.span, did_you_mean(e.func, KINDS) if isinstance(e, ast.Call) else None))
        return None
    if e.func == "choice":
        return _choice(key, key_span, e, typ, label, errors)
    if len(e.args) != 2 or any(number_of(a) is None for a in e.args):
        errors.append(Diagnostic(CODE, f"{e.func}() takes two numbers, low and high", e.span))
        return None
    low, high = (number_of(a) for a in e.args)
    integer = e.func.startswith("int_")
    if integer and not all(float(v).is_integer() for v in (low, high)):
        errors.append(Diagnostic(CODE, f"{e.func}() takes integer bounds, got {low} and {high}", e.span))
        return None
    if isinstance(typ, Num) and typ.integer and not integer:
        errors.append(Diagnostic(CODE, f"{key} is an integer: search it with int_uniform, int_loguniform or choice",
                                 e.func_span))
        return None
    if not low < high or ("log" in e.func and low <= 0) or not all(map(math.isfinite, (low, high))):
        errors.append(Diagnostic(CODE, f"{e.func}() needs {'0 < ' if 'log' in e.func else ''}low < high, "
                                 f"got {low} and {high}", e.span))
        return None
    if not all(_fits(typ, a, label, errors) for a in e.args):
        return None
    cast = int if integer else float
    return Dimension(key, e.func, cast(low), cast(high), (), key_span)


def _choice(key: str, key_span: Span, e: ast.Call, typ, label: str, errors: list[Diagnostic]) -> Dimension | None:
    if len(e.args) < 2:
        errors.append(Diagnostic(CODE, "choice() needs at least two values", e.span))
        return None
    choices = []
    for a in e.args:
        value = _literal(a, typed=typ is not None)
        if value is None:
            what = "a name or a call" if typ is not None else "nothing else for a hyper-parameter"
            errors.append(Diagnostic(CODE, f"a choice is a number, a string, true/false, {what}", a.span))
            return None
        if not _fits(typ, a, label, errors):
            return None
        choices.append(_source(typ, a, label) if value is TEXT else value)
    return Dimension(key, "choice", None, None, tuple(choices), key_span)


TEXT = object()  # a choice written as text: a string, a name or a call


def _literal(e, typed: bool):
    """A choice's value: a number or boolean as itself, TEXT for a string (or, where the
    setting's type can check and print it, a name, a call or a list), None otherwise."""
    n = number_of(e)
    if n is not None:
        return n
    if isinstance(e, ast.Bool):
        return e.value
    return TEXT if isinstance(e, ast.Str) or (typed and isinstance(e, (ast.Name, ast.Call, ast.ListLit))) else None


def _source(typ, e, label: str) -> str:
    """The --set text of a written value: its checked value as its type prints it (a string
    of a hyper-parameter of unknown type as it is)."""
    if typ is None:
        return e.value
    return typ.show(typ.convert(e, label, []))


def _fits(typ, e, label: str, errors: list[Diagnostic]) -> bool:
    """Whether the setting's type accepts `e` (reporting why not); always for unknown types."""
    if typ is None:
        return True
    try:
        typ.convert(e, label, errors)
        return True
    except Bad as bad:
        errors.extend([bad.diag] if bad.diag else [])
        return False
