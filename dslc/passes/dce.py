"""dead-code elimination: keep only what some output needs.

Removes values no output depends on: outputs nobody asked for once a pass dropped them,
gradients of frozen parameters, the metric in a graph that only needs the loss, and
inputs or parameters nothing reads (a label in an inference graph).
"""
from __future__ import annotations

from typing import Iterable

from dslc.ir.graph import Graph


def ancestors(graph: Graph, roots: Iterable[str]) -> set[str]:
    """`roots` and every value they are computed from."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name].inputs)
    return seen


def prune(graph: Graph) -> Graph:
    """`graph` without the nodes no output needs; order is kept."""
    needed = ancestors(graph, [o.value for o in graph.outputs])
    return graph.replace(nodes=[n for n in graph.nodes if n.name in needed])


def dce(graph: Graph) -> tuple[Graph, str]:
    out = prune(graph)
    removed = len(graph.nodes) - len(out.nodes)
    return out, f"removed {removed} dead node{'s' * (removed != 1)}"
