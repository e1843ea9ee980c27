"""dead-code elimination: keep only what some output needs.

Removes values no output depends on: outputs nobody asked for once a pass dropped them,
gradients of frozen parameters, the metric in a graph that only needs the loss, and
inputs or parameters nothing reads (a label in an inference graph).
"""
from __future__ import annotations

from dslc.ir.graph import Graph


def live_names(graph: Graph) -> set[str]:
    live = {o.value for o in graph.outputs}
    for node in reversed(graph.nodes):
        if node.name in live:
            live.update(node.inputs)
    return live


def dce(graph: Graph) -> tuple[Graph, str]:
    live = live_names(graph)
    kept = [n for n in graph.nodes if n.name in live]
    removed = len(graph.nodes) - len(kept)
    return graph.replace(nodes=kept), f"removed {removed} dead node{'s' * (removed != 1)}"
