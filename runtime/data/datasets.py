"""The datasets a recipe can name, and `load`, which turns a recipe's `data = ...` call into them.

    load("mnist", {"dir": "data/mnist"}) -> (train, test)
    load("digits", {})                   -> (all 1,797 digits, None)
    load("curve", {}, labels=False)      -> (1,000 samples of a noisy function, None)

Loaders that ship no test set return None for it; `split.partition` then holds one out.
`labels` says what the model reads: class labels (a classifier), or float targets (a
regression model), which npz and csv read natively and any labelled set gives as numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from dslc.frontend.recipe_values import (INT_POS, NONNEG, REQUIRED, TEXT, Arg, CallSpec, ListOf, Num, Word,
                                         family)
from dslc.runtime.data.cifar import cifar10, cifar100
from dslc.runtime.data.dataset import DataError, Dataset, checked
from dslc.runtime.data.idx import fashion_mnist, mnist
from dslc.runtime.data.images import image_folder
from dslc.runtime.data.tabular import csv, npz

DIGITS_FILE = Path(__file__).with_name("digits.npz")
CURVE_FILE = Path(__file__).with_name("curve.csv")


def digits() -> Dataset:
    """The 8x8 handwritten digits shipped with dslc (UCI optdigits test set; see README.md here).

    1,797 grey images, 10 classes of about 180 each. Each pixel counts the inked pixels
    of a 4x4 block, 0..16; it is divided by 16, so x is float32 [1797, 1, 8, 8] in 0..1
    like every other image loader. No test set ships with it: the "held-out digits split"
    is `holdout(digits(), 0.2, seed=0)` (1,438 train, 359 test).
    """
    with np.load(DIGITS_FILE, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    return checked(x[:, None].astype(np.float32) / 16.0, y, "digits", DIGITS_FILE, 10,
                   tuple(str(d) for d in range(10)))


def curve_function(x1, x2):
    """The function curve.csv samples: smooth, with a product term no single input explains."""
    return np.sin(2 * x1) + 0.5 * x2 ** 2 - 0.5 * x1 * x2


def make_curve(n: int = 1000, noise: float = 0.1, seed: int = 0) -> str:
    """The text of curve.csv: n points (x1, x2) uniform in [-2, 2]^2 and y = curve_function +
    N(0, noise^2), six decimals (PCG64 with `seed`, so the same on every machine)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, (n, 2))
    y = curve_function(x[:, 0], x[:, 1]) + rng.normal(0.0, noise, n)
    return "x1,x2,y\n" + "".join(f"{a:.6f},{b:.6f},{c:.6f}\n" for (a, b), c in zip(x, y))


def curve() -> Dataset:
    """1,000 noisy samples of y = sin(2 x1) + x2^2 / 2 - x1 x2 / 2 on [-2, 2]^2 (noise std 0.1),
    shipped with dslc as curve.csv (`make_curve` wrote it): a regression set with no download.
    The best mean squared error any model can reach is the noise's, 0.01; predicting the
    mean scores about 1.3 (the variance of y)."""
    return csv(CURVE_FILE, target=["y"])


# The recipe's `data = ...` calls; each also takes `classes=[...]` by keyword (the trainer keeps
# those classes). LOADERS gives each its reader: (arguments, root folder) -> (train, test or None).
_DIR, _PATH = Arg("dir", TEXT, doc="folder holding the files"), Arg("path", TEXT, doc="file to read")
_CLASSES = Arg("classes", ListOf(Num(True, NONNEG)), (), "keep only these classes, relabelled 0..k-1 in this "
               "order (all when empty)", positional=False)


def _dataset(name: str, doc: str, *args: Arg, classes: int | Callable[[dict], int] | None = None) -> CallSpec:
    """A data call; `classes` is its class count (or a function of its arguments) where the
    call alone fixes it."""
    return CallSpec(name, doc, (*args, _CLASSES), _classes_check(classes))


