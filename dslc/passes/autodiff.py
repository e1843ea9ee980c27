"""Reverse-mode autodiff as a graph-to-graph pass: loss graph -> graph with gradients.

For each node in reverse topological order, its op's gradient rule maps the
cotangent of its output to cotangents of its inputs; gradient nodes are ordinary
typed nodes appended to the same graph, so they can be inspected, optimised and
code-generated like the forward. Two concerns live here and nowhere else:

- un-broadcasting: a rule returns a cotangent in the *broadcast* shape; `unbroadcast`
  sums it back to the input's shape (y = x + b with b: f32[10] and y: f32[N, 10]).
- fan-out: a value used several times receives the sum of its cotangents.

Only what is needed is differentiated: nodes that no requested gradient depends on
(frozen parameters, labels, running statistics) get no gradient nodes at all.

    g = differentiate(graph, wrt=["linear.weight", "linear.bias"])
    g.outputs_of("grad")  # -> Output("grad", "linear.weight", "<node>"), ...
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from dslc.diagnostics import CompileError
from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Graph, Node, Output
from dslc.ir.types import TensorType
from dslc.ops import registry
from dslc.passes.dce import prune


class GradBuilder:
    """What gradient rules see: `b.mul(g, y)`, `b.sum(v, axis=(0,))`, `b.const(2.0)`, `b.type(name)`.

    Any op of the registry is a method: `b.OP(*inputs, **attrs)` appends that node
    (shape-checked) and returns its name, so rules read like the math they encode.
    """

    def __init__(self, builder: GraphBuilder, prefix: str = "grad."):
        self._b = builder
        self._prefix = prefix

    def type(self, name: str) -> TensorType:
        return self._b.type_of(name)

    def const(self, value: float, dtype: str = "f32") -> str:
        return self._b.const(float(value), dtype)

    def op(self, op: str, *inputs: str, **attrs) -> str:
        return self._b.add(op, list(inputs), attrs, name=self._b.unique(self._prefix + op))

    def named(self, name: str, op: str, *inputs: str, span=None, **attrs) -> str:
        """Append a node under an exact name (a lowering that keeps a layer's name)."""
        return self._b.add(op, list(inputs), attrs, span, name=name)

    def __getattr__(self, op: str):
        if op.startswith("_"):
            raise AttributeError(op)
        return lambda *inputs, **attrs: self.op(op, *inputs, **attrs)


def unbroadcast(b: GradBuilder, g: str, target: TensorType) -> str:
    """Sum cotangent `g` over the axes NumPy broadcasting added or stretched to reach its shape."""
    gt = b.type(g)
    if gt.shape == target.shape:
        return g
    lead = gt.rank - target.rank
    stretched = tuple(i + lead for i, d in enumerate(target.shape) if d == 1 and gt.shape[i + lead] != 1)
    axes = tuple(range(lead)) + stretched
    out = b.sum(g, axis=axes, keepdims=False) if axes else g
    if b.type(out).shape != target.shape:
        out = b.reshape(out, shape=tuple(d if isinstance(d, int) else -1 for d in target.shape))
    return out


def differentiable(graph: Graph, wrt: Sequence[str]) -> set[str]:
    """Names on some path from a value in `wrt` to the loss: the only nodes that need gradients."""
    reach = set(wrt)
    for n in graph.nodes:
        op = registry.get(n.op)
        if any(i in reach for k, i in enumerate(n.inputs) if k not in op.integer_inputs) and n.type.is_float:
            reach.add(n.name)
    return reach


def differentiate(graph: Graph, wrt: Sequence[str], loss: str | None = None,
                   rules: Mapping[str, Callable] | None = None) -> Graph:
    """`graph` plus gradient nodes, with one Output("grad", NAME, node) per name in `wrt`.
    `rules` replaces the registry's gradient rule of some ops ({"relu": rule}): a modified
    backward pass such as guided backpropagation (dslc/explain/gradients.py)."""
    loss = loss or graph.loss
    if loss is None:
        raise CompileError.single("E0401", f"model '{graph.name}' has no loss to differentiate")
    b = GraphBuilder(graph.nodes)
    gb = GradBuilder(b)
    live = differentiable(graph, wrt)
    cot: dict[str, list[str]] = {loss: [gb.const(1.0, graph[loss].type.dtype)]}
    total: dict[str, str] = {}
    for node in reversed(graph.nodes):
        if node.name not in cot or node.name not in live:
            continue
        g = total[node.name] = _accumulate(gb, cot.pop(node.name))
        if node.op in ("input", "param"):
            continue
        op = registry.get(node.op)
        rule = (rules or {}).get(node.op, op.grad)
        if rule is None:
            raise NotImplementedError(f"op {node.op!r} has no gradient rule")
        grads = rule(gb, node, g)
        for k, (inp, gi) in enumerate(zip(node.inputs, grads)):
            if gi is None or inp not in live or k in op.integer_inputs:
                continue
            cot.setdefault(inp, []).append(unbroadcast(gb, gi, graph[inp].type))
    outputs = list(graph.outputs)
    for name in wrt:
        if name not in total:  # the loss does not depend on it: its gradient is zero
            total[name] = gb.zeros_like(name)
        outputs.append(Output("grad", name, total[name]))
    # Rules emit a cotangent for every input; those of inputs nobody asked about (frozen
    # parameters, running statistics) are dropped here, so they are never computed.
    return prune(b.graph(graph.name, outputs, "backward"))


def _accumulate(b: GradBuilder, parts: list[str]) -> str:
    out = parts[0]
    for p in parts[1:]:
        out = b.add(out, p)
    return out


def trainable_params(graph: Graph) -> list[Node]:
    return [n for n in graph.params if n.attr("trainable")]
