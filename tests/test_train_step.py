"""The training-step, training-mode and inference graphs, run by the NumPy reference executor.

The optimizer oracle is the update rules written out again below in plain NumPy
(CS231n notes / PyTorch docs) and applied to the gradients the backward graph
computes; everything runs in float64, so the two agree to rounding (~1e-15) and
1e-6 leaves no room for a wrong rule.
"""
from __future__ import annotations

import numpy as np
import pytest

import dslc
from dslc.diagnostics import CompileError, UsageError
from dslc.ir.builder import complete_attrs
from dslc.ir.types import TensorType
from dslc.ir.verify import check
from dslc.ops import registry
from dslc.ops.registry import ShapeError
from dslc.passes.infer import inference
from dslc.passes.train_mode import lower
from dslc.passes.train_step import Optimizer, train_step
from dslc.reference import run_outputs
from dslc.stages import STAGES, build

TINY = """
model tiny {
    input x : f64[N, 5]
    input y : i64[N]
    fc1: h = x |> linear(6)
    h = tanh(h)
    fc2: logits = h |> linear(3)
    metric accuracy(logits, y)
    loss cross_entropy(logits, y)
}
"""

# Batchnorm, dropout and dropconnect: the ops whose training mode differs.
STOCHASTIC = """
model stochastic {
    input x : f64[N, 5]
    input y : i64[N]
    fc1: h = x |> linear(6, bias=false)
    norm: h = h |> batchnorm(momentum=0.2)
    h = relu(h)
    drop: h = h |> dropout(p=0.25)
    fc2: logits = h |> dropconnect(3, p=0.5)
    OUTPUT
    loss cross_entropy(logits, y)
}
"""

OPTIMIZERS = {
    "sgd": Optimizer("sgd", lr=0.1),
    "sgd_l2": Optimizer("sgd", lr=0.1, weight_decay=0.05),
    "momentum": Optimizer("sgd", lr=0.1, momentum=0.9),
    "nesterov": Optimizer("sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adagrad": Optimizer("adagrad", lr=0.1, eps=1e-6),
    "rmsprop": Optimizer("rmsprop", lr=0.01, decay=0.9, weight_decay=0.01),
    "adam": Optimizer("adam", lr=0.01),
    "adam_l2": Optimizer("adam", lr=0.01, weight_decay=0.1),
    "adamw": Optimizer("adamw", lr=0.01, weight_decay=0.1),
}


OPTIMIZER_OPS = sorted(n for n, op in registry.all_ops().items() if op.category == "optimizer")


@pytest.mark.parametrize("name", OPTIMIZER_OPS)
def test_optimizer_ops_follow_their_shape_rules(name):
    op = registry.get(name)
    assert op.formula and op.flops and op.reference and op.samples and op.grad is None
    rng = np.random.default_rng(0)
    for sample in op.samples:
        arrays = [rng.uniform(0.5, 2.0, t.bind({})) for t in sample.inputs]
        attrs = dict(complete_attrs(op, sample.attrs))
        out_type = op.shape(list(sample.inputs), attrs)
        assert op.reference(*arrays, **attrs).shape == out_type.bind({})
        ins = list(sample.inputs)
        with pytest.raises(ShapeError, match="does not match the parameter"):
            op.shape([ins[0], TensorType("f64", (5,))] + ins[2:], attrs)
        if ins[-1].rank == 0:  # lr (and step) must be scalars
            with pytest.raises(ShapeError, match="must be scalars"):
                op.shape(ins[:-1] + [ins[0]], attrs)


def numpy_update(opt: Optimizer, w, g, state: dict, t: int, role: str):
    """One update of one parameter, written from the CS231n notes: (new w, new state)."""
    lr, wd = opt.lr, (opt.weight_decay if role == "weight" else 0.0)
    if opt.kind != "adamw":
        g = g + wd * w
    if opt.kind == "sgd" and not opt.momentum:
        return w - lr * g, {}
    if opt.kind == "sgd":
        v = opt.momentum * state["v"] - lr * g
        if opt.nesterov:
            return w - opt.momentum * state["v"] + (1 + opt.momentum) * v, {"v": v}
        return w + v, {"v": v}
    if opt.kind in ("adagrad", "rmsprop"):
        c = state["cache"] + g ** 2 if opt.kind == "adagrad" else opt.decay * state["cache"] + (1 - opt.decay) * g ** 2
        return w - lr * g / (np.sqrt(c) + opt.eps), {"cache": c}
    m = opt.beta1 * state["m"] + (1 - opt.beta1) * g
    v = opt.beta2 * state["v"] + (1 - opt.beta2) * g ** 2
    mhat, vhat = m / (1 - opt.beta1 ** t), v / (1 - opt.beta2 ** t)
    new = w - lr * mhat / (np.sqrt(vhat) + opt.eps)
    return (new - lr * wd * w if opt.kind == "adamw" else new), {"m": m, "v": v}


def batch(n=8, seed=1):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 5)), "y": rng.integers(0, 3, n)}


