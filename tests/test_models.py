"""The example models in models/: each compiles and has its known parameter count.

Counts are learnable parameters as `dslc check` reports them ("Total params"):
weights, biases and batchnorm gamma/beta; batchnorm running statistics are
buffers and do not count. The counts of lenet5, alexnet, vgg16 and resnet20 are
the well-known ones (each model file derives its count layer by layer in its
header); the others are derived by hand below (a 3x3 conv without bias has
9*c_in*c_out weights, batchnorm 2*c, linear in*out + out).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dslc
from dslc.recipe.schema import program_recipes
from dslc.ir.verify import verify
from helpers import MODELS


PARAMS = {
    # 64*100 + 100 + 100*10 + 10
    "two_layer.net": 7_510,
    # 64*128 + 128 + 128*10 + 10
    "digits_mlp.net": 9_610,
    # regression: 2*64 + 64 + 64*64 + 64 + 64*1 + 1
    "curve_mlp.net": 192 + 4_160 + 65,  # 4,417
    # conv 3*3*1*16 + 3*3*16*32 + 3*3*32*64, batchnorm 2*(16 + 32 + 64), linear 64*10 + 10
    "digits_cnn.net": 144 + 4_608 + 18_432 + 224 + 650,  # 24,058
    "lenet5.net": 61_706,
    "alexnet.net": 62_378_344,
    "vgg16.net": 138_357_544,
    "resnet20.net": 269_722,
    "resnet18.net": 11_689_512,  # torchvision's resnet18
    # convs 9*1*32 + 9*32*64, batchnorm 2*32 + 2*64, fc 64*7*7*128 + 128, out 128*10 + 10
    "small_cnn.net": 288 + 18_432 + 64 + 128 + 401_536 + 1_290,  # 421,738
    # linears without bias (batchnorm follows): 784*512 + 512*256, batchnorm 2*512 + 2*256, out 256*10 + 10
    "mlp_bn.net": 401_408 + 131_072 + 1_024 + 512 + 2_570,  # 536,586
    # convs 9*(3*32 + 32*32 + 32*64 + 64*64), batchnorm 2*(32 + 32 + 64 + 64), fc 4096*256 + 256, out 256*10 + 10
    "cifar_cnn.net": 65_376 + 384 + 1_048_832 + 2_570,  # 1,117,162
    # convs 9*1*16 + 9*16*32, groupnorm 2*16, instancenorm 2*32, fc 512*64 (no bias), layernorm 2*64, out 64*10 + 10
    "norm_cnn.net": 144 + 4_608 + 32 + 64 + 32_768 + 128 + 650,  # 38,394
}

MODEL_FILES = sorted(p.name for p in MODELS.glob("*.net"))


def _dslc_cli() -> list[str]:
    """The installed `dslc` script, preferring the one beside this interpreter."""
    beside = Path(sys.executable).with_name("dslc")
    found = str(beside) if beside.exists() else shutil.which("dslc")
    assert found, "the dslc console script is not installed (pip install -e .)"
    return [found]


def check_json(path: Path, *sets: str) -> dict:
    """`dslc check PATH --json [--set k=v ...]`, parsed."""
    cmd = _dslc_cli() + ["check", str(path), "--json"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_every_model_file_has_a_known_count():
    # A new models/*.net without an entry in PARAMS fails here, as does a stale entry.
    assert MODEL_FILES, f"no models in {MODELS}"
    assert MODEL_FILES == sorted(PARAMS)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_param_count(name):
    model = dslc.load(MODELS / name)
    assert verify(model.graph) == []
    summary = model.summary()
    assert summary.params == PARAMS[name]
    assert summary.trainable_params == PARAMS[name]
    # Each example ships a valid training recipe for its model that says what data and optimiser it uses.
    recipes, errors = program_recipes(model.program, lambda _: model.graph)
    assert [e.message for e in errors] == []
    assert model.name in recipes, f"{name} has no `train {model.name} {{ ... }}` recipe"
    given = {e.key for t in model.program.trains for e in t.entries}
    assert {"data", "batch", "optimizer"} <= given


@pytest.mark.parametrize("name", ["vgg16.net", "resnet20.net"])
def test_cli_param_count(name):
    assert check_json(MODELS / name)["params"] == PARAMS[name]


def _shape(model, layer: str) -> tuple:
    return tuple(model.graph[layer].type.shape)


def test_lenet5_layer_shapes():
    m = dslc.load(MODELS / "lenet5.net")
    sizes = [_shape(m, layer)[1:] for layer in ("c1.conv2d", "s2", "c3.conv2d", "s4")]
    assert sizes == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5)]
    assert m.summary().outputs["probs"] == "f32[N, 10]"


def _last_layer_in(model, prefix: str):
    return [n for n in model.graph.nodes if n.name.startswith(prefix) and n.op != "param"][-1]


def test_resnet20_stage_shapes():
    m = dslc.load(MODELS / "resnet20.net")
    stages = [tuple(_last_layer_in(m, f"stage{i}.").type.shape[1:]) for i in (1, 2, 3)]
    assert stages == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    # 1 + 2*3*n convolutions (shortcuts add none) and one linear layer: 6n + 2 = 20 weight layers.
    weighted = [n for n in m.graph.nodes if n.op in ("conv2d", "linear")]
    assert len(weighted) == 20


def test_vgg16_has_13_convs_and_7x7_features():
    m = dslc.load(MODELS / "vgg16.net")
    convs = [n for n in m.graph.nodes if n.op == "conv2d"]
    assert len(convs) == 13
    pools = [n for n in m.graph.nodes if n.op == "maxpool"]
    assert [tuple(p.type.shape[2:]) for p in pools] == [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7)]


def test_alexnet_feature_sizes():
    m = dslc.load(MODELS / "alexnet.net")
    assert [tuple(n.type.shape[1:]) for n in m.graph.nodes if n.op == "maxpool"] == \
        [(96, 27, 27), (256, 13, 13), (256, 6, 6)]


# ---- hyper-parameter overrides ------------------------------------------------------

def test_set_digits_mlp_hidden():
    # 64*32 + 32 + 32*10 + 10
    assert dslc.load(MODELS / "digits_mlp.net", hidden=32).summary().params == 2_410
    assert check_json(MODELS / "digits_mlp.net", "hidden=32")["params"] == 2_410


def test_set_resnet_depth_gives_resnet32():
    # n=5 adds two basic blocks per stage to ResNet-20:
    # 2*2*(9*16*16 + 32) + 2*2*(9*32*32 + 64) + 2*2*(9*64*64 + 128) = 9,344 + 37,120 + 147,968 = 194,432
    m = dslc.load(MODELS / "resnet20.net", n=5)
    assert m.summary().params == 269_722 + 194_432  # 464,154, the published ResNet-32
    assert len([n for n in m.graph.nodes if n.op == "conv2d"]) == 31


def test_set_resnet_width():
    # Doubling the width doubles the stem conv (its input stays 3 channels), multiplies every other conv
    # by 4 and every batchnorm by 2. At width 16: stem 9*3*16 = 432, the other convs
    # 6*9*16*16 + (9*16*32 + 5*9*32*32) + (9*32*64 + 5*9*64*64) = 267,264, batchnorms 2*(7*16 + 6*32 + 6*64)
    # = 1,376, classifier 64*10 + 10 = 650; at width 32 the classifier is 128*10 + 10.
    assert 432 + 267_264 + 1_376 + 650 == PARAMS["resnet20.net"]
    want = 2 * 432 + 4 * 267_264 + 2 * 1_376 + 1_290  # 1,073,962
    assert check_json(MODELS / "resnet20.net", "width=32")["params"] == want


def test_set_classes_changes_only_the_classifier():
    base = dslc.load(MODELS / "lenet5.net").summary().params
    assert dslc.load(MODELS / "lenet5.net", classes=100).summary().params == base + 90 * 84 + 90
