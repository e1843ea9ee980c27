"""What every `dslc explain` verb works on: a trained classifier, compiled, seen from its pixels.

    s = open_subject("models/digits_cnn.net", "runs/digits_cnn", device="cpu")
    x, labels, names = s.examples(index=[0, 3])   # pixels [n, C, H, W] in 0..1 (the recipe's test split)
    s.scores(x)                                   # the class scores the loss reads, [n, classes]
    value, g = s.grad(x, "out[:, 3]")             # d(class-3 score)/d pixels, [n, C, H, W]
    value, g = s.grad(x, {"conv2": cot})          # a layer's vector-Jacobian product

Verbs work in pixel space. The run's input normalisation is applied inside: it is an affine
map per element, so the gradient with respect to the pixels is the model's times its scale.
That keeps clipping to the valid range, steps in pixel units (FGSM's epsilon) and the
pictures simple. Batches are cut into chunks of `CHUNK` examples, so that one compiled graph
serves any number of examples (the executor compiles again only for a new batch size).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import dslc
from dslc.diagnostics import CliError, UsageError, did_you_mean, printable
from dslc.objective import node_of
from dslc.passes.infer import first_loss_input

CHUNK = 64  # examples per compiled call
PIXELS = (0.0, 1.0)  # the range dslc's image loaders give


@dataclass
class Subject:
    """A model with a run's parameters, compiled for `device`; `image` is the input that reads
    the examples, whose shape (C, H, W) is `shape`; `logits` the node of its class scores."""

    file: Path
    model: Any  # dslc.api.Model
    compiled: Any  # runtime/compiled.py's Compiled
    image: str
    shape: tuple[int, int, int]
    logits: str
    class_names: list[str]
    quiet: bool = False
    sets: Mapping[str, Any] = field(default_factory=dict)  # the --set pairs, for the recipe whose data is read
    _affine: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    # ---- pixels and the model's inputs ----------------------------------------------------

    def _scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """normalize(x) = x * scale + offset, per element of one example (any affine normalisation)."""
        if self._affine is None:
            zero = self.model.normalize(np.zeros((1, *self.shape), np.float32))[0]
            one = self.model.normalize(np.ones((1, *self.shape), np.float32))[0]
            self._affine = (one - zero).astype(np.float64), zero.astype(np.float64)
        return self._affine

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """Pixels [n, C, H, W] as the image input reads them: normalised, shaped, in its dtype
        (float64 for a model cast to f64, as the gradient checks use)."""
        from dslc.ir.types import NUMPY_DTYPE

        scale, offset = self._scale_offset()
        t = self.model.graph[self.image].type
        return (np.asarray(x, np.float64) * scale + offset).astype(NUMPY_DTYPE[t.dtype]).reshape((len(x), *t.shape[1:]))

    def blank(self) -> np.ndarray:
        """The image the model sees as all zeros after normalisation (the mean image), [1, C, H, W]."""
        scale, offset = self._scale_offset()
        return np.clip(-offset / scale, *PIXELS)[None].astype(np.float32)

    # ---- forward and gradients ------------------------------------------------------------

    def forward(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The values of the nodes `outputs` for pixels `x`, by name, in chunks."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        for start in range(0, len(x), CHUNK):
            out = self.compiled.forward(self.model.params, {self.image: self.to_model(x[start:start + CHUNK])},
                                        outputs=list(outputs))
            for name in outputs:
                parts[name].append(out[name])
        return {name: np.concatenate(v) for name, v in parts.items()}

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x, [self.logits])[self.logits]

    def probs(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.scores(x))

    def grad(self, x: np.ndarray, of, rules: Mapping | None = None) -> tuple[float, np.ndarray]:
        """(objective, its gradient with respect to the pixels `x`) for `of` as Compiled.grad reads
        it (a node, "node[:, k]", {node: "l2" | cotangent}); cotangents hold one row per example."""
        scale, _ = self._scale_offset()
        total, grads = 0.0, []
        for start in range(0, len(x), CHUNK):
            part = of
            if isinstance(of, Mapping):  # each chunk gets its examples' rows of the cotangents
                part = {k: v if isinstance(v, str) else np.asarray(v)[start:start + CHUNK] for k, v in of.items()}
            value, g = self.compiled.grad(self.model.params, {self.image: self.to_model(x[start:start + CHUNK])},
                                          of=part, wrt=[self.image], rules=rules)
            total += value
            grads.append(g[self.image].reshape((-1, *self.shape)) * scale)
        return total, np.concatenate(grads)

    def layer(self, name: str) -> str:
        """The node a layer name (a label, node or output) means; CliError naming the file and
        the nearest names when there is none."""
        graph = self.model.graph
        # Only what the image alone computes can be explained: the loss, a metric or a label
        # input read inputs no verb feeds (they were the compiled API's UsageError, "this
        # needs the input(s) label", exit 2), so they are not among the layers.
        others = self._other_inputs()
        named = [n.name for n in graph.nodes if n.op not in ("param", "const", "input") and not others[n.name]]
        labels = list(dict.fromkeys(n.split(".")[0] for n in named))
        try:
            node = node_of(graph, name)
        except UsageError:
            node = None
        if node is None or others[node]:
            hint = did_you_mean(name, labels + named) or f"its layers are {', '.join(labels)}"
            reads = ("" if node is None else " computed from the image alone ('{}' {})".format(
                printable(name), "is another input" if graph[node].op == "input"
                else f"reads the input {', '.join(sorted(others[node]))}"))
            raise CliError(f"{self.file}: model '{self.model.name}' has no layer '{printable(name)}'{reads}; {hint}")
        return node

    def _other_inputs(self) -> dict[str, set[str]]:
        """For every node, the inputs other than the image that it is computed from."""
        reads: dict[str, set[str]] = {}
        for n in self.model.graph.nodes:
            own = {n.name} if n.op == "input" and n.name != self.image else set()
            reads[n.name] = own.union(*(reads[i] for i in n.inputs))
        return reads

    def progress(self, total: int, what: str):
        """A tqdm bar on standard error, as the trainer's: only on a terminal and not --quiet."""
        from tqdm import tqdm

        return tqdm(total=total, desc=what, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True,
                    disable=self.quiet or not sys.stderr.isatty())

    # ---- examples -------------------------------------------------------------------------

    def examples(self, image=None, input=None, index: Sequence[int] = (), split: str = "test",
                 as_name: str | None = None, flags: str = "--") -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        """(pixels [n, C, H, W], labels or None, a caption per example) from an image file (its
        size must be the model's), a .npy (one example or a batch), or examples of the recipe's
        `split` by index. Exactly one source. `flags` prefixes the flags messages name: style's
        second example comes from --style-image, --style-input or --style-index."""
        given = [f"{flags}{k}" for k, v in (("image", image), ("input", input), ("index", index)) if v]
        if len(given) != 1:
            raise UsageError(f"give the examples with one of {flags}image PNG, {flags}input X.npy or {flags}index N"
                             + (f", not {' and '.join(given)}" if given else ""))
        if image:
            return read_image(image, self.shape)[None], None, [Path(image).name]
        if input:
            from dslc.runtime.predict import read_input

            flat = len(self.model.graph[self.image].type.shape) == 2  # an MLP takes [n, D] as well
            x = read_image(input, self.shape)[None] if _is_image(input) else read_input(input, self.shape,
                                                                                       flat=flat)
            return x, None, [f"{Path(input).name}[{i}]" for i in range(len(x))]
        return self.split_examples(split, as_name, index, flags)

    def dataset(self, split: str = "test", as_name: str | None = None):
        """The raw (not normalised) `split` of the data of the .net file's recipe for this run."""
        from dslc.runtime import predict
        from dslc.runtime.prepare import load_data

        _, recipe = predict.model_and_recipe_for(self.file, self.model.checkpoint, as_name, self.model.name,
                                                 dict(self.sets))
        data = load_data(recipe, stats={"kind": "none"})
        return data.split(split)

    def split_examples(self, split: str, as_name: str | None, index: Sequence[int], flags: str = "--"):
        data = self.dataset(split, as_name)
        for i in index:
            if not 0 <= i < len(data):
                raise CliError(f"{flags}index {i}: the {split} split ({data.name}) has {len(data):,} examples "
                               f"(0 to {len(data) - 1})")
        picked = np.asarray(index, np.int64)
        x = data.x[picked].reshape((len(picked), *self.shape))
        return x, data.y[picked], [f"{split} #{i}" for i in index]


