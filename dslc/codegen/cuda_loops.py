"""CUDA's loop nests: how each generated kernel is spread over blocks and threads.

What a kernel computes is the shared emitter's (emit.py, groups.py); this module lays
it out on the GPU. Sizes are arguments: a buffer pointer is followed by the dimensions
the kernel reads (`x_s0`, `x_s1`, ...: `gen.dim` names one and makes it a parameter,
cuda_gpu.Generator.close), so the text depends on the kernel graph's ranks and on which
axes broadcast, never on a width or the batch, and one compiled module serves every
size; the runner passes the bound arrays' dimensions.

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

from dslc.codegen.emit import (accumulate_element, expand_axes, finish_element, pair_term, penalty, reduce_extents,
                               reduce_space,
                               tail)
from dslc.codegen.groups import Sweep, update_plan
from dslc.codegen.source import Source


def product(terms) -> str:
    """A C product of size expressions: 1 when there are none, parenthesised when there are
    several (it is divided by and taken modulo)."""
    terms = list(terms)
    return terms[0] if len(terms) == 1 else f"({' * '.join(terms)})" if terms else "1LL"


def dims(gen, buffer: str, axes=None) -> list[str]:
    """The size arguments of `buffer` along `axes` (default all), leaving out axes whose size
    is 1 in the kernel graph (the same at every batch and width)."""
    shape = gen.kg.buffer(buffer).shape
    return [gen.dim(buffer, a) for a in (range(len(shape)) if axes is None else axes) if shape[a] != 1]


def numel(gen, buffer: str) -> str:
    return product(dims(gen, buffer))


def unravel(src, names, flat: str, extents: list[str], axes=None, needed=None) -> dict[int, str]:
    """Emit the coordinates (over `needed`, default all of `axes`) of element `flat` of the
    row-major space of sizes `extents` restricted to `axes` (default all); {axis: local}."""
    axes = list(range(len(extents))) if axes is None else list(axes)
    out = {}
    for k, a in enumerate(axes):
        if needed is not None and a not in needed:
            continue
        inner = product(extents[b] for b in axes[k + 1:] if extents[b] != "1LL")
        at = flat if inner == "1LL" else f"{flat} / ({inner})"
        out[a] = names.fresh(f"i{a}")
        src.line(f"const long long {out[a]} = {at if k == 0 else f'({at}) % {extents[a]}'};")
    return out


def broadcast_offset(gen, buffer: str, space, coords: dict[int, str]) -> str:
    """The offset in `buffer`, which broadcasts against `space`, at the loop's coordinates."""
    in_shape = gen.kg.buffer(buffer).shape
    lead = len(space) - len(in_shape)
    terms = []
    for k, d in enumerate(in_shape):
        if d == 1 and space[lead + k] != 1:
            continue
        stride = product(dims(gen, buffer, range(k + 1, len(in_shape))))
        terms.append(coords[lead + k] + ("" if stride == "1LL" else f" * {stride}"))
    return " + ".join(terms) or "0"


def _space_offset(extents: list[str], coords: dict[int, str]) -> str:
    """The row-major offset of coordinates in a space of sizes `extents` (an input of the space's shape)."""
    terms = []
    for k in range(len(extents)):
        stride = product(e for e in extents[k + 1:] if e != "1LL")
        terms.append(coords[k] + ("" if stride == "1LL" else f" * {stride}"))
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
                at = broadcast_offset(self.gen, name, self.space, coords)
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


def extents(gen, buffer: str) -> list[str]:
    """The size of each axis of `buffer`: its size argument, or 1 where the kernel graph says 1."""
    shape = gen.kg.buffer(buffer).shape
    return [gen.dim(buffer, a) if d != 1 else "1LL" for a, d in enumerate(shape)]


def elementwise(gen, src, kernel) -> None:
    """An elementwise kernel, or an epilogue's tail over the host's output (in place)."""
    out_name = kernel.outputs[0]
    out, space = gen.arg(out_name), gen.kg.buffer(out_name).shape
    with src.block(gen.signature(kernel)):
        names = gen.local_names()
        loads = Loads(gen, kernel, space, names)
        loads.hoist(src)
        with src.block(f"DSLC_FOR(i, {numel(gen, out_name)})"):
            coords = unravel(src, names, "i", extents(gen, out_name), needed=_needed_axes(gen, kernel, space))
            loads.load(src, "i", coords)
            finish_element(gen, src, names, loads.resolve, kernel, f"{out}[i]")


