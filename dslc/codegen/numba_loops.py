"""Numba's loop nests: how each generated kernel is spread over `range`/`prange` loops.

What a kernel computes is the shared emitter's (emit.py, groups.py); this module lays
it out as Python loops over arrays the runner passes already shaped for the loop (a
*view* of a buffer: flat, [N, C, S], [N, C] or [d0, rest]; numba_cpu.VIEWS). A kernel never
reshapes, so its text and its compiled code do not depend on the ranks or sizes of the
buffers, only on the loop's form: one compiled kernel serves every layer, model and
width with the same text.

    flat     every input identity or scalar: one loop over all elements (vectorises)
    channel  some input is per-channel: loops (n, c, j) over the output seen as
             [N, C, S], the channel's values loaded once per c
    rows     every broadcast input is one value per index of axis 0 ([O, 1, 1, 1]
             against [O, C, 3, 3]: a batchnorm folded into a convolution's weights):
             loops (i0, i1) over the output seen as [d0, rest], those values loaded once
             per i0; the inner loop is one run and vectorises, where nd's innermost
             axis is often 3 long (the fold of 64x32 3x3 filters: 19 -> 2 us)
    nd       some input broadcasts otherwise: one loop per axis, each input indexed with
             0 on the axes it broadcasts over

A reduce kernel iterates over its root's input: the kept axes outside (each output
element owns one float64 accumulator, so threads never share one), the reduced axes
inside. An epilogue's host (matmul, linear, conv2d) is a library call of the driver;
its tail is an elementwise kernel running in place over the host's output. An update
kernel runs one segment (parameter): the driver calls it once per segment. Sweeps are
laid out in numba_sweep.py.

The outermost loop is a `prange` when the kernel is big enough to pay for waking the
thread pool (PARALLEL_MIN elements at the nominal batch size; the source cannot depend
on the real one, which is bound later).
"""
from __future__ import annotations

import ast
import math
import re

from dslc.codegen import externs
from dslc.codegen.emit import (accumulate_element, expand_axes, finish_element, host_of, pair_term, penalty,
                               reduce_extents,
                               reduce_space, tail)
from dslc.codegen.groups import update_plan
from dslc.codegen.invariant_terms import InvariantTerms
from dslc.codegen.source import Source
from dslc.ir.types import concrete

NOMINAL = {"N": 64}  # the batch size used to decide what is big
PARALLEL_MIN = 1 << 16


def numel(shape) -> int:
    return math.prod(concrete(d, NOMINAL) for d in shape)


def loop(parallel: bool) -> str:
    return "prange" if parallel else "range"


def index(rank: int, var: str = "i") -> str:
    """The index of an element of a rank-`rank` array (`()` for 0-d)."""
    return ", ".join(f"{var}{a}" for a in range(rank)) if rank else "()"


def _style(maps, space, shapes) -> str:
    """The loop form (the module docstring) for inputs of `shapes` read by `maps` over `space`."""
    kinds = set(maps) - {"host"}
    if kinds <= {"identity", "scalar"}:
        return "flat"
    if kinds <= {"identity", "scalar", "channel"} and len(space) >= 2:
        return "channel"
    per_row = (space[0],) + (1,) * (len(space) - 1)
    if len(space) >= 3 and kinds <= {"identity", "scalar", "broadcast"} and all(
            shape == per_row for m, shape in zip(maps, shapes) if m == "broadcast"):
        return "rows"
    return "nd"


def _broadcast_index(in_shape, space) -> str:
    """Index of an input that broadcasts against `space` at loop variables i0..."""
    if not in_shape:
        return "()"
    lead = len(space) - len(in_shape)
    parts = ["0" if d == 1 and space[lead + k] != 1 else f"i{lead + k}" for k, d in enumerate(in_shape)]
    return ", ".join(parts)