def _classes_check(count: int | Callable[[dict], int] | None):
    """The recipe's check of `classes=` (located, on the file or a --set): a class listed
    twice, or one beyond the class count where it is known before reading (digits' 10). A
    folder or file has its count only once read: `prepare.select_classes` checks it then."""
    def check(args):
        chosen = list(args["classes"])
        twice = next((c for i, c in enumerate(chosen) if c in chosen[:i]), None)
        if twice is not None:
            return "E0508", "classes", f"classes={chosen} lists class {twice} twice"
        n = count(args) if callable(count) else count
        beyond = next((c for c in chosen if c >= n), None) if n else None
        if beyond is not None:
            return "E0505", "classes", f"classes={chosen}: class {beyond} is not one of 0..{n - 1}"
        return None
    return check


SCHEMA = family(
    _dataset("digits", "8x8 grey digits shipped with dslc (1,797 images, 10 classes); no download", classes=10),
    _dataset("mnist", "MNIST IDX files in dir", _DIR, classes=10),
    _dataset("fashion_mnist", "Fashion-MNIST IDX files in dir", _DIR, classes=10),
    _dataset("cifar10", "CIFAR-10 binary batches in dir", _DIR, classes=10),
    _dataset("cifar100", "CIFAR-100 binary files in dir", _DIR, Arg("labels", Word(("fine", "coarse")), "fine"),
             classes=lambda args: 100 if args["labels"] == "fine" else 20),
    _dataset("curve", "1,000 noisy samples of a function of two inputs shipped with dslc (regression)"),
    _dataset("npz", "a NumPy .npz holding features/images and labels (or, for regression, float targets)",
             _PATH, Arg("x", TEXT, "x", "array of inputs"), Arg("y", TEXT, "y", "array of labels or targets")),
    _dataset("csv", "a CSV file with a header; one column is the class (or some are targets), the others features",
             _PATH, Arg("label", TEXT, "label", "name of the class column"),
             Arg("target", ListOf(TEXT), (), "for regression: the columns of float targets", positional=False)),
    _dataset("image_folder", "one folder of images per class (its sub-folders included), resized to size x size",
             _DIR, Arg("size", INT_POS, doc="side of the square images in pixels")))

# A reader: (arguments, root folder, whether the model reads class labels) -> (train, test or None).
LOADERS = {
    "digits": lambda a, root, labels: (digits(), None),
    "curve": lambda a, root, labels: (curve(), None),
    "mnist": lambda a, root, labels: mnist(root / a["dir"]),
    "fashion_mnist": lambda a, root, labels: fashion_mnist(root / a["dir"]),
    "cifar10": lambda a, root, labels: cifar10(root / a["dir"]),
    "cifar100": lambda a, root, labels: cifar100(root / a["dir"], a.get("labels", "fine")),
    "npz": lambda a, root, labels: (npz(root / a["path"], a.get("x", "x"), a.get("y", "y"), not labels), None),
    "csv": lambda a, root, labels: (csv(root / a["path"], a.get("label", "label"), a.get("target", ()),
                                        not labels), None),
    "image_folder": lambda a, root, labels: (image_folder(root / a["dir"], int(a["size"])), None),
}


def load(call_name: str, args: Mapping | None = None, root=".", labels: bool = True) -> tuple[Dataset, Dataset | None]:
    """(train, test or None) for a recipe's data call; relative paths are taken from `root`
    (the trainer passes the recipe file's folder or the working directory). With `labels`
    false (a regression model) y holds float targets: labels are given as numbers.

    >>> train, test = load("digits", {})
    >>> train.x.shape, test
    ((1797, 1, 8, 8), None)
    """
    if call_name not in LOADERS:
        raise DataError(f"unknown dataset '{call_name}'; known: {', '.join(LOADERS)}")
    loader = LOADERS[call_name]
    args = dict(args or {})
    missing = [a.name for a in SCHEMA[call_name].args if a.default is REQUIRED and a.name not in args]
    if missing:
        raise DataError(f"dataset {call_name}() needs the argument(s) {', '.join(missing)}")
    train, test = loader(args, Path(root), labels)
    if labels and train.regression:
        raise DataError(f"{call_name}() holds float targets (regression), but the model reads class labels; "
                        "declare its target input as f32 and train it with a regression loss such as mse",
                        train.name)
    if not labels:
        train, test = train.as_targets(), None if test is None else test.as_targets()
    return train, test
