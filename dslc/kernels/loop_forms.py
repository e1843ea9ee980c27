"""Which kernels a code generator writes as scalar loops, and in what form: shared by the
code generators' one emitter (dslc/codegen/emit.py, groups.py), so the Numba and CUDA
backends agree on what they generate and what falls back.

    kernels = [as_loop(k, kg) for k in kg.kernels]   # a lone sum -> a one-node reduce loop
    update_supported(kg, k)   # the optimizer group: one scalar chain per parameter
    sweep_supported(kg, k)    # a batchnorm-like sweep: maps and reductions over [N, C, S]

A loop can compute a node when every op in it has a scalar expression in its op block
(`OpDef.scalar`); the questions here depend only on the kernel graph, never on a backend.
"""
from __future__ import annotations

from dslc.ir.graph import Node
from dslc.kernels.graph import Kernel, KernelGraph, index_maps
from dslc.ops import registry

def scalar_ops(node: Node) -> bool:
    """Every op of `node` (of a fused node's body) has a scalar expression."""
    if node.op == "fused":
        return all(b.op == "const" or scalar_ops(b) for b in node.attr("body"))
    op = registry.all_ops().get(node.op)
    return op is not None and op.scalar is not None


def externals(nodes) -> list[str]:
    """The inputs of a chain of nodes that no node of the chain produces, in first-use order."""
    inside = {n.name for n in nodes}
    return list(dict.fromkeys(i for n in nodes for i in n.inputs if i not in inside))


def is_reduce(node: Node) -> bool:
    """A sweep node that sums over (n, j) for each channel (OpDef.sweep)."""
    return registry.get(node.op).sweep == "reduce" or (node.op == "fused" and node.attr("kind") == "reduce")


def as_loop(k: Kernel, kg: KernelGraph) -> Kernel:
    """A lone sum/mean is a reduce loop with a one-node body, and a lone optimizer update an
    elementwise loop, as lowering already does for a lone elementwise op; other kernels as they are."""
    node = k.nodes[0]
    if k.kind != "extern" or not kg.buffer(node.name).type.is_float:
        return k
    op = registry.get(node.op)
    if node.op in ("sum", "mean"):
        kind = "reduce"
    elif op.category == "optimizer" and op.scalar is not None:
        kind = "elementwise"
    else:
        return k
    body = node.replace(inputs=tuple(f"${k.inputs.index(i)}" for i in node.inputs))
    fused = Node(node.name, "fused", k.inputs, (("kind", kind), ("body", (body,))), node.type, node.span)
    maps = index_maps(fused, [kg.buffer(i).type for i in k.inputs])
    return Kernel(k.name, "fused", kind, (fused,), k.inputs, k.outputs, index_maps=maps, reduces=kind == "reduce",
                  prologue=k.prologue)


def update_supported(kg: KernelGraph, kernel: Kernel) -> bool:
    """An update group whose chains are all scalar programs, each input either of its
    parameter's shape or a scalar (the learning rate, the step count)."""
    by = {n.name: n for n in kernel.nodes}
    for part in kernel.parts:
        shape = by[part[-1]].type.shape
        for i in externals([by[m] for m in part]):
            s = kg.buffer(i).shape
            if s != shape and not all(d == 1 for d in s):
                return False
    return all(scalar_ops(n) for n in kernel.nodes)


def sweep_space(kg: KernelGraph, kernel: Kernel):
    """S: the activation every map and reduction of the sweep runs over (rank >= 2)."""
    names = [i for n in kernel.nodes for i in n.inputs] + [n.name for n in kernel.nodes]
    return next(s for s in (kg.buffer(i).shape for i in names) if len(s) >= 2 and not all(d == 1 for d in s))


def sweep_supported(kg: KernelGraph, kernel: Kernel) -> bool:
    """A sweep of maps, sum/mean reductions and per-channel scalar ops, every operand of
    the activation's shape, one value per channel, or a scalar."""
    space = sweep_space(kg, kernel)
    produced = {n.name for n in kernel.nodes}
    chan = (space[1],)
    for n in kernel.nodes:
        if n.op == "fused" and n.attr("kind") == "reduce":
            root = n.attr("body")[-1]
            if root.op not in ("sum", "mean") or not all(scalar_ops(b) for b in n.attr("body")[:-1]):
                return False
        elif n.op == "var_grad" and n.inputs[1] in produced:
            return False
        elif registry.get(n.op).sweep is None and not scalar_ops(n):
            return False  # a reduction, or a map the planner writes itself (expand, var_grad)
        for i in n.inputs:
            s = kg.buffer(i).shape
            if s not in (space, chan) and not all(d == 1 for d in s):
                return False
    return any(kg.buffer(i).shape == space for i in kernel.inputs)
