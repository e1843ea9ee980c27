"""Located error messages: the one place where user mistakes become text.

Every stage reports a user mistake as a `Diagnostic` (a stable code, a message, the
source span, an optional hint and notes such as the block call chain). Stages
collect several before giving up, then raise `CompileError` once; the CLI renders
them here, `FILE:LINE:COL: error[E0301]: message`, the source line and a caret:

    models/bad.net:7:15: error[E0301]: linear expects rank 2, got f32[N, 64, 7, 7]
        x = image |> linear(10)
                     ^^^^^^^^^^
      hint: insert flatten

Codes are listed with explanations in docs/errors.md (a test keeps the two in step).
"""
from __future__ import annotations

import difflib
from contextvars import ContextVar
from dataclasses import dataclass, field

from dslc.reading import read_bounded

QUOTED_FILE_BYTES = 1 << 20  # a file is quoted from disk only if no stage kept its text


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file; lines and columns count from 1, `end_col` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{printable(self.file)}:{self.line}:{self.col}"


@dataclass(slots=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    hint: str | None = None
    notes: list[tuple[Span | None, str]] = field(default_factory=list)
    severity: str = "error"

    def with_note(self, span: Span | None, text: str) -> "Diagnostic":
        self.notes.append((span, text))
        return self


class CompileError(Exception):
    """One or more user mistakes, ready to be rendered; never a compiler bug."""

    def __init__(self, diagnostics: list[Diagnostic], sources: "SourceCache | None" = None):
        self.diagnostics = list(diagnostics)
        # The text the compiler read, so that a caller passing `text=` sees that text quoted.
        self.sources = sources
        super().__init__(self.diagnostics[0].message if diagnostics else "compile error")

    @classmethod
    def single(cls, code: str, message: str, span: Span | None = None, hint: str | None = None):
        return cls([Diagnostic(code, message, span, hint)])

    def render(self, sources: "SourceCache | None" = None) -> str:
        return render_all(self.diagnostics, sources or self.sources)


class UsageError(Exception):
    """A bad command-line request (unknown flag value, bad --set): exit status 2."""


class CliError(Exception):
    """A user mistake outside any .net source (a missing program, an unwritable file): exit 1."""


def printable(text: str) -> str:
    """`text` with control characters escaped (a newline shown as \\n): a name or path from
    the user is printed on one line and cannot move the cursor or fake another message."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def quoted(text: str) -> str:
    """'text' in single quotes, control characters escaped: how messages show user strings."""
    return f"'{printable(text)}'"


def _folded(name: str) -> str:
    """`name` as it is compared for equality: lower case, no `_` or `-` (MaxPool, max_pool: maxpool)."""
    return name.lower().replace("_", "").replace("-", "")


def did_you_mean(word: str, candidates) -> str | None:
    """A 'did you mean ...?' hint for a misspelt name, or None if nothing is close. In order:
    the same name but for case and `_`/`-` (`MAX`, `max_pool`); the same but for a `loss`
    suffix, as PyTorch names losses (`mse_loss`, `MSELoss`: mse; `nll`: nll_loss); the only
    name that the word (3 letters or more) begins (`cross`); the closest by difflib, ignoring
    case (`lineer`: linear).

        did_you_mean("mse_loss", ["l1_loss", "mse"]) == "did you mean 'mse'?"
    """
    names = sorted(set(candidates))
    stem = lambda n: _folded(n).removesuffix("loss") or _folded(n)
    for key in (_folded, stem):
        same = [n for n in names if key(n) == key(word)]
        if same:
            return f"did you mean '{same[0]}'?"
    begun = [n for n in names if len(word) >= 3 and _folded(n).startswith(_folded(word))]
    if len(begun) == 1:
        return f"did you mean '{begun[0]}'?"
    lower: dict[str, str] = {}
    for n in names:
        lower.setdefault(n.lower(), n)
    close = difflib.get_close_matches(word.lower(), list(lower), n=1, cutoff=0.6)
    return f"did you mean '{lower[close[0]]}'?" if close else None


class SourceCache:
    """The text of every file a compilation read, so messages can quote it."""

    def __init__(self):
        self._text: dict[str, str] = {}

    def add(self, file: str, text: str) -> None:
        self._text[file] = text

    def line(self, file: str, number: int) -> str | None:
        """Line `number` as the parser counts lines: only "\\n" ends one (str.splitlines
        would also split at a form feed, U+0085 or U+2028 and quote the wrong line)."""
        text = self._text.get(file)
        if text is None:
            try:
                text = read_bounded(file, QUOTED_FILE_BYTES).decode("utf-8", errors="replace")
            except OSError:
                return None
            self._text[file] = text
        lines = text.split("\n")
        return lines[number - 1].removesuffix("\r") if 1 <= number <= len(lines) else None


QUOTE_WIDTH = 100  # a longer source line is quoted as a window around the caret


def _excerpt(span: Span, sources: SourceCache) -> list[str]:
    text = sources.line(span.file, span.line)
    if text is None:
        return []
    # One visible character per control character, so the caret stays under its column.
    raw = "".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in text)
    text = raw.expandtabs(4)
    start = len(raw[:max(span.col - 1, 0)].expandtabs(4))
    end = len(raw[:span.end_col - 1].expandtabs(4)) if span.end_line == span.line else len(text)
    width = max(end - start, 1)
    if len(text) > QUOTE_WIDTH:
        left = max(0, min(start - QUOTE_WIDTH // 4, len(text) - QUOTE_WIDTH))
        shown = text[left:left + QUOTE_WIDTH]
        text = ("..." if left else "") + shown + ("..." if left + QUOTE_WIDTH < len(text) else "")
        start += 3 - left if left else -left
        width = min(width, QUOTE_WIDTH - (start - (3 if left else 0)))
    return [f"    {text}", f"    {' ' * start}{'^' * max(width, 1)}"]


def render(d: Diagnostic, sources: SourceCache | None = None) -> str:
    """Text of one diagnostic: location, message, the quoted line with a caret, hint, notes."""
    sources = sources or SourceCache()
    where = f"{d.span}: " if d.span else ""
    out = [f"{where}{d.severity}[{d.code}]: {d.message}"]
    if d.span:
        out += _excerpt(d.span, sources)
    if d.hint:
        out.append(f"  hint: {d.hint}")
    for span, text in d.notes:
        out.append(f"  note: {span}: {text}" if span else f"  note: {text}")
    return "\n".join(out)


def render_all(diagnostics: list[Diagnostic], sources: SourceCache | None = None) -> str:
    sources = sources or SourceCache()
    body = "\n".join(render(d, sources) for d in diagnostics)
    errors = sum(d.severity == "error" for d in diagnostics)
    if errors > 1:
        body += f"\n{errors} errors"
    return body


# How a message names a hyper-parameter given from outside the file: the keyword argument of
# dslc.load that gave it, or, while a command of the command line runs (dslc.cli sets this),
# its --set flag. A Python caller told "--set widht" had written no flag.
GIVEN_AS: ContextVar[str] = ContextVar("dslc_hyper_given_as", default="keyword")


def given_as(name: str) -> str:
    """How the caller names hyper-parameter `name` it gave: its --set flag on the command
    line, else the keyword argument of dslc.load."""
    return f"--set {name}" if GIVEN_AS.get() == "flag" else f"dslc.load: keyword {name}"


def give_as(name: str) -> str:
    """How the caller gives hyper-parameter `name` a value, for a message that asks for one."""
    return f"--set {name}=VALUE" if GIVEN_AS.get() == "flag" else f"dslc.load(..., {name}=VALUE)"
