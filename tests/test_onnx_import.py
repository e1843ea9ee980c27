"""`dslc import`: an ONNX graph back to a .net model and a weights file that `torch_weights`
loads. A model exported by dslc (batchnorm folded or not) and one exported by PyTorch come
back computing what onnxruntime computes from the ONNX file, within 1e-4; an ONNX op dslc
does not know is one message naming every such node (exit status 1)."""
from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import MODELS, feeds_for, trained_like, typed

import dslc
from dslc import reference
from dslc.cli import main
from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Output
from dslc.ops import registry
from dslc.runtime.torch_weights import load_torch_weights
from dslc.stages import build

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from dslc.interop import onnx_check, onnx_export, onnx_import, onnx_ops  # noqa: E402

helper = onnx.helper


def imported_outputs(net_path, onnx_path, feeds) -> tuple[dict, dict]:
    """(dslc's outputs of the imported .net with its weights, onnxruntime's of the ONNX file)."""
    model = dslc.load(net_path)
    weights_file = net_path.with_suffix(".safetensors")
    weights = load_torch_weights(model, weights_file) if weights_file.exists() else {}
    graph = build(model, "infer")
    ours = {name: v for (_, name), v in reference.run_outputs(graph, feeds, weights).items()}
    return ours, onnx_check.run_onnx(onnx.load(onnx_path), feeds)


def assert_close(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for key, want in theirs.items():
        assert float(np.max(np.abs(ours[key] - want))) <= 1e-4 * max(1.0, float(np.max(np.abs(want)))), key


@pytest.mark.parametrize("level", [0, 2])
def test_a_dslc_export_comes_back(tmp_path, level, capsys):
    model = dslc.load(MODELS / "resnet20.net", width=8)
    onnx_export.save(onnx_export.export(model, trained_like(model), level), tmp_path / "r.onnx")
    assert main(["import", str(tmp_path / "r.onnx"), "-o", str(tmp_path / "r.net")]) == 0
    assert f"wrote {tmp_path / 'r.net'}, {tmp_path / 'r.safetensors'}" in capsys.readouterr().out
    text = (tmp_path / "r.net").read_text()
    assert "stage2_basic_down_conv_bn_" in text and "loss cross_entropy(fc, label)" in text  # dslc's layer names
    feeds = {"image": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    assert_close(*imported_outputs(tmp_path / "r.net", tmp_path / "r.onnx", feeds))
    imported = dslc.load(tmp_path / "r.net")  # a classifier: it has a loss, so it trains as it is
    assert imported.graph.loss is not None
    if level == 0:  # nothing folded: the same parameters as the original
        assert imported.summary().params == model.summary().params


def test_a_pytorch_export_comes_back(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1), nn.AvgPool2d(2),
                        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.Sigmoid(), nn.Flatten(),
                        nn.Linear(24, 10), nn.Softmax(dim=1)).eval()
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter: the new one needs onnxscript
        torch.onnx.export(net, (torch.randn(2, 1, 8, 8),), tmp_path / "t.onnx", dynamo=False, input_names=["image"],
                          output_names=["probs"], dynamic_axes={"image": {0: "N"}})
    assert main(["import", str(tmp_path / "t.onnx"), "-o", str(tmp_path / "t.net")]) == 0
    feeds = {"image": np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)}
    ours, theirs = imported_outputs(tmp_path / "t.net", tmp_path / "t.onnx", feeds)
    assert_close(ours, theirs)
    with torch.no_grad():
        np.testing.assert_allclose(ours["probs"], net(torch.from_numpy(feeds["image"])).numpy(), atol=1e-5)


def test_unknown_ops_and_attributes_are_listed_at_once(tmp_path, capsys):
    w = onnx.numpy_helper.from_array(np.zeros((2, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[0, 0, 1, 1]),
         helper.make_node("Erf", ["c"], ["e"], name="erf"),  # no GELU around it: dslc has no erf
         helper.make_node("LRN", ["x"], ["n"], name="norm", size=4),
         helper.make_node("Relu", ["e"], ["y"], name="act")],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2, 5, 5]),
         helper.make_tensor_value_info("n", onnx.TensorProto.FLOAT, ["N", 1, 6, 6])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "g.onnx")
    assert main(["import", str(tmp_path / "g.onnx"), "-o", str(tmp_path / "g.net")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dslc: error: {tmp_path / 'g.onnx'}: 3 node(s) have no .net equivalent")
    assert "node 'conv' (Conv): asymmetric pads [0, 0, 1, 1]" in err and "node 'erf' (Erf): dslc has no such op" in err
    assert "node 'norm' (LRN): size=4" in err and "'act'" not in err  # the Relu of what failed: not again
    assert "Traceback" not in err and not (tmp_path / "g.net").exists()


def test_a_file_that_is_not_onnx(tmp_path, capsys):
    (tmp_path / "x.onnx").write_bytes(b"\x00\x01 this is no protobuf")
    assert main(["import", str(tmp_path / "x.onnx"), "-o", str(tmp_path / "x.net")]) == 1
    assert "not a" in capsys.readouterr().err and not (tmp_path / "x.net").exists()


# ---- every op dslc exports, back through import ------------------------------------------------

OPS = registry.all_ops()
ROUND_TRIP = [(n, k, s) for n, op in sorted(OPS.items()) if n in onnx_ops.LOWERINGS for k, s in enumerate(op.samples)]


def _sample_graph(name, sample):
    """The op applied to graph inputs (its tensors) and parameters (its weights: ONNX initializers)."""
    op, types = OPS[name], typed(sample, "f32")
    users = len(types) if op.variadic else len(op.inputs)
    values = feeds_for(types, sample.domain)
    b = GraphBuilder()
    xs = [b.source(f"x{i}" if i < users else f"w{i}", "input" if i < users else "param", t)
          for i, t in enumerate(types)]
    y = b.add(name, xs, sample.attrs, name="y")
    graph = b.graph("op", [Output("output", "y", y)], "infer")
    return graph, dict(zip(xs[:users], values[:users])), dict(zip(xs[users:], values[users:]))


# What dslc exports with ONNX ops that have no .net form, and the refusal that names them.
NOT_BACK = {"gather": "(GatherElements): dslc has no such op", "one_hot": "(OneHot): dslc has no such op",
            "lrn-1": "(Conv): asymmetric pads"}  # an even lrn window, exported as a convolution over channels


@pytest.mark.parametrize("name,k,sample", ROUND_TRIP, ids=[f"{n}-{k}" for n, k, _ in ROUND_TRIP])
def test_every_exported_op_comes_back_or_is_named(tmp_path, capsys, name, k, sample):
    """What dslc exports comes back computing the same (gelu's Erf chain as gelu, groupnorm's
    Shape folded, ...); the few exported with ONNX ops that have no .net form are refused, naming those."""
    graph, feeds, weights = _sample_graph(name, sample)
    onnx_export.save(onnx_export.to_onnx(graph, weights), tmp_path / "op.onnx")
    refusal = NOT_BACK.get(f"{name}-{k}", NOT_BACK.get(name))
    status = main(["import", str(tmp_path / "op.onnx"), "-o", str(tmp_path / "op.net")])
    if refusal is not None:
        assert status == 1 and refusal in capsys.readouterr().err
        return
    assert status == 0, capsys.readouterr().err
    want = reference.run_outputs(graph, feeds, weights)["output", "y"]
    ours, _ = imported_outputs(tmp_path / "op.net", tmp_path / "op.onnx", feeds)
    np.testing.assert_allclose(ours["y"], want, rtol=1e-5, atol=1e-6)
