"""The kernel graph: coverage, order, grouping (optimizer updates, batchnorm sweeps),
prologue marking, index maps, FLOPs/bytes and the text/DOT views."""
from __future__ import annotations

import pytest

import dslc
from dslc.ir.printer import to_dot
from dslc.kernels import format_kernels, kernel_clusters, lower
from dslc.kernels.graph import index_maps
from dslc.passes.pipeline import optimize
from dslc.passes.train_step import Optimizer
from dslc.stages import build
from helpers import MODELS

SOURCES = ("input", "param", "const", "random")
ADAM = Optimizer("adam", lr=1e-3)


def step_graphs(model: str, opt=ADAM, stage="train_step"):
    m = dslc.load(MODELS / model)
    graph = build(m, stage, opt) if stage == "train_step" else build(m, stage)
    return graph, optimize(graph)[0]


@pytest.fixture(scope="module")
def mlp_bn():
    graph, opt = step_graphs("mlp_bn.net")
    return graph, opt, lower(opt)


def test_fusion_cuts_the_mlp_bn_adam_step_to_a_third(mlp_bn):
    graph, _, kg = mlp_bn
    unfused = sum(n.op not in SOURCES for n in graph)
    print(f"\nmlp_bn train step (adam): {unfused} unfused compute nodes -> {len(kg.kernels)} kernels")
    assert 3 * len(kg.kernels) <= unfused


def test_every_node_is_computed_once_after_its_inputs(mlp_bn):
    _, opt, kg = mlp_bn
    covered = [n.name for k in kg.kernels for n in k.nodes]
    assert sorted(covered) == sorted(n.name for n in opt if n.op not in SOURCES)
    ready = {b.name for b in kg.buffers if b.role in SOURCES + ("state",)}
    for k in kg.kernels:
        assert set(k.inputs) <= ready, k.name
        ready |= set(k.outputs) | set(k.scratch)
        inside = set(k.outputs) | set(k.scratch)
        assert all(i in ready or i in inside for n in k.nodes for i in n.inputs)
    assert {o.value for o in kg.outputs} <= ready


def test_lowering_is_deterministic():
    a, b = (lower(step_graphs("small_cnn.net")[1]) for _ in range(2))
    assert [k.name for k in a.kernels] == [k.name for k in b.kernels]
    assert format_kernels(a, 16) == format_kernels(b, 16)
    assert len({k.name for k in a.kernels}) == len(a.kernels)


def test_optimizer_updates_are_one_group_per_scalar_program(mlp_bn):
    graph, _, kg = mlp_bn
    updates = [k for k in kg.kernels if k.op == "update"]
    adam = next(k for k in updates if k.name == "update.adam_step")
    trained = [p.name for p in graph.params if p.attr("trainable", True) and p.attr("role") != "state"]
    assert len(adam.parts) == len(trained) == 8
    names = {n.name: n for n in adam.nodes}
    for part in adam.parts:
        assert [names[n].op for n in part] == ["moving_average", "moving_average", "adam_step"]
    running = next(k for k in updates if k is not adam)  # the batchnorm running statistics
    assert len(running.parts) == 4 and all(b.updates for b in map(kg.buffer, running.outputs))
    # Weight decay's g + wd w (weights only) becomes the gradient matmul's epilogue, so
    # every chain keeps one scalar program; momentum's (velocity, add) is another program.
    decayed = lower(step_graphs("mlp_bn.net", Optimizer("adam", lr=1e-3, weight_decay=0.1))[1])
    assert sorted(len(k.parts) for k in decayed.kernels if k.op == "update") == [4, 8]
    momentum = lower(step_graphs("mlp_bn.net", Optimizer("sgd", lr=0.1, momentum=0.9))[1])
    groups = {k.name: [n.op for n in k.nodes[:len(k.parts[0])]] for k in momentum.kernels if k.op == "update"}
    assert groups == {"update.add": ["fused"], "update.add_1": ["momentum_velocity", "add"]}


