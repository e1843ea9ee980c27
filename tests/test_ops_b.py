"""Conv, pooling, normalisation and dropout ops: shape rules, references, gradients, train hooks.

Oracles: torch.nn.functional (CPU) for the references, within 1e-5 (float32) and
1e-10 (float64) relative to the output's scale; float64 central differences for
every gradient rule (normwise relative error < 1e-6); torch's batch_norm(training=True)
for the batchnorm lowering (gradients through the batch statistics, running stats).
Graphs are evaluated by the NumPy reference executor (dslc.reference). PyTorch is an
optional oracle: without it only the comparisons with it are skipped.
"""
from __future__ import annotations

import numpy as np
import pytest

import dslc
from dslc import reference
from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Output
from dslc.ir.types import Sym, TensorType
from dslc.ops import registry
from dslc.ops.registry import ShapeError
from dslc.passes.autodiff import GradBuilder, differentiate

try:
    import torch
    F = torch.nn.functional
except ImportError:  # the optional oracle: only the tests that compare with it need it
    torch = F = None
needs_torch = pytest.mark.skipif(torch is None, reason="compares with PyTorch, which is not installed")
N = Sym.of("N")
TOL = {"float32": 1e-5, "float64": 1e-10}


# ---- helpers ----------------------------------------------------------------------------

def run(graph, feeds, rng=None):
    """The value of every node of `graph` by the reference executor (no parameters here)."""
    return reference.evaluate(graph, feeds, {}, rng)


def typ(shape, dtype="f64"):
    return TensorType(dtype, tuple(shape))


def build(op, shapes, attrs=None, dtype="f64"):
    """GraphBuilder with inputs a0, a1, ... of `shapes` and one `op` node; returns (builder, node name)."""
    b = GraphBuilder()
    names = [b.source(f"a{k}", "input", typ(s, dtype)) for k, s in enumerate(shapes)]
    return b, b.add(op, names, attrs or {}, name="y")


def shape_of(op, shapes, attrs=None, dtype="f32"):
    b, y = build(op, shapes, attrs, dtype)
    return b.type_of(y).shape


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-8))


def close(ours, theirs):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert rel_err(ours, theirs) < TOL[str(ours.dtype)]


def gradcheck(op, arrays, attrs=None, h=1e-6):
    """Autodiff of loss = sum(op(arrays) * r) against float64 central differences, for every input."""
    b, y = build(op, [a.shape for a in arrays], attrs)
    rng = np.random.default_rng(7)
    r = rng.standard_normal(b.type_of(y).bind({}))
    rname = b.source("r", "input", typ(r.shape))
    loss = b.add("sum", [b.add("mul", [y, rname])])
    graph = b.graph("t", [Output("loss", "loss", loss)], "typed")
    wrt = [f"a{k}" for k in range(len(arrays))]
    feeds = dict(zip(wrt, arrays), r=r)
    env = run(differentiate(graph, wrt), feeds)
    grads = {o.name: env[o.value] for o in differentiate(graph, wrt).outputs_of("grad")}
    for name, a in zip(wrt, arrays):
        num = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            for sign in (1, -1):
                p = a.copy()
                p[i] += sign * h
                num[i] += sign * run(graph, {**feeds, name: p})[loss] / (2 * h)
        assert grads[name].shape == a.shape
        assert rel_err(grads[name], num) < 1e-6, (op, name)


