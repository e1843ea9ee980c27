"""Using a trained model: `dslc eval`, `dslc predict` and `dslc ensemble`.

A checkpoint carries what it needs to be used on its own: the recipe it was trained
with (so the same data split is rebuilt), the normalisation statistics of its training
split, the example shape and the class names. Evaluation runs the typed graph
(inference semantics); prediction the inference graph (no loss, no labels needed).

    report = evaluate_checkpoint(model, "runs/digits_mlp", "test")
    report["accuracy"], report["confusion"]
    rows = predict(model, "runs/digits_mlp", "digit.png", top=3)
"""
from __future__ import annotations

from math import prod
from typing import Any
from pathlib import Path

import numpy as np

from dslc.frontend.recipe import Recipe
from dslc.passes.infer import inference
from dslc.runtime import transfer
from dslc.runtime.checkpoint import Checkpoint, compare
from dslc.runtime.data import DataError, normalize
from dslc.runtime.errors import TrainError
from dslc.runtime.evaluate import Evaluator, as_probabilities
from dslc.runtime.executor import executor_for
from dslc.runtime.prepare import layout, load_data

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_for(model, path) -> Checkpoint:
    """The checkpoint `path` means, checked to hold every parameter of `model` with its shape."""
    ckpt = transfer.load(path)
    problems = [d for d in compare(ckpt, model.graph) if d.kind in ("missing", "shape", "dtype")]
    if problems:
        raise TrainError(f"{ckpt.path} does not fit model '{model.name}':\n" + "\n".join(f"  {d}" for d in problems))
    if "recipe" not in ckpt.state:
        raise TrainError(f"{ckpt.path}: the checkpoint records no recipe, so its data cannot be rebuilt")
    return ckpt


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


def evaluate_checkpoint(model, path, split: str = "test", device: str = "cpu") -> dict:
    """Loss, the model's metrics, accuracy, top-5 and confusion matrix of one checkpoint on one split."""
    ckpt = load_for(model, path)
    data = load_data(Recipe.from_json(ckpt.state["recipe"]), stats=ckpt.state["normalization"])
    dataset = data.split(split)
    ev = Evaluator(model, layout(model, dataset), executor_for(device))
    result = ev(dataset, dict(ckpt.weights), data.transform, probabilities=True)
    return {"checkpoint": str(ckpt.path), "split": split, "data": dataset.name, "examples": result.examples,
            "loss": result.loss, "metrics": result.metrics,
            **classification_report(result.probs, result.labels, dataset.classes),
            "class_names": list(dataset.class_names or range(dataset.classes))}


def ensemble(model, paths, split: str = "test", device: str = "cpu") -> dict:
    """Each checkpoint's accuracy and that of the average of their predicted probabilities.

    Every member is fed the same examples (the data and split of the first checkpoint's
    recipe, which the others must share) normalised with its own statistics.
    """
    members = [load_for(model, p) for p in paths]
    first = Recipe.from_json(members[0].state["recipe"])
    for m in members[1:]:
        other = Recipe.from_json(m.state["recipe"])
        if (other["data"], other["split"]) != (first["data"], first["split"]):
            raise TrainError(f"{m.path} was trained on other data or another split than {members[0].path}; "
                             "an ensemble is evaluated on one split")
    raw = load_data(first, stats={"kind": "none"}).split(split)
    ev = Evaluator(model, layout(model, raw), executor_for(device))
    rows, total = [], np.zeros((len(raw), raw.classes))
    for m in members:
        stats = m.state["normalization"]
        probs = ev(raw, dict(m.weights), lambda x, stats=stats: normalize.apply(x, stats), probabilities=True).probs
        total += probs[:, :raw.classes]
        rows.append({"checkpoint": str(m.path), "accuracy": classification_report(probs, raw.y, raw.classes)["accuracy"]})
    mean = total / len(members)
    nll = float(-np.mean(np.log(np.clip(mean[np.arange(len(raw)), raw.y], 1e-12, None))))
    report = classification_report(mean, raw.y, raw.classes)
    return {"split": split, "data": raw.name, "examples": len(raw), "members": rows, "loss": nll, **report}


def read_input(file, example_shape: tuple[int, ...]) -> np.ndarray:
    """Examples [n, *example_shape] float32 from a .npy (one example or a batch, possibly
    flattened) or an image file (converted to the channels and size of the examples, 0..1)."""
    file = Path(file)
    if not file.exists():
        raise DataError("no such file", file)
    if file.suffix.lower() in IMAGE_SUFFIXES:
        return _read_image(file, example_shape)
    if file.suffix.lower() != ".npy":
        raise DataError(f"cannot read {file.suffix or 'a file without suffix'}: give a .npy array or an image "
                        f"({', '.join(IMAGE_SUFFIXES)})", file)
    try:
        x = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"not a readable .npy array ({e})", file) from None
    if x.dtype.kind not in "fiub":
        raise DataError(f"holds {x.dtype} values, not numbers", file)
    size = prod(example_shape)
    if x.size == size:
        return x.reshape((1, *example_shape)).astype(np.float32)
    if x.ndim >= 2 and prod(x.shape[1:]) == size:
        return x.reshape((len(x), *example_shape)).astype(np.float32)
    raise DataError(f"array of shape {list(x.shape)} is neither one example of shape {list(example_shape)} "
                    f"nor a batch of them", file)


def _read_image(file: Path, example_shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if len(example_shape) != 3 or example_shape[0] not in (1, 3):
        raise DataError(f"the model reads examples of shape {list(example_shape)}, not images", file)
    channels, height, width = example_shape
    try:
        with Image.open(file) as img:
            resized = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(resized, np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"not a readable image ({e})", file) from None
    return (pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))[None]


def predict(model, path, input_file, top: int = 5, device: str = "cpu") -> list[list[tuple[str, float]]]:
    """For each example of `input_file`: its `top` most probable classes as (name, probability)."""
    ckpt = load_for(model, path)
    shape = tuple(ckpt.state["example_shape"])
    names = ckpt.state.get("class_names") or [str(i) for i in range(ckpt.state["classes"])]
    x = normalize.apply(read_input(input_file, shape), ckpt.state["normalization"])
    fit = layout(model, _Shaped(shape, len(names)))
    graph = inference(model.graph)
    step = executor_for(device).compile(graph)
    output = graph.outputs[0].name
    probs = as_probabilities(graph, output, step(fit.feeds(x), dict(ckpt.weights))[output])[:, :len(names)]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    return [[(names[c], float(p[c])) for c in row] for row, p in zip(order, probs)]


class _Shaped:
    """What `layout` reads of a dataset, for inputs that come without one."""

    def __init__(self, shape: tuple[int, ...], classes: int):
        self.shape, self.classes, self.name = shape, classes, "the checkpoint's data"


# ---- console text ----------------------------------------------------------------------

def format_eval(report: dict) -> str:
    """The text `dslc eval` prints (the confusion matrix is in --json)."""
    lines = [f"{report['split']} split of {report['data']} ({report['examples']:,} examples), {report['checkpoint']}:",
             f"  loss            {report['loss']:.4f}"]
    lines += [f"  {name:<15} {value:.4f}" for name, value in report["metrics"].items() if name != "accuracy"]
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


def format_predictions(rows: list[list[tuple[str, float]]]) -> str:
    return "\n".join(f"{i}: " + "  ".join(f"{name} ({p:.3f})" for name, p in row) for i, row in enumerate(rows))
