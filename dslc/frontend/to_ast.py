"""Lark parse tree -> AST. Builds dataclasses and nothing else.

The tree is walked without recursion (Transformer_NonRecursive): a pipeline of a thousand
stages is a tree a thousand levels deep. Nothing here may raise: an exception inside a Lark Transformer arrives wrapped in
`VisitError` and loses its position. The few lexical checks that belong to this
stage (string escapes, number ranges) are *recorded* in `problems` and reported by
parse.py; everything about meaning lives in resolve.py, which reports with the
spans recorded here.
"""
from __future__ import annotations

import math
import re

from lark import Token, Transformer_NonRecursive, v_args

from dslc.diagnostics import Diagnostic, Span
from dslc.frontend import ast

# The escapes a .net string may contain; anything else after a backslash is an error
# (rather than Python's lenient rules, which would silently keep "\q" as two characters).
ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_ESCAPE = re.compile(r"\\(.)")
INT_MAX = 2**63 - 1  # the largest integer any later stage (NumPy int64) can hold


def token_span(file: str, tok: Token) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line, tok.end_column)


def _clip(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[:width] + "..."


@v_args(meta=True, inline=True)
class ToAst(Transformer_NonRecursive):
    def __init__(self, file: str):
        super().__init__()
        self.file = file
        self.problems: list[Diagnostic] = []

    def _problem(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self.problems.append(Diagnostic(code, message, span, hint))

    def _string(self, tok: Token) -> str:
        """The value of a STRING token (quotes removed, escapes decoded); bad escapes are recorded."""
        def decode(m: re.Match) -> str:
            esc = m.group(1)
            if esc not in ESCAPES:
                col = tok.column + 1 + m.start()
                self._problem("E0105", f"unknown escape '\\{esc}' in a string",
                              Span(self.file, tok.line, col, tok.line, col + 2),
                              hint='the escapes are \\" \\\\ \\n \\t \\r')
            return ESCAPES.get(esc, esc)
        # The lexer guarantees that every backslash is followed by one character.
        return _ESCAPE.sub(decode, tok[1:-1])

    def _span(self, meta) -> Span:
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    # ---- top level
    def start(self, meta, *items):
        pick = lambda kind: tuple(i for i in items if isinstance(i, kind))
        return ast.Module(self.file, pick(ast.Import), pick(ast.BlockDef), pick(ast.ModelDef), pick(ast.TrainDef))

    def import_stmt(self, meta, path):
        return ast.Import(self._string(path), self._span(meta))

    def formal(self, meta, name, type_=None, default=None):
        return ast.Formal(str(name), str(type_) if type_ is not None else None, default, self._span(meta))

    def body(self, meta, *stmts):
        return tuple(stmts)

    def _formals(self, rest):
        return tuple(f for f in rest if isinstance(f, ast.Formal))

    def block_def(self, meta, name, *rest):
        return ast.BlockDef(str(name), self._formals(rest), rest[-1], self._span(meta), token_span(self.file, name))

    def model_def(self, meta, name, *rest):
        return ast.ModelDef(str(name), self._formals(rest), rest[-1], self._span(meta), token_span(self.file, name))

    def train_def(self, meta, model, alias, *items):
        entries = tuple(i for i in items if isinstance(i, ast.RecipeEntry))
        searches = tuple(i for i in items if isinstance(i, ast.SearchBlock))
        return ast.TrainDef(str(model), str(alias) if alias is not None else None, entries,
                            self._span(meta), token_span(self.file, model), searches)

    def recipe_entry(self, meta, key, value):
        return ast.RecipeEntry(str(key), value, self._span(meta), token_span(self.file, key))

    def search_block(self, meta, name, *entries):
        return ast.SearchBlock(str(name), tuple(entries), self._span(meta), token_span(self.file, name))

    def search_entry(self, meta, *parts):
        *names, value = parts
        first, last = token_span(self.file, names[0]), token_span(self.file, names[-1])
        key_span = Span(self.file, first.line, first.col, last.end_line, last.end_col)
        return ast.RecipeEntry(".".join(map(str, names)), value, self._span(meta), key_span)

    # ---- statements
    def tensor_type(self, meta, dtype, *dims):
        return ast.TensorTypeExpr(str(dtype), tuple(d for d in dims if d is not None), self._span(meta),
                                  token_span(self.file, dtype))

    def input_decl(self, meta, name, type_):
        return ast.InputDecl(str(name), type_, self._span(meta))

    def param_decl(self, meta, name, type_, init, role):
        return ast.ParamDecl(str(name), type_, init, self._span(meta), str(role) if role is not None else None,
                             token_span(self.file, role) if role is not None else None)

    def assign(self, meta, label, target, value):
        return ast.Assign(str(target), value, str(label) if label is not None else None, self._span(meta))

    def output_decl(self, meta, name, value):
        return ast.OutputDecl(str(name), value, self._span(meta))

    def metric_decl(self, meta, name, value):
        return ast.MetricDecl(str(name) if name is not None else None, value, self._span(meta))

    def loss_decl(self, meta, value):
        return ast.LossDecl(value, self._span(meta))

    def return_stmt(self, meta, value):
        return ast.Return(value, self._span(meta))

    def repeat_stmt(self, meta, count, index, body):
        return ast.Repeat(count, str(index) if index is not None else None, body, self._span(meta))

    # ---- expressions
    def add(self, meta, left, right):
        return ast.BinOp("add", left, right, self._span(meta))

    def sub(self, meta, left, right):
        return ast.BinOp("sub", left, right, self._span(meta))

    def mul(self, meta, left, right):
        return ast.BinOp("mul", left, right, self._span(meta))

    def div(self, meta, left, right):
        return ast.BinOp("div", left, right, self._span(meta))

    def matmul(self, meta, left, right):
        return ast.BinOp("matmul", left, right, self._span(meta))

    def floor_div(self, meta, left, right):
        return ast.BinOp("floor_div", left, right, self._span(meta))

    def pow(self, meta, left, right):
        return ast.BinOp("pow", left, right, self._span(meta))

    def neg(self, meta, operand):
        return ast.Neg(operand, self._span(meta))

    def int_lit(self, meta, tok):
        # Checking the length first also keeps int() away from Python's limit on digits.
        if len(tok.lstrip("0")) > len(str(INT_MAX)) or int(tok) > INT_MAX:
            self._problem("E0106", f"the integer {_clip(tok)} is too large", self._span(meta),
                          hint=f"integers go up to {INT_MAX}")
            return ast.Num(INT_MAX, self._span(meta))
        return ast.Num(int(tok), self._span(meta))

    def float_lit(self, meta, tok):
        value = float(tok)
        if math.isinf(value):
            self._problem("E0106", f"the number {_clip(tok)} is too large", self._span(meta),
                          hint="floating-point numbers go up to about 1.8e308")
        return ast.Num(value, self._span(meta))

    def str_lit(self, meta, tok):
        return ast.Str(self._string(tok), self._span(meta))

    def true_lit(self, meta):
        return ast.Bool(True, self._span(meta))

    def false_lit(self, meta):
        return ast.Bool(False, self._span(meta))

    def name(self, meta, tok):
        return ast.Name(str(tok), self._span(meta))

    def list_lit(self, meta, *items):
        return ast.ListLit(tuple(i for i in items if i is not None), self._span(meta))

    def kwarg(self, meta, name, value):
        return ast.Kwarg(str(name), value, self._span(meta))

    def call(self, meta, func, *args):
        args = [a for a in args if a is not None]
        return ast.Call(str(func), tuple(a for a in args if not isinstance(a, ast.Kwarg)),
                        tuple(a for a in args if isinstance(a, ast.Kwarg)), self._span(meta),
                        token_span(self.file, func))

    def pipe_name(self, meta, value, func):
        fs = token_span(self.file, func)
        return ast.Call(str(func), (), (), fs, fs, piped=value)

    def pipe_call(self, meta, value, call):
        return ast.Call(call.func, call.args, call.kwargs, call.span, call.func_span, piped=value)
