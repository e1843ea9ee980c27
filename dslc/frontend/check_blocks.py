"""Checking a block that no model calls: its mistakes are reported all the same.

Elaboration (resolve.py) checks a block where it is called, with the call's arguments;
a block nothing calls would keep its mistakes hidden until the day something does. So each
such block is checked once here, generically: without arguments, it reports only what is
wrong whatever they are:

- a call of an unknown op, block or initialiser, or of an op the compiler emits itself;
- an attribute or argument the callee does not have, too many positional arguments, a
  required attribute or block argument never given;
- a name used before anything defines it where a value must be (an operand, a piped
  value, a tensor input of an op, a repeat count), or a statement a block may not hold,
  a statement after `return`, no `return` at all;
- a parameter declared twice or of an unknown type.

Shapes are not checked: they depend on the arguments. Expressions are walked with a work
list, not recursion, so a long pipeline costs nothing.

    errors = check_uncalled(program, called={"residual"})
"""
from __future__ import annotations

from dslc.diagnostics import Diagnostic, did_you_mean
from dslc.frontend import ast
from dslc.frontend.values import HYPER_TYPES
from dslc.ops import registry
from dslc.ops.init import INITS

_MODEL_ONLY = (ast.InputDecl, ast.ParamDecl, ast.OutputDecl, ast.MetricDecl, ast.LossDecl)


def check_uncalled(program, called: set[str], model: str) -> list[Diagnostic]:
    """The mistakes of every block of `program` not in `called` (the blocks elaborating
    `model` called), each with a note saying why it was checked without arguments."""
    out = []
    for block in program.blocks.values():
        if block.name not in called:
            for d in _BlockCheck(program, block).run():
                out.append(d.with_note(block.name_span, f"in block '{block.name}', checked without arguments "
                                                        f"since model '{model}' does not call it"))
    return out


