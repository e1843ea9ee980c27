"""CUDA's loop nests: how each generated kernel is spread over blocks and threads.

What a kernel computes is the shared emitter's (emit.py, groups.py); this module lays
it out on the GPU. Shapes are the kernel graph's: static sizes are literals, symbolic
ones (the batch N) are kernel parameters, so the text never depends on the batch a run binds.

    elementwise  one grid-stride loop over the output's elements; each input indexed by
                 its map: identity x[i], scalar x[0] (loaded once), channel
                 x[(i / S) % C] (S = the product of the axes after 1), broadcast from
                 the element's coordinates (unravelled only when some input needs them)
    epilogue     the runner first writes the host (matmul, linear, conv2d) into the
                 output; the tail then runs in place: out[i] is the host's value
    reduce       one block per output element (grid-stride over them), its threads
                 strided over the reduced elements, summed in double by a block
                 reduction: deterministic, and no atomics
    update       ONE launch for the whole optimizer step: blockIdx.y picks the segment
                 (parameter), a `switch` gives its pointers, blockIdx.x/threadIdx.x
                 stride over its elements (no `__restrict__`: updates are in place)
    sweep        one block per channel (grid-stride over the channels); its threads
                 stride over the channel's N*S elements, and each reduction is one
                 `dslc_block_sum` after the element loop

Every operand is loaded as a double and the body computed in double (as the CPU
generator does), then rounded once on store.
"""
from __future__ import annotations

import math

from dslc.codegen.emit import (accumulate_element, expand_axes, finish_element, penalty, reduce_space, tail)
from dslc.codegen.groups import Sweep, update_plan
from dslc.codegen.source import Source
from dslc.ir.types import Sym


def dim(d) -> str:
    """A dimension as C: a literal, or the product of its symbols' parameters."""
    if isinstance(d, int):
        return f"{d}LL"
    return " * ".join(([str(d.coef) + "LL"] if d.coef != 1 else []) + list(d.syms))


def numel(shape) -> str:
    """The element count of `shape` as a C expression (static part folded)."""
    static = math.prod(d for d in shape if isinstance(d, int))
    syms = [dim(d) for d in shape if isinstance(d, Sym)]
    return " * ".join(syms + ([f"{static}LL"] if static != 1 or not syms else []))


def unravel(src, names, flat: str, shape, axes=None, needed=None) -> dict[int, str]:
    """Emit the coordinates (over `needed`, default all of `axes`) of element `flat` of the
    row-major space of `shape` restricted to `axes` (default all); returns {axis: local}."""
    axes = list(range(len(shape))) if axes is None else list(axes)
    out = {}
    for k, a in enumerate(axes):
        if needed is not None and a not in needed:
            continue
        inner = numel([shape[b] for b in axes[k + 1:]])
        at = flat if inner == "1LL" else f"{flat} / ({inner})"
        out[a] = names.fresh(f"i{a}")
        src.line(f"const long long {out[a]} = {at if k == 0 else f'({at}) % {dim(shape[a])}'};")
    return out


def broadcast_offset(in_shape, space, coords: dict[int, str]) -> str:
    """The offset of an input that broadcasts against `space`, at the loop's coordinates."""
    lead = len(space) - len(in_shape)
    terms = []
    for k, d in enumerate(in_shape):
        if d == 1 and space[lead + k] != 1:
            continue
        stride = numel(in_shape[k + 1:])
        terms.append(coords[lead + k] + ("" if stride == "1LL" else f" * {stride}"))
    return " + ".join(terms) or "0"


class Loads:
    """Each kernel input read at the current element, in the way its index map says."""

    def __init__(self, gen, kernel, space, names):
        self.gen, self.kernel, self.space, self.names = gen, kernel, space, names
        self.local: dict[int, str] = {}

    def hoist(self, src) -> None:
        """Scalar inputs, once per thread before the loop."""
        for k, (name, m) in enumerate(zip(self.kernel.inputs, self.kernel.index_maps)):
            if m == "scalar":
                self.local[k] = self.names.fresh(tail(name))
                src.line(f"const double {self.local[k]} = {self.gen.arg(name)}[0];")

    def load(self, src, flat: str, coords: dict[int, str]) -> None:
        """Bind the element's inputs: `flat` indexes identity ones, `coords` the rest."""
        for k, (name, m) in enumerate(zip(self.kernel.inputs, self.kernel.index_maps)):
            if m in ("scalar", "host"):
                continue
            if m == "identity":
                at = flat
            elif m == "channel":
                at = coords[1]
            else:
                at = broadcast_offset(self.gen.kg.buffer(name).shape, self.space, coords)
            self.local[k] = self.names.fresh(tail(name))
            src.line(f"const double {self.local[k]} = {self.gen.arg(name)}[{at}];")

    def resolve(self, ref: str) -> str:
        return self.local[int(ref[1:])]


