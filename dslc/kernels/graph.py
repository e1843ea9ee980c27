"""The kernel graph: what a code generator needs to know, and nothing about how it was made.

A `KernelGraph` lists the step's `Buffer`s (every value that lives in memory between
kernels, with its role and symbolic shape) and its `Kernel`s in execution order. A
kernel is one launch:

    extern  a library kernel named by its op (matmul, conv2d and their gradients, pooling,
            softmax, losses ...); `nodes` holds the one IR node with its attributes.
    fused   one loop nest described by a `fused` node (dslc/ops/fused.py): `op` is its
            loop kind (elementwise | reduce | epilogue), the body is the node's `body`
            attribute, `index_maps` says how each input is indexed by the loop, and
            `reduces` whether it ends in a reduction. A lone elementwise op is a fused
            kernel with a one-node body, so a backend needs library kernels only for
            what is not elementwise.
    group   several nodes done in one launch (see dslc/kernels/grouping.py): `op` is the
            pattern (`sweep` or `update`), `parts` its sweeps or per-parameter segments.
    view    reshape/flatten: no launch; the output buffer is the input's memory.

Every kernel's `nodes` may be evaluated one after another with each op's reference
semantics; that is the meaning a fusing backend must preserve, and what
dslc/kernels/interpret.py does. Values a group computes and consumes itself are
`scratch`: a sequential executor stores them, a fusing backend keeps them in registers.

Kernels marked `prologue` depend only on parameters and constants that the step never
updates (batchnorm folded into conv weights, frozen layers): run them once per parameter
load, not per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from dslc.ir.graph import AttrValue, Node, Output
from dslc.ir.types import NUMPY_DTYPE, Dim, TensorType, concrete
from dslc.ops import registry

ROLES = ("input", "param", "state", "const", "random", "temp", "output")
ITEMSIZE = {"f32": 4, "f64": 8, "i32": 4, "i64": 8}
assert set(ITEMSIZE) == set(NUMPY_DTYPE)


def float_dtype(kg: "KernelGraph") -> str:
    """The NumPy dtype of the graph's floats (float32 when it has none): the workspaces'."""
    return next((NUMPY_DTYPE[b.dtype] for b in kg.buffers if b.dtype in ("f32", "f64")), "float32")


def bindings(batch: int | Mapping[str, int]) -> dict[str, int]:
    """Sizes of the symbolic dimensions: an int is the batch size N."""
    return {"N": batch} if isinstance(batch, int) else dict(batch)


@dataclass(frozen=True)
class Buffer:
    """One value in memory. `updates`: the param/state this value replaces after the step;
    `alias`: the buffer whose memory a view shares; `attrs`: a source's attributes
    (const value, random p and scale, param init)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    role: str
    updates: str | None = None
    alias: str | None = None
    attrs: tuple[tuple[str, AttrValue], ...] = ()

    @property
    def type(self) -> TensorType:
        return TensorType(self.dtype, self.shape)

    def nbytes(self, batch: int | Mapping[str, int] = 1) -> int:
        sizes = bindings(batch)
        return ITEMSIZE[self.dtype] * math.prod(concrete(d, sizes) for d in self.shape)


@dataclass(frozen=True)
class Kernel:
    name: str
    kind: str  # extern | fused | group | view
    op: str  # extern/view: the op; fused: elementwise | reduce | epilogue; group: sweep | update
    nodes: tuple[Node, ...]  # IR nodes in an order valid to evaluate one by one
    inputs: tuple[str, ...]  # buffers read that another kernel (or the caller) wrote
    outputs: tuple[str, ...]  # buffers written that outlive the kernel
    scratch: tuple[str, ...] = ()  # group only: values made and used inside it
    index_maps: tuple[str, ...] = ()  # fused only, per input: identity | scalar | channel | broadcast | host
    reduces: bool = False
    prologue: bool = False
    parts: tuple[tuple[str, ...], ...] = ()  # group only: node names per sweep / per segment

    def covers(self) -> list[Node]:
        """The primitive IR nodes this kernel computes (fused bodies opened, constants
        left out): what a generated kernel's header comment names, with their spans."""
        out = []
        for n in self.nodes:
            body = n.attr("body") if n.op == "fused" else (n,)
            out += [b for b in body if b.op != "const"]
        return out


