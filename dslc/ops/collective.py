"""Collective ops: what a data-parallel training step asks of the other ranks.

N processes each train on a shard of every global batch (dslc/passes/data_parallel.py
builds their step). Where the step needs a value of the whole batch it asks the group of
ranks (dslc/collective.py) with one of these ops; in one process they are the identity
and the local count, so every graph with them runs, and is tested, anywhere.

allreduce_mean(x) = sum over ranks r of (n_r / n) x_r, n_r the rank's examples and n the
global batch: the mean over the whole batch of a per-rank mean (a gradient, a loss, a
batch statistic). It is linear, and its adjoint under that weighting is itself: with the
global loss L = sum_r (n_r / n) L_r, the cotangent one rank must carry for its x_r (in the
units of its own L_r, which the final gradient average weights by n_r / n) is
dL/dy = sum_r (n_r / n) dL_r/dy, the same op applied to the cotangents. That is how the
backward pass of a synchronised batchnorm reduces its sums.

`bucket` > 0 lets a backend defer the reduction: the `members` nodes of one bucket are
reduced together in one flat call when its last member runs (the gradients of a step),
where the kernel order proves no consumer reads one earlier (runtime/cpu/collective.py).
The value is the same; only the number of messages changes.

global_count(x, axis) is how many elements the reduction of x over `axis` spans on all
ranks together: the batch axis counts the global batch. Batchnorm's unbiased running
variance needs it (n / (n - 1) with the global n).
"""
from __future__ import annotations

import math

import numpy as np

from dslc.collective import current
from dslc.ir.types import TensorType
from dslc.ops.reduce import reduced_axes
from dslc.ops.registry import Attr, OpDef, Sample, expect_float, register


def _f64(*shape) -> TensorType:
    return TensorType("f64", shape)


def _mean_shape(ins, attrs):
    expect_float(ins[0], "allreduce_mean")
    return ins[0]


register(OpDef(
    "allreduce_mean", "collective", ("x",),
    (Attr("bucket", "int", 0, doc="0: reduce at once; k > 0: with the other members of bucket k"),
     Attr("members", "int", 1, doc="how many nodes bucket k holds")),
    shape=_mean_shape,
    formula="sum over ranks r of (n_r / n) x_r: the global-batch mean of per-rank means (x in one process)",
    flops=lambda ins, out, a: ins[0].numel(),
    reference=lambda x, bucket, members: current().mean(np.asarray(x)),
    # Linear and self-adjoint under the batch-share weighting (see the module docstring).
    grad=lambda b, n, g: (b.allreduce_mean(g),),
    samples=(Sample((_f64(3, 4),)), Sample((_f64(5),), {"bucket": 1, "members": 1}))))


def _count_shape(ins, attrs):
    x = ins[0]
    expect_float(x, "global_count")
    reduced_axes(x, attrs["axis"], "global_count")
    return TensorType(x.dtype, ())


def count(x: np.ndarray, axis) -> np.ndarray:
    """global_count's value: elements of x over `axis` on every rank (the batch axis counts the global batch)."""
    axes = reduced_axes(TensorType("f64", x.shape), axis, "global_count")
    per_example = math.prod(x.shape[a] for a in axes if a != 0)
    return np.asarray(per_example * (current().batch(x.shape[0]) if 0 in axes else 1), x.dtype)


register(OpDef(
    "global_count", "collective", ("x",), (Attr("axis", "optional_axes", None, doc="axes counted; none = all"),),
    shape=_count_shape,
    formula="the number of elements of x over `axis` on all ranks together (axis 0 counts the global batch)",
    flops=lambda ins, out, a: 1, reference=count,
    # A count does not depend on the values counted.
    grad=lambda b, n, g: (b.zeros_like(n.inputs[0]),),
    samples=(Sample((_f64(4, 3, 2),), {"axis": (0, 2)}), Sample((_f64(5, 3),)))))
