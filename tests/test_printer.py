"""The IR printer: text shows every node with its type, JSON round-trips exactly, DOT parses."""
from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

import dslc
from dslc.diagnostics import Span
from dslc.ir.graph import Graph, Init, Node, Output
from dslc.ir.printer import from_json, show_value, to_dot, to_json, to_text
from dslc.ir.types import Sym, TensorType
from dslc.ir.verify import verify
from dslc.stages import STAGES, build

from helpers import MODELS

# Blocks, repeat, labels, a hand-written param with initialiser arguments, symbolic
# dimensions with a coefficient (reshape to [2*N, 32]) and every attribute kind:
# int, int pairs, pad names and pairs, floats written as ints (alpha=1 -> 1.0),
# bools, none, axes, shapes and inits.
RICH = """
block stage(x, c: int = 8) {
    x = x |> conv2d(c, kernel=[3, 3], pad=same, bias=false, init=kaiming(mode=fan_out, dist=uniform))
    x = x |> batchnorm(momentum=0.2) |> leaky_relu(alpha=1)
    return x
}

model net(width: int = 4) {
    input image : f32[N, 3, 8, 8]
    input label : i64[N]
    param W : f32[32, 10] = xavier(gain=2)
    x = image
    repeat 2 { x = x |> stage(width) }
    pool: x = x |> maxpool(2, stride=none, pad=[0, 0])
    x = x |> flatten |> reshape([-1, 32])
    x = x |> reshape([-1, 64]) |> linear(32, bias=true)
    logits = x @ W
    s = logits |> sum(axis=[1], keepdims=true)
    output logits
    output s
    loss cross_entropy(logits, label) + l2(weights) * 0.01
    metric accuracy(logits, label)
}
"""

SMALL_MLP = """
model mlp(hidden: int = 16) {
    input x : f64[B, 5]
    input y : i32[B]
    h = x |> linear(hidden) |> tanh |> dropout(0.25)
    logits = h |> linear(3, init=normal(std=0.5))
    output logits
    loss cross_entropy(logits, y)
}
"""


def typed(v):
    """`v` with the Python type of every leaf made explicit: 1 == 1.0 == True, but not here."""
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(typed(x) for x in v))
    if isinstance(v, Init):
        return ("Init", v.name, typed(v.args))
    return (type(v).__name__, v)


def assert_same_graph(a: Graph, b: Graph) -> None:
    assert a == b
    for x, y in zip(a.nodes, b.nodes):
        assert typed(x.attrs) == typed(y.attrs), x.name
        assert typed(x.type.shape) == typed(y.type.shape), x.name


@pytest.fixture
def rich(net):
    return dslc.load(net(RICH, "rich.net"))


def test_text_has_every_node_with_its_type_and_line(rich):
    text = to_text(rich.graph)
    lines = text.splitlines()
    assert lines[0] == f"graph net  (stage typed; {len(rich.graph)} nodes, 2 inputs, 13 params)"
    for n in rich.graph:
        line = next(line for line in lines if line.startswith(f"%{n.name} : "))
        assert line.startswith(f"%{n.name} : {n.type.show()} = {n.op}")
        assert line.endswith(f"# {n.span.file}:{n.span.line}")
    assert "%reshape : f32[2*N, 32] = reshape(%flatten) {shape=[-1, 32]}" in text
    assert ("%W : f32[32, 10] = param {init=xavier(gain=2.0), trainable=true, role=weight}" in text)
    assert "{kernel=2, stride=none, pad=[0, 0]}" in text
    assert "init=kaiming(dist=uniform, mode=fan_out)" in text
    assert lines[-4:] == ["output logits = %matmul", "output s = %sum", "loss loss = %add",
                          "metric accuracy = %accuracy"]


def test_text_is_deterministic(net):
    path = net(RICH, "rich.net")
    first, second = dslc.load(path).graph, dslc.load(path).graph
    assert to_text(first) == to_text(second)
    assert to_json(first) == to_json(second)
    assert to_dot(first) == to_dot(second)


