"""PyTorch weights into dslc models: a torchvision-layout ResNet-18 built with torch.nn loads
through `torch_weights` and gives PyTorch's logits within 1e-4; the shipped name tables cover
AlexNet and VGG-16; fine-tuning with a new head works through `init` and `freeze`; and every
kind of bad input (missing or extra keys, shapes, a mapping file, a .pt that is not
weights-only, no PyTorch) is one message naming the file, exit status 1."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from helpers import MODELS

import dslc
from dslc import reference
from dslc.cli import main
from dslc.ir.graph import Output
from dslc.runtime.checkpoint import CheckpointError, load_checkpoint
from dslc.runtime.recipes import model_and_recipe
from dslc.runtime.torch_names import TABLES
from dslc.runtime.torch_weights import load_torch_weights, match, read_state_dict
from dslc.runtime.trainer import Options, train
from dslc.stages import build

torch = pytest.importorskip("torch")
nn = torch.nn
save_file = pytest.importorskip("safetensors.torch").save_file


# ---- torchvision's layouts, written with torch.nn (torchvision itself is not needed) --------

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 else None)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + shortcut)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's module tree: the same attribute names, hence state_dict keys."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        for i, (cin, cout) in enumerate(zip((64,) + widths, widths), start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, 1 if i == 1 else 2),
                                                     BasicBlock(cout, cout, 1)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class FeaturesClassifier(nn.Module):
    """torchvision's AlexNet and VGG: features, adaptive average pooling, flatten, classifier."""

    def __init__(self, features: list, pool: int, classifier: list):
        super().__init__()
        self.features, self.avgpool = nn.Sequential(*features), nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(*classifier)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16(classes: int = 1000) -> nn.Module:
    """torchvision.models.vgg16's layout (configuration D, no batchnorm)."""
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        layers += [nn.MaxPool2d(2)] if v == "M" else [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
        cin = cin if v == "M" else v
    return FeaturesClassifier(layers, 7, [nn.Linear(25088, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096),
                                          nn.ReLU(), nn.Dropout(), nn.Linear(4096, classes)])


def alexnet(c=(96, 256, 384, 384, 256), pad1: int = 0, classes: int = 1000) -> nn.Module:
    """torchvision.models.alexnet's layout; the default sizes are the lectures' (models/alexnet.net),
    torchvision's own are c=(64, 192, 384, 256, 256), pad1=2 on 224x224 images."""
    features = [nn.Conv2d(3, c[0], 11, 4, pad1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(c[0], c[1], 5, padding=2),
                nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(),
                nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(), nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(3, 2)]
    return FeaturesClassifier(features, 6, [nn.Dropout(), nn.Linear(c[4] * 36, 4096), nn.ReLU(), nn.Dropout(),
                                            nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes)])


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """`module` in eval mode with batchnorm's statistics and affine parameters away from 0 and 1."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return module.eval()


def logits_of(model, weights, image: np.ndarray) -> np.ndarray:
    graph = build(model, "infer")
    graph = graph.replace(outputs=(Output("output", "logits", "fc"),))
    return reference.run_outputs(graph, {"image": image}, weights)["output", "logits"]


# ---- loading -----------------------------------------------------------------------------------

def test_resnet18_from_pytorch_gives_pytorch_logits(tmp_path):
    net = randomized(ResNet18())
    path = tmp_path / "resnet18.safetensors"
    save_file(net.state_dict(), path)
    model = dslc.load(MODELS / "resnet18.net")
    weights = load_torch_weights(model, path)
    assert sorted(weights) == sorted(p.name for p in model.graph.params)
    image = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(image)).numpy()
    got = logits_of(model, weights, image)
    err = float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))
    assert err <= 1e-4, f"logits differ by {err:.2e}"
    assert float(np.std(want)) > 0.1  # logits that carry information, not a constant


def test_pt_files_are_read_weights_only_and_match_safetensors(tmp_path):
    state = randomized(ResNet18(classes=10)).state_dict()
    torch.save(state, tmp_path / "w.pt")
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pth")  # a training checkpoint's wrapping
    save_file(state, tmp_path / "w.safetensors")
    a, b, c = (read_state_dict(tmp_path / f) for f in ("w.pt", "ckpt.pth", "w.safetensors"))
    assert sorted(a) == sorted(b) == sorted(c) == sorted(state)
    assert all(np.array_equal(a[k], c[k]) and np.array_equal(b[k], c[k]) for k in state)


def test_the_tables_cover_alexnet_and_vgg16():
    """Names and shapes only: the modules are built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        nets = {"alexnet": alexnet(), "vgg16": vgg16()}
    for name, net in nets.items():
        model = dslc.load(MODELS / f"{name}.net")
        pairs = match(model, {k: tuple(v.shape) for k, v in net.state_dict().items()})
        assert len(pairs) == len(model.graph.params) == len(net.state_dict()), name
    assert TABLES["vgg16"]["features.28"] == "stage_4.conv2d_2" and TABLES["resnet18"]["layer2.1.bn2"] == "layer2.basic.bn2"


def test_alexnet_logits_through_flatten_and_transposed_linear_layers(tmp_path):
    net = alexnet(classes=10).eval()
    path = tmp_path / "alexnet.safetensors"
    save_file(net.state_dict(), path)
    model = dslc.load(MODELS / "alexnet.net", classes=10)
    image = np.random.default_rng(1).standard_normal((1, 3, 227, 227)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(image)).numpy()
    graph = build(model, "infer").replace(outputs=(Output("output", "logits", "fc8"),))
    got = reference.run_outputs(graph, {"image": image}, load_torch_weights(model, path))["output", "logits"]
    assert float(np.max(np.abs(got - want))) <= 1e-4 * max(1.0, float(np.max(np.abs(want))))


def test_torchvisions_own_alexnet_maps_by_name_but_not_by_shape():
    with torch.device("meta"):
        net = alexnet(c=(64, 192, 384, 256, 256), pad1=2)
    with pytest.raises(CheckpointError) as info:
        match(dslc.load(MODELS / "alexnet.net"), {k: tuple(v.shape) for k, v in net.state_dict().items()})
    text = str(info.value)
    assert "shape: 'features.0.weight' is [64, 3, 11, 11], conv1.conv_relu.conv2d.weight needs [96, 3, 11, 11]" in text
    assert "shape: 'classifier.1.weight' is [4096, 9216], fc6.fc_dropout.linear.weight needs [4096, 9216]" not in text
    assert "missing" not in text and "extra" not in text


# ---- mistakes ---------------------------------------------------------------------------------

SMALL = """
model small(classes: int = 5) {{
    input image : f32[N, 1, 8, 8]
    input label : i64[N]
    conv1: x = image |> conv2d(8, kernel=3, pad=1, bias=false)
    bn1:   x = x |> batchnorm
    x = relu(x) |> global_avgpool
    fc:    logits = x |> linear(classes)
    metric accuracy(logits, label)
    loss cross_entropy(logits, label)
}}

train small {{
    data = digits(classes=[5, 6, 7, 8, 9])
    split = validation(0.1, test=0.2, seed=0)
    epochs = 3
    optimizer = adam(lr=1e-2)
    init = {init}
    freeze = ["conv1*", "bn1*"]
}}
"""


class Small(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1, self.bn1, self.fc = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Linear(8, classes)


def test_finetune_a_new_head_on_frozen_pytorch_features(tmp_path):
    state = randomized(Small(classes=10)).state_dict()  # ten classes: the head does not fit and is skipped
    save_file(state, tmp_path / "w.safetensors")
    path = tmp_path / "small.net"
    path.write_text(SMALL.format(init=f'torch_weights("{tmp_path / "w.safetensors"}", skip=["fc*"])'))
    model, recipe = model_and_recipe(path, None)
    result = train(model, recipe, tmp_path / "run", quiet=True, device="reference", echo=lambda _: None,
                   options=Options(test=True))
    after = load_checkpoint(tmp_path / "run" / "last").weights
    assert np.array_equal(after["conv1.weight"], state["conv1.weight"].numpy())  # frozen, as PyTorch had it
    for dslc_name, torch_name in (("gamma", "weight"), ("running_mean", "running_mean"), ("running_var", "running_var")):
        assert np.array_equal(after[f"bn1.{dslc_name}"], state[f"bn1.{torch_name}"].numpy())
    assert after["fc.weight"].shape == (8, 5) and result.test.metrics["accuracy"] > 0.2  # learnt beyond chance


def test_missing_extra_and_misshapen_keys_are_listed_at_once(tmp_path, capsys):
    state = randomized(Small(classes=5)).state_dict()
    state["conv1.weights"] = state.pop("conv1.weight")  # a typo
    state["fc.weight"] = torch.zeros(4, 8)  # the wrong number of classes
    state["layer9.bias"] = torch.zeros(3)  # nothing of that name
    save_file(state, tmp_path / "w.safetensors")
    path = tmp_path / "small.net"
    path.write_text(SMALL.format(init=f'torch_weights("{tmp_path / "w.safetensors"}")'))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet", "--device", "reference"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dslc: error: init = torch_weights(") and str(tmp_path / "w.safetensors") in err
    assert "(4 problems)" in err and "Traceback" not in err
    assert "missing: 'conv1.weight' (for conv1.weight) is not in the file; did you mean 'conv1.weights'?" in err
    assert "shape: 'fc.weight' is [4, 8], fc.weight needs [5, 8] (PyTorch's (out, in) layout)" in err
    assert "extra: 'conv1.weights' matches no parameter of model 'small'; did you mean 'conv1.weight'?" in err
    assert "extra: 'layer9.bias' matches no parameter of model 'small'\n" in err
    assert not (tmp_path / "run").exists()


def test_weights_that_are_not_finite_are_refused_by_name(tmp_path, capsys):
    """A state_dict of a diverged run (or float64 values beyond float32) loaded silently, and
    the run stopped at its first step: 'the loss is nan at step 1', blamed on the training."""
    state = randomized(Small(classes=5)).state_dict()
    state["fc.weight"][0, :3] = float("nan")
    state["conv1.weight"] = state["conv1.weight"].double() * 1e300
    save_file(state, tmp_path / "w.safetensors")
    path = tmp_path / "small.net"
    path.write_text(SMALL.format(init=f'torch_weights("{tmp_path / "w.safetensors"}")'))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet", "--device", "reference"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dslc: error: init = torch_weights('{tmp_path / 'w.safetensors'}'): weights that are "
                          "not finite real numbers cannot be trained from:\n")
    assert "  'fc.weight' (for fc.weight) holds 3 NaN or infinite values\n" in err
    assert "  'conv1.weight' (for conv1.weight) holds values beyond float32's range" in err
    assert "Traceback" not in err and "RuntimeWarning" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("value,message", [
    ({"w": torch.ones(2, 3, dtype=torch.float8_e4m3fn)}, r"'w' \(torch.float8_e4m3fn, strided\) cannot be read as an "
                                                           r"array \(Got unsupported ScalarType Float8_e4m3fn\)"),
    ({"w": torch.ones(2, 3).to_sparse()}, r"'w' \(torch.float32, sparse_coo\) cannot be read as an array"),
    ({3: torch.ones(2, 3)}, r"a state_dict's keys are parameter names, but it holds the key 3"),
])
def test_a_pt_tensor_numpy_cannot_hold_is_named(tmp_path, value, message):
    """A float8 or sparse tensor, or a key that is no name, was a TypeError or AttributeError
    traceback from the conversion (`dslc train` of a recipe starting from such a file)."""
    torch.save(value, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=f"w.pt: {message}"):
        read_state_dict(tmp_path / "w.pt")


