"""From a recipe to arrays a step can eat: the data, their splits and classes, the
normalisation statistics.

    data = load_data(recipe, labels=reads_labels(model), model=model)   # train / val / test, statistics
    fit = layout(model, data.train)                # runtime/layout.py: which input reads what

A recipe's data call may keep only some classes (`digits(classes=[5, 6, 7, 8, 9])`): the
examples of other classes are dropped and the labels renumbered 0..k-1 in the order given,
so a 5-class head fits; the class names keep the original classes. That is what a
transfer-learning recipe uses to train on one half of a dataset and fine-tune on the other.
The data are split before the classes are kept, so a subset's validation and test examples
are the ones the whole dataset holds out: a fine-tune never tests on its base run's training
examples.

Given the model, the examples are brought to its input's shape (layout.conform) before the
statistics are fitted, so they and augmentation see the model's layout.

Relative data paths are read from the working directory, as every path on a command line is.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from dslc.diagnostics import CompileError
from dslc.runtime.data import DataError, Dataset, load, normalize, partition
from dslc.runtime.layout import conform


def select_classes(dataset: Dataset, classes) -> Dataset:
    """The examples whose label is in `classes`, relabelled 0..len(classes)-1 in that order.

    >>> from dslc.runtime.data import digits
    >>> part = select_classes(digits(), [5, 6])
    >>> part.classes, part.class_names, sorted(set(part.y.tolist()))
    (2, ('5', '6'), [0, 1])
    """
    classes = [int(c) for c in classes]
    what = classes_problem(classes, dataset.classes)
    if what:
        raise DataError(f"classes={classes}: {what}", dataset.name)
    relabel = np.full(dataset.classes, -1, np.int64)
    relabel[classes] = np.arange(len(classes))
    keep = np.flatnonzero(relabel[dataset.y] >= 0)
    names = tuple(dataset.class_names[c] if dataset.class_names else str(c) for c in classes)
    return Dataset(dataset.x[keep], relabel[dataset.y[keep]], len(classes), dataset.name, names)


def classes_problem(classes: list[int], n: int) -> str | None:
    """Why `classes` cannot be kept of a dataset of n classes (one is not a class of it, or
    one is listed twice), else None."""
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        return f"class {bad[0]} is not one of 0..{n - 1}"
    return "a class is listed twice" if len(set(classes)) != len(classes) else None


@dataclass
class Data:
    """The splits a recipe asks for and the normalisation statistics of its training split."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    stats: dict

    def transform(self, x: np.ndarray) -> np.ndarray:
        return normalize.apply(x, self.stats)

    def split(self, name: str) -> Dataset:
        """One split by name (train, val, test); DataError when the recipe leaves it empty."""
        found = {"train": self.train, "val": self.val, "test": self.test}[name]
        if found is None:
            raise DataError(f"the recipe's split leaves no {name} data (see its `split = validation(...)`)")
        return found


def subset(data: Data, n: int, seed: int) -> Data:
    """`n` examples of the training split drawn with `seed` (in their order), no validation
    or test split, statistics unchanged: what `dslc train --overfit N` trains on."""
    train = data.train
    if not 0 < n <= len(train):
        raise DataError(f"cannot take {n} examples of {len(train):,} in the training split", train.name)
    keep = np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False))
    return Data(train.subset(keep, f"{train.name}[{n} examples]"), None, None, data.stats)


