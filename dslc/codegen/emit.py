"""The one emitter both code generators share: what each kernel becomes, and the code of one element.

Numba and CUDA C differ in syntax and in how loops are spread over threads, never in
what a kernel computes. So the algorithm is written once, here and in groups.py, and
each language supplies a `Lang`: a small table of syntax (declarations, stores,
literals, math functions) plus its loop nests (numba_loops.py: `range`/`prange` over
array shapes; cuda_loops.py: grid-stride loops and block sums).

    form(gen, kernel)      the decision tree: how a kernel graph kernel is generated
    emit_body(...)         a list of IR nodes as one local per value, in order
    finish_element(...)    an epilogue's host value, the body, and the store of one element

A language's generator (numba_cpu.Generator, cuda_gpu.Generator) derives from
`Emitter`, which names buffers, kernels and locals the same way for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dslc.codegen.scalar import expression, has_pointwise, has_scalar, has_summand, literal, pointwise, summand
from dslc.codegen.source import Namer
from dslc.kernels.graph import Kernel, KernelGraph
from dslc.kernels.loop_forms import sweep_supported, update_supported
from dslc.ops.registry import epilogue_host

CTYPE = {"f32": "float", "f64": "double", "i32": "int", "i64": "long long"}  # C's name of each dtype

@dataclass(frozen=True)
class Lang:
    """A language's syntax table: every statement the shared emitter writes is made from it.

    target     the key of the op blocks' scalar expressions (OpDef.scalar: cpu | cuda)
    c          whether Source writes C (`//` comments, braces)
    let        a new local holding a double that is never reassigned: {name}, {value}
    store      `value` (computed in double) into element `at` of a buffer: {at}, {value}, {ctype}
    add_to     acc += value: {acc}, {value}
    fmax, sqrt the names of those math functions
    library    the extern ops the language's library computes
    chain_head, chain_results   the header and the stores of an update's chain function
               (groups.chain_text): functions, as the two languages return values differently
    """

    target: str
    c: bool
    let: str
    store: str
    add_to: str
    fmax: str
    sqrt: str
    library: frozenset
    chain_head: Callable
    chain_results: Callable

    def literal(self, value) -> str:
        """A constant of the body (a float) or an attribute value."""
        return literal(value, self.target)

    def bind(self, name: str, value: str) -> str:
        return self.let.format(name=name, value=value)

    def put(self, at: str, value: str, dtype: str) -> str:
        return self.store.format(at=at, value=value, ctype=CTYPE[dtype])

    def inc(self, acc: str, value: str) -> str:
        return self.add_to.format(acc=acc, value=value)


class Emitter:
    """Stable names for one kernel graph's module: kernels `k_<layer>`, buffers after their
    graph names and locals after their layers, all ending in `_`, so that no model's name
    can meet a word the loop emitters write (source.Namer's mangling scheme)."""

    def __init__(self, kg: KernelGraph, lang: Lang):
        self.kg, self.lang = kg, lang
        self.names = Namer()
        self.kernel_names = {k.name: self.names.kernel(k.name) for k in kg.kernels if k.kind != "view"}
        self.buffer_names = {b.name: self.names.get(b.name) for b in kg.buffers}

    def arg(self, buffer: str) -> str:
        return self.buffer_names[buffer]

    def kernel_name(self, kernel: Kernel) -> str:
        return self.kernel_names[kernel.name]

    def dtype(self, buffer: str) -> str:
        return self.kg.buffer(buffer).dtype

    def local_names(self) -> Namer:
        """Names for a kernel's locals: clear of every global and of its parameters."""
        return self.names.scope()


def host_of(body):
    """The node of a fused body that a library kernel computes first (an epilogue's host), or None."""
    return next((b for b in body if epilogue_host(b.op)), None)


def form(gen: Emitter, k: Kernel) -> str:
    """How kernel k is generated: view (no code), library (a call of the language's library
    kernel), a generated kind (expand, regulariser, pointwise, elementwise, epilogue, reduce,
    update, sweep), or fallback (the NumPy references). The same answer in every language, except
    that an extern op is a library call only where the language has that library kernel."""
    if k.kind == "view":
        return "view"
    if k.kind == "extern":
        op = k.nodes[0].op
        if op in gen.lang.library:
            return "library"
        if op == "expand" and gen.kg.buffer(k.outputs[0]).type.is_float:
            return "expand"
        if has_summand(op):
            return "regulariser"
        if has_pointwise(op):
            return "pointwise"
        return "fallback"
    if k.kind == "fused":
        body = k.nodes[0].attr("body")
        elementwise = body[:-1] if k.op == "reduce" else body
        if not all(b.op == "const" or epilogue_host(b.op) or has_scalar(b.op) for b in elementwise):
            return "fallback"
        host = host_of(body)
        if host is not None and not all(r.startswith("$") for r in host.inputs):
            return "fallback"  # elementwise work before the host: it needs a buffer the body does not have
        if k.op == "reduce":
            return "reduce" if body[-1].op in ("sum", "mean") else "fallback"
        return "elementwise" if host is None else "epilogue"
    if k.op == "update" and update_supported(gen.kg, k):
        return "update"
    if k.op == "sweep" and sweep_supported(gen.kg, k):
        return "sweep"
    return "fallback"


def emit_body(src, nodes, resolve, names: Namer, lang: Lang, by_op: bool = False) -> dict[str, str]:
    """Bind each node's value to a local, in order; `resolve(ref)` names a value from outside
    the list (a `$k` input or an enclosing value). Fused nodes are opened in place. Locals
    are named after the node's layer name, or after its op when `by_op` (chain functions,
    which must read the same for every parameter)."""
    values: dict[str, str] = {}

    def get(ref: str) -> str:
        return values[ref] if ref in values else resolve(ref)

    for n in nodes:
        if n.op == "const":
            # an integer tensor's constant is an integer literal, so that `i // 2` and `i ** 3`
            # compute in integers on the CPU (exactly), as the reference does
            value = n.attr("value")
            values[n.name] = lang.literal(float(value) if n.type.is_float else int(value))
        elif n.op == "fused":
            inner = emit_body(src, n.attr("body"), lambda r, n=n: get(n.inputs[int(r[1:])]), names, lang, by_op)
            values[n.name] = inner[n.attr("body")[-1].name]
        else:
            local = names.fresh(n.op if by_op else tail(n.name))
            src.line(lang.bind(local, expression(n.op, [get(i) for i in n.inputs], n.attr_dict, lang.target)))
            values[n.name] = local
    return values


def tail(name: str) -> str:
    """The last part of a dotted layer name: what a local holding it is called."""
    return name.rsplit(".", 1)[-1]


def finish_element(gen: Emitter, src, names: Namer, resolve, kernel: Kernel, out_at: str) -> None:
    """One element of an elementwise or epilogue kernel, its inputs already loaded
    (`resolve`): the host's value read from the output (an epilogue's library kernel
    wrote it there first), the body, and the store into `out_at`."""
    body = kernel.nodes[0].attr("body")
    host = host_of(body)
    nodes = body
    if host is not None:
        h = names.fresh(tail(host.name))
        src.line(gen.lang.bind(h, out_at))
        inputs = resolve
        resolve = lambda r: h if r == host.name else inputs(r)
        nodes = [b for b in body if b is not host]
    values = emit_body(src, nodes, resolve, names, gen.lang)
    src.line(gen.lang.put(out_at, values[body[-1].name], gen.dtype(kernel.outputs[0])))


def reduce_space(gen: Emitter, kernel: Kernel):
    """(root, the space a reduce kernel loops over, the reduced axes, the kept axes): the loop
    runs over the root's input, a kernel input or a value of the body."""
    body = kernel.nodes[0].attr("body")
    root = body[-1]
    ref = root.inputs[0]
    space = (gen.kg.buffer(kernel.inputs[int(ref[1:])]).shape if ref.startswith("$")
             else next(b.type.shape for b in body if b.name == ref))
    rank = len(space)
    axis = root.attr("axis")
    axes = list(range(rank)) if axis is None else sorted(a % rank for a in axis)
    return root, space, axes, [a for a in range(rank) if a not in axes]


def reduce_extents(gen: Emitter, kernel: Kernel, space) -> list[tuple[str, int] | None]:
    """Where each axis's size of a reduce loop's space is read at run time: (buffer, axis) of
    an input of the space's own shape where there is one; else, axis by axis, of an input
    that broadcasts along it without being 1 there (or a per-channel input, for axis 1);
    None for an axis of size 1."""
    like = next((i for i, m in zip(kernel.inputs, kernel.index_maps) if m == "identity"), None)
    if like is not None:
        return [(like, a) for a in range(len(space))]
    out: list[tuple[str, int] | None] = []
    for a, d in enumerate(space):
        for name, m in zip(kernel.inputs, kernel.index_maps):
            shape = gen.kg.buffer(name).shape
            k = a - (len(space) - len(shape)) if m != "channel" else (0 if a == 1 else -1)
            if d != 1 and m != "scalar" and 0 <= k < len(shape) and shape[k] == d:
                out.append((name, k))
                break
        else:
            out.append(None)
    return out


def accumulate_element(gen: Emitter, src, names: Namer, resolve, kernel: Kernel, acc: str) -> None:
    """One element of a reduce kernel, its inputs loaded: the producers, then acc += the root's operand."""
    body = kernel.nodes[0].attr("body")
    ref = body[-1].inputs[0]
    values = emit_body(src, body[:-1], resolve, names, gen.lang)
    src.line(gen.lang.inc(acc, values[ref] if ref in values else resolve(ref)))


def expand_axes(gen: Emitter, kernel: Kernel):
    """(g, its shape, the space of `like`, the axes g was reduced over) of an expand kernel."""
    node = kernel.nodes[0]
    g_shape, space = gen.kg.buffer(node.inputs[0]).shape, gen.kg.buffer(node.inputs[1]).shape
    axis = node.attr("axis")
    axes = list(range(len(space))) if axis is None else sorted(a % len(space) for a in axis)
    return node, g_shape, space, axes


def penalty(lang: Lang, node, x: str) -> str:
    """The term one element `x` adds to a regulariser's sum (OpDef.summand)."""
    return summand(node.op, x, node.attr_dict, lang.target)


def pair_term(lang: Lang, node, pred: str, target: str) -> str:
    """The term one pair adds to a pointwise loss's mean (OpDef.pointwise)."""
    return pointwise(node.op, pred, target, node.attr_dict, lang.target)
def fallback_notes(kernels, positions) -> list[str]:
    """One line per kernel at `positions` that falls back to the NumPy references: its
    position, name, the ops it covers and where in the `.net` source they come from.

    >>> fallback_notes(gen.kernels, gen.fallback)  # doctest: +SKIP
    ['kernel 4 svm: svm at models/two_layer.net:22:10']
    """
    notes = []
    for pos in positions:
        k = kernels[pos]
        nodes = k.covers()
        ops = "+".join(dict.fromkeys(n.op for n in nodes))
        spans = ", ".join(dict.fromkeys(str(n.span) for n in nodes if n.span is not None)) or "no source line"
        notes.append(f"kernel {pos} {k.name}: {ops} at {spans}")
    return notes
