"""The op catalogue behind `dslc ops`: the registry rendered for a person writing .net code.

Everything shown is read from the registry (dslc/ops/registry.py) and the
initialiser table (dslc/ops/init.py), never written twice, so the catalogue cannot
drift from what the compiler does. The shape example of `dslc ops NAME` is computed
by running the op's own shape rule on its first test sample.

    print(op_table())          # every language op, grouped by category
    print(op_detail("conv2d")) # attributes, inputs, parameters, formula, shape example
"""
from __future__ import annotations

import inspect
import sys
from typing import Sequence

from dslc.ir.builder import complete_attrs
from dslc.ir.printer import show_value
from dslc.ops import registry
from dslc.ops.init import INITS
from dslc.ops.registry import OpDef, ParamSlot, ShapeError

# Ops that only the compiler emits (gradients, optimizer updates, fused kernels) or that
# carry no computation (sources); `dslc ops NAME` still describes them.
# The order a reader meets them when writing a model; categories not named here follow, sorted.
ORDER = ("layer", "activation", "pool", "norm", "arithmetic", "math", "linalg", "shape", "reduce",
         "loss", "metric", "regulariser")
_ALWAYS_PRESENT = ParamSlot.__dataclass_fields__["present"].default


def _table(rows: Sequence[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]).rstrip() for r in rows]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def op_table() -> str:
    """Every language op, grouped by category, one line each: name and formula."""
    by_cat: dict[str, list[OpDef]] = {}
    for op in sorted(registry.all_ops().values(), key=lambda o: o.name):
        if op.category not in registry.INTERNAL:
            by_cat.setdefault(op.category, []).append(op)
    cats = [c for c in ORDER if c in by_cat] + sorted(c for c in by_cat if c not in ORDER)
    width = max(len(o.name) for ops in by_cat.values() for o in ops)
    lines = []
    for cat in cats:
        lines.append(cat)
        lines += [f"  {o.name.ljust(width)}  {_first_line(o.formula)}" for o in by_cat[cat]]
    lines += ["", "`dslc ops NAME` describes one op; `dslc ops init` lists the initialisers.",
              f"Ops the compiler emits itself ({', '.join(registry.INTERNAL[1:])}) are not listed."]
    return "\n".join(lines)


def _input_names(op: OpDef) -> list[str]:
    return [i[1:] + "..." if i.startswith("*") else i for i in op.inputs]


def _usage(op: OpDef) -> str:
    """How a call is written: tensor inputs, then attributes (required ones positionally)."""
    ins = _input_names(op)
    attrs = [a.name if a.required else f"{a.name}={show_value(a.default)}" for a in op.attrs]
    return f"{op.name}({', '.join(ins + attrs)})"


def _attr_rows(op: OpDef) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for a in op.attrs:
        note = a.doc
        if a.choices:
            note = f"one of {', '.join(map(str, a.choices))}" + (f"; {note}" if note else "")
        rows.append((a.name, a.kind, "required" if a.required else show_value(a.default), note))
    return rows


def _param_rows(op: OpDef) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for p in op.params:
        if isinstance(p.init, str):
            init = f"init from `{p.init}` (default {show_value(op.attr(p.init).default)})"
        else:
            init = f"init {show_value(p.init)}"
        when = "" if p.present is _ALWAYS_PRESENT else "; only for some attribute values"
        rows.append((f"{op.name}.{p.name}", f"role {p.role}", init + when))
    return rows


def _about(op: OpDef) -> str:
    """The op's own doc, else its shape rule's docstring, else the first paragraph of its module's."""
    if op.doc:
        return op.doc.strip()
    doc = inspect.getdoc(op.shape) or ""
    if not doc:
        module = sys.modules.get(getattr(op.shape, "__module__", ""))
        doc = (getattr(module, "__doc__", "") or "").strip().split("\n\n")[0]
    return " ".join(doc.split())


def _example(op: OpDef) -> str | None:
    """`op(f32[2, 3], ...) {attrs} -> f32[...]` from the first sample, by the op's own shape rule."""
    if not op.samples:
        return None
    s = op.samples[0]
    attrs = complete_attrs(op, s.attrs)
    try:
        out = op.shape(list(s.inputs), dict(attrs))
    except ShapeError as e:  # a bad sample is a registry bug; say so rather than hide the line
        return f"(sample rejected by the shape rule: {e.message})"
    given = ", ".join(f"{k}={show_value(v)}" for k, v in s.attrs.items())
    return f"{op.name}({', '.join(t.show() for t in s.inputs)})" + (f" {{{given}}}" if given else "") + \
        f" -> {out.show()}"


def op_detail(name: str) -> str:
    """Everything about one op: call form, attributes, inputs, parameters, formula, shape."""
    op = registry.get(name)
    lines = [f"{op.name}  ({op.category})", f"  {op.formula}", "", f"usage:       {_usage(op)}",
             f"inputs:      {', '.join(_input_names(op)) or '(none)'}"]
    if op.integer_inputs:
        labels = ", ".join(op.inputs[i] for i in op.integer_inputs)
        lines.append(f"labels:      {labels} (integers, never differentiated)")
    if op.attrs:
        lines += ["attributes:"] + _table(_attr_rows(op))
    if op.params:
        lines += ["parameters (created when used as a layer; inputs after the tensors above):"]
        lines += _table(_param_rows(op))
    about = _about(op)
    if about:
        lines.append(f"about:       {about}")
    example = _example(op)
    if example:
        lines.append(f"shape:       {example}")
    lines.append(f"gradient:    {'yes' if op.grad else 'no rule (not differentiated through)'}")
    if op.train:
        lines.append("training:    lowered differently in training mode")
    if any(a.kind == "init" for a in op.attrs):
        lines.append("initialisers: see `dslc ops init`")
    return "\n".join(lines)


def init_table(only: str | None = None) -> str:
    """Every initialiser (or just `only`) with its arguments, defaults, choices and formula."""
    rows = []
    for d in INITS.values():
        if only in (None, d.name):
            args = ", ".join(f"{k}={show_value(v)}" + (f" ({'|'.join(c)})" if c else "") for k, v, c in d.args)
            rows.append((f"{d.name}({args})", d.formula))
    return "\n".join(["initialisers (param W : f32[64, 10] = kaiming(mode=fan_out); linear(10, init=xavier))"]
                     + _table(rows))


def names() -> list[str]:
    """The names a did-you-mean hint of `dslc ops NAME` offers: the ops a program may call,
    `init` and the initialisers. Ops the compiler emits itself (`expand`, `rsqrt`) are still
    described when asked for by name, but never suggested: a program cannot write them."""
    public = [name for name, op in registry.all_ops().items() if op.category not in registry.INTERNAL]
    return sorted(public) + ["init"] + sorted(INITS)


def describe(name: str) -> str | None:
    """The catalogue page for `name` (an op, `init`, or an initialiser), or None if unknown."""
    if name in registry.all_ops():
        return op_detail(name)
    if name in ("init", "inits"):
        return init_table()
    if name in INITS:
        return init_table(only=name)
    return None
