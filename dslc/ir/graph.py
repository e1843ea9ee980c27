"""The graph IR: one small data type for every stage of the compiler.

A `Graph` is a tuple of `Node`s in SSA form and topological order plus a tuple of
named `Output`s. Every value is a node: model inputs (`op="input"`), parameters
(`op="param"`, with their initialiser and trainable flag), constants and layer
results alike, so one printer, one verifier and one interpreter serve the typed
graph, the backward graph and the training step.

Node names are the hierarchical layer names a person sees in `dslc check`
(`stage1.conv_bn_relu.conv2d`); a layer's parameters are `LAYER.weight`, ... .
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from dslc.diagnostics import Span
from dslc.ir.types import TensorType


@dataclass(frozen=True, slots=True)
class Init:
    """An initialiser call such as kaiming(mode="fan_out"): name and sorted keyword args."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    def arg(self, key: str, default=None):
        return dict(self.args).get(key, default)

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in self.args)
        return f"{self.name}({inner})"


AttrValue = Any  # int | float | bool | str | None | Init | tuple[AttrValue, ...]


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: tuple[tuple[str, AttrValue], ...]
    type: TensorType
    span: Span | None = None

    def attr(self, key: str, default=None):
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def attr_dict(self) -> dict[str, AttrValue]:
        return dict(self.attrs)

    def replace(self, **changes) -> "Node":
        fields = {s: getattr(self, s) for s in self.__slots__}
        fields.update(changes)
        return Node(**fields)


@dataclass(frozen=True, slots=True)
class Output:
    """A named result of a graph. kind: output, loss, metric (later stages add grad, param, state)."""

    kind: str
    name: str
    value: str


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple[Node, ...]
    outputs: tuple[Output, ...]
    stage: str = "typed"
    _index: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_index", {n.name: n for n in self.nodes})

    def __getitem__(self, name: str) -> Node:
        return self._index[name]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def of_op(self, *ops: str) -> list[Node]:
        return [n for n in self.nodes if n.op in ops]

    @property
    def inputs(self) -> list[Node]:
        return self.of_op("input")

    @property
    def params(self) -> list[Node]:
        return self.of_op("param")

    def outputs_of(self, kind: str) -> list[Output]:
        return [o for o in self.outputs if o.kind == kind]

    @property
    def loss(self) -> str | None:
        found = self.outputs_of("loss")
        return found[0].value if found else None

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users[i].append(n)
        return users

    def replace(self, nodes: Iterable[Node] | None = None, outputs: Iterable[Output] | None = None,
                stage: str | None = None) -> "Graph":
        return Graph(self.name, tuple(self.nodes if nodes is None else nodes),
                     tuple(self.outputs if outputs is None else outputs), stage or self.stage)