# The view of an identity input (and of the output) in each loop style; a scalar input
# is always a flat view read at [0], a per-channel or broadcast one the buffer itself.
STYLE_VIEW = {"flat": "flat", "channel": "ncs", "rows": "rows", "nd": ""}


class Loads:
    """How each kernel input is read in the chosen loop style (hoisted where it can be)."""

    def __init__(self, gen, kernel, space, style):
        self.gen, self.kernel, self.space, self.style = gen, kernel, space, style
        self.local: dict[int, str] = {}
        self.names = None  # the kernel's local names: made once its parameters are named (start)

    def start(self) -> None:
        self.names = self.gen.local_names()

    def view(self, k: int) -> str | None:
        """The view kernel input k is passed as (None: the host's, not passed)."""
        m = self.kernel.index_maps[k]
        if m == "host":
            return None
        if m == "scalar" or (m == "broadcast" and self.style == "rows"):
            return "flat"
        return STYLE_VIEW[self.style] if m == "identity" else ""

    def params(self) -> list[str]:
        return [self.gen.view(i, v) for k, i in enumerate(self.kernel.inputs) if (v := self.view(k)) is not None]

    def hoist(self, src) -> None:
        """Scalars, once before the loops."""
        for k, (name, m) in enumerate(zip(self.kernel.inputs, self.kernel.index_maps)):
            if m == "scalar":
                self.local[k] = self.names.fresh(tail(name))
                src.line(f"{self.local[k]} = {self.gen.view(name, 'flat')}[0]")

    def load(self, src, level: str) -> None:
        """Bind the inputs read at this loop level: 'c' (per channel, or per row) or 'elem'."""
        for k, (name, m) in enumerate(zip(self.kernel.inputs, self.kernel.index_maps)):
            outer = m == "channel" or (m == "broadcast" and self.style == "rows")
            if m in ("scalar", "host") or outer != (level == "c"):
                continue
            arr = self.gen.view(name, self.view(k))
            local = self.names.fresh(tail(name))
            if m == "channel":
                at = f"{arr}[{'i1' if self.style == 'nd' else 'c'}]"
            elif outer:
                at = f"{arr}[i0]"
            elif self.style == "rows":
                at = f"{arr}[i0, i1]"
            elif self.style == "flat":
                at = f"{arr}[i]"
            elif self.style == "channel":
                at = f"{arr}[n, c, j]"
            else:
                at = f"{arr}[{_broadcast_index(self.gen.kg.buffer(name).shape, self.space)}]"
            src.line(f"{local} = {at}")
            self.local[k] = local

    def resolve(self, ref: str) -> str:
        return self.local[int(ref[1:])]


def elementwise(gen, src, kernel) -> None:
    """An elementwise kernel, or an epilogue's tail: out[idx] = body(inputs at idx), where an
    epilogue's host value is out[idx] as the library call before it (in the driver) left it."""
    out_name = kernel.outputs[0]
    body = kernel.nodes[0].attr("body")
    host = host_of(body)
    if host is not None:  # the library writes the host's value into the output first
        relu = _relu_tail(body, host) and host.op in externs.RELU_LAST
        for line in gen.library(host, [kernel.inputs[int(r[1:])] for r in host.inputs] + [out_name], relu):
            gen.call(kernel, line)
        if relu:  # the library kernel applies it: no loop of our own
            return
    space = gen.kg.buffer(out_name).shape
    style = _style(kernel.index_maps, space, [gen.kg.buffer(i).shape for i in kernel.inputs])
    par = numel(space) >= PARALLEL_MIN
    loads = Loads(gen, kernel, space, style)
    out = gen.view(out_name, STYLE_VIEW[style])
    with src.block(gen.signature(src, kernel, loads.params() + [out], parallel=par)):
        loads.start()
        loads.hoist(src)

        def element(out_at: str) -> None:
            loads.load(src, "elem")
            finish_element(gen, src, loads.names, loads.resolve, kernel, out_at)

        if style == "flat":
            with src.block(f"for i in {loop(par)}({out}.size):"):
                element(f"{out}[i]")
        elif style == "channel":
            with src.block(f"for n in {loop(par)}({out}.shape[0]):"):
                with src.block(f"for c in range({out}.shape[1]):"):
                    loads.load(src, "c")
                    with src.block(f"for j in range({out}.shape[2]):"):
                        element(f"{out}[n, c, j]")
        elif style == "rows":
            with src.block(f"for i0 in {loop(par)}({out}.shape[0]):"):
                loads.load(src, "c")
                with src.block(f"for i1 in range({out}.shape[1]):"):
                    element(f"{out}[i0, i1]")
        else:
            def inner() -> None:
                loads.load(src, "c")
                element(f"{out}[{index(len(space))}]")
            _nd_loops(src, _shape_of(out, len(space)), par, inner)


