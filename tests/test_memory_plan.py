"""Memory planning: the saving on ResNet-20, and that plans are safe — checked both on the
lifetimes and by running the planned kernel graph against the NumPy oracle."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import dslc
from dslc.kernels import lower
from dslc.kernels.interpret import execute
from dslc.kernels.memory_plan import plan
from dslc.passes.pipeline import optimize
from dslc.passes.train_step import Optimizer
from dslc.reference import run_outputs
from dslc.stages import build
from helpers import MODELS

N = 8


def lowered(model: str, opt: Optimizer | None):
    """(unoptimised train step, its kernel graph); opt None takes the model's recipe."""
    graph = build(dslc.load(MODELS / model), "train_step", opt)
    return graph, lower(optimize(graph)[0])


def step_arrays(graph, seed=0):
    """Feeds, parameters with non-trivial optimizer state, and fixed dropout masks."""
    rng = np.random.default_rng(seed)
    sizes = {"N": N}
    feeds = {n.name: (rng.standard_normal(n.type.bind(sizes)) if n.type.is_float
                      else rng.integers(0, 10, n.type.bind(sizes))) for n in graph.inputs}
    feeds.update(lr=np.float32(0.05), **({"step": np.float32(3)} if "step" in feeds else {}))
    params = {p.name: (rng.uniform(0.5, 1.5, p.type.bind({})) if p.name.startswith(("opt.v.", "opt.cache."))
                       or p.name.endswith("running_var") else 0.1 * rng.standard_normal(p.type.bind({})))
              for p in graph.params}
    randoms = {r.name: (rng.random(r.type.bind(sizes)) < r.attr("p")) * r.attr("scale") for r in graph.of_op("random")}
    return feeds, params, randoms


def test_resnet20_step_at_batch_128_needs_40_percent_less():
    _, kg = lowered("resnet20.net", Optimizer("sgd", lr=0.1, momentum=0.9, weight_decay=5e-4))
    p = plan(kg, 128)
    print(f"\n{p.report()}\nresnet20 train step, N=128: planned {p.arena_bytes} bytes, "
          f"one buffer per value {p.naive_bytes} bytes")
    assert p.arena_bytes <= 0.6 * p.naive_bytes
    assert p.peak_bytes <= p.arena_bytes
    assert plan(kg, 8).arena_bytes < p.arena_bytes  # N is bound at planning time, not baked in


SAFE_CASES = {
    "mlp_bn-adam": ("mlp_bn.net", Optimizer("adam", lr=1e-3)),
    "mlp_bn-recipe-nesterov": ("mlp_bn.net", None),
    "small_cnn-recipe-adam": ("small_cnn.net", None),
    "small_cnn-momentum-decay": ("small_cnn.net", Optimizer("sgd", lr=0.1, momentum=0.9, weight_decay=0.01)),
}


@pytest.fixture(scope="module", params=sorted(SAFE_CASES))
def case(request):
    graph, kg = lowered(*SAFE_CASES[request.param])
    return graph, kg, plan(kg, N)


def test_planned_step_matches_the_reference(case):
    graph, kg, p = case
    feeds, params, randoms = step_arrays(graph)
    want = run_outputs(graph, feeds, params, randoms=randoms)
    got = execute(kg, p, feeds, params, randoms=randoms)
    assert set(got) == set(want)
    for key, value in want.items():
        # Not bit-exact: NumPy's SIMD reductions associate differently at different
        # alignments, and arena views are aligned differently from fresh arrays.
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-6, err_msg=str(key))


def test_buffers_live_at_the_same_time_never_share_bytes(case):
    _, kg, p = case
    spans = sorted((p.offsets[b], p.offsets[b] + kg.buffer(b).nbytes(p.batch), *p.lifetimes[b], b)
                   for b in p.lifetimes if kg.buffer(b).nbytes(p.batch))
    for k, (_, hi, start, end, name) in enumerate(spans):
        for lo2, _, start2, end2, name2 in spans[k + 1:]:
            if lo2 >= hi:
                break
            assert end < start2 or end2 < start, f"{name} and {name2} overlap in bytes and in time"
    assert max(hi for _, hi, *_ in spans) <= p.arena_bytes


def test_a_plan_that_reuses_live_bytes_is_caught(case):
    graph, kg, p = case
    # Put every temporary at one offset: values still needed get overwritten.
    shared = max(p.offsets.values()) + 4096
    temps = {b.name for b in kg.buffers if b.role == "temp"}
    broken = dataclasses.replace(p, offsets={b: (shared if b in temps else o) for b, o in p.offsets.items()},
                                 arena_bytes=shared + max(kg.buffer(b).nbytes(p.batch) for b in temps))
    feeds, params, randoms = step_arrays(graph)
    want = run_outputs(graph, feeds, params, randoms=randoms)
    got = execute(kg, broken, feeds, params, randoms=randoms)
    assert not all(np.allclose(got[k], v, rtol=1e-6, atol=1e-6) for k, v in want.items())


def test_updates_are_in_place_unless_the_old_value_is_read_later():
    _, kg = lowered("mlp_bn.net", Optimizer("adam", lr=1e-3))
    p = plan(kg, N)
    updates = [b.name for b in kg.buffers if b.updates]
    assert sorted(p.in_place) == sorted(updates) and not p.writebacks
    assert all(p.offsets[u] == p.offsets[kg.buffer(u).updates] for u in updates)
    # Nesterov reads the old velocity after the new one is made: v is copied back instead.
    _, kg = lowered("mlp_bn.net", Optimizer("sgd", lr=0.1, momentum=0.9, nesterov=True))
    p = plan(kg, N)
    assert p.writebacks and all(target.startswith("opt.v.") for _, target in p.writebacks)
    assert all(not kg.buffer(u).updates.startswith("opt.v.") for u in p.in_place)
    assert "in place" in p.report() and f"{len(p.in_place)}/{len(p.in_place) + len(p.writebacks)}" in p.report()
