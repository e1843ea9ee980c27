"""CUDA loop kernels for fused kernels (elementwise, reduce, epilogue tails), expand and the regularisers.

Shapes are the kernel graph's: static sizes are literals, symbolic ones (the batch N)
are kernel parameters, so the text never depends on the batch a run binds.

    elementwise  one grid-stride loop over the output's elements; each input indexed by
                 its map: identity x[i], scalar x[0] (loaded once), channel
                 x[(i / S) % C] (S = the product of the axes after 1), broadcast from
                 the element's coordinates (unravelled only when some input needs them)
    epilogue     the runner first writes the host (matmul, linear, conv2d) into the
                 output; the tail then runs in place: out[i] is the host's value
    reduce       one block per output element (grid-stride over them), its threads
                 strided over the reduced elements, summed in double by a block
                 reduction: deterministic, and no atomics

Every operand is loaded as a double and the body computed in double (as the CPU
generator does), then rounded once on store.
"""
from __future__ import annotations

import math

from dslc.codegen.scalar import expression, literal
from dslc.ir.types import Sym

HOSTS = ("matmul", "linear", "conv2d")


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


def emit_body(src, nodes, resolve, names, by_op: bool = False) -> dict[str, str]:
    """Bind each node's value to a `const double` local, in order (fused nodes opened in
    place); `resolve(ref)` names a value from outside the list. As loops.emit_body."""
    values: dict[str, str] = {}

    def get(ref: str) -> str:
        return values[ref] if ref in values else resolve(ref)

    for n in nodes:
        if n.op == "const":
            values[n.name] = literal(float(n.attr("value")), "cuda")
        elif n.op == "fused":
            inner = emit_body(src, n.attr("body"), lambda r, n=n: get(n.inputs[int(r[1:])]), names, by_op)
            values[n.name] = inner[n.attr("body")[-1].name]
        else:
            local = names.fresh(n.op if by_op else n.name.rsplit(".", 1)[-1])
            src.line(f"const double {local} = {expression(n.op, [get(i) for i in n.inputs], n.attr_dict, 'cuda')};")
            values[n.name] = local
    return values


class Loads:
    """Each kernel input read at the current element, in the way its index map says."""

    def __init__(self, gen, kernel, space, names):
        self.gen, self.kernel, self.space, self.names = gen, kernel, space, names
        self.local: dict[int, str] = {}

    def hoist(self, src) -> None:
        """Scalar inputs, once per thread before the loop."""
        for k, (name, m) in enumerate(zip(self.kernel.inputs, self.kernel.index_maps)):
            if m == "scalar":
                self.local[k] = self.names.fresh(name.rsplit(".", 1)[-1])
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
            self.local[k] = self.names.fresh(name.rsplit(".", 1)[-1])
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
    body = kernel.nodes[0].attr("body")
    out_name = kernel.outputs[0]
    out, space = gen.arg(out_name), gen.kg.buffer(out_name).shape
    host = next((b for b in body if b.op in HOSTS), None)
    with src.block(gen.signature(kernel)):
        names = gen.local_names()
        loads = Loads(gen, kernel, space, names)
        loads.hoist(src)
        with src.block(f"DSLC_FOR(i, {numel(space)})"):
            coords = unravel(src, names, "i", space, needed=_needed_axes(gen, kernel, space))
            loads.load(src, "i", coords)
            resolve = loads.resolve
            tail = body
            if host is not None:
                h = names.fresh(host.name.rsplit(".", 1)[-1])
                src.line(f"const double {h} = {out}[i];")
                def resolve(ref: str, h: str = h, real=loads.resolve) -> str:
                    return h if ref == host.name else real(ref)
                tail = [b for b in body if b is not host]
            values = emit_body(src, tail, resolve, names)
            src.line(f"{out}[i] = ({gen.ctype(out_name)})({values[body[-1].name]});")


def reduce(gen, src, kernel) -> None:
    """A reduce kernel: the producers over the root's input space, then sum or mean."""
    body = kernel.nodes[0].attr("body")
    root = body[-1]
    space_ref = root.inputs[0]
    space = (gen.kg.buffer(kernel.inputs[int(space_ref[1:])]).shape if space_ref.startswith("$")
             else next(b.type.shape for b in body if b.name == space_ref))
    rank = len(space)
    axis = root.attr("axis")
    axes = list(range(rank)) if axis is None else sorted(a % rank for a in axis)
    kept = [a for a in range(rank) if a not in axes]
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
                values = emit_body(src, body[:-1], loads.resolve, names)
                src.line(f"{acc} += {values[space_ref] if space_ref in values else loads.resolve(space_ref)};")
            total = names.fresh("total")
            src.line(f"const double {total} = dslc_block_sum({acc});")
            result = f"{total} / {count}" if root.op == "mean" else total
            src.line(f"if (threadIdx.x == 0) {gen.arg(out_name)}[o] = ({gen.ctype(out_name)})({result});")


def expand(gen, src, kernel) -> None:
    """expand(g, like): g broadcast back over the reduced axes (divided by their count if mean)."""
    node = kernel.nodes[0]
    g_name = node.inputs[0]
    g_shape, space = gen.kg.buffer(g_name).shape, gen.kg.buffer(node.inputs[1]).shape
    rank = len(space)
    axis = node.attr("axis")
    axes = list(range(rank)) if axis is None else sorted(a % rank for a in axis)
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
            src.line(f"{gen.arg(out_name)}[i] = ({gen.ctype(out_name)})((double){gen.arg(g_name)}[{at}]{scale});")


# Per-element terms of the regularisers (dslc/ops/loss.py), summed over every input.
PENALTY = {"l1": "fabs({0})", "l2": "{0} * {0}", "elastic": "{beta} * {0} * {0} + fabs({0})"}


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
                attrs = {k: literal(v, "cuda") for k, v in node.attr_dict.items()}
                src.line(f"acc += {PENALTY[node.op].format('x', **attrs)};")
        src.line("const double total = dslc_block_sum(acc);")
        src.line(f"if (threadIdx.x == 0) {gen.arg(out_name)}[0] = ({gen.ctype(out_name)})total;")
