"""GraphBuilder: appends typed nodes, running each op's shape rule as it goes.

Used by the front end (elaboration) and by graph-to-graph passes such as autodiff,
so that every node ever created has been type-checked by its op's own rule.

    b = GraphBuilder()
    x = b.source("x", "input", TensorType("f32", (Sym.of("N"), 4)))
    y = b.add("relu", [x])            # -> "relu", typed f32[N, 4]
"""
from __future__ import annotations

from typing import Mapping, Sequence

from dslc.diagnostics import Span
from dslc.ir.graph import Graph, Node, Output
from dslc.ir.types import TensorType
from dslc.ops import registry


def complete_attrs(opdef: registry.OpDef, attrs: Mapping) -> tuple[tuple[str, object], ...]:
    """Attributes in declaration order with defaults filled in (unknown keys are a bug here)."""
    unknown = set(attrs) - {a.name for a in opdef.attrs}
    if unknown:
        raise KeyError(f"{opdef.name}: unknown attributes {sorted(unknown)}")
    return tuple((a.name, attrs[a.name] if a.name in attrs else a.default) for a in opdef.attrs
                 if a.name in attrs or not a.required)


class GraphBuilder:
    def __init__(self, nodes: Sequence[Node] = ()):
        self.nodes: list[Node] = list(nodes)
        self.index: dict[str, Node] = {n.name: n for n in self.nodes}
        self._taken: set[str] = set(self.index)
        self._next: dict[str, int] = {}  # where the search for a free `base_k` resumes

    def type_of(self, name: str) -> TensorType:
        return self.index[name].type

    def unique(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, ... whichever is free (Keras-style layer names).

        The search resumes where it last stopped for `base` (names are never freed), so
        unrolling n layers costs O(n), not O(n^2).
        """
        k = self._next.get(base, 0)
        name = f"{base}_{k}" if k else base
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._next[base] = k + 1
        self._taken.add(name)
        return name

    def reserve(self, name: str) -> None:
        self._taken.add(name)

    def taken(self, name: str) -> bool:
        """Whether `name` is a node or already reserved."""
        return name in self._taken

    def append(self, node: Node) -> str:
        if node.name in self.index:
            raise ValueError(f"duplicate node name {node.name!r}")
        self._taken.add(node.name)
        self.nodes.append(node)
        self.index[node.name] = node
        return node.name

    def source(self, name: str, op: str, type_: TensorType, attrs: Mapping | None = None,
               span: Span | None = None) -> str:
        """A node with no inputs whose type is given (input, param, const, random)."""
        opdef = registry.get(op)
        return self.append(Node(name, op, (), complete_attrs(opdef, attrs or {}), type_, span))

    def add(self, op: str, inputs: Sequence[str], attrs: Mapping | None = None, span: Span | None = None,
            name: str | None = None) -> str:
        """Append `op(inputs; attrs)` named `name` (the caller made it unique), or a fresh name."""
        opdef = registry.get(op)
        full = complete_attrs(opdef, attrs or {})
        type_ = opdef.shape([self.index[i].type for i in inputs], dict(full))
        node_name = name if name is not None else self.unique(op)
        return self.append(Node(node_name, op, tuple(inputs), full, type_, span))

    def const(self, value: float, dtype: str = "f32", span: Span | None = None) -> str:
        return self.source(self.unique("const"), "const", TensorType(dtype, ()), {"value": value}, span)

    def graph(self, name: str, outputs: Sequence[Output], stage: str) -> Graph:
        return Graph(name, tuple(self.nodes), tuple(outputs), stage)
