"""`dslc gradcheck` and Model.grad: analytic gradients of whole models against central
differences in float64 (relative error below 1e-6), through the API and the CLI."""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

import dslc
from dslc import gradcheck as gc
from dslc.cli import main
from dslc.diagnostics import CompileError
from dslc.ops import registry
from helpers import MODELS

MLP = """
model mlp(hidden: int = 6) {
    input x : f32[N, 5]
    input y : i64[N]
    h = x |> linear(hidden) |> relu
    fc2: logits = h |> linear(3)
    loss cross_entropy(logits, y) + 0.01 * l2(weights)
}
"""

CNN = """
model cnn {
    input image : f32[N, 2, 6, 6]
    input label : i64[N]
    c1: x = image |> conv2d(3, kernel=3, pad=1, bias=false) |> batchnorm |> relu |> maxpool(2)
    x = x |> flatten
    out: logits = x |> linear(4)
    loss cross_entropy(logits, label)
}
"""

DROPOUT = """
model drop {
    input x : f32[N, 6]
    input y : i64[N]
    logits = x |> linear(8) |> tanh |> dropout(p=0.5) |> linear(3)
    loss cross_entropy(logits, y)
}
"""

NO_LOSS = """
model features {
    input x : f32[N, 4]
    output y = x |> linear(2)
}
"""

# Hyper-parameters that make the shipped models small enough to check in float64 quickly.
TINY = {"small_cnn": ["width=2", "hidden=8"], "cifar_cnn": ["width=2", "hidden=8"], "mlp_bn": ["h1=8", "h2=8"],
        "digits_mlp": ["hidden=8"], "resnet20": ["n=1", "width=4"], "two_layer": ["hidden=8"]}
TOO_BIG = {"alexnet", "vgg16", "resnet18"}  # 224x224 inputs: minutes per model in float64


@pytest.mark.parametrize("text", [MLP, CNN, DROPOUT], ids=["mlp", "cnn", "dropout"])
def test_small_models_pass(net, text):
    m = dslc.load(net(text))
    rows = gc.gradcheck(m)
    assert rows and all(r.passed for r in rows), gc.format_table(rows)
    float_inputs = {n.name for n in m.graph.inputs if n.type.is_float}
    assert {r.name for r in rows} == {p.name for p in m.graph.params if p.attr("trainable")} | float_inputs
    assert {r.kind for r in rows if r.name in float_inputs} == {"input"}


def test_dropout_mask_is_held_fixed(net):
    # Without fixed masks the loss would change between the two evaluations of a difference.
    m = dslc.load(net(DROPOUT))
    assert [n.op for n in m.grad_graph().of_op("random")] == ["random"]
    rows = gc.gradcheck(m, seed=3)
    assert all(r.passed for r in rows)
    a, b = (m.forward(m.init(0), {"x": np.ones((4, 6)), "y": np.zeros(4, int)}, train=True, seed=s) for s in (0, 1))
    assert a["loss"] != b["loss"]


def test_large_tensors_are_checked_along_directions_and_sampled_and_say_so(net):
    rows = gc.gradcheck(dslc.load(net(MLP), hidden=20), max_elements=7, directions=3, samples=4)
    by_name = {r.name: r for r in rows}
    weight = by_name["linear.weight"]
    assert (weight.checked, weight.directions, weight.size) == (4, 3, 100)
    assert (by_name["fc2.bias"].checked, by_name["fc2.bias"].directions) == (3, 0)  # small: every element
    table = gc.format_table(rows)
    assert "3 directions + 4 of 100" in table and "all" in table and "passed: all" in table


@pytest.mark.parametrize("path", sorted(p for p in MODELS.glob("*.net") if p.stem not in TOO_BIG), ids=lambda p: p.stem)
def test_shipped_models_pass(path, capsys):
    sets = [a for kv in TINY.get(path.stem, []) for a in ("--set", kv)]
    assert main(["gradcheck", str(path), "--max-elements", "10", "--json"] + sets) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["tensors"]