def test_text_escapes_a_file_name_that_is_not_utf8(tmp_path):
    """The `# file:line` of a .net file named with a byte that is not UTF-8 (a lone surrogate
    in Python) was written as is: `dslc inspect -o g.txt` failed to encode it (a traceback)."""
    net = tmp_path / "m\udcff.net"
    net.write_bytes((MODELS / "two_layer.net").read_bytes())
    text = to_text(build(dslc.load(net), "typed"))
    assert "# m\\udcff.net:" in text.replace(str(tmp_path) + "/", "") and text.encode()


@pytest.mark.parametrize("value, shown", [
    (True, "true"), (None, "none"), (3, "3"), (1.0, "1.0"), (1e-05, "1e-05"), ("same", "same"),
    ("two words", '"two words"'), ((3, 5), "[3, 5]"), (Init("kaiming", (("mode", "fan_out"),)), "kaiming(mode=fan_out)"),
    (Sym(2, ("N",)), "2*N"), (float("inf"), "inf"),
])
def test_show_value_uses_net_spelling(value, shown):
    assert show_value(value) == shown


# ---- JSON --------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_json_round_trips_every_stage(rich, stage):
    g = build(rich, stage)
    text = to_json(g)
    back = from_json(text)
    assert_same_graph(back, g)
    assert to_json(back) == text


def test_json_round_trips_another_dtype_and_symbol(net):
    g = dslc.load(net(SMALL_MLP, "mlp.net")).graph
    assert g["x"].type == TensorType("f64", (Sym.of("B"), 5))
    assert_same_graph(from_json(to_json(g)), g)


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.net")), ids=lambda p: p.stem)
def test_json_round_trips_the_shipped_models(path):
    g = dslc.load(path).graph
    assert_same_graph(from_json(to_json(g)), g)


def hand_built() -> Graph:
    """Attribute values of every Python type the IR allows, checked with their exact types."""
    nn = Sym(1, ("N", "T"))
    x = Node("x", "input", (), (), TensorType("f32", (Sym(2, ("N",)), nn, 3)), Span("a b.net", 1, 2, 1, 9))
    attrs = (("i", 1), ("f", 1.0), ("neg", -0.0), ("tiny", 1e-300), ("b", False), ("s", "1"), ("none", None),
             ("t", (1, (2.0, True), ())), ("init", Init("normal", (("mean", 0.0), ("std", 1)))),
             ("inf", float("inf")), ("minf", float("-inf")), ("sym", Sym(3, ("N",))), ("uni", "é\"\\"))
    y = Node("y", "custom", ("x", "x"), attrs, TensorType("f64", ()), None)
    return Graph("hand", (x, y), (Output("output", "y", "y"), Output("grad", "x", "y")), stage="weird")


def test_json_keeps_exact_python_types():
    g = hand_built()
    text = to_json(g)
    back = from_json(text)
    assert_same_graph(back, g)
    assert math.copysign(1.0, back["y"].attr("neg")) == -1.0
    assert back.stage == "weird" and back["x"].span == g["x"].span and back["y"].span is None


def test_json_of_an_empty_graph():
    g = Graph("empty", (), ())
    assert from_json(to_json(g)) == g
    assert json.loads(to_json(g))["nodes"] == []


def fused_graph() -> Graph:
    """relu(x + b) as one `fused` node whose body refers to its inputs as $0, $1."""
    t = TensorType("f32", (Sym.of("N"), 4))
    span = Span("f.net", 3, 5, 3, 20)
    body = (Node("add", "add", ("$0", "$1"), (), t, span), Node("relu", "relu", ("add",), (), t, span))
    nodes = (Node("x", "input", (), (), t), Node("b", "input", (), (), TensorType("f32", (4,))),
             Node("relu", "fused", ("x", "b"), (("kind", "elementwise"), ("body", body)), t, span))
    return Graph("f", nodes, (Output("output", "y", "relu"),), stage="optimized")