def optimizer_state(graph, seed=2):
    """Non-zero optimizer state, so every term of every rule matters (caches positive)."""
    rng = np.random.default_rng(seed)
    return {p.name: (rng.uniform(0.1, 1.0, p.type.bind({})) if p.name.startswith(("opt.v.", "opt.cache."))
                     else 0.1 * rng.standard_normal(p.type.bind({})))
            for p in graph.params if p.name.startswith("opt.")}


def feeds_for(graph, data, opt: Optimizer, t: int):
    names = {n.name for n in graph.inputs}
    return {**data, "lr": opt.lr, **({"step": float(t)} if "step" in names else {})}


def gradients(model, params, data):
    out = run_outputs(build(model, "backward"), data, params)
    return out[("loss", "loss")], {name: v for (kind, name), v in out.items() if kind == "grad"}


@pytest.fixture
def tiny(net):
    return dslc.load(net(TINY))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_one_step_matches_numpy_rules(tiny, name):
    opt, data = OPTIMIZERS[name], batch()
    step = train_step(tiny.graph, opt)
    params = tiny.init(seed=0)
    state = optimizer_state(step)
    out = run_outputs(step, feeds_for(step, data, opt, 3), {**params, **state})
    loss, grads = gradients(tiny, params, data)
    assert out[("loss", "loss")] == pytest.approx(loss, rel=1e-12)
    assert set(grads) == {p.name for p in tiny.graph.params}
    for name, g in grads.items():
        slots = {s: state[f"opt.{s}.{name}"] for s in opt.slots}
        want_w, want_state = numpy_update(opt, params[name], g, slots, 3, tiny.graph[name].attr("role"))
        np.testing.assert_allclose(out[("param", name)], want_w, rtol=1e-6, atol=1e-12, err_msg=name)
        assert not np.allclose(out[("param", name)], params[name]), f"{name} did not move"
        for s, value in want_state.items():
            np.testing.assert_allclose(out[("state", f"opt.{s}.{name}")], value, rtol=1e-6, atol=1e-12)


def test_step_graph_interface(tiny):
    step = train_step(tiny.graph, Optimizer("adam"))
    assert step.stage == "train_step"
    assert {n.name for n in step.inputs} == {"x", "y", "lr", "step"}
    assert step["lr"].type.show() == step["step"].type.show() == "f64[]"
    state = [p for p in step.params if p.name.startswith("opt.")]
    assert {p.name for p in state} == {f"opt.{s}.{w}" for s in "mv" for w in ("fc1.weight", "fc1.bias",
                                                                            "fc2.weight", "fc2.bias")}
    assert all(p.attr("role") == "state" and not p.attr("trainable") for p in state)
    assert {o.kind for o in step.outputs} == {"loss", "metric", "param", "state"}
    # Plain SGD keeps no state and needs no step count.
    sgd = train_step(tiny.graph, {"kind": "sgd", "lr": 0.5})
    assert {n.name for n in sgd.inputs} == {"x", "y", "lr"} and not sgd.outputs_of("state")


def test_two_adam_steps_use_the_step_input(tiny):
    opt, data = Optimizer("adam", lr=0.05), batch()
    step = train_step(tiny.graph, opt)
    params = tiny.init(seed=0)
    values = {**params, **{p.name: np.zeros(p.type.bind({})) for p in step.params if p.name.startswith("opt.")}}
    want, moments = dict(params), {name: {"m": 0.0, "v": 0.0} for name in params}
    for t in (1, 2):
        before = dict(values)
        out = run_outputs(step, feeds_for(step, data, opt, t), values)
        _, grads = gradients(tiny, want, data)
        for name, g in grads.items():
            want[name], moments[name] = numpy_update(opt, want[name], g, moments[name], t, "bias")
        values.update({name: v for (kind, name), v in out.items() if kind in ("param", "state")})
        for name in grads:
            np.testing.assert_allclose(values[name], want[name], rtol=1e-6, atol=1e-12)
    # Bias correction reads the step input: the second update computed with t = 1 differs.
    stale = run_outputs(step, feeds_for(step, data, opt, 1), before)[("param", "fc1.weight")]
    assert np.abs(stale - values["fc1.weight"]).max() > 1e-3


