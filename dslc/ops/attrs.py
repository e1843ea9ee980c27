"""Checking and normalising attribute values written in .net source.

Each `Attr.kind` accepts a few spellings and normalises to one Python value, so op
rules never see raw syntax:

    int      5                     float   0.5 or 1 (-> 1.0)        bool   true
    str      "text" or a bare name  enum    same (one of `choices`)
    ints     3 or [3, 5] -> (3, 5)  pad     1, [1, 2] or same/valid
    axes     1 or [1, 2] -> (1, 2)  shape   [-1, 784] -> (-1, 784)
    init     xavier or kaiming(mode=fan_out) -> Init
    optional_int / optional_float  as int/float, or `none`
"""
from __future__ import annotations

from dslc.diagnostics import did_you_mean
from dslc.ir.graph import Init
from dslc.ops.init import INITS


class AttrError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def _sym(v):
    """The id of a bare name (a resolve.Symbol), else None; duck-typed to avoid an import cycle."""
    return getattr(v, "id", None) if type(v).__name__ == "Symbol" else None


def _is_int(v) -> bool:
    return type(v) is int


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ints(v, what: str, allow_neg: bool = False) -> tuple[int, ...]:
    items = v if isinstance(v, list) else [v]
    if not items or not all(_is_int(i) and (allow_neg or i >= 0) for i in items):
        raise AttrError(f"expected {what}, got {_show(v)}")
    return tuple(items)


def _show(v, width: int = 60) -> str:
    """A value as a message quotes it, cut to about `width` characters."""
    text = _show_all(v)
    return text if len(text) <= width else text[:width] + "..."


def _show_all(v) -> str:
    s = _sym(v)
    if s is not None:
        return f"the name '{s}'"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(_show(i) for i in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def convert_attr(attr, v):
    """Normalise `v` for `attr` (a registry.Attr) or raise AttrError."""
    kind = attr.kind
    if kind.startswith("optional_"):
        if _sym(v) == "none":
            return None
        kind = kind[len("optional_"):]
        if v is None:
            return None
    if kind == "int":
        if _is_int(v):
            return v
        raise AttrError(f"expected an int, got {_show(v)}")
    if kind == "float":
        if _is_num(v):
            return float(v)
        raise AttrError(f"expected a number, got {_show(v)}")
    if kind == "bool":
        if isinstance(v, bool):
            return v
        raise AttrError(f"expected true or false, got {_show(v)}")
    if kind == "str":
        if isinstance(v, str):
            return v
        if _sym(v) is not None:
            return _sym(v)
        raise AttrError(f"expected a string, got {_show(v)}")
    if kind == "enum":
        s = v if isinstance(v, str) else _sym(v)
        if s in attr.choices:
            return s
        raise AttrError(f"expected one of {', '.join(map(str, attr.choices))}, got {_show(v)}",
                        did_you_mean(s, attr.choices) if isinstance(s, str) else None)
    if kind == "ints":
        out = _ints(v, "an int or a list of ints")
        return out[0] if len(out) == 1 and not isinstance(v, list) else out
    if kind == "pad":
        s = v if isinstance(v, str) else _sym(v)
        if s in ("same", "valid"):
            return s
        if s is not None:
            raise AttrError(f"expected an int, a pair, same or valid, got {_show(v)}", did_you_mean(s, ["same", "valid"]))
        out = _ints(v, "an int, a pair of ints, same or valid")
        return out[0] if not isinstance(v, list) else out
    if kind == "axes":
        return _ints(v, "an axis or a list of axes", allow_neg=True)
    if kind == "shape":
        out = _ints(v, "a list of sizes", allow_neg=True)
        if any(d < -1 or d == 0 for d in out):
            raise AttrError(f"sizes must be positive or -1, got {_show(v)}")
        return out
    if kind == "init":
        if isinstance(v, Init):
            return v
        s = _sym(v) if _sym(v) is not None else (v if isinstance(v, str) else None)
        if s in INITS:
            return Init(s)
        raise AttrError(f"expected an initialiser, got {_show(v)}",
                        did_you_mean(s, INITS) if s else f"one of {', '.join(INITS)}")
    raise ValueError(f"unknown attribute kind {attr.kind!r}")


def convert_init(v, default, choices: tuple, name: str):
    """An initialiser argument: same type as its default, or one of `choices`."""
    if choices:
        s = v if isinstance(v, str) else _sym(v)
        if s in choices:
            return s
        raise AttrError(f"'{name}' must be one of {', '.join(choices)}, got {_show(v)}",
                        did_you_mean(s, choices) if isinstance(s, str) else None)
    if isinstance(default, float) and _is_num(v):
        return float(v)
    raise AttrError(f"'{name}' must be a number, got {_show(v)}")
