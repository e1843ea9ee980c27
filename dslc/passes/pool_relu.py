"""pool-relu: a relu's gradient folded into the gradient of the max pool it feeds.

    maxpool_grad(g, y) * step(y)  ->  maxpool_grad(g, y, positive=True)     (step's low = 0)

conv -> relu -> maxpool (small_cnn, cifar_cnn, any VGG-style stage) differentiates to the
pool's gradient, which routes g to each window's first maximum, times relu's derivative
at the pooled values y = relu(...): a second pass over the whole activation, reading y
again. With `positive` the pool's backward kernel routes g only to maxima above 0, in the
pass it makes anyway. Where the maximum is <= 0 (or NaN) the product gives g * 0 and the
folded op 0: the same, except for an infinite or NaN g, where 0 replaces inf * 0 = NaN,
as PyTorch's relu backward (a select) has it.

Only a maxpool_grad that nothing else reads is folded (otherwise both would be computed);
the dead maxpool_grad and step go in the dce pass after this one.
"""
from __future__ import annotations

from dslc.ir.graph import Graph, Node
from dslc.passes.rewrite import Ctx, rewrite


def _folded(node: Node, ctx: Ctx, readers: dict[str, list[Node]]) -> str | None:
    if node.op != "mul" or len(node.inputs) != 2:
        return None
    a, b = (ctx.graph[i] for i in node.inputs)
    pool, step = (a, b) if a.op == "maxpool_grad" else (b, a)
    if (pool.op != "maxpool_grad" or step.op != "step" or pool.attr("positive") or step.attr("low") != 0
            or step.inputs[0] != pool.inputs[1] or pool.type != node.type or len(readers[pool.name]) != 1):
        return None
    attrs = {**pool.attr_dict, "positive": True}
    return ctx.b.named(node.name, "maxpool_grad", *(ctx.new(i) for i in pool.inputs), span=pool.span, **attrs)


def pool_relu(graph: Graph) -> tuple[Graph, str]:
    readers = graph.consumers()
    out, changed = rewrite(graph, lambda node, ctx: _folded(node, ctx, readers))
    return out, f"folded {changed} relu gradient{'s' * (changed != 1)} into max pools"
