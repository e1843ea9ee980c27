"""ONNX subgraphs that are one dslc op: GELU spelt with Erf, and floor division as Floor(Div).

ONNX has no Gelu before opset 20, so exporters write x * 0.5 * (1 + erf(x / sqrt 2)) as five
nodes, grouped as each one's source has it:

    PyTorch (F.gelu):            Mul(Mul(x, Add(Erf(Div(x, sqrt2)), 1)), 0.5)
    dslc export, BERT's gelu:    Mul(x, Mul(Add(Erf(Div(x, sqrt2)), 1), 0.5)),  Mul(Mul(x, 0.5), Add(...))

dslc has gelu but no erf, so the chain is matched from its Erf (the scaling as Div by sqrt 2
or Mul by 1/sqrt 2, operands in either order) and becomes one `gelu`. Floor of a Div that
nothing else reads is dslc's `x // y`. A chain is matched only when its inner results are
read by nothing outside it, since those disappear.

    fused = find(graph, consts)   # {index of the chain's last node: Fused("{} |> gelu", ("x",), (3, 4, 5, 6))}
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SQRT2 = float(np.sqrt(2.0))


@dataclass(frozen=True)
class Fused:
    """One dslc expression for a chain of nodes: `expr` formatted with the .net expressions of
    `inputs` (ONNX tensor names); `inner` are the other nodes of the chain (their indices)."""
    expr: str
    inputs: tuple[str, ...]
    inner: tuple[int, ...]


def find(graph, consts: dict[str, np.ndarray]) -> dict[int, Fused]:
    """Every GELU and floor-division chain of `graph`, keyed by the index of its last node."""
    return _Matcher(graph, consts).find()


class _Matcher:
    def __init__(self, graph, consts):
        self.nodes, self.consts = list(graph.node), consts
        self.producer = {o: k for k, n in enumerate(self.nodes) for o in n.output if o}
        self.readers: dict[str, list[int]] = {o.name: [-1] for o in graph.output}  # -1: the graph's output
        for k, node in enumerate(self.nodes):
            for i in node.input:
                self.readers.setdefault(i, []).append(k)

    def find(self) -> dict[int, Fused]:
        found = {}
        for k, node in enumerate(self.nodes):
            match = self.gelu(k) if node.op_type == "Erf" else self.floor_div(k) if node.op_type == "Floor" else None
            if match is not None:
                found[match[0]] = match[1]
        return found

    # ---- small questions about the graph ------------------------------------------------------

    def sole_reader(self, k: int, op_type: str) -> int | None:
        """The one node that reads node k's result, if it is an `op_type`."""
        readers = self.readers.get(self.nodes[k].output[0], [])
        if len(readers) != 1 or readers[0] < 0 or self.nodes[readers[0]].op_type != op_type:
            return None
        return readers[0]

    def is_number(self, name: str, value: float) -> bool:
        c = self.consts.get(name)
        return c is not None and c.size == 1 and c.dtype.kind == "f" \
            and abs(float(c.reshape(-1)[0]) - value) <= 1e-6 * abs(value)

    def other(self, k: int, name: str) -> str | None:
        """The operand of binary node k that is not `name` (either order)."""
        a, b = self.nodes[k].input
        return b if a == name else a if b == name else None

    def with_number(self, k: int, value: float) -> str | None:
        """The operand of binary node k beside the constant `value`, if it has one."""
        a, b = self.nodes[k].input
        return a if self.is_number(b, value) else b if self.is_number(a, value) else None

    # ---- the chains -------------------------------------------------------------------------

    def gelu(self, erf: int) -> tuple[int, Fused] | None:
        scale = self.producer.get(self.nodes[erf].input[0])
        if scale is None or self.sole_reader(scale, "Erf") != erf:
            return None
        op, (a, b) = self.nodes[scale].op_type, self.nodes[scale].input
        x = a if op == "Div" and self.is_number(b, SQRT2) else \
            self.with_number(scale, 1 / SQRT2) if op == "Mul" else None
        add = self.sole_reader(erf, "Add")
        if x is None or add is None or self.with_number(add, 1.0) != self.nodes[erf].output[0]:
            return None
        product = self.sole_reader(add, "Mul")
        if product is None:
            return None
        factor = self.other(product, self.nodes[add].output[0])
        chain = (scale, erf, add)
        result = self.nodes[product].output[0]
        last = self.sole_reader(product, "Mul")
        if last is not None and (
                (factor == x and self.with_number(last, 0.5) == result)  # (x * (1 + erf)) * 0.5
                or (factor is not None and self.is_number(factor, 0.5) and self.other(last, result) == x)):
            return last, Fused("{} |> gelu", (x,), chain + (product,))  # x * ((1 + erf) * 0.5)
        half = self.producer.get(factor) if factor is not None else None  # (x * 0.5) * (1 + erf)
        if half is None or self.nodes[half].op_type != "Mul" or self.with_number(half, 0.5) != x \
                or self.sole_reader(half, "Mul") != product:
            return None
        return product, Fused("{} |> gelu", (x,), chain + (half,))

    def floor_div(self, floor: int) -> tuple[int, Fused] | None:
        div = self.producer.get(self.nodes[floor].input[0])
        if div is None or self.nodes[div].op_type != "Div" or self.sole_reader(div, "Floor") != floor:
            return None
        return floor, Fused("{} // {}", tuple(self.nodes[div].input), (div,))
