"""Numeric equivalence of two graphs on random data, with the NumPy reference as judge.

Used by `dslc inspect --verify` (largest difference per pass) and by the pass tests:
each pass must keep every output (loss, gradients, new parameters, predictions)
equal to the unoptimised graph within float32 rounding.

    feeds, params, randoms = random_bindings(graph, batch=2, seed=0)
    worst = max_rel_difference(before, after, feeds, params, randoms)
"""
from __future__ import annotations

import numpy as np

from dslc import reference
from dslc.ir.graph import Graph
from dslc.ir.types import NUMPY_DTYPE
from dslc.memory import array_bytes, require
from dslc.ops.init import sample

# Scalars a training step reads; anything else that is a scalar float input gets 1.
_SCALARS = {"lr": 0.01, "step": 1.0}


def random_bindings(graph: Graph, batch: int = 2, seed: int = 0):
    """(feeds, params, randoms) for `graph`: standard-normal float inputs, labels in range,
    parameters from their initialisers (statistics kept positive), fixed random masks."""
    rng = np.random.default_rng(seed)
    sizes = {"N": batch}
    require(array_bytes([n.type for n in (*graph.inputs, *graph.params)], sizes),
            f"a random batch of {batch:,} for '{graph.name}'")
    feeds = {}
    for n in graph.inputs:
        shape, dtype = n.type.bind(sizes), NUMPY_DTYPE[n.type.dtype]
        if n.type.rank == 0 and n.type.is_float:
            feeds[n.name] = np.asarray(_SCALARS.get(n.name, 1.0), dtype)
        elif n.type.is_float:
            feeds[n.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[n.name] = rng.integers(0, _classes(graph, n.name), shape).astype(dtype)
    params = {}
    for n in graph.params:
        value = sample(n.attr("init"), n.type.bind(sizes), rng, NUMPY_DTYPE[n.type.dtype])
        if n.attr("role") == "state":  # running variances, optimizer second moments: keep them valid
            value = np.abs(value) + np.asarray(0.5, value.dtype)
        params[n.name] = value
    randoms = {n.name: reference.draw_random(n, n.type.bind(sizes), rng) for n in graph.of_op("random")}
    return feeds, params, randoms


def _classes(graph: Graph, label: str) -> int:
    """The class count a label indexes: the last dimension of what it is compared with."""
    for n in graph.nodes:
        if label in n.inputs and n.inputs[0] != label:
            last = graph[n.inputs[0]].type.shape[-1]
            return last if isinstance(last, int) else 2
    return 2


def max_rel_difference(before: Graph, after: Graph, feeds, params, randoms) -> float:
    """Largest difference over all named outputs, relative to each output's largest magnitude."""
    a = reference.run_outputs(before, feeds, params, randoms=randoms)
    b = reference.run_outputs(after, feeds, params, randoms=_matching(after, randoms))
    if a.keys() != b.keys():
        missing = sorted(set(a) ^ set(b))
        raise AssertionError(f"the graphs have different outputs: {missing}")
    worst = 0.0
    for key in a:
        scale = max(float(np.abs(a[key]).max(initial=0.0)), 1e-30)
        worst = max(worst, float(np.abs(a[key].astype(np.float64) - b[key]).max(initial=0.0)) / scale)
    return worst


def _matching(graph: Graph, randoms):
    """The same masks for the random nodes that survived the pass (CSE never merges them)."""
    names = {n.name for n in graph.of_op("random")}
    return {k: v for k, v in randoms.items() if k in names}
