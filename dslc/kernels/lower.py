"""lower: an optimised graph -> its KernelGraph (buffers, kernels in execution order).

    kg = lower(optimize(build(model, "train_step"))[0])
    print(format_kernels(kg, batch=128))

Steps: (1) nodes that depend only on constants and never-updated parameters are
marked static (prologue); (2) optimizer chains are grouped by scalar program, then
batchnorm-like sweeps are grouped (dslc/kernels/grouping.py); (3) every other node is
its own kernel: a `fused` node or a lone elementwise op becomes a fused loop, reshape
and flatten become views, anything else an extern library call; (4) kernels are
ordered topologically, prologue first, ties broken by graph position, so the same graph
always gives the same kernels, names and order.
"""
from __future__ import annotations

import heapq

from dslc.ir.graph import Graph, Node
from dslc.kernels.graph import Buffer, Kernel, KernelGraph, index_maps
from dslc.kernels.grouping import (SOURCES, Partition, elementwise, group_sweeps, signature, sweep_parts,
                                   update_chains)

VIEW_OPS = ("reshape", "flatten")  # contiguous in, contiguous out: the same memory


def lower(graph: Graph) -> KernelGraph:
    """The kernel graph of `graph` (any stage; normally optimised, with `fused` nodes)."""
    static = _static_nodes(graph)
    part = Partition(graph)
    updates: dict[str, list[list[str]]] = {}  # group -> its chains
    for chains in _by_signature(graph, update_chains(graph, static)):
        first = chains[0][0]
        for n in (n for chain in chains for n in chain):
            # A chain's nodes feed only that chain, so no path can leave a union of chains
            # and come back: these merges cannot fail.
            if not part.merge(first, n):
                raise AssertionError(f"update chain through {n} is not convex")
        if len(part.of(first)) > 1:  # a lone one-node chain stays free to join a sweep
            updates[part.group(first)] = chains
    roles = group_sweeps(part, static)
    units = [part.of(n.name) for n in graph if n.op not in SOURCES and part.group(n.name) == n.name]
    users = graph.consumers()
    outputs = {o.value for o in graph.outputs}
    names: set[str] = {n.name for n in graph}
    kernels = []
    for members in units:
        nodes = [graph[m] for m in members]
        if len(nodes) == 1:
            kernels.append(_single(nodes[0], graph, static))
            continue
        chains = updates.get(part.group(members[0]))
        pattern = "sweep" if chains is None else "update"
        parts = sweep_parts(graph, members, roles) if chains is None else tuple(tuple(c) for c in chains)
        order = [n for p in parts for n in p]
        kernels.append(_group(_unique(_group_name(nodes, pattern), names), pattern, [graph[n] for n in order],
                              parts, users, outputs, static, any(roles.get(m, ("",))[0] == "reduce" for m in members)))
    return KernelGraph(graph.name, graph.stage, _buffers(graph), _order(kernels), graph.outputs)


def _static_nodes(graph: Graph) -> set[str]:
    """Nodes computed from constants and parameters the graph never updates."""
    updated = {o.name for o in graph.outputs if o.kind in ("param", "state")}
    static: set[str] = set()
    for n in graph:
        if n.op == "const" or (n.op == "param" and n.name not in updated):
            static.add(n.name)
        elif n.op not in SOURCES and n.inputs and all(i in static for i in n.inputs):
            static.add(n.name)
    return {n for n in static if graph[n].op not in SOURCES}


def _by_signature(graph: Graph, chains: list[list[str]]) -> list[list[list[str]]]:
    classes: dict[tuple, list[list[str]]] = {}
    for chain in chains:
        classes.setdefault(signature(graph, chain), []).append(chain)
    return list(classes.values())


