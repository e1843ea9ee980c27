"""CUDA group kernels (dslc/kernels/grouping.py): the optimizer update and batchnorm-like sweeps.

update  ONE launch for the whole optimizer step. The grid is 2-D: blockIdx.y picks the
        segment (parameter), a `switch` gives its pointers, and blockIdx.x/threadIdx.x
        stride over its elements. Parameter shapes are static, so every segment's size
        is a literal. Chains with the same scalar program share one `__device__` chain
        function. Each element is read before it is written, which is what makes the
        memory plan's in-place updates safe (no `__restrict__` anywhere for that reason).

sweep   One block per channel (grid-stride over the channels). The passes run in order
        inside it: the channel's per-channel ops (every thread computes them, from block
        sums every thread holds), then the threads stride over the channel's N*S
        elements computing the maps and accumulating the reductions in double, then one
        `dslc_block_sum` per reduction. As on the CPU (groups.py), variances use sums
        shifted by the channel's first element, a map is stored only when another kernel
        or a later pass reads it, and `var_grad` re-centres x with a first-pass mean.
"""
from __future__ import annotations

from dslc.codegen.cuda_loops import dim, emit_body, numel
from dslc.codegen.source import Namer, Source
from dslc.kernels.loop_forms import externals, is_reduce, sweep_space


# ---- update ---------------------------------------------------------------------------

def update(gen, src, kernel) -> None:
    by = {n.name: n for n in kernel.nodes}
    outputs = set(kernel.outputs)
    chains: dict[str, str] = {}  # function text -> its name
    plan = []
    for part in kernel.parts:
        nodes = [by[m] for m in part]
        ext, outs = externals(nodes), [m for m in part if m in outputs]
        text = _chain_text(nodes, ext, outs)
        if text not in chains:
            chains[text] = gen.names.fresh("chain_" + gen.kernel_name(kernel)[2:])
        plan.append((nodes, ext, outs, chains[text]))
    for text, name in chains.items():
        src.lines.extend(text.replace("void chain(", f"void {name}(").splitlines())
        src.blank()
    with src.block(gen.signature(kernel)):
        src.line("const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;")
        src.line("const long long stride = (long long)gridDim.x * blockDim.x;")
        with src.block("switch (blockIdx.y)"):
            for s, (nodes, ext, outs, fn) in enumerate(plan):
                shape = nodes[-1].type.shape
                src.line(f"case {s}:  // {nodes[-1].name}: {len(nodes)} ops over "
                         f"{gen.kg.buffer(nodes[-1].name).type.show()}")
                src.level += 1
                args = [f"{gen.arg(i)}[{'j' if gen.kg.buffer(i).shape == shape else '0'}]" for i in ext]
                results = [f"{gen.arg(o)} + j" for o in outs]
                with src.block(f"for (long long j = first; j < {numel(shape)}; j += stride)"):
                    src.line(src.wrapped(f"{fn}(", args + results, ");"))
                src.line("break;")
                src.level -= 1
    gen.segments[kernel.name] = len(plan)


def _chain_text(nodes, ext, outs) -> str:
    """`void chain(p0, ..., r0, ...)`: the chain's scalar program; results stored through r*
    (typed by the first output's dtype: a chain's values share one dtype)."""
    params = [f"p{k}" for k in range(len(ext))]
    results = [f"r{k}" for k in range(len(outs))]
    ctype = {"f32": "float", "f64": "double"}[nodes[-1].type.dtype]
    text = Source(c=True)
    head = text.wrapped("__device__ __forceinline__ void chain(",
                        [f"double {p}" for p in params] + [f"{ctype}* {r}" for r in results], ")")
    with text.block(head):
        names = Namer(reserved=params + results + list(RESERVED_LOCALS))
        values = emit_body(text, nodes, lambda r: params[ext.index(r)], names, by_op=True)
        for r, o in zip(results, outs):
            text.line(f"*{r} = ({ctype})({values[o]});")
    return text.text()


RESERVED_LOCALS = ("exp", "log", "sqrt", "erf", "tanh", "pow", "fmin", "fmax", "expm1", "fabs", "max", "min",
                   "SQRT1_2", "INV_SQRT_2PI", "double", "float", "int", "long", "const", "case", "default")


