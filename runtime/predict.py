"""Using a trained model: `dslc eval`, `dslc predict` and `dslc ensemble`.

A checkpoint carries the numbers it needs to be used on its own: the normalisation
statistics of its training split, the example shape and the class names. What data to
evaluate on comes from the recipe of the .net file the command names (and its --set, with
the `split` of the checkpoint's run: runtime/run_settings.py), never from the checkpoint:
a checkpoint someone sent you cannot make `dslc eval` open a file of its choosing. The
checkpoint's recipe is only compared with it, and a difference in data or split is a
warning. The model must fit the checkpoint: every parameter with
its shape and dtype (else an error), and the same graph by the saved model hash, as
`--resume` requires (else an error unless `--force`, which warns). Evaluation runs the
typed graph (inference semantics); prediction the inference graph (no loss, no labels).
`predict` reads a .npy as training read its data, by the data call of the checkpoint's
recipe: a uint8 array as 0..255 pixels scaled to 0..1 (as npz scales its x, and the image
loaders their pixels), except for a run trained on csv, whose numbers the model saw as they are.

    ckpt = open_checkpoint("runs/digits_mlp")
    model, recipe = model_and_recipe_for("models/digits_mlp.net", ckpt)
    fit_model(ckpt, model)
    report = evaluate_checkpoint(model, recipe, ckpt, "test")
    report["accuracy"], report["confusion"]
    rows = predict(model, ckpt, "digit.png", top=3)
"""
from __future__ import annotations

import sys
from math import prod
from typing import Any
from pathlib import Path

import numpy as np

from dslc.passes.infer import inference
from dslc.runtime import state, transfer
from dslc.runtime.checkpoint import Checkpoint, CheckpointError, compare
from dslc.runtime.data import DataError, Dataset, normalize
from dslc.runtime.data.arrays import read_npy
from dslc.runtime.data.dataset import first_non_finite
from dslc.runtime.data.images import IMAGE_SUFFIXES, decode_pixels
from dslc.runtime.data.tabular import scaled
from dslc.runtime.errors import TrainError
from dslc.runtime.evaluate import Evaluator, as_probabilities
from dslc.runtime.executor import executor_for
from dslc.runtime.mc_dropout import mc_probabilities, stochastic_graph
from dslc.runtime.layout import (example_shape as fitted_shape, flat_input, layout, layout_target, reads_labels,
                                 shape_hint)
from dslc.runtime.prepare import load_data, saved_data_call, split_changed
from dslc.runtime.recipes import model_and_recipe
from dslc.runtime.runs import SNAPSHOTS
from dslc.runtime.tta import views as tta_views

USES = ("example_shape", "normalization", "classes")  # the state.json keys these commands read
# The data calls whose loaders give a model the numbers of the file as they are (csv's
# features): a .npy for a run trained on one is read so too. Every other loader scales uint8
# to 0..1, and so does predict for its runs, or when a checkpoint does not name its data.
AS_IS = ("csv", "curve")


def open_checkpoint(path) -> Checkpoint:
    """The checkpoint `path` means (a run: its best, else its last), its state.json checked."""
    ckpt = transfer.load(path)
    state.check(ckpt, USES)
    return ckpt


def snapshots(run) -> list[Path]:
    """The snapshot checkpoints a run kept (RUN/snapshots/epoch-NNNN), oldest first; TrainError
    when there are none."""
    folder = Path(run) / SNAPSHOTS
    found = sorted(p for p in folder.glob("epoch-*") if p.is_dir()) if folder.is_dir() else []
    if not found:
        raise TrainError(f"{run}: no snapshots in {folder}; a recipe keeps them with `keep = every(n)` "
                         "or `keep = restarts`")
    return found


def model_and_recipe_for(file, ckpt: Checkpoint, as_name: str | None = None, model: str | None = None,
                         sets: dict | None = None):
    """(Model, Recipe) of .net `file` to use `ckpt` with: recipe `as_name`; else the recipe of
    the same name as the checkpoint's, when the file has one (only the name is taken from
    the checkpoint); else the file's recipe for `model` (default: its first model)."""
    if as_name is None and model is None:
        saved = ckpt.state.get("recipe")
        name = saved.get("name") if isinstance(saved, dict) else None
        from dslc.frontend.program import load_program
        if isinstance(name, str) and any((t.alias or t.model) == name for t in load_program(file).trains):
            as_name = name
    return model_and_recipe(file, as_name, sets, model=model)


