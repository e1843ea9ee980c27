"""Group kernels (dslc/kernels/grouping.py): the optimizer update and batchnorm-like sweeps.

update  Every chain of the group runs the same scalar program, so it is written once as
        an inlined scalar function (`chain_*`), and the kernel is one loop per segment
        (parameter) calling it: one launch for the whole optimizer step. Reads happen
        before writes at each element, which is what makes the in-place plan safe.

sweep   Everything in a sweep is per channel: maps touch element (n, c, j) of the
        activation seen as [N, C, S], reductions sum over (n, j) for one c, per-channel
        ops combine one c's values. So the kernel is ONE parallel loop over channels;
        inside it, the passes run in order, each an (n, j) loop that computes its maps
        and accumulates its reductions in float64 locals. Per-channel values never go
        through memory unless they are kernel outputs; a map is stored only when a later
        pass or another kernel reads it. Variances use sums shifted by the channel's
        first element (no cancellation when |mean| >> std), and `var_grad` re-centres x
        with a mean accumulated in the first pass.
"""
from __future__ import annotations

from dslc.codegen.loops import PARALLEL_MIN, emit_body, first, loop, numel
from dslc.codegen.scalar import has_scalar
from dslc.codegen.source import Namer, Source

REDUCE_OPS = ("mean", "var", "sum", "batchnorm_grad_gamma")


# ---- update ---------------------------------------------------------------------------

def update_supported(kg, kernel) -> bool:
    by = {n.name: n for n in kernel.nodes}
    for part in kernel.parts:
        shape = by[part[-1]].type.shape
        for i in _externals([by[m] for m in part]):
            s = kg.buffer(i).shape
            if s != shape and not all(d == 1 for d in s):
                return False
    return all(_scalar_ops(n) for n in kernel.nodes)


def _scalar_ops(node) -> bool:
    if node.op == "fused":
        return all(b.op == "const" or _scalar_ops(b) for b in node.attr("body"))
    return has_scalar(node.op)


def _externals(nodes) -> list[str]:
    inside = {n.name for n in nodes}
    return list(dict.fromkeys(i for n in nodes for i in n.inputs if i not in inside))


def update(gen, src, kernel) -> None:
    by = {n.name: n for n in kernel.nodes}
    outputs = set(kernel.outputs)
    chains: dict[str, str] = {}  # function text -> its name
    plan = []
    for part in kernel.parts:
        nodes = [by[m] for m in part]
        ext, outs = _externals(nodes), [m for m in part if m in outputs]
        text = _chain_text(nodes, ext, outs)
        if text not in chains:
            chains[text] = gen.globals.fresh("chain_" + gen.kernel_name(kernel)[2:])
        plan.append((nodes, ext, outs, chains[text]))
    for text, name in chains.items():
        src.line('@njit(cache=True, error_model="numpy", inline="always")')
        src.lines.extend(text.replace("def chain(", f"def {name}(").splitlines())
        src.blank()
    par = any(numel(nodes[-1].type.shape) >= PARALLEL_MIN for nodes, *_ in plan)
    with src.block(gen.signature(src, kernel, parallel=par)):
        names = gen.local_names(kernel)
        for nodes, ext, outs, fn in plan:
            shape = nodes[-1].type.shape
            src.comment(f"{nodes[-1].name}: {len(nodes)} ops over {gen.kg.buffer(nodes[-1].name).type.show()}")
            args = []
            for i in ext:
                arr, s = gen.arg(i), gen.kg.buffer(i).shape
                local = names.fresh(arr + ("_f" if s == shape else "_s"))
                src.line(f"{local} = {arr}.reshape(-1)" if s == shape else f"{local} = {arr}[{first(len(s))}]")
                args.append(f"{local}[i]" if s == shape else local)
            flat_out = []
            for o in outs:
                local = names.fresh(gen.arg(o) + "_f")
                src.line(f"{local} = {gen.arg(o)}.reshape(-1)")
                flat_out.append(local)
            results = [names.fresh(f"r{k}") for k in range(len(outs))]
            with src.block(f"for i in {loop(numel(shape) >= PARALLEL_MIN)}({flat_out[0]}.size):"):
                src.line(f"{', '.join(results)}{',' if len(results) == 1 else ''} = {fn}({', '.join(args)})")
                for o, r in zip(flat_out, results):
                    src.line(f"{o}[i] = {r}")


def _chain_text(nodes, ext, outs) -> str:
    """`def chain(p0, p1, ...)`: the chain's scalar program, returning its stored values."""
    params = [f"p{k}" for k in range(len(ext))]
    text = Source()
    with text.block(f"def chain({', '.join(params)}):"):
        names = Namer(reserved=params + ["math", "max", "min"])
        values = emit_body(text, nodes, lambda r: params[ext.index(r)], names, by_op=True)
        result = ", ".join(values[o] for o in outs)
        text.line(f"return {result}{',' if len(outs) == 1 else ''}")
    return text.text()


# ---- sweep ----------------------------------------------------------------------------

