"""The one shape every loader returns, and the one error every loader raises.

A `Dataset` is a pair of arrays, inputs `x` (float32, examples first: [N, C, H, W] for
images, [N, F] for tables) and either class labels `y` (int64 in 0..classes-1) or, for
regression, float targets `y` (float32 [N, ...], any shape per example; classes 0).
`checked` and `checked_targets` are the gates every loader passes its arrays through, so
"empty data", "3 images but 2 labels" and "label 12 of 10 classes" are reported the same
way whatever the format.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np


class DataError(Exception):
    """A data file that cannot be used: missing, truncated, corrupt or inconsistent.

    `str(e)` is one line naming the file, e.g. `data/mnist/t10k-labels-idx1-ubyte: truncated:
    header says 10000 labels (10008 bytes), file has 9000 bytes`; the CLI prints it and exits 1.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.message, self.path = message, None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Labelled examples: x float32 [N, ...], y int64 [N] in 0..classes-1, or float32
    targets [N, ...] with classes 0 (`regression`).

    >>> ds = Dataset(np.zeros((2, 3), np.float32), np.array([0, 1]), 2, "toy")
    >>> len(ds), ds.shape
    (2, (3,))
    """

    x: np.ndarray
    y: np.ndarray
    classes: int
    name: str
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. (1, 28, 28)."""
        return self.x.shape[1:]

    @property
    def target_shape(self) -> tuple[int, ...]:
        """The shape of one example's target (regression), e.g. (1,); () for a label."""
        return self.y.shape[1:]

    @property
    def regression(self) -> bool:
        """Whether y holds float targets rather than class labels."""
        return self.y.dtype.kind == "f"

    def subset(self, indices: np.ndarray, name: str | None = None) -> "Dataset":
        """The examples at `indices` (a copy), keeping classes and class names."""
        return Dataset(self.x[indices], self.y[indices], self.classes, name or self.name, self.class_names)

    def as_targets(self) -> "Dataset":
        """The class labels as float targets [N] (a model regressing a number stored as a label)."""
        if self.regression:
            return self
        return Dataset(self.x, self.y.astype(np.float32), 0, self.name)


class Batch(NamedTuple):
    """One training step's examples. Without mixup, y_b is None and lam 1. With mixup the
    inputs are lam * x_i + (1 - lam) * x_j and the loss must be the same blend,
    lam * loss(y) + (1 - lam) * loss(y_b); for cross-entropy that is the loss against the
    soft targets `targets(classes)`, since cross-entropy is linear in its target."""

    x: np.ndarray
    y: np.ndarray
    y_b: np.ndarray | None = None
    lam: float = 1.0

    def targets(self, classes: int) -> np.ndarray:
        """Soft targets float32 [B, classes]: lam * onehot(y) + (1 - lam) * onehot(y_b)."""
        t = np.zeros((len(self.y), classes), np.float32)
        rows = np.arange(len(self.y))
        t[rows, self.y] = self.lam
        if self.y_b is not None:
            t[rows, self.y_b] += 1 - self.lam
        return t


def checked(x: np.ndarray, y: np.ndarray, name: str, path, classes: int | None = None,
            class_names=None, x_path=None) -> Dataset:
    """A Dataset from loaded arrays, or DataError (naming `path`) when they cannot be one.

    `classes` defaults to max(y) + 1; labels must be whole numbers in 0..classes-1; every
    input must be finite once in float32 (NaN, infinity or 1e400 are named by example, in
    `x_path` where the inputs have a file of their own: MNIST's images, whose infinities
    were blamed on its labels file).
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or len(x) == 0:
        raise DataError("no examples", path)
    x = x[:, None] if x.ndim == 1 else x  # one scalar feature per example: [N] -> [N, 1]
    if y.ndim != 1:
        raise DataError(f"labels must be one number per example, got an array of shape {y.shape}", path)
    if len(x) != len(y):
        raise DataError(f"{len(x)} examples but {len(y)} labels", path)
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError(f"labels must be whole numbers, got dtype {y.dtype}", path)
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"labels must be >= 0, found {y.min()}", path)
    classes = int(y.max()) + 1 if classes is None else classes
    if y.max() >= classes:
        raise DataError(f"label {y.max()} out of range for {classes} classes", path)
    names = tuple(class_names) if class_names is not None else None
    if names is not None and len(names) != classes:
        raise DataError(f"{len(names)} class names for {classes} classes", path)
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, reported next
        x = np.ascontiguousarray(x, dtype=np.float32)
    bad = first_non_finite(x)
    if bad is not None:
        raise DataError(f"example {bad} (counting from 0) holds a value that is not a finite float32 number "
                        "(NaN, infinity, or beyond 3.4e38)", path if x_path is None else x_path)
    return Dataset(x, y, classes, name, names)


def checked_targets(x: np.ndarray, y: np.ndarray, name: str, path) -> Dataset:
    """A regression Dataset from loaded arrays, or DataError (naming `path`): y holds one
    float target (or an array of them, [N, ...]) per example, finite in float32."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or len(x) == 0:
        raise DataError("no examples", path)
    if y.ndim == 0 or len(x) != len(y):
        raise DataError(f"{len(x)} examples but {len(y) if y.ndim else 'no'} targets", path)
    if y.dtype.kind not in "biuf":
        raise DataError(f"targets must be numbers, got dtype {y.dtype}", path)
    with np.errstate(over="ignore"):
        y = np.ascontiguousarray(y, dtype=np.float32)
    bad = first_non_finite(y[:, None] if y.ndim == 1 else y)
    if bad is not None:
        raise DataError(f"the target of example {bad} (counting from 0) is not a finite float32 number "
                        "(NaN, infinity, or beyond 3.4e38)", path)
    labelled = checked(x, np.zeros(len(x), np.int64), name, path, 1)  # the inputs' checks, once
    return Dataset(labelled.x, y, 0, name)


def first_non_finite(x: np.ndarray, chunk: int = 4096) -> int | None:
    """The index of the first example of `x` [N, ...] holding NaN or infinity, else None;
    checked a chunk of examples at a time, so no mask of the whole array is made."""
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].reshape(min(chunk, len(x) - start), -1)
        ok = np.isfinite(part).all(axis=1)
        if not ok.all():
            return start + int(np.argmin(ok))
    return None