def test_frozen_parameters_get_no_gradient_nodes(tiny):
    frozen = {"fc1.weight", "fc1.bias"}
    step = train_step(tiny.graph, Optimizer("sgd", lr=0.1, momentum=0.9), frozen=frozen)
    assert not any(o.name in frozen for o in step.outputs)
    assert not any(p.name.endswith(tuple(frozen)) for p in step.params if p.name.startswith("opt."))
    assert not any(n.name.startswith(("opt.fc1", "fc1.weight.", "fc1.bias.")) for n in step)
    # The gradient of a linear weight is matmul(input, g, transpose_a): only fc2 has one,
    # and nothing flows back past fc1's input side (tanh's derivative is not needed).
    weight_grads = [n for n in step.of_op("matmul") if n.attr("transpose_a")]
    assert [n.inputs[0] for n in weight_grads] == ["tanh"]
    assert not step.of_op("tanh_deriv")
    params = tiny.init(seed=0)
    out = run_outputs(step, feeds_for(step, batch(), Optimizer(lr=0.1), 1),
                      {**params, **optimizer_state(step)})
    assert {name for kind, name in out if kind == "param"} == {"fc2.weight", "fc2.bias"}


def test_weight_decay_spares_biases(tiny):
    params, data = tiny.init(seed=0), batch()
    plain = run_outputs(train_step(tiny.graph, Optimizer(lr=0.1)), {**data, "lr": 0.1}, params)
    decayed = run_outputs(train_step(tiny.graph, Optimizer(lr=0.1, weight_decay=0.5)), {**data, "lr": 0.1}, params)
    np.testing.assert_array_equal(plain[("param", "fc1.bias")], decayed[("param", "fc1.bias")])
    np.testing.assert_allclose(decayed[("param", "fc1.weight")],
                               plain[("param", "fc1.weight")] - 0.1 * 0.5 * params["fc1.weight"], rtol=1e-12)


ROLES = """
model m {
    input x : f64[N, 4]
    input y : i64[N]
    param W : f64[4, 3] = kaiming()
    param b : f64[2, 3] = normal() as bias
    param s : f64[3] = ones() as weight
    param c : f64[3] = ones() as state
    logits = x @ W + sum(b, axis=0) * s + c
    loss cross_entropy(logits, y) + 0.1 * l2(weights)
}
"""


def _step(model, opt: Optimizer):
    """One training step of `model` on a fixed batch, from zero optimizer state."""
    graph = train_step(model.graph, opt)
    params = model.init(seed=0)
    params.update({p.name: np.zeros(p.type.bind({})) for p in graph.params if p.name.startswith("opt.")})
    data = {"x": np.ones((2, 4)), "y": np.array([0, 2]), "lr": opt.lr, "step": 1.0}
    return run_outputs(graph, data, params), params


def test_declared_roles_override_the_rank_rule(net):
    """`as ROLE` decides what is a weight (decayed, in l2(weights)) whatever the rank; state is not trained."""
    model = dslc.load(net(ROLES))
    assert {n: p.role for n, p in model.param_specs.items()} == {"W": "weight", "b": "bias", "s": "weight",
                                                                   "c": "state"}
    assert set(model.graph.of_op("l2")[0].inputs) == {"W", "s"}
    plain, params = _step(model, Optimizer("adamw", lr=0.1, weight_decay=0.0))
    decayed, _ = _step(model, Optimizer("adamw", lr=0.1, weight_decay=0.5))
    assert {name for kind, name in plain if kind == "param"} == {"W", "b", "s"}
    np.testing.assert_array_equal(plain[("param", "b")], decayed[("param", "b")])
    np.testing.assert_allclose(decayed[("param", "s")], plain[("param", "s")] - 0.1 * 0.5 * params["s"], rtol=1e-12)