def _is_reduce(node) -> bool:
    return node.op in REDUCE_OPS or (node.op == "fused" and node.attr("kind") == "reduce")


def sweep_space(kg, kernel):
    """S: the activation every map and reduction of the sweep runs over (rank >= 2)."""
    names = [i for n in kernel.nodes for i in n.inputs] + [n.name for n in kernel.nodes]
    return next(s for s in (kg.buffer(i).shape for i in names) if len(s) >= 2 and not all(d == 1 for d in s))


def sweep_supported(kg, kernel) -> bool:
    space = sweep_space(kg, kernel)
    produced = {n.name for n in kernel.nodes}
    chan = (space[1],)
    for n in kernel.nodes:
        if n.op == "fused" and n.attr("kind") == "reduce":
            root = n.attr("body")[-1]
            if root.op not in ("sum", "mean") or not all(_scalar_ops(b) for b in n.attr("body")[:-1]):
                return False
        elif n.op == "var_grad" and n.inputs[1] in produced:
            return False
        elif n.op not in REDUCE_OPS + ("expand", "var_grad") and not _scalar_ops(n):
            return False
        for i in n.inputs:
            s = kg.buffer(i).shape
            if s not in (space, chan) and not all(d == 1 for d in s):
                return False
    return any(kg.buffer(i).shape == space for i in kernel.inputs)


class _Sweep:
    """State of one sweep kernel's emission: which value lives where."""

    def __init__(self, gen, src, kernel):
        self.gen, self.src, self.kernel = gen, src, kernel
        self.kg = gen.kg
        self.space = sweep_space(self.kg, kernel)
        self.names = gen.local_names(kernel)
        self.phase = {m: p for p, part in enumerate(kernel.parts) for m in part}
        self.by = {n.name: n for n in kernel.nodes}
        self.chan: dict[str, str] = {}  # per-channel values of the current c
        self.views: dict[str, str] = {}  # S-shaped buffers as [N, C, S]
        self.elem: dict[str, str] = {}

    def kind(self, name: str) -> str:
        s = self.kg.buffer(name).shape
        return "space" if s == self.space else ("scalar" if all(d == 1 for d in s) else "channel")

    def view(self, name: str) -> str:
        if name not in self.views:
            arr = self.gen.arg(name)
            self.views[name] = self.names.fresh(arr + "_3")
            self.hoisted.append(f"{self.views[name]} = {arr}.reshape({arr}.shape[0], {arr}.shape[1], -1)")
        return self.views[name]

    def get(self, name: str) -> str:
        """The value of `name` at the current element (loads from memory on first use)."""
        if name in self.elem:
            return self.elem[name]
        if name in self.chan:
            return self.chan[name]
        local = self.names.fresh(name.rsplit(".", 1)[-1])
        self.src.line(f"{local} = {self.view(name)}[n, c, j]")
        self.elem[name] = local
        return local

    def stored(self, name: str) -> bool:
        """Maps another kernel, or a later pass of this one, reads from memory."""
        if name in self.kernel.outputs:
            return True
        return any(name in self.by[m].inputs and self.phase[m] > self.phase[name] for m in self.by)


