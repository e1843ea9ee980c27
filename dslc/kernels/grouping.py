"""Horizontal and multi-output grouping: which graph nodes share one launch.

Two patterns, each meaning something precise to a backend:

update  The optimizer's per-parameter chains (dslc/passes/train_step.py): for each
        updated parameter or state, the elementwise nodes over its shape that feed only
        its update (Adam: m, v, then w; momentum: velocity, then w; batchnorm's running
        statistics). Chains with the same scalar program (same ops, attributes and
        wiring; shapes may differ) form one group, one part per chain. Backend: ONE
        launch over the concatenation of all segments (a pointer/size table, as in
        multi-tensor apply); element i of segment s evaluates the chain in order,
        reading its inputs at i.

sweep   Batchnorm-like work over one activation S = [N, C, ...] (C = axis 1): members
        are per-element maps of S-shaped, per-channel (C,) and scalar values, reductions
        of S-shaped values to (C,) over every axis but 1, and per-channel ops on (C,)
        values. Forward: mean, var and unbiased var, then the normalisation and the
        activation (and residual add, dropout mask) after it; backward: batchnorm_grad_x,
        the gamma and beta gradient sums, the mean's and var's gradients and their sum.
        Backend: part s is one pass over S; its per-channel ops run first (they only
        need reductions of earlier passes), then its maps and reductions fused in one
        loop nest. A reduction's result is usable from the next pass on, so the number
        of parts is the number of passes over the data (2 for batchnorm, both ways).
        Without reductions a sweep is one elementwise pass with several outputs.

Update chains are grouped first, so running-statistic updates land in one launch for
all layers rather than in each layer's sweep. Grouping never changes what is computed:
the members in `parts` order are a valid order to evaluate them one by one. A merge is
only made when the group stays convex in the graph of groups (no path leaves it and
comes back), so the kernels stay a DAG.
"""
from __future__ import annotations

from dslc.ir.graph import Graph, Node
from dslc.kernels.graph import index_maps
from dslc.ops import registry

SOURCES = ("input", "param", "const", "random")


def elementwise(node: Node) -> bool:
    """One output element from the same element of each input: fusable into any loop."""
    if node.op == "fused":
        return node.attr("kind") == "elementwise"
    return registry.get(node.op).elementwise is not None


