"""The data-parallel training step: one graph per rank, averaged where the batch is whole.

N processes (ranks) each run the training step on their shard of every global batch.
The step is the one-process step (train_step.py) with `allreduce_mean` nodes
(dslc/ops/collective.py: the mean over ranks weighted by each rank's share of the batch)
placed where a value must be the whole batch's:

    gradients     g = allreduce_mean(g_r), after the backward pass and before clipping,
                  weight decay and the update rule, so every rank applies the same update
    loss, metrics the global-batch mean, so logs, NaN checks and early stopping agree
    batchnorm     without sync: each rank normalises with its own batch statistics (as in
                  PyTorch's DDP), and the running statistics are averaged over ranks after
                  the update: the running mean is then the global batch's, the running
                  variance the average of the shards' (no between-shard term);
                  with sync_batchnorm: the statistics themselves are global,
                      mean = allreduce_mean(mean_r),   mean_r = mean(x)
                      var  = allreduce_mean(var(x) + (mean_r - mean)^2)
                  (the law of total variance: each rank's variance about the global mean,
                  from its own two-pass variance, so nothing cancels),
                      unbiased running var = var * n / (n - 1),  n = global_count(x)
                  and autodiff differentiates through the allreduces (their adjoint is
                  another allreduce_mean), so the backward pass reduces the sums
                  SyncBatchNorm reduces.

With N ranks at B/N examples each, every rank then holds after each step what one process
holds after a step at batch B, up to the order of float summation (and, without sync,
batchnorm's per-shard statistics). Gradients, loss, metrics and averaged running
statistics form one bucket: a backend may reduce them in one flat message when the last
of them is ready (runtime/cpu/collective.py); the batch statistics of a synchronised
batchnorm are reduced at once, inside the forward and backward passes.

    step = train_step(model.graph, opt, parallel=DataParallel(sync_batchnorm=True))
"""
from __future__ import annotations

from dataclasses import dataclass

from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Graph, Output
from dslc.passes.autodiff import GradBuilder
from dslc.passes.dce import prune

BUCKET = 1  # the bucket of the step's gradients, loss, metrics and averaged statistics


@dataclass(frozen=True)
class DataParallel:
    """How a step spans ranks: `sync_batchnorm` reduces batchnorm's batch statistics over all of them."""

    sync_batchnorm: bool = False


def synchronise_batchnorm(graph: Graph) -> Graph:
    """The training-mode graph (train_mode.lower) with every training batchnorm's batch
    statistics taken over all ranks (see the module docstring); other nodes unchanged."""
    stats = _batch_statistics(graph)
    if not stats:
        return graph
    b = GraphBuilder()
    for n in graph.nodes:
        b.reserve(n.name)
    renamed: dict[str, str] = {}
    biased: dict[str, str] = {}  # x -> its global biased variance (shared by var and the unbiased one)
    for node in graph.nodes:
        node = node.replace(inputs=tuple(renamed.get(i, i) for i in node.inputs))
        role = stats.get(node.name)
        b.append(node)
        if role is None:
            continue
        kind, x, axes, mean = role
        ops = GradBuilder(b, prefix=f"{node.name}.")
        if kind == "mean":
            renamed[node.name] = ops.allreduce_mean(node.name)
            continue
        if kind == "var":  # this rank's variance about the global mean: var_r + (mean_r - mean)^2
            shift = ops.sub(mean, renamed[mean])
            biased[x] = ops.allreduce_mean(ops.add(node.name, ops.mul(shift, shift)))
            renamed[node.name] = biased[x]
        else:  # the unbiased variance of the running update: n / (n - 1) with the global n
            n = ops.global_count(x, axis=axes)
            one = ops.const(1.0, b.type_of(x).dtype)
            renamed[node.name] = ops.mul(biased[x], ops.div(n, ops.sub(n, one)))
    outputs = [Output(o.kind, o.name, renamed.get(o.value, o.value)) for o in graph.outputs]
    return prune(b.graph(graph.name, outputs, graph.stage))


def _batch_statistics(graph: Graph) -> dict[str, tuple[str, str, tuple, str]]:
    """{node: (mean | var | unbiased, x, axes, x's mean node)} for the batch-statistic nodes of
    every batchnorm in training mode (whose mean and var inputs are `mean` and `var` of its x),
    in graph order: the mean before the variances (train_mode's batchnorm hook builds them so)."""
    found: dict[str, tuple[str, str, tuple, str]] = {}
    for bn in graph.of_op("batchnorm"):
        x, mean, var = bn.inputs[0], graph[bn.inputs[3]], graph[bn.inputs[4]]
        if mean.op != "mean" or var.op != "var" or mean.inputs[0] != x or var.inputs[0] != x:
            continue  # inference semantics (a frozen layer): running statistics, nothing to reduce
        axes = mean.attr("axis")
        found[mean.name] = ("mean", x, axes, mean.name)
        found[var.name] = ("var", x, axes, mean.name)
        for n in graph.of_op("var"):  # the unbiased variance of the running update
            if n.inputs[0] == x and n.attr("unbiased") and n.attr("axis") == axes:
                found[n.name] = ("unbiased", x, axes, mean.name)
    return found


def average(b: GraphBuilder, outputs: list[Output], grads: list[Output], sync_batchnorm: bool) -> tuple[list[Output],
                                                                                                        list[Output]]:
    """The step's loss, metrics, running statistics (unless synchronised: then they are
    the same on every rank already) and gradients, each replaced by its mean over ranks,
    all in one bucket."""
    averaged = [o for o in outputs if o.kind in ("loss", "metric") or (o.kind == "state" and not sync_batchnorm)]
    members = len(averaged) + len(grads)
    ops = GradBuilder(b, prefix="allreduce.")

    def mean(o: Output) -> Output:
        return Output(o.kind, o.name, ops.allreduce_mean(o.value, bucket=BUCKET, members=members))

    return ([mean(o) if o in averaged else o for o in outputs], [mean(g) for g in grads])