def randn(*shape, seed=0, dtype="float64"):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def distinct(*shape, seed=0):
    """Values at least 0.1 apart: no ties, so max-pooling is differentiable at them."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * 0.1 - n * 0.05).reshape(shape)


# ---- shape rules ------------------------------------------------------------------------

@pytest.mark.parametrize("attrs, hw, out", [
    ({"out": 8}, (32, 32), (30, 30)),
    ({"out": 8, "pad": "same"}, (32, 32), (32, 32)),
    ({"out": 8, "pad": "same", "stride": 2}, (7, 8), (4, 4)),
    ({"out": 8, "pad": "valid", "kernel": 5}, (9, 9), (5, 5)),
    ({"out": 8, "kernel": (3, 1), "pad": (1, 0)}, (6, 5), (6, 5)),
    ({"out": 8, "dilation": 2}, (9, 9), (5, 5)),
    ({"out": 8, "dilation": 2, "pad": "same", "stride": 3}, (10, 11), (4, 4)),
    ({"out": 8, "stride": (2, 3), "kernel": 2}, (7, 7), (3, 2)),
])
def test_conv2d_shapes(attrs, hw, out):
    assert shape_of("conv2d", [(N, 4) + hw], attrs) == (N, 8) + out


@pytest.mark.parametrize("x, attrs, message", [
    ((N, 4, 3, 3), {"out": 8, "kernel": 5}, "conv2d: the window (5 wide after dilation) is larger than the "
                                           "padded input (3 + 0)"),
    ((N, 4, 5, 5), {"out": 8, "kernel": 3, "dilation": 3}, "conv2d: the window (7 wide after dilation)"),
    ((N, 4, 5, 5), {"out": 8, "groups": 3}, "conv2d: groups=3 must divide both input channels (4) and out (8)"),
    ((N, 4, 5, 5), {"out": 6, "groups": 4}, "conv2d: groups=4 must divide both input channels (4) and out (6)"),
    ((N, 4, 5, 5), {"out": 8, "stride": 0}, "conv2d: stride must be positive, got 0"),
    ((N, 4, 5, 5), {"out": 8, "dilation": (1, 0)}, "conv2d: dilation must be positive"),
    ((N, 4, 5, 5), {"out": 8, "pad": (-1, 0)}, "conv2d: pad must be non-negative"),
    ((N, 4, 5, 5), {"out": 0}, "conv2d: out must be positive, got 0"),
    ((N, 20), {"out": 8}, "conv2d expects rank 4, got f32[N, 20]"),
    ((N, 4, N, 5), {"out": 8}, "conv2d spatial size must be a fixed size"),
])
def test_conv2d_shape_errors(x, attrs, message):
    with pytest.raises(ShapeError) as err:
        shape_of("conv2d", [x], attrs)
    assert message in err.value.message


def test_conv2d_weight_must_fit():
    with pytest.raises(ShapeError, match=r"conv2d: weight f32\[8, 4, 3, 3\] does not fit"):
        shape_of("conv2d", [(2, 4, 5, 5), (8, 4, 3, 3)], {"out": 8, "groups": 2})


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@pytest.mark.parametrize("attrs, hw, out", [
    ({}, (28, 28), (14, 14)),
    ({}, (7, 7), (3, 3)),
    ({"kernel": 3, "stride": 2, "pad": 1}, (7, 8), (4, 4)),
    ({"kernel": 3, "stride": 1, "pad": "same"}, (5, 6), (5, 6)),
    ({"kernel": 2, "pad": "same"}, (5, 5), (3, 3)),
    ({"kernel": (2, 3), "stride": (1, 3)}, (4, 9), (3, 3)),
])
def test_pool_shapes(op, attrs, hw, out):
    assert shape_of(op, [(N, 3) + hw], attrs) == (N, 3) + out


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@pytest.mark.parametrize("x, attrs, message", [
    ((N, 3, 4, 4), {"kernel": 2, "pad": 2}, "pad 2 is more than half the kernel 2"),
    ((N, 3, 1, 4), {"kernel": 2}, "the window (2 wide after dilation) is larger than the padded input (1 + 0)"),
    ((N, 3, 4, 4), {"kernel": 0}, "kernel must be positive"),
    ((N, 3, 4, 4), {"stride": (1, 0)}, "stride must be positive"),
    ((N, 12), {}, "expects rank 4, got f32[N, 12]"),
])
def test_pool_shape_errors(op, x, attrs, message):
    with pytest.raises(ShapeError) as err:
        shape_of(op, [x], attrs)
    assert err.value.message.startswith(op) and message in err.value.message


def test_global_avgpool_gives_n_c():
    assert shape_of("global_avgpool", [(N, 64, 7, 7)]) == (N, 64)
    with pytest.raises(ShapeError, match=r"global_avgpool expects rank 3 or 4 or 5, got f32\[N, 64\]"):
        shape_of("global_avgpool", [(N, 64)])


@pytest.mark.parametrize("op, x, attrs, message", [
    ("groupnorm", (N, 6, 4, 4), {"groups": 4}, "groupnorm: groups=4 must divide the 6 channels"),
    ("groupnorm", (N, 6, 4, 4), {"groups": 0}, "groupnorm: groups=0 must divide the 6 channels"),
    ("groupnorm", (N, 64, 4, 4), {"eps": 0.0}, "groupnorm: eps must be positive, got 0.0"),
    ("batchnorm", (N, 6, 4, 4), {"momentum": 1.5}, "batchnorm: momentum must be in [0, 1], got 1.5"),
    ("batchnorm", (N, 6), {"eps": -1.0}, "batchnorm: eps must be positive"),
    ("batchnorm", (N,), {}, "batchnorm expects rank 2 or 3 or 4 or 5, got f32[N]"),
    ("layernorm", (N, N), {}, "layernorm channels must be a fixed size"),
    ("instancenorm", (N, 6), {}, "instancenorm expects rank 3 or 4 or 5, got f32[N, 6]"),
    ("var", (N, 6), {"axis": (0, 0)}, "var: axis [0, 0] repeats an axis"),
    ("dropout", (N, 6), {"p": 1.0}, "dropout: p is the drop probability and must be in [0, 1), got 1.0"),
    ("dropout", (N, 6), {"p": -0.1}, "dropout: p is the drop probability"),
    ("stochastic_depth", (N,), {}, "stochastic_depth expects rank 2 or 3 or 4 or 5, got f32[N]"),
    ("stochastic_depth", (N, 3), {"p": 1.0}, "stochastic_depth: p is the drop probability"),
    ("dropconnect", (N, 3, 2, 2), {"out": 4}, "dropconnect expects rank 2, got f32[N, 3, 2, 2]"),
    ("dropconnect", (N, 3), {"out": 4, "p": 1.0}, "dropconnect: p is the drop probability"),
    ("dropconnect", (N, 3), {"out": 0}, "dropconnect: out must be positive, got 0"),
])
def test_norm_and_dropout_shape_errors(op, x, attrs, message):
    with pytest.raises(ShapeError) as err:
        shape_of(op, [x], attrs)
    assert message in err.value.message


def test_per_channel_params_must_fit():
    with pytest.raises(ShapeError, match=r"batchnorm: per-channel tensor f32\[5\] does not fit 6 channels"):
        shape_of("batchnorm", [(N, 6, 2, 2), (6,), (6,), (5,), (6,)])
    with pytest.raises(ShapeError, match=r"dropconnect: weight f32\[3, 5\] does not fit \(3, 4\)"):
        shape_of("dropconnect", [(N, 3), (3, 5)], {"out": 4})


MODEL = """
model m {
    input image : f32[N, 3, 16, 16]
    input label : i64[N]
    x = image |> conv2d(8, kernel=3, pad=same, groups=1) |> batchnorm |> relu |> maxpool
    y = x |> conv2d(8, 3, pad=1, groups=2) |> groupnorm(4) |> dropout(0.1)
    x = relu(x + (y |> stochastic_depth(0.2)))
    x = x |> conv2d(16, 3, stride=2, pad=same, dilation=1) |> instancenorm |> avgpool(3, stride=1, pad=1)
    logits = x |> global_avgpool |> layernorm |> dropconnect(10, p=0.5)
    loss cross_entropy(logits, label)
}
"""


def test_model_using_every_op_checks(net):
    g = dslc.load(net(MODEL)).graph
    shapes = {n.name: n.type.shape for n in g.nodes}
    assert shapes["maxpool"] == (N, 8, 8, 8) and shapes["avgpool"] == (N, 16, 4, 4)
    assert shapes["global_avgpool"] == (N, 16) and shapes["dropconnect"] == (N, 10)
    roles = {n.name: n.attr("role") for n in g.params}
    assert roles["batchnorm.running_var"] == "state" and roles["groupnorm.gamma"] == "scale"
    assert roles["layernorm.beta"] == "shift" and roles["dropconnect.weight"] == "weight"
    assert g["conv2d_1.weight"].type.shape == (8, 4, 3, 3)


def test_bad_groups_is_a_diagnostic(net):
    path = net("model m {\n  input x : f32[N, 6, 4, 4]\n  output y = x |> groupnorm(4)\n}\n")
    with pytest.raises(dslc.CompileError) as err:
        dslc.load(path)
    assert "groups=4 must divide the 6 channels" in str(err.value)


# ---- references against torch ------------------------------------------------------------

CONV_CASES = [
    dict(out=6, kernel=3),
    dict(out=6, kernel=3, stride=2, pad=1),
    dict(out=6, kernel=(3, 2), stride=(2, 1), pad="same", dilation=(2, 1), groups=2),
    dict(out=4, kernel=2, stride=3, pad="same", dilation=2),  # asymmetric same padding
    dict(out=4, kernel=3, pad=(2, 0), groups=4, bias=False),  # depthwise
    dict(out=6, kernel=1, pad="valid"),
]


def _torch_conv(x, w, b, attrs, window):
    (pt, pb), (pl, pr) = window.pads
    xp = F.pad(torch.tensor(x), (pl, pr, pt, pb))
    return F.conv2d(xp, torch.tensor(w), None if b is None else torch.tensor(b), stride=window.stride,
                    dilation=window.dilation, groups=attrs.get("groups", 1))


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("attrs", CONV_CASES)
def test_conv2d_reference(attrs, dtype):
    from dslc.ops.conv import window
    op = registry.get("conv2d")
    full = {a.name: attrs.get(a.name, a.default) for a in op.attrs}
    x = randn(2, 4, 7, 6, dtype=dtype)
    w = randn(full["out"], 4 // full["groups"], *(np.broadcast_to(full["kernel"], 2)), seed=1, dtype=dtype)
    b = randn(full["out"], seed=2, dtype=dtype) if full["bias"] else None
    ours = op.reference(x, w, *([b] if b is not None else []), **full)
    close(ours, _torch_conv(x, w, b, full, window(full, x.shape[2:], "conv2d")))
    assert ours.shape[2:] == shape_of("conv2d", [x.shape], attrs)[2:]


def test_same_padding_is_asymmetric_bottom_right():
    from dslc.ops.conv import window
    assert window({"kernel": 2, "stride": 1, "pad": "same", "dilation": 1}, (5, 5), "conv2d").pads == ((0, 1), (0, 1))
    assert window({"kernel": 4, "stride": 2, "pad": "same", "dilation": 1}, (7, 8), "conv2d").pads == ((1, 2), (1, 1))


POOL_CASES = [dict(), dict(kernel=3, stride=2, pad=1), dict(kernel=(3, 2), stride=(1, 2), pad=(1, 0)),
              dict(kernel=3, stride=1)]


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("attrs", POOL_CASES)
def test_pool_references(attrs, dtype):
    full = {"kernel": 2, "stride": None, "pad": 0} | attrs
    k, s, p = full["kernel"], full["stride"] or full["kernel"], full["pad"]
    x = randn(2, 3, 7, 6, dtype=dtype)
    close(registry.get("maxpool").reference(x, **full), F.max_pool2d(torch.tensor(x), k, s, p))
    close(registry.get("avgpool").reference(x, **full),
          F.avg_pool2d(torch.tensor(x), k, s, p, count_include_pad=True))


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_global_avgpool_reference(dtype):
    x = randn(2, 3, 5, 4, dtype=dtype)
    close(registry.get("global_avgpool").reference(x), F.adaptive_avg_pool2d(torch.tensor(x), 1).flatten(1))


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(5, 4), (4, 3, 2, 5)])
def test_batchnorm_reference_uses_given_statistics(shape, dtype):
    x, gamma, beta = randn(*shape, dtype=dtype), randn(shape[1], seed=1, dtype=dtype), randn(shape[1], seed=2, dtype=dtype)
    mean, var = randn(shape[1], seed=3, dtype=dtype), np.abs(randn(shape[1], seed=4, dtype=dtype)) + 0.5
    ours = registry.get("batchnorm").reference(x, gamma, beta, mean, var, momentum=0.1, eps=1e-3)
    t = [torch.tensor(a) for a in (x, mean, var, gamma, beta)]
    close(ours, F.batch_norm(t[0], t[1], t[2], t[3], t[4], training=False, eps=1e-3))


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op, shape, attrs", [
    ("groupnorm", (2, 6, 3, 4), {"groups": 3}),
    ("groupnorm", (2, 6, 5), {"groups": 6}),
    ("layernorm", (3, 7), {}),
    ("layernorm", (2, 4, 3, 3), {}),
    ("instancenorm", (2, 4, 3, 5), {}),
])
def test_group_family_references(op, shape, attrs, dtype):
    x = randn(*shape, dtype=dtype) * 3 + 1
    gamma, beta = randn(shape[1], seed=1, dtype=dtype), randn(shape[1], seed=2, dtype=dtype)
    ours = registry.get(op).reference(x, gamma, beta, eps=1e-5, **attrs)
    t, tg, tb = torch.tensor(x), torch.tensor(gamma), torch.tensor(beta)
    if op == "groupnorm":
        want = F.group_norm(t, attrs["groups"], tg, tb, eps=1e-5)
    elif op == "instancenorm":
        want = F.instance_norm(t, weight=tg, bias=tb, eps=1e-5)
    elif len(shape) == 2:
        want = F.layer_norm(t, shape[1:], tg, tb, eps=1e-5)
    else:  # layernorm over C, H, W with a per-channel affine
        want = F.layer_norm(t, shape[1:], eps=1e-5) * tg.reshape(1, -1, 1, 1) + tb.reshape(1, -1, 1, 1)
    close(ours, want)


@pytest.mark.parametrize("op, attrs", [("dropout", {"p": 0.5}), ("stochastic_depth", {"p": 0.2})])
def test_dropout_inference_is_identity(op, attrs):
    x = randn(3, 2, 2, 2, dtype="float32")
    assert registry.get(op).reference(x, **attrs) is x


# ---- the registry samples of this family -------------------------------------------------

FAMILY = ["conv2d", "conv2d_grad_input", "conv2d_grad_weight", "maxpool", "maxpool_grad", "avgpool",
          "avgpool_grad", "global_avgpool", "var", "var_grad", "batchnorm", "batchnorm_grad_x",
          "batchnorm_grad_gamma", "groupnorm", "layernorm", "instancenorm", "groupnorm_grad_input",
          "groupnorm_grad_gamma", "dropout", "stochastic_depth", "dropconnect"]
SAMPLES = [(name, k, s) for name in FAMILY for k, s in enumerate(registry.get(name).samples)]


def sample_arrays(sample, seed=0):
    rng = np.random.default_rng(seed)
    draw = (lambda shape: rng.uniform(0.5, 2.0, shape)) if sample.domain == "positive" else rng.standard_normal
    return [draw(t.bind({})).astype("float64" if t.dtype == "f64" else "float32") for t in sample.inputs]


def test_every_op_of_the_family_has_samples_and_rules():
    for name in FAMILY:
        op = registry.get(name)
        assert op.samples and op.reference and op.flops and op.formula, name
        assert op.grad is not None or op.category == "derivative", name


@pytest.mark.parametrize("name, k, sample", SAMPLES, ids=[f"{n}-{k}" for n, k, _ in SAMPLES])
def test_sample_reference_matches_shape_rule(name, k, sample):
    op = registry.get(name)
    b, y = build(name, [t.shape for t in sample.inputs], sample.attrs)
    for dtype in ("float64", "float32"):  # the reference keeps the input's dtype
        out = op.reference(*(a.astype(dtype) for a in sample_arrays(sample)), **b.index[y].attr_dict)
        assert out.shape == b.type_of(y).bind({}) and out.dtype == dtype
    if op.grad is not None:
        gradcheck(name, sample_arrays(sample, seed=1), sample.attrs)


# ---- gradients: float64 central differences ------------------------------------------------

@pytest.mark.parametrize("attrs", CONV_CASES)
def test_conv2d_grad(attrs):
    full = {"kernel": 3, "groups": 1, "bias": True} | attrs
    kh, kw = np.broadcast_to(full["kernel"], 2)
    arrays = [randn(2, 4, 7, 6), randn(full["out"], 4 // full["groups"], kh, kw, seed=1)]
    gradcheck("conv2d", arrays + ([randn(full["out"], seed=2)] if full["bias"] else []), attrs)


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@pytest.mark.parametrize("attrs", POOL_CASES + [dict(kernel=2, pad="same")])
def test_pool_grad(op, attrs):
    gradcheck(op, [distinct(2, 2, 5, 5)], attrs)


def test_maxpool_ties_give_all_to_the_first_maximum():
    x = np.zeros((1, 1, 2, 2))
    dx = registry.get("maxpool_grad").reference(np.ones((1, 1, 1, 1)), x, kernel=2, stride=None, pad=0)
    np.testing.assert_array_equal(dx, [[[[1.0, 0.0], [0.0, 0.0]]]])


def test_global_avgpool_grad():
    gradcheck("global_avgpool", [randn(2, 3, 4, 5)])


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3)])
def test_batchnorm_grad_all_five_inputs(shape):
    c = shape[1]
    gradcheck("batchnorm", [randn(*shape), randn(c, seed=1), randn(c, seed=2), randn(c, seed=3),
                            np.abs(randn(c, seed=4)) + 0.5], {"eps": 1e-3})


@pytest.mark.parametrize("attrs", [{}, {"axis": (0, 2)}, {"axis": (1,), "keepdims": True, "unbiased": True}])
def test_var_grad(attrs):
    gradcheck("var", [randn(4, 3, 2)], attrs)


@pytest.mark.parametrize("op, shape, attrs", [
    ("groupnorm", (2, 4, 3, 2), {"groups": 2}),
    ("groupnorm", (3, 4), {"groups": 4}),
    ("layernorm", (3, 5), {}),
    ("layernorm", (2, 3, 2, 2), {}),
    ("instancenorm", (2, 3, 2, 3), {}),
])
def test_group_family_grads(op, shape, attrs):
    gradcheck(op, [randn(*shape), randn(shape[1], seed=1), randn(shape[1], seed=2)], attrs)


@pytest.mark.parametrize("op, arrays, attrs", [
    ("dropout", [randn(3, 4)], {}),
    ("stochastic_depth", [randn(3, 2, 2)], {}),
    ("dropconnect", [randn(3, 4), randn(4, 5, seed=1), randn(5, seed=2)], {"out": 5}),
])
def test_dropout_family_grads(op, arrays, attrs):
    gradcheck(op, arrays, attrs)


# ---- training-mode lowerings ---------------------------------------------------------------

def lower(op, x_shape, attrs, param_shapes=(), dtype="f64"):
    """A graph x -> op node, lowered by the op's train hook: (builder, value name, updates, node)."""
    b, y = build(op, [x_shape] + list(param_shapes), attrs, dtype)
    node = b.index[y]
    rebuilt = GraphBuilder([n for n in b.nodes if n.name != y])
    value, updates = registry.get(op).train(GradBuilder(rebuilt, prefix="train."), node)
    return rebuilt, value, updates, node


