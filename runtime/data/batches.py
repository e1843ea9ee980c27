"""Shuffled mini-batches, prepared by a background thread while the current step runs.

Each epoch draws from one np.random.Generator (the shuffle generator): first the
permutation of the examples, then a seed for the epoch's augmentations; batch i of the
epoch is augmented with default_rng([that seed, i]). So the whole data stream follows
from the generator's state at the start of an epoch plus the number of batches already
taken, which is all `state()` saves: `restore()` then reproduces the same examples in
the same order with the same augmentations, even from the middle of an epoch.

A data-parallel run (runtime/ranks.py) gives each rank `shard=(rank, ranks)`: every rank
draws the same global order from the same seed and keeps its slice of each batch (the
batch's sorted indices cut into `ranks` nearly equal runs), so the data order is the
same for any number of ranks and a run resumes with another number. A rank's slice is
augmented with default_rng([that seed, i, rank, ranks]): the same distribution as one
process's draws, not the same draws.

The producer thread fills a bounded queue (`prefetch` batches ahead; NumPy releases the
GIL in its array loops, so gathering and augmenting overlap the training step). An
exception in it is re-raised in the consumer; leaving the loop early stops the thread.
"""
from __future__ import annotations

import copy
import math
import queue
import threading
from typing import Callable, Iterator

import numpy as np

from dslc.runtime.data.dataset import Batch, Dataset


class OtherCut(ValueError):
    """A saved stream cut in another batch size, or from another number of examples, than this
    one: (examples, batch) `saved` and `now`. It cannot go on (Batches.restore)."""

    def __init__(self, saved: tuple, now: tuple):
        super().__init__(f"saved batches are of {saved[1]} from {saved[0]} examples, these of {now[1]} from {now[0]}")
        self.saved, self.now = saved, now


class Batches:
    """Mini-batches of `dataset`, one epoch per iteration.

    >>> from dslc.runtime.data.datasets import digits
    >>> b = Batches(digits(), 500, seed=0)
    >>> [len(batch.y) for batch in b], b.epoch
    ([500, 500, 500, 297], 1)

    augment(x, y, rng) -> Batch runs on each gathered batch (see augment.Augment), then
    `transform(x)` (e.g. normalisation). An iteration left early resumes where it stopped.
    """

    def __init__(self, dataset: Dataset, batch: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, augment: Callable | None = None,
                 transform: Callable | None = None, prefetch: int = 2, shard: tuple[int, int] = (0, 1)):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if drop_last and batch > len(dataset):
            raise ValueError(f"batch {batch} > {len(dataset)} examples with drop_last: "
                             "an epoch would be empty")
        self.dataset, self.batch, self.shuffle, self.drop_last = dataset, batch, shuffle, drop_last
        self.augment, self.transform, self.prefetch = augment, transform, prefetch
        self.rank, self.ranks = shard
        self.rng = np.random.default_rng(seed)
        self.epoch, self.position = 0, 0  # completed epochs; batches taken of the current one
        self._epoch_start = self.rng.bit_generator.state

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch if self.drop_last else math.ceil(n / self.batch)

    def total(self, i: int) -> int:
        """Examples in batch i of an epoch, over all ranks."""
        return min(self.batch, len(self.dataset) - i * self.batch)

    def state(self) -> dict:
        """The position in the data stream, JSON-able: save it with a checkpoint."""
        return {"epoch": self.epoch, "position": self.position, "rng": copy.deepcopy(self._epoch_start),
                "examples": len(self.dataset), "batch": self.batch}

    def restore(self, state: dict) -> None:
        """Continue the stream from `state()`, which must come from the same data and batch size."""
        if (state["examples"], state["batch"]) != (len(self.dataset), self.batch):
            raise OtherCut((state["examples"], state["batch"]), (len(self.dataset), self.batch))
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._epoch_start = copy.deepcopy(state["rng"])
        self.epoch, self.position = state["epoch"], state["position"]

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch: Batch(x, y, y_b, lam) each."""
        self.rng.bit_generator.state = copy.deepcopy(self._epoch_start)
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        augment_seed = int(self.rng.integers(2**63))
        jobs = range(self.position, len(self))
        make = lambda i: self._make(order[i * self.batch:(i + 1) * self.batch], augment_seed, i)
        for batch in (map(make, jobs) if self.prefetch < 1 else _prefetched(map(make, jobs), self.prefetch)):
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0
        self._epoch_start = self.rng.bit_generator.state

    def _make(self, indices: np.ndarray, augment_seed: int, i: int) -> Batch:
        # sorted gathers read memory in order; the order inside a batch does not matter
        indices = np.sort(indices)
        seed = [augment_seed, i]
        if self.ranks > 1:
            indices = np.array_split(indices, self.ranks)[self.rank]
            seed += [self.rank, self.ranks]
        x, y = self.dataset.x[indices], self.dataset.y[indices]
        batch = self.augment(x, y, np.random.default_rng(seed)) if self.augment else Batch(x, y)
        return batch._replace(x=self.transform(batch.x)) if self.transform else batch


_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """`items`, computed by a daemon thread up to `depth` ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(_Failed(e))

    worker = threading.Thread(target=produce, name="dslc-batches", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()