@dataclass(frozen=True)
class KernelGraph:
    name: str
    stage: str
    buffers: tuple[Buffer, ...]
    kernels: tuple[Kernel, ...]
    outputs: tuple[Output, ...]

    _index: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_index", {b.name: b for b in self.buffers})

    def buffer(self, name: str) -> Buffer:
        return self._index[name]

    def flops(self, kernel: Kernel, batch: int | Mapping[str, int] = 1) -> int:
        """Arithmetic of `kernel` at a batch size: the sum of its primitive ops' FLOP rules."""
        sizes = bindings(batch)
        types = {b.name: _bound(b.type, sizes) for b in self.buffers}
        total = 0
        for n in kernel.nodes:
            total += _node_flops(n, [types[i] for i in n.inputs], sizes)
        return total

    def bytes_moved(self, kernel: Kernel, batch: int | Mapping[str, int] = 1) -> int:
        """Compulsory memory traffic: every input read once, every output written once
        (scratch stays on chip in a fusing backend; a view moves nothing)."""
        if kernel.kind == "view":
            return 0
        return sum(self.buffer(b).nbytes(batch) for b in kernel.inputs + kernel.outputs)


def _bound(t: TensorType, sizes: dict[str, int]) -> TensorType:
    return TensorType(t.dtype, t.bind(sizes))


def _node_flops(node: Node, ins: list[TensorType], sizes: dict[str, int]) -> int:
    if node.op == "fused":
        inner: dict[str, TensorType] = {}
        total = 0
        for b in node.attr("body"):
            if b.op != "const":
                operands = [ins[int(i[1:])] if i.startswith("$") else inner[i] for i in b.inputs]
                total += _node_flops(b, operands, sizes)
            inner[b.name] = _bound(b.type, sizes)
        return total
    rule = registry.get(node.op).flops
    return int(rule(ins, _bound(node.type, sizes), node.attr_dict)) if rule else 0


def index_maps(node: Node, input_types: list[TensorType]) -> tuple[str, ...]:
    """How the loop of a fused (or lone elementwise) node indexes each input.

    identity: same shape as the iteration space; scalar: one element for all; channel:
    a (C,) vector indexed by axis 1; broadcast: NumPy broadcasting (stride-0 axes);
    host: consumed by an epilogue's library kernel (matmul, conv2d), not by the loop. An input
    the loop reads too (a residual `x + conv2d(x)` reads x in both) takes the loop's map.
    """
    body = node.attr("body") if node.op == "fused" else (node.replace(inputs=tuple(
        f"${k}" for k in range(len(node.inputs)))),)
    kind = node.attr("kind") if node.op == "fused" else "elementwise"
    # A reduce loop iterates over its root's input, every other loop over the output.
    space = _body_type(body[-1].inputs[0], body, input_types).shape if kind == "reduce" else node.type.shape
    host_inputs: set[str] = set()
    loop_inputs: set[str] = set()
    channel_inputs: set[str] = set()
    for b in body:
        if registry.epilogue_host(b.op):
            host_inputs.update(b.inputs)
            continue
        loop_inputs.update(b.inputs)
        if b.op != "const" and registry.get(b.op).elementwise == "channel":
            channel_inputs.update(b.inputs[1:])
    host_inputs -= loop_inputs
    maps = []
    for k, t in enumerate(input_types):
        ref = f"${k}"
        if ref in host_inputs:
            maps.append("host")
        elif t.shape == space:
            maps.append("identity")
        elif all(d == 1 for d in t.shape):
            maps.append("scalar")
        elif len(space) >= 2 and t.shape == (space[1],) and (ref in channel_inputs or len(space) == 2):
            maps.append("channel")
        else:
            maps.append("broadcast")
    return tuple(maps)


def _body_type(name: str, body, input_types: list[TensorType]) -> TensorType:
    if name.startswith("$"):
        return input_types[int(name[1:])]
    return next(b.type for b in body if b.name == name)