def test_decay_roles_all_decays_every_trained_parameter_as_pytorch_does(net):
    model = dslc.load(net(ROLES))
    plain, params = _step(model, Optimizer("adamw", lr=0.1, weight_decay=0.0))
    every, _ = _step(model, Optimizer("adamw", lr=0.1, weight_decay=0.5, decay_roles=("all",)))
    for name in ("W", "b", "s"):
        np.testing.assert_allclose(every[("param", name)], plain[("param", name)] - 0.1 * 0.5 * params[name],
                                   rtol=1e-12)
    with pytest.raises(ValueError, match="unknown roles"):
        Optimizer("adamw", decay_roles=("biases",))


def test_decay_roles_in_a_recipe(net):
    recipe = "\ntrain m {\n    data = digits()\n    optimizer = adamw(lr=0.01, weight_decay=0.1, decay_roles=all)\n}\n"
    step = build(dslc.load(net(ROLES + recipe)), "train_step")
    assert {n.name: n.attr("weight_decay") for n in step.of_op("adam_step")} == {"W.new": 0.1, "b.new": 0.1,
                                                                                  "s.new": 0.1}
    with pytest.raises(CompileError, match="decay_roles"):
        dslc.load(net(ROLES + recipe.replace("decay_roles=all", "decay_roles=[weight, biass]")))


def stochastic_model(net, output: str = "output probs = softmax(logits)"):
    return dslc.load(net(STOCHASTIC.replace("OUTPUT", output)))


def test_batchnorm_running_statistics_update(net):
    model = stochastic_model(net)
    step = train_step(model.graph, Optimizer(lr=0.1))
    params, data = model.init(seed=0), batch(n=10)
    params["norm.running_mean"] = np.linspace(-1, 1, 6)
    params["norm.running_var"] = np.linspace(0.5, 2, 6)
    out = run_outputs(step, {**data, "lr": 0.1}, params, rng=np.random.default_rng(0))
    a = data["x"] @ params["fc1.weight"]
    np.testing.assert_allclose(out[("state", "norm.running_mean")],
                               0.8 * params["norm.running_mean"] + 0.2 * a.mean(axis=0), rtol=1e-12)
    # PyTorch's convention: the running variance takes the unbiased batch variance.
    np.testing.assert_allclose(out[("state", "norm.running_var")],
                               0.8 * params["norm.running_var"] + 0.2 * a.var(axis=0, ddof=1), rtol=1e-12)
    assert ("param", "norm.running_mean") not in out and ("param", "norm.gamma") in out


def test_train_mode_lowering(net):
    model = stochastic_model(net)
    train = lower(model.graph)
    assert train.stage == "train" and model.graph.stage == "typed"
    masks = {n.name: n for n in train.of_op("random")}
    assert set(masks) == {"drop.mask", "fc2.mask"}
    assert masks["drop.mask"].attr("p") == pytest.approx(0.75) and masks["fc2.mask"].type.show() == "f64[6, 3]"
    assert not train.of_op("dropout", "dropconnect")
    assert [o.name for o in train.outputs_of("state")] == ["norm.running_mean", "norm.running_var"]
    # Every later use reads the replacement: the batchnorm node now takes batch statistics.
    assert train["norm"].inputs[3:] != model.graph["norm"].inputs[3:]


def test_inference_graph_equals_forward_in_eval_mode(net):
    model = stochastic_model(net)
    infer = inference(model.graph)
    assert infer.stage == "infer"
    assert not infer.of_op("dropout", "dropconnect", "stochastic_depth", "random", "cross_entropy")
    assert {n.name for n in infer.inputs} == {"x"} and [o.name for o in infer.outputs] == ["probs"]
    assert infer["fc2"].op == "linear"
    params = model.init(seed=0)
    params["norm.running_mean"] = np.linspace(-1, 1, 6)
    params["norm.running_var"] = np.linspace(0.5, 2, 6)
    data = batch()
    got = run_outputs(infer, {"x": data["x"]}, params)[("output", "probs")]
    np.testing.assert_allclose(got, model.forward(params, data, train=False)["probs"], rtol=1e-12)


def test_inference_without_outputs_keeps_the_logits(net):
    model = stochastic_model(net, output="")
    infer = inference(model.graph)
    assert [(o.name, o.value) for o in infer.outputs] == [("logits", "fc2")]
    params, x = model.init(seed=0), batch()["x"]
    h = np.maximum((x @ params["fc1.weight"] - params["norm.running_mean"])
                   / np.sqrt(params["norm.running_var"] + 1e-5) * params["norm.gamma"] + params["norm.beta"], 0)
    np.testing.assert_allclose(run_outputs(infer, {"x": x}, params)[("output", "logits")],
                               h @ params["fc2.weight"] + params["fc2.bias"], rtol=1e-12)