def _relu_tail(body, host) -> bool:
    """Whether an epilogue's tail is a relu of its host's value and nothing else."""
    return len(body) == 2 and body[1].op == "relu" and body[1].inputs == (host.name,)


def _shape_of(arr: str, rank: int) -> list[str]:
    return [f"{arr}.shape[{a}]" for a in range(rank)]


def _nd_loops(src, extents: list[str], par: bool, inner, order=None) -> None:
    """Nested loops i0.. over `extents` in `order` (default: every axis in order), calling inner() inside."""
    order = list(range(len(extents))) if order is None else order
    if not order:
        inner()
        return
    a = order[0]
    with src.block(f"for i{a} in {loop(par)}({extents[a]}):"):
        _nd_loops(src, extents, False, inner, order[1:])


def reduce(gen, src, kernel) -> None:
    """A reduce kernel: producers elementwise over the root's input, then sum or mean."""
    root, space, axes, kept = reduce_space(gen, kernel)
    rank = len(space)
    extents = [f"{gen.arg(r[0])}.shape[{r[1]}]" if r else "1" for r in reduce_extents(gen, kernel, space)]
    out_name = kernel.outputs[0]
    out = gen.arg(out_name)
    par = bool(kept) and numel(space) >= PARALLEL_MIN
    loads = Loads(gen, kernel, space, "nd")
    with src.block(gen.signature(src, kernel, loads.params() + [out], parallel=par, accumulate=True)):
        loads.start()
        loads.hoist(src)
        count = " * ".join(extents[a] for a in axes) or "1"
        out_index = ", ".join("0" if a in axes else f"i{a}" for a in range(rank) if root.attr("keepdims") or a not in axes)
        acc = loads.names.fresh("acc")

        def element():
            loads.load(src, "c")
            loads.load(src, "elem")
            accumulate_element(gen, src, loads.names, loads.resolve, kernel, acc)

        def outer():
            src.line(f"{acc} = 0.0")
            _nd_loops(src, extents, False, element, axes)
            result = f"{acc} / ({count})" if root.op == "mean" else acc
            src.line(gen.lang.put(f"{out}[{out_index or '()'}]", result, gen.dtype(out_name)))

        _nd_loops(src, extents, par, outer, kept)


def expand(gen, src, kernel) -> None:
    """expand(g, like): g broadcast back over the reduced axes (divided by their count if mean)."""
    node, g_shape, space, axes = expand_axes(gen, kernel)
    g, like = (gen.arg(i) for i in node.inputs)
    rank = len(space)
    out = gen.arg(kernel.outputs[0])
    if node.attr("keepdims"):
        at = _broadcast_index(g_shape, space)
    else:
        at = ", ".join(f"i{a}" for a in range(rank) if a not in axes) or "()"
    par = numel(space) >= PARALLEL_MIN
    with src.block(gen.signature(src, kernel, [g, like, out], parallel=par)):
        count = " * ".join(f"{like}.shape[{a}]" for a in axes) or "1"
        scale = f" / ({count})" if node.attr("mean") else ""
        read = f"{g}[{at}]"
        if at == "()":  # a 0-d g is read once, before the loops: Numba cannot type a 0-d read in a prange body
            src.line(f"g0 = {read}")
            read = "g0"
        store = gen.lang.put(f"{out}[{index(rank)}]", f"{read}{scale}", gen.dtype(kernel.outputs[0]))
        _nd_loops(src, _shape_of(out, rank), par, lambda: src.line(store))