@pytest.mark.slow  # about 10 s: ResNet-20 at its real width, where every relu is a kink to step over
def test_resnet20_at_full_size_passes_with_directions(capsys):
    assert main(["gradcheck", str(MODELS / "resnet20.net"), "--batch", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and len(report["tensors"]) == 60
    assert sum(r["directions"] for r in report["tensors"]) >= 2 * 40


def test_two_layer_cli_table(capsys):
    assert main(["gradcheck", str(MODELS / "two_layer.net"), "--set", "hidden=8", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["tensor", "kind", "shape", "checked", "max", "rel", "error"]
    assert "W1" in out and "passed: all 5 tensors below 1e-06" in out


def _wrong_relu(monkeypatch):
    """relu's rule with the derivative doubled: the kind of slip gradcheck exists to catch."""
    relu = registry.get("relu")
    bad = lambda b, n, g: (b.mul(b.mul(g, b.step(n.inputs[0])), b.const(2.0, n.type.dtype)),)
    monkeypatch.setitem(registry.OPS, "relu", dataclasses.replace(relu, grad=bad))


def test_wrong_gradient_fails(net, monkeypatch, capsys):
    _wrong_relu(monkeypatch)
    rows = {r.name: r for r in gc.gradcheck(dslc.load(net(MLP)))}
    # Only what lies below the relu is wrong; fc2 is checked correct.
    assert not rows["linear.weight"].passed and rows["linear.weight"].max_rel_error > 0.1
    assert not rows["x"].passed and rows["fc2.weight"].passed
    assert main(["gradcheck", str(net(MLP))]) == 1
    assert "FAILED: 3 of 5 tensors" in capsys.readouterr().out


def test_a_wrong_rule_is_caught_in_a_resnet_along_directions(monkeypatch, capsys):
    """conv2d's weight gradient off by 0.1%: only directions see it in a tensor of thousands of
    elements, and the kinks of a residual network's relus must not hide it or be taken for it."""
    conv = registry.get("conv2d")

    def slightly_wrong(b, n, g):
        grads = conv.grad(b, n, g)
        return tuple(b.mul(x, b.const(1.001, n.type.dtype)) if i == 1 else x for i, x in enumerate(grads))

    args = ["gradcheck", str(MODELS / "resnet20.net"), "--set", "n=1", "--set", "width=8", "--max-elements", "8"]
    assert main(args) == 0
    right = capsys.readouterr().out
    monkeypatch.setitem(registry.OPS, "conv2d", dataclasses.replace(conv, grad=slightly_wrong))
    assert main(args + ["--json"]) == 1
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["tensors"]}
    weights = [name for name in rows if name.endswith("conv2d.weight")]
    assert weights and all(not rows[w]["passed"] and 1e-4 < rows[w]["max_rel_error"] <= 1.1e-3 for w in weights)
    assert all(rows[w]["directions"] == 2 for w in weights)
    assert rows["fc.weight"]["passed"] and "passed: all" in right


def test_model_without_loss_is_a_located_error(net, capsys):
    path = net(NO_LOSS)
    with pytest.raises(CompileError) as err:
        gc.gradcheck(dslc.load(path))
    assert err.value.diagnostics[0].code == "E0401"
    assert main(["gradcheck", str(path)]) == 1
    msg = capsys.readouterr().err
    assert f"{path}:2:7: error[E0401]: model 'features' has no loss" in msg and "hint:" in msg


DOMAIN = """
model q {
    input x : f32[N, 4]
    input y : f32[N, 4]
    loss sum(%s * y) + sum(y * y)
}
"""


@pytest.mark.parametrize("term", ["log(x)", "sqrt(x)", "x ** 0.5"])
def test_a_loss_that_is_not_finite_at_the_random_point_fails_and_says_where(net, term, capsys):
    path = net(DOMAIN % term)
    with pytest.raises(CompileError) as err:
        gc.gradcheck(dslc.load(path))
    d = err.value.diagnostics[0]
    assert d.code == "E0407" and "the loss is nan at gradcheck's random point" in d.message
    assert d.span.line == 5 and "--inputs positive" in d.hint and "input 'x'" in d.notes[0][1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning of NumPy's
        assert main(["gradcheck", str(path)]) == 1
    out, msg = capsys.readouterr()
    assert "passed" not in out and "error[E0407]" in msg and "RuntimeWarning" not in msg
    assert main(["gradcheck", str(path), "--inputs", "positive", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"]


def test_a_tensor_whose_every_check_is_at_a_kink_is_not_checked_and_fails(net, monkeypatch, capsys):
    monkeypatch.setattr(gc._Numeric, "check", lambda self, name, d, analytic: None)
    rows = gc.gradcheck(dslc.load(net(DOMAIN % "x")))
    assert [(r.passed, r.compared, r.kinks) for r in rows] == [(False, 0, 8)] * 2
    table = gc.format_table(rows)
    assert "not checked (8 at kinks, left out)" in table and "passed" not in table
    assert "FAILED: 2 of 2 not checked, every check at a kink: x, y" in table
    assert not gc.to_json(rows)["passed"]
    assert main(["gradcheck", str(net(DOMAIN % "x"))]) == 1


def test_a_gradient_that_is_not_finite_fails_rather_than_counting_as_a_kink(net):
    # sqrt(relu(x)) is 0 where x < 0, and its rule's 0.5 / sqrt(0) * 0 is NaN there.
    rows = {r.name: r for r in gc.gradcheck(dslc.load(net(DOMAIN % "sqrt(relu(x))")))}
    assert not rows["x"].passed and rows["x"].max_rel_error == float("inf") and rows["x"].kinks == 0
    assert rows["y"].passed


# ---- Model.grad ------------------------------------------------------------------------

def test_grad_of_trainable_params_and_saliency(net):
    m = dslc.load(net(MLP))
    p = m.init(0)
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 5)), "y": np.array([0, 1, 2, 0])}
    loss, grads = m.grad(p, feeds)
    assert set(grads) == {"linear.weight", "linear.bias", "fc2.weight", "fc2.bias"}
    assert all(grads[k].shape == p[k].shape and grads[k].dtype == np.float32 for k in grads)
    assert np.isclose(loss, m.forward(p, feeds)["loss"])
    _, saliency = m.grad(p, feeds, wrt=["x"])
    assert list(saliency) == ["x"] and saliency["x"].shape == (4, 5)
    # Central difference on one pixel, in float64.
    m64, p64 = m.with_dtype("f64"), m.with_dtype("f64").init(0)
    _, s64 = m64.grad(p64, feeds, wrt=["x"])

    def loss_at(step):
        x = feeds["x"].copy()
        x[1, 1] += step
        return m64.forward(p64, {**feeds, "x": x})["loss"]

    numeric = (loss_at(1e-6) - loss_at(-1e-6)) / 2e-6
    assert abs(numeric - s64["x"][1, 1]) < 1e-8


@pytest.mark.parametrize("wrt,code,message", [
    (["y"], "E0403", "cannot differentiate with respect to 'y': it is i64[N], an integer input"),
    (["linear.weigth"], "E0404", "has no input or parameter 'linear.weigth'"),
])
def test_grad_wrt_errors(net, wrt, code, message):
    m = dslc.load(net(MLP))
    with pytest.raises(CompileError) as err:
        m.grad(m.init(0), {}, wrt=wrt)
    d = err.value.diagnostics[0]
    assert d.code == code and message in d.message and d.span is not None
    if code == "E0404":
        assert d.hint == "did you mean 'linear.weight'?"


def test_grad_without_loss(net):
    m = dslc.load(net(NO_LOSS))
    with pytest.raises(CompileError, match="has no loss") as err:
        m.grad(m.init(0), {"x": np.ones((2, 4))})
    assert err.value.diagnostics[0].code == "E0401"
