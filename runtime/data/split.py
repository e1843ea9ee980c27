"""Seeded, deterministic hold-out splits.

A split is a permutation drawn from np.random.default_rng(seed): the first round(N *
fraction) examples of it are held out. Same data, fraction and seed -> same split, on
every machine (NumPy guarantees PCG64's stream). Splits are not stratified; with a few
hundred examples per class the class shares of the parts stay close to the whole's.
"""
from __future__ import annotations

import numpy as np

from dslc.runtime.data.dataset import DataError, Dataset


def split(dataset: Dataset, fraction: float, seed: int = 0,
          names: tuple[str, str] | None = None) -> tuple[Dataset, Dataset]:
    """(kept, held out): a random `fraction` of the examples held out; both keep the original order.

    >>> from dslc.runtime.data.datasets import digits
    >>> train, val = split(digits(), 0.1, seed=0)
    >>> len(train), len(val)
    (1617, 180)
    """
    n = len(dataset)
    held = int(round(n * fraction))
    if not 0 < fraction < 1 or held == 0 or held == n:
        raise DataError(f"cannot hold out {fraction:g} of {n} examples: both parts must be non-empty",
                        dataset.name)
    order = np.random.default_rng(seed).permutation(n)
    kept_name, held_name = names or (dataset.name, f"{dataset.name}-val")
    return (dataset.subset(np.sort(order[held:]), kept_name),
            dataset.subset(np.sort(order[:held]), held_name))


def holdout(dataset: Dataset, fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, test) for data that ships without a test set, e.g. digits: 1,438 + 359 examples."""
    return split(dataset, fraction, seed, (dataset.name, f"{dataset.name}-test"))


def partition(train: Dataset, test: Dataset | None, fraction: float = 0.1, test_fraction: float = 0.0,
              seed: int = 0) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """(train, validation, test) as a recipe's `split = validation(fraction, test, seed)` asks.

    A shipped test set is kept as it is; without one, `test_fraction` of the data is held
    out first (by `holdout`, so the digits test split is the same whatever the validation
    fraction), then `fraction` of the whole data is held out of the rest for validation.
    fraction = 0 means no validation set; test_fraction = 0 and no test set, no test set.
    """
    if test is None and test_fraction > 0:
        train, test = holdout(train, test_fraction, seed)
        fraction = fraction / (1 - test_fraction)  # of what is left, so the share of the whole
    if fraction == 0:
        return train, None, test
    train, val = split(train, fraction, seed + 1)  # another seed: no correlation with the test draw
    return train, val, test