def test_complex_weights_are_refused_not_made_real(tmp_path):
    """NumPy's cast to float32 dropped the imaginary parts (with a ComplexWarning) and trained on."""
    state = randomized(Small(classes=5)).state_dict()
    state["fc.bias"] = state["fc.bias"].to(torch.complex64)
    save_file(state, tmp_path / "w.safetensors")
    (tmp_path / "s.net").write_text(SMALL.format(init="none"))
    with pytest.raises(CheckpointError, match=r"'fc.bias' \(for fc.bias\) holds complex numbers"):
        load_torch_weights(dslc.load(tmp_path / "s.net"), tmp_path / "w.safetensors")


def test_a_mapping_file_renames_and_ignores_keys(tmp_path):
    state = randomized(Small(classes=5)).state_dict()
    renamed = {k.replace("conv1", "stem.conv").replace("fc", "head"): v for k, v in state.items()}
    renamed["aux.weight"] = torch.zeros(2)
    save_file(renamed, tmp_path / "w.safetensors")
    (tmp_path / "s.net").write_text(SMALL.format(init="none"))
    model = dslc.load(tmp_path / "s.net")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"stem.conv": "conv1", "head.weight": "fc.weight", "head.bias": "fc.bias",
                                   "aux": None}))
    weights = load_torch_weights(model, tmp_path / "w.safetensors", mapping=str(mapping))
    assert np.array_equal(weights["fc.weight"], state["fc.weight"].numpy().T)
    mapping.write_text(json.dumps({"stem.conv": "conv_1"}))
    with pytest.raises(CheckpointError, match=r"map.json: 'stem.conv': 'conv_1' is no layer or parameter of model "
                                              r"'small'; did you mean 'conv1'\?"):
        load_torch_weights(model, tmp_path / "w.safetensors", mapping=str(mapping))


