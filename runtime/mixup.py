"""Mixup's loss: the model's classification losses blended over the two label sets of a batch.

Mixup (Zhang et al. 2018) trains on x = lam x_i + (1 - lam) x_j and the same blend of the
losses against both labels. A model's loss reads one integer label, so the training
graph is rewritten before differentiation: every classification loss term

    loss(logits, label)  ->  lam * loss(logits, label) + rest * loss(logits, mix.label)

with three new inputs fed per batch: `mix.label` (y_j), `mix.lam` and `mix.rest` (1 - lam,
fed rather than computed so no constant 1 depends on the dtype). The rewritten node keeps
its name, so regularisers added to it and the graph's outputs need no change; metrics
still compare with the first labels.

    g = mix_losses(model.graph, "label")
    feeds |= mix_feeds(batch, dtype)
"""
from __future__ import annotations

import numpy as np

from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Graph
from dslc.ir.types import NUMPY_DTYPE, scalar
from dslc.ops import registry

LABEL, LAM, REST = "mix.label", "mix.lam", "mix.rest"


def mix_losses(graph: Graph, label: str) -> Graph:
    """`graph` with each loss op that reads input `label` blended as the module doc says."""
    b = GraphBuilder()
    for n in graph.nodes:
        b.reserve(n.name)
    dtype = graph[graph.loss].type.dtype
    for node in graph.nodes:
        op = registry.get(node.op)
        label_slots = [i for i in op.integer_inputs if node.inputs[i] == label] if op.category == "loss" else []
        if not label_slots:
            b.append(node)
            if node.name == label:  # the new inputs sit beside the labels they stand for
                b.source(LABEL, "input", node.type)
                b.source(LAM, "input", scalar(dtype))
                b.source(REST, "input", scalar(dtype))
            continue
        attrs = dict(node.attrs)
        first = b.add(node.op, node.inputs, attrs, node.span, b.unique(f"{node.name}.first"))
        swapped = tuple(LABEL if i in label_slots else x for i, x in enumerate(node.inputs))
        second = b.add(node.op, swapped, attrs, node.span, b.unique(f"{node.name}.second"))
        blend = [b.add("mul", [first, LAM], span=node.span, name=b.unique(f"{node.name}.lam")),
                 b.add("mul", [second, REST], span=node.span, name=b.unique(f"{node.name}.rest"))]
        b.add("add", blend, span=node.span, name=node.name)
    return b.graph(graph.name, graph.outputs, graph.stage)


def mix_feeds(batch, dtype: str) -> dict[str, np.ndarray]:
    """The extra inputs of a mixed graph for one Batch (unmixed batches feed lam = 1)."""
    np_dtype = NUMPY_DTYPE[dtype]
    y_b = batch.y if batch.y_b is None else batch.y_b
    return {LABEL: y_b, LAM: np.asarray(batch.lam, np_dtype), REST: np.asarray(1.0 - batch.lam, np_dtype)}
