"""The inference graph: the forward a deployed model runs, nothing the loss alone needs.

Rewrite of the typed graph (which already has inference semantics: batchnorm reads
its running statistics):

    dropout(x), stochastic_depth(x)  ->  x          (identity at test time: both
                                                     scale by 1/keep while training)
    dropconnect(x; W, b)             ->  linear(x; W, b)   (E[mask] W / keep = W)

then only what the kept outputs need survives. The kept outputs are the model's
`output` declarations; a model that declares none (most classifiers only write
`loss cross_entropy(logits, label)`) keeps the value its first loss term reads,
named "logits". Losses, metrics and the labels they read are dropped.

    g = inference(model.graph)
    [o.name for o in g.outputs]  # ['logits']
"""
from __future__ import annotations

from dslc.diagnostics import CompileError
from dslc.ir.graph import Graph, Node, Output
from dslc.ops import registry
from dslc.passes.dce import ancestors, prune

IDENTITY_AT_INFERENCE = ("dropout", "stochastic_depth")
SAME_AS_AT_INFERENCE = {"dropconnect": "linear"}


def inference(graph: Graph) -> Graph:
    """The inference graph of the typed graph `graph` (stage "infer")."""
    outputs = _kept_outputs(graph)
    renamed: dict[str, str] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        node = node.replace(inputs=tuple(renamed.get(i, i) for i in node.inputs))
        if node.op in IDENTITY_AT_INFERENCE:
            renamed[node.name] = node.inputs[0]
        elif node.op in SAME_AS_AT_INFERENCE:
            nodes.append(as_op(node, SAME_AS_AT_INFERENCE[node.op]))
        else:
            nodes.append(node)
    outputs = [Output(o.kind, o.name, renamed.get(o.value, o.value)) for o in outputs]
    return prune(Graph(graph.name, tuple(nodes), tuple(outputs), "infer"))


def _kept_outputs(graph: Graph) -> list[Output]:
    declared = graph.outputs_of("output")
    if declared:
        return declared
    if graph.loss is not None:
        logits = first_loss_input(graph)
        if logits is not None:
            return [Output("output", "logits", logits)]
    raise CompileError.single("E0402", f"model '{graph.name}' has no output to infer",
                              hint="declare one, e.g. `output probs = softmax(logits)`")


def first_loss_input(graph: Graph) -> str | None:
    """What the first loss op (cross_entropy, ...) the loss depends on reads as its prediction."""
    needed = ancestors(graph, [graph.loss])
    for node in graph.nodes:
        if node.name in needed and registry.get(node.op).category == "loss":
            return node.inputs[0]
    return None


def as_op(node: Node, op: str) -> Node:
    """`node` as `op` (same inputs and name), keeping the attributes `op` declares."""
    keep = {a.name for a in registry.get(op).attrs}
    return node.replace(op=op, attrs=tuple((k, v) for k, v in node.attrs if k in keep))