def fit_model(ckpt: Checkpoint, model, force: bool = False, warn=None) -> None:
    """TrainError unless `ckpt` holds every parameter of `model` with its shape and dtype, and
    (unless `force`, which warns instead) was saved from the same graph (model hash)."""
    warn = warn or (lambda text: print(f"dslc: warning: {text}", file=sys.stderr))
    problems = [d for d in compare(ckpt, model.graph) if d.kind in ("missing", "shape", "dtype")]
    if problems:
        raise TrainError(f"{ckpt.path} does not fit model '{model.name}':\n" + "\n".join(f"  {d}" for d in problems))
    changed = [d for d in compare(ckpt, model.graph) if d.kind == "structure"]
    if changed and not force:
        raise TrainError(f"{ckpt.path} was saved from another graph than model '{model.name}' of "
                         f"{model.program.root}: {changed[0].detail}; its numbers would not mean what they "
                         "did. Pass --force to use it anyway")
    if changed:
        warn(f"{ckpt.path} was saved from another graph than model '{model.name}' ({changed[0].detail})")


def _data_of(recipe) -> dict:
    entries = recipe.to_json()["entries"]
    return {k: entries.get(k) for k in ("data", "split")}


def _warn_if_other_data(ckpt: Checkpoint, recipe, warn) -> None:
    saved = ckpt.state.get("recipe")
    entries = saved.get("entries") if isinstance(saved, dict) else None
    if isinstance(entries, dict) and {k: entries.get(k) for k in ("data", "split")} != _data_of(recipe):
        warn(f"{ckpt.path} was trained with another `data` or `split` than recipe '{recipe.name}'; "
             f"evaluating on the recipe's (give the --set the training run had, if any)")


def trained_on(ckpt: Checkpoint) -> str | None:
    """The data call of the recipe `ckpt` was trained with ("npz", "csv" ...); None when its
    state.json does not say (prepare.saved_data_call)."""
    call = saved_data_call(ckpt.state).get("call")
    return call if isinstance(call, str) else None


def _stats_fit(ckpt: Checkpoint, x: np.ndarray) -> None:
    try:
        normalize.apply(x[:1], ckpt.state["normalization"])
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path / 'state.json'}: 'normalization' does not fit the data: {e}") from None