def _is_image(path) -> bool:
    from dslc.runtime.data.images import IMAGE_SUFFIXES

    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path, shape: tuple[int, int, int]) -> np.ndarray:
    """An image file as pixels [C, H, W] in 0..1; DataError unless it has the model's size
    (a resized image would not be the image the explanation is about)."""
    from dslc.runtime.data import DataError
    from dslc.runtime.data.images import decode_pixels

    channels, height, width = shape
    if channels not in (1, 3):
        raise DataError(f"the model reads examples of {channels} channels, not a grey or RGB image", path)
    pixels = decode_pixels(path, "L" if channels == 1 else "RGB", None)
    if pixels.shape[:2] != (height, width):
        raise DataError(f"the image is {pixels.shape[1]}x{pixels.shape[0]} pixels; the model reads "
                        f"{width}x{height} images: resize it first", path)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def open_subject(file, checkpoint, device: str = "cpu", model: str | None = None,
                 sets: Mapping[str, Any] | None = None, force: bool = False, quiet: bool = False) -> Subject:
    """Load `file`'s model with the run `checkpoint` and compile it for `device`; `sets` are
    --set pairs, model hyper-parameters and recipe settings (those of the data --index reads)."""
    from dslc.frontend.values import literals
    from dslc.runtime.data import DataError
    from dslc.runtime.recipes import split_sets

    sets = dict(sets or {})
    m = dslc.load(file, model, checkpoint=checkpoint, force=force, **literals(split_sets(sets)[1]))
    graph = m.graph
    floats = [n for n in graph.inputs if n.type.is_float]
    shape = tuple(m.checkpoint.state["example_shape"])
    if len(floats) != 1 or len(shape) != 3:
        raise DataError(f"model '{m.name}' reads {', '.join(n.type.show() for n in floats) or 'no float input'}"
                        f" and its run's examples are {list(shape)}: `dslc explain` needs one image input "
                        "[N, C, H, W] (or a flattened one)", file)
    image = floats[0]
    if prod(image.type.shape[1:]) != prod(shape):
        raise DataError(f"input '{image.name}' is {image.type.show()}; the run's examples are {list(shape)}", file)
    logits = first_loss_input(graph) if graph.loss is not None else None
    if logits is None or len(graph[logits].type.shape) != 2:
        raise DataError(f"model '{m.name}' has no class scores [N, classes] read by a loss: the explain verbs "
                        "explain a classifier", file)
    classes = graph[logits].type.shape[1]
    names = m.checkpoint.state.get("class_names") or [str(c) for c in range(m.checkpoint.state["classes"] or classes)]
    return Subject(Path(file), m, m.compile(device), image.name, shape, logits, list(names), quiet, sets)