@needs_torch
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 3)])
def test_batchnorm_training_matches_torch(shape):
    c = shape[1]
    b, y, updates, node = lower("batchnorm", shape, {"momentum": 0.3, "eps": 1e-4}, [(c,)] * 4)
    assert b.index[y].name == node.name and b.index[y].op == "batchnorm"
    r = b.source("r", "input", typ(shape))
    loss = b.add("sum", [b.add("mul", [y, r])])
    wrt = ["a0", "a1", "a2"]
    outputs = [Output("loss", "loss", loss)] + [Output("state", s, v) for s, v in updates]
    graph = differentiate(b.graph("t", outputs, "typed"), wrt)
    arrays = [randn(*shape) * 2 + 1, randn(c, seed=1), randn(c, seed=2), randn(c, seed=3),
              np.abs(randn(c, seed=4)) + 0.5, randn(*shape, seed=5)]
    env = run(graph, dict(zip(["a0", "a1", "a2", "a3", "a4", "r"], arrays)))

    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in arrays[:3])
    rm, rv = torch.tensor(arrays[3]), torch.tensor(arrays[4])
    out = F.batch_norm(tx, rm, rv, tg, tb, training=True, momentum=0.3, eps=1e-4)
    (out * torch.tensor(arrays[5])).sum().backward()
    assert rel_err(env[y], out.detach().numpy()) < 1e-10
    for o, t in zip(graph.outputs_of("grad"), (tx, tg, tb)):
        assert rel_err(env[o.value], t.grad.numpy()) < 1e-10, o.name
    assert [s for s, _ in updates] == ["a3", "a4"]
    assert rel_err(env[updates[0][1]], rm.numpy()) < 1e-12  # torch updated them in place
    assert rel_err(env[updates[1][1]], rv.numpy()) < 1e-12