# ---- sweep ----------------------------------------------------------------------------

class _Sweep:
    """State of one sweep kernel's emission: which value lives where."""

    def __init__(self, gen, kernel):
        self.gen, self.kernel, self.kg = gen, kernel, gen.kg
        self.space = sweep_space(self.kg, kernel)
        self.names = gen.local_names()
        self.phase = {m: p for p, part in enumerate(kernel.parts) for m in part}
        self.by = {n.name: n for n in kernel.nodes}
        self.chan: dict[str, str] = {}  # per-channel values of the current c
        self.elem: dict[str, str] = {}  # values at the current element
        self.partial: dict[str, str] = {}  # each thread's partial sums, by statistic
        self.src = Source(c=True)

    def kind(self, name: str) -> str:
        s = self.kg.buffer(name).shape
        return "space" if s == self.space else ("scalar" if all(d == 1 for d in s) else "channel")

    def get(self, name: str) -> str:
        """The value of `name` at the current element (loaded from memory on first use)."""
        if name in self.elem:
            return self.elem[name]
        if name in self.chan:
            return self.chan[name]
        local = self.names.fresh(name.rsplit(".", 1)[-1])
        self.src.line(f"const double {local} = {self.gen.arg(name)}[at];")
        self.elem[name] = local
        return local

    def stored(self, name: str) -> bool:
        """Maps another kernel, or a later pass of this one, reads from memory."""
        if name in self.kernel.outputs:
            return True
        return any(name in self.by[m].inputs and self.phase[m] > self.phase[name] for m in self.by)

    def store_channel(self, name: str, value: str) -> None:
        self.chan[name] = value
        if name in self.kernel.outputs:
            self.src.line(f"if (threadIdx.x == 0) {self.gen.arg(name)}[c] = ({self.gen.ctype(name)})({value});")


def sweep(gen, src, kernel) -> None:
    st = _Sweep(gen, kernel)
    body = st.src
    means = {n.inputs[1] for n in kernel.nodes if n.op == "var_grad"}  # x whose mean var_grad needs
    for i in kernel.inputs:
        if st.kind(i) != "space":
            st.chan[i] = st.names.fresh(i.rsplit(".", 1)[-1])
            body.line(f"const double {st.chan[i]} = {gen.arg(i)}[{'c' if st.kind(i) == 'channel' else '0'}];")
    size, channels = numel(st.space[2:]), dim(st.space[1])
    count = st.names.fresh("count")
    body.line(f"const long long {count} = {dim(st.space[0])} * {size};")
    stats: dict[str, tuple[str, str, str]] = {}  # x -> (shift, sum of x - shift, sum of squares)
    for p, part in enumerate(kernel.parts):
        body.comment(f"pass {p + 1} of {len(kernel.parts)}")
        members = [st.by[m] for m in part]
        for n in members:
            if st.kind(n.name) != "space" and not is_reduce(n):
                st.store_channel(n.name, emit_body(body, [n], st.chan.__getitem__, st.names)[n.name])
        want: dict[str, bool] = {}  # x -> whether its sum of squares is needed too
        for x, square in [(n.inputs[0], n.op == "var") for n in members if n.op in ("mean", "var")] + (
                [(x, False) for x in sorted(means)] if p == 0 else []):
            want[x] = want.get(x, False) or square
        accs = {}
        for x, square in want.items():
            if x not in stats or (square and not stats[x][2]):
                k = st.names.fresh("shift")
                body.line(f"const double {k} = {gen.arg(x)}[c * {size}];" if x in kernel.inputs
                          else f"const double {k} = 0.0;")
                s1, s2 = st.names.fresh("s1"), st.names.fresh("s2") if square else ""
                stats[x] = (k, s1, s2)
                accs[x] = square
        sums = {n.name: st.names.fresh("acc") for n in members
                if n.op in ("sum", "batchnorm_grad_gamma") or (n.op == "fused" and is_reduce(n))}
        # Each thread's partial sums, block-summed after the element loop into the names above.
        partial = {s: st.names.fresh(s + "_t") for s in
                   [s for x, sq in accs.items() for s in stats[x][1:(3 if sq else 2)]] + list(sums.values())}
        st.partial = partial
        for t in partial.values():
            body.line(f"double {t} = 0.0;")
        inner = Source(c=True)  # the element loop's body; a pass of per-channel ops only has none
        inner.level, st.src, st.elem = body.level + 1, inner, {}
        for x, square in accs.items():
            k, s1, s2 = stats[x]
            d = st.names.fresh("d")
            inner.line(f"const double {d} = {st.get(x)} - {k};")
            inner.line(f"{partial[s1]} += {d};")
            if square:
                inner.line(f"{partial[s2]} += {d} * {d};")
        for n in members:
            if st.kind(n.name) == "space" and not is_reduce(n):
                _map(st, n, stats, count)
            elif n.name in sums:
                _accumulate(st, n, sums[n.name])
        st.src = body
        if inner.lines:
            with body.block(f"for (long long e = threadIdx.x; e < {count}; e += blockDim.x)"):
                body.line(f"const long long at = ((e / {size}) * {channels} + c) * {size} + e % {size};")
                body.lines.extend(inner.lines)
        for acc, t in partial.items():
            body.line(f"const double {acc} = dslc_block_sum({t});")
        for n in members:
            if is_reduce(n):
                _finish(st, n, stats, sums, count)
    with src.block(gen.signature(kernel)):
        with src.block(f"for (long long c = blockIdx.x; c < {channels}; c += gridDim.x)"):
            for line in body.lines:
                src.line(line)