class Partition:
    """Disjoint groups of graph nodes, merged only while the graph of groups stays acyclic."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.succ: dict[str, list[str]] = {n.name: [] for n in graph}
        for n in graph:
            for i in dict.fromkeys(n.inputs):
                self.succ[i].append(n.name)
        self.order = {n.name: k for k, n in enumerate(graph.nodes)}
        self.rep: dict[str, str] = {}
        self.members: dict[str, list[str]] = {}

    def group(self, name: str) -> str:
        return self.rep.get(name, name)

    def of(self, name: str) -> list[str]:
        return self.members.get(self.group(name), [name])

    def merge(self, a: str, b: str) -> bool:
        """Merge the groups of a and b if the union stays convex; True when merged."""
        ga, gb = self.group(a), self.group(b)
        if ga == gb:
            return True
        union = self.of(ga) + self.of(gb)
        if not self._convex(set(union)):
            return False
        union.sort(key=self.order.__getitem__)
        for m in union:
            self.rep[m] = ga
        self.members.pop(gb, None)
        self.members[ga] = union
        return True

    def _convex(self, union: set[str]) -> bool:
        # Walk the groups reachable from the union; reaching the union again is a cycle.
        seen: set[str] = set()
        stack = [s for m in union for s in self.succ[m] if s not in union]
        while stack:
            g = self.group(stack.pop())
            if g in seen:
                continue
            seen.add(g)
            for m in self.of(g):
                for s in self.succ[m]:
                    if s in union:
                        return False
                    if self.group(s) not in seen:
                        stack.append(s)
        return True

    def groups(self) -> list[list[str]]:
        return [m for m in self.members.values() if len(m) > 1]


# ---- update chains ---------------------------------------------------------------------

def _update_like(node: Node) -> bool:
    return elementwise(node) or registry.get(node.op).category == "optimizer"


def update_chains(graph: Graph, static: set[str]) -> list[list[str]]:
    """One chain per updated parameter (its state updates included) or leftover state."""
    users = graph.consumers()
    updates = [o for o in graph.outputs if o.kind in ("param", "state")]
    update_values = {o.value for o in updates}
    plain_outputs = {o.value for o in graph.outputs} - update_values
    chains: list[list[str]] = []
    taken: set[str] = set()
    for o in sorted(updates, key=lambda o: o.kind != "param"):  # a parameter's chain claims its state
        root = graph[o.value]
        if root.op in SOURCES or root.name in taken or root.name in static or not _update_like(root):
            continue
        chain = {root.name}
        grew = True
        while grew:
            grew = False
            for name in sorted(chain):
                for i in graph[name].inputs:
                    p = graph[i]
                    if (p.name in chain or p.name in taken or p.op in SOURCES or p.name in plain_outputs
                            or p.type.shape != root.type.shape or not _update_like(p)
                            or not all(u.name in chain for u in users[p.name])):
                        continue
                    chain.add(p.name)
                    grew = True
        taken |= chain
        chains.append([n.name for n in graph if n.name in chain])
    return chains


def signature(graph: Graph, names: list[str]) -> tuple:
    """The chain's scalar program with names replaced by positions: equal signatures can
    share one generated loop body."""
    def canon(nodes) -> tuple:
        local = {n.name: k for k, n in enumerate(nodes)}
        ext: dict[str, int] = {}
        return tuple((n.op, n.type.dtype,
                      tuple((k, canon(v) if k == "body" else v) for k, v in n.attrs),
                      tuple(("n", local[i]) if i in local else ("x", ext.setdefault(i, len(ext))) for i in n.inputs))
                     for n in nodes)
    return canon([graph[n] for n in names])


# ---- sweeps ----------------------------------------------------------------------------

def channel_axes(rank: int) -> tuple[int, ...]:
    return tuple(a for a in range(rank) if a != 1)


def sweep_role(node: Node, graph: Graph) -> tuple[str, tuple] | None:
    """("map" | "reduce", S) or ("channel", (C,)) when `node` fits a sweep, else None."""
    ins = [graph[i].type for i in node.inputs]
    out = node.type
    # Ops not elementwise that still fit a sweep say how (OpDef.sweep); those with an axis
    # only when they reduce (or broadcast back) over every axis but the channel axis 1.
    role = registry.get(node.op).sweep
    if role is None and node.op == "fused" and node.attr("kind") == "reduce":
        role = "reduce"
    if role is None:
        if not elementwise(node):
            return None
        role = "channel" if out.rank == 1 else "map"
    if role == "channel":
        ok = all(t.shape in (out.shape, ()) or all(d == 1 for d in t.shape) for t in ins)
        return ("channel", out.shape) if ok and isinstance(out.shape[0], int) else None
    space = out.shape if role == "map" else next((t.shape for t in ins if t.rank >= 2), ())
    if node.op in ("expand", "var_grad"):
        space = ins[1].shape
    if len(space) < 2 or not isinstance(space[1], int):
        return None
    chan = (space[1],)
    if out.shape != (space if role == "map" else chan) or not _axes_ok(node, len(space)):
        return None
    if elementwise(node) or node.op == "fused":
        ok = set(index_maps(node, ins)) <= {"identity", "scalar", "channel"}
    else:
        ok = all(t.shape in (space, chan, ()) for t in ins)
    return (role, space) if ok else None


def _axes_ok(node: Node, rank: int) -> bool:
    if node.op == "fused" and node.attr("kind") == "reduce":
        node = node.attr("body")[-1]
    if registry.get(node.op).sweep is None or registry.get(node.op).attr("axis") is None:
        return True
    axis = node.attr("axis")
    axes = tuple(range(rank)) if axis is None else tuple(sorted(a % rank for a in axis))
    return axes == channel_axes(rank) and not node.attr("keepdims")


def group_sweeps(part: Partition, static: set[str]) -> dict[str, tuple[str, tuple]]:
    """Merge sweep members along producer-consumer edges and across siblings that read the
    same activation; returns the role of every candidate."""
    graph = part.graph
    roles = {n.name: r for n in graph if n.name not in static and n.name not in part.rep
             and (r := sweep_role(n, graph)) is not None}
    space: dict[str, tuple] = {}  # group -> its S
    first_reader: dict[str, str] = {}  # activation -> first candidate reading it

    def fits(a: str, b: str) -> bool:
        sa, sb = space.get(part.group(a)), space.get(part.group(b))
        if sa is None and sb is None:  # per-channel ops only join a group that sweeps over data
            return False
        if sa is not None and sb is not None:
            return sa == sb
        shape, other = (sa, b) if sa is not None else (sb, a)
        return roles[other][1] == ((shape[1],) if roles[other][0] == "channel" else shape)

    def join(a: str, b: str) -> None:
        s = space.get(part.group(a)) or space.get(part.group(b))
        if fits(a, b) and part.merge(a, b):
            space[part.group(a)] = s

    for name, (role, shape) in roles.items():
        if role != "channel":
            space[name] = shape
        for i in graph[name].inputs:
            if i in roles:
                join(name, i)
            elif role != "channel" and graph[i].type.shape == shape:
                if i in first_reader:
                    join(name, first_reader[i])
                else:
                    first_reader[i] = name
    return roles


def sweep_parts(graph: Graph, members: list[str], roles: dict) -> tuple[tuple[str, ...], ...]:
    """Members by pass over the data: a reduction's result is readable one pass later."""
    avail: dict[str, int] = {}
    phase: dict[str, int] = {}
    for name in members:
        node = graph[name]
        ready = max((avail.get(i, 0) for i in node.inputs), default=0)
        if node.op == "var_grad":  # it re-centres x: needs mean(x) from an earlier pass
            ready = max(ready, avail.get(node.inputs[1], 0) + 1)
        phase[name] = ready
        avail[name] = ready + (roles[name][0] == "reduce")
    # Within a pass, per-channel ops first: they read only earlier passes' results.
    key = lambda n: (phase[n], roles[n][0] != "channel", members.index(n))
    ordered = sorted(members, key=key)
    return tuple(tuple(n for n in ordered if phase[n] == p) for p in range(max(phase.values()) + 1))
