"""dslc against PyTorch: loss, every gradient and one Adam step, with identical weights and data.

The dslc side is the backward and train_step graphs of the shipped models run by the
NumPy reference executor in float32; the PyTorch side is the same network written
with torch.nn.functional, trained by torch.optim.Adam. Dropout masks are drawn once
and given to both (the executor takes them by the random node's name).

Tolerance: 1e-5 relative to the largest entry of each tensor (max-norm). Both sides
compute in float32 (unit roundoff 6e-8) but sum in different orders (BLAS vs NumPy,
im2col vs PyTorch's convolution); over the <= 3136-term sums here that moves a
result by ~1e-6 of the tensor's scale. A wrong rule (a missing term, a factor of N,
no bias correction) is off by 1e-2 or more.
"""
from __future__ import annotations


import numpy as np
import pytest

import dslc
from dslc.passes.train_step import Optimizer
from dslc.reference import run_outputs
from dslc.stages import build
from helpers import MODELS

torch = pytest.importorskip("torch")
F = torch.nn.functional
# torch.optim imports torch._dynamo on first use, ~5 s on a busy machine; the dslc side takes ~1 s.
pytestmark = pytest.mark.slow

RTOL = 1e-5
ADAM = Optimizer("adam", lr=1e-3)


def assert_close(got, want, what: str) -> None:
    """max |got - want| <= RTOL * max |want|, per tensor."""
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / scale
    assert err <= RTOL, f"{what}: max-norm relative error {err:.2e} > {RTOL:.0e}"


def batchnorm(x, p, layer):
    """Training-mode batchnorm; updates the running statistics in p (as dslc's state outputs)."""
    return F.batch_norm(x, p[f"{layer}.running_mean"], p[f"{layer}.running_var"], p[f"{layer}.gamma"],
                        p[f"{layer}.beta"], training=True, momentum=0.1, eps=1e-5)


def mlp_bn_torch(p, data, masks):
    x = data["image"]
    for layer in ("hidden1.hidden_layer", "hidden2.hidden_layer"):
        x = F.relu(batchnorm(x @ p[f"{layer}.linear.weight"], p, f"{layer}.batchnorm"))
        x = x * masks[f"{layer}.dropout.mask"]
    return F.cross_entropy(x @ p["out.weight"] + p["out.bias"], data["label"])


def small_cnn_torch(p, data, masks):
    x = data["image"]
    for stage in ("stage1.conv_bn_relu", "stage2.conv_bn_relu"):
        x = F.conv2d(x, p[f"{stage}.conv2d.weight"], padding=1)
        x = F.max_pool2d(F.relu(batchnorm(x, p, f"{stage}.batchnorm")), 2)
    x = F.relu(x.flatten(1) @ p["fc.linear.weight"] + p["fc.linear.bias"])
    return F.cross_entropy(x @ p["out.weight"] + p["out.bias"], data["label"])


def compare(model, data, torch_loss):
    """Loss, gradients, new parameters, Adam moments and running statistics, dslc vs torch."""
    params = model.init(seed=0)
    step = build(model, "train_step", ADAM)
    rng = np.random.default_rng(7)
    sizes = {"N": len(data["label"])}
    masks = {n.name: ((rng.random(n.type.bind(sizes)) < n.attr("p")) * n.attr("scale")).astype(np.float32)
             for n in step.of_op("random")}
    state = {p.name: np.zeros(p.type.bind({}), np.float32) for p in step.params if p.name.startswith("opt.")}
    back = run_outputs(build(model, "backward"), data, params, randoms=masks)
    out = run_outputs(step, {**data, "lr": ADAM.lr, "step": 1.0}, {**params, **state}, randoms=masks)

    trained = [p.name for p in model.graph.params if p.attr("trainable")]
    tp = {k: torch.tensor(v, requires_grad=k in trained) for k, v in params.items()}
    loss = torch_loss(tp, {k: torch.tensor(v) for k, v in data.items()},
                      {k: torch.tensor(v) for k, v in masks.items()})
    loss.backward()
    assert_close(back[("loss", "loss")], loss, "loss")
    assert_close(out[("loss", "loss")], loss, "loss (train step)")
    for name in trained:
        assert_close(back[("grad", name)], tp[name].grad, f"grad {name}")
        # The step is compared on dslc's gradients (just checked): near g = 0 Adam's first
        # update lr g / (|g| + eps) has slope lr / eps = 1e5, which would turn float32
        # rounding in torch's gradients into differences far above RTOL.
        tp[name].grad = torch.tensor(back[("grad", name)])
    adam = torch.optim.Adam([tp[k] for k in trained], lr=ADAM.lr, betas=(ADAM.beta1, ADAM.beta2), eps=ADAM.eps)
    adam.step()
    for name in trained:
        assert_close(out[("param", name)], tp[name], f"Adam step {name}")
        moments = adam.state[tp[name]]
        assert_close(out[("state", f"opt.m.{name}")], moments["exp_avg"], f"m {name}")
        assert_close(out[("state", f"opt.v.{name}")], moments["exp_avg_sq"], f"v {name}")
    running = [o.name for o in step.outputs_of("state") if not o.name.startswith("opt.")]
    assert len(running) == 4
    for name in running:
        assert_close(out[("state", name)], tp[name], name)


def digits(shape, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal(shape).astype(np.float32), "label": rng.integers(0, 10, shape[0])}


def test_mlp_bn_matches_torch():
    compare(dslc.load(MODELS / "mlp_bn.net"), digits((16, 784)), mlp_bn_torch)


def test_small_cnn_matches_torch():
    compare(dslc.load(MODELS / "small_cnn.net"), digits((4, 1, 28, 28)), small_cnn_torch)


def test_adamw_decaying_every_role_is_torch_adamw(net):
    """decay_roles=all is torch.optim.AdamW over model.parameters(): biases decayed too.
    (The default, decay_roles=weight, decays only weights, as the lectures' l2(weights).)"""
    model = dslc.load(net("""
model m {
    input image : f32[N, 6]
    input label : i64[N]
    fc1: h = image |> linear(5) |> relu
    fc2: logits = h |> linear(3)
    loss cross_entropy(logits, label)
}"""))
    opt = Optimizer("adamw", lr=0.01, weight_decay=0.1, decay_roles=("all",))
    params = model.init(seed=0)
    data = digits((8, 6))
    data["label"] = data["label"] % 3
    step = build(model, "train_step", opt)
    state = {p.name: np.zeros(p.type.bind({}), np.float32) for p in step.params if p.name.startswith("opt.")}
    out = run_outputs(step, {**data, "lr": opt.lr, "step": 1.0}, {**params, **state})
    grads = run_outputs(build(model, "backward"), data, params)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    for k in tp:
        tp[k].grad = torch.tensor(grads[("grad", k)])
    torch.optim.AdamW(list(tp.values()), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                      weight_decay=opt.weight_decay).step()
    assert sum(name.endswith("bias") for name in tp) == 2
    for name in tp:
        assert_close(out[("param", name)], tp[name], f"AdamW step {name}")
