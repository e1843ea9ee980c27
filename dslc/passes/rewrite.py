"""Rebuilding a graph node by node: the one loop every rewriting pass shares.

`rewrite(graph, fn)` copies the graph into a fresh GraphBuilder. For each node, `fn(node,
ctx)` may return the name of a value (already in the new graph, or built by `ctx.b`)
that replaces the node; returning None copies the node with its inputs renamed.
Outputs are renamed the same way, so a pass only describes its local change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Graph, Node, Output
from dslc.passes.autodiff import GradBuilder


@dataclass
class Ctx:
    graph: Graph  # the graph being rewritten (old names)
    b: GradBuilder  # appends to the new graph
    env: dict[str, str] = field(default_factory=dict)  # old name -> new name
    changed: int = 0

    def new(self, old: str) -> str:
        return self.env.get(old, old)

    def copy(self, node: Node, **changes) -> str:
        """Append `node` with inputs renamed (and optional field changes) to the new graph."""
        inputs = tuple(self.new(i) for i in changes.pop("inputs", node.inputs))
        return self.b._b.append(node.replace(inputs=inputs, **changes))


def rewrite(graph: Graph, fn: Callable[[Node, Ctx], str | None], prefix: str = "opt.") -> tuple[Graph, int]:
    """The rewritten graph and the number of nodes `fn` replaced."""
    builder = GraphBuilder()
    for n in graph.nodes:  # new nodes never shadow old names
        builder.reserve(n.name)
    ctx = Ctx(graph, GradBuilder(builder, prefix))
    for node in graph.nodes:
        replacement = fn(node, ctx)
        if replacement is None:
            ctx.env[node.name] = ctx.copy(node)
        else:
            ctx.env[node.name] = replacement
            ctx.changed += 1
    outputs = [Output(o.kind, o.name, ctx.new(o.value)) for o in graph.outputs]
    return builder.graph(graph.name, outputs, graph.stage), ctx.changed