def classification_report(probs: np.ndarray, labels: np.ndarray, classes: int) -> dict:
    """Accuracy, top-5 accuracy (more than 5 classes) and the confusion matrix (rows: true class)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    out: dict[str, Any] = {"accuracy": float(np.mean(order[:, 0] == labels))}
    if classes > 5:
        out["top5_accuracy"] = float(np.mean((order[:, :5] == labels[:, None]).any(axis=1)))
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels, order[:, 0]), 1)
    out["confusion"] = confusion.tolist()
    return out


def evaluate_checkpoint(model, recipe, ckpt: Checkpoint, split: str = "test", device: str = "cpu",
                        warn=None, tta: tuple[str, ...] = ()) -> dict:
    """Loss, the model's metrics, accuracy, top-5 and confusion matrix of one checkpoint on one
    split of the data `recipe` names, normalised with the checkpoint's statistics. With `tta`
    (runtime/tta.py), the probabilities are averaged over the views of each image: the report's
    accuracy, top-5 and confusion are the averaged prediction's, and `tta` holds the views and
    the accuracy of the image alone."""
    warn = warn or (lambda text: print(f"dslc: warning: {text}", file=sys.stderr))
    _warn_if_other_data(ckpt, recipe, warn)
    labels = reads_labels(model)
    if tta and not labels:
        raise DataError("test-time augmentation averages class probabilities; model "
                        f"'{model.name}' is a regression model")
    data = load_data(recipe, stats=ckpt.state["normalization"], labels=labels, model=model)
    stale = split_changed(ckpt.state, data.train) if "train_digest" not in ckpt.state else None
    if stale and split != "train":  # a run of `classes=` saved before the split came first
        warn(f"{ckpt.path}: {stale}; the {split} split may hold examples it was trained on")
    dataset = data.split(split)
    _stats_fit(ckpt, dataset.x)
    ev = Evaluator(model, layout(model, dataset), executor_for(device))
    if not labels:  # regression: the loss and the model's metrics (mae, r2 ...) are the report
        result = ev(dataset, dict(ckpt.weights), data.transform)
        return {"checkpoint": str(ckpt.path), "split": split, "data": dataset.name, "examples": result.examples,
                "loss": result.loss, "metrics": result.metrics}
    shown = tta_views(tta, dataset.shape) if tta else []
    result = ev(dataset, dict(ckpt.weights), data.transform, probabilities=True)
    report = {"checkpoint": str(ckpt.path), "split": split, "data": dataset.name, "examples": result.examples,
              "loss": result.loss, "metrics": result.metrics,
              **classification_report(result.probs, result.labels, dataset.classes),
              "class_names": list(dataset.class_names or range(dataset.classes))}
    if shown:
        probs = result.probs.copy()
        for _, view in shown[1:]:
            moved = Dataset(view(dataset.x), dataset.y, dataset.classes, dataset.name, dataset.class_names)
            probs += ev(moved, dict(ckpt.weights), data.transform, probabilities=True).probs
        single, mean = report["accuracy"], probs / len(shown)
        report.update(classification_report(mean, result.labels, dataset.classes), loss=_nll(mean, result.labels))
        report["tta"] = {"views": [label for label, _ in shown], "accuracy_without": single,
                         "loss_without": result.loss}
    return report


def ensemble(model, recipe, members: list[Checkpoint], split: str = "test", device: str = "cpu",
             warn=None) -> dict:
    """Each checkpoint's accuracy and that of the average of their predicted probabilities.

    Every member is fed the same examples (the data and split of `recipe`) normalised with
    its own statistics.
    """
    warn = warn or (lambda text: print(f"dslc: warning: {text}", file=sys.stderr))
    if not reads_labels(model):
        raise DataError(f"an ensemble averages class probabilities; model '{model.name}' is a regression model")
    for m in members:
        _warn_if_other_data(m, recipe, warn)
    raw = load_data(recipe, stats={"kind": "none"}, model=model).split(split)
    ev = Evaluator(model, layout(model, raw), executor_for(device))
    rows, total = [], np.zeros((len(raw), raw.classes))
    for m in members:
        _stats_fit(m, raw.x)
        stats = m.state["normalization"]
        probs = ev(raw, dict(m.weights), lambda x, stats=stats: normalize.apply(x, stats), probabilities=True).probs
        total += probs[:, :raw.classes]
        rows.append({"checkpoint": str(m.path), "accuracy": classification_report(probs, raw.y, raw.classes)["accuracy"]})
    mean = total / len(members)
    report = classification_report(mean, raw.y, raw.classes)
    return {"split": split, "data": raw.name, "examples": len(raw), "members": rows, "loss": _nll(mean, raw.y),
            **report}


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """The cross-entropy of averaged probabilities (an ensemble's or test-time augmentation's loss)."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def read_input(file, example_shape: tuple[int, ...], as_is: bool = False, flat: bool = False) -> np.ndarray:
    """Examples [n, *example_shape] float32 from a .npy (one example or a batch) or an image
    file (converted to the channels and size of the examples, 0..1). A .npy's examples are
    brought to `example_shape` by training's rule (layout.example_shape): of that shape, or
    without its unit channel axis ([H, W] for [1, H, W]); for a model whose input is `flat`
    ([D], an MLP), of any shape holding as many numbers. Channels-last images are refused.
    A uint8 .npy is scaled to 0..1 as npz scales its x (tabular.scaled), unless `as_is` (a
    model trained on csv saw its numbers so); any other number type is used as it is.
    DataError for an empty batch or a value that is not finite, naming the example."""
    file = Path(file)
    if not file.exists():
        raise DataError("no such file", file)
    if file.suffix.lower() in IMAGE_SUFFIXES:
        return _read_image(file, example_shape)
    if file.suffix.lower() != ".npy":
        raise DataError(f"cannot read {file.suffix or 'a file without suffix'}: give a .npy array or an image "
                        f"({', '.join(IMAGE_SUFFIXES)})", file)
    x = read_npy(file)
    want = (prod(example_shape),) if flat else tuple(example_shape)
    if x.size == 0:
        raise DataError(f"holds no examples (an array of shape {list(x.shape)})", file)
    if fitted_shape(want, x.shape) is not None:
        x = x.reshape((1, *example_shape))
    elif x.ndim >= 1 and fitted_shape(want, x.shape[1:]) is not None:
        x = x.reshape((len(x), *example_shape))
    else:
        hint = shape_hint(want, x.shape[1:], training=False) or shape_hint(want, x.shape, training=False)
        raise DataError(f"array of shape {list(x.shape)} is neither one example of shape {list(example_shape)} "
                        f"nor a batch of them" + (f": {hint}" if hint else ""), file)
    with np.errstate(over="ignore"):
        x = (x if as_is else scaled(x)).astype(np.float32)
    bad = first_non_finite(x)
    if bad is not None:
        raise DataError(f"example {bad} (counting from 0) holds NaN, infinity or a value beyond float32", file)
    return x


def _read_image(file: Path, example_shape: tuple[int, ...]) -> np.ndarray:
    if len(example_shape) != 3 or example_shape[0] not in (1, 3):
        raise DataError(f"the model reads examples of shape {list(example_shape)}, not images", file)
    channels, height, width = example_shape
    pixels = decode_pixels(file, "L" if channels == 1 else "RGB", (width, height))
    return (pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))[None]


def _model_input(model, ckpt: Checkpoint, input_file) -> np.ndarray:
    """The examples of `input_file` as the model saw its training data: read as the
    checkpoint's data call read it, and normalised with its statistics."""
    x = read_input(input_file, tuple(ckpt.state["example_shape"]), as_is=trained_on(ckpt) in AS_IS,
                   flat=flat_input(model))
    _stats_fit(ckpt, x)
    return normalize.apply(x, ckpt.state["normalization"])


