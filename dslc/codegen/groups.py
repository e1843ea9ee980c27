"""Group kernels (dslc/kernels/grouping.py), planned once for every language: the optimizer
update and batchnorm-like sweeps.

update  Every chain of the group runs the same scalar program, so it is written once as
        an inlined scalar function (`chain_*`, `chain_text`), and the kernel applies it
        to every segment (parameter): Numba with one loop per segment, CUDA with one
        launch whose blockIdx.y picks the segment. Reads happen before writes at each
        element, which is what makes the in-place plan safe.

sweep   Everything in a sweep is per channel: maps touch element (n, c, j) of the
        activation seen as [N, C, S], reductions sum over (n, j) for one c, per-channel
        ops combine one c's values. `Sweep.passes` plans the kernel: per pass, the
        per-channel ops (they read only earlier passes' reductions), then one loop over
        the channel's elements computing the maps and accumulating the reductions in
        double, then the reductions' results. Per-channel values never go through memory
        unless they are kernel outputs; a map is stored only when a later pass or
        another kernel reads it. Variances use sums shifted by the channel's first
        element (no cancellation when |mean| >> std), and `var_grad` re-centres x with a
        mean accumulated in the first pass. A map a later pass needs is computed again
        there when that costs only arithmetic on what the pass reads anyway
        (`recomputed`). A language's subclass says where values live and how the passes
        are laid out over threads (numba_sweep.py, cuda_loops.py).
"""
from __future__ import annotations

from typing import Callable

from dslc.codegen.emit import emit_body, tail
from dslc.codegen.source import Namer, Source
from dslc.kernels.loop_forms import externals, is_reduce, sweep_space


# ---- update ---------------------------------------------------------------------------

def update_plan(gen, kernel) -> tuple[dict[str, str], list]:
    """({chain function text: its name}, [(nodes, external inputs, stored outputs, chain name)
    per segment]): segments with the same scalar program share one chain function."""
    by = {n.name: n for n in kernel.nodes}
    outputs = set(kernel.outputs)
    chains: dict[str, str] = {}  # function text -> its name
    plan = []
    for part in kernel.parts:
        nodes = [by[m] for m in part]
        ext, outs = externals(nodes), [m for m in part if m in outputs]
        text = chain_text(gen.lang, nodes, ext, outs)
        if text not in chains:
            chains[text] = gen.names.fresh("chain_" + gen.kernel_name(kernel)[2:])
        plan.append((nodes, ext, outs, chains[text]))
    return chains, plan


def chain_text(lang, nodes, ext, outs) -> str:
    """The function `chain(p0, p1, ...)` running a chain's scalar program on its external
    inputs and giving back the values it stores (how: the language's `chain_head`/`chain_results`)."""
    params = [f"p{k}" for k in range(len(ext))]
    dtype = nodes[-1].type.dtype
    text = Source(c=lang.c)
    with text.block(lang.chain_head(text, params, len(outs), dtype)):
        names = Namer()
        values = emit_body(text, nodes, lambda r: params[ext.index(r)], names, lang, by_op=True)
        for line in lang.chain_results([values[o] for o in outs], dtype):
            text.line(line)
    return text.text()


# ---- sweep ----------------------------------------------------------------------------

