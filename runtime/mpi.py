"""The ranks of a data-parallel run, over MPI (mpi4py, the optional extra `mpi`).

    mpiexec -n 4 dslc train model.net          # the launcher starts 4 ranks
    dslc train model.net --ranks 2             # dslc starts mpiexec itself, on this machine

A process knows it was started by a launcher from the environment the launcher sets
(MPICH's and Intel MPI's PMI_SIZE, Open MPI's OMPI_COMM_WORLD_SIZE, PMIx's PMIX_SIZE...):
only then is mpi4py imported, so a plain `dslc train` never initialises MPI. `world()`
gives the group of ranks (dslc/collective.py) for this process: MpiRanks over
COMM_WORLD when the launcher started more than one, else ALONE.

Each rank runs Numba with its share of the machine's cores (the cores over the ranks on
the same node), as `dslc search --jobs` does, so two ranks on two cores do not run four
threads. `spawn` is `dslc train --ranks N`: it replaces this process by
`mpiexec -n N python -m dslc.cli ARGS` with the thread count set for the children.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np

from dslc.collective import ALONE, Group, Ranks
from dslc.runtime.cpu import openmp_env
from dslc.runtime.errors import TrainError

# What a launcher sets in each rank's environment: the world size.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
INSTALL = "install the `mpi` extra (pip install 'dslc[mpi]': mpi4py and the mpich wheel, which ships mpiexec)"


def launched_size() -> int:
    """How many ranks the launcher that started this process started (0: no launcher did)."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def warn_ranks(asked: int, started: int) -> None:
    """The recipe's `ranks` and the launcher disagree: the launcher's processes train."""
    print(f"dslc: warning: the recipe asks for ranks = {asked}, but the launcher started {started} "
          f"process{'es' * (started != 1)}; training with {started}", file=sys.stderr)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise TrainError(f"this process was started by an MPI launcher, but mpi4py cannot be imported ({e}); "
                         f"{INSTALL}") from None
    return MPI


class MpiRanks(Ranks):
    """The ranks of MPI's COMM_WORLD. Reductions are MPI_Allreduce in place (summing the
    shares' weighted values); everything else a trainer coordinates is a broadcast from
    rank 0 or a minimum."""

    def __init__(self, comm, MPI):
        super().__init__()
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self._flag = np.zeros(1, np.int64)

    def allreduce_sum(self, buffer: np.ndarray) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)

    def broadcast(self, value, root: int = 0):
        return self.comm.bcast(value, root=root)

    def lowest(self, flag: bool) -> int | None:
        self._flag[0] = self.rank if flag else self.size  # a buffer, not a pickled object: once a step
        self.comm.Allreduce(self.MPI.IN_PLACE, self._flag, op=self.MPI.MIN)
        return None if self._flag[0] == self.size else int(self._flag[0])

    def abort(self, status: int) -> None:
        sys.stderr.flush()
        self.comm.Abort(status)


def world() -> Group:
    """This process's ranks: MpiRanks when a launcher started several, else ALONE."""
    if launched_size() <= 1:
        return ALONE
    MPI = _mpi()
    group = MpiRanks(MPI.COMM_WORLD, MPI)
    if group.size <= 1:
        return ALONE
    _share_cores(group)
    return group


def _share_cores(group: MpiRanks) -> None:
    """Numba threads: this node's cores over this node's ranks (unless NUMBA_NUM_THREADS says)."""
    if "NUMBA_NUM_THREADS" in os.environ:
        return
    import numba
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    numba.set_num_threads(max(1, min(numba.get_num_threads(), cores // group.local_size)))


def launcher() -> str:
    """The mpiexec beside this Python (the mpich wheel's, in a virtual environment), else on the PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        raise TrainError(f"--ranks needs an MPI launcher, and no mpiexec was found; {INSTALL}")
    return found


def spawn(ranks: int, argv: list[str]) -> None:
    """Replace this process by `mpiexec -n RANKS python -m dslc.cli ARGV` on this machine."""
    mpiexec = launcher()
    try:
        import mpi4py  # noqa: F401  (the ranks need it: say so now, not N times)
    except ImportError as e:
        raise TrainError(f"--ranks needs mpi4py ({e}); {INSTALL}") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {**os.environ, "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS", str(max(1, cores // ranks))),
           **openmp_env()}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(mpiexec, [mpiexec, "-n", str(ranks), sys.executable, "-m", "dslc.cli", *argv], env)
