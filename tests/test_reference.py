"""The NumPy reference executor: forward passes against PyTorch, and its checks of feeds.

PyTorch (CPU) is the independent oracle: the same weights, the same inputs, float32,
agreement to 1e-5 (relative and absolute).
"""
from __future__ import annotations

import numpy as np
import pytest

import dslc
from dslc import reference
from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Output
from dslc.ir.types import Sym, TensorType

MLP = """
model mlp {
    input x : f32[N, 6]
    input y : i64[N]
    h = x |> linear(8) |> relu
    fc2: logits = h |> linear(4)
    output probs = softmax(logits)
    metric accuracy(logits, y)
    loss cross_entropy(logits, y) + 0.01 * l2(weights)
}
"""

CNN = """
model cnn {
    input image : f32[N, 2, 8, 8]
    input label : i64[N]
    c1: x = image |> conv2d(3, kernel=3, pad=1, bias=false) |> batchnorm |> relu |> maxpool(2)
    c2: x = x |> conv2d(4, kernel=3, stride=2) |> relu
    x = x |> flatten
    out: logits = x |> linear(5)
    output probs = softmax(logits)
    loss cross_entropy(logits, label)
}
"""


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _randomised(model, seed=1):
    """Parameters with no zeros or ones left in them, so every term of the forward matters."""
    rng = np.random.default_rng(seed)
    params = model.init(seed)
    for name, p in params.items():
        params[name] = (rng.standard_normal(p.shape) * 0.5).astype(p.dtype)
        if name.endswith("running_var"):
            params[name] = (rng.uniform(0.5, 2.0, p.shape)).astype(p.dtype)
    return params


def test_mlp_forward_matches_torch(net):
    torch = pytest.importorskip("torch")
    m = dslc.load(net(MLP))
    p = _randomised(m)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 6)).astype(np.float32), rng.integers(0, 4, 5)
    out = m.forward(p, {"x": x, "y": y})

    t = {k: torch.from_numpy(v) for k, v in p.items()}
    h = torch.relu(torch.from_numpy(x) @ t["linear.weight"] + t["linear.bias"])
    logits = h @ t["fc2.weight"] + t["fc2.bias"]
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)) + 0.01 * (
        (t["linear.weight"] ** 2).sum() + (t["fc2.weight"] ** 2).sum())
    _close(out["probs"], torch.softmax(logits, dim=1))
    _close(out["loss"], loss)
    _close(out["accuracy"], (logits.argmax(1) == torch.from_numpy(y)).float().mean())
    assert out["probs"].dtype == np.float32 and out["loss"].dtype == np.float32


def test_cnn_forward_matches_torch(net):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    m = dslc.load(net(CNN))
    p = _randomised(m)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 2, 8, 8)).astype(np.float32), rng.integers(0, 5, 3)
    out = m.forward(p, {"image": x, "label": y})

    t = {k: torch.from_numpy(v) for k, v in p.items()}
    h = F.conv2d(torch.from_numpy(x), t["c1.conv2d.weight"], padding=1)
    h = F.batch_norm(h, t["c1.batchnorm.running_mean"], t["c1.batchnorm.running_var"], t["c1.batchnorm.gamma"],
                     t["c1.batchnorm.beta"], training=False, eps=1e-5)
    h = F.max_pool2d(F.relu(h), 2)
    h = F.relu(F.conv2d(h, t["c2.conv2d.weight"], t["c2.conv2d.bias"], stride=2))
    logits = h.flatten(1) @ t["out.weight"] + t["out.bias"]
    _close(out["probs"], torch.softmax(logits, dim=1))
    _close(out["loss"], F.cross_entropy(logits, torch.from_numpy(y)))


