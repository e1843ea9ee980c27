"""Numba's layout of a batchnorm-like sweep (groups.Sweep plans what it computes).

Channels layout: ONE (parallel) loop over channels; inside it, each pass's (n, j) loop
over the channel's elements of the activation seen as [N, C, S], its per-channel values
in locals. Rows layout, for an activation [N, C] (nothing per channel beyond the batch):
blocks of ROWS_BLOCK channels advance together along contiguous row segments, their
per-channel values in a float64 slice of the thread's scratch (`scratch` [threads,
slots], allocated by the runner). See `rows_layout` for why.
"""
from __future__ import annotations

import ast
import math
import re

from dslc.codegen.emit import tail
from dslc.codegen.groups import Sweep
from dslc.codegen.invariant_terms import InvariantTerms
from dslc.codegen.numba_loops import PARALLEL_MIN, loop, numel
from dslc.codegen.source import Source

ROWS_BLOCK = 64  # channels per block of a rows-layout sweep: one vectorised row segment
RUN = 4096  # the longest row (one image's channel) a pass sums along in float32 (NumbaSweep.narrows)
_FLOAT = re.compile(r"(?<![\w.])(\d+\.\d*(?:e[-+]?\d+)?|\d+e[-+]?\d+)(?![\w.])")  # a float literal


def rows_layout(space) -> bool:
    """A sweep over [N, C] (nothing per channel beyond the batch) runs row by row.

    Channel by channel, each of N elements is C floats from the last: one cache line per
    element, and no vector loads. Row by row, a block of channels advances together along
    a contiguous row segment; its per-channel values (sums, statistics, channel ops) live
    in a float64 slice of the thread's scratch instead of in locals (measured on the
    mlp_bn batchnorm sweep, [128, 512]: 0.55 ms channel by channel, 0.08 ms by rows).
    """
    return all(d == 1 for d in space[2:])


class NumbaSweep(Sweep):
    """The layout decides two things only: how an element of the activation is indexed
    (`at`), and where a per-channel value lives (`channel_value`): a local of the loop over
    channels, or slot [cc] of a block-sized slice of the thread's scratch (`cc` = c - block start).
    """

    def __init__(self, gen, kernel):
        super().__init__(gen, kernel)
        self.rows = rows_layout(self.space)

    def view_kind(self, name: str) -> str:
        """How buffer `name` is passed: the activation's shape as [N, C, S] (rows: [N, C]),
        per-channel vectors as they are, scalars flat."""
        return {"space": "nc" if self.rows else "ncs", "channel": "", "scalar": "flat"}[self.kind(name)]

    def setup(self) -> None:
        self.slices: list[str] = []  # rows: the scratch slices, in order
        self.row_sums: list[dict[str, str]] = []  # per pass: its double sums -> their float32 partials (acc)
        self.hoisted: list[str] = []
        self.loads = Source()  # channel inputs of the current c (channel layout)
        for i in self.kernel.inputs:
            if self.kind(i) == "channel":
                if self.rows:
                    self.chan[i] = f"{self.gen.arg(i)}[c]"
                else:
                    self.chan[i] = self.names.fresh(tail(i))
                    self.loads.line(f"{self.chan[i]} = {self.gen.arg(i)}[c]")
            elif self.kind(i) == "scalar":
                self.chan[i] = self.names.fresh(tail(i))
                self.hoisted.append(f"{self.chan[i]} = {self.gen.view(i, 'flat')}[0]")
        self.ref_name = next(i for i in self.kernel.inputs if self.kind(i) == "space")
        self.ref = self.view(self.ref_name)
        self.count = self.names.fresh("count")
        self.hoisted.append(f"{self.count} = {self.ref}.shape[0]" + ("" if self.rows else f" * {self.ref}.shape[2]"))

    def at(self, n: str = "n") -> str:
        return f"[{n}, c]" if self.rows else f"[{n}, c, j]" if n == "n" else f"[{n}, c, 0]"

    def view(self, name: str) -> str:
        return self.gen.view(name, self.view_kind(name))

    def element(self, name: str) -> str:
        return f"{self.view(name)}{self.at()}"

    def first(self, name: str) -> str:
        return f"{self.view(name)}{self.at('0')}"

    def channel_value(self, hint: str) -> str:
        """Where a new per-channel value lives: a local, or (rows) its slot of a slice."""
        local = self.names.fresh(hint)
        if not self.rows:
            return local
        self.slices.append(local)
        return f"{local}[cc]"

    sum_value = channel_value

    def start_sum(self, before, name: str) -> None:
        before.line(f"{name} = 0.0")

    def open_sums(self, before, names) -> None:
        self.row_sums.append({})  # each thread owns its channels' sums outright; a new pass begins

    def acc(self, name: str) -> str:
        """A narrowed pass adds its float32 terms into a float32 partial per row
        (`row_sums`), which the double sum takes once the row is done (narrows)."""
        if not self.narrow:
            return name
        return self.row_sums[-1].setdefault(name, self.names.fresh("r"))

    def close_sums(self, after) -> None:
        pass

    def keep(self, name: str, value: str) -> str:
        if not self.rows:
            return value
        slot = self.channel_value(tail(name))  # computed in a loop over the block's channels, read in later loops
        self.src.line(f"{slot} = {value}")
        return slot

    def narrows(self, members, reduces: bool) -> bool:
        """A float32 pass computes in float32: its per-channel values are rounded to float32
        once before the loop and its constants are float32, where Numba would otherwise
        widen every element to float64 (a Python float is a float64): small_cnn's stage-1
        batchnorm backward sweep at batch 64 took 0.69 ms this way against 1.19 ms, its
        second pass being half the vector width plus conversions. A pass that sums does so
        where a row (one image's channel) has at most RUN elements: it adds its terms in
        float32 along the row, and the row's sum into the channel's float64 total (acc).
        The error of a float32 sum grows with its length, which RUN bounds; over
        [128, 32, 1024] the statistics pass took 0.29 ms this way against 0.50 ms widening
        every element. (Longer rows cut into runs of RUN were 3-4 times slower still: the
        loop over a run starting past 0 did not vectorise.) The rows layout keeps its float64 slots."""
        if self.rows or self.gen.dtype(self.ref_name) != "f32":
            return False
        row = self.space[2:]
        return not reduces or (all(isinstance(d, int) for d in row) and math.prod(row) <= RUN)

    def narrowed(self, value: str) -> str:
        key = (len(self.narrow_passes), value)
        if key not in self.narrow_values:
            self.narrow_values[key] = self.names.fresh("f32")
            self.before.line(f"{self.narrow_values[key]} = np.float32({value})")
        return self.narrow_values[key]

    def passes(self):
        self.narrow_values: dict[tuple[int, str], str] = {}
        out = super().passes()
        for (_, _, inner, _), narrow in zip(out, self.narrow_passes):
            if narrow:
                inner.lines[:] = [_FLOAT.sub(r"np.float32(\1)", line) for line in inner.lines]
        return out

    def store_channel(self, name: str, value: str) -> str:
        # through the view the kernel takes it as: a layer of one channel's vector is a "scalar", passed flat
        return self.gen.lang.put(f"{self.view(name)}[c]", value, self.gen.dtype(name))


