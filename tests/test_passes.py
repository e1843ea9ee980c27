"""Optimiser passes: Before/Expected structure per pass, and numeric equivalence with the reference."""
from __future__ import annotations

import pytest

import dslc
from dslc import stages
from dslc.passes.check_numeric import max_rel_difference, random_bindings
from dslc.ir.graph import Output
from dslc.ir.verify import check
from dslc.passes.cse import cse
from dslc.passes.dce import dce
from dslc.passes.pipeline import PASS_NAMES, optimize
from dslc.passes.simplify import simplify
from dslc.objective import objective_graph, parse_of
from helpers import MODELS


def ops(graph):
    return [n.op for n in graph.nodes if n.op not in ("input", "param", "const")]


def test_dce_removes_what_no_output_needs(net):
    g = dslc.load(net("""model m {
        input x : f32[N, 4]
        unused = relu(x) * 2.0
        output y = tanh(x)
    }""")).graph
    out, report = dce(g)
    assert ops(out) == ["tanh"] and report == "removed 3 dead nodes"
    check(out)


def test_cse_merges_repeats_but_never_random_masks(net):
    g = dslc.load(net("""model m {
        input x : f32[N, 4]
        output y = relu(x) + relu(x) * 2.0 + 2.0 * 0.0
    }""")).graph
    out, report = cse(g)
    assert ops(out).count("relu") == 1 and report.startswith("merged")
    train = stages._build(dslc.load(net("""model m {
        input x : f32[N, 4]
        output y = (x |> dropout(0.5)) + (x |> dropout(0.5))
    }""", "d.net")).graph, "train", None, ())
    assert len(cse(train)[0].of_op("random")) == 2


def test_simplify_identities_and_constants(net):
    g = dslc.load(net("""model m {
        input x : f32[N, 4]
        output y = (x * 1.0 + 0.0) * (2.0 * 3.0) - -(-x)
    }""")).graph
    out, _ = dce(simplify(g)[0])
    assert ops(out) == ["mul", "sub"]
    assert [n.attr("value") for n in out.of_op("const")] == [6.0]


def test_simplify_reshape_and_transpose_chains(net):
    g = dslc.load(net("""model m {
        input x : f32[N, 2, 3]
        a = reshape(reshape(x, [-1, 3, 2]), [-1, 6])
        output y = transpose(transpose(a, [1, 0]), [1, 0])
        output z = reshape(x, [-1, 2, 3])
    }""")).graph
    out, _ = dce(simplify(g)[0])
    assert ops(out) == ["reshape"]
    assert out[out.outputs[1].value].op == "input"



def test_simplify_drops_the_seed_broadcast_of_a_weighted_objective(net):
    """grad(of="y[:, 1]") seeds the objective's gradient with ones broadcast to y (expand of 1)
    times the mask: the product is the mask itself, two kernels fewer at every call. A mean's
    expand divides by the count, and stays."""
    m = dslc.load(net("""model m {
        input x : f32[N, 4]
        param w : f32[4, 3] = kaiming()
        output y = x @ w
        output z = mean(tanh(x @ w))
    }"""))
    g = objective_graph(m.graph, parse_of("y[:, 1]"), ["x"])
    out, _ = dce(simplify(g)[0])
    assert "expand" in ops(g) and "expand" not in ops(out)
    check(out)
    assert max_rel_difference(g, out, *random_bindings(g)) < 1e-6
    mean = dce(simplify(objective_graph(m.graph, parse_of("z"), ["x"]))[0])[0]
    assert [n.attr("mean") for n in mean.of_op("expand")] == [True]

SMALL = sorted(p.name for p in MODELS.glob("*.net") if p.stem not in ("alexnet", "vgg16", "resnet18"))


@pytest.mark.parametrize("file", SMALL)
@pytest.mark.parametrize("stage", ["infer", "train_step"])
def test_pipeline_keeps_results_pass_by_pass(file, stage):
    model = dslc.load(MODELS / file)
    graph = stages.build(model, stage)
    feeds, params, randoms = random_bindings(graph, batch=2, seed=1)

    def each(name, before, after):
        check(after)
        assert max_rel_difference(before, after, feeds, params, randoms) <= 1e-5, name

    optimized, results = optimize(graph, check=each)
    assert [r.name for r in results] == list(PASS_NAMES)
    # Folded weights are computed from parameters alone (once per load), so only the
    # per-batch work must not grow.
    assert len(per_batch(optimized)) <= len(per_batch(graph))