def _io(nodes: list[Node], users, outputs: set[str]) -> tuple[tuple, tuple, tuple]:
    inside = {n.name for n in nodes}
    ins = tuple(dict.fromkeys(i for n in nodes for i in n.inputs if i not in inside))
    outs = tuple(n.name for n in nodes if n.name in outputs or any(u.name not in inside for u in users[n.name]))
    scratch = tuple(n.name for n in nodes if n.name not in outs)
    return ins, outs, scratch


def _single(node: Node, graph: Graph, static: set[str]) -> Kernel:
    prologue = node.name in static
    if node.op in VIEW_OPS:
        return Kernel(node.name, "view", node.op, (node,), node.inputs[:1], (node.name,), prologue=prologue)
    ins = tuple(dict.fromkeys(node.inputs))
    if node.op != "fused" and elementwise(node):  # a one-node loop: backends need no kernel per op
        body = node.replace(inputs=tuple(f"${ins.index(i)}" for i in node.inputs))
        node = Node(node.name, "fused", ins, (("kind", "elementwise"), ("body", (body,))), node.type, node.span)
    if node.op == "fused":
        kind = node.attr("kind")
        return Kernel(node.name, "fused", kind, (node,), ins, (node.name,),
                      index_maps=index_maps(node, [graph[i].type for i in ins]),
                      reduces=kind == "reduce", prologue=prologue)
    return Kernel(node.name, "extern", node.op, (node,), ins, (node.name,), prologue=prologue)


def _group(name, pattern, nodes, parts, users, outputs, static, reduces: bool) -> Kernel:
    ins, outs, scratch = _io(nodes, users, outputs)
    return Kernel(name, "group", pattern, tuple(nodes), ins, outs, scratch, parts=parts,
                  reduces=reduces, prologue=all(n.name in static for n in nodes))


def _group_name(nodes: list[Node], pattern: str) -> str:
    """The layer the group belongs to (the members' common dotted prefix, e.g.
    `stage1.conv_bn`), else its last member's name (backward nodes are `grad.*`)."""
    if pattern == "update":
        root = nodes[-1]
        op = root.attr("body")[-1].op if root.op == "fused" else root.op
        return f"update.{op}"
    parts = [n.name.split(".") for n in nodes]
    common = []
    for pieces in zip(*parts):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    base = ".".join(common) if len(common) >= 2 else nodes[-1].name
    return f"{base}.{pattern}"


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def _order(kernels: list[Kernel]) -> tuple[Kernel, ...]:
    """Topological order of the kernels; prologue first, then by first graph position."""
    producer = {o: k for k, kern in enumerate(kernels) for o in kern.outputs + kern.scratch}
    deps = [{producer[i] for i in kern.inputs if i in producer} for kern in kernels]
    waiting = [len(d) for d in deps]
    users: list[list[int]] = [[] for _ in kernels]
    for k, d in enumerate(deps):
        for p in d:
            users[p].append(k)
    ready = [(not kern.prologue, k) for k, kern in enumerate(kernels) if not waiting[k]]
    heapq.heapify(ready)
    out = []
    while ready:
        _, k = heapq.heappop(ready)
        out.append(kernels[k])
        for u in users[k]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, (not kernels[u].prologue, u))
    if len(out) != len(kernels):
        raise AssertionError("kernel graph has a cycle: a grouping was not convex")
    return tuple(out)


def _buffers(graph: Graph) -> tuple[Buffer, ...]:
    updates = {o.value: o.name for o in graph.outputs
               if o.kind in ("param", "state") and o.value != o.name and graph[o.value].op not in SOURCES}
    outputs = {o.value for o in graph.outputs}
    out = []
    for n in graph:
        if n.op in SOURCES:
            role = "state" if n.op == "param" and n.attr("role") == "state" else n.op
            out.append(Buffer(n.name, n.type.dtype, n.type.shape, role, attrs=n.attrs))
        else:
            out.append(Buffer(n.name, n.type.dtype, n.type.shape, "output" if n.name in outputs else "temp",
                              updates=updates.get(n.name), alias=n.inputs[0] if n.op in VIEW_OPS else None))
    return tuple(out)