def load_data(recipe, stats: dict | None = None, labels: bool = True, model=None) -> Data:
    """Load `recipe["data"]` (class labels, or float targets when not `labels`), split it as
    `recipe["split"]` says, keep its `classes` in each split, bring the examples to `model`'s
    input (`conform`, when a model is given) and fit the normalisation on the training split,
    unless saved `stats` are given (evaluating a run)."""
    call = recipe["data"]
    args = call.kwargs
    classes = args.pop("classes", ())
    if classes and not labels:
        raise DataError(f"classes={list(classes)}: a regression model reads float targets, not classes",
                        call.name)
    train, test = load(call.name, args, labels=labels)
    split = recipe["split"]
    val: Dataset | None = None
    if split is not None:  # held out before the classes are kept: a subset's held-out examples are the whole's
        try:
            train, val, test = partition(train, test, split["fraction"], split["test"], split["seed"])
        except DataError as e:
            raise _split_error(recipe, e) from None
    if classes:
        _check_classes(recipe, [int(c) for c in classes], train)
        train = _kept(train, classes, "training")
        val, test = (None if p is None else _kept(p, classes, which) for p, which in ((val, "validation"), (test, "test")))
    if model is not None:
        shape = conform(model, train)
        train, val, test = (None if p is None else replace(p, x=p.x.reshape((len(p), *shape))) for p in (train, val, test))
    stats = stats if stats is not None else normalize.fit(train.x, recipe["normalize"])
    return Data(train, val, test, stats)


def _split_error(recipe, e: DataError) -> CompileError:
    """A split the data is too small for, as the recipe mistake it is (E0505, located at the
    train block: the setting may come from the file or a --set), with the split as given: the
    data's size is known only once read, so the recipe's check cannot refuse it earlier."""
    split = recipe["split"]
    given = ", ".join(f"{k}={v:g}" for k, v in split.args)
    return CompileError.single("E0505", f"split = {split.name}({given}) does not fit {e}", recipe.span)


def _check_classes(recipe, classes: list[int], data: Dataset) -> None:
    """A `classes=` a csv, npz or image folder cannot give, as the recipe mistake it is (E0505,
    located at the train block, as _split_error): how many classes the data have is known
    only once read (the built-in datasets' are checked with the recipe)."""
    what = classes_problem(classes, data.classes)
    if what:
        raise CompileError.single("E0505", f"data = {recipe['data'].name}(classes={classes}): {what} "
                                  f"({data.name} has {data.classes} classes)", recipe.span)


def _kept(part: Dataset, classes, which: str) -> Dataset:
    """The examples of `classes` in one split; DataError when it holds none of them."""
    kept = select_classes(part, classes)
    if not len(kept):
        raise DataError(f"classes={list(classes)}: the {which} split holds no example of these classes "
                        f"(of its {len(part):,})" + ("" if which == "training" else "; hold out a larger share"),
                        part.name)
    return kept


def digest(dataset: Dataset) -> str:
    """A fingerprint of a split's examples and labels (blake2b), stored with a run so that a
    resumed run can tell its training split is still the one it was trained on."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(dataset.y).tobytes())
    x = dataset.x.reshape(len(dataset), -1)
    for i in range(0, len(x), 4096):  # a chunk at a time: no copy of the whole split
        h.update(np.ascontiguousarray(x[i:i + 4096]).tobytes())
    return h.hexdigest()


def saved_data_call(saved: dict) -> dict:
    """The data call of the recipe a run was saved with (`saved`: its state.json), as the
    checkpoint holds it ({"call": "npz", "args": {...}}); {} where it does not say (only the
    trainer writes a state.json, but a person may edit it)."""
    recipe = saved.get("recipe")
    entries = recipe.get("entries") if isinstance(recipe, dict) else None
    data = entries.get("data") if isinstance(entries, dict) else None
    return data if isinstance(data, dict) else {}


def split_changed(saved: dict, train: Dataset, fingerprint: str | None = None) -> str | None:
    """Why `train` is not the training split a run was saved with (`saved`: its state.json),
    or None when it is, or when the run does not say and its split cannot have changed.
    `fingerprint` is `digest(train)` where the caller has it already."""
    recorded = saved.get("train_digest")
    if recorded is None:  # saved before dslc recorded it: only `classes=` changed the split
        args = saved_data_call(saved).get("args")
        if isinstance(args, dict) and args.get("classes"):
            return ("it was saved by a dslc that kept `classes=` before splitting the data, so its "
                    "validation and test examples were others (some now in its training split)")
        return None
    if recorded != (fingerprint or digest(train)):
        return f"its training split is not the same examples now ({len(train):,} in {train.name})"
    return None