def sweep(gen, src, kernel) -> None:
    st = _Sweep(gen, src, kernel)
    par = numel(st.space) >= PARALLEL_MIN
    body = Source()
    st.src, st.hoisted = body, []
    body.level = 2
    means = {n.inputs[1] for n in kernel.nodes if n.op == "var_grad"}  # x whose mean var_grad needs
    for i in kernel.inputs:
        if st.kind(i) == "channel":
            st.chan[i] = st.names.fresh(i.rsplit(".", 1)[-1])
            body.line(f"{st.chan[i]} = {gen.arg(i)}[c]")
        elif st.kind(i) == "scalar":
            st.chan[i] = st.names.fresh(i.rsplit(".", 1)[-1])
            st.hoisted.append(f"{st.chan[i]} = {gen.arg(i)}[{first(len(gen.kg.buffer(i).shape))}]")
    ref = st.view(next(i for i in kernel.inputs if st.kind(i) == "space"))
    count = st.names.fresh("count")
    st.hoisted.append(f"{count} = {ref}.shape[0] * {ref}.shape[2]")
    stats: dict[str, tuple[str, str, str]] = {}  # x -> (shift, sum of x - shift, sum of squares)
    for p, part in enumerate(kernel.parts):
        body.comment(f"pass {p + 1} of {len(kernel.parts)}")
        members = [st.by[m] for m in part]
        for n in members:
            if st.kind(n.name) != "space" and not _is_reduce(n):
                _channel_op(st, n)
        want: dict[str, bool] = {}  # x -> whether its sum of squares is needed too
        for x, square in [(n.inputs[0], n.op == "var") for n in members if n.op in ("mean", "var")] + (
                [(x, False) for x in sorted(means)] if p == 0 else []):
            want[x] = want.get(x, False) or square
        accs = {}
        for x, square in want.items():
            if x not in stats or (square and not stats[x][2]):
                k = st.names.fresh("shift")
                body.line(f"{k} = {st.view(x)}[0, c, 0]" if x in kernel.inputs else f"{k} = 0.0")
                s1, s2 = st.names.fresh("s1"), st.names.fresh("s2") if square else ""
                body.line(f"{s1} = 0.0")
                if square:
                    body.line(f"{s2} = 0.0")
                stats[x] = (k, s1, s2)
                accs[x] = square
        sums = {}
        for n in members:
            if n.op in ("sum", "batchnorm_grad_gamma") or (n.op == "fused" and _is_reduce(n)):
                sums[n.name] = st.names.fresh("acc")
                body.line(f"{sums[n.name]} = 0.0")
        inner = Source()  # the (n, j) loop's body; a pass of per-channel ops only has none
        inner.level, st.src, st.elem = body.level + 2, inner, {}
        for x, square in accs.items():
            k, s1, s2 = stats[x]
            d = st.names.fresh("d")
            inner.line(f"{d} = {st.get(x)} - {k}")
            inner.line(f"{s1} += {d}")
            if square:
                inner.line(f"{s2} += {d} * {d}")
        for n in members:
            if st.kind(n.name) == "space" and not _is_reduce(n):
                _map(st, n, stats, count)
            elif n.name in sums:
                _accumulate(st, n, sums[n.name])
        st.src = body
        if inner.lines:
            with body.block(f"for n in range({ref}.shape[0]):"):
                with body.block(f"for j in range({ref}.shape[2]):"):
                    body.lines.extend(inner.lines)
        for n in members:
            if _is_reduce(n):
                _finish(st, n, stats, sums, count)
    with src.block(gen.signature(src, kernel, parallel=par, accumulate=True)):
        for line in st.hoisted:
            src.line(line)
        with src.block(f"for c in {loop(par)}({ref}.shape[1]):"):
            src.lines.extend(body.lines)


def _channel_op(st, n) -> None:
    values = emit_body(st.src, [n], st.chan.__getitem__, st.names)
    st.chan[n.name] = values[n.name]
    if n.name in st.kernel.outputs:
        st.src.line(f"{st.gen.arg(n.name)}[c] = {values[n.name]}")


def _map(st, n, stats, count) -> None:
    if n.op == "expand":
        g = st.get(n.inputs[0])
        value = st.names.fresh("expand")
        st.src.line(f"{value} = {g} / {count}" if n.attr("mean") else f"{value} = {g}")
    elif n.op == "var_grad":
        g, x = st.get(n.inputs[0]), st.get(n.inputs[1])
        k, s1, _ = stats[n.inputs[1]]
        value = st.names.fresh("var_grad")
        st.src.line(f"{value} = {g} * 2.0 * ({x} - ({k} + {s1} / {count})) / ({count} - {int(n.attr('unbiased'))})")
    else:
        value = emit_body(st.src, [n], st.get, st.names)[n.name]
    st.elem[n.name] = value
    if st.stored(n.name):
        st.src.line(f"{st.view(n.name)}[n, c, j] = {value}")


def _accumulate(st, n, acc: str) -> None:
    if n.op == "sum":
        st.src.line(f"{acc} += {st.get(n.inputs[0])}")
    elif n.op == "batchnorm_grad_gamma":
        g, x, mean = (st.get(i) for i in n.inputs[:3])
        st.src.line(f"{acc} += {g} * ({x} - {mean})")
    else:  # a fused reduce: its producers at this element, then the root's operand
        body = n.attr("body")
        values = emit_body(st.src, body[:-1], lambda r: st.get(n.inputs[int(r[1:])]), st.names)
        root_in = body[-1].inputs[0]
        st.src.line(f"{acc} += {values[root_in] if root_in in values else st.get(n.inputs[int(root_in[1:])])}")


def _finish(st, n, stats, sums, count) -> None:
    value = st.names.fresh(n.name.rsplit(".", 1)[-1])
    if n.op in ("mean", "var"):
        k, s1, s2 = stats[n.inputs[0]]
        if n.op == "mean":
            st.src.line(f"{value} = {k} + {s1} / {count}")
        else:
            m = st.names.fresh("m")
            st.src.line(f"{m} = {s1} / {count}")
            scale = f" * {count} / ({count} - 1)" if n.attr("unbiased") else ""
            st.src.line(f"{value} = max({s2} / {count} - {m} * {m}, 0.0){scale}")
    elif n.op == "batchnorm_grad_gamma":
        var = st.chan[n.inputs[3]]
        st.src.line(f"{value} = {sums[n.name]} / math.sqrt({var} + {n.attr('eps')!r})")
    elif n.op == "sum" or n.attr("body")[-1].op == "sum":
        st.src.line(f"{value} = {sums[n.name]}")
    else:
        st.src.line(f"{value} = {sums[n.name]} / {count}")
    st.chan[n.name] = value
    if n.name in st.kernel.outputs:
        st.src.line(f"{st.gen.arg(n.name)}[c] = {value}")
