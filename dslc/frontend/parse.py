"""The Lark seam: .net text -> AST, with Lark's exceptions turned into diagnostics.

Two traps are handled here and nowhere else: `UnexpectedEOF` carries line/column -1
(we point at the end of the file instead), and the parser is built once per process
(grammar loading is the slow part of Lark).
"""
from __future__ import annotations

import functools
from importlib import resources

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from dslc.diagnostics import CompileError, Diagnostic, Span
from dslc.frontend import ast
from dslc.frontend.to_ast import ToAst

# Readable names for the terminals Lark reports as expected.
_TOKEN_NAMES = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'",
    "SLASH": "'/'", "AT": "'@'", "__ANON_0": "'|>'", "$END": "end of file",
}


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    text = resources.files("dslc.grammar").joinpath("net.lark").read_text(encoding="utf-8")
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _describe(tok: Token | None) -> str:
    if tok is None or tok.type == "$END":
        return "end of file"
    return f"'{tok}'"


def _expected(names) -> str:
    readable = sorted({_TOKEN_NAMES.get(n, f"'{n.lower()}'" if n.isupper() else n) for n in names})
    return ", ".join(readable)


def _end_span(file: str, text: str) -> Span:
    lines = text.splitlines() or [""]
    return Span(file, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)


def _syntax_error(file: str, text: str, err: UnexpectedInput) -> Diagnostic:
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        return Diagnostic("E0102", "unexpected end of file",
                          _end_span(file, text), hint="a '}' or ')' may be missing")
    if isinstance(err, UnexpectedCharacters):
        ch = text[err.pos_in_stream] if err.pos_in_stream < len(text) else "?"
        return Diagnostic("E0101", f"unexpected character {ch!r}",
                          Span(file, err.line, err.column, err.line, err.column + 1))
    tok = err.token
    span = Span(file, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + 1)
    expected = _expected(err.expected)
    if len(err.expected) > 5:
        return Diagnostic("E0103", f"unexpected {_describe(tok)}", span)
    return Diagnostic("E0103", f"unexpected {_describe(tok)}; expected {expected}", span)


def parse(text: str, file: str = "<string>") -> ast.Module:
    """Parse one .net file; raises CompileError with a located syntax error."""
    try:
        tree = parser().parse(text)
    except UnexpectedInput as err:
        raise CompileError([_syntax_error(file, text, err)]) from None
    return ToAst(file).transform(tree)