def regulariser(gen, src, kernel) -> None:
    """l1/l2/elastic: one float64 sum over every element of every input (flat views)."""
    node = kernel.nodes[0]
    ins = [gen.view(i, "flat") for i in node.inputs]
    out = gen.view(kernel.outputs[0], "flat")
    with src.block(gen.signature(src, kernel, ins + [out], parallel=False, accumulate=True)):
        src.line("acc = 0.0")
        for arr in ins:
            with src.block(f"for x in {arr}:"):
                src.line(gen.lang.inc("acc", penalty(gen.lang, node, "x")))
        src.line(gen.lang.put(f"{out}[0]", "acc", gen.dtype(kernel.outputs[0])))


def pointwise(gen, src, kernel) -> None:
    """mse, huber, mae ...: one float64 sum over the element pairs of prediction and target
    (flat views), divided by their count."""
    node = kernel.nodes[0]
    pred, target = (gen.view(i, "flat") for i in node.inputs)
    out = gen.view(kernel.outputs[0], "flat")
    with src.block(gen.signature(src, kernel, [pred, target, out], parallel=False, accumulate=True)):
        src.line("acc = 0.0")
        with src.block(f"for i in range({pred}.size):"):
            src.line(f"p = {pred}[i]")
            src.line(f"t = {target}[i]")
            src.line(gen.lang.inc("acc", pair_term(gen.lang, node, "p", "t")))
        src.line(gen.lang.put(f"{out}[0]", f"acc / {pred}.size", gen.dtype(kernel.outputs[0])))


# ---- update ---------------------------------------------------------------------------

def update(gen, src, kernel) -> None:
    """A kernel per chain program (and parallel or not), run by the driver once per segment
    on its flat views: p* the chain's inputs (a scalar one read at [0]), w* what it stores."""
    chains, plan = update_plan(gen, kernel)
    texts = {name: text for text, name in chains.items()}
    narrow = gen.dtype(kernel.outputs[0]) == "f32"
    defs: dict[tuple, tuple] = {}  # (chain, scalar inputs) -> (name, definition, hoisted terms)
    functions: dict[tuple, str] = {}  # (chain, parallel, which inputs are scalars) -> kernel name
    for nodes, ext, outs, fn in plan:
        shape = nodes[-1].type.shape
        par = numel(shape) >= PARALLEL_MIN
        scalar = tuple(gen.kg.buffer(i).shape != shape for i in ext)
        if (fn, scalar) not in defs:
            name = fn if not any(key[0] == fn for key in defs) else gen.names.fresh(fn)
            defs[fn, scalar] = (name, *_chain(texts[fn], name, scalar, narrow))
            src.lines.extend(defs[fn, scalar][1].splitlines())
            src.blank()
        chain, definition, hoisted = defs[fn, scalar]
        if (fn, par, scalar) not in functions:
            segment = Source()
            name = _segment(gen, segment, kernel, chain, hoisted, par, scalar, len(outs), len(functions))
            src.lines.extend(segment.lines)
            gen.units[name] = definition + "\n" + segment.text()  # each segment kernel is shared on its own
            functions[fn, par, scalar] = name
        args = [gen.view(i, "flat") for i in ext] + [gen.view(o, "flat") for o in outs]
        gen.call(kernel, (functions[fn, par, scalar], args), comment=(
            f"{nodes[-1].name}: {len(nodes)} ops over {gen.kg.buffer(nodes[-1].name).type.show()}"))


_SCALAR_PARAM = re.compile(r"\bp(\d+)\b")  # a chain's input, p*


