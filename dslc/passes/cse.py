"""common-subexpression elimination: one node per distinct (op, inputs, attributes).

Two nodes with the same op, the same (already deduplicated) inputs and equal attributes
compute the same value, so the later one is replaced by the earlier. Sources are never
merged (two parameters with equal shapes are different parameters) except scalar
constants, and neither are random masks, which must stay independent draws.
"""
from __future__ import annotations

from dslc.ir.graph import Graph
from dslc.passes.rewrite import Ctx, rewrite

_NEVER = ("input", "param", "random")


def cse(graph: Graph) -> tuple[Graph, str]:
    seen: dict[tuple, str] = {}

    def visit(node, ctx: Ctx):
        if node.op in _NEVER:
            return None
        key = (node.op, tuple(ctx.new(i) for i in node.inputs), node.attrs, node.type)
        if key in seen:
            return seen[key]
        seen[key] = node.name
        return None

    out, merged = rewrite(graph, visit)
    return out, f"merged {merged} repeated node{'s' * (merged != 1)}"
