"""Monte-Carlo dropout (Gal & Ghahramani 2016): `dslc predict --mc-samples K`.

Dropout left on at prediction time turns one network into a random member of an
ensemble; K forward passes with K independent masks give K predictions, whose mean is
a better-calibrated prediction and whose spread says how unsure the model is of each
example. Only the ops that drop (dropout, stochastic_depth, dropconnect) run as in
training; batchnorm uses its running statistics, as at inference.

    graph, output = stochastic_graph(model.graph)
    mean, spread = mc_probabilities(step, feeds, params, graph, output, samples=30, rng=rng)
"""
from __future__ import annotations

import numpy as np

from dslc.diagnostics import UsageError
from dslc.ir.graph import Graph
from dslc.passes import train_mode
from dslc.passes.dce import prune
from dslc.passes.infer import IDENTITY_AT_INFERENCE, SAME_AS_AT_INFERENCE
from dslc.runtime.evaluate import as_probabilities, prediction

STOCHASTIC = (*IDENTITY_AT_INFERENCE, *SAME_AS_AT_INFERENCE)


def stochastic_graph(graph: Graph) -> tuple[Graph, str]:
    """The prediction graph with its dropout ops in training mode, and its output's name;
    UsageError for a model without any."""
    scored, output = prediction(graph)
    graph = prune(scored.replace(outputs=[o for o in scored.outputs if o.name == output]))
    if not any(n.op in STOCHASTIC for n in graph.nodes):
        raise UsageError(f"--mc-samples: model '{graph.name}' has no dropout (nor stochastic_depth or dropconnect) "
                         "on the way to its output, so every sample would be the same")
    return train_mode.lower(graph, keep=[n.name for n in graph.nodes if n.op not in STOCHASTIC]), output


def mc_probabilities(step, feeds, params, graph: Graph, output: str, samples: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) over `samples` passes of the class probabilities [N, classes],
    kept as running sums (Welford's, in float64) rather than every pass at once: `--mc-samples`
    is the user's number, and K passes over N examples stacked took K x N x classes floats."""
    mean = spread = None
    for k in range(1, samples + 1):
        draw = as_probabilities(graph, output, step(feeds, params, rng)[output])
        if mean is None:
            mean, spread, dtype = draw.astype(np.float64), np.zeros(draw.shape), draw.dtype
            continue
        delta = draw - mean
        mean += delta / k
        spread += delta * (draw - mean)
    return mean.astype(dtype), np.sqrt(spread / samples).astype(dtype)