def test_stages(tiny, net):
    graphs = {s: build(tiny, s) for s in STAGES}
    for model in (tiny, stochastic_model(net)):
        for stage in STAGES:
            check(build(model, stage, Optimizer("sgd", momentum=0.9, weight_decay=0.1)), stage)
    assert {s: g.stage for s, g in graphs.items()} == {s: s for s in STAGES}
    assert graphs["typed"] is tiny.graph
    assert {o.name for o in graphs["backward"].outputs_of("grad")} == {p.name for p in tiny.graph.params}
    assert {n.name for n in graphs["train_step"].inputs} == {"x", "y", "lr"}  # default: plain SGD
    with pytest.raises(UsageError, match="did you mean 'train_step'"):
        build(tiny, "train-step")


def test_train_step_stage_follows_the_recipe(net):
    recipe = '\ntrain tiny {\n    data = digits()\n    optimizer = adamw(lr=0.01, weight_decay=0.1)\n    freeze = ["fc1"]\n}\n'
    model = dslc.load(net(TINY + recipe))
    step = build(model, "train_step")
    assert {o.name for o in step.outputs_of("param")} == {"fc2.weight", "fc2.bias"}
    assert {n.name: n.attr("weight_decay") for n in step.of_op("adam_step")} == {"fc2.weight.new": 0.1,
                                                                               "fc2.bias.new": 0.0}
    # An explicit optimizer wins over the recipe, and then nothing is frozen.
    assert len(build(model, "train_step", Optimizer()).outputs_of("param")) == 4


def test_errors_are_located(net):
    model = dslc.load(net("model noloss {\n  input x : f32[N, 3]\n  output y = relu(x)\n}\n"))
    for stage in ("backward", "train_step"):
        with pytest.raises(CompileError) as err:
            build(model, stage)
        d = err.value.diagnostics[0]
        assert d.code == "E0401" and (d.span.line, d.span.col) == (1, 7)
    assert build(model, "infer").outputs[0].name == "y"
    # The front end rejects a model with neither; a graph stripped of its outputs shows the pass's check.
    with pytest.raises(CompileError, match="no output to infer") as err:
        inference(model.graph.replace(outputs=()))
    assert err.value.diagnostics[0].code == "E0402"


def test_a_model_with_nothing_to_train_is_refused(tiny, net):
    """A step that updates nothing has no `lr` input: the trainer and the API's step read it
    (a KeyError traceback), so it is an error that says why there is nothing to train."""
    state = dslc.load(net("model m {\n    input x : f64[N, 4]\n    input y : i64[N]\n"
                          "    param W : f64[4, 3] = kaiming() as state\n"
                          "    loss cross_entropy(x @ W, y)\n}\n"))
    with pytest.raises(CompileError, match="nothing to train: every parameter is declared `as state`") as err:
        train_step(state.graph, Optimizer())
    assert err.value.diagnostics[0].code == "E0408"
    every = {p.name for p in tiny.graph.params}
    with pytest.raises(CompileError, match="nothing to train: every trainable parameter is frozen"):
        train_step(tiny.graph, Optimizer(), frozen=every)


def test_bad_requests(tiny, net):
    with pytest.raises(CompileError, match="cannot freeze 'fc1.wieght'") as err:
        train_step(tiny.graph, Optimizer(), frozen={"fc1.wieght"})
    assert err.value.diagnostics[0].hint == "did you mean 'fc1.weight'?"
    clash = dslc.load(net(TINY.replace("input y : i64[N]", "input y : i64[N]\n    input lr : f64[]")))
    with pytest.raises(CompileError, match="'lr' is a name the training step gives its own values"):
        train_step(clash.graph, Optimizer())
    with pytest.raises(ValueError, match="nesterov needs sgd with momentum"):
        Optimizer("sgd", nesterov=True)
    with pytest.raises(ValueError, match="unknown optimizer 'adamax'"):
        Optimizer.of({"kind": "adamax"})
    with pytest.raises(ValueError, match="unknown optimizer settings"):
        Optimizer.of({"kind": "adam", "betas": 0.9})
