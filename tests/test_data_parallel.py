"""Data-parallel training without MPI: the collective ops' semantics, the data-parallel step
against one process at the whole batch, batchnorm with and without synchronisation, the
bucketed reductions of the compiled step, sharded batches, and whole runs whose ranks are
threads of the test process (ThreadRank) or mirrors of it (Mirror). tests/test_mpi.py runs
the same over real MPI ranks where mpi4py is installed."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import dslc
from dslc import reference
from dslc.collective import ALONE, using
from dslc.passes.data_parallel import DataParallel
from dslc.passes.train_step import Optimizer, train_step
from dslc.runtime import state, trainer
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.cpu.collective import check_buckets
from dslc.runtime.data import Batches, digits
from dslc.runtime.errors import TrainError
from dslc.runtime.executor import executor_for
from dslc.runtime.recipes import model_and_recipe
from dslc.stages import build
from helpers import MODELS, Mirror, arrays, on_threads, thread_ranks

TOL = 1e-5
SMALL = {"digits_mlp": {"hidden": 16}, "small_cnn": {"width": 4, "hidden": 16}}
SGD = Optimizer("sgd", lr=0.1, momentum=0.9)


def _model(name):
    return dslc.load(MODELS / f"{name}.net", **SMALL[name])


def _shards(feeds, cuts):
    """The feeds of each rank: the batch inputs cut at `cuts`, the rest (lr, step) shared."""
    batch = {n for n, v in feeds.items() if getattr(v, "ndim", 0)}
    return [{k: (v[lo:hi] if k in batch else v) for k, v in feeds.items()} for lo, hi in cuts]


def _updated(graph, values):
    """{output name: value} of a step's results (loss, metrics, new parameters and state)."""
    return {(o.kind, o.name): np.asarray(values[o.value]) for o in graph.outputs}


def _two_ranks(graph, feeds, params, cuts, total):
    """The step on thread ranks, each on its cut of the batch, by the NumPy reference."""
    def work(group):
        lo, hi = cuts[group.rank]
        group.begin_step(hi - lo, total)
        return _updated(graph, reference.evaluate(graph, _shards(feeds, cuts)[group.rank], dict(params)))
    return on_threads(thread_ranks(len(cuts)), work)


# ---- one step ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,sync", [("digits_mlp", False), ("small_cnn", True)])
def test_a_step_on_two_ranks_equals_one_step_on_the_whole_batch(name, sync):
    model = _model(name)
    one = train_step(model.graph, SGD)
    par = train_step(model.graph, SGD, parallel=DataParallel(sync_batchnorm=sync))
    feeds, params, _ = arrays(one, 7)
    want = _updated(one, reference.evaluate(one, feeds, dict(params)))
    ranks = _two_ranks(par, feeds, params, [(0, 4), (4, 7)], 7)  # shards of 4 and 3: weighted by share
    for key, value in want.items():
        for got in ranks:
            assert np.allclose(got[key], value, rtol=TOL, atol=TOL), key


def test_without_sync_each_rank_normalises_its_own_shard():
    """The oracle: one process's backward pass on each shard alone, the gradients averaged by
    share, one SGD step; the running statistics the share-weighted mean of each shard's update."""
    model = _model("small_cnn")
    sgd = Optimizer("sgd")
    par = train_step(model.graph, sgd, parallel=DataParallel(sync_batchnorm=False))
    back = build(model, "backward")
    feeds, params, _ = arrays(par, 7)
    cuts, shares = [(0, 4), (4, 7)], [4 / 7, 3 / 7]
    shards = [_updated(back, reference.evaluate(back, f, dict(params))) for f in _shards(feeds, cuts)]
    got = _two_ranks(par, feeds, params, cuts, 7)[1]
    for kind, name in (key for key in shards[0] if key[0] != "output"):  # per-example outputs are not averaged
        mean = sum(share * s[kind, name] for share, s in zip(shares, shards))
        if kind == "grad":
            kind, mean = "param", params[name] - feeds["lr"] * mean
        assert np.allclose(got[kind, name], mean, rtol=TOL, atol=TOL), (kind, name)
    synced = _two_ranks(train_step(model.graph, sgd, parallel=DataParallel(sync_batchnorm=True)), feeds, params,
                        cuts, 7)[0]
    for key in (("param", "stage1.conv_bn_relu.batchnorm.gamma"), ("param", "stage2.conv_bn_relu.batchnorm.gamma")):
        before = params[key[1]]  # synchronised statistics give another step
        assert np.abs(synced[key] - got[key]).max() > 0.01 * np.abs(got[key] - before).max(), key


def test_one_process_is_the_group_of_one():
    model = _model("small_cnn")
    one = train_step(model.graph, SGD)
    par = train_step(model.graph, SGD, parallel=DataParallel(sync_batchnorm=True))
    feeds, params, _ = arrays(one, 5)
    want = _updated(one, reference.evaluate(one, feeds, dict(params)))
    got = _updated(par, reference.evaluate(par, feeds, dict(params)))
    assert ALONE.size == 1 and all(np.allclose(got[k], v, rtol=TOL, atol=TOL) for k, v in want.items())


# ---- the compiled step: buckets, counts, traffic ----------------------------------------------

def _compiled_step(graph, feeds, params):
    step = executor_for("cpu").compile(graph)
    params = {k: v.copy() for k, v in params.items()}
    out = step(feeds, params)
    return step, {**{("result", k): np.asarray(v) for k, v in out.items()},
                  **{("param", k): np.array(v) for k, v in params.items()}}