class _BlockCheck:
    def __init__(self, program, block: ast.BlockDef):
        self.program, self.block = program, block
        self.errors: list[Diagnostic] = []

    def error(self, code: str, message: str, span, hint: str | None = None) -> None:
        self.errors.append(Diagnostic(code, message, span, hint))

    def run(self) -> list[Diagnostic]:
        seen: set[str] = set()
        for f in self.block.formals:
            if f.name in seen:
                self.error("E0204", f"parameter '{f.name}' is declared twice", f.span)
            elif f.type is not None and f.type not in HYPER_TYPES:
                self.error("E0231", f"unknown hyper-parameter type '{f.type}'", f.span,
                           did_you_mean(f.type, HYPER_TYPES) or "one of int, float, bool, str; a tensor "
                                                                 "parameter has no type")
            seen.add(f.name)
        defined = set(seen) | {"weights"}
        if not self.statements(self.block.body, defined):
            self.error("E0256", f"block '{self.block.name}' returns nothing", self.block.name_span,
                       "end the block with `return VALUE`")
        return sorted(self.errors, key=lambda d: (d.span.line, d.span.col))

    def statements(self, body, defined: set[str]) -> bool:
        """Check statements in order (names are defined as they are assigned); True if one returns."""
        returned = False
        for s in body:
            if returned:
                self.error("E0245", "statement after return", s.span)
                return True
            if isinstance(s, _MODEL_ONLY):
                kind = type(s).__name__.replace("Decl", "").lower()
                self.error("E0246", f"'{kind}' is not allowed inside block '{self.block.name}'", s.span,
                           "declare inputs, parameters, outputs and losses in the model")
            elif isinstance(s, ast.Assign):
                self.expression(s.value, defined)
                defined.add(s.target)
            elif isinstance(s, ast.Return):
                self.expression(s.value, defined)
                returned = True
            elif isinstance(s, ast.Repeat):
                self.expression(s.count, defined, value=True)
                if s.index:
                    defined.add(s.index)
                returned = self.statements(s.body, defined) or returned
        return returned

    def expression(self, e, defined: set[str], value: bool = False) -> None:
        """Check `e` and everything in it; `value`: e must be a value (a bare name that is not
        defined cannot be a symbol such as `same` there)."""
        todo = [(e, value)]
        while todo:
            e, value = todo.pop()
            if isinstance(e, ast.Name):
                if value and e.id not in defined:
                    self.error("E0201", f"unknown name '{e.id}'", e.span, did_you_mean(e.id, defined))
            elif isinstance(e, ast.Neg):
                todo.append((e.operand, True))
            elif isinstance(e, ast.BinOp):
                todo += [(e.left, True), (e.right, True)]
            elif isinstance(e, ast.ListLit):
                todo += [(item, False) for item in e.items]
            elif isinstance(e, ast.Call):
                todo += self.call(e)

    def call(self, c: ast.Call) -> list[tuple]:
        """The call's own mistakes; returns its argument expressions, each marked whether it must be a value."""
        positional = ([c.piped] if c.piped is not None else []) + list(c.args)
        kwargs = [(kw.value, False) for kw in c.kwargs]
        if c.func in self.program.blocks:
            block = self.program.blocks[c.func]
            names = [f.name for f in block.formals]
            self._arguments(c, f"block '{block.name}'", names, len(positional), "parameter", "E0211",
                            f"block '{block.name}' takes {len(names)} argument(s), got {len(positional)}")
            given = set(names[:len(positional)]) | {kw.name for kw in c.kwargs}
            for f in block.formals:
                if f.default is None and f.name not in given:
                    self.error("E0217", f"block '{block.name}' needs argument '{f.name}'", c.span)
            tensors = [f.type is None for f in block.formals] + [False] * len(positional)
            return [(a, t) for a, t in zip(positional, tensors)] + kwargs
        if c.func in INITS:
            names = [a[0] for a in INITS[c.func].args]
            if c.piped is not None:
                self.error("E0222", f"'{c.func}' is an initialiser, not a layer", c.func_span)
            self._arguments(c, f"{c.func}()", names, len(c.args), "argument", "E0211",
                            f"{c.func}() takes at most {len(names)} arguments")
            return [(a, False) for a in positional] + kwargs
        op = registry.all_ops().get(c.func)
        if op is None:
            known = [n for n, o in registry.all_ops().items() if o.category not in registry.INTERNAL]
            self.error("E0202", f"unknown op or block '{c.func}'", c.func_span,
                       did_you_mean(c.func, known + list(self.program.blocks) + list(INITS))
                       or "`dslc ops` lists every op")
            return [(a, False) for a in positional] + kwargs
        if op.category in registry.INTERNAL:
            self.error("E0205", f"'{c.func}' is an op the compiler emits itself ({op.category}); a program "
                       "cannot call it", c.func_span)
            return [(a, False) for a in positional] + kwargs
        if op.variadic:  # where its tensors end depends on the values: only the piped one is sure
            return [(a, a is c.piped) for a in positional] + kwargs
        attrs = [a.name for a in op.attrs]
        extra = len(positional) - len(op.inputs)
        if extra < 0:
            self.error("E0213", f"{op.name} expects {len(op.inputs)} tensor input{'s' if len(op.inputs) > 1 else ''} "
                       f"({', '.join(op.inputs)}); missing {', '.join(op.inputs[len(positional):])}", c.span,
                       "`x |> op(...)` passes x as the first input")
        self._arguments(c, op.name, attrs, max(extra, 0), "attribute", "E0211",
                        f"{op.name} takes {len(op.inputs)} tensor input(s) and {len(attrs)} attribute(s); got "
                        f"{extra - len(attrs)} extra positional argument(s)")
        given = set(attrs[:max(extra, 0)]) | {kw.name for kw in c.kwargs}
        for a in op.attrs:
            if a.required and a.name not in given and extra >= 0:
                self.error("E0215", f"{op.name} needs attribute '{a.name}'", c.span,
                           f"for example {op.name}({a.name}=...)")
        return [(a, i < len(op.inputs)) for i, a in enumerate(positional)] + kwargs

    def _arguments(self, c: ast.Call, what: str, names: list[str], n_positional: int, noun: str, code: str,
                   too_many: str) -> None:
        """Keywords must name one of `names`, once, and not one given by position."""
        if n_positional > len(names):
            self.error(code, too_many, c.span)
        given = set(names[:n_positional])
        for kw in c.kwargs:
            if kw.name not in names:
                self.error("E0210", f"{what} has no {noun} '{kw.name}'", kw.span,
                           did_you_mean(kw.name, names) or (f"it takes: {', '.join(names)}" if names
                                                            else f"it takes no {noun}s"))
            elif kw.name in given:
                self.error("E0214", f"{noun} '{kw.name}' given twice", kw.span)
            given.add(kw.name)
