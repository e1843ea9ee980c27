"""Where the trials of `dslc search` run: the one interface, local processes, and Ray tasks.

A trial is an ordinary `dslc train` command line; an engine runs a batch of them and
reports each one's exit status as it finishes. The search (search.py) decides what to run
and reads what each trial left in its run directory, so an engine knows nothing of
spaces, metrics or resuming. Another engine (say, Ray tasks on a cluster) implements the
same `run`: same space, same table, same resumability; only where the trials run changes.

    engine = LocalProcesses(jobs=2)
    engine.run([Task("trial-001", ("train", "m.net", "--out", "s/trial-001", ...), log)], done=print)

LocalProcesses starts each trial as `python -m dslc.cli ARGS`, `jobs` at a time, each with
its share of the cores as Numba threads (two processes with a thread per core each would
fight over them). On Linux a trial dies with the search (PR_SET_PDEATHSIG): a search that
is killed leaves no trial running on, holding its run directory's lock. Ctrl-C is passed to
every running trial, which writes its checkpoint and stops, as `dslc train` does.

RayTasks runs each trial as a task of an existing Ray cluster (the `ray` extra): the same
`python -m dslc.cli ARGS` in a subprocess of a Ray worker, one CPU each (one Numba thread),
as many at a time as the cluster has CPUs for (or `jobs`). The trial's run directory and
log are written where the command names them, from the search's working directory, so on
several machines the search directory and the .net file must be on a file system every
node sees at the same path (as Ray Tune's storage must be). Ctrl-C cancels the running
tasks, which pass it on to their trials (each writes its checkpoint); a trial whose worker
or node died is left pending, and the same command resumes it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from dslc.files import reason
from dslc.runtime.cpu import openmp_env
from dslc.runtime.parent_death import on_parent_death_preexec
from dslc.runtime.errors import TrainError

RAY = "install the `ray` extra (pip install 'dslc[ray]')"

POLL_SECONDS = 0.1
INTERRUPT_GRACE = 60.0  # seconds a trial may take to write its checkpoint after Ctrl-C


@dataclass(frozen=True)
class Task:
    """One trial: its id, the dslc arguments that train it, and the file its output goes to."""

    id: str
    argv: tuple[str, ...]
    log: Path


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: its exit status (negative: killed by that signal), and the last
    `dslc: error:` line of its output when it failed."""

    id: str
    status: int
    error: str = ""


class Engine(Protocol):
    name: str

    def run(self, tasks: Sequence[Task], done: Callable[[Outcome], None]) -> None:
        """Run every task, calling `done` as each finishes (in this thread); return when all
        have. Ctrl-C: stop the running tasks as Ctrl-C stops `dslc train`, then raise
        KeyboardInterrupt."""
        ...


def last_error(log: Path) -> str:
    """The last `dslc: error:` line of a trial's output, else the first line of a located
    diagnostic, else its last line, for the table."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return f"no output ({reason(e)})"
    errors = [line for line in lines if line.startswith("dslc: error:")]
    located = [line for line in lines if ": error[" in line]  # a located diagnostic: its first line
    return (errors[-1:] or located[:1] or lines[-1:] or ["no output"])[0].removeprefix("dslc: error: ")


class LocalProcesses:
    """Trials as processes on this machine, `jobs` at a time (see the module docstring)."""

    name = "local processes"

    def __init__(self, jobs: int = 1):
        self.jobs = jobs
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.env = {**os.environ, "NUMBA_NUM_THREADS": str(max(1, cores // jobs)), **openmp_env()}

    def _start(self, task: Task) -> subprocess.Popen:
        try:
            with open(task.log, "ab") as out:  # appended: a resumed trial keeps its first part's output
                return subprocess.Popen([sys.executable, "-m", "dslc.cli", *task.argv], stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                        start_new_session=True,  # Ctrl-C reaches a trial once, from run()
                                        preexec_fn=on_parent_death_preexec())
        except OSError as e:
            raise TrainError(f"cannot start trial {task.id}: {reason(e)}") from None

    def run(self, tasks: Sequence[Task], done: Callable[[Outcome], None]) -> None:
        waiting = list(tasks)
        running: dict[str, tuple[Task, subprocess.Popen]] = {}
        try:
            while waiting or running:
                while waiting and len(running) < self.jobs:
                    task = waiting.pop(0)
                    running[task.id] = (task, self._start(task))
                for tid, (task, proc) in list(running.items()):
                    status = proc.poll()
                    if status is not None:
                        del running[tid]
                        done(Outcome(tid, status, last_error(task.log) if status else ""))
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self._interrupt([proc for _, proc in running.values()])
            raise

    @staticmethod
    def _interrupt(procs: list[subprocess.Popen]) -> None:
        """Ctrl-C to every running trial (each writes its checkpoint), then wait for them."""
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + INTERRUPT_GRACE
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_trial(argv: tuple[str, ...], log: str, cwd: str, env: dict) -> int:
    """One trial in a subprocess (on a Ray worker): its exit status. A cancelled task (Ctrl-C
    of the search) passes SIGINT on, so the trial writes its checkpoint, and waits for it."""
    with open(log, "ab") as out:  # appended, as LocalProcesses does
        proc = subprocess.Popen([sys.executable, "-m", "dslc.cli", *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env={**os.environ, **env},
                                preexec_fn=on_parent_death_preexec())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(INTERRUPT_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


class RayTasks:
    """Trials as tasks of a Ray cluster at `address` (see the module docstring): None or "auto"
    finds the running one (RAY_ADDRESS, or `ray start` on this machine), "local" starts one
    in this process; a Ray already initialised in this process is used as it is."""

    def __init__(self, address: str | None = None, jobs: int | None = None):
        try:
            import ray
        except ImportError as e:
            raise TrainError(f"--engine ray needs Ray ({e}); {RAY}") from None
        self.ray, self.jobs = ray, jobs
        if not ray.is_initialized():
            try:
                ray.init(address=None if address == "local" else address or "auto", log_to_driver=False,
                         include_dashboard=False, logging_level="ERROR")
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise TrainError(f"cannot connect to a Ray cluster at {address or 'auto'}: {e}") from None
        self.name = f"ray tasks, {int(ray.cluster_resources().get('CPU', 0))} CPUs"
        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_trial)

    def run(self, tasks: Sequence[Task], done: Callable[[Outcome], None]) -> None:
        waiting, running = list(tasks), dict[object, Task]()
        env = {"NUMBA_NUM_THREADS": "1", **openmp_env()}
        try:
            while waiting or running:
                while waiting and (self.jobs is None or len(running) < self.jobs):
                    task = waiting.pop(0)
                    running[self._remote.remote(task.argv, str(task.log), os.getcwd(), env)] = task
                ready, _ = self.ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS * 10)
                for ref in ready:
                    task = running.pop(ref)
                    try:
                        status = self.ray.get(ref)
                    except self.ray.exceptions.RayError:  # its worker or node died: left pending
                        status = -signal.SIGKILL
                    done(Outcome(task.id, status, last_error(task.log) if status > 0 else ""))
        except KeyboardInterrupt:
            for ref in running:
                self.ray.cancel(ref)  # a KeyboardInterrupt in run_trial: SIGINT to the trial
            self.ray.wait(list(running), num_returns=len(running), timeout=INTERRUPT_GRACE)
            raise