def reduce(gen, src, kernel) -> None:
    """A reduce kernel: the producers over the root's input space, then sum or mean."""
    root, space, axes, kept = reduce_space(gen, kernel)
    sizes = [gen.dim(*r) if r else "1LL" for r in reduce_extents(gen, kernel, space)]
    out_name = kernel.outputs[0]
    with src.block(gen.signature(kernel)):
        names = gen.local_names()
        loads = Loads(gen, kernel, space, names)
        loads.hoist(src)
        count = names.fresh("count")
        src.line(f"const long long {count} = {product(sizes[a] for a in axes if sizes[a] != '1LL')};")
        kept_count = product(sizes[a] for a in kept if sizes[a] != "1LL")
        with src.block(f"for (long long o = blockIdx.x; o < {kept_count}; o += gridDim.x)"):
            coords = unravel(src, names, "o", sizes, kept)
            acc = names.fresh("acc")
            src.line(f"double {acc} = 0.0;")
            with src.block(f"for (long long r = threadIdx.x; r < {count}; r += blockDim.x)"):
                coords.update(unravel(src, names, "r", sizes, axes))
                flat = names.fresh("at")
                src.line(f"const long long {flat} = {_space_offset(sizes, coords)};")
                loads.load(src, flat, coords)
                accumulate_element(gen, src, names, loads.resolve, kernel, acc)
            total = names.fresh("total")
            src.line(f"const double {total} = dslc_block_sum({acc});")
            result = f"{total} / {count}" if root.op == "mean" else total
            src.line("if (threadIdx.x == 0) " + gen.lang.put(f"{gen.arg(out_name)}[o]", result, gen.dtype(out_name)))


def expand(gen, src, kernel) -> None:
    """expand(g, like): g broadcast back over the reduced axes (divided by their count if mean)."""
    node, g_shape, space, axes = expand_axes(gen, kernel)
    g, like = node.inputs
    rank = len(space)
    out_name = kernel.outputs[0]
    with src.block(gen.signature(kernel)):
        names = gen.local_names()
        kept = [a for a in range(rank) if a not in axes]
        lead = rank - len(g_shape)
        needed = ({lead + k for k, d in enumerate(g_shape) if not (d == 1 and space[lead + k] != 1)}
                  if node.attr("keepdims") else set(kept))
        with src.block(f"DSLC_FOR(i, {numel(gen, like)})"):
            coords = unravel(src, names, "i", extents(gen, like), needed=needed)
            if node.attr("keepdims"):
                at = broadcast_offset(gen, g, space, coords)
            else:  # g is the kept axes of like, in order
                at = broadcast_offset(gen, g, g_shape, {k: coords[a] for k, a in enumerate(kept)})
            scale = f" / (double)({product(dims(gen, like, axes))})" if node.attr("mean") else ""
            src.line(gen.lang.put(f"{gen.arg(out_name)}[i]", f"(double){gen.arg(g)}[{at}]{scale}", gen.dtype(out_name)))


def regulariser(gen, src, kernel) -> None:
    """l1/l2/elastic: one block sums the penalty over every element of every input."""
    node = kernel.nodes[0]
    out_name = kernel.outputs[0]
    with src.block(gen.signature(kernel)):
        src.line("double acc = 0.0;")
        for name in node.inputs:
            with src.block(f"for (long long k = threadIdx.x; k < {numel(gen, name)}; k += blockDim.x)"):
                src.line(f"const double x = {gen.arg(name)}[k];")
                src.line(gen.lang.inc("acc", penalty(gen.lang, node, "x")))
        src.line("const double total = dslc_block_sum(acc);")
        src.line(f"if (threadIdx.x == 0) {gen.arg(out_name)}[0] = ({gen.ctype(out_name)})total;")


def pointwise(gen, src, kernel) -> None:
    """mse, huber, mae ...: one block sums the pair terms of prediction and target, then divides by their count."""
    node = kernel.nodes[0]
    pred, target = node.inputs
    out_name = kernel.outputs[0]
    count = numel(gen, pred)
    with src.block(gen.signature(kernel)):
        src.line("double acc = 0.0;")
        with src.block(f"for (long long k = threadIdx.x; k < {count}; k += blockDim.x)"):
            src.line(f"const double p = {gen.arg(pred)}[k];")
            src.line(f"const double t = {gen.arg(target)}[k];")
            src.line(gen.lang.inc("acc", pair_term(gen.lang, node, "p", "t")))
        src.line("const double total = dslc_block_sum(acc);")
        src.line(f"if (threadIdx.x == 0) {gen.arg(out_name)}[0] = ({gen.ctype(out_name)})(total / {count});")


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
                # no shape in the comment: the module's text, CuPy's cache key, is the same at every width
                src.line(f"case {s}:  // {nodes[-1].name}: {len(nodes)} ops")
                src.level += 1
                args = [f"{gen.arg(i)}[{'j' if gen.kg.buffer(i).shape == shape else '0'}]" for i in ext]
                results = [f"{gen.arg(o)} + j" for o in outs]
                with src.block(f"for (long long j = first; j < {numel(gen, nodes[-1].name)}; j += stride)"):
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
        ref = next(i for i in self.kernel.inputs if self.kind(i) == "space")  # sizes: the activation's
        self.size = self.names.fresh("size")  # of the channel's plane: the axes after 1
        self.head.line(f"const long long {self.size} = {product(dims(self.gen, ref, range(2, len(self.space))))};")
        self.channels = self.gen.dim(ref, 1)
        self.count = self.names.fresh("count")
        self.head.line(f"const long long {self.count} = {self.gen.dim(ref, 0)} * {self.size};")

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