def test_batchnorm_forward_and_backward_are_two_pass_sweeps(mlp_bn):
    _, _, kg = mlp_bn
    sweeps = {k.name: k for k in kg.kernels if k.op == "sweep"}
    assert len(sweeps) == 4
    fwd = sweeps["hidden1.hidden_layer.sweep"]
    ops = lambda k, part: sorted({n.op for n in k.nodes if n.name in part})
    assert len(fwd.parts) == 2
    assert ops(fwd, fwd.parts[0]) == ["mean", "var"] and ops(fwd, fwd.parts[1]) == ["fused", "mul"]  # bn+relu, dropout
    bwd = [k for k in sweeps.values() if k.name.startswith("grad.")]
    for k in bwd:
        assert len(k.parts) == 2
        assert {"batchnorm_grad_x", "batchnorm_grad_gamma", "sum"} <= set(ops(k, k.parts[0]))
        assert {"var_grad", "expand", "neg"} <= set(ops(k, k.parts[1]))
        assert k.scratch  # batchnorm_grad_x, var_grad ... never leave the kernel


def test_inference_folded_weights_are_a_prologue():
    _, infer = step_graphs("small_cnn.net", stage="infer")
    kg = lower(infer)
    prologue = [k for k in kg.kernels if k.prologue]
    assert {k.name for k in prologue} >= {"stage1.conv_bn_relu.batchnorm.folded_weight",
                                          "stage2.conv_bn_relu.batchnorm.folded_bias"}
    assert kg.kernels[:len(prologue)] == tuple(prologue)  # run first, once per parameter load
    assert not any(k.prologue for k in kg.kernels if "image" in k.inputs)
    assert any(k.kind == "view" for k in prologue) and kg.buffer("flatten").alias == "stage2.maxpool"


FROZEN = """
model frozen {
    input x : f32[N, 4]
    input y : i64[N]
    param S : f32[4, 4] = xavier()
    param W : f32[4, 3] = xavier()
    logits = (x @ tanh(S)) @ W
    loss cross_entropy(logits, y)
}
"""


def test_frozen_parameters_make_a_training_prologue(net):
    m = dslc.load(net(FROZEN))
    trained = lower(optimize(build(m, "train_step", Optimizer("sgd", lr=0.1)))[0])
    assert not any(k.prologue for k in trained.kernels)  # tanh(S) changes every step
    frozen = lower(optimize(build(m, "train_step", Optimizer("sgd", lr=0.1), frozen=["S"]))[0])
    assert [k.covers()[0].op for k in frozen.kernels if k.prologue] == ["tanh"]
    assert frozen.kernels[0].prologue


def test_fused_kernels_say_how_they_index_their_inputs(mlp_bn):
    _, opt, kg = mlp_bn
    epilogue = next(k for k in kg.kernels if k.name == "grad.mul_2")
    assert (epilogue.kind, epilogue.op, epilogue.index_maps) == ("fused", "epilogue",
                                                                ("host", "host", "identity", "identity"))
    _, resnet = step_graphs("resnet20.net", Optimizer("sgd"))
    residual = resnet["stage1.stack.basic.relu_1"]  # batchnorm + add of the shortcut + relu
    maps = index_maps(residual, [resnet[i].type for i in residual.inputs])
    assert maps == ("identity", "channel", "channel", "channel", "channel", "identity")
    running = resnet["stem.conv_bn.batchnorm.add"]
    assert index_maps(running, [resnet[i].type for i in running.inputs]) == ("identity", "identity")


def test_flops_and_bytes_at_a_batch(mlp_bn):
    _, _, kg = mlp_bn
    linear = next(k for k in kg.kernels if k.name == "hidden1.hidden_layer.linear")
    assert kg.flops(linear, 128) == 2 * 128 * 784 * 512
    assert kg.bytes_moved(linear, 128) == 4 * (128 * 784 + 784 * 512 + 128 * 512)
    assert kg.flops(linear, 256) == 2 * kg.flops(linear, 128)


def test_listing_and_clusters(mlp_bn):
    _, opt, kg = mlp_bn
    text = format_kernels(kg, 128)
    lines = text.splitlines()
    assert len(lines) == 1 + len(kg.kernels) and "18 kernels" in lines[0]
    assert "group:update" in text and "8 x [moving_average, moving_average, adam_step]" in text
    assert "2 passes [mean, var, var] [batchnorm+relu, mul]" in text
    clusters = kernel_clusters(kg)
    assert set(clusters) == {k.name for k in kg.kernels if k.kind == "group"}
    dot = to_dot(opt, grouping=clusters)
    assert dot.count("subgraph cluster_") == len(clusters)
