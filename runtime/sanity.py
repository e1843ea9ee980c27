"""The checks the lectures make before training: the loss at initialisation, and regularisation.

With small random weights a classifier knows nothing, so its data loss is what a uniform
guess scores: ln C for a softmax over C classes (cross_entropy), (C - 1) * margin for the
multiclass SVM. A loss far above that means the logits start large (weights initialised
too big, inputs not normalised); far below, that the model already knows the labels
(a leak into the inputs, or weights that are not initial). Turning regularisation up must
raise the loss, or the penalty is not in it.

Both are read from one forward pass of the NumPy reference over a sample of the training
split, in training mode (batchnorm on batch statistics, as the first step sees it), with
its own dropout stream, so the run's random streams are untouched:

    report = check(model, examples, labels, regularisation=True)
    print("\n".join(report.lines)); report.warnings
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dslc import reference
from dslc.ir.graph import Graph
from dslc.ops import registry
from dslc.passes import train_mode
from dslc.passes.dce import ancestors

FAR = 2.5  # the initial loss is "far off" beyond FAR times, or below 1/FAR of, the expected value
FLOP_BUDGET = 2e10  # forward FLOPs of the host-side sample; a larger model is sampled smaller or not at all
SAMPLE = 64  # examples in the sample at most
REG_FACTOR = 10.0  # regularisation is turned up this many times for the second check
# CS231n's rule when searching hyper-parameters: "if the cost is ever > 3 * original cost,
# break out early" -- a loss that far above where it started has diverged.
DIVERGED = 3.0


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    initial_loss: float | None = None
    expected: float | None = None
    initial_total: float | None = None  # with the regularisation: what the step reports as its loss


def diverged(epoch: int, train_loss: float, initial: float | None) -> str | None:
    """The warning for an epoch whose mean training loss is over DIVERGED times the loss the
    sanity check measured before training (`initial`, the step's loss: regularisation
    included), else None. A learning rate far too high makes a run's loss grow by orders of
    magnitude (digits_mlp at sgd(lr=1e4): 2.9 before training, 2.5e15 over its first
    epoch), and the run went on to its last epoch without a word unless the loss became NaN."""
    if initial is None or not 0 < initial < math.inf or not train_loss > DIVERGED * initial:
        return None
    return (f"epoch {epoch}: the training loss {train_loss:.4g} is over {DIVERGED:g} times its value before "
            f"training ({initial:.4g}): the run has diverged. The learning rate is likely too high "
            "(`dslc lr-find` suggests one), or the gradients need clipping (clip = norm(...))")


def sample_size(flops_per_example: float, batch: int, available: int) -> int:
    """Examples the check reads: at most a batch and SAMPLE, within FLOP_BUDGET (0: too big to check)."""
    budget = int(FLOP_BUDGET // max(flops_per_example, 1.0))
    return min(batch, SAMPLE, available, budget)


def expected_loss(graph: Graph, loss_node: str) -> tuple[float, str] | None:
    """(value, why) that a classifier's data loss starts near, or None for a loss without one."""
    node = graph[loss_node]
    width = graph[node.inputs[0]].type.shape[-1]
    if not isinstance(width, int) or width < 2:
        return None
    if node.op == "cross_entropy":
        return math.log(width), f"ln {width} = {math.log(width):.2f} for a softmax over {width} classes"
    if node.op == "svm":
        margin = node.attr("margin")
        return (width - 1) * margin, (f"(C - 1) * margin = {(width - 1) * margin:g} for a multiclass SVM "
                                      f"over {width} classes")
    return None


def check(model, feeds: dict[str, np.ndarray], n: int, regularisation: bool = False, init_from: str | None = None,
          weight_decay: float = 0.0, params: dict[str, np.ndarray] | None = None) -> Report:
    """The sanity block for `model` with parameters `params` on `feeds` (n examples of the
    training split, as the step would read them)."""
    report = Report()
    graph = train_mode.lower(model.graph)
    if graph.loss is None:
        return report
    needed = ancestors(graph, [graph.loss])
    data = next((node.name for node in graph.nodes
                 if node.name in needed and registry.get(node.op).category == "loss"), graph.loss)
    penalties = [node.name for node in graph.nodes if node.name in needed
                 and registry.get(node.op).category == "regulariser"]
    rng = np.random.default_rng(0)
    with np.errstate(all="ignore"):
        values = reference.evaluate(graph, feeds, params, rng=rng)
    loss, total = float(values[data]), float(values[graph.loss])
    report.initial_loss, report.initial_total = loss, total
    op = graph[data].op
    shown = f"initial {op} loss {loss:.4g} on {n} training examples"
    if penalties:
        shown += f" (total {total:.4g} with the regularisation)"
    guess = expected_loss(graph, data)
    if init_from is not None:
        report.lines.append(f"{shown}; the weights come from {init_from}, so no value is expected")
    elif guess is None:
        report.lines.append(f"{shown}; {op} has no expected value at initialisation")
    else:
        report.expected, why = guess
        report.lines.append(f"{shown}; expected about {why}: {_verdict(loss, report.expected)}")
        if not math.isfinite(loss) or loss > FAR * report.expected:
            report.warnings.append(
                f"the initial loss {loss:.4g} is far above {why}: the model is confident before it has learnt. "
                "Likely causes: weights initialised too large (a normal() or uniform() init with a large std "
                "instead of kaiming or xavier; the last layer's init), inputs not normalised "
                "(normalize = none on raw pixels), or a loss that reads probabilities instead of logits")
        elif loss < report.expected / FAR:
            report.warnings.append(
                f"the initial loss {loss:.4g} is far below {why}: the model knows the labels before training. "
                "Likely causes: the labels leak into the inputs, or the weights are not the initial ones")
    if regularisation:
        report.lines.append(_regularisation(graph, feeds, params, values, penalties, weight_decay, report))
    return report


def _verdict(loss: float, expected: float) -> str:
    ratio = loss / expected if expected else math.inf
    return "ok" if 1 / FAR <= ratio <= FAR else f"FAR OFF ({ratio:.1f}x)"


def _regularisation(graph, feeds, params, values, penalties, weight_decay: float, report: Report) -> str:
    """The loss with every penalty term REG_FACTOR times larger, against the loss as it is."""
    decay = (f"; the optimizer's weight_decay={weight_decay:g} regularises the update, which no loss shows"
             if weight_decay else "")
    if not penalties:
        return f"regularisation: the loss has no penalty term (l1, l2, elastic){decay}"
    stale = {n.name for n in graph.nodes if n.name not in penalties and set(n.inputs) & set(penalties)}
    for node in graph.nodes:  # everything downstream of a penalty is recomputed
        if set(node.inputs) & stale:
            stale.add(node.name)
    known = {k: v for k, v in values.items() if k not in stale}
    known.update({p: values[p] * REG_FACTOR for p in penalties})
    with np.errstate(all="ignore"):
        louder = float(reference.evaluate(graph, feeds, params, known=known)[graph.loss])
    before = float(values[graph.loss])
    if louder > before:
        return f"regularisation x{REG_FACTOR:g}: loss {before:.4g} -> {louder:.4g} (rises: ok){decay}"
    report.warnings.append(f"turning regularisation up {REG_FACTOR:g}x did not raise the loss ({before:.4g} -> "
                           f"{louder:.4g}): its penalty is zero or enters the loss with the wrong sign")
    return f"regularisation x{REG_FACTOR:g}: loss {before:.4g} -> {louder:.4g} (does not rise){decay}"