def _map(st, n, stats, count) -> None:
    if n.op == "expand":
        g = st.get(n.inputs[0])
        value = st.names.fresh("expand")
        st.src.line(f"const double {value} = {g} / {count};" if n.attr("mean") else f"const double {value} = {g};")
    elif n.op == "var_grad":
        g, x = st.get(n.inputs[0]), st.get(n.inputs[1])
        k, s1, _ = stats[n.inputs[1]]
        value = st.names.fresh("var_grad")
        st.src.line(f"const double {value} = {g} * 2.0 * ({x} - ({k} + {s1} / {count})) / "
                    f"({count} - {int(n.attr('unbiased'))});")
    else:
        value = emit_body(st.src, [n], st.get, st.names)[n.name]
    st.elem[n.name] = value
    if st.stored(n.name):
        st.src.line(f"{st.gen.arg(n.name)}[at] = ({st.gen.ctype(n.name)})({value});")


def _accumulate(st, n, acc: str) -> None:
    if n.op == "sum":
        st.src.line(f"{st.partial[acc]} += {st.get(n.inputs[0])};")
    elif n.op == "batchnorm_grad_gamma":
        g, x, mean = (st.get(i) for i in n.inputs[:3])
        st.src.line(f"{st.partial[acc]} += {g} * ({x} - {mean});")
    else:  # a fused reduce: its producers at this element, then the root's operand
        body = n.attr("body")
        values = emit_body(st.src, body[:-1], lambda r: st.get(n.inputs[int(r[1:])]), st.names)
        root_in = body[-1].inputs[0]
        operand = values[root_in] if root_in in values else st.get(n.inputs[int(root_in[1:])])
        st.src.line(f"{st.partial[acc]} += {operand};")


def _finish(st, n, stats, sums, count) -> None:
    value = st.names.fresh(n.name.rsplit(".", 1)[-1])
    if n.op in ("mean", "var"):
        k, s1, s2 = stats[n.inputs[0]]
        if n.op == "mean":
            st.src.line(f"const double {value} = {k} + {s1} / {count};")
        else:
            m = st.names.fresh("m")
            st.src.line(f"const double {m} = {s1} / {count};")
            scale = f" * {count} / ({count} - 1)" if n.attr("unbiased") else ""
            st.src.line(f"const double {value} = fmax({s2} / {count} - {m} * {m}, 0.0){scale};")
    elif n.op == "batchnorm_grad_gamma":
        var = st.chan[n.inputs[3]]
        st.src.line(f"const double {value} = {sums[n.name]} / sqrt({var} + {n.attr('eps')!r});")
    elif n.op == "sum" or n.attr("body")[-1].op == "sum":
        st.src.line(f"const double {value} = {sums[n.name]};")
    else:
        st.src.line(f"const double {value} = {sums[n.name]} / {count};")
    st.store_channel(n.name, value)
