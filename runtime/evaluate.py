"""Evaluating a model on a dataset: loss, metrics and class probabilities, a chunk at a time.

Evaluation runs the typed graph, which has inference semantics (batchnorm reads its
running statistics, dropout is the identity), so its loss and metrics are the ones a
deployed model gets. Each chunk's loss and metrics are batch means; weighting them by
the chunk's size gives the mean over the whole dataset.

    ev = Evaluator(model, layout, executor_for("cpu"))
    result = ev(data.val, params, data.transform, probabilities=True)
    result.loss, result.metrics["accuracy"], result.probs.shape  # (N, classes)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dslc.ir.graph import Graph, Output
from dslc.passes.infer import first_loss_input
from dslc.runtime.data import Dataset

CHUNK = 512  # examples per evaluation step: big enough for BLAS, small enough for memory


def prediction(graph: Graph) -> tuple[Graph, str]:
    """`graph` with one output holding the class scores, and that output's name: the first
    declared output, else the logits the first loss reads (added as output "logits")."""
    declared = graph.outputs_of("output")
    if declared:
        return graph, declared[0].name
    logits = first_loss_input(graph) if graph.loss is not None else None
    if logits is None:
        raise ValueError(f"model '{graph.name}' has neither an output nor a loss to read class scores from")
    return graph.replace(outputs=graph.outputs + (Output("output", "logits", logits),)), "logits"


def as_probabilities(graph: Graph, name: str, scores: np.ndarray) -> np.ndarray:
    """Class probabilities from an output: itself when a softmax computes it, else softmax(scores)."""
    node = graph[next(o.value for o in graph.outputs if o.name == name)]
    if node.op == "softmax":
        return scores.astype(np.float64)
    z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Evaluation:
    """Means over a dataset; `probs` [N, classes] and `labels` [N] when asked for."""

    examples: int
    loss: float
    metrics: dict[str, float]
    probs: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    def record(self, prefix: str) -> dict[str, float]:
        """{"val_loss": ..., "val_accuracy": ...} for a metrics record."""
        return {f"{prefix}_loss": self.loss, **{f"{prefix}_{k}": v for k, v in self.metrics.items()}}


class Evaluator:
    """The typed graph of a model compiled once, run over datasets in chunks."""

    def __init__(self, model, layout, executor, chunk: int = CHUNK):
        graph, self.output = prediction(model.graph)
        self.graph, self.layout, self.chunk = graph, layout, chunk
        self.step = executor.compile(graph)
        self.loss = graph.outputs_of("loss")[0].name if graph.loss is not None else None
        self.metrics = [o.name for o in graph.outputs_of("metric")]

    def __call__(self, dataset: Dataset, params, transform, probabilities: bool = False) -> Evaluation:
        totals = dict.fromkeys([self.loss, *self.metrics] if self.loss else self.metrics, 0.0)
        scores = []
        with np.errstate(all="ignore"):  # a diverged model's overflow shows as a nan loss instead
            for start in range(0, len(dataset), self.chunk):
                x, y = dataset.x[start:start + self.chunk], dataset.y[start:start + self.chunk]
                out = self.step(self.layout.feeds(transform(x), y), params)
                for name in totals:
                    totals[name] += float(out[name]) * len(y)
                if probabilities:
                    # a copy: on the CPU the step's outputs are views of its arena, which the
                    # next chunk of the same size overwrites (1,024 examples or more)
                    scores.append(np.array(out[self.output]))
        n = len(dataset)
        means = {k: v / n for k, v in totals.items()}
        probs = as_probabilities(self.graph, self.output, np.concatenate(scores)) if probabilities else None
        return Evaluation(n, means.pop(self.loss, float("nan")), means, probs,
                          dataset.y if probabilities else None)
