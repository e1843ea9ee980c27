"""ONNX export: every registry op is written in ONNX or refused with a located message, each
written op agrees with its NumPy reference in onnxruntime on the op's Samples, and every model
in models/ exports and runs in onnxruntime within 1e-4 of dslc's own inference (logits and
declared outputs, batchnorm statistics away from their initial values so folding matters)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from helpers import MODELS, feeds_for, trained_like, typed

import dslc
from dslc.cli import main
from dslc.diagnostics import CompileError, Span
from dslc.ir.builder import GraphBuilder, complete_attrs
from dslc.ir.graph import Output
from dslc.ir.types import TensorType
from dslc.ops import registry
from dslc.passes.infer import first_loss_input
from dslc.runtime.checkpoint import load_checkpoint, save_checkpoint
from dslc.runtime.recipes import model_and_recipe
from dslc.stages import build

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from dslc import reference  # noqa: E402
from dslc.interop import onnx_check, onnx_export, onnx_ops  # noqa: E402

OPS = registry.all_ops()
EXPORTED = [(name, k, s) for name, op in sorted(OPS.items()) if name in onnx_ops.LOWERINGS
            for k, s in enumerate(op.samples)]
SMALL_BATCH = {"alexnet": 1, "vgg16": 1}  # 227x227 and 224x224 images: batch 1 keeps each case a few seconds
SLOW = ("vgg16",)  # 138M weights: initialising them and the reference's 15 GFLOPs take ~12 s


# ---- the registry, op by op -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_is_exported_or_refused_where_it_is(name):
    op = OPS[name]
    if name in ("input", "param", "const"):
        return  # written as graph inputs and initializers
    if name in onnx_ops.LOWERINGS:
        assert op.samples, f"{name} is exported but has no Sample to test its lowering on"
        return
    assert onnx_ops.refusal(name), f"{name} is neither exported nor refused with a reason"
    for sample in op.samples:  # the refusal names the op and points at the node's source
        graph, _ = _op_graph(name, typed(sample, "f32"), sample.attrs)
        with pytest.raises(CompileError) as info:
            onnx_export.to_onnx(graph, {})
        (d,) = info.value.diagnostics
        assert (d.code, d.span) == ("E0601", SPAN) and f"cannot export {name} ('y')" in d.message


SPAN = Span("m.net", 3, 5, 3, 20)


def _op_graph(name, types, attrs):
    b = GraphBuilder()
    xs = [b.source(f"x{i}", "input", t) for i, t in enumerate(types)]
    y = b.add(name, xs, attrs, name="y", span=SPAN)
    return b.graph("op", [Output("output", "y", y)], "infer"), xs


@pytest.mark.parametrize("name,k,sample", EXPORTED, ids=[f"{n}-{k}" for n, k, _ in EXPORTED])
def test_lowering_matches_the_reference_in_onnxruntime(name, k, sample):
    types = typed(sample, "f32")
    graph, xs = _op_graph(name, types, sample.attrs)
    feeds = dict(zip(xs, feeds_for(types, sample.domain)))
    got = onnx_check.run_onnx(onnx_export.to_onnx(graph, {}), feeds)["y"]
    want = OPS[name].reference(*feeds.values(), **dict(complete_attrs(OPS[name], sample.attrs)))
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} sample {k}")


def test_a_refused_op_is_reported_where_it_is_written(net, capsys):
    path = net("model m {\n    input a : f32[N, 4]\n    input b : f32[N, 4]\n"
               "    output e = mse(a |> relu, b)\n}\n")
    assert main(["export", str(path), "-o", str(path.with_suffix(".onnx"))]) == 1
    err = capsys.readouterr().err
    assert f"{path}:4:" in err and "error[E0601]: cannot export mse" in err and "a loss is a training" in err
    assert not path.with_suffix(".onnx").exists()


def test_every_refused_op_in_a_graph_is_listed_at_once():
    b = GraphBuilder()
    x, y = b.source("x", "input", TensorType("f32", (3, 4))), b.source("label", "input", TensorType("i64", (3,)))
    loss = b.add("cross_entropy", [x, y])
    svm = b.add("svm", [b.add("relu", [x]), y])
    graph = b.graph("two", [Output("output", "a", loss), Output("output", "b", svm)], "infer")
    with pytest.raises(CompileError) as info:
        onnx_export.to_onnx(graph, {})
    assert [d.code for d in info.value.diagnostics] == ["E0601", "E0601"]
    assert "cross_entropy" in info.value.diagnostics[0].message and "svm" in info.value.diagnostics[1].message


# ---- whole models ---------------------------------------------------------------------------

def with_logits(model, graph):
    """`graph` with the logits (what the loss reads) as an output too: sharper than probabilities."""
    logits = first_loss_input(model.graph)
    if logits is None or logits in {o.value for o in graph.outputs}:
        return graph
    return graph.replace(outputs=graph.outputs + (Output("output", "logits", logits),))


@pytest.mark.parametrize("level", [2, 0])
@pytest.mark.parametrize("name", [pytest.param(p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else [])
                                  for p in sorted(MODELS.glob("*.net"))])
def test_every_model_runs_in_onnxruntime_as_in_dslc(name, level):
    if level == 0 and name in SMALL_BATCH:
        pytest.skip("no batchnorm to leave unfolded; -O2 covers the model")
    model = dslc.load(MODELS / f"{name}.net")
    weights = trained_like(model)
    ours = with_logits(model, build(model, "infer"))
    proto = onnx_export.to_onnx(with_logits(model, onnx_export.inference_graph(model, level)), weights)
    feeds = onnx_check.random_feeds(ours, SMALL_BATCH.get(name, 2), seed=1)
    want = {n: v for (_, n), v in reference.run_outputs(ours, feeds, weights).items()}
    got = onnx_check.run_onnx(proto, feeds)
    assert sorted(got) == sorted(want)
    for key, w in want.items():
        err = float(np.max(np.abs(got[key] - w))) / max(1.0, float(np.max(np.abs(w))))
        assert err <= 1e-4, f"{name} -O{level} {key}: difference {err:.2e}"


def test_layer_names_shapes_and_metadata_survive(tmp_path):
    model = dslc.load(MODELS / "resnet20.net", width=8)
    proto = onnx_export.export(model, trained_like(model), level=2, checkpoint="runs/r20")
    graph = onnx_export.inference_graph(model, 2)
    nodes = {n.name: n for n in proto.graph.node}
    conv = nodes["stage2.basic_down.conv_bn.batchnorm"]  # conv2d with its batchnorm folded in
    assert conv.op_type == "Conv" and conv.input[1] == "stage2.basic_down.conv_bn.batchnorm.folded_weight"
    assert conv.doc_string.startswith(f"{MODELS / 'resnet20.net'}:21:") or "resnet20.net:21:" in conv.doc_string
    # every dslc value has its ONNX tensor, of the type dslc inferred (N symbolic)
    infos = {v.name: v for v in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    for node in graph.nodes:
        if node.op not in ("param", "const") and node.name in infos:
            dims = [d.dim_param or d.dim_value for d in infos[node.name].type.tensor_type.shape.dim]
            assert dims == [d if isinstance(d, int) else str(d) for d in node.type.shape], node.name
    assert sum(n.name in infos for n in graph.nodes if n.op not in ("param", "const")) > 40
    assert [o.name for o in proto.graph.output] == ["probs"] and proto.opset_import[0].version == onnx_ops.OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["dslc.model"] == "resnet20" and meta["dslc.checkpoint"] == "runs/r20"
    assert json.loads(meta["dslc.hyperparameters"]) == {"n": 3, "width": 8, "classes": 10}
    assert len(meta["dslc.source_sha256"]) == 64 and meta["dslc.opt_level"] == "2"
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    unfolded = onnx_export.export(model, trained_like(model), level=0)
    assert sum(n.op_type == "BatchNormalization" for n in unfolded.graph.node) == 19


# ---- the command line -----------------------------------------------------------------------

def test_export_a_checkpoint_and_check_it(tmp_path, capsys):
    model, recipe = model_and_recipe(MODELS / "digits_cnn.net", None, {})
    save_checkpoint(tmp_path / "run" / "best", trained_like(model, 3), {}, {"recipe": recipe.to_json()})
    out = tmp_path / "digits.onnx"
    assert main(["export", str(MODELS / "digits_cnn.net"), "--checkpoint", str(tmp_path / "run"), "-o", str(out),
                 "--check", "--batch", "3"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "opset 17" in text and "probs [3, 10]: max |difference|" in text
    proto = onnx.load(out)
    by_name = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    saved = load_checkpoint(tmp_path / "run" / "best").weights
    assert np.array_equal(by_name["out.weight"], saved["out.weight"])  # the checkpoint's weights, not fresh ones


def test_check_fails_above_the_tolerance(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(MODELS / "lenet5.net"), "-o", str(out), "--check", "--tolerance", "1e-12"]) == 1
    assert "differs from dslc by" in capsys.readouterr().err and not out.exists()


def test_export_without_the_onnx_package_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", str(MODELS / "digits_mlp.net"), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "pip install -e '.[onnx]'" in capsys.readouterr().err