def sweep(gen, src, kernel) -> None:
    st = NumbaSweep(gen, kernel)
    par = numel(st.space) >= PARALLEL_MIN
    params = [st.view(b) for b in dict.fromkeys(kernel.inputs + kernel.outputs + kernel.scratch)]
    passes = st.passes()
    if st.rows:
        for _, before, inner, _ in passes:  # on x[n, c] text, before _rows reads it through row views
            ChannelTerms(st).hoist(before, inner)
        gen.scratch_slots = max(gen.scratch_slots, len(st.slices) * ROWS_BLOCK)
    with src.block(gen.signature(src, kernel, params + (["scratch"] if st.rows else []), parallel=par,
                                 accumulate=True)):
        for line in st.hoisted:
            src.line(line)
        (_rows if st.rows else _channels)(st, src, st.ref, par, st.loads, passes)


def _channels(st, src, ref, par, loads, passes) -> None:
    """One (parallel) loop over channels; in it, each pass's (n, j) loop, with a float32
    partial per row for each of its sums where it sums in float32 (NumbaSweep.acc)."""
    with src.block(f"for c in {loop(par)}({ref}.shape[1]):"):
        src.lines.extend(_indented(loads, src))
        for (comment, before, inner, after), partials in zip(passes, st.row_sums):
            src.comment(comment)
            src.lines.extend(_indented(before, src))
            if inner.lines:
                with src.block(f"for n in range({ref}.shape[0]):"):
                    for partial in partials.values():
                        src.line(f"{partial} = np.float32(0.0)")
                    with src.block(f"for j in range({ref}.shape[2]):"):
                        src.lines.extend(_indented(inner, src))
                    for total, partial in partials.items():
                        src.line(f"{total} += {partial}")
            src.lines.extend(_indented(after, src))


