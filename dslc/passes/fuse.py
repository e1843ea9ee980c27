"""fuse: trees of elementwise ops become single `fused` nodes (one kernel, one pass over memory).

Starting from each unfused node in reverse order (a *root*: an elementwise op, or a
sum/mean reduction), producers are absorbed while all of these hold:
  - the producer is elementwise (its OpDef says how it indexes its inputs),
  - it iterates over the same shape as the group (no hidden recomputation under broadcast),
  - every consumer of it is already in the group and it is not a graph output
    (each fused node has one result, so nothing else may need the intermediate),
  - it does not feed an epilogue host (a GEMM or convolution reads its inputs from memory).
Scalar constants are copied into every body that uses them. An elementwise group may
also absorb one matmul, linear or conv2d that feeds it as its *epilogue host*, so bias
and activation are applied while the product is still in cache.

Examples: relu(x @ W + b) -> fused[epilogue](matmul, add, relu); the dropout mask
multiply and scale; softmax-cross-entropy's gradient times the incoming cotangent; an
optimizer's whole per-parameter update.
"""
from __future__ import annotations

from dslc.ir.graph import Graph, Node
from dslc.ops import registry

REDUCTIONS = ("sum", "mean")


def _is_elementwise(node: Node) -> bool:
    return registry.get(node.op).elementwise is not None


def _grow(root: Node, graph: Graph, users, outputs: set[str], taken: set[str]) -> tuple[list[Node], str]:
    """The members of the group rooted at `root` and its kind."""
    kind = "reduce" if root.op in REDUCTIONS else "elementwise"
    shape = graph[root.inputs[0]].type.shape if kind == "reduce" else root.type.shape
    members = {root.name}
    changed = True
    while changed:
        changed = False
        for name in sorted(members):
            for inp in graph[name].inputs:
                p = graph[inp]
                if p.name in members or p.name in taken or p.name in outputs:
                    continue
                if not all(u.name in members for u in users[p.name]):
                    continue
                if any(registry.epilogue_host(u.op) for u in users[p.name]):
                    continue  # a host reads its inputs from memory: they stay materialised
                host = (kind == "elementwise" and registry.epilogue_host(p.op)
                        and not any(registry.epilogue_host(graph[m].op) for m in members))
                if p.type.shape == shape and (_is_elementwise(p) or host):
                    members.add(p.name)
                    changed = True
                    if host:
                        kind = "epilogue"
    order = {n.name: k for k, n in enumerate(graph.nodes)}
    return [graph[m] for m in sorted(members, key=order.__getitem__)], kind


def _fused_node(root: Node, members: list[Node], kind: str, graph: Graph) -> Node:
    inside = {m.name for m in members}
    ext: list[str] = []
    body: list[Node] = []
    consts: set[str] = set()
    for m in members:
        inputs = []
        for i in m.inputs:
            src = graph[i]
            if i in inside:
                inputs.append(i)
            elif src.op == "const" and not registry.epilogue_host(m.op):
                if i not in consts:
                    body.append(src)
                    consts.add(i)
                inputs.append(i)
            else:
                if i not in ext:
                    ext.append(i)
                inputs.append(f"${ext.index(i)}")
        body.append(m.replace(inputs=tuple(inputs)))
    return Node(root.name, "fused", tuple(ext), (("kind", kind), ("body", tuple(body))), root.type, root.span)


def fuse(graph: Graph) -> tuple[Graph, str]:
    users = graph.consumers()
    outputs = {o.value for o in graph.outputs}
    taken: set[str] = set()
    roots: dict[str, Node] = {}
    for node in reversed(graph.nodes):
        if node.name in taken or not (_is_elementwise(node) or node.op in REDUCTIONS):
            continue
        members, kind = _grow(node, graph, users, outputs, taken)
        if sum(m.op != "const" for m in members) < 2:
            continue
        taken.update(m.name for m in members)
        roots[node.name] = _fused_node(node, members, kind, graph)
    nodes = [roots.get(n.name, n) for n in graph.nodes if n.name not in taken or n.name in roots]
    used = {i for n in nodes for i in n.inputs} | outputs
    nodes = [n for n in nodes if n.op != "const" or n.name in used]  # constants now inside bodies
    fused_ops = sum(len([b for b in r.attr("body") if b.op != "const"]) for r in roots.values())
    return graph.replace(nodes=nodes), f"{fused_ops} ops into {len(roots)} fused kernels"