def per_batch(graph):
    """Nodes that depend on a batch input: the work done every step."""
    dep = {n.name for n in graph.inputs}
    for n in graph.nodes:
        if any(i in dep for i in n.inputs):
            dep.add(n.name)
    return dep - {n.name for n in graph.inputs}


@pytest.mark.parametrize("file", ["small_cnn.net", "cifar_cnn.net", "resnet20.net"])
def test_inference_graphs_have_no_batchnorm_after_folding(file):
    graph = stages.build(dslc.load(MODELS / file), "infer")
    assert graph.of_op("batchnorm")
    folded, results = optimize(graph, after="fold-batchnorm")
    assert not folded.of_op("batchnorm")
    assert results[0].report.startswith("fold-batchnorm: folded ")


def test_a_convolution_that_is_an_output_is_not_folded_away():
    """fold-batchnorm replaces a layer used only by its batchnorm; an output counts as a use
    (folding would keep the convolution for the output and compute it twice)."""
    graph = stages.build(dslc.load(MODELS / "small_cnn.net"), "infer")
    conv = graph["stage1.conv_bn_relu.conv2d"]
    graph = graph.replace(outputs=graph.outputs + (Output("output", "pre", conv.name),))
    folded, _ = optimize(graph, after="fold-batchnorm")
    assert folded[conv.name].op == "conv2d" and len(folded.of_op("batchnorm")) == 1
    assert {o.value for o in folded.outputs} <= {n.name for n in folded.nodes}


def test_batchnorm_in_training_is_left_exact(net):
    graph = stages.build(dslc.load(MODELS / "small_cnn.net"), "train_step")
    assert optimize(graph, after="fold-batchnorm")[0].of_op("batchnorm") == graph.of_op("batchnorm")


@pytest.mark.parametrize("flags, message", [
    (["--after", "fold-batchnrom"], "unknown pass 'fold-batchnrom'; did you mean 'fold-batchnorm'?"),
    (["--disable-pass", "nope"], "unknown pass 'nope'"),
    (["-O", "3"], "invalid choice"),
])
def test_bad_pass_options_exit_2(flags, message):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "dslc.cli", "inspect", str(MODELS / "small_cnn.net"), *flags],
                          capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_passes_table_reports_every_pass():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "dslc.cli", "inspect", str(MODELS / "small_cnn.net"),
                           "--stage", "infer", "--passes", "--verify"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in PASS_NAMES:
        assert name in done.stdout
    assert "folded 2 batchnorm into conv2d/linear" in done.stdout


def test_pool_relu_folds_the_relu_gradient_into_the_max_pool_gradient():
    """small_cnn's two conv -> relu -> maxpool stages: the pool's gradient times step(relu)
    becomes one maxpool_grad(positive=True), the steps and the plain pool gradients are
    gone, and the step's values are the unfused graph's."""
    graph = stages.build(dslc.load(MODELS / "small_cnn.net"), "train_step")
    folded, results = optimize(graph, after="dce")
    assert results[-2].report == "pool-relu: folded 2 relu gradients into max pools"
    pools = folded.of_op("maxpool_grad")
    assert len(pools) == 2 and all(p.attr("positive") for p in pools)
    assert [s.inputs for s in folded.of_op("step")] == [("fc.relu",)]  # the one relu without a pool
    feeds, params, randoms = random_bindings(graph, batch=2, seed=3)
    assert max_rel_difference(graph, folded, feeds, params, randoms) <= 1e-6


@pytest.mark.parametrize("act, loss, positive", [
    ("relu", "sum(r |> maxpool(2))", True),
    ("leaky_relu", "sum(r |> maxpool(2))", False),  # step with a low slope: not a relu mask
    ("relu", "sum(r |> maxpool(2)) + sum(r)", False),  # relu's gradient: the pool's plus another
])
def test_pool_relu_folds_only_a_relu_mask_on_the_pool_gradient_alone(net, act, loss, positive):
    graph = stages.build(dslc.load(net(f"""model m {{
        input x : f32[N, 2, 4, 4]
        param w : f32[2, 4, 4] = normal(1.0)
        r = {act}(x * w)
        loss {loss}
    }}""")), "backward")
    folded = optimize(graph, after="dce")[0]
    assert [p.attr("positive") for p in folded.of_op("maxpool_grad")] == [positive]
    feeds, params, randoms = random_bindings(graph, batch=2, seed=3)
    assert max_rel_difference(graph, folded, feeds, params, randoms) <= 1e-6