def test_cnn_training_forward_uses_batch_statistics(net):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    m = dslc.load(net(CNN))
    p = _randomised(m)
    x = np.random.default_rng(0).standard_normal((4, 2, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    train = m.forward(p, {"image": x, "label": y}, train=True)
    assert not np.allclose(train["loss"], m.forward(p, {"image": x, "label": y})["loss"])

    t = {k: torch.from_numpy(v.copy()) for k, v in p.items()}
    h = F.conv2d(torch.from_numpy(x), t["c1.conv2d.weight"], padding=1)
    h = F.batch_norm(h, t["c1.batchnorm.running_mean"], t["c1.batchnorm.running_var"], t["c1.batchnorm.gamma"],
                     t["c1.batchnorm.beta"], training=True, eps=1e-5)
    h = F.relu(F.conv2d(F.max_pool2d(F.relu(h), 2), t["c2.conv2d.weight"], t["c2.conv2d.bias"], stride=2))
    _close(train["loss"], F.cross_entropy(h.flatten(1) @ t["out.weight"] + t["out.bias"], torch.from_numpy(y)))


def test_init_is_deterministic_and_typed(net):
    m = dslc.load(net(CNN))
    a, b, c = m.init(0), m.init(0), m.init(1)
    assert list(a) == [n.name for n in m.graph.params]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["c1.conv2d.weight"], c["c1.conv2d.weight"])
    assert np.all(a["c1.batchnorm.running_var"] == 1) and a["out.weight"].dtype == np.float32
    assert m.with_dtype("f64").init(0)["out.weight"].dtype == np.float64


def test_f64_model_keeps_f64_everywhere(net):
    m = dslc.load(net(MLP)).with_dtype("f64")
    values = reference.evaluate(m.graph, {"x": np.ones((2, 6)), "y": np.array([0, 3])}, m.init(0))
    assert {v.dtype for k, v in values.items() if m.graph[k].type.is_float} == {np.dtype(np.float64)}


# ---- feeds are checked against the input types ----------------------------------------

def _graph():
    b = GraphBuilder()
    n = Sym.of("N")
    x = b.source("x", "input", TensorType("f32", (n, 3)))
    y = b.source("y", "input", TensorType("i64", (n,)))
    w = b.source("w", "param", TensorType("f32", (3, 2)))
    mask = b.source("mask", "random", TensorType("f32", (n, 2)), {"p": 0.5, "scale": 2.0})
    z = b.add("mul", [b.add("matmul", [x, w]), mask])
    return b.graph("g", [Output("output", "z", z), Output("loss", "loss", b.add("cross_entropy", [z, y]))], "train")


def test_symbolic_dims_bind_consistently():
    g, w = _graph(), {"w": np.ones((3, 2))}
    with pytest.raises(ValueError, match=r"input 'y': expected i64\[N\], got shape \(4,\) \(with N=2\)"):
        reference.evaluate(g, {"x": np.ones((2, 3)), "y": np.zeros(4, int)}, w, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"input 'x': expected f32\[N, 3\], got shape \(2, 4\)"):
        reference.evaluate(g, {"x": np.ones((2, 4)), "y": np.zeros(2, int)}, w, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"input 'x': shape \(0, 3\) makes N = 0 .* at least one example"):
        reference.evaluate(g, {"x": np.ones((0, 3)), "y": np.zeros(0, int)}, w, np.random.default_rng(0))


def test_feeds_kind_and_missing_values_are_errors():
    g, w = _graph(), {"w": np.ones((3, 2))}
    feeds = {"x": np.ones((2, 3)), "y": np.zeros(2, int)}
    with pytest.raises(ValueError, match="input 'y' is i64\\[N\\] but was given an array of dtype float64"):
        reference.evaluate(g, {**feeds, "y": np.zeros(2)}, w, np.random.default_rng(0))
    with pytest.raises(ValueError, match="input 'x' .* was not fed"):
        reference.evaluate(g, {"y": feeds["y"]}, w, np.random.default_rng(0))
    with pytest.raises(ValueError, match="param 'w' .* is missing from params"):
        reference.evaluate(g, feeds, {}, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"param 'w': expected shape \(3, 2\)"):
        reference.evaluate(g, feeds, {"w": np.ones((2, 3))}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="random node 'mask' needs a generator"):
        reference.evaluate(g, feeds, w)


def test_random_masks_drawn_or_given():
    g, w = _graph(), {"w": np.ones((3, 2))}
    feeds = {"x": np.ones((1000, 3)), "y": np.zeros(1000, int)}
    drawn = reference.evaluate(g, feeds, w, np.random.default_rng(0))
    assert set(np.unique(drawn["mask"])) == {0.0, 2.0} and drawn["mask"].dtype == np.float32
    assert abs(drawn["mask"].mean() - 1.0) < 0.1  # keep probability 0.5, scale 2
    fixed = np.ones((1000, 2)) * 3
    out = reference.run_outputs(g, feeds, w, randoms={"mask": fixed})
    np.testing.assert_array_equal(out["output", "z"], 9.0)
    assert set(out) == {("output", "z"), ("loss", "loss")}


def test_every_stage_runs_and_the_sgd_step_matches_model_grad(net):
    """One oracle for all stages: the train_step graph's new parameters are p - lr * grad."""
    from dslc import stages
    from dslc.passes.train_step import Optimizer

    m = dslc.load(net(CNN)).with_dtype("f64")
    p = _randomised(m)
    rng = np.random.default_rng(0)
    feeds = {"image": rng.standard_normal((4, 2, 8, 8)), "label": np.array([0, 1, 4, 2])}
    for stage in stages.STAGES:
        out = reference.run_outputs(stages.build(m, stage), feeds | {"lr": np.asarray(0.1)}, p)
        assert all(np.all(np.isfinite(v)) for v in out.values()), stage
    step = reference.run_outputs(stages.build(m, "train_step", Optimizer("sgd", lr=0.1)),
                                 feeds | {"lr": np.asarray(0.1)}, p)
    loss, grads = m.grad(p, feeds)
    assert np.isclose(step["loss", "loss"], loss)
    assert {name for kind, name in step if kind == "param"} == set(grads)
    for name, g in grads.items():
        np.testing.assert_allclose(step["param", name], p[name] - 0.1 * g, rtol=1e-12, atol=1e-14)
