"""`dslc import`: an ONNX graph back to a .net model and a weights file that `torch_weights`
loads. A model exported by dslc (batchnorm folded or not) and one exported by PyTorch come
back computing what onnxruntime computes from the ONNX file, within 1e-4: every op dslc
exports, and each op of exported models it reads (from a small PyTorch export, or a graph
built with onnx.helper where PyTorch does not write the op), shape arithmetic folded at
import included; an ONNX op or attribute dslc cannot express is one message naming every
such node (exit status 1)."""
from __future__ import annotations


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

from dslc.interop import onnx_check, onnx_export, onnx_ops  # noqa: E402

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


def test_names_that_are_not_utf8_go_through_export_and_import(tmp_path, capsys):
    """A .net file, an .onnx file or an -o named with a byte that is not UTF-8 (a lone
    surrogate in Python) was a UnicodeEncodeError traceback: export put the name into the
    ONNX metadata (protobuf strings are UTF-8), import into the .net file's header comments."""
    net, onnx_file, out = tmp_path / "m\udcff.net", tmp_path / "o\udcff.onnx", tmp_path / "b\udcff.net"
    net.write_bytes((MODELS / "two_layer.net").read_bytes())
    assert main(["export", str(net), "-o", str(onnx_file)]) == 0
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["dslc.source"].endswith("m\\udcff.net")
    assert main(["import", str(onnx_file), "-o", str(out)]) == 0
    assert "Imported from o\\udcff.onnx" in out.read_text() and dslc.load(out).graph.loss is not None
    capsys.readouterr()


def test_an_output_that_is_written_into_is_refused(tmp_path, capsys):
    """-o a FIFO nobody reads refused the .net file but left its weights beside it (written
    first); -o /dev/null (here a link to it) made a stray NAME.safetensors beside it. Both are
    refused before anything is written: import writes two files, so -o names a file."""
    import os

    model = dslc.load(MODELS / "two_layer.net")
    onnx_export.save(onnx_export.export(model, trained_like(model)), tmp_path / "t.onnx")
    os.mkfifo(tmp_path / "pipe.net")
    (tmp_path / "null.net").symlink_to(os.devnull)
    for name in ("pipe.net", "null.net"):
        assert main(["import", str(tmp_path / "t.onnx"), "-o", str(tmp_path / name)]) == 1
        assert "so -o names a file, not a device, a pipe or standard output" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null.net", "pipe.net", "t.onnx"]


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


