"""Regularisation off: the typed graph without penalty terms and without dropout.

The lectures' first check of a new model is to overfit a tiny subset with regularisation
turned off: if the loss cannot reach zero on twenty examples, something is broken. What
"off" means for each op the registry calls a regulariser or drops at inference:

    l1(ws), l2(ws), elastic(ws)   -> 0 (a constant of the same scalar type)
    dropout, stochastic_depth      -> the identity, as at inference
    dropconnect                    -> linear, as at inference

Batchnorm keeps its training behaviour (batch statistics): it is not a regulariser
here. The graph keeps its stage, names and parameters, so it trains like the original.

    g = unregularised(model.graph)   # then train_step(g, ...)
"""
from __future__ import annotations

from dslc.ir.graph import Graph
from dslc.ops import registry
from dslc.passes.infer import IDENTITY_AT_INFERENCE, SAME_AS_AT_INFERENCE, as_op
from dslc.passes.rewrite import rewrite


def unregularised(graph: Graph) -> tuple[Graph, int]:
    """`graph` with penalties zero and dropout off, and the number of nodes changed."""
    def off(node, ctx):
        if registry.get(node.op).category == "regulariser":
            return ctx.b.const(0.0, node.type.dtype)
        if node.op in IDENTITY_AT_INFERENCE:
            return ctx.new(node.inputs[0])
        if node.op in SAME_AS_AT_INFERENCE:
            return ctx.copy(as_op(node, SAME_AS_AT_INFERENCE[node.op]))
        return None
    return rewrite(graph, off, prefix="unreg.")
