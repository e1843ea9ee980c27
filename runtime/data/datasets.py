"""The datasets a recipe can name, and `load`, which turns a recipe's `data = ...` call into them.

    load("mnist", {"dir": "data/mnist"}) -> (train, test)
    load("digits", {})                   -> (all 1,797 digits, None)

Loaders that ship no test set return None for it; `split.partition` then holds one out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from dslc.runtime.data.cifar import cifar10, cifar100
from dslc.runtime.data.dataset import DataError, Dataset, checked
from dslc.runtime.data.idx import fashion_mnist, mnist
from dslc.runtime.data.images import image_folder
from dslc.runtime.data.tabular import csv, npz

DIGITS_FILE = Path(__file__).with_name("digits.npz")


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


# recipe call -> (required arguments, loader returning (train, test or None))
LOADERS = {
    "digits": ((), lambda a, root: (digits(), None)),
    "mnist": (("dir",), lambda a, root: mnist(root / a["dir"])),
    "fashion_mnist": (("dir",), lambda a, root: fashion_mnist(root / a["dir"])),
    "cifar10": (("dir",), lambda a, root: cifar10(root / a["dir"])),
    "cifar100": (("dir",), lambda a, root: cifar100(root / a["dir"], a.get("labels", "fine"))),
    "npz": (("path",), lambda a, root: (npz(root / a["path"], a.get("x", "x"), a.get("y", "y")), None)),
    "csv": (("path",), lambda a, root: (csv(root / a["path"], a.get("label", "label")), None)),
    "image_folder": (("dir", "size"), lambda a, root: (image_folder(root / a["dir"], int(a["size"])), None)),
}


def load(call_name: str, args: Mapping | None = None, root=".") -> tuple[Dataset, Dataset | None]:
    """(train, test or None) for a recipe's data call; relative paths are taken from `root`
    (the trainer passes the recipe file's folder or the working directory).

    >>> train, test = load("digits", {})
    >>> train.x.shape, test
    ((1797, 1, 8, 8), None)
    """
    if call_name not in LOADERS:
        raise DataError(f"unknown dataset '{call_name}'; known: {', '.join(LOADERS)}")
    needs, loader = LOADERS[call_name]
    args = dict(args or {})
    missing = [k for k in needs if k not in args]
    if missing:
        raise DataError(f"dataset {call_name}() needs the argument(s) {', '.join(missing)}")
    return loader(args, Path(root))