def _needed_axes(gen, kernel, space) -> set[int]:
    """The loop coordinates the inputs' index maps read (axis 1 for channel inputs)."""
    needed = set()
    for name, m in zip(kernel.inputs, kernel.index_maps):
        if m == "channel":
            needed.add(1)
        elif m == "broadcast":
            shape = gen.kg.buffer(name).shape
            lead = len(space) - len(shape)
            needed |= {lead + k for k, d in enumerate(shape) if not (d == 1 and space[lead + k] != 1)}
    return needed


def elementwise(gen, src, kernel) -> None:
    """An elementwise kernel, or an epilogue's tail over the host's output (in place)."""
    out_name = kernel.outputs[0]
    out, space = gen.arg(out_name), gen.kg.buffer(out_name).shape
    with src.block(gen.signature(kernel)):
        names = gen.local_names()
        loads = Loads(gen, kernel, space, names)
        loads.hoist(src)
        with src.block(f"DSLC_FOR(i, {numel(space)})"):
            coords = unravel(src, names, "i", space, needed=_needed_axes(gen, kernel, space))
            loads.load(src, "i", coords)
            finish_element(gen, src, names, loads.resolve, kernel, f"{out}[i]")


def reduce(gen, src, kernel) -> None:
    """A reduce kernel: the producers over the root's input space, then sum or mean."""
    root, space, axes, kept = reduce_space(gen, kernel)
    out_name = kernel.outputs[0]
    with src.block(gen.signature(kernel)):
        names = gen.local_names()
        loads = Loads(gen, kernel, space, names)
        loads.hoist(src)
        count = names.fresh("count")
        src.line(f"const long long {count} = {numel([space[a] for a in axes])};")
        with src.block(f"for (long long o = blockIdx.x; o < {numel([space[a] for a in kept])}; o += gridDim.x)"):
            coords = unravel(src, names, "o", space, kept)
            acc = names.fresh("acc")
            src.line(f"double {acc} = 0.0;")
            with src.block(f"for (long long r = threadIdx.x; r < {count}; r += blockDim.x)"):
                coords.update(unravel(src, names, "r", space, axes))
                flat = names.fresh("at")
                src.line(f"const long long {flat} = {broadcast_offset(space, space, coords)};")
                loads.load(src, flat, coords)
                accumulate_element(gen, src, names, loads.resolve, kernel, acc)
            total = names.fresh("total")
            src.line(f"const double {total} = dslc_block_sum({acc});")
            result = f"{total} / {count}" if root.op == "mean" else total
            src.line("if (threadIdx.x == 0) " + gen.lang.put(f"{gen.arg(out_name)}[o]", result, gen.dtype(out_name)))


def expand(gen, src, kernel) -> None:
    """expand(g, like): g broadcast back over the reduced axes (divided by their count if mean)."""
    node, g_shape, space, axes = expand_axes(gen, kernel)
    rank = len(space)
    out_name = kernel.outputs[0]
    with src.block(gen.signature(kernel)):
        names = gen.local_names()
        kept = [a for a in range(rank) if a not in axes]
        lead = rank - len(g_shape)
        needed = ({lead + k for k, d in enumerate(g_shape) if not (d == 1 and space[lead + k] != 1)}
                  if node.attr("keepdims") else set(kept))
        with src.block(f"DSLC_FOR(i, {numel(space)})"):
            coords = unravel(src, names, "i", space, needed=needed)
            if node.attr("keepdims"):
                at = broadcast_offset(g_shape, space, coords)
            else:
                at = broadcast_offset([space[a] for a in kept], [space[a] for a in kept],
                                      {k: coords[a] for k, a in enumerate(kept)})
            scale = f" / (double)({numel([space[a] for a in axes])})" if node.attr("mean") else ""
            src.line(gen.lang.put(f"{gen.arg(out_name)}[i]", f"(double){gen.arg(node.inputs[0])}[{at}]{scale}",
                                    gen.dtype(out_name)))