def _scalar_read(m) -> str:
    return f"s{m.group(1)}"  # the name a segment kernel reads scalar input p* into


class _UniformTerms(InvariantTerms):
    """The terms of a chain computed from its scalar inputs (lr, step) and constants alone."""

    def __init__(self, scalars: set[str]):
        super().__init__()
        self.scalars = scalars

    def leaf(self, node) -> bool:
        return isinstance(node, ast.Name) and node.id in self.scalars

    def new_slot(self) -> str:
        return f"u{len(self.slots)}"


class _Float32(ast.NodeTransformer):
    """Numbers as float32 constants (an integer exponent stays an integer)."""

    def visit_BinOp(self, node):
        if isinstance(node.op, ast.Pow) and isinstance(node.right, ast.Constant) and type(node.right.value) is int:
            node.left = self.visit(node.left)
            return node
        return self.generic_visit(node)

    def visit_Constant(self, node):
        if type(node.value) in (int, float):
            return ast.Call(ast.Attribute(ast.Name("np"), "float32"), [node], [])
        return node


def _chain(text: str, name: str, scalar: tuple, narrow: bool) -> tuple[str, list[tuple[str, str]]]:
    """The definition of a chain function `name`, and the terms its segment kernel computes
    before the loop, (name, value) each: `u*`, which the chain then takes as arguments.

    A float32 chain computes in float32, as PyTorch's optimizers do: with Python's float
    literals Numba widened every element to float64, and Adam's square root and division
    ran at half the vector width (mlp_bn's Adam updates, 536,586 parameters: 0.20 against
    0.13 ms). Its terms of scalars and constants alone (Adam's bias corrections
    1 / (1 - beta ** step)) are computed once, in float64, and rounded to float32
    (invariant_terms.py)."""
    decorator = '@njit(cache=True, error_model="numpy", inline="always")\n'
    if not narrow:
        return decorator + text.replace("def chain(", f"def {name}("), []
    (fn,) = ast.parse(text).body
    assert isinstance(fn, ast.FunctionDef)
    terms = _UniformTerms({f"p{j}" for j, s in enumerate(scalar) if s})
    for stmt in fn.body:
        terms.rewrite(stmt)
    fn.body = [_Float32().visit(stmt) for stmt in fn.body]
    fn.args.args += [ast.arg(slot) for slot in terms.slots.values()]
    fn.name = name
    hoisted = [(slot, f"np.float32({_SCALAR_PARAM.sub(_scalar_read, term)})") for term, slot in terms.slots.items()]
    return decorator + ast.unparse(ast.fix_missing_locations(fn)), hoisted


def _segment(gen, src, kernel, chain: str, hoisted: list[tuple[str, str]], par: bool, scalar: tuple, outs: int,
             k: int) -> str:
    """Write one segment kernel of an update group; its name."""
    params = [f"p{j}" for j in range(len(scalar))] + [f"w{j}" for j in range(outs)]
    name = gen.kernel_name(kernel) if k == 0 else gen.names.fresh(f"{gen.kernel_name(kernel)}_{k}")
    src.line(gen.decorator(kernel, parallel=par))
    with src.block(src.wrapped(f"def {name}(", params, "):")):
        args = [f"s{j}" if s else f"p{j}[i]" for j, s in enumerate(scalar)] + [slot for slot, _ in hoisted]
        for j, s in enumerate(scalar):
            if s:
                src.line(f"s{j} = p{j}[0]")
        for slot, value in hoisted:
            src.line(f"{slot} = {value}")
        results = [f"r{j}" for j in range(outs)]
        with src.block(f"for i in {loop(par)}(w0.size):"):
            src.line(f"{', '.join(results)}{',' if outs == 1 else ''} = {chain}({', '.join(args)})")
            for j in range(outs):
                src.line(f"w{j}[i] = r{j}")
    src.blank()
    return name