def test_batchnorm_unbiased_count_is_not_baked_in():
    # The lowering is built for symbolic N; the same graph must be right for any batch size.
    b, y, updates, _ = lower("batchnorm", (N, 2), {"momentum": 1.0}, [(2,)] * 4)
    graph = b.graph("t", [], "typed")
    for n in (2, 5):
        x = randn(n, 2)
        env = run(graph, {"a0": x, "a1": np.ones(2), "a2": np.zeros(2), "a3": np.zeros(2), "a4": np.ones(2)})
        np.testing.assert_allclose(env[updates[1][1]], x.var(axis=0, ddof=1), rtol=1e-12)


def _random_node(b):
    masks = [n for n in b.nodes if n.op == "random"]
    assert len(masks) == 1
    return masks[0]


def test_dropout_lowering_draws_a_scaled_mask():
    b, y, updates, node = lower("dropout", (N, 50), {"p": 0.25}, dtype="f32")
    mask = _random_node(b)
    assert updates == [] and y == "y" and b.index[y].op == "mul"
    assert mask.type == TensorType("f32", (N, 50)) and mask.attr("p") == 0.75 and mask.attr("scale") == 1 / 0.75
    x = randn(40, 50, dtype="float32") + 5
    out = run(b.graph("t", [], "typed"), {"a0": x}, np.random.default_rng(0))[y]
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.03


