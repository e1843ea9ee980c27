"""The ranks a data-parallel training step averages over, and the collective ops' meaning.

A data-parallel training step (dslc/passes/data_parallel.py) is an ordinary graph with
`allreduce_mean` and `global_count` nodes (dslc/ops/collective.py). What they compute
depends on which processes train together: that is the *group* this module holds, one
per process (or per thread, for tests that simulate ranks in one process).

    with using(group):                       # the MPI ranks (runtime/mpi.py), or ...
        group.begin_step(local=32, total=64)  # this rank's examples of the global batch
        group.mean(x)                         # sum over ranks r of (n_r / n) x_r
        group.batch(32)                       # 64: the global batch

Weighting each rank by its share of the global batch makes the mean of per-rank means
the mean over the whole batch even when the shards differ in size (the last batch of an
epoch), so N ranks at B/N examples each compute what one process computes at B, up to
the order of float summation. A process alone is the group of one (`ALONE`): `mean(x)`
is x and the global batch is the local one, so graphs with collective nodes run, and
are tested, everywhere.

Every group counts its traffic (calls, bytes, seconds) for the DSLC_DEBUG=2 table.
"""
from __future__ import annotations

import contextlib
import contextvars
import time
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np


@dataclass
class Traffic:
    """What a group's allreduces moved: calls, bytes reduced (per rank), seconds spent in them."""

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0
    steps: int = 0

    def per_step(self) -> str:
        """'0.412 ms, 38,760 bytes in 1.0 calls per step' for the debug table."""
        steps = max(self.steps, 1)
        return (f"{self.seconds / steps * 1e3:.3f} ms, {self.bytes // steps:,} bytes in "
                f"{self.calls / steps:.1f} calls per step")


class Group(Protocol):
    """The processes one training step spans. `rank` is this one's number, 0..size-1;
    `local_rank` its number among those on the same machine (which GPU it takes)."""

    rank: int
    size: int
    local_rank: int
    traffic: Traffic

    def begin_step(self, local: int, total: int) -> None: ...

    def share(self) -> float: ...

    def batch(self, local: int) -> int: ...

    def allreduce_sum(self, buffer: np.ndarray) -> None: ...

    def mean(self, x: np.ndarray) -> np.ndarray: ...

    def timed_sum(self, buffer: np.ndarray) -> None: ...

    def broadcast(self, value, root: int = 0):
        """Rank `root`'s `value` (any picklable object), on every rank."""
        ...

    def lowest(self, flag: bool) -> int | None:
        """The lowest rank that passed True, None if none did: every rank learns, at the same
        point, that one saw Ctrl-C or failed, so all stop together."""
        ...

    def abort(self, status: int) -> None:
        """End every rank now (one of them failed where the others would wait for it forever)."""
        ...


class Ranks:
    """What every group shares: the step's batch shares and the weighted mean, over an
    in-place `allreduce_sum` a subclass provides (MPI, NCCL, threads)."""

    rank, size, local_rank = 0, 1, 0

    def __init__(self) -> None:
        self.local = self.total = 0
        self.traffic = Traffic()

    def begin_step(self, local: int, total: int) -> None:
        """This rank trains on `local` of the `total` examples of the step about to run."""
        if not 0 < local <= total:
            raise ValueError(f"a rank's shard must hold 1..{total} examples, got {local}")
        self.local, self.total = local, total
        self.traffic.steps += 1

    def share(self) -> float:
        if not self.total:
            raise RuntimeError("a collective op ran before begin_step() said how the batch is shared")
        return self.local / self.total

    def batch(self, local: int) -> int:
        """The global batch of which this rank holds `local` examples."""
        if local != self.local:
            raise RuntimeError(f"a collective op saw a batch of {local}, but begin_step() announced {self.local}")
        return self.total

    def allreduce_sum(self, buffer: np.ndarray) -> None:
        raise NotImplementedError

    def broadcast(self, value, root: int = 0):
        raise NotImplementedError

    def lowest(self, flag: bool) -> int | None:
        raise NotImplementedError

    def abort(self, status: int) -> None:
        raise NotImplementedError

    def mean(self, x: np.ndarray) -> np.ndarray:
        out = np.array(x, order="C", copy=True)  # contiguous, and an array even for a 0-d x (a loss)
        out *= self.share()
        self.timed_sum(out)
        return out

    def timed_sum(self, buffer: np.ndarray) -> None:
        """allreduce_sum, counted in `traffic`."""
        start = time.perf_counter()
        self.allreduce_sum(buffer)
        self.traffic.seconds += time.perf_counter() - start
        self.traffic.calls += 1
        self.traffic.bytes += buffer.nbytes


class Alone(Ranks):
    """One process: the mean over ranks is the value itself, the global batch the local one."""

    def begin_step(self, local: int, total: int) -> None:
        if local != total:
            raise ValueError(f"one process holds the whole batch: {local} of {total} examples")
        super().begin_step(local, total)

    def share(self) -> float:
        return 1.0

    def batch(self, local: int) -> int:
        return local

    def allreduce_sum(self, buffer: np.ndarray) -> None:
        """Nothing to add: this process is every rank."""

    def broadcast(self, value, root: int = 0):
        return value

    def lowest(self, flag: bool) -> int | None:
        return 0 if flag else None

    def abort(self, status: int) -> None:
        """Nothing else to stop."""

    def mean(self, x: np.ndarray) -> np.ndarray:
        return np.array(x, copy=True)


ALONE = Alone()
_current: contextvars.ContextVar[Group] = contextvars.ContextVar("dslc_group", default=ALONE)


def current() -> Group:
    """The group of this process (or thread): ALONE unless `using` set another."""
    return _current.get()


@contextlib.contextmanager
def using(group: Group) -> Iterator[Group]:
    """Run the block's collective ops over `group`."""
    token = _current.set(group)
    try:
        yield group
    finally:
        _current.reset(token)
