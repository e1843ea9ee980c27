"""The trainer end to end on the shipped digits, and the pieces it is made of: the executor,
data layout checks, class selection, gradient clipping, mixup's blended loss, frozen
batchnorm, early stopping, steps-based runs and NaN detection."""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

import dslc
from dslc.diagnostics import CompileError
from dslc.recipe import schema as R
from dslc.passes.train_step import train_step
from dslc.reference import run_outputs
from dslc.runtime.data import Batch, DataError, build_augment, digits
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.errors import DeviceError, TrainError
from dslc.runtime.executor import ReferenceExecutor, executor_for
from dslc.runtime.mixup import mix_feeds, mix_losses
from dslc.runtime.layout import layout
from dslc.runtime.prepare import load_data, select_classes
from dslc.runtime.recipes import model_and_recipe, split_sets
from dslc.runtime.runs import read_records
from dslc.runtime.trainer import Options, train
from helpers import MODELS

MLP = """
model mlp(hidden: int = 32, classes: int = 10, p: float = 0.0) {{
    input image : f32[N, 64]
    input label : i64[N]
    fc1: h = image |> linear(hidden) |> relu |> dropout(p=p)
    fc2: logits = h |> linear(classes)
    metric accuracy(logits, label)
    loss cross_entropy(logits, label)
}}

train mlp {{
    data = digits({data})
    split = validation(0.1, test=0.2, seed=0)
    batch = 64
    {extra}
}}
"""


def write_model(tmp_path, name="m.net", data="", extra="epochs = 3\n    optimizer = adam(lr=3e-3)"):
    path = tmp_path / name
    path.write_text(MLP.format(data=data, extra=extra))
    return path


def quiet_train(path, out, sets=None, **kw):
    model, recipe = model_and_recipe(path, None, sets or {})
    return train(model, recipe, out, quiet=True, echo=lambda _: None, **kw)


# ---- end to end ---------------------------------------------------------------------------

