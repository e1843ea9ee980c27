"""Loop nests for fused kernels: elementwise, reduce and epilogue (dslc/ops/fused.py).

One generated function per kernel. The loop shape follows the kernel's index maps
(dslc/kernels/graph.py):

    flat     every input identity or scalar: one loop over all elements (vectorises)
    channel  some input is per-channel: loops (n, c, j) over the output seen as
             [N, C, S], the channel's values loaded once per c
    nd       some input broadcasts: one loop per axis, each input indexed with 0 on
             the axes it broadcasts over

A reduce kernel iterates over its root's input: the kept axes outside (each output
element owns one float64 accumulator, so threads never share one), the reduced axes
inside. An epilogue kernel first calls its host (matmul, linear, conv2d) into the
output buffer, then runs the elementwise tail in place over it.

The outermost loop is a `prange` when the kernel is big enough to pay for waking the
thread pool (PARALLEL_MIN elements at the nominal batch size; the source cannot depend
on the real one, which is bound later).
"""
from __future__ import annotations

import math

from dslc.codegen import externs
from dslc.codegen.scalar import expression
from dslc.ir.types import concrete

NOMINAL = {"N": 64}  # the batch size used to decide what is big
PARALLEL_MIN = 1 << 16
HOSTS = ("matmul", "linear", "conv2d")


def numel(shape) -> int:
    return math.prod(concrete(d, NOMINAL) for d in shape)


def loop(parallel: bool) -> str:
    return "prange" if parallel else "range"


def index(rank: int, var: str = "i") -> str:
    """The index of an element of a rank-`rank` array (`()` for 0-d)."""
    return ", ".join(f"{var}{a}" for a in range(rank)) if rank else "()"


def first(rank: int) -> str:
    return ", ".join(["0"] * rank) if rank else "()"


def emit_body(src, nodes, resolve, names, by_op: bool = False) -> dict[str, str]:
    """Bind each node's value to a local, in order; `resolve(ref)` names a value from outside
    the list (a `$k` input or an enclosing value). Fused nodes are opened in place. Locals
    are named after the node's layer name, or after its op when `by_op` (chain functions,
    which must read the same for every parameter)."""
    values: dict[str, str] = {}

    def get(ref: str) -> str:
        return values[ref] if ref in values else resolve(ref)

    for n in nodes:
        if n.op == "const":
            values[n.name] = repr(float(n.attr("value")))
        elif n.op == "fused":
            inner = emit_body(src, n.attr("body"), lambda r, n=n: get(n.inputs[int(r[1:])]), names, by_op)
            values[n.name] = inner[n.attr("body")[-1].name]
        else:
            local = names.fresh(n.op if by_op else n.name.rsplit(".", 1)[-1])
            src.line(f"{local} = {expression(n.op, [get(i) for i in n.inputs], n.attr_dict)}")
            values[n.name] = local
    return values


def _style(maps, rank: int) -> str:
    kinds = set(maps) - {"host"}
    if kinds <= {"identity", "scalar"}:
        return "flat"
    if kinds <= {"identity", "scalar", "channel"} and rank >= 2:
        return "channel"
    return "nd"


def _broadcast_index(in_shape, space) -> str:
    """Index of an input that broadcasts against `space` at loop variables i0..."""
    if not in_shape:
        return "()"
    lead = len(space) - len(in_shape)
    parts = ["0" if d == 1 and space[lead + k] != 1 else f"i{lead + k}" for k, d in enumerate(in_shape)]
    return ", ".join(parts)


