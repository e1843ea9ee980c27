"""The Keras-style model summary printed by `dslc check`: one row per layer.

A row's parameter count is the size of the parameters the layer created (running
statistics are buffers, not parameters, as in PyTorch's `parameters()`); FLOPs are
forward FLOPs for one example (the batch dimension N taken as 1), a multiply-add
counting as two.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from dslc.ir.graph import Graph
from dslc.ops import registry


@dataclass(frozen=True)
class Row:
    name: str
    op: str
    shape: str
    params: int
    flops: int
    trainable: int  # of `params`, those the training recipe updates (not frozen)


@dataclass(frozen=True)
class Summary:
    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    layers: list[Row]
    params: int
    trainable_params: int
    flops: int

    def to_json(self) -> dict:
        return {"model": self.model, "inputs": self.inputs, "outputs": self.outputs,
                "layers": [asdict(r) for r in self.layers], "params": self.params,
                "trainable_params": self.trainable_params, "flops": self.flops}

    def text(self) -> str:
        header = ("Layer", "Op", "Output shape", "Params", "FLOPs", "Train")
        rows = [(r.name, r.op, r.shape, f"{r.params:,}", f"{r.flops:,}", _train_mark(r)) for r in self.layers]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        line = lambda cells: "  ".join(c.ljust(w) if i < 3 or i == 5 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        rule = "-" * len(line(header))
        out = [f'Model "{self.model}"', rule, line(header), rule] + [line(r) for r in rows] + [rule]
        ins = ", ".join(f"{k}: {v}" for k, v in self.inputs.items())
        outs = ", ".join(f"{k}: {v}" for k, v in self.outputs.items())
        out += [f"Inputs:            {ins}", f"Outputs:           {outs}",
                f"Total params:      {self.params:,}", f"Trainable params:  {self.trainable_params:,}",
                f"Non-trainable:     {self.params - self.trainable_params:,}",
                f"Forward FLOPs:     {self.flops:,} per example"]
        return "\n".join(out)


def is_learnable(node) -> bool:
    return node.op == "param" and node.attr("role") != "state"


def _train_mark(row: Row) -> str:
    if row.params == 0:
        return ""
    return "yes" if row.trainable == row.params else "frozen" if row.trainable == 0 else "partly"


def summarize(graph: Graph, frozen=frozenset()) -> Summary:
    """The summary of `graph`; parameters named in `frozen` (a recipe's `freeze`) count as not trainable."""
    def trains(p) -> bool:
        return is_learnable(p) and p.attr("trainable") and p.name not in frozen

    layers, total_flops = [], 0
    params = {n.name: n for n in graph.params}
    for n in graph.nodes:
        if n.op in ("input", "const", "random") or (n.op == "param" and "." in n.name):
            continue
        if n.op == "param":  # an explicit `param` declaration is its own row
            count = n.type.numel() if is_learnable(n) else 0
            layers.append(Row(n.name, "param", n.type.show(), count, 0, count if trains(n) else 0))
            continue
        owned = [params[i] for i in n.inputs if i in params and i.startswith(n.name + ".")]
        count = sum(p.type.numel() for p in owned if is_learnable(p))
        op = registry.get(n.op)
        flops = op.flops([graph[i].type for i in n.inputs], n.type, n.attr_dict) if op.flops else 0
        total_flops += flops
        layers.append(Row(n.name, n.op, n.type.show(), count, flops,
                          sum(p.type.numel() for p in owned if trains(p))))
    learnable = [p for p in graph.params if is_learnable(p)]
    return Summary(
        model=graph.name,
        inputs={n.name: n.type.show() for n in graph.inputs},
        outputs={f"{o.kind} {o.name}" if o.kind != "output" else o.name: graph[o.value].type.show()
                 for o in graph.outputs},
        layers=layers,
        params=sum(p.type.numel() for p in learnable),
        trainable_params=sum(p.type.numel() for p in learnable if trains(p)),
        flops=total_flops)
