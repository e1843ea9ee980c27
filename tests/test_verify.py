"""The IR verifier: silent on every stage of real models, and catches each corruption made by hand."""
from __future__ import annotations

import pytest

import dslc
from dslc.ir.graph import Graph, Node, Output
from dslc.ir.types import TensorType
from dslc.ir.verify import check, maybe_check, verify
from dslc.stages import STAGES, build

from helpers import MODELS

MODEL = """
block unit(x, c: int) {
    x = x |> conv2d(c, kernel=3, pad=1) |> batchnorm |> relu
    return x
}

model m {
    input image : f32[N, 1, 6, 6]
    input label : i64[N]
    x = image |> unit(4) |> maxpool(2) |> flatten
    logits = x |> linear(3) |> dropout(0.5)
    output logits
    loss cross_entropy(logits, label) + l1(weights) * 0.001
    metric accuracy(logits, label)
}
"""


@pytest.fixture
def model(net):
    return dslc.load(net(MODEL))


@pytest.fixture
def graph(model) -> Graph:
    return model.graph


def edit(g: Graph, name: str, **changes) -> Graph:
    return g.replace(nodes=[n.replace(**changes) if n.name == name else n for n in g.nodes])


def only_problem(g: Graph, fragment: str) -> str:
    problems = verify(g)
    assert len(problems) == 1 and fragment in problems[0], problems
    return problems[0]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_is_well_formed(model, stage):
    assert verify(build(model, stage)) == []


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.net")), ids=lambda p: p.stem)
def test_shipped_models_are_well_formed(path):
    check(dslc.load(path).graph)


def test_duplicate_name(graph):
    relu = graph["unit.relu"]
    g = graph.replace(nodes=graph.nodes + (relu,))
    only_problem(g, "%unit.relu is defined twice")


def test_use_before_definition(graph):
    nodes = list(graph.nodes)
    i = nodes.index(graph["linear.weight"])
    nodes.insert(i + 3, nodes.pop(i))  # after the linear node that reads it
    assert nodes.index(graph["linear.weight"]) > nodes.index(graph["linear"])
    only_problem(graph.replace(nodes=nodes), "node %linear (linear): input %linear.weight is not defined")


def test_undefined_input(graph):
    g = edit(graph, "unit.relu", inputs=("ghost",))
    only_problem(g, "input %ghost is not defined before use")


def test_output_of_missing_node(graph):
    g = graph.replace(outputs=graph.outputs + (Output("metric", "extra", "nowhere"),))
    only_problem(g, "metric 'extra' refers to %nowhere")


def test_output_listed_twice(graph):
    g = graph.replace(outputs=graph.outputs + (graph.outputs[0],))
    only_problem(g, "is listed twice")


def test_type_differs_from_shape_rule(graph):
    g = edit(graph, "accuracy", type=TensorType("f32", (1,)))
    msg = only_problem(g, "type is f32[1] but the shape rule gives f32[]")
    assert msg.startswith("node %accuracy (accuracy)")


def test_dtype_differs_from_shape_rule(graph):
    g = edit(graph, "accuracy", type=TensorType("f64", ()))
    only_problem(g, "type is f64[] but the shape rule gives f32[]")


def test_wrong_type_is_reported_where_it_is_written(graph):
    # Consumers are checked against the stored type, so the maxpool after the corrupt
    # relu is reported too; the first problem names the node that went wrong.
    g = edit(graph, "unit.relu", type=TensorType("f32", (7, 4, 6, 6)))
    assert verify(g)[0] == "node %unit.relu (relu): type is f32[7, 4, 6, 6] but the shape rule gives f32[N, 4, 6, 6]"


def test_attribute_change_without_retyping(graph):
    conv = graph["unit.conv2d"]
    g = edit(graph, "unit.conv2d", attrs=tuple((k, 0 if k == "pad" else v) for k, v in conv.attrs))
    only_problem(g, "but the shape rule gives f32[N, 4, 4, 4]")


def test_missing_attribute(graph):
    conv = graph["unit.conv2d"]
    g = edit(graph, "unit.conv2d", attrs=tuple(a for a in conv.attrs if a[0] != "kernel"))
    only_problem(g, "do not match the declared")


def test_unknown_attribute(graph):
    g = edit(graph, "flatten", attrs=graph["flatten"].attrs + (("colour", "red"),))
    only_problem(g, "'colour'")


def test_source_with_inputs(graph):
    g = edit(graph, "linear.bias", inputs=("image",))
    only_problem(g, "a source node has inputs ['image']")


def test_unknown_op(graph):
    g = edit(graph, "unit.relu", op="relu6")
    only_problem(g, "unknown op 'relu6'")


def test_unknown_dtype(graph):
    g = edit(graph, "image", type=TensorType("f16", graph["image"].type.shape))
    assert any("unknown dtype 'f16'" in p for p in verify(g))


def test_missing_parameter_input(graph):
    lin = graph["linear"]
    g = edit(graph, "linear", inputs=lin.inputs[:2])  # bias=true but no bias
    only_problem(g, "has 2 inputs, the op takes 3")


def test_extra_input(graph):
    g = edit(graph, "unit.relu", inputs=("unit.batchnorm", "unit.batchnorm"))
    only_problem(g, "has 2 inputs, the op takes 1")


def test_shape_rule_rejects_inputs(graph):
    g = edit(graph, "linear", inputs=("image",) + graph["linear"].inputs[1:])
    only_problem(g, "shape rule rejects its inputs: linear expects rank 2")


def test_check_lists_every_problem(graph):
    g = edit(edit(graph, "unit.relu", op="relu6"), "flatten", inputs=("ghost",))
    with pytest.raises(AssertionError) as e:
        check(g, "my-pass")
    text = str(e.value)
    assert "after my-pass" in text and "relu6" in text and "ghost" in text


def test_maybe_check_runs_only_under_dslc_verify(graph, monkeypatch):
    bad = edit(graph, "unit.relu", inputs=("ghost",))
    monkeypatch.delenv("DSLC_VERIFY", raising=False)
    assert maybe_check(bad, "x") is bad
    monkeypatch.setenv("DSLC_VERIFY", "1")
    assert maybe_check(graph, "x") is graph
    with pytest.raises(AssertionError, match="ghost"):
        maybe_check(bad, "x")


def test_empty_graph_is_well_formed():
    assert verify(Graph("empty", (), ())) == []
    x = Node("x", "input", (), (), TensorType("f32", (2,)))
    assert verify(Graph("g", (x,), (Output("output", "x", "x"),))) == []