class Sweep:
    """State of one sweep kernel's emission: which value lives where.

    A language's subclass (numba_sweep.NumbaSweep, cuda_loops.CudaSweep) supplies the layout:
        setup()               the channel's inputs and `count`, before any pass
        element(name)         the current element of an S-shaped buffer
        first(x)              the channel's first element of x (the variance shift)
        channel_value(hint)   where a new per-channel value lives; keep(name, value) moves
                              a computed one there
        sum_value(hint), start_sum(before, s), open_sums(before, sums), acc(s),
        close_sums(after)     a per-channel sum: named, zeroed, accumulated into (`acc`:
                              a thread's partial on the GPU), and complete after the loop
        store_channel(name, value)   the statement writing a per-channel output
    and then lays `passes()` out over its loops.
    """

    def __init__(self, gen, kernel):
        self.gen, self.kernel, self.kg, self.lang = gen, kernel, gen.kg, gen.lang
        self.space = sweep_space(self.kg, kernel)
        self.names = None  # the kernel's local names, made when passes() starts (after its parameters)
        self.phase = {m: p for p, part in enumerate(kernel.parts) for m in part}
        self.by = {n.name: n for n in kernel.nodes}
        self.chan: dict[str, str] = {}  # per-channel values of the current c
        self.elem: dict[str, str] = {}  # values at the current element
        self.src = Source(c=self.lang.c)
        self.count = ""  # the name of the channel's element count (set by setup)
        self.narrow = False  # the current pass's element loop computes in the activation's float32
        self.before = self.src  # the current pass's code before its element loop
        self.narrow_passes: list[bool] = []  # per pass planned, whether it was narrowed

    def narrows(self, members, reduces: bool) -> bool:
        """Whether a pass's element loop computes in the activation's own precision (a
        language's choice; the base keeps every value in double)."""
        return False

    def narrowed(self, value: str) -> str:
        """A per-channel value as the element loop of a narrowed pass uses it (the language's)."""
        return value

    # The layout, a language's subclass's (see the class docstring).
    setup: Callable[[], None]
    element: Callable[[str], str]
    first: Callable[[str], str]
    channel_value: Callable[[str], str]
    keep: Callable[[str, str], str]
    sum_value: Callable[[str], str]
    start_sum: Callable[[Source, str], None]
    open_sums: Callable[[Source, list], None]
    acc: Callable[[str], str]
    close_sums: Callable[[Source], None]
    store_channel: Callable[[str, str], str]

    def kind(self, name: str) -> str:
        s = self.kg.buffer(name).shape
        return "space" if s == self.space else ("scalar" if all(d == 1 for d in s) else "channel")

    def get(self, name: str) -> str:
        """The value of `name` at the current element (loaded from memory on first use)."""
        if name in self.elem:
            return self.elem[name]
        if name in self.chan:
            return self.narrowed(self.chan[name]) if self.narrow else self.chan[name]
        if self.recomputed(name):
            self.elem[name] = emit_body(self.src, [self.by[name]], self.get, self.names, self.lang)[name]
            return self.elem[name]
        local = self.names.fresh(tail(name))
        self.src.line(self.lang.bind(local, self.element(name)))
        self.elem[name] = local
        return local

    def recomputed(self, name: str) -> bool:
        """Whether a later pass computes this map again from what it reads anyway (the
        kernel's inputs, per-channel values, other such maps) instead of reading it back:
        batchnorm's input gradient g * gamma / sqrt(var + eps) is one multiply of g, and
        storing it in one pass to load it in the next cost two of a backward sweep's six
        passes over the activation. Never an output (another kernel reads it). Measured
        alternately in one process once the second pass computes in float32 (narrows):
        small_cnn's step 4% shorter, cifar_cnn's 1-2%, resnet20's 0.5-2%; with that pass
        in float64 it had been 3% slower, the pass bound by its arithmetic."""
        n = self.by.get(name)
        if n is None or name in self.kernel.outputs or self.kind(name) != "space" or is_reduce(n) \
                or n.op in ("expand", "var_grad"):
            return False
        return all(i not in self.by or self.kind(i) != "space" or self.recomputed(i) for i in n.inputs)

    def stored(self, name: str) -> bool:
        """Maps another kernel, or a later pass of this one, reads from memory."""
        if name in self.kernel.outputs:
            return True
        later = any(name in self.by[m].inputs and self.phase[m] > self.phase[name] for m in self.by)
        return later and not self.recomputed(name)

    def bind_channel(self, n, value: str) -> None:
        """A per-channel result: kept where later passes find it, and stored if an output."""
        value = self.keep(n.name, value)
        self.chan[n.name] = value
        if n.name in self.kernel.outputs:
            self.src.line(self.store_channel(n.name, value))

    def passes(self) -> list[tuple[str, Source, Source, Source]]:
        """Per pass: (a comment, what runs before the element loop, in it, after it)."""
        kernel, lang = self.kernel, self.lang
        self.names = self.gen.local_names()
        means = {n.inputs[1] for n in kernel.nodes if n.op == "var_grad"}  # x whose mean var_grad needs
        self.setup()
        stats: dict[str, tuple[str, str, str]] = {}  # x -> (shift, sum of x - shift, sum of squares)
        out = []
        for p, part in enumerate(kernel.parts):
            before, inner, after = Source(c=lang.c), Source(c=lang.c), Source(c=lang.c)
            members = [self.by[m] for m in part]
            self.src = before
            for n in members:
                if self.kind(n.name) != "space" and not is_reduce(n):
                    self.bind_channel(n, emit_body(before, [n], self.chan.__getitem__, self.names, lang)[n.name])
            want: dict[str, bool] = {}  # x -> whether its sum of squares is needed too
            for x, square in [(n.inputs[0], n.op == "var") for n in members if n.op in ("mean", "var")] + (
                    [(x, False) for x in sorted(means)] if p == 0 else []):
                want[x] = want.get(x, False) or square
            accs = {}
            for x, square in want.items():
                if x not in stats or (square and not stats[x][2]):
                    k = self.channel_value("shift")
                    before.line(lang.bind(k, self.first(x) if x in kernel.inputs else "0.0"))
                    s1, s2 = self.sum_value("s1"), self.sum_value("s2") if square else ""
                    self.start_sum(before, s1)
                    if square:
                        self.start_sum(before, s2)
                    stats[x] = (k, s1, s2)
                    accs[x] = square
            sums = {}
            for n in members:
                if n.op in ("sum", "batchnorm_grad_gamma") or (n.op == "fused" and is_reduce(n)):
                    sums[n.name] = self.sum_value("acc")
                    self.start_sum(before, sums[n.name])
            self.open_sums(before, [s for x, sq in accs.items() for s in stats[x][1:(3 if sq else 2)]]
                           + list(sums.values()))
            self.src, self.elem, self.before = inner, {}, before  # the element loop's body (none: per-channel ops only)
            self.narrow = self.narrows(members, bool(accs or sums))
            self.narrow_passes.append(self.narrow)
            for x, square in accs.items():
                k, s1, s2 = stats[x]
                d = self.names.fresh("d")
                inner.line(lang.bind(d, f"{self.get(x)} - {k}"))
                inner.line(lang.inc(self.acc(s1), d))
                if square:
                    inner.line(lang.inc(self.acc(s2), f"{d} * {d}"))
            for n in members:
                if self.kind(n.name) == "space" and not is_reduce(n):
                    self._map(n, stats)
                elif n.name in sums:
                    self._accumulate(n, sums[n.name])
            self.src, self.narrow = after, False
            self.close_sums(after)
            for n in members:
                if is_reduce(n):
                    self._finish(n, stats, sums)
            out.append((f"pass {p + 1} of {len(kernel.parts)}", before, inner, after))
        return out

    def _map(self, n, stats) -> None:
        count, lang = self.count, self.lang
        if n.op == "expand" and self.narrow and n.inputs[0] in self.chan:  # a per-channel value: divided once, before the loop
            g = self.chan[n.inputs[0]]
            value = self.narrowed(f"{g} / {count}" if n.attr("mean") else g)
        elif n.op == "expand":
            g = self.get(n.inputs[0])
            value = self.names.fresh("expand")
            self.src.line(lang.bind(value, f"{g} / {count}" if n.attr("mean") else g))
        elif n.op == "var_grad" and self.narrow and n.inputs[0] in self.chan:  # g * 2 (x - mean) / (count - u), the channel's part before the loop
            x, (k, s1, _) = self.get(n.inputs[1]), stats[n.inputs[1]]
            coef = self.narrowed(f"{self.chan[n.inputs[0]]} * 2.0 / ({count} - {int(n.attr('unbiased'))})")
            mean = self.narrowed(f"{k} + {s1} / {count}")
            value = self.names.fresh("var_grad")
            self.src.line(lang.bind(value, f"{coef} * ({x} - {mean})"))
        elif n.op == "var_grad":
            g, x = self.get(n.inputs[0]), self.get(n.inputs[1])
            k, s1, _ = stats[n.inputs[1]]
            value = self.names.fresh("var_grad")
            self.src.line(lang.bind(value, f"{g} * 2.0 * ({x} - ({k} + {s1} / {count})) / "
                                          f"({count} - {int(n.attr('unbiased'))})"))
        else:
            value = emit_body(self.src, [n], self.get, self.names, lang)[n.name]
        self.elem[n.name] = value
        if self.stored(n.name):
            self.src.line(lang.put(self.element(n.name), value, self.gen.dtype(n.name)))
            if self._read_as_stored(n.name):
                local = self.names.fresh(tail(n.name))
                self.src.line(lang.bind(local, self.element(n.name)))
                self.elem[n.name] = local

    def _read_as_stored(self, name: str) -> bool:
        """Whether this pass's other members read `name` back as stored, rounded to its dtype.

        Another kernel reads the stored value; the members of this one must too, or the sweep
        computes other than its parts would one by one (the grouping's promise): sigmoid(30)
        is 1.0 in float32 and 1 - 9e-14 in double, so bce(sigmoid(x), t), whose loss reads the
        stored 1.0 (log(1 - p) clamped at -100), had a target gradient from log(9e-14) = -30."""
        if name not in self.kernel.outputs or self.narrow or self.gen.dtype(name) == "f64":
            return False
        part = self.kernel.parts[self.phase[name]]
        return any(name in self.by[m].inputs for m in part if m != name)

    def _accumulate(self, n, acc: str) -> None:
        target = self.acc(acc)
        if n.op == "sum":
            self.src.line(self.lang.inc(target, self.get(n.inputs[0])))
        elif n.op == "batchnorm_grad_gamma":
            g, x, mean = (self.get(i) for i in n.inputs[:3])
            self.src.line(self.lang.inc(target, f"{g} * ({x} - {mean})"))
        else:  # a fused reduce: its producers at this element, then the root's operand
            body = n.attr("body")
            values = emit_body(self.src, body[:-1], lambda r: self.get(n.inputs[int(r[1:])]), self.names, self.lang)
            root_in = body[-1].inputs[0]
            operand = values[root_in] if root_in in values else self.get(n.inputs[int(root_in[1:])])
            self.src.line(self.lang.inc(target, operand))

    def _finish(self, n, stats, sums) -> None:
        count, lang = self.count, self.lang
        value = self.names.fresh(tail(n.name))
        if n.op in ("mean", "var"):
            k, s1, s2 = stats[n.inputs[0]]
            if n.op == "mean":
                self.src.line(lang.bind(value, f"{k} + {s1} / {count}"))
            else:
                m = self.names.fresh("m")
                self.src.line(lang.bind(m, f"{s1} / {count}"))
                scale = f" * {count} / ({count} - 1)" if n.attr("unbiased") else ""
                self.src.line(lang.bind(value, f"{lang.fmax}({s2} / {count} - {m} * {m}, 0.0){scale}"))
        elif n.op == "batchnorm_grad_gamma":
            var = self.chan[n.inputs[3]]
            self.src.line(lang.bind(value, f"{sums[n.name]} / {lang.sqrt}({var} + {n.attr('eps')!r})"))
        elif n.op == "sum" or n.attr("body")[-1].op == "sum":
            self.src.line(lang.bind(value, sums[n.name]))
        else:
            self.src.line(lang.bind(value, f"{sums[n.name]} / {count}"))
        self.bind_channel(n, value)