def test_fused_body_prints_and_round_trips():
    g = fused_graph()
    assert verify(g) == []
    assert ("%relu : f32[N, 4] = fused(%x, %b) {kind=elementwise, body=[{%add : f32[N, 4] = add($0, $1)}, "
            "{%relu : f32[N, 4] = relu(%add)}]}  # f.net:3") in to_text(g)
    assert_same_graph(from_json(to_json(g)), g)
    assert from_json(to_json(g))["relu"].attr("body")[0].span == Span("f.net", 3, 5, 3, 20)
    run_dot(to_dot(g))


def test_json_is_standard_json():
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    doc = json.loads(to_json(hand_built()), parse_constant=refuse)
    assert doc["format"] == "dslc-graph" and [n["name"] for n in doc["nodes"]] == ["x", "y"]


def test_json_writes_one_node_per_line(rich):
    lines = to_json(rich.graph).splitlines()
    assert sum(line.lstrip().startswith('{"name": ') for line in lines) == len(rich.graph)


def test_json_refuses_values_it_cannot_round_trip():
    bad = Graph("g", (Node("x", "input", (), (("l", [1, 2]),), TensorType("f32", ())),), ())
    with pytest.raises(TypeError, match="cannot write attribute value"):
        to_json(bad)


@pytest.mark.parametrize("text, message", [
    ('{"format": "other"}', "not a dslc-graph"),
    ('[1, 2]', "not a dslc-graph"),
    ('{"format": "dslc-graph", "version": 1, "name": "g", "stage": "typed", "nodes": [{"name": "x"}],'
     ' "outputs": []}', "malformed"),
])
def test_from_json_rejects_other_documents(text, message):
    with pytest.raises(ValueError, match=message):
        from_json(text)


# ---- DOT ---------------------------------------------------------------------------

def run_dot(source: str, fmt: str = "plain") -> str:
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed")
    done = subprocess.run(["dot", f"-T{fmt}"], input=source, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "Error" not in done.stderr, done.stderr
    return done.stdout


def test_dot_draws_every_node_and_edge(rich):
    g = rich.graph
    plain = run_dot(to_dot(g)).splitlines()
    drawn = [line.split()[1] for line in plain if line.startswith("node ")]
    assert len(drawn) == len(g) + len(g.outputs)
    edges = [line for line in plain if line.startswith("edge ")]
    assert len(edges) == sum(len(n.inputs) for n in g) + len(g.outputs)


def test_dot_styles_inputs_params_and_state_differently(rich):
    dot = to_dot(rich.graph)
    line = lambda name: next(x for x in dot.splitlines() if x.strip().startswith(f'"{name}" ['))
    assert "shape=ellipse" in line("image")
    assert "#e8e8e8" in line("W") and "dashed" not in line("W")
    assert "dashed" in line("stage.batchnorm.running_mean")
    assert 'label="stage.conv2d\\nconv2d\\nf32[N, 4, 8, 8]"' in line("stage.conv2d")


def test_dot_groups_nodes_into_clusters(rich):
    group = {'kernel "0" \\ conv+bn': ["stage.conv2d", "stage.batchnorm", "stage.leaky_relu"],
             "head": ["linear", "matmul"]}
    dot = to_dot(rich.graph, group)
    assert dot.count("subgraph cluster_") == 2
    canon = run_dot(dot, "canon")
    assert "cluster_0" in canon and "cluster_1" in canon


@pytest.mark.parametrize("group, message", [
    ({"k": ["nope"]}, "not a node"),
    ({"a": ["relu"], "b": ["relu"]}, "two groups"),
])
def test_dot_rejects_bad_groups(group, message):
    g = Graph("g", (Node("x", "input", (), (), TensorType("f32", (2,))),
                    Node("relu", "relu", ("x",), (), TensorType("f32", (2,)))), ())
    with pytest.raises(ValueError, match=message):
        to_dot(g, group)


def test_dot_of_every_stage_parses(rich):
    for stage in ("train_step", "infer"):
        run_dot(to_dot(build(rich, stage)))
