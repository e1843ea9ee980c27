"""Declarative patterns for local rewrites, in the spirit of tinygrad's UPat and TVM's is_op.

A `Pat` names an op (or a set of ops, or any), an attribute predicate, sub-patterns for
the inputs and a capture name. `match` returns the captured nodes or None:

    conv_bn = Pat("batchnorm", inputs=(Pat(("conv2d", "linear"), name="layer"),), name="bn")
    caps = match(conv_bn, graph["stage1.batchnorm"], graph)   # {"bn": Node, "layer": Node} or None

Sub-patterns constrain a prefix of the inputs; the rest are unconstrained. That is all
the passes need; there is deliberately no general term-rewriting engine here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dslc.ir.graph import Graph, Node


@dataclass(frozen=True)
class Pat:
    op: str | tuple[str, ...] | None = None
    inputs: tuple["Pat", ...] = ()
    where: Callable[[Node], bool] | None = None
    name: str | None = None

    def ops(self) -> tuple[str, ...] | None:
        return (self.op,) if isinstance(self.op, str) else self.op


def match(pat: Pat, node: Node, graph: Graph, caps: dict | None = None) -> dict[str, Node] | None:
    caps = {} if caps is None else caps
    ops = pat.ops()
    if ops is not None and node.op not in ops:
        return None
    if pat.where is not None and not pat.where(node):
        return None
    if len(pat.inputs) > len(node.inputs):
        return None
    for sub, inp in zip(pat.inputs, node.inputs):
        if match(sub, graph[inp], graph, caps) is None:
            return None
    if pat.name:
        if pat.name in caps and caps[pat.name].name != node.name:
            return None
        caps[pat.name] = node
    return caps


def is_const(value: float) -> Pat:
    """A scalar constant equal to `value`."""
    return Pat("const", where=lambda n: n.attr("value") == value)