class Loads:
    """How each kernel input is read in the chosen loop style (hoisted where it can be)."""

    def __init__(self, gen, kernel, space, style):
        self.gen, self.kernel, self.space, self.style = gen, kernel, space, style
        self.names = gen.local_names(kernel)
        self.shapes = [gen.kg.buffer(i).shape for i in kernel.inputs]

    def hoist(self, src, maps) -> None:
        """Scalars before the loops; flat and [N, C, S] views of identity inputs."""
        self.local: dict[int, str] = {}
        self.view: dict[int, str] = {}
        for k, (name, m) in enumerate(zip(self.kernel.inputs, maps)):
            arr = self.gen.arg(name)
            if m == "scalar":
                self.local[k] = self.names.fresh(name.rsplit(".", 1)[-1])
                src.line(f"{self.local[k]} = {arr}[{first(len(self.shapes[k]))}]")
            elif m == "identity" and self.style == "flat":
                self.view[k] = self.names.fresh(arr + "_f")
                src.line(f"{self.view[k]} = {arr}.reshape(-1)")
            elif m == "identity" and self.style == "channel":
                self.view[k] = self.names.fresh(arr + "_3")
                src.line(f"{self.view[k]} = {arr}.reshape({arr}.shape[0], {arr}.shape[1], -1)")

    def load(self, src, maps, level: str) -> None:
        """Bind the inputs read at this loop level: 'c' (per channel) or 'elem'."""
        for k, (name, m) in enumerate(zip(self.kernel.inputs, maps)):
            if m in ("scalar", "host") or (m == "channel") != (level == "c"):
                continue
            arr = self.gen.arg(name)
            local = self.names.fresh(name.rsplit(".", 1)[-1])
            if m == "channel":
                at = f"{arr}[{'i1' if self.style == 'nd' else 'c'}]"
            elif self.style == "flat":
                at = f"{self.view[k]}[i]"
            elif self.style == "channel":
                at = f"{self.view[k]}[n, c, j]"
            else:
                at = f"{arr}[{_broadcast_index(self.shapes[k], self.space)}]"
            src.line(f"{local} = {at}")
            self.local[k] = local

    def resolve(self, ref: str) -> str:
        return self.local[int(ref[1:])]


def elementwise(gen, src, kernel) -> None:
    """An elementwise or epilogue kernel: out[idx] = body(inputs at idx)."""
    node = kernel.nodes[0]
    body = node.attr("body")
    out_name = kernel.outputs[0]
    out = gen.arg(out_name)
    space = gen.kg.buffer(out_name).shape
    style = _style(kernel.index_maps, len(space))
    par = numel(space) >= PARALLEL_MIN
    host = next((b for b in body if b.op in HOSTS), None)
    with src.block(gen.signature(src, kernel, parallel=par, workspace=host is not None and host.op == "conv2d")):
        loads = Loads(gen, kernel, space, style)
        if host is not None:
            args = [gen.arg(kernel.inputs[int(r[1:])]) for r in host.inputs] + [out]
            shapes = [gen.bound(kernel.inputs[int(r[1:])]) for r in host.inputs]
            src.comment(f"{host.op} into the output, then the epilogue over it in place")
            src.line(externs.call(host, args, shapes))
        loads.hoist(src, kernel.index_maps)
        if style == "flat":
            out_at = loads.names.fresh(out + "_f")
            src.line(f"{out_at} = {out}.reshape(-1)")
            with src.block(f"for i in {loop(par)}({out_at}.size):"):
                _element(src, loads, body, host, f"{out_at}[i]")
        elif style == "channel":
            out_at = loads.names.fresh(out + "_3")
            src.line(f"{out_at} = {out}.reshape({out}.shape[0], {out}.shape[1], -1)")
            with src.block(f"for n in {loop(par)}({out_at}.shape[0]):"):
                with src.block(f"for c in range({out_at}.shape[1]):"):
                    loads.load(src, kernel.index_maps, "c")
                    with src.block(f"for j in range({out_at}.shape[2]):"):
                        _element(src, loads, body, host, f"{out_at}[n, c, j]")
        else:
            def inner() -> None:
                loads.load(src, kernel.index_maps, "c")
                _element(src, loads, body, host, f"{out}[{index(len(space))}]")
            _nd_loops(src, out, len(space), par, inner)


def _element(src, loads, body, host, out_at: str) -> None:
    loads.load(src, loads.kernel.index_maps, "elem")
    tail = body
    if host is not None:
        h = loads.names.fresh(host.name.rsplit(".", 1)[-1])
        src.line(f"{h} = {out_at}")
        resolve = lambda r: h if r == host.name else loads.resolve(r)
        tail = [b for b in body if b is not host]
        values = emit_body(src, tail, resolve, loads.names)
    else:
        values = emit_body(src, tail, loads.resolve, loads.names)
    src.line(f"{out_at} = {values[body[-1].name]}")


