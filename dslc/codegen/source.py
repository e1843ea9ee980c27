"""A small writer for generated source: indentation, stable names, header comments.

Every backend (the Numba CPU generator, the CUDA one) emits text through `Source` and
names things through `Namer`, so generated files look alike and are byte-identical for
identical input: no dict-order or id()-dependent names, no timestamps. `Source(c=True)`
writes C: `//` comments and `{ }` blocks.

    src = Source()
    with src.block("def k_fc_relu(fc_linear, fc_relu):"):
        src.line("...")
    names = Namer()
    names.get("fc.relu")          # 'fc_relu_' (the same answer every time for the same key)
    names.kernel("fc.relu")       # 'k_fc_relu'
"""
from __future__ import annotations

import keyword
import re
from contextlib import contextmanager
from pathlib import Path

from dslc.diagnostics import printable

INDENT = "    "
WIDTH = 110


class Source:
    """Lines of text with an indentation level; `text()` joins them with a final newline."""

    def __init__(self, c: bool = False):
        self.lines: list[str] = []
        self.level = 0
        self.c = c

    def line(self, text: str = "") -> None:
        """One line (or several, from `wrapped`, whose continuations carry their own indent)."""
        first, *rest = text.split("\n") if text else [""]
        self.lines.append(INDENT * self.level + first if first else "")
        self.lines.extend(rest)

    def comment(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            self.line(f"{'//' if self.c else '#'} {part}".rstrip())

    @contextmanager
    def block(self, header: str):
        """`header` (ending in ':') with the lines written inside indented one level; in C,
        `header {` ... `}`."""
        self.line(header + (" {" if self.c else ""))
        self.level += 1
        try:
            yield
        finally:
            self.level -= 1
            if self.c:
                self.line("}")

    def wrapped(self, head: str, items: list[str], tail: str = "", width: int = WIDTH) -> str:
        """`head` + items joined by ', ' + `tail`, broken over lines that fit `width`; returns
        the text (for `block`) with continuation lines aligned under the first item."""
        pad = " " * (len(INDENT * self.level) + len(head))
        lines, cur = [], head
        for k, item in enumerate(items):
            piece = item + (", " if k < len(items) - 1 else tail)
            if len(cur) + len(piece.rstrip()) + len(INDENT * self.level) > width and cur.strip() != head.strip():
                lines.append(cur.rstrip())
                cur = pad + piece
            else:
                cur += piece
        if not items:
            cur += tail
        lines.append(cur)
        return "\n".join(lines)

    def blank(self) -> None:
        if self.lines and self.lines[-1]:
            self.lines.append("")

    def text(self) -> str:
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return "\n".join(self.lines) + "\n"


def identifier(name: str) -> str:
    """A valid Python identifier that reads like `name`: `stage1.conv_bn_relu.conv2d` ->
    `stage1_conv_bn_relu_conv2d`; a leading digit or a keyword gets a `_` in front. For file
    names; names inside generated code come from `Namer`."""
    out = re.sub(r"\W+", "_", name).strip("_") or "_"
    if out[0].isdigit() or keyword.iskeyword(out):
        out = "_" + out
    return out


def _words(name: str) -> str:
    """`name`'s letters and digits with every run of other characters (and of `_`) as one `_`,
    none at either end, never a leading digit: `stage1.conv_bn__relu` -> `stage1_conv_bn_relu`."""
    out = re.sub(r"[\W_]+", "_", name).strip("_") or "v"
    return "_" + out if out[0].isdigit() else out


class Namer:
    """Stable, unique identifiers for keys (buffer or kernel names), in first-asked order.

    The mangling scheme that keeps a model's names apart from everything else in generated
    code, in both languages: every name made from a model's names (a buffer, a view of
    one, a size, a local named after a layer or an op) ends in `_` (PEP 8's way round a
    keyword), and a kernel's is `k_` + its layer. The words the loop emitters write
    themselves (indices `i`, `n`, `c`, accumulators `acc`, library and math functions,
    CUDA's `blockIdx`, macros `DSLC_FOR`, Python builtins `range`) never end in `_` and
    never start with `k_`, and neither does any keyword or builtin of Python, C++ or CUDA:
    so no name a user writes can take one of them, whatever the lists of either language
    hold (tests/test_names.py tries keywords, builtins and every loop variable).

    Two keys that read alike (`a.b` and `a_b`) get `a_b_` and `a_b_1_`: the order of the
    calls decides, and generators ask in graph order, so names never change between runs
    for the same graph.
    """

    def __init__(self) -> None:
        self.taken: set[str] = set()
        self.names: dict[str | tuple[str, str], str] = {}

    def scope(self) -> "Namer":
        """A namer for one function's locals: clear of every name taken here so far."""
        inner = Namer()
        inner.taken = set(self.taken)
        return inner

    def _unique(self, base: str, tail: str) -> str:
        out, k = base + tail, 1
        while out in self.taken:
            out, k = f"{base}_{k}{tail}", k + 1
        self.taken.add(out)
        return out

    def get(self, key: str) -> str:
        """The value name of `key` (a buffer, a view), the same every time it is asked."""
        if key not in self.names:
            self.names[key] = self._unique(_words(key), "_")
        return self.names[key]

    def kernel(self, key: str) -> str:
        """The function name of kernel `key`: `k_` + its layer, e.g. `k_fc_relu`."""
        if ("kernel", key) not in self.names:
            self.names["kernel", key] = self._unique("k_" + _words(key), "")
        return self.names["kernel", key]

    def fresh(self, hint: str) -> str:
        """A new value name not tied to any key (temporaries)."""
        return self._unique(_words(hint), "_")


def where(span) -> str:
    """`file.net:LINE` of a span (the file's name only, so the text does not depend on the
    directory the model was loaded from), or `-` for nodes made by a pass. The name is
    escaped as messages show it: one with a byte that is not UTF-8 ('m\\udcff.net') made
    source that could not be encoded, a traceback at `dslc train` and `dslc compile`."""
    return f"{printable(Path(span.file).name)}:{span.line}" if span is not None else "-"



def kernel_header(src: Source, pos: int, k) -> None:
    """The comment above kernel `pos` of a generated module (Python or CUDA alike): its kind,
    then each node it covers with its op and `.net` line (the first 12, then the rest's ops)."""
    what = f"{k.kind} {k.op}" + (f", {len(k.parts)} parts" if k.parts else "") + (", prologue" if k.prologue else "")
    src.comment(f"---- kernel {pos}: {k.name} ({what})")
    covered = k.covers()
    width = max(len(n.name) for n in covered)
    ops = max(len(n.op) for n in covered)
    for n in covered[:12]:
        src.comment(f"  {n.name:<{width}}  {n.op:<{ops}}  {where(n.span)}")
    if len(covered) > 12:
        src.comment(f"  ... and {len(covered) - 12} more ({', '.join(sorted({n.op for n in covered[12:]}))})")
