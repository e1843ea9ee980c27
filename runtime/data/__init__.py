"""The trainer's data layer: datasets, splits, normalisation, augmentation and batches.

    train, test = load("digits", {})                  # (Dataset, Dataset or None)
    train, val, test = partition(train, test, 0.1, test_fraction=0.2, seed=0)
    stats = normalize.fit(train.x, "per_channel")     # JSON-able, stored with the run
    batches = Batches(train, 64, seed=0, augment=build_augment([("hflip", {})]),
                      transform=lambda x: normalize.apply(x, stats))
    for batch in batches: ...                         # Batch(x, y, y_b, lam), one epoch

Every loader raises DataError (one line naming the file) for data it cannot use.
"""
from dslc.runtime.data import normalize
from dslc.runtime.data.augment import Augment, build_augment
from dslc.runtime.data.batches import Batches
from dslc.runtime.data.cifar import cifar10, cifar100
from dslc.runtime.data.dataset import Batch, DataError, Dataset
from dslc.runtime.data.datasets import LOADERS, digits, load
from dslc.runtime.data.idx import fashion_mnist, mnist
from dslc.runtime.data.images import image_folder
from dslc.runtime.data.split import holdout, partition, split
from dslc.runtime.data.tabular import csv, npz

__all__ = ["Augment", "Batch", "Batches", "DataError", "Dataset", "LOADERS", "build_augment", "cifar10",
           "cifar100", "csv", "digits", "fashion_mnist", "holdout", "image_folder", "load", "mnist",
           "normalize", "npz", "partition", "split"]