def _external_matmul(tmp_path, location: str, length: int | str | None = None):
    """x [N, 4] @ W [4, 3], W stored outside the file at `location` (beside it), `length` bytes."""
    from onnx import TensorProto, numpy_helper
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in [("location", location)] + ([("length", str(length))] if length is not None else []):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "ext",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    (tmp_path / "ext.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                        .SerializeToString())
    return tmp_path / "ext.onnx"


def test_weights_stored_outside_the_file_are_read_within_bounds(tmp_path, capsys):
    """External data is imported (the weights beside the file), and refused before it is read
    where it could not be held: one tensor naming a sparse 3 GiB file was read for a minute,
    up to twice its size in memory, before protobuf refused it."""
    (tmp_path / "w.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    path = _external_matmul(tmp_path, "w.bin", 48)
    assert main(["import", str(path), "-o", str(tmp_path / "ext.net")]) == 0
    x = np.ones((2, 4), np.float32)
    assert_close(*imported_outputs(tmp_path / "ext.net", path, {"x": x}))
    with open(tmp_path / "huge.bin", "wb") as f:
        f.truncate(3 * 2**30)  # sparse: no disk used
    for length in (None, 3 * 2**30):
        path = _external_matmul(tmp_path, "huge.bin", length)
        assert main(["import", str(path), "-o", str(tmp_path / "huge.net")]) == 1
        assert "hold 3 GiB" in capsys.readouterr().err and not (tmp_path / "huge.net").exists()
    path = _external_matmul(tmp_path, "w.bin", "abc")
    assert main(["import", str(path), "-o", str(tmp_path / "bad.net")]) == 1
    assert "tensor 'W' names its external data badly" in capsys.readouterr().err


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


# ---- the ops of exported models: each from a small PyTorch model ---------------------------------

class _Fn:
    """A torch.nn.Module computing `f(torch, x)`, made when torch is there (it is optional)."""

    def __init__(self, f):
        self.f = f

    def module(self, torch):
        f = self.f

        class Fn(torch.nn.Module):
            def forward(self, x):
                return f(torch, x)
        return Fn()


def _seq(*layers):
    """torch.nn.Sequential of layers named as nn attributes with their arguments: ("ReLU6",)."""
    return lambda torch: torch.nn.Sequential(*(getattr(torch.nn, name)(*args, **kw) for name, args, kw in layers))


SQRT2 = 2.0 ** 0.5
TORCH_OPS = [  # id, the module (given torch), the input's shape, the opset, what the .net says
    ("relu6", _seq(("Conv2d", (2, 3, 3), {"padding": 1}), ("ReLU6", (), {})), (2, 2, 5, 5), 17,
     "clip(min=0.0, max=6.0)"),
    ("clamp_min", _Fn(lambda t, x: t.clamp(x, min=-0.5)).module, (2, 5), 17, "clip(min=-0.5)"),
    ("gelu_erf", _seq(("GELU", (), {})), (2, 5), 17, "|> gelu"),
    ("gelu_op", _seq(("GELU", (), {})), (2, 5), 20, "|> gelu"),
    ("gelu_bert", _Fn(lambda t, x: x * 0.5 * (1.0 + t.erf(x / SQRT2))).module, (2, 5), 17, "|> gelu"),
    ("view", _Fn(lambda t, x: x.view(x.size(0), -1) * 2).module, (2, 3, 2, 2), 17, "|> flatten"),
    ("view_shape", _Fn(lambda t, x: x.reshape(x.shape[0], x.shape[2], -1)).module, (2, 3, 2, 2), 17,
     "|> reshape([-1, 2, 6])"),
    ("unsqueeze", _Fn(lambda t, x: (x.unsqueeze(1) * 2).squeeze(1)).module, (2, 3), 17, "|> reshape([-1, 1, 3])"),
    ("floor", _Fn(lambda t, x: t.floor(x * 3)).module, (2, 5), 17, "// 1.0"),
    ("floor_div", _Fn(lambda t, x: t.div(x, 0.25, rounding_mode="floor")).module, (2, 5), 17, " // 0.25"),
    ("amax", _Fn(lambda t, x: t.amax(x, dim=1)).module, (2, 3, 4), 17, "max(axis=1, keepdims=false)"),
    ("amin", _Fn(lambda t, x: t.amin(x, dim=-1, keepdim=True)).module, (2, 3, 4), 17, "min(axis=2, keepdims=true)"),
    ("max_all", _Fn(lambda t, x: x.max() * 2).module, (2, 3, 4), 18, "max(keepdims=false)"),
    ("upsample_nearest", _seq(("Upsample", (), {"scale_factor": 2})), (2, 3, 2, 3), 17,
     "upsample(scale=2, mode=nearest)"),
    ("upsample_bilinear", _seq(("Upsample", (), {"scale_factor": (2, 3), "mode": "bilinear"})), (2, 3, 2, 3), 17,
     "upsample(scale=[2, 3], mode=bilinear)"),
    ("interpolate_size", _Fn(lambda t, x: t.nn.functional.interpolate(x, size=(4, 9))).module, (2, 3, 2, 3), 17,
     "upsample(scale=[2, 3], mode=nearest)"),  # sizes computed from Shape(x): the batch copied
    ("argmax", _Fn(lambda t, x: x.argmax(dim=1)).module, (2, 5), 17, "argmax(axis=1, keepdims=false)"),
]


def torch_export(torch, net, shape, path, opset=17):
    """`net` exported by PyTorch's TorchScript exporter with a symbolic batch: input x, output y."""
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter: the new one needs onnxscript
        torch.onnx.export(net.eval(), (torch.randn(*shape),), path, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    return path


@pytest.mark.parametrize("make,shape,opset,says", [c[1:] for c in TORCH_OPS], ids=[c[0] for c in TORCH_OPS])
def test_an_op_of_a_pytorch_export_comes_back(tmp_path, make, shape, opset, says):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    path = torch_export(torch, make(torch), shape, tmp_path / "t.onnx", opset)
    assert main(["import", str(path), "-o", str(tmp_path / "t.net")]) == 0
    assert says in (tmp_path / "t.net").read_text()
    feeds = {"x": np.random.default_rng(2).standard_normal((3,) + shape[1:]).astype(np.float32)}  # another batch
    assert_close(*imported_outputs(tmp_path / "t.net", path, feeds))


# ---- ops PyTorch does not write itself (it spells LRN with pooling), built with onnx.helper -------

def helper_model(path, nodes, x_shape, y_shape, inits=(), opset=17, y_type=onnx.TensorProto.FLOAT):
    """A one-input (x), one-output (y) ONNX model of `nodes`, the batch symbolic."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", y_type, y_shape)],
                              [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


F64 = onnx.TensorProto.DOUBLE
HELPER_OPS = [  # id, nodes, initializers, x's shape, y's shape, opset, what the .net says
    ("lrn", [helper.make_node("LRN", ["x"], ["y"], size=5, alpha=0.02, beta=0.75, bias=2.0)], [],
     ["N", 7, 3, 3], ["N", 7, 3, 3], 17, "lrn(size=5, alpha=0.02, beta=0.75, k=2.0)"),
    ("clip_attributes", [helper.make_node("Clip", ["x"], ["y"], min=-0.25)], [],  # opset 6: bounds as attributes
     ["N", 4], ["N", 4], 6, "clip(min=-0.25)"),
    ("cast_floats", [helper.make_node("Cast", ["x"], ["c"], to=F64), helper.make_node("Sqrt", ["c"], ["s"]),
                     helper.make_node("Cast", ["s"], ["y"], to=onnx.TensorProto.FLOAT)], [],
     ["N", 4], ["N", 4], 17, "x |> sqrt"),
    ("resize_sizes", [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", axes=[2, 3],
                                       coordinate_transformation_mode="half_pixel")],
     [("sizes", np.array([6, 4], np.int64))], ["N", 2, 2, 2], ["N", 2, 6, 4], 18,
     "upsample(scale=[3, 2], mode=nearest)"),
    ("gelu_mul_form", [  # x / sqrt 2 as a product, operands the other way round: still one gelu
        helper.make_node("Mul", ["r", "x"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["one", "e"], ["a"]), helper.make_node("Mul", ["half", "a"], ["h"]),
        helper.make_node("Mul", ["h", "x"], ["y"])],
     [("r", np.float32(0.5 ** 0.5)), ("one", np.float32(1)), ("half", np.float32(0.5))], ["N", 5], ["N", 5], 17,
     "= x |> gelu\n"),
    ("shape_arithmetic", [  # [N, C / 2, -1], C halved in floats and cast back
        helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),
        helper.make_node("Cast", ["c"], ["cf"], to=onnx.TensorProto.FLOAT), helper.make_node("Div", ["cf", "two"], ["hf"]),
        helper.make_node("Cast", ["hf"], ["h"], to=onnx.TensorProto.INT64),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]), helper.make_node("Unsqueeze", ["h", "axis0"], ["h1"]),
        helper.make_node("Concat", ["n1", "h1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"])],
     [("i0", np.int64(0)), ("i1", np.int64(1)), ("two", np.float32(2)), ("axis0", np.array([0], np.int64)),
      ("rest", np.array([-1], np.int64))], ["N", 4, 3], ["N", 2, 6], 17, "x |> reshape([-1, 2, 6])"),
    ("reduce_max_axes_input", [helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0)],
     [("axes", np.array([-1], np.int64))], ["N", 3, 4], ["N", 3], 18, "max(axis=2, keepdims=false)"),
]


@pytest.mark.parametrize("nodes,inits,x_shape,y_shape,opset,says", [c[1:] for c in HELPER_OPS],
                         ids=[c[0] for c in HELPER_OPS])
def test_an_op_of_an_onnx_graph_comes_back(tmp_path, nodes, inits, x_shape, y_shape, opset, says):
    path = helper_model(tmp_path / "g.onnx", nodes, x_shape, y_shape, inits, opset)
    assert main(["import", str(path), "-o", str(tmp_path / "g.net")]) == 0
    assert says in (tmp_path / "g.net").read_text()
    x = np.random.default_rng(3).standard_normal([3] + x_shape[1:]).astype(np.float32)
    assert_close(*imported_outputs(tmp_path / "g.net", path, {"x": np.abs(x) if "Sqrt" in str(nodes) else x}))


def test_what_has_no_net_form_is_refused_at_once(tmp_path, capsys):
    """Each node that cannot be read says why, all in one message: a cubic Resize, a computed
    Clip bound, a float-to-integer Cast, ArgMax's last index, two of three axes, GELU's tanh
    form, a shape used as data."""
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], name="cubic", mode="cubic"),
             helper.make_node("Clip", ["x", "x"], ["c"], name="clip"),
             helper.make_node("Cast", ["x"], ["i"], name="cast", to=onnx.TensorProto.INT64),
             helper.make_node("ArgMax", ["x"], ["a"], name="argmax", axis=1, select_last_index=1),
             helper.make_node("ReduceMax", ["x", "axes"], ["m"], name="max"),
             helper.make_node("Gelu", ["x"], ["g"], name="gelu", approximate="tanh"),
             helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Expand", ["x", "s"], ["y"], name="expand")]
    path = helper_model(tmp_path / "g.onnx", nodes, ["N", 2, 3, 4], ["N", 2, 3, 4],
                        [("scales", np.array([1, 1, 2, 2], np.float32)), ("axes", np.array([1, 2]))], 20)
    assert main(["import", str(path), "-o", str(tmp_path / "g.net")]) == 1
    err = capsys.readouterr().err
    assert "8 node(s) have no .net equivalent" in err and not (tmp_path / "g.net").exists()
    for line in ["'cubic' (Resize): mode=cubic", "'clip' (Clip): 'x' must be a constant",
                 "'cast' (Cast): a cast from f32 to i64", "'argmax' (ArgMax): select_last_index=1",
                 "'max' (ReduceMax): axes [1, 2]", "'gelu' (Gelu): approximate=tanh",
                 "'shape' (Shape): a shape read at run time", "'expand' (Expand): dslc has no such op"]:
        assert line in err, line


def test_a_node_against_its_schema(tmp_path, capsys):
    """onnx.checker reads the file first: the readers never meet a node of the wrong arity."""
    path = helper_model(tmp_path / "g.onnx", [helper.make_node("Erf", ["x", "x"], ["y"])], ["N", 2], ["N", 2])
    assert main(["import", str(path), "-o", str(tmp_path / "g.net")]) == 1
    err = capsys.readouterr().err
    assert "not a valid ONNX model" in err and "Traceback" not in err and not (tmp_path / "g.net").exists()


# ---- a dslc model of these ops: exported by `dslc export`, imported back ------------------------

ROUND_TRIP_NET = """
model roundtrip(width: int = 6) {
    input image : f32[N, 3, 8, 8]
    c1: x = image |> conv2d(width, kernel=3, pad=same) |> lrn(size=3, alpha=0.01, k=2.0) |> clip(min=0.0, max=6.0)
    x = x |> maxpool(2) |> upsample(scale=2, mode=bilinear) |> groupnorm(groups=2) |> gelu
    x = x |> upsample(scale=2) |> maxpool(2) |> flatten
    fc: logits = x |> linear(10)
    output logits = logits
}
"""


@pytest.fixture
def round_trip(net, tmp_path, capsys):
    """The model above exported by `dslc export` (its seed-0 weights) and imported back: the
    paths of the imported .net and of the ONNX file, and the original model."""
    source = net(ROUND_TRIP_NET, "rt.net")
    assert main(["export", str(source), "-o", str(tmp_path / "rt.onnx")]) == 0
    assert main(["import", str(tmp_path / "rt.onnx"), "-o", str(tmp_path / "back.net")]) == 0
    capsys.readouterr()
    return tmp_path / "back.net", tmp_path / "rt.onnx", dslc.load(source)


def test_a_dslc_model_of_gelu_clip_lrn_upsample_comes_back(round_trip):
    """Every op as itself (gelu from its Erf chain; groupnorm's Reshape to Shape(x) folded), the
    outputs those of the original and of onnxruntime, for a batch other than the exporter's."""
    back, onnx_path, original = round_trip
    text = back.read_text()
    for op in ("lrn(size=3, alpha=0.01, beta=0.75, k=2.0)", "clip(min=0.0, max=6.0)", "|> gelu",
               "upsample(scale=2, mode=bilinear)", "upsample(scale=2, mode=nearest)", "reshape([-1, 6, 8, 8])"):
        assert op in text, op
    feeds = {"image": np.random.default_rng(4).standard_normal((5, 3, 8, 8)).astype(np.float32)}
    ours, theirs = imported_outputs(back, onnx_path, feeds)
    assert_close(ours, theirs)
    want = reference.run_outputs(build(original, "infer"), feeds, original.init(seed=0))
    np.testing.assert_allclose(ours["logits"], want["output", "logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_an_imported_model_compiles_and_runs(round_trip):
    """The imported .net through dslc's CPU kernels (Numba), not only its reference: onnxruntime's
    outputs again. About 15 s from an empty kernel cache."""
    back, onnx_path, _ = round_trip
    model = dslc.load(back)
    feeds = {"image": np.random.default_rng(5).standard_normal((3, 3, 8, 8)).astype(np.float32)}
    ours = model.compile("cpu").forward(load_torch_weights(model, back.with_suffix(".safetensors")), feeds)
    assert_close(ours, onnx_check.run_onnx(onnx.load(onnx_path), feeds))


# ---- what a mistaken or failed import leaves on disk, and what it reports ----------------------

def _small_classifier(path):
    """x [N, 4] -> Gemm 3 -> Softmax: an import that writes a .net and its weights."""
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z"], name="fc", transB=1),
             helper.make_node("Softmax", ["z"], ["y"], name="probs")]
    return helper_model(path, nodes, ["N", 4], ["N", 3], [("w", np.ones((3, 4), np.float32)),
                                                          ("b", np.zeros(3, np.float32))])


def test_a_failed_import_replaces_neither_file(tmp_path, capsys):
    """The .net and its weights are written together: a .net path that cannot be written (a
    directory) leaves the weights file beside it as it was, and no temporary behind."""
    path = _small_classifier(tmp_path / "g.onnx")
    (tmp_path / "d.net").mkdir()
    (tmp_path / "d.safetensors").write_text("precious")
    assert main(["import", str(path), "-o", str(tmp_path / "d.net")]) == 1
    assert f"cannot write {tmp_path / 'd.net'}: it is a directory" in capsys.readouterr().err
    assert (tmp_path / "d.safetensors").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.net", "d.safetensors", "g.onnx"]
    assert main(["import", str(path), "-o", str(tmp_path / "g.net")]) == 0  # a good -o: both written
    assert (tmp_path / "g.net").exists() and (tmp_path / "g.safetensors").exists()


def test_an_output_that_is_what_the_import_reads_or_writes_is_refused(tmp_path, capsys):
    """-o naming the ONNX file, a weights file that would be the ONNX file, or an -o ending in
    .safetensors (its weights would overwrite it) is a usage error (exit 2): nothing written."""
    path = _small_classifier(tmp_path / "g.onnx")
    original = path.read_bytes()
    assert main(["import", str(path), "-o", str(path)]) == 2
    assert f"-o {path} is {path}, which this command reads" in capsys.readouterr().err
    (tmp_path / "m.safetensors").write_bytes(original)  # an ONNX file under a weights file's name
    assert main(["import", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "m.net")]) == 2
    assert "writes its weights to" in capsys.readouterr().err
    assert main(["import", str(path), "-o", str(tmp_path / "w.safetensors")]) == 2
    assert "cannot end in .safetensors" in capsys.readouterr().err
    assert path.read_bytes() == original == (tmp_path / "m.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "m.safetensors"]


def test_a_translation_that_does_not_compile_is_refused_naming_its_node(tmp_path, capsys):
    """The .net text is compiled before anything is written: a Relu of int64 values, which
    dslc's relu refuses, names the ONNX node (exit 1), not a .net file that `dslc check` fails."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="act")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.INT64, ["N", 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "i.onnx")
    assert main(["import", str(tmp_path / "i.onnx"), "-o", str(tmp_path / "i.net")]) == 1
    err = capsys.readouterr().err
    assert "node 'act' (Relu): relu expects a floating-point tensor, got i64[N, 4] (E0302" in err
    assert "Traceback" not in err and not (tmp_path / "i.net").exists()


def test_weights_that_do_not_fit_their_graph_are_refused_naming_their_node(tmp_path, capsys):
    """The ONNX checker does not compare an initializer's shape with the tensors it meets: a
    Gemm weight of 5 rows on 4 features, or a BatchNormalization scale of 3 on 2 channels,
    was written beside a .net file that torch_weights then refused to initialise (exit 0)."""
    gemm = helper_model(tmp_path / "g.onnx", [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")],
                        ["N", 4], ["N", 3], [("w", np.ones((5, 3), np.float32))])
    assert main(["import", str(gemm), "-o", str(tmp_path / "g.net")]) == 1
    err = capsys.readouterr().err
    assert err == (f"dslc: error: {gemm}: 1 tensor(s) do not fit the shapes of the graph they are in:\n"
                   "  node 'fc' (Gemm): its tensor for 'fc.weight' is [3, 5], but the .net layer it becomes needs "
                   "[3, 4]\n")
    ones, twos = np.ones(2, np.float32), np.ones(3, np.float32)
    norm = helper_model(tmp_path / "b.onnx", [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                                               name="bn")],
                        ["N", 2, 4, 4], ["N", 2, 4, 4], [("s", twos), ("b", ones), ("m", ones), ("v", ones)])
    assert main(["import", str(norm), "-o", str(tmp_path / "b.net")]) == 1
    err = capsys.readouterr().err
    assert "1 tensor(s) do not fit" in err and "node 'bn' (BatchNormalization): its tensor for 'bn.weight' is [3]" in err
    assert not list(tmp_path.glob("*.net")) and not list(tmp_path.glob("*.safetensors"))


def test_what_failed_is_reported_once_with_its_shape_as_written(tmp_path, capsys):
    """A node reading a refused input, or a chain (Floor of a Div) reading a refused node, is not
    reported again; an input's symbolic sizes are shown by their ONNX names."""
    path = helper_model(tmp_path / "d.onnx", [helper.make_node("Relu", ["x"], ["y"], name="act")],
                        ["N", "C", 4], ["N", "C", 4])
    assert main(["import", str(path), "-o", str(tmp_path / "d.net")]) == 1
    err = capsys.readouterr().err
    assert "1 node(s)" in err and "input 'x': shape [N, C, 4]: only the batch axis" in err and "'act'" not in err
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[0, 0, 1, 1]),
             helper.make_node("Mul", ["c", "two"], ["m"], name="mul"),
             helper.make_node("Div", ["m", "half"], ["q"], name="div"),
             helper.make_node("Floor", ["q"], ["y"], name="floor")]
    inits = [("w", np.ones((2, 1, 3, 3), np.float32)), ("two", np.float32(2)), ("half", np.float32(0.5))]
    path = helper_model(tmp_path / "f.onnx", nodes, ["N", 1, 6, 6], ["N", 2, 5, 5], inits)
    assert main(["import", str(path), "-o", str(tmp_path / "f.net")]) == 1
    err = capsys.readouterr().err
    assert "1 node(s)" in err and "node 'conv' (Conv): asymmetric pads [0, 0, 1, 1]" in err and "'floor'" not in err


UNEVEN_SAME = """
model uneven {
    input image : f32[N, 2, 9, 9]
    x = image |> conv2d(4, kernel=2, stride=2, pad=same) |> relu
    x = x |> maxpool(kernel=2, stride=2, pad=same) |> avgpool(kernel=2, stride=2, pad=same)
    output y = x |> flatten
}
"""


def test_an_uneven_pad_same_comes_back_as_itself(net, tmp_path, capsys):
    """dslc exports pad=same with a stride as the explicit pads SAME_UPPER gives (one more row
    below than above on 9 rows): read back as pad=same, the same outputs as onnxruntime's."""
    source = net(UNEVEN_SAME, "u.net")
    assert main(["export", str(source), "-o", str(tmp_path / "u.onnx")]) == 0
    pads = [list(a.ints) for n in onnx.load(tmp_path / "u.onnx").graph.node for a in n.attribute if a.name == "pads"]
    assert [0, 0, 1, 1] in pads  # uneven: the test reads what it means to
    assert main(["import", str(tmp_path / "u.onnx"), "-o", str(tmp_path / "back.net")]) == 0, capsys.readouterr().err
    text = (tmp_path / "back.net").read_text()
    for op in ("conv2d(4, kernel=2, stride=2, pad=same", "maxpool(kernel=2, stride=2, pad=same)",
               "avgpool(kernel=2, stride=2, pad=same)"):
        assert op in text, op
    feeds = {"image": np.random.default_rng(6).standard_normal((3, 2, 9, 9)).astype(np.float32)}
    assert_close(*imported_outputs(tmp_path / "back.net", tmp_path / "u.onnx", feeds))