def _rows(st, src, ref, par, loads, passes) -> None:
    """Blocks of ROWS_BLOCK channels, dealt to the scratch's rows (one per thread); per pass,
    a loop over the block's channels, the (n, c) loop along rows, and a loop over channels again."""
    parts = "scratch.shape[0]" if par else "1"
    with src.block(f"for p in {loop(par)}({parts}):"):
        src.line("slots = scratch[p]")
        for k, name in enumerate(st.slices):
            src.line(f"{name} = slots[{k * ROWS_BLOCK}:{(k + 1) * ROWS_BLOCK}]")
        with src.block(f"for lo in range(p * {ROWS_BLOCK}, {ref}.shape[1], {parts} * {ROWS_BLOCK}):"):
            src.line(f"hi = min(lo + {ROWS_BLOCK}, {ref}.shape[1])")
            rows = [_along_rows(inner) for _, _, inner, _ in passes]
            for name in sorted({a for _, blocks, body in rows if body.lines for a in blocks}):
                src.line(f"{name}{_BLOCK} = {name}[lo:hi]")
            for (comment, before, _, after), (views, _, body) in zip(passes, rows):
                src.comment(comment)
                if before.lines:
                    _channel_loop(src, before)
                if body.lines:
                    with src.block(f"for n in range({ref}.shape[0]):"):
                        for name in views:
                            src.line(f"{name}{_ROW} = {name}[n, lo:hi]")
                        with src.block("for cc in range(hi - lo):"):
                            src.lines.extend(_indented(body, src))
                if after.lines:
                    _channel_loop(src, after)


_ROW, _BLOCK = "__row", "__block"  # suffixes of the (n, c) loop's views: generated names end in "_", these never


def _along_rows(inner) -> tuple[list[str], list[str], Source]:
    """The element loop's body indexed by `cc` alone: x[n, c] read through the row's view of
    the block (x__row = x[n, lo:hi]), a per-channel input g[c] through the block's
    (g__block = g[lo:hi]); (the row views, the block views, the body). Indices Numba knows
    are not negative (cc from range(hi - lo)) spare every access its wrap-around test, and
    the loop vectorises: the mlp_bn forward sweep's statistics pass ran twice as fast."""
    views: dict[str, None] = {}
    blocks: dict[str, None] = {}

    def row(m):
        views[m.group(1)] = None
        return f"{m.group(1)}{_ROW}[cc]"

    def block(m):
        blocks[m.group(1)] = None
        return f"{m.group(1)}{_BLOCK}[cc]"

    body = Source()
    for line in inner.lines:
        line = re.sub(r"\b(\w+)\[n, c\]", row, line)
        body.lines.append(re.sub(r"\b(\w+)\[c\]", block, line))
    if any(re.search(r"\bc\b", line) for line in body.lines):
        body.lines.insert(0, "c = lo + cc")
    return list(views), list(blocks), body


def _channel_loop(src, body) -> None:
    with src.block("for c in range(lo, hi):"):
        src.line("cc = c - lo")
        src.lines.extend(_indented(body, src))


def _indented(body, src) -> list[str]:
    """`body`'s lines (written at level 0) at `src`'s current level."""
    pad = "    " * src.level
    return [pad + line if line.strip() else line for line in body.lines]


class ChannelTerms(InvariantTerms):
    """Moves what an element of a rows-layout sweep computes from per-channel values alone
    out of the (n, c) loop, into the loop over the block's channels before it.

    In the channels layout the element loop runs over one channel, so LLVM hoists its
    per-channel terms itself. Along rows the channel changes every element, and
    `(x - mean[cc]) * (gamma[c] / math.sqrt(var[cc] + eps))` took a square root and a
    division per element: 0.33 ms of mlp_bn's 4.2 ms step (the forward sweep, [128, 512]),
    0.44 ms in its backward sweep. A term is per-channel when its leaves are constants,
    the kernel's hoisted scalars (`count_`), per-channel inputs (`gamma[c]`) and scratch
    slots (`var[cc]`) that the element loop does not write; each such term with an
    operation gets a scratch slot of its own (invariant_terms.py).
    """

    def __init__(self, st: NumbaSweep):
        super().__init__()
        self.st = st
        self.scalars = {line.split(" = ")[0] for line in st.hoisted}
        self.written: set[str] = set()

    def leaf(self, node) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.scalars
        return (isinstance(node.value, ast.Name) and node.value.id not in self.written
                and isinstance(node.slice, ast.Name) and node.slice.id in ("c", "cc"))

    def new_slot(self) -> str:
        return self.st.channel_value("h")

    def hoist(self, before: Source, inner: Source) -> None:
        statements = []
        for line in inner.lines:
            try:
                (stmt,) = ast.parse(line.strip()).body
            except (SyntaxError, ValueError):
                stmt = None
            statements.append(stmt)
            for target in getattr(stmt, "targets", [getattr(stmt, "target", None)]):
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                    self.written.add(target.value.id)
        for k, stmt in enumerate(statements):
            if self.rewrite(stmt):
                line = inner.lines[k]
                inner.lines[k] = line[:len(line) - len(line.lstrip())] + ast.unparse(stmt)
        for text, slot in self.slots.items():
            before.line(f"{slot} = {text}")