class NotWeights:
    """Pickled by torch.save as a class reference: weights_only loading must refuse it."""

    def __init__(self):
        self.w = torch.zeros(2)


def test_a_pt_file_that_is_not_weights_only_is_refused(tmp_path, capsys):
    torch.save(NotWeights(), tmp_path / "model.pt")
    path = tmp_path / "small.net"
    path.write_text(SMALL.format(init=f'torch_weights("{tmp_path / "model.pt"}")'))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet", "--device", "reference"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'model.pt'}: not a weights-only file, so dslc will not load it (Unsupported global: " \
           "GLOBAL test_torch_weights.NotWeights was not an allowed global by default); save model.state_dict()" in err
    assert "Traceback" not in err and "weights_only=False" not in err


def test_reading_pt_without_pytorch_says_what_to_do(tmp_path, monkeypatch):
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CheckpointError, match="needs PyTorch"):
        read_state_dict(tmp_path / "w.pt")


@pytest.mark.parametrize("name,content,message", [
    ("w.safetensors", b"not safetensors at all", "not a readable safetensors file"),
    ("w.pt", b"", "not a readable PyTorch file"),
    ("w.pt", b"garbage", r"not a weights-only file, so dslc will not load it \(Unsupported operand 103\)"),
    ("w.npz", b"", "unknown format '.npz'"),
])
def test_unreadable_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(tmp_path / name)
    with pytest.raises(CheckpointError, match="absent.safetensors: no such file"):
        read_state_dict(tmp_path / "absent.safetensors")


def test_a_state_dict_that_is_not_a_regular_file_is_named_for_what_it_is(tmp_path):
    """A directory or a FIFO named as the weights is refused for what it is (a FIFO without
    waiting on it), not called missing."""
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="dir.safetensors: is a directory"):
        read_state_dict(tmp_path / "dir.safetensors")
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(CheckpointError, match="pipe.pt: is a FIFO, not a regular file"):
        read_state_dict(tmp_path / "pipe.pt")


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt"])
def test_a_state_dict_larger_than_memory_is_refused_before_it_is_read(tmp_path, monkeypatch, name):
    """Every tensor of the file is read into memory: where they would not fit, the file is
    refused with the sizes at once, instead of read until memory runs out."""
    from dslc import files
    state = {"w": torch.zeros(64, 64)}
    save_file(state, tmp_path / name) if name.endswith(".safetensors") else torch.save(state, tmp_path / name)
    assert read_state_dict(tmp_path / name)["w"].shape == (64, 64)
    monkeypatch.setattr(files, "memory_available", lambda: 1000)
    with pytest.raises(CheckpointError, match=r"reading its state_dict \(.*\) needs .* of memory; .* is available"):
        read_state_dict(tmp_path / name)