def test_dropout_p0_lowers_to_identity():
    b, y, _, _ = lower("dropout", (N, 5), {"p": 0.0})
    assert y == "a0" and not any(n.op == "random" for n in b.nodes)


def test_stochastic_depth_drops_whole_examples():
    b, y, _, _ = lower("stochastic_depth", (N, 3, 4, 4), {"p": 0.5})
    assert _random_node(b).type.shape == (N, 1, 1, 1)
    x = randn(64, 3, 4, 4) + 10
    out = run(b.graph("t", [], "typed"), {"a0": x}, np.random.default_rng(1))[y]
    dropped = (out == 0).all(axis=(1, 2, 3))
    assert 0 < dropped.sum() < 64
    np.testing.assert_allclose(out[~dropped], 2 * x[~dropped])


def test_dropconnect_masks_the_weight_not_the_input():
    b, y, _, _ = lower("dropconnect", (N, 6), {"out": 4, "p": 0.5}, [(6, 4), (4,)])
    mask = _random_node(b)
    assert mask.type.shape == (6, 4) and b.index[y].op == "linear"
    rng = np.random.default_rng(3)
    x, w, bias = randn(5, 6), randn(6, 4, seed=1), randn(4, seed=2)
    env = run(b.graph("t", [], "typed"), {"a0": x, "a1": w, "a2": bias}, rng)
    np.testing.assert_allclose(env[y], x @ (w * env[mask.name]) + bias, rtol=1e-12)
    assert set(np.unique(env[mask.name])) <= {0.0, 2.0}
