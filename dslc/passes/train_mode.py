"""Training-mode lowering: the typed graph (inference semantics) -> the graph one training step runs.

Most ops behave the same in training and inference. Those that do not (batchnorm,
dropout, dropconnect, stochastic_depth) carry a `train` hook in their OpDef:

    train(b, node) -> (value, [(state_param, new_state_value), ...])

The hook appends the training-mode computation through `b` (a GradBuilder over
the graph being rebuilt) and returns the name of the value that replaces the
node, plus the running-state updates it implies (batchnorm's running mean and
variance). Rewrite, for every node n in topological order:

    n has a hook:  value(n) = hook(n with renamed inputs); every later use of n reads value(n)
    otherwise:     n is copied with its inputs renamed

and each state update becomes Output("state", state_param, new_value). Nodes a
hook appends are named under the layer (`bn1.mean`), and every original name is
reserved first, so a helper node can never take a later layer's name.

    g = lower(model.graph)
    g.outputs_of("state")  # Output("state", "bn1.running_mean", "bn1.running_mean_new"), ...

Nodes named in `keep` are copied as they are, keeping inference semantics: a frozen
batchnorm layer (transfer learning) normalises with its running statistics and does
not update them.
"""
from __future__ import annotations

from typing import Collection

from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Graph, Output
from dslc.ops import registry
from dslc.passes.autodiff import GradBuilder


def lower(graph: Graph, keep: Collection[str] = ()) -> Graph:
    """The training-mode graph of `graph` (stage "train"), nodes in `keep` left in inference
    mode; the graph itself is left unchanged."""
    b = GraphBuilder()
    for n in graph.nodes:
        b.reserve(n.name)
    renamed: dict[str, str] = {}
    states: list[Output] = []
    for node in graph.nodes:
        node = node.replace(inputs=tuple(renamed.get(i, i) for i in node.inputs))
        hook = registry.get(node.op).train
        if hook is None or node.name in keep:
            b.append(node)
            continue
        value, updates = hook(GradBuilder(b, prefix=f"{node.name}."), node)
        if b.type_of(value) != node.type:
            raise AssertionError(f"{node.op} train hook changed the type of {node.name}: "
                                 f"{node.type.show()} -> {b.type_of(value).show()}")
        renamed[node.name] = value
        states += [Output("state", param, new) for param, new in updates]
    outputs = [Output(o.kind, o.name, renamed.get(o.value, o.value)) for o in graph.outputs]
    return b.graph(graph.name, outputs + states, "train")