@pytest.mark.parametrize("name,sync", [("digits_mlp", False), ("small_cnn", True)])
def test_the_compiled_step_reduces_its_bucket_in_one_message(name, sync, monkeypatch):
    """Two mirrored ranks that hold the same 5 examples train as one process on those 5
    repeated: what the global batch is (global_count) and what is averaged must agree."""
    monkeypatch.setenv("DSLC_DEBUG", "2")
    model = _model(name)
    adam = Optimizer("adam")  # the models' own: the suite compiles its update kernels anyway
    one = train_step(model.graph, adam)
    par = train_step(model.graph, adam, parallel=DataParallel(sync_batchnorm=sync))
    feeds, params, _ = arrays(one, 5)
    doubled = {k: np.concatenate([v, v]) if getattr(v, "ndim", 0) else v for k, v in feeds.items()}
    _, want = _compiled_step(one, doubled, params)
    group = Mirror(2)
    with using(group):
        group.begin_step(5, 10)
        step, got = _compiled_step(par, feeds, params)
    for key, value in want.items():
        assert np.allclose(got[key], value, rtol=TOL, atol=TOL), key
    trained = sum(p.type.numel() for p in model.graph.params if p.attr("trainable"))
    batchnorms = [n.type.shape[1] for n in model.graph.of_op("batchnorm")]
    # one flat bucket (gradients, loss, accuracy), and per synchronised batchnorm its mean
    # and variance forward and their cotangents backward
    assert group.traffic.calls == 1 + 4 * len(batchnorms)
    assert group.traffic.bytes == 4 * (trained + 2) + 4 * 4 * sum(batchnorms)
    table = next(iter(step.compiled.values()))._step.table()
    assert "allreduce over 2 ranks: " in table and f"{group.traffic.bytes:,} bytes in {group.traffic.calls}.0 calls per step" in table


def test_a_kernel_reading_a_bucket_member_before_its_reduction_is_refused():
    from dslc.kernels import lower
    from dslc.passes.pipeline import optimize

    kg = lower(optimize(train_step(_model("digits_mlp").graph, SGD, parallel=DataParallel()))[0])
    check_buckets(kg)
    kernels = list(kg.kernels)
    update = next(i for i, k in enumerate(kernels) if k.kind == "group" and k.op == "update")
    first = next(i for i, k in enumerate(kernels) if k.op == "allreduce_mean")
    early = kernels[:first + 1] + [kernels[update]] + [k for i, k in enumerate(kernels[first + 1:], first + 1)
                                                       if i != update]
    with pytest.raises(AssertionError, match="reads a member of bucket 1 before its reduction"):
        check_buckets(dataclasses.replace(kg, kernels=tuple(early)))


# ---- the data -----------------------------------------------------------------------------------

@pytest.mark.parametrize("ranks", [2, 3])
def test_every_rank_takes_its_shard_of_the_same_global_batches(ranks):
    data = digits()
    one = [(b.x, b.y) for b in Batches(data, 100, seed=7, prefetch=0)]
    shards = [[(b.x, b.y) for b in Batches(data, 100, seed=7, prefetch=0, shard=(r, ranks))] for r in range(ranks)]
    assert all(len(s) == len(one) for s in shards)
    for i, (x, y) in enumerate(one):
        parts = [s[i] for s in shards]
        assert np.array_equal(np.concatenate([p[1] for p in parts]), y)
        assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
        assert max(len(p[1]) for p in parts) - min(len(p[1]) for p in parts) <= 1


def test_a_batch_without_an_example_for_every_rank_is_refused():
    model, recipe = model_and_recipe(MODELS / "digits_mlp.net", sets={"batch": "2", "hidden": "8"})
    with using(Mirror(3)), pytest.raises(TrainError, match="3 ranks need at least one example each of every batch, "
                                                           "but batch = 2"):
        trainer.train(model, recipe, None, quiet=True, device="reference")


def test_a_resume_may_change_the_number_of_ranks_but_not_the_batchnorm_statistics():
    _, before = model_and_recipe(MODELS / "small_cnn.net", sets={"ranks": "2"})
    _, after = model_and_recipe(MODELS / "small_cnn.net", sets={"ranks": "3"})
    _, synced = model_and_recipe(MODELS / "small_cnn.net", sets={"ranks": "3", "sync_batchnorm": "true"})
    assert state.recipe_changes(before.to_json(), after) == []
    assert state.recipe_changes(before.to_json(), synced) == ["sync_batchnorm: false -> true"]
    older = before.to_json()
    del older["entries"]["sync_batchnorm"], older["entries"]["ranks"]  # a checkpoint from before the setting
    assert state.recipe_changes(older, after) == []


# ---- whole runs on thread ranks ---------------------------------------------------------------

def test_a_run_on_two_thread_ranks_equals_one_process_and_only_rank_0_writes(tmp_path):
    sets = {"steps": "12", "hidden": "16", "batch": "50", "schedule": "constant"}
    model, recipe = model_and_recipe(MODELS / "digits_mlp.net", sets=sets)
    trainer.train(model, recipe, tmp_path / "one", quiet=True, device="reference")

    def rank(group):
        return trainer.train(model, recipe, tmp_path / "two", quiet=True, device="reference", echo=lambda s: None)
    results = on_threads(thread_ranks(2), rank)
    assert [r.steps for r in results] == [12, 12]
    one, two = load_checkpoint(tmp_path / "one" / "last"), load_checkpoint(tmp_path / "two" / "last")
    for name, value in one.weights.items():
        assert np.allclose(two.weights[name], value, rtol=TOL, atol=TOL), name
    assert json.loads((tmp_path / "two" / "config.json").read_text())["ranks"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