def test_train_digits_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = quiet_train(write_model(tmp_path), out, options=Options(test=True))
    assert (result.epochs, result.steps) == (3, 3 * 20)
    assert result.test.metrics["accuracy"] > 0.85  # 3 epochs; the full recipe reaches ~0.98
    assert result.metric == "val_accuracy" and result.best > 0.85
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "metrics_steps.csv", "curves.png", "result.json",
                 "last/weights.safetensors", "best/state.json"):
        assert (out / name).exists(), name
    records = read_records(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    first = records[0]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time", "step"):
        assert math.isfinite(first[key]), key
    ratios = first["update_ratio"]
    assert set(ratios) == {"fc1.linear.weight", "fc1.linear.bias", "fc2.weight", "fc2.bias"}
    assert all(0 < r < 1 for r in ratios.values())
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "update_ratio/fc1.linear.weight" in header and "val_accuracy" in header
    saved = json.loads((out / "result.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(result.test.metrics["accuracy"])
    assert (saved["metric"], saved["best"]) == ("val_accuracy", result.best)
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["entries"]["epochs"] == 3 and config["seed"] == 0
    # compiled before the first step (the epoch's ETA counts steps only), and how long it took
    assert 0 <= config["compile_seconds"] <= config["first_step_seconds"]


def test_same_seed_same_weights_and_early_stopping(tmp_path):
    path = write_model(tmp_path, extra="epochs = 6\n    optimizer = adam(lr=3e-3)\n"
                                       "    stop = early(metric=val_loss, patience=1, min_delta=100)")
    a = quiet_train(path, tmp_path / "a")
    quiet_train(path, tmp_path / "b")
    assert a.stopped_early and a.epochs == 2  # nothing improves by 100: the second epoch stops it
    wa = load_checkpoint(tmp_path / "a" / "last").weights
    wb = load_checkpoint(tmp_path / "b" / "last").weights
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_steps_run_ends_mid_epoch_and_schedule_feeds_lr(tmp_path):
    path = write_model(tmp_path, extra="steps = 30\n    optimizer = sgd(lr=0.1)\n    schedule = step(every=1, gamma=0.5)")
    result = quiet_train(path, tmp_path / "run")
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert result.steps == 30 and [r["step"] for r in records] == [20, 30]
    # lr of each epoch's last step: t = 19/20 -> 0.1, t = 29/20 -> 0.05
    assert [r["lr"] for r in records] == pytest.approx([0.1, 0.05])


def test_nan_loss_names_step_checkpoint_and_first_bad_node(tmp_path):
    path = write_model(tmp_path, extra="epochs = 3\n    optimizer = sgd(lr=1e30)")
    with pytest.raises(TrainError) as err:
        quiet_train(path, tmp_path / "run")
    text = str(err.value)
    assert "the loss is nan at step 2 (epoch 1" in text and "no checkpoint was saved" in text
    assert "--detect-anomaly" in text
    with pytest.raises(TrainError) as err:
        quiet_train(path, tmp_path / "run2", detect_anomaly=True)
    text = str(err.value)
    # sgd at lr 1e30 makes fc2's weights huge after one step: its matmul overflows first
    assert "first non-finite value: 'fc2' (op linear)" in text and f"{path}:6:" in text


def test_nan_after_a_checkpoint_names_it(tmp_path):
    path = write_model(tmp_path, extra="epochs = 1\n    optimizer = sgd(lr=0.1)")
    quiet_train(path, tmp_path / "run")
    with pytest.raises(TrainError, match=r"at step 22 .* last good checkpoint is .*last \(epoch 1, step 20\)"):
        quiet_train(path, None, {"epochs": 3, "optimizer.lr": 1e30}, resume=tmp_path / "run", force=True)


# ---- the pieces -------------------------------------------------------------------------

def test_reference_executor_equals_the_unoptimised_graph(tmp_path):
    model = dslc.load(write_model(tmp_path))
    graph = train_step(model.graph, {"kind": "adam", "lr": 1e-3})
    step = ReferenceExecutor().compile(graph)
    params = model.init(0) | {p.name: np.zeros(p.type.bind({}), np.float32)
                              for p in graph.params if p.name.startswith("opt.")}
    x, y = digits().x[:16].reshape(16, 64), digits().y[:16]
    feeds = {"image": x, "label": y, "lr": np.float32(1e-3), "step": np.float32(1)}
    want = run_outputs(graph, feeds, params)
    got_params = dict(params)
    out = step(feeds, got_params)
    assert out["loss"] == pytest.approx(float(want["loss", "loss"]), rel=1e-6)
    for (kind, name), value in want.items():
        if kind in ("param", "state"):
            np.testing.assert_allclose(got_params[name], value, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_gpu_without_cupy_is_a_clear_error():
    with pytest.raises(DeviceError, match="no usable CUDA GPU"):
        executor_for("gpu")


def test_gradient_clipping_by_global_norm(tmp_path):
    model = dslc.load(write_model(tmp_path))
    params = model.init(0)
    x, y = digits().x[:32].reshape(32, 64), digits().y[:32]
    _, grads = model.grad(params, {"image": x, "label": y})
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    for max_norm in (norm / 4, norm * 4):  # clipped, and left alone
        out = run_outputs(train_step(model.graph, {"kind": "sgd", "lr": 0.5}, clip=max_norm),
                          {"image": x, "label": y, "lr": np.float32(0.5)}, params)
        scale = min(1.0, max_norm / norm)
        for name, g in grads.items():
            np.testing.assert_allclose(out["param", name], params[name] - 0.5 * scale * g, rtol=1e-5, atol=1e-6)


def test_mixup_loss_is_the_blend_of_both_labels(tmp_path):
    model = dslc.load(write_model(tmp_path))
    graph = mix_losses(model.graph, "label")
    params = model.init(0)
    x = digits().x[:8].reshape(8, 64)
    y, y_b = digits().y[:8], digits().y[8:16]
    feeds = {"image": x, "label": y} | mix_feeds(Batch(x, y, y_b, 0.3), "f32")
    mixed = run_outputs(graph, feeds, params)["loss", "loss"]
    plain = lambda labels: model.forward(params, {"image": x, "label": labels})["loss"]
    assert mixed == pytest.approx(0.3 * plain(y) + 0.7 * plain(y_b), rel=1e-6)
    assert run_outputs(graph, {"image": x, "label": y} | mix_feeds(Batch(x, y), "f32"), params)["loss", "loss"] \
        == pytest.approx(plain(y), rel=1e-6)


def test_frozen_batchnorm_uses_and_keeps_running_statistics():
    model = dslc.load(MODELS / "digits_cnn.net")
    frozen = R.select_params(model.graph, ["conv1*"])
    graph = train_step(model.graph, {"kind": "sgd", "lr": 0.1}, frozen)
    states = [o.name for o in graph.outputs_of("state")]
    assert not any(s.startswith("conv1") for s in states) and any(s.startswith("conv2") for s in states)
    assert not any(o.name.startswith("conv1") for o in graph.outputs_of("param"))
    # the frozen layer normalises with its running statistics: its node stays a plain batchnorm
    assert graph["conv1.conv_bn_relu.batchnorm"].op == "batchnorm"


def test_select_classes_relabels_in_the_order_given():
    part = select_classes(digits(), [7, 2])
    assert part.classes == 2 and part.class_names == ("7", "2")
    full = digits()
    assert len(part) == int(np.sum(full.y == 7) + np.sum(full.y == 2))
    np.testing.assert_array_equal(part.x[part.y == 0], full.x[full.y == 7])
    with pytest.raises(DataError, match="class 12 is not one of 0..9"):
        select_classes(digits(), [12])


def test_data_that_does_not_fit_the_inputs_is_located(tmp_path):
    path = tmp_path / "bad.net"
    path.write_text(MLP.format(data="", extra="epochs = 2").replace("f32[N, 64]", "f32[N, 60]"))
    with pytest.raises(CompileError) as err:
        layout(dslc.load(path), digits())
    d = err.value.diagnostics[0]
    assert d.code == "E0513" and d.span.line == 3 and "[1, 8, 8]" in d.message
    few = dslc.load(write_model(tmp_path), classes=4)
    with pytest.raises(CompileError, match="10 classes but the loss reads"):
        layout(few, digits())
    assert layout(few, select_classes(digits(), [0, 1, 2])).classes == 3


IMAGE_MODEL = """
model m(classes: int = 3) {{
    input image : f32[N, {shape}]
    input label : i64[N]
    logits = image |> flatten |> linear(classes)
    metric accuracy(logits, label)
    loss cross_entropy(logits, label)
}}
train m {{
    data = npz("{data}")
    split = validation(0.25, seed=0)
    augment = [hflip(p=1.0)]
}}
"""


def _image_model(tmp_path, shape: str, x: np.ndarray):
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(len(x)) % 3)
    path = tmp_path / "m.net"
    path.write_text(IMAGE_MODEL.format(shape=shape, data=tmp_path / "d.npz"))
    return model_and_recipe(path)


def test_examples_take_the_model_inputs_layout_before_normalisation(tmp_path):
    """Grey images stored [N, H, W] (Keras's mnist.npz) for an f32[N, 1, H, W] input are one
    channel: one mean and std, not one per row; hflip mirrors their width."""
    rows = np.arange(8, dtype=np.float32)[:, None] * np.ones((40, 8, 8), np.float32) / 8  # row r holds r/8
    rows[:, :, 0] = 1.0
    model, recipe = _image_model(tmp_path, "1, 8, 8", rows)
    data = load_data(recipe, model=model)
    assert data.train.shape == (1, 8, 8) and len(data.stats["mean"]) == 1 == len(data.stats["std"])
    np.testing.assert_allclose(data.stats["mean"], [rows.mean()], rtol=1e-6)
    flipped = build_augment(recipe["augment"])(data.train.x[:2], data.train.y[:2], np.random.default_rng(0)).x
    np.testing.assert_array_equal(flipped, data.train.x[:2, :, :, ::-1])
    # a flat input keeps the data's layout for its statistics: digits' [1, 8, 8], one channel
    digits_mlp = dslc.load(MODELS / "digits_mlp.net")
    _, digits_recipe = model_and_recipe(MODELS / "digits_mlp.net")
    assert len(load_data(digits_recipe, model=digits_mlp).stats["mean"]) == 1


@pytest.mark.parametrize("shape, x, words", [
    ("3, 8, 8", np.zeros((8, 8, 8, 3), np.float32), "np.transpose(x, (0, 3, 1, 2))"),  # NHWC, not scrambled
    ("3, 8, 8", np.zeros((8, 8, 8), np.float32), "grey images [H, W]; the model reads 3 channels"),
    ("1, 8, 8", np.zeros((8, 64), np.float32), "reshape the examples to [N, 1, 8, 8]"),
])
def test_examples_of_another_layout_are_located_not_reshaped(tmp_path, shape, x, words):
    model, recipe = _image_model(tmp_path, shape, x)
    with pytest.raises(CompileError) as err:
        load_data(recipe, model=model)
    d = err.value.diagnostics[0]
    assert d.code == "E0513" and d.span.line == 3 and words in d.hint, d.hint


def test_classes_are_kept_after_the_split_so_a_subset_holds_out_the_same_examples():
    """A fine-tune on digits 5-9 validates and tests on examples the full run held out too:
    never on its base run's training examples."""
    _, full = model_and_recipe(MODELS / "digits_mlp.net")
    _, part = model_and_recipe(MODELS / "digits_mlp.net", None, {"data": "digits(classes=[5, 6, 7, 8, 9])"})
    whole, subset = load_data(full), load_data(part)
    rows = lambda ds: {row.tobytes() for row in ds.x.reshape(len(ds), -1)}
    for name in ("val", "test"):
        kept = rows(subset.split(name))
        assert kept and kept <= rows(whole.split(name)) and not kept & rows(whole.train), name
    assert rows(subset.train) <= rows(whole.train)
    assert subset.train.class_names == ("5", "6", "7", "8", "9") and set(subset.test.y.tolist()) == set(range(5))


def test_set_pairs_split_between_recipe_and_model():
    assert split_sets({"epochs": 3, "optimizer.lr": 0.1, "hidden": 8}) == (
        {"epochs": 3, "optimizer.lr": 0.1}, {"hidden": 8})