def predict_values(model, ckpt: Checkpoint, input_file, device: str = "cpu") -> np.ndarray:
    """A regression model's predictions for each example of `input_file`: its first output
    (or what its loss reads as the prediction), [n, ...]."""
    shape = tuple(ckpt.state["example_shape"])
    x = _model_input(model, ckpt, input_file)
    graph = inference(model.graph)
    step = executor_for(device).compile(graph)
    fit = layout(model, _Shaped(shape, 0, tuple(model.graph[layout_target(model)].type.shape[1:])))
    return np.asarray(step(fit.feeds(x), dict(ckpt.weights))[graph.outputs[0].name])


def predict(model, ckpt: Checkpoint, input_file, top: int = 5, device: str = "cpu",
            mc_samples: int | None = None, seed: int = 0) -> list[list[tuple]]:
    """For each example of `input_file`: its `top` most probable classes as (name, probability);
    with `mc_samples`, as (name, mean probability, standard deviation) over that many passes
    with dropout on (mc_dropout.py), the masks drawn from `seed`."""
    shape = tuple(ckpt.state["example_shape"])
    names = ckpt.state.get("class_names") or [str(i) for i in range(ckpt.state["classes"])]
    x = _model_input(model, ckpt, input_file)
    fit = layout(model, _Shaped(shape, len(names)))
    if mc_samples:
        graph, output = stochastic_graph(model.graph)
        step = executor_for(device).compile(graph)
        probs, spread = mc_probabilities(step, fit.feeds(x), dict(ckpt.weights), graph, output, mc_samples,
                                         np.random.default_rng(seed))
    else:
        graph = inference(model.graph)
        step = executor_for(device).compile(graph)
        output = graph.outputs[0].name
        probs = as_probabilities(graph, output, step(fit.feeds(x), dict(ckpt.weights))[output])
        spread = None
    probs = probs[:, :len(names)]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    if spread is None:
        return [[(names[c], float(p[c])) for c in row] for row, p in zip(order, probs)]
    return [[(names[c], float(p[c]), float(s[c])) for c in row] for row, p, s in zip(order, probs, spread)]


class _Shaped:
    """What `layout` reads of a dataset, for inputs that come without one."""

    def __init__(self, shape: tuple[int, ...], classes: int, target_shape: tuple[int, ...] = ()):
        self.shape, self.classes, self.name = shape, classes, "the checkpoint's data"
        self.target_shape = target_shape


# ---- console text ----------------------------------------------------------------------

def format_eval(report: dict) -> str:
    """The text `dslc eval` prints (the confusion matrix is in --json)."""
    lines = [f"{report['split']} split of {report['data']} ({report['examples']:,} examples), {report['checkpoint']}:",
             f"  loss            {report['loss']:.4f}"]
    lines += [f"  {name:<15} {value:.4f}" for name, value in report["metrics"].items() if name != "accuracy"]
    tta = report.get("tta")
    if "accuracy" not in report:  # a regression model's report
        return "\n".join(lines)
    if tta:
        lines[1] += f" of the probabilities averaged over {len(tta['views'])} views ({tta['loss_without']:.4f} without)"
        lines.append(f"  accuracy        {report['accuracy']:.4f} ({tta['accuracy_without']:.4f} without "
                     "test-time augmentation)")
    else:
        lines.append(f"  accuracy        {report['accuracy']:.4f}")
    if "top5_accuracy" in report:
        lines.append(f"  top-5 accuracy  {report['top5_accuracy']:.4f}")
    return "\n".join(lines)


def format_ensemble(report: dict) -> str:
    lines = [f"{report['split']} split of {report['data']} ({report['examples']:,} examples):"]
    lines += [f"  {m['checkpoint']}: accuracy {m['accuracy']:.4f}" for m in report["members"]]
    lines.append(f"  ensemble of {len(report['members'])}: accuracy {report['accuracy']:.4f}, loss {report['loss']:.4f}"
                 + (f", top-5 accuracy {report['top5_accuracy']:.4f}" if "top5_accuracy" in report else ""))
    return "\n".join(lines)


def format_predictions(rows: list[list[tuple]]) -> str:
    """One line per example: class (probability), or class (mean ± standard deviation) for Monte-Carlo dropout."""
    def cell(c: tuple) -> str:
        return f"{c[0]} ({c[1]:.3f})" if len(c) == 2 else f"{c[0]} ({c[1]:.3f} ± {c[2]:.3f})"
    return "\n".join(f"{i}: " + "  ".join(map(cell, row)) for i, row in enumerate(rows))
