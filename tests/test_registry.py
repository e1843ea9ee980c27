"""Tests generated from the op registry: every op is complete, its shape rule and its
reference agree on every Sample, and its gradient rule agrees with central differences.

Gradients are checked in float64 on loss = sum(op(inputs) * r) with a fixed random
r, through the autodiff pass and the same comparison as `dslc gradcheck`
(dslc.gradcheck.check_graph: every element, relative error below 1e-6, eps 1e-6).
A new op gets all of this by declaring its Samples.
"""
from __future__ import annotations

import numpy as np
import pytest

from dslc.gradcheck import check_graph
from dslc.ir.builder import GraphBuilder, complete_attrs
from dslc.ir.graph import Output
from dslc.ir.types import NUMPY_DTYPE
from dslc.passes.autodiff import differentiate
from helpers import OPS, SAMPLES, feeds_for, typed

# never differentiated through; an index op (argmax, one_hot) has an integer output or only integer inputs
NO_GRAD = ("derivative", "source", "metric", "optimizer", "kernel", "index")
NO_SAMPLES = ("source", "kernel")  # fused kernels are built by the fuse pass from sampled ops
GRAD_SAMPLES = [s for s in SAMPLES if OPS[s[0]].grad]


def _ids(samples):
    return [f"{name}-{k}" for name, k, _ in samples]


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_complete(name):
    op = OPS[name]
    if op.category == "source":
        return
    missing = [rule for rule in ("shape", "formula", "flops", "reference") if not getattr(op, rule)]
    assert not missing, f"{name} lacks {', '.join(missing)}"
    if op.category not in NO_SAMPLES:
        assert op.samples, f"{name} has no Sample for the generated tests"
    if op.category not in NO_GRAD:
        assert op.grad is not None, f"{name} ({op.category}) has no gradient rule"


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("name,k,sample", SAMPLES, ids=_ids(SAMPLES))
def test_shape_rule_matches_reference(name, k, sample, dtype):
    op = OPS[name]
    types = typed(sample, dtype)
    attrs = dict(complete_attrs(op, sample.attrs))
    want = op.shape(types, attrs)
    got = np.asarray(op.reference(*feeds_for(types, sample.domain), **attrs))
    assert got.shape == tuple(want.shape), f"{name}: shape rule says {want.show()}, reference gives {got.shape}"
    assert got.dtype == np.dtype(NUMPY_DTYPE[want.dtype]), f"{name}: reference returns {got.dtype}, not {want.dtype}"


def loss_graph(name, types, attrs):
    """loss = sum(op(x0, x1, ...) * r): every input and r are graph inputs."""
    b = GraphBuilder()
    xs = [b.source(f"x{i}", "input", t) for i, t in enumerate(types)]
    y = b.add(name, xs, attrs)
    r = b.source("r", "input", b.type_of(y))
    loss = b.add("mul", [y, r])
    if b.type_of(y).rank:  # a scalar (a loss op) needs no sum
        loss = b.add("sum", [loss])
    return b.graph(name, [Output("loss", "loss", loss)], "typed"), xs


@pytest.mark.parametrize("name,k,sample", GRAD_SAMPLES, ids=_ids(GRAD_SAMPLES))
def test_gradient_rule_matches_central_differences(name, k, sample):
    op = OPS[name]
    types = typed(sample, "f64")
    graph, xs = loss_graph(name, types, sample.attrs)
    feeds = dict(zip(xs, feeds_for(types, sample.domain)))
    feeds["r"] = np.random.default_rng(1).standard_normal(graph["r"].type.bind({}))
    wrt = [x for i, x in enumerate(xs) if types[i].is_float and i not in op.integer_inputs]
    rows = check_graph(differentiate(graph, wrt), feeds, {}, threshold=1e-6, eps=1e-6, max_elements=10_000)
    bad = [f"{r.name} (input {xs.index(r.name)}): {r.max_rel_error:.2e}" for r in rows if not r.passed]
    assert not bad, f"{name} sample {k}: gradient wrong for {', '.join(bad)}"


def test_samples_cover_the_differentiable_ops():
    """The grad test above is only as good as its samples: every op with a grad rule has one."""
    assert not [n for n, op in OPS.items() if op.grad and not op.samples]
