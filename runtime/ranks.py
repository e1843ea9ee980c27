"""How the ranks of a data-parallel run agree: rank 0 writes, every rank stops together.

Every rank trains (runtime/trainer.py, over a group of ranks from runtime/mpi.py). Rank 0
alone writes the run directory (config, metrics, checkpoints, curves) and evaluates the
validation split; the others hold a `Follower` in its place, which writes nothing. The
steps keep the ranks in lockstep (each waits in the step's reductions), so what may fail
is made a rendezvous:

    together(group, setup)     every rank runs it; if it failed anywhere, every rank stops
    on_rank0(group, save)      rank 0 runs it; if it failed, every rank stops

A failure is raised where it happened, marked `coordinated`, and printed once: by rank 0
if it failed there, else by the lowest rank that failed, naming itself. The other ranks
raise RankStopped, which ends them silently. A failure nobody can know about (a bug, an
exception on one rank in the middle of a step) would leave the others waiting in a
reduction for ever: `guard` prints it and ends the whole run (MPI_Abort), as the launcher
does when a rank is killed. Whatever ends a run, rank 0's checkpoints are written
atomically (runtime/checkpoint.py), so the last one is intact.
"""
from __future__ import annotations

import contextlib
import sys
import traceback
from typing import Callable, Iterator, TypeVar

from dslc.collective import Group, using
from dslc.diagnostics import UsageError
from dslc.runtime.errors import Interrupted, RankStopped
from dslc.runtime.runs import RunPaths

T = TypeVar("T")


def coordinated(error: BaseException) -> BaseException:
    """Mark `error` as one every rank knows of: it ends this rank without aborting the others."""
    error.coordinated = True  # type: ignore[attr-defined]
    return error


def together(group: Group, fn: Callable[[], T]) -> T:
    """fn() on every rank; when it raised anywhere, every rank stops (see the module docstring)."""
    if group.size == 1:
        return fn()
    error: Exception | None = None
    value: T | None = None
    try:
        value = fn()
    except Exception as e:  # every rank must hear of it before anyone raises
        error = e
    who = group.lowest(error is not None)
    if who is None:
        return value
    status = group.broadcast(_status(error) if error is not None else None, root=who)
    if error is None or group.rank != who:
        raise RankStopped(status)  # the launcher reports one exit status for all
    if group.rank and error.args and isinstance(error.args[0], str):
        error.args = (f"(rank {group.rank} of {group.size}) {error.args[0]}",) + error.args[1:]
    raise coordinated(error)


def _status(error: BaseException) -> int:
    """The exit status the command line gives `error` (dslc/cli/__init__.py)."""
    return 2 if isinstance(error, UsageError) else 130 if isinstance(error, Interrupted) else 1


def on_rank0(group: Group, fn: Callable[[], object]) -> None:
    """fn() on rank 0 alone (it writes the run directory); when it raised, every rank stops."""
    together(group, fn if group.rank == 0 else lambda: None)


@contextlib.contextmanager
def guard(group: Group) -> Iterator[Group]:
    """Run the block's collective ops over `group`; a failure on this rank that the others
    cannot know of ends the whole run (see the module docstring)."""
    with using(group):
        try:
            yield group
        except RankStopped:
            raise
        except BaseException as e:
            if group.size == 1 or getattr(e, "coordinated", False):
                raise
            status = 130 if isinstance(e, KeyboardInterrupt) else 1
            if status == 1:
                print(f"dslc: error (rank {group.rank} of {group.size}, the run stops): "
                      f"{type(e).__name__}: {e}", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
            group.abort(status)
            raise


class _Steps:
    """The per-step log of a follower: nothing to write."""

    rows: list = []

    def add(self, step: int, loss: float, lr: float) -> None:
        pass

    def due(self) -> bool:
        return False

    def flush(self) -> list:
        return []


class Follower(RunPaths):
    """What a rank other than 0 holds in place of its run directory (runs.Run): the same
    paths, for messages, and nothing written."""

    def steps(self, per_epoch: int) -> _Steps:
        return _Steps()

    def annotate(self, fields) -> None:
        pass

    def log(self, record, final: bool = False) -> None:
        pass

    def draw(self, records=None) -> None:
        pass

    def close(self) -> None:
        pass