def _nd_loops(src, arr: str, rank: int, par: bool, inner, order=None) -> None:
    """Nested loops i0.. over `arr`'s axes in `order` (default: all in order), calling inner() inside."""
    order = list(range(rank)) if order is None else order
    if not order:
        inner()
        return
    a = order[0]
    with src.block(f"for i{a} in {loop(par)}({arr}.shape[{a}]):"):
        _nd_loops(src, arr, rank, False, inner, order[1:])


def reduce(gen, src, kernel) -> None:
    """A reduce kernel: producers elementwise over the root's input, then sum or mean."""
    node = kernel.nodes[0]
    body = node.attr("body")
    root = body[-1]
    space_ref = root.inputs[0]
    space = (gen.kg.buffer(kernel.inputs[int(space_ref[1:])]).shape if space_ref.startswith("$")
             else next(b.type.shape for b in body if b.name == space_ref))
    rank = len(space)
    axis = root.attr("axis")
    axes = sorted(range(rank)) if axis is None else sorted(a % rank for a in axis)
    kept = [a for a in range(rank) if a not in axes]
    like = next(gen.arg(i) for i, m in zip(kernel.inputs, kernel.index_maps) if m == "identity")
    out = gen.arg(kernel.outputs[0])
    par = bool(kept) and numel(space) >= PARALLEL_MIN
    with src.block(gen.signature(src, kernel, parallel=par, accumulate=True)):
        loads = Loads(gen, kernel, space, "nd")
        loads.hoist(src, kernel.index_maps)
        count = " * ".join(f"{like}.shape[{a}]" for a in axes) or "1"
        out_index = ", ".join("0" if a in axes else f"i{a}" for a in range(rank) if root.attr("keepdims") or a not in axes)
        acc = loads.names.fresh("acc")

        def element():
            loads.load(src, kernel.index_maps, "c")
            loads.load(src, kernel.index_maps, "elem")
            values = emit_body(src, body[:-1], loads.resolve, loads.names)
            src.line(f"{acc} += {values[space_ref] if space_ref in values else loads.resolve(space_ref)}")

        def outer():
            src.line(f"{acc} = 0.0")
            _nd_loops(src, like, rank, False, element, axes)
            result = f"{acc} / ({count})" if root.op == "mean" else acc
            src.line(f"{out}[{out_index or '()'}] = {result}")

        _nd_loops(src, like, rank, par, outer, kept)


def expand(gen, src, kernel) -> None:
    """expand(g, like): g broadcast back over the reduced axes (divided by their count if mean)."""
    node = kernel.nodes[0]
    g, like = (gen.arg(i) for i in node.inputs)
    g_shape, space = gen.kg.buffer(node.inputs[0]).shape, gen.kg.buffer(node.inputs[1]).shape
    rank = len(space)
    axis = node.attr("axis")
    axes = list(range(rank)) if axis is None else sorted(a % rank for a in axis)
    out = gen.arg(kernel.outputs[0])
    if node.attr("keepdims"):
        at = _broadcast_index(g_shape, space)
    else:
        at = ", ".join(f"i{a}" for a in range(rank) if a not in axes) or "()"
    par = numel(space) >= PARALLEL_MIN
    with src.block(gen.signature(src, kernel, parallel=par)):
        count = " * ".join(f"{like}.shape[{a}]" for a in axes) or "1"
        scale = f" / ({count})" if node.attr("mean") else ""
        _nd_loops(src, out, rank, par, lambda: src.line(f"{out}[{index(rank)}] = {g}[{at}]{scale}"))


# Per-element terms of the regularisers (dslc/ops/loss.py), summed over every input.
PENALTY = {"l1": "abs({0})", "l2": "{0} * {0}", "elastic": "{beta} * {0} * {0} + abs({0})"}


def regulariser(gen, src, kernel) -> None:
    """l1/l2/elastic: one float64 sum over every element of every input."""
    node = kernel.nodes[0]
    out = gen.arg(kernel.outputs[0])
    with src.block(gen.signature(src, kernel, parallel=False, accumulate=True)):
        src.line("acc = 0.0")
        for name in node.inputs:
            arr = gen.arg(name)
            with src.block(f"for x in {arr}.reshape(-1):" if gen.kg.buffer(name).shape else f"for x in ({arr}[()],):"):
                src.line(f"acc += {PENALTY[node.op].format('x', **{k: repr(v) for k, v in node.attr_dict.items()})}")
        src.line(f"{out}[()] = acc")