def regulariser(gen, src, kernel) -> None:
    """l1/l2/elastic: one block sums the penalty over every element of every input."""
    node = kernel.nodes[0]
    out_name = kernel.outputs[0]
    with src.block(gen.signature(kernel)):
        src.line("double acc = 0.0;")
        for name in node.inputs:
            with src.block(f"for (long long k = threadIdx.x; k < {numel(gen.kg.buffer(name).shape)}; "
                           "k += blockDim.x)"):
                src.line(f"const double x = {gen.arg(name)}[k];")
                src.line(gen.lang.inc("acc", penalty(gen.lang, node, "x")))
        src.line("const double total = dslc_block_sum(acc);")
        src.line(f"if (threadIdx.x == 0) {gen.arg(out_name)}[0] = ({gen.ctype(out_name)})total;")


# ---- update ---------------------------------------------------------------------------

def update(gen, src, kernel) -> None:
    """One launch: blockIdx.y picks the segment; chains of one scalar program share one function."""
    chains, plan = update_plan(gen, kernel)
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


# ---- sweep ----------------------------------------------------------------------------

class CudaSweep(Sweep):
    """Every thread of a channel's block computes its per-channel values (from block sums
    every thread holds); the element loop accumulates each thread's partial sums, and one
    `dslc_block_sum` per reduction follows it. Elements are read at `at`, the offset of
    element e of channel c."""

    def setup(self) -> None:
        self.head = Source(c=True)  # the channel's inputs and count, before the passes
        for i in self.kernel.inputs:
            if self.kind(i) != "space":
                self.chan[i] = self.names.fresh(tail(i))
                self.head.line(f"const double {self.chan[i]} = {self.gen.arg(i)}[{'c' if self.kind(i) == 'channel' else '0'}];")
        self.size, self.channels = numel(self.space[2:]), dim(self.space[1])
        self.count = self.names.fresh("count")
        self.head.line(f"const long long {self.count} = {dim(self.space[0])} * {self.size};")

    def element(self, name: str) -> str:
        return f"{self.gen.arg(name)}[at]"

    def first(self, name: str) -> str:
        return f"{self.gen.arg(name)}[c * {self.size}]"

    def channel_value(self, hint: str) -> str:
        return self.names.fresh(hint)

    sum_value = channel_value

    def start_sum(self, before, name: str) -> None:
        pass  # declared by block_sum in close_sums

    def open_sums(self, before, names) -> None:
        """Each thread's partial sums, block-summed after the element loop into `names`."""
        self.partial = {s: self.names.fresh(s + "_t") for s in names}
        for t in self.partial.values():
            before.line(f"double {t} = 0.0;")

    def acc(self, name: str) -> str:
        return self.partial[name]

    def close_sums(self, after) -> None:
        for acc, t in self.partial.items():
            after.line(f"const double {acc} = dslc_block_sum({t});")

    def keep(self, name: str, value: str) -> str:
        return value

    def store_channel(self, name: str, value: str) -> str:
        return "if (threadIdx.x == 0) " + self.lang.put(f"{self.gen.arg(name)}[c]", value, self.gen.dtype(name))


def sweep(gen, src, kernel) -> None:
    st = CudaSweep(gen, kernel)
    passes = st.passes()
    with src.block(gen.signature(kernel)):
        with src.block(f"for (long long c = blockIdx.x; c < {st.channels}; c += gridDim.x)"):
            for line in st.head.lines:
                src.line(line)
            for comment, before, inner, after in passes:
                src.comment(comment)
                for line in before.lines:
                    src.line(line)
                if inner.lines:
                    with src.block(f"for (long long e = threadIdx.x; e < {st.count}; e += blockDim.x)"):
                        src.line(f"const long long at = ((e / {st.size}) * {st.channels} + c) * {st.size} + "
                                 f"e % {st.size};")
                        for line in inner.lines:
                            src.line(line)
                for line in after.lines:
                    src.line(line)
