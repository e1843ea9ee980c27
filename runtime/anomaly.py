"""Finding where a training step first produced NaN or Inf (`dslc train --detect-anomaly`).

A non-finite loss is found after the fact; the step that produced it is replayed through
the NumPy reference interpreter on the unoptimised training-step graph (so every node
keeps the name and the .net line a person wrote), with the parameters, the batch and
the random state it had, and the first node in execution order whose value is not
finite is named with its op and source line:

    first non-finite value: 'fc2.linear' (op linear) at models/m.net:9:5, 640 of 640 values inf or nan
    (its inputs fc1.relu, fc2.weight, fc2.bias were finite)

A parameter that is already non-finite means an earlier update overflowed without
the loss showing it yet.
"""
from __future__ import annotations

import numpy as np

from dslc import reference
from dslc.ir.graph import Graph, Node


def first_non_finite(graph: Graph, feeds, params, rng) -> tuple[Node, np.ndarray] | None:
    """The first node (in graph order) with a NaN or Inf and its value; None if there is none."""
    with np.errstate(all="ignore"):
        values = reference.evaluate(graph, feeds, params, rng)
    for node in graph.nodes:
        value = values[node.name]
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            return node, value
    return None


def explain(graph: Graph, feeds, params, rng) -> str:
    """A sentence naming the first non-finite node of one replayed step (see the module doc)."""
    found = first_non_finite(graph, feeds, params, rng)
    if found is None:
        return ("replaying the step through the reference interpreter gave only finite values: the "
                "non-finite loss comes from the executor, not from the model's arithmetic")
    node, value = found
    bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
    where = f" at {node.span}" if node.span else ""
    if node.op in ("param", "input"):
        kind = "parameter" if node.op == "param" else "input"
        return (f"{kind} '{node.name}'{where} already holds {bad} non-finite value(s)"
                + (": an earlier update overflowed" if node.op == "param" else ""))
    inputs = ", ".join(node.inputs)
    return (f"first non-finite value: '{node.name}' (op {node.op}){where}, {bad} of {np.size(value)} values "
            f"inf or nan" + (f" (its inputs {inputs} were finite)" if inputs else ""))
