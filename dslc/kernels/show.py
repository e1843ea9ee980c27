"""Views of a kernel graph for people: a text listing and DOT clusters.

    print(format_kernels(kg, batch=128))        # dslc inspect --kernels
    to_dot(graph, grouping=kernel_clusters(kg))  # kernels drawn as dashed clusters
"""
from __future__ import annotations

from typing import Mapping

from dslc.kernels.graph import Kernel, KernelGraph, bindings


def kernel_clusters(kg: KernelGraph) -> dict[str, list[str]]:
    """{kernel name: graph node names} for every kernel of two or more graph nodes (a
    one-node kernel, fused or not, is already one box in the drawing)."""
    return {k.name: [n.name for n in k.nodes] for k in kg.kernels if len(k.nodes) > 1}


def format_kernels(kg: KernelGraph, batch: int | Mapping[str, int] = 1) -> str:
    """One line per kernel: position, kind, name, the ops it computes, its output shapes,
    FLOPs and bytes moved at `batch`; a header with the totals."""
    sizes = bindings(batch)
    flops = [kg.flops(k, sizes) for k in kg.kernels]
    moved = [kg.bytes_moved(k, sizes) for k in kg.kernels]
    at = ", ".join(f"{k}={v}" for k, v in sizes.items())
    lines = [f"kernels of {kg.name} ({kg.stage}) at {at}: {len(kg.kernels)} kernels, "
             f"{_si(sum(flops))}FLOP, {_si(sum(moved))}B moved"]
    width = max((len(k.name) for k in kg.kernels), default=0)
    kinds = max((len(k.kind + k.op) + 1 for k in kg.kernels), default=0)
    for pos, (k, f, b) in enumerate(zip(kg.kernels, flops, moved)):
        shapes = ", ".join(kg.buffer(o).type.show() for o in k.outputs[:2])
        more = f" +{len(k.outputs) - 2}" if len(k.outputs) > 2 else ""
        flag = "  (prologue)" if k.prologue else ""
        lines.append(f"{pos:>4} {k.kind + ':' + k.op:<{kinds}} {k.name:<{width}}  {_ops(k)}  -> {shapes}{more}  "
                     f"{_si(f)}FLOP  {_si(b)}B{flag}")
    return "\n".join(lines)


def _ops(k: Kernel) -> str:
    if k.kind == "group" and k.op == "update":
        first = k.parts[0]
        ops = ", ".join(n.op for n in k.nodes[:len(first)])
        return f"{len(k.parts)} x [{ops}]"
    if k.kind == "group":
        names = {n.name: n for n in k.nodes}
        passes = " ".join("[" + ", ".join(_op(names[m]) for m in part) + "]" for part in k.parts)
        return f"{len(k.parts)} passes {passes}"
    return "[" + ", ".join(n.op for n in k.covers()) + "]"


def _op(node) -> str:
    if node.op == "fused":
        return "+".join(b.op for b in node.attr("body") if b.op != "const")
    return node.op


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f} "
