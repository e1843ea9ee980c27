"""The gradient path of every `dslc explain` method in float64 against central finite
differences (step 1e-6, relative error at most 1e-5 at 12 random pixels), and guided
backpropagation against PyTorch's on the same weights.

The model is tests/fixtures/explain_tiny.net (two convolutions, ReLUs, a dense head) at
random weights: a gradient path is right or wrong whatever the weights. It runs on the
NumPy reference executor, which computes in float64 with nothing to compile (the compiled
CPU kernels in float64 take 20 s to build cold); the methods' whole path on the compiled
executor is checked against the reference in test_explain_methods.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import dslc
from dslc.api import Model
from dslc.explain import adversarial, gradients, objectives
from dslc.explain.subject import Subject
from helpers import FIXTURES

STEP, TOL, PIXELS = 1e-6, 1e-5, 12


@pytest.fixture(scope="module")
def tiny():
    """A float64 Subject of the tiny model, its parameters drawn at seed 0 (no run: no normalisation)."""
    model = Model.of(dslc.load(FIXTURES / "explain_tiny.net").with_dtype("f64"))
    model.params = model.init(seed=0)
    for name, value in model.params.items():  # biases too, so that no ReLU sits at its kink
        if name.endswith("bias"):
            model.params[name] = np.random.default_rng(1).normal(0, 0.3, value.shape)
    return Subject(FIXTURES / "explain_tiny.net", model, model.compile("reference"), "image", (1, 6, 6), "out",
                   ["a", "b", "c"], quiet=True)


@pytest.fixture
def x():
    return np.random.default_rng(2).uniform(0.1, 0.9, (2, 1, 6, 6))


def check(f, grad: np.ndarray, x: np.ndarray, what: str) -> None:
    """`grad` is the gradient of scalar function `f` at `x`, by central differences at random pixels."""
    rng = np.random.default_rng(3)
    assert grad.shape == x.shape and grad.dtype == np.float64, what
    for flat in rng.choice(x.size, PIXELS, replace=False):
        at = np.unravel_index(flat, x.shape)
        up, down = x.copy(), x.copy()
        up[at] += STEP
        down[at] -= STEP
        fd = (f(up) - f(down)) / (2 * STEP)
        err = abs(fd - grad[at]) / max(abs(fd), abs(grad[at]), 1e-8)
        assert err <= TOL, f"{what}: pixel {at}: analytic {grad[at]:.9g}, finite differences {fd:.9g}"


def test_saliency_is_the_gradient_of_each_examples_class_score(tiny, x):
    classes = [2, 0]
    g = gradients.class_gradient(tiny, x, classes)
    check(lambda v: tiny.scores(v)[[0, 1], classes].sum(), g, x, "class score")
    assert np.allclose(gradients.saliency(tiny, x, classes), np.abs(g).max(axis=1))


def test_adversarial_steps_follow_the_gradient_of_the_log_probability(tiny, x):
    targets = [1, 1]
    _, g = adversarial.log_prob_grad(tiny, x, targets)
    check(lambda v: np.log(tiny.probs(v)[[0, 1], targets]).sum(), g, x, "log P(target)")


@pytest.mark.parametrize("method", ["classviz", "invert", "dream", "style"])
def test_optimised_objectives_match_finite_differences(tiny, x, method):
    conv1, conv2 = tiny.layer("conv1"), tiny.layer("conv2")
    if method == "classviz":
        loss = objectives.classviz_loss(tiny, [2, 1], l2=0.1)
    elif method == "invert":
        target = tiny.forward(x[::-1].copy(), [conv2])[conv2]
        loss = objectives.inversion_loss(tiny, conv2, target, tv=0.05, l2=0.01)
    elif method == "dream":
        loss = objectives.dream_loss(tiny, conv2)
    else:
        style = tiny.forward(x[1:], [conv1, conv2])
        loss = objectives.StyleLoss(tiny, conv2, tiny.forward(x[:1], [conv2])[conv2], [conv1, conv2],
                                    [objectives.gram(style[conv1]), objectives.gram(style[conv2])], [3.0, 5.0],
                                    content_weight=0.5, tv=0.05)
        x = x[:1]
    value, g = loss(x)
    assert value == pytest.approx(loss(x)[0]) and np.isfinite(value)
    check(lambda v: loss(v)[0], g, x, method)


def test_guided_backpropagation_is_pytorchs(tiny, x):
    torch = pytest.importorskip("torch")
    p = {k: torch.tensor(v) for k, v in tiny.model.params.items()}

    class Guided(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            ctx.save_for_backward(v)
            return v.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (v,) = ctx.saved_tensors
            return g.clamp(min=0) * (v > 0)

    def scores(v, relu):
        h = relu(torch.nn.functional.conv2d(v, p["conv1.conv2d.weight"], p["conv1.conv2d.bias"], padding=1))
        h = torch.tanh(torch.nn.functional.conv2d(h, p["conv2.conv2d.weight"], p["conv2.conv2d.bias"], padding=1))
        h = relu(h.flatten(1) @ p["fc.linear.weight"] + p["fc.linear.bias"])
        return h @ p["out.weight"] + p["out.bias"]

    classes = [0, 2]
    for relu, guided in ((Guided.apply, True), (torch.relu, False)):
        v = torch.tensor(x, requires_grad=True)
        scores(v, relu)[[0, 1], classes].sum().backward()
        got = gradients.class_gradient(tiny, x, classes, guided=guided)
        np.testing.assert_allclose(got, v.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert not np.allclose(gradients.class_gradient(tiny, x, classes, guided=True),
                           gradients.class_gradient(tiny, x, classes)), "guided equals plain: the rule was not used"


def test_dream_of_a_large_layer_compiles(net):
    """DeepDream's objective (0.5 |layer|^2) of a layer big enough for a parallel kernel: the
    expanded 0-d gradient is read before the prange (Numba could not type it inside)."""
    m = dslc.load(net("model big {\n    input image : f32[N, 1024]\n    feats: x = image |> tanh\n"
                      "    output y = x\n}\n"))
    x = np.random.default_rng(0).uniform(0, 1, (2, 1024)).astype(np.float32)
    value, got = m.compile("cpu").grad({}, {"image": x}, of={"feats": "l2"}, wrt=["image"])
    want_value, want = m.grad({}, {"image": x}, of={"feats": "l2"}, wrt=["image"])
    assert value == pytest.approx(want_value, rel=1e-4)
    np.testing.assert_allclose(got["image"], want["image"], rtol=1e-4, atol=1e-6)
