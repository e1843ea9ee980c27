"""The Lark seam: .net text -> AST, with Lark's exceptions turned into diagnostics.

Lark's exceptions are converted here and nowhere else, minding two traps:
`UnexpectedEOF` (and an `UnexpectedToken` at `$END`) carries line/column -1, so we
point at the end of the file instead; and the Transformer never raises (a raise
inside it would arrive as `VisitError`), it records lexical problems that we report.
The parser is built once per process: loading the grammar is the slow part of Lark.

Size and depth are bounded before Lark sees the text, so that any file either parses or
gets a located message, quickly: at most MAX_TOKENS tokens (the parser's time grows with
them; a 300-layer model is a few thousand) and at most MAX_NESTING brackets open at once
(every later stage walks nested expressions recursively). Long pipelines and sums nest
no brackets; the tree they make is turned into the AST without recursion.
"""
from __future__ import annotations

import functools
import itertools
import re
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
    "SLASH": "'/'", "AT": "'@'", "PIPE": "'|>'", "$END": "end of file",
}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "AT"}
_MAX_EXPECTED = 5  # longer lists of expected tokens say nothing useful
MAX_TOKENS = 100_000
MAX_NESTING = 1_000
# What the bounds count: tokens roughly as the lexer splits them (a comment is one), and
# brackets outside strings and comments. A broken string is left for the parser to report.
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\|>|[A-Za-z0-9_.]+|\S')
_BRACKET = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[(\[{]|[)\]}]')


def grammar_text() -> str:
    """The surface syntax, grammar/net.lark (installed as dslc.grammar)."""
    return resources.files("dslc.grammar").joinpath("net.lark").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    # cache=True: Lark keeps the analysed LALR tables in a temporary file keyed by the
    # grammar's and options' hash (a fifth of a second saved at every process start).
    # A cached parser has no `.grammar`; tools that walk the grammar build their own.
    # Two entry points: a whole file, and one expression (a --set value, read as a value).
    return Lark(grammar_text(), parser="lalr", start=["start", "expr"], propagate_positions=True,
                maybe_placeholders=True, cache=True)


def _describe(tok: Token | None) -> str:
    if tok is None or tok.type == "$END":
        return "end of file"
    return f"'{tok}'"


def _expected(names) -> str:
    readable = sorted({_TOKEN_NAMES.get(n, f"'{n.lower()}'" if n.isupper() else n) for n in names})
    return ", ".join(readable)


def _end_span(file: str, text: str) -> Span:
    """Just past the last character that is not white space: where the missing text belongs."""
    lines = text.rstrip().splitlines() or [""]
    return Span(file, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)


def _bad_character(file: str, text: str, err: UnexpectedCharacters) -> Diagnostic:
    ch = text[err.pos_in_stream] if 0 <= err.pos_in_stream < len(text) else "?"
    span = Span(file, err.line, err.column, err.line, err.column + 1)
    if ch == '"':  # the STRING pattern failed, so the closing quote is missing on this line
        return Diagnostic("E0104", "unterminated string", span, hint="close the string on the same line")
    return Diagnostic("E0101", f"unexpected character {ch!r}", span)


def _syntax_error(file: str, text: str, err: UnexpectedInput) -> Diagnostic:
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        return Diagnostic("E0102", "unexpected end of file", _end_span(file, text),
                          hint="a '}' or ')' may be missing")
    if isinstance(err, UnexpectedCharacters):
        return _bad_character(file, text, err)
    assert isinstance(err, UnexpectedToken)  # the last kind the LALR parser raises
    tok = err.token
    span = Span(file, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + 1)
    message = f"unexpected {_describe(tok)}"
    if 0 < len(err.expected) <= _MAX_EXPECTED:
        message += f"; expected {_expected(err.expected)}"
    hint = None
    if tok.type in _OPERATORS and "PIPE" in err.expected:
        # `x |> f + 1`: a pipeline stage is a call, so arithmetic cannot follow it directly.
        hint = "a pipeline ends the expression; use parentheses: (x |> f) + y"
    return Diagnostic("E0103", message, span, hint)


def _at(file: str, text: str, pos: int, width: int = 1) -> Span:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return Span(file, line, col, line, col + width)


def check_bounds(text: str, file: str) -> None:
    """Raise CompileError (located) if `text` has more than MAX_TOKENS tokens or nests
    brackets deeper than MAX_NESTING; both are counted by regular expressions, in C."""
    if len(_TOKEN.findall(text)) > MAX_TOKENS:
        m = next(itertools.islice(_TOKEN.finditer(text), MAX_TOKENS, None))
        raise CompileError([Diagnostic("E0107", f"{file} is too long: more than {MAX_TOKENS:,} tokens",
                                       _at(file, text, m.start()),
                                       hint="a .net file holds at most that many; a repeat loop or a block "
                                            "writes a long model in a few lines")])
    depth = 0
    for m in _BRACKET.finditer(text):
        ch = m.group()
        if ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                raise CompileError([Diagnostic("E0108", f"brackets nest more than {MAX_NESTING} deep here",
                                               _at(file, text, m.start()),
                                               hint="name intermediate values: `y = f(x)` on a line of its own")])
        elif ch in ")]}":
            depth = max(depth - 1, 0)  # a stray closing bracket is the parser's to report


def parse(text: str, file: str = "<string>") -> ast.Module:
    """Parse one .net file; raises CompileError with located syntax errors.

    >>> parse("model m { input x : f32[N, 2]  output y = relu(x) }").models[0].name
    'm'
    """
    return _parse(text, file, "start")


def parse_expression(text: str, file: str = "<string>") -> ast.Expr:
    """Parse `text` as exactly one expression, or raise CompileError: nothing before or after
    it can close a block or start a definition, so a value can never change the program.

    >>> parse_expression("adam(lr=1e-3)").kwargs[0].value.value
    0.001
    """
    return _parse(text, file, "expr")


def _parse(text: str, file: str, start: str):
    check_bounds(text, file)
    try:
        tree = parser().parse(text, start=start)
    except UnexpectedInput as err:
        raise CompileError([_syntax_error(file, text, err)]) from None
    builder = ToAst(file)
    result = builder.transform(tree)
    if builder.problems:
        raise CompileError(builder.problems)
    return result
