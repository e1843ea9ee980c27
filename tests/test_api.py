"""The Python API: `dslc.load(..., checkpoint=RUN)`, `m.compile(device)` and its forward, grad
and step on the generated kernels, against the NumPy reference (`device="reference"`, and
the front end's own Model.forward/grad) within 1e-4 of each result's largest entry.

The model is models/digits_cnn.net at width 4 (convolutions, batchnorm with running
statistics, global average pooling; dropout at p = 0, so that training-mode results do not
depend on how each side draws its masks), its parameters a two-step run's checkpoint.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import dslc
from dslc.diagnostics import UsageError
from dslc.passes.train_step import Optimizer
from dslc.reference import run_outputs
from dslc.runtime.data import digits
from dslc.runtime.errors import TrainError
from dslc.stages import build
from helpers import MODELS, ROOT, TOL

DIGITS_CNN = MODELS / "digits_cnn.net"


def close(got, want, what: str) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    err = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-6)
    assert err <= TOL, f"{what}: relative error {err:.2e}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-step run of digits_cnn at width 4, trained by the NumPy reference (nothing to compile)."""
    from dslc.cli import main
    out = tmp_path_factory.mktemp("api") / "run"
    assert main(["train", str(DIGITS_CNN), "--device", "reference", "--set", "steps=2", "--set", "width=4",
                 "--set", "p=0.0", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def loaded(run):
    return dslc.load(DIGITS_CNN, checkpoint=run, width=4, p=0.0)


@pytest.fixture(scope="module")
def compiled(loaded):
    return loaded.compile(device="cpu")


def batch(n: int = 6):
    d = digits()
    return {"image": d.x[:n], "label": d.y[:n]}


def test_load_with_a_checkpoint_gives_its_parameters_and_running_statistics(loaded, run):
    from dslc.runtime.checkpoint import load_checkpoint
    saved = load_checkpoint(run / "best" if (run / "best").exists() else run / "last")
    assert set(loaded.params) == {p.name for p in loaded.graph.params}
    assert any(name.endswith("running_var") for name in loaded.params)
    for name, value in loaded.params.items():
        np.testing.assert_array_equal(value, saved.weights[name])
    x = digits().x[:3]
    assert loaded.normalize(x).shape == x.shape and not np.allclose(loaded.normalize(x), x)
    # as the README's example gives them to digits_mlp: flattened, standardised as the run's [1, 8, 8]
    np.testing.assert_array_equal(loaded.normalize(x.reshape(3, 64)), loaded.normalize(x).reshape(3, 64))
    # anything else is named (it was NumPy's ValueError: "1 channel means do not fit inputs of shape (5,)")
    with pytest.raises(UsageError, match=r"normalize: examples of shape \[2, 5\] do not fit the run's, \[N, 1, 8, 8\]"):
        loaded.normalize(np.zeros((2, 5)))
    with pytest.raises(UsageError, match="normalize: examples are an array of numbers, not str"):
        loaded.normalize("abc")
    with pytest.raises(TrainError, match="does not fit"):
        dslc.load(DIGITS_CNN, checkpoint=run, width=8, p=0.0)


def test_forward_is_the_reference_forward(loaded, compiled):
    inputs = batch()
    inputs["image"] = loaded.normalize(inputs["image"])
    got, want = compiled.forward(loaded.params, inputs), loaded.forward(loaded.params, inputs)
    assert set(got) == set(want) == {"probs", "loss", "accuracy"}
    for name in want:
        close(got[name], want[name], name)
    only = compiled.forward(loaded.params, {"image": inputs["image"]}, outputs=["conv2", "out"])
    assert set(only) == {"conv2", "out"} and only["conv2"].shape == (6, 8, 4, 4)  # a label: its statement's value
    assert set(compiled.forward(loaded.params, {"image": inputs["image"]})) == {"probs"}  # no labels: no loss


@pytest.mark.parametrize("of,wrt", [
    ("loss", None),
    ("out[:, 3]", ["image"]),
    ("out[2, 7]", ["image", "out.weight"]),
    ({"conv3": "l2", "out": np.linspace(-1, 1, 10)}, ["image", "conv1.conv_bn_relu.conv2d.weight"]),
], ids=["loss", "class-score", "one-example", "l2-and-cotangent"])
def test_grad_is_the_reference_grad(loaded, compiled, of, wrt):
    inputs = {k: v for k, v in batch().items() if of == "loss" or k == "image"}
    value, got = compiled.grad(loaded.params, inputs, of=of, wrt=wrt)
    want_value, want = loaded.grad(loaded.params, inputs, of=of, wrt=wrt)
    assert set(got) == set(want) == set(wrt or [p.name for p in loaded.graph.params if p.attr("trainable")])
    close(value, want_value, "value")
    for name in want:
        close(got[name], want[name], f"grad {name}")
    if of == "out[:, 3]":  # examples are independent: each image's gradient is its own score's
        _, one = compiled.grad(loaded.params, {"image": inputs["image"][2:3]}, of=of, wrt=wrt)
        close(one["image"][0], got["image"][2], "one image's saliency")


def test_grad_with_respect_to_every_parameter_and_statistic_is_the_reference_grad(loaded, compiled):
    """Inference-mode gradients w.r.t. every parameter, running statistics included, all at
    once and a batchnorm's alone. The compiled devices fold the batchnorm, and then read a
    convolution's weight through two views: a weight lent to the kernels reached one of
    them, the other read the arena (gamma's and the variance's gradients came out wrong,
    0 for a linear layer's variance); and the fold's rsqrt needed a gradient rule."""
    inputs = {"image": batch()["image"]}
    of = {"out": np.linspace(-1, 1, 10)}
    every = list(loaded.params)
    norm = "conv2.conv_bn_relu.batchnorm"
    for wrt in (every, [f"{norm}.gamma"], [f"{norm}.running_var"]):
        value, got = compiled.grad(loaded.params, inputs, of=of, wrt=wrt)
        want_value, want = loaded.grad(loaded.params, inputs, of=of, wrt=wrt)
        close(value, want_value, "value")
        assert set(got) == set(wrt)
        for name in wrt:
            close(got[name], want[name], f"grad {name}")


def test_grad_reads_the_callers_parameters_as_they_are_at_each_call(loaded, compiled):
    """The compiled grad lends its kernels the caller's parameter arrays rather than copying
    them (runtime/cpu/runner.py): a change in place, a new array, or one that cannot be lent
    (float64, or not contiguous) must each show in the next call's result."""
    image = loaded.normalize(batch()["image"])
    call = dict(of="out[:, 3]", wrt=["image"])
    params = {k: v.copy() for k, v in loaded.params.items()}
    name = "conv1.conv_bn_relu.conv2d.weight"

    def check(what):
        _, got = compiled.grad(params, {"image": image}, **call)
        _, want = loaded.grad(params, {"image": image}, **call)
        close(got["image"], want["image"], what)
        return got["image"]

    before = check("as loaded")
    params[name] *= 2.0  # in place: the same array object
    doubled = check("changed in place")
    assert not np.allclose(doubled, before)
    params[name] = params[name] * 0.5  # a new array
    np.testing.assert_allclose(check("a new array"), before, rtol=1e-5, atol=1e-6)
    params[name] = np.asfortranarray(params[name] * 3.0)  # cannot be lent: copied
    check("not contiguous")
    params[name] = params[name].astype(np.float64)  # cannot be lent: copied
    check("float64")


def test_the_prologue_runs_again_only_when_what_it_reads_has_changed():
    """The prologue (small_cnn's batchnorms folded into its convolutions, then its second
    convolution's Winograd tables) runs at the first call and is skipped while the parameters
    it reads hold the same bytes (runtime/cpu/runner.py): a change in place to any of them,
    or a new array of other values, runs it again; a parameter it does not read changes
    nothing of it. Each result is the reference's."""
    model = dslc.load(MODELS / "small_cnn.net", width=16, hidden=16)
    params, compiled = model.init(0), model.compile("cpu")
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    call = dict(of="out[:, 3]", wrt=["image"])
    compiled.grad(params, {"image": x}, **call)
    bound = next(iter(next(iter(compiled._steps.values())).compiled.values()))
    assert len(bound.tables) == 2  # the forward's and the input gradient's
    runs = []
    prologue = bound.module.prologue
    bound.module.prologue = lambda *args: (runs.append(1), prologue(*args))

    def check(what, runs_now):
        runs.clear()
        _, got = compiled.grad(params, {"image": x}, **call)
        _, want = model.grad(params, {"image": x}, **call)
        close(got["image"], want["image"], what)
        assert len(runs) == runs_now, what
        return got["image"]

    try:
        before = check("the same parameters", 0)
        for name in ("stage2.conv_bn_relu.conv2d.weight", "stage2.conv_bn_relu.batchnorm.running_var",
                     "stage1.conv_bn_relu.batchnorm.gamma"):
            params[name] *= 1.5  # in place: the same array object
            assert not np.allclose(check(f"{name} changed in place", 1), before)
            check(f"{name} as it is now", 0)
            params[name] = params[name] / np.float32(1.5)  # a new array
            np.testing.assert_allclose(check(f"{name} a new array", 1), before, rtol=1e-5, atol=1e-6)
        params["fc.linear.weight"] *= 2.0  # read by the step alone
        assert not np.allclose(check("fc.linear.weight changed in place", 0), before)
    finally:
        bound.module.prologue = prologue


def test_other_arrays_lent_keep_the_entry_points_their_types_fit(monkeypatch):
    """Parameters given as other arrays at each call (a copy, the arrays `step` hands back)
    are lent to the kernels again, and the driver's calls bound again: each call typed all
    its arguments again, 600 us a call. Now a call keeps its compiled entry point when the
    new arrays are typed as the old (runtime/cpu/bound_calls.py); arrays of another layout
    (read-only) are typed afresh. Each result is the reference's."""
    from dslc.runtime.cpu import bound_calls
    model = dslc.load(MODELS / "small_cnn.net", width=16, hidden=16)
    params, compiled = model.init(0), model.compile("cpu")
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    call = dict(of="out[:, 3]", wrt=["image"])
    compiled.grad(params, {"image": x}, **call)
    typed = []
    entry = bound_calls.compiled_entry
    monkeypatch.setattr(bound_calls, "compiled_entry", lambda f, values: (typed.append(f), entry(f, values))[1])
    _, want = model.grad(params, {"image": x}, **call)
    def read_only(value):
        out = value.copy()
        out.setflags(write=False)
        return out

    # typed again only where the arrays' kind differs from the last call's
    for copy, again in ((np.copy, False), (np.copy, False), (read_only, True), (read_only, False), (np.copy, True)):
        given = {name: copy(value) for name, value in params.items()}
        typed.clear()
        _, got = compiled.grad(given, {"image": x}, **call)
        close(got["image"], want["image"], copy.__name__)
        assert (typed != []) == again, f"{copy.__name__}: typed again {typed != []}, expected {again}"


def test_grad_on_the_reference_device_agrees(loaded):
    c = loaded.compile(device="reference")
    value, got = c.grad(loaded.params, {"image": batch()["image"]}, of="out[:, 1]", wrt=["image"])
    want_value, want = loaded.grad(loaded.params, {"image": batch()["image"]}, of="out[:, 1]", wrt=["image"])
    assert value == pytest.approx(want_value, rel=1e-6)
    close(got["image"], want["image"], "image")


def test_the_front_ends_forward_and_grad_take_the_compiled_calls_arguments(loaded):
    """m.forward without the labels returns the declared outputs (it asked for 'label'), and
    takes `outputs`, one name or several; m.grad takes `rules`; each equals the reference device's."""
    from dslc.explain.gradients import GUIDED
    c, x = loaded.compile(device="reference"), batch()["image"]
    assert sorted(loaded.forward(loaded.params, {"image": x})) == ["probs"]
    assert sorted(loaded.forward(loaded.params, batch())) == ["accuracy", "loss", "probs"]
    for outputs in ("conv3", ["conv1", "out"]):
        got, want = loaded.forward(loaded.params, {"image": x}, outputs=outputs), c.forward(
            loaded.params, {"image": x}, outputs=outputs)
        assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    call = dict(of="out[:, 1]", wrt="image", rules=GUIDED)
    (value, got), (want_value, want) = loaded.grad(loaded.params, {"image": x}, **call), c.grad(
        loaded.params, {"image": x}, **call)
    plain = loaded.grad(loaded.params, {"image": x}, of="out[:, 1]", wrt="image")[1]
    assert value == pytest.approx(want_value, rel=1e-6) and np.array_equal(got["image"], want["image"])
    assert not np.allclose(got["image"], plain["image"])  # the rule was used


def test_the_most_recent_requests_are_kept(loaded, monkeypatch):
    """A rule is known by its identity: a fresh lambda at each call is a new request, compiled
    again; only the REQUESTS most recently used stay compiled, and a request dropped is
    compiled again when asked for, with the same values."""
    from dslc.runtime import compiled as module
    monkeypatch.setattr(module, "REQUESTS", 2)
    c, x = loaded.compile(device="reference"), batch()["image"]
    call = dict(of="out[:, 1]", wrt="image")
    first = c.grad(loaded.params, {"image": x}, **call)[1]["image"]
    for _ in range(3):  # a new lambda each time (guided backpropagation's rule)
        rule = lambda b, n, g: (b.mul(b.relu(g), b.step(n.inputs[0])),)  # noqa: E731
        got = c.grad(loaded.params, {"image": x}, rules={"relu": rule}, **call)[1]["image"]
        assert len(c._steps) <= 2
    np.testing.assert_array_equal(c.grad(loaded.params, {"image": x}, **call)[1]["image"], first)
    assert len(c._steps) == 2 and not np.allclose(got, first)


def test_compiled_graphs_fold_batchnorm_and_keep_every_node_asked_for(loaded, compiled):
    """On the compiled devices inference batchnorm is folded into the convolution before
    differentiating (no batchnorm, no scale pass left in the saliency graph); a node asked
    for by name is never folded away, even the convolution a batchnorm reads."""
    image = loaded.normalize(batch()["image"])
    compiled.grad(loaded.params, {"image": image}, of="out[:, 3]", wrt=["image"])
    graphs = [s.graph for key, s in compiled._steps.items() if key[0] == "grad" and not key[3]]
    assert graphs and not any(g.of_op("batchnorm") or g.of_op("batchnorm_grad_x") for g in graphs)
    names = ["conv1.conv_bn_relu.conv2d", "conv1.conv_bn_relu.batchnorm", "out"]
    got = compiled.forward(loaded.params, {"image": image}, outputs=names)
    want = loaded.compile(device="reference").forward(loaded.params, {"image": image}, outputs=names)
    for name in names:
        close(got[name], want[name], name)


def test_compiled_graphs_leave_a_linear_layers_batchnorm_unfolded():
    """A fold is recomputed at every call (the caller's parameters may have changed), and a
    linear layer's weight is large beside its output: the compiled API folds batchnorm into
    convolutions only (compiled.FOLDED), and the unfolded layer gives the reference's values."""
    model = dslc.load(MODELS / "mlp_bn.net", h1=16, h2=8)
    params = model.init(0)
    params["hidden1.hidden_layer.batchnorm.running_var"] = np.linspace(0.5, 2, 16, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((3, 784)).astype(np.float32)
    c = model.compile("cpu")
    got = c.forward(params, {"image": x}, outputs=["out"])["out"]
    (graph,) = [s.graph for s in c._steps.values()]
    assert len(graph.of_op("batchnorm")) == 2
    close(got, model.compile("reference").forward(params, {"image": x}, outputs=["out"])["out"], "out")


def test_step_is_one_reference_training_step(loaded, compiled):
    params = {k: v.copy() for k, v in loaded.params.items()}
    opt = Optimizer("sgd", lr=0.05, momentum=0.9)
    c = loaded.compile(device="cpu", optimizer=opt)
    inputs = batch(8)
    out = c.step(params, inputs)
    graph = build(loaded, "train_step", opt)
    state = {p.name: np.zeros(p.type.bind({}), np.float32) for p in graph.params if p.name.startswith("opt.")}
    want = run_outputs(graph, {**inputs, "lr": np.float32(0.05)}, {**loaded.params, **state},
                       rng=np.random.default_rng(0))
    assert {"loss", "accuracy"} == set(out)
    close(out["loss"], want["loss", "loss"], "loss")
    for o in graph.outputs_of("param"):
        close(params[o.name], want["param", o.name], f"new {o.name}")
    assert isinstance(params["opt.v.out.weight"], np.ndarray)  # the optimizer's state, the caller's copy


def test_calls_in_a_row_are_weighted_and_checked_each_afresh(loaded, compiled):
    """The masks of `of` and the check of the feeds are kept from one call to the next with
    the same request and shapes (runtime/compiled.py, runtime/executor.py): another index,
    another batch and a malformed input still get their own."""
    x = batch()["image"]
    for of, images in (("out[:, 3]", x), ("out[:, 5]", x), ("out[2, 1]", x), ("out[:, 5]", x[:4])):
        _, got = compiled.grad(loaded.params, {"image": images}, of=of, wrt=["image"])
        _, want = loaded.grad(loaded.params, {"image": images}, of=of, wrt=["image"])
        close(got["image"], want["image"], f"{of} of {len(images)} images")
    with pytest.raises(ValueError, match="input 'image'"):
        compiled.grad(loaded.params, {"image": x[:, :, :3]}, of="out[:, 5]", wrt=["image"])


def test_a_grad_asked_as_the_last_was_runs_that_step_again_on_what_it_is_given(loaded, monkeypatch):
    """A grad call spelled as the last one, with inputs of the same names, shapes and dtypes,
    runs the last call's Step again (Compiled.grad, ArenaStep.again) without deriving the
    request, the weight feeds and the arena again: it still reads the new image and the
    parameters as they are now, and names a missing parameter; another dtype, an extra
    input, a generator or another index go the whole way."""
    from dslc.runtime.executor import ArenaStep
    again = []
    monkeypatch.setattr(ArenaStep, "again", lambda self, *a, _f=ArenaStep.again: again.append(1) or _f(self, *a))
    compiled = loaded.compile(device="cpu")
    x = loaded.normalize(batch()["image"]).astype(np.float32)
    params = {k: v.copy() for k, v in loaded.params.items()}
    call = dict(of="out[:, 3]", wrt=["image"])

    def check(inputs, what, **options):
        value, got = compiled.grad(params, inputs, **{**call, **options})
        want_value, want = loaded.grad(params, inputs, **{**call, "of": options.get("of", call["of"])})
        close(value, want_value, what)
        close(got["image"], want["image"], what)
        return got["image"]

    first = check({"image": x}, "first")
    assert not again
    np.testing.assert_array_equal(check({"image": x}, "again"), first)
    assert len(again) == 1
    assert not np.allclose(check({"image": x[::-1].copy()}, "other images"), first)
    params["conv1.conv_bn_relu.conv2d.weight"] *= 2.0  # in place
    assert not np.allclose(check({"image": x}, "changed in place"), first)
    assert len(again) == 3
    for inputs, options in (({"image": x.astype(np.float64)}, {}), ({"image": x, "label": batch()["label"]}, {}),
                            ({"image": x}, {"rng": np.random.default_rng(0)}), ({"image": x}, {"of": "out[:, 4]"})):
        check(inputs, f"{sorted(inputs)}, {options}", **options)
    assert len(again) == 3
    labelled = {"image": x, "label": batch()["label"]}  # a label is read by no saliency map
    check(labelled, "with labels")
    check(labelled, "again with labels")
    assert len(again) == 4
    del params["conv1.conv_bn_relu.conv2d.weight"]
    with pytest.raises(ValueError, match="conv1.conv_bn_relu.conv2d.weight"):
        compiled.grad(params, labelled, **call)
    assert len(again) == 5


def test_a_saliency_gradient_is_the_same_on_one_thread_as_on_all():
    """With fewer images than threads the kernels split each image's convolutions by output
    channels (taps.shares: small_cnn's strided first layer and its Winograd second, forward
    and input gradient), and not on one thread: the values are the same bits either way."""
    import numba
    model = dslc.load(MODELS / "small_cnn.net", width=16, hidden=16)
    params, threads = model.init(0), numba.get_num_threads()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    for n in (1, 2):
        shared = model.compile("cpu").grad(params, {"image": x[:n]}, of="out[:, 3]", wrt=["image"])[1]
        numba.set_num_threads(1)
        try:
            alone = model.compile("cpu").grad(params, {"image": x[:n]}, of="out[:, 3]", wrt=["image"])[1]
        finally:
            numba.set_num_threads(threads)
        np.testing.assert_array_equal(alone["image"], shared["image"])


def test_mistakes_are_named(loaded, compiled):
    image = batch()["image"]
    with pytest.raises(UsageError, match="did you mean 'probs'"):
        compiled.grad(loaded.params, {"image": image}, of="prob[:, 3]", wrt=["image"])
    with pytest.raises(UsageError, match="indexes 1 axes; 'out' has 2"):
        compiled.grad(loaded.params, {"image": image}, of="out[3]", wrt=["image"])
    with pytest.raises(UsageError, match="out of range for axis 1"):
        compiled.grad(loaded.params, {"image": image}, of="out[:, 10]", wrt=["image"])
    with pytest.raises(UsageError, match="has shape"):
        compiled.grad(loaded.params, {"image": image}, of={"out": np.ones(3)}, wrt=["image"])
    with pytest.raises(UsageError, match="needs the input"):
        compiled.grad(loaded.params, {"image": image}, of="loss", wrt=["image"])
    with pytest.raises(dslc.CompileError, match="labels have no gradient"):
        compiled.grad(loaded.params, batch(), wrt=["label"])
    for lr in (-1e-3, float("nan"), float("inf"), "0.1", True):
        params = dict(loaded.params)
        with pytest.raises(UsageError, match="step: lr is a finite number >= 0"):
            compiled.step(params, batch(), lr=lr)
        assert params.keys() == loaded.params.keys()  # refused before any optimizer state is added
    for seed in ("x", -1, 1.5, True):  # NumPy's TypeError or ValueError in its own words
        with pytest.raises(UsageError, match="init: the seed is a whole number >= 0"):
            loaded.init(seed)
        with pytest.raises(UsageError, match="forward: the seed is a whole number >= 0"):
            loaded.forward(loaded.params, batch(), train=True, seed=seed)
        with pytest.raises(UsageError, match="grad: the seed is a whole number >= 0"):
            loaded.grad(loaded.params, batch(), seed=seed)
    with pytest.raises(UsageError, match="load: the path of a .net file, not int"):
        dslc.load(3)
    call = dict(of="out[:, 3]", wrt=["image"])
    for grad in (compiled.grad, loaded.grad):  # the compiled device's and the reference's
        with pytest.raises(UsageError, match="rules names 'Relu', which is no op; did you mean 'relu'"):
            grad(loaded.params, {"image": image}, rules={"Relu": lambda b, n, g: (g,)}, **call)  # was ignored
        with pytest.raises(UsageError, match="the rule for 'relu' is int, not a function"):
            grad(loaded.params, {"image": image}, rules={"relu": 3}, **call)  # was "'int' object is not callable"
        with pytest.raises(UsageError, match="train is True, False or None"):
            grad(loaded.params, {"image": image}, train="no", **call)  # was training semantics


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_parameters_are_checked_on_every_device_as_the_reference_checks_them(loaded, device):
    """A parameter missing, of another shape or of another kind of dtype is a ValueError
    naming it on every device and in forward, grad and step: the compiled ones ran on what
    their arena held (zeros, or the last call's values) or failed in NumPy's words, and
    `step` filled a missing weight with zeros as it fills the optimizer's new state."""
    c = loaded.compile(device=device)
    name = next(iter(loaded.params))
    shape = loaded.params[name].shape
    image = batch()["image"]
    calls = [lambda p: c.forward(p, {"image": image}), lambda p: c.grad(p, {"image": image}, of="out[:, 3]"),
             lambda p: c.step(dict(p), batch())]
    quoted = re.escape(repr(name))
    for call in calls:
        with pytest.raises(ValueError, match=f"param {quoted} .* is missing from params"):
            call({k: v for k, v in loaded.params.items() if k != name})
        with pytest.raises(ValueError, match=f"param {quoted}: expected shape {re.escape(str(shape))}"):
            call({**loaded.params, name: np.zeros((2, 2), np.float32)})
        with pytest.raises(ValueError, match=f"param {quoted} is .* dtype <U1"):
            call({**loaded.params, name: np.full(shape, "a")})


def test_a_refused_load_leaves_the_next_call_reading_the_arrays_it_is_given(loaded, compiled):
    """A load stopped by a parameter's error keeps the kernels' arguments in step with the
    arrays lent to them: the next call reads the new arrays, not the last good call's."""
    image = batch()["image"]
    call = dict(of="out[:, 3]", wrt="image")  # one name alone is a list of one
    compiled.grad({k: v.copy() for k, v in loaded.params.items()}, {"image": image}, **call)
    scaled = {k: v * np.asarray(1.5, v.dtype) for k, v in loaded.params.items()}
    last = list(scaled)[-1]
    with pytest.raises(ValueError, match="expected shape"):
        compiled.grad({**scaled, last: np.zeros(3, np.float32)}, {"image": image}, **call)
    _, got = compiled.grad(scaled, {"image": image}, **call)
    _, want = loaded.grad(scaled, {"image": image}, **call)
    close(got["image"], want["image"], "the call after a refused load")


def test_the_reference_device_draws_dropout_masks_when_no_generator_is_given():
    """As the compiled devices do (from the step's own generator): `step` and the loss's
    gradient on a model with dropout needed rng= on the reference device alone."""
    m = dslc.load(DIGITS_CNN, width=4)  # dropout at the model's own p
    c = m.compile(device="reference")
    assert np.isfinite(c.step(m.init(0), batch())["loss"])
    value, grads = c.grad(m.init(0), batch())
    assert np.isfinite(value) and grads


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_an_rng_that_is_no_generator_is_a_usage_error(device):
    """A seed (rng=3) or a legacy RandomState given where a Generator is taken was an
    AttributeError from inside the executor ('int' object has no attribute 'integers'), and
    only on a model with dropout, whose masks are drawn."""
    m = dslc.load(DIGITS_CNN, width=4)
    c = m.compile(device=device)
    for call in (lambda rng: c.step(m.init(0), batch(), rng=rng),
                 lambda rng: c.forward(m.init(0), batch(), train=True, rng=rng),
                 lambda rng: c.grad(m.init(0), batch(), rng=rng)):
        for rng in (3, np.random.RandomState(0)):
            with pytest.raises(UsageError, match=r"rng is a NumPy Generator \(np.random.default_rng\(seed\)\) or "
                                                 f"None, not {type(rng).__name__}"):
                call(rng)
    assert np.isfinite(c.step(m.init(0), batch(), rng=np.random.default_rng(1))["loss"])


def test_a_kernel_run_by_its_reference_reads_the_parameters_lent_to_the_kernels():
    """dropconnect at inference is linear, run by its NumPy reference on the CPU (a fallback):
    it read the arena's copy of the weights, which a lent parameter leaves empty, and gave
    x @ 0 + 0 (and so did every validation of a dropconnect model during training)."""
    m = dslc.load("t.net", text="model t {\n input x : f32[N, 20]\n output o = x |> dropconnect(12, p=0.3)\n}")
    params = m.init(seed=0)
    x = np.random.default_rng(0).standard_normal((3, 20)).astype(np.float32)
    want = m.forward(params, {"x": x})["o"]
    assert np.abs(want).max() > 1
    np.testing.assert_allclose(m.compile("cpu").forward(params, {"x": x})["o"], want, rtol=1e-5, atol=1e-6)


def test_arenas_of_many_batch_sizes_are_not_all_kept_and_a_dropped_size_runs_again(loaded):
    """A loop over batch sizes keeps executor.BOUND arenas (it kept one per size: 2.1 GB
    for small_cnn at sizes 1 to 120), and a size whose arena was dropped binds a new one
    that reads the parameters as they are, the last step's arena views included."""
    from dslc.runtime.executor import BOUND
    c = loaded.compile(device="cpu")
    params = {k: v.copy() for k, v in loaded.params.items()}
    want = {k: v.copy() for k, v in params.items()}
    oracle = loaded.compile(device="reference")
    data = digits()
    sizes = [1, 2, 3, 4, 5, 6, 1]
    for n in sizes:
        feeds = {"image": data.x[:n], "label": data.y[:n]}
        got, expected = c.step(params, feeds), oracle.step(want, feeds)
        close(got["loss"], expected["loss"], f"step at batch {n}")
        value, g = c.grad(params, {"image": data.x[:n]}, of="out[:, 3]", wrt="image")
        _, g_want = loaded.grad(want, {"image": data.x[:n]}, of="out[:, 3]", wrt=["image"])
        close(g["image"], g_want["image"], f"saliency at batch {n}")
    for step in c._steps.values():
        assert len(step.compiled) <= BOUND
    for name in want:
        close(params[name], want[name], name)


def test_calls_from_several_threads_get_their_own_results(loaded, compiled):
    """Four threads calling one compiled grad at once each get their own images' gradients
    (without the lock 797 of 800 saliency maps of small_cnn came out wrong: the calls
    shared one arena)."""
    import threading
    images = [batch(6)["image"] * s for s in (1.0, -1.0, 0.5, 2.0)]
    call = dict(of="out[:, 3]", wrt="image")
    want = [compiled.grad(loaded.params, {"image": x}, **call)[1]["image"] for x in images]
    wrong = []

    def work(i):
        for r in range(40):
            k = (i + r) % len(images)
            got = compiled.grad(loaded.params, {"image": images[k]}, **call)[1]["image"]
            if np.abs(got - want[k]).max() > 1e-5 * np.abs(want[k]).max():  # a race is far off
                wrong.append((i, r))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, f"{len(wrong)} of 160 calls got another call's gradient"


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_grad_of_a_model_without_a_loss_says_what_to_name(device):
    """grad's default is the loss; without one the message names the model's output to use
    instead (it said "has no node or output 'loss'")."""
    m = dslc.load("noloss.net", text="model m {\n input x : f32[N, 4]\n y = x |> linear(3)\n output y\n}\n")
    with pytest.raises(UsageError, match="declares no loss to differentiate; .* of=\"y\" .* of=\"y\\[:, 0\\]\""):
        m.compile(device=device).grad(m.init(0), {"x": np.ones((2, 4), np.float32)})


LABEL_LOSSES = {"cross_entropy": "cross_entropy(s, y)", "nll_loss": "nll_loss(log_softmax(s, axis=1), y)",
                "svm": "svm(s, y)"}


@pytest.mark.parametrize("loss", sorted(LABEL_LOSSES))
@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_a_label_outside_the_classes_is_refused_on_every_device(loss, device):
    """Labels -1 and C are a ValueError naming the loss on every device, in its value and
    its gradient: the reference indexed with them, reading a label of -1 from the end."""
    text = ("model m {\n input x : f32[N, 4]\n input y : i64[N]\n param W : f32[4, 3] = kaiming()\n"
            f" s = x @ W\n loss {LABEL_LOSSES[loss]}\n}}\n")
    m = dslc.load("labels.net", text=text)
    c, params = m.compile(device=device), m.init(0)
    x = np.ones((2, 4), np.float32)
    for bad in (-1, 3):
        y = np.array([0, bad])
        with pytest.raises(ValueError, match=f"{loss}: a label is outside \\[0, classes\\)"):
            c.forward(params, {"x": x, "y": y})
        with pytest.raises(ValueError, match=f"{loss}: a label is outside"):
            c.grad(params, {"x": x, "y": y})
    value, _ = c.grad(params, {"x": x, "y": np.array([0, 2])})
    assert np.isfinite(value)


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """README's Python example, as written, from the repository's root."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no Python example"
    monkeypatch.chdir(ROOT)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_a_parameter_asked_for_as_an_output_is_its_value(loaded, compiled):
    """forward(outputs=[a parameter or running statistic]) gives the caller's array: such a
    parameter is lent to the kernels (read where the caller keeps it), and its arena view,
    which the result was read from, held zeros."""
    names = [n for n in loaded.params if n.endswith(("weight", "running_var"))][:2]
    got = compiled.forward(loaded.params, {"image": batch()["image"]}, outputs=names + ["out"])
    for name in names:
        assert np.abs(loaded.params[name]).max() > 0
        np.testing.assert_array_equal(got[name], loaded.params[name])
    close(got["out"], loaded.forward(loaded.params, batch(), outputs="out")["out"], "out")


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_params_or_inputs_that_are_not_dicts_are_named(loaded, device):
    """`m.params` of a model loaded without a checkpoint is None, and `forward(params, x)`
    passes one array: each is a UsageError saying what to pass, in every call and in the
    front end's (they were TypeErrors: 'NoneType' object is not iterable, unhashable type)."""
    c, image = loaded.compile(device=device), batch()["image"]
    calls = [c.forward, lambda p, i: c.grad(p, i, of="out[:, 3]"), lambda p, i: c.step(p, i), loaded.forward,
             lambda p, i: loaded.grad(p, i, of="out[:, 3]")]
    for call in calls:
        with pytest.raises(UsageError, match="params is a dict of arrays .* not NoneType"):
            call(None, {"image": image})
        with pytest.raises(UsageError, match="inputs is a dict of arrays .* not ndarray"):
            call(dict(loaded.params), image)


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_an_input_the_model_does_not_have_is_named(loaded, device):
    """An input name the model does not declare ({"image": x, "lable": y}) was ignored in
    every call: forward left out the loss it was fed the labels for, with no word. Now each
    call, the front end's too, names it with the model's inputs and the closest of them; an
    input the model has but the request does not read (labels to a saliency map) is fine."""
    c, data = loaded.compile(device=device), batch()
    calls = [c.forward, lambda p, i: c.grad(p, i, of="out[:, 3]"), lambda p, i: c.step(dict(p), i),
             loaded.forward, lambda p, i: loaded.grad(p, i, of="out[:, 3]")]
    for call in calls:
        with pytest.raises(UsageError, match=r"inputs names 'lable', which is no input of model 'digits_cnn' "
                                             r"\(its inputs: image, label\); did you mean 'label'\?"):
            call(loaded.params, {"image": data["image"], "lable": data["label"]})
        with pytest.raises(UsageError, match=r"inputs names 0, which is no input .*label\)$"):
            call(loaded.params, {0: data["image"]})
    value, _ = c.grad(loaded.params, data, of="out[:, 3]", wrt="image")
    close(value, loaded.grad(loaded.params, {"image": data["image"]}, of="out[:, 3]", wrt="image")[0], "objective")


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_a_step_without_its_labels_names_only_them(loaded, device):
    """A step fed the images alone was a ValueError listing the feeds given, the rate and step
    count it adds itself among them ("feeds given: ['image', 'lr', 'step']")."""
    c = loaded.compile(device=device)
    with pytest.raises(UsageError, match=r"^model 'digits_cnn': this needs the input\(s\) label$"):
        c.step(dict(loaded.params), {"image": batch()["image"]})


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_a_weighting_that_is_not_numbers_is_refused(loaded, device):
    """A cotangent of None was cast to NaN (the objective and every gradient NaN), text failed
    as a shape mismatch, and complex numbers lost their imaginary part with only a warning."""
    c, image = loaded.compile(device=device), batch()["image"]
    for weight, shown in ((None, "None"), (np.full(10, "a"), "an array of dtype <U1"),
                          (np.ones(10, complex), "an array of dtype complex128")):
        with pytest.raises(UsageError, match=f"weighting of 'out' is an array of numbers, 'sum' or 'l2', not {shown}"):
            c.grad(loaded.params, {"image": image}, of={"out": weight}, wrt="image")
    value, g = c.grad(loaded.params, {"image": image}, of={"out": np.arange(10) % 2 == 0}, wrt="image")  # a mask
    want, g_want = loaded.grad(loaded.params, {"image": image}, of={"out": np.arange(10) % 2 == 0}, wrt="image")
    close(value, want, "a boolean mask's objective")
    close(g["image"], g_want["image"], "a boolean mask's gradient")


def test_fresh_parameters_stepped_after_others_start_adams_count_again(loaded):
    """digits_cnn's recipe trains with Adam: the step count fed to its bias correction was the
    compiled model's, so new parameters (whose optimizer state `step` adds as zeros) stepped
    after another run took their first step at its t, not at 1."""
    data = digits()
    feeds = {"image": data.x[:6], "label": data.y[:6]}
    c = loaded.compile(device="cpu")
    for _ in range(3):
        c.step({k: v.copy() for k, v in loaded.params.items()}, feeds)
    again = {k: v.copy() for k, v in loaded.params.items()}
    fresh = {k: v.copy() for k, v in loaded.params.items()}
    c.step(again, feeds)
    loaded.compile(device="reference").step(fresh, feeds)
    for name in fresh:
        close(again[name], fresh[name], name)


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_two_sets_of_parameters_stepped_in_turn_each_keep_their_own_count(loaded, device):
    """Adam's t was the compiled model's: two dicts stepped in turn each took the other's
    steps as their own (their second step at t = 3, their third at 5). Each now counts its
    own (params['opt.step'], as PyTorch keeps a step per parameter), and matches a dict
    stepped alone; a count that is no whole number >= 0 is a UsageError."""
    data = digits()
    batches = [{"image": data.x[i:i + 6], "label": data.y[i:i + 6]} for i in (0, 6, 12)]
    c = loaded.compile(device=device)
    a, b, alone = ({k: v.copy() for k, v in loaded.params.items()} for _ in range(3))
    for feeds in batches:
        c.step(a, feeds)
        c.step(b, feeds)
    solo = loaded.compile(device=device)
    for feeds in batches:
        solo.step(alone, feeds)
    assert int(a["opt.step"]) == int(b["opt.step"]) == int(alone["opt.step"]) == 3
    for name in loaded.params:
        close(a[name], alone[name], name)
        close(b[name], alone[name], name)
    for bad in (np.float32(2.0), np.array([1, 2]), -1, "3"):
        with pytest.raises(UsageError, match=r"params\['opt.step'\] is the count of steps taken"):
            c.step({**a, "opt.step": bad}, batches[0])


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_outputs_wrt_and_of_that_are_not_names_are_named(loaded, device):
    """outputs=3 and wrt=3 were TypeErrors ('int' object is not iterable), outputs=[3] and
    of={3: "sum"} TypeErrors from inside the name lookup (unsupported operand type(s) for +)."""
    c, image = loaded.compile(device=device), batch()["image"]
    for forward in (c.forward, loaded.forward):
        with pytest.raises(UsageError, match="forward: outputs is a node name or a list of them, not int"):
            forward(loaded.params, {"image": image}, outputs=3)
        with pytest.raises(UsageError, match=r"forward: outputs is a node name or a list of them; it holds 3 \(int\)"):
            forward(loaded.params, {"image": image}, outputs=["out", 3])
    for grad in (c.grad, loaded.grad):
        with pytest.raises(UsageError, match="grad: wrt is a node name or a list of them, not int"):
            grad(loaded.params, {"image": image}, of="out[:, 3]", wrt=3)
        with pytest.raises(UsageError, match="grad: wrt is a node name or a list of them, not bytes"):
            grad(loaded.params, {"image": image}, of="out[:, 3]", wrt=b"image")
        with pytest.raises(UsageError, match=r"grad: `of` maps node names to weightings; it holds the key 3 \(int\)"):
            grad(loaded.params, {"image": image}, of={3: "sum"}, wrt="image")


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_step_on_parameters_it_cannot_update_is_named(loaded, device):
    """step updates `params` in place: a read-only mapping (types.MappingProxyType) was a
    TypeError ('mappingproxy' object does not support item assignment) from inside the call."""
    import types
    c, params = loaded.compile(device=device), dict(loaded.params)
    with pytest.raises(UsageError, match="step: params is updated in place, so it is a dict of arrays .* "
                                         "not mappingproxy"):
        c.step(types.MappingProxyType(params), batch())
    assert params.keys() == loaded.params.keys()


def test_load_arguments_of_the_wrong_type_are_named(run):
    """model=3 was an AttributeError from inside did_you_mean, text=b"..." a TypeError from the
    lexer, checkpoint=3 or a bytes path a TypeError from pathlib."""
    for kwargs, words in ((dict(model=3), "load: model is the name of a model in the file, not int"),
                          (dict(text=b"model m() {}"), "load: text is the .net source as a str, not bytes"),
                          (dict(checkpoint=3), "load: checkpoint is the path of a run or checkpoint directory, not int"),
                          (dict(checkpoint=str(run).encode()), "load: checkpoint is the path .* not bytes")):
        with pytest.raises(UsageError, match=words):
            dslc.load(DIGITS_CNN, **kwargs)


def test_numpy_scalars_are_hyper_parameters_as_their_values():
    """hidden=np.int64(16) (from an array or a sweep) was refused: "hyper-parameter 'hidden'
    is int, got np.int64(16)". A NumPy float for an int is still refused, as a Python one is."""
    m = dslc.load(MODELS / "small_cnn.net", hidden=np.int64(16), width=np.int32(8))
    assert m.overrides == {"hidden": 16, "width": 8} and type(m.overrides["hidden"]) is int
    assert m.graph["fc.linear.weight"].type.shape == (2 * 8 * 7 * 7, 16)  # stage 2 has twice the width
    with pytest.raises(UsageError, match="hyper-parameter 'hidden' is int, got the float 1.5"):
        dslc.load(MODELS / "small_cnn.net", hidden=np.float64(1.5))


def test_an_optimizer_that_is_no_optimizer_is_named_at_compile(loaded):
    """compile(optimizer="adam") was accepted and failed at the first step as 'unknown
    optimizer settings ['a', 'd', 'm']'."""
    for optimizer, shown in (("adam", "'adam'"), ({"kind": "adam"}, "dict")):
        with pytest.raises(UsageError, match=f"compile: optimizer is an Optimizer .* not {shown}"):
            loaded.compile(device="reference", optimizer=optimizer)
