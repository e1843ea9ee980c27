"""Compile what a step runs before it runs: the kernels no cache holds, at once, in worker processes.

    report = build(gen, label="small_cnn train_step")    # before the first step
    report.compiled, report.cached, report.seconds

Numba compiles a function on its first call, one after another, in the calling process.
Here every function the drivers call is listed with its argument types ahead of time
(numba_cpu.driver_calls: library kernels and each generated kernel's shared copy), those
Numba's cache already holds for these types are left to load on first call, and the rest
are compiled concurrently: the calling process and `workers()` spawned processes take
them one at a time, largest first, each filling the same on-disk caches. The first
step then only loads.

A worker that fails leaves its function to the first call, which compiles it in this
process and raises any error where it belongs. While it works, build() says on stderr how
many kernels it compiles and how many came from the cache (one line that updates on a
terminal). It records each function it finds built (cache.write_built), so that
`dslc compile` of a model whose kernels all exist answers without loading Numba at all.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass

from dslc.codegen import cache, shared
from dslc.codegen.numba_cpu import Generator, driver_calls
from dslc.debug import compile_workers, debug_level

# Rough compile seconds, to start the slowest first and to judge whether starting
# processes (about a second each, Numba's start included) pays: library kernels are the largest.
COST = {"library": 3.0, "parallel": 1.5, "serial": 0.4}
SPAWN_WORTH = 4.0  # seconds of compiling below which this process does it alone


@dataclass
class Report:
    calls: int = 0  # distinct (function, argument types) the drivers call
    cached: int = 0
    compiled: int = 0
    processes: int = 1
    seconds: float = 0.0


def workers() -> int:
    """Processes besides this one that compile: one per further idle core (on a machine
    already busy, more processes only repeat the work Numba shares within one);
    DSLC_COMPILE_WORKERS sets the number."""
    if compile_workers() is not None:
        return compile_workers()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(cores - 1, round(idle_cores(cores)) - 1))


def idle_cores(cores: int, seconds: float = 0.1) -> float:
    """How many cores are idle now: from two readings of /proc/stat `seconds` apart (the
    load average lags a minute behind, and would count a compile that just finished), else
    from the load average."""
    def times() -> list[int]:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    try:
        before = times()
        time.sleep(seconds)
        after = times()
    except (OSError, ValueError):
        return cores - os.getloadavg()[0]
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8]) or 1  # user nice system idle iowait irq softirq steal
    return (delta[3] + delta[4]) / total * os.cpu_count()


def build(gen: Generator, label: str, quiet: bool = False) -> Report:
    """Compile, ahead of the first call, every function the drivers of `gen`'s module call
    that Numba's cache does not hold for its argument types; what was done (see the module docstring)."""
    from numba.core.config import DISABLE_JIT
    start = time.perf_counter()
    calls = driver_calls(gen)
    report = Report(calls=len(calls))
    if DISABLE_JIT:
        return report
    pending = []
    for where, types in calls:
        fn = _function(where)
        sig = _signature(types)
        if sig in fn.overloads or _cached(fn, sig):
            report.cached += 1
            cache.write_built(where, types, _index(fn))
        else:
            pending.append((where, types, _cost(where, fn)))
    if pending:
        tell = _Progress(label, len(pending), report.cached, quiet)
        report.processes, seconds = _compile(pending, tell)
        if debug_level() >= 2:  # where compile time goes: DSLC_DEBUG=2
            print(f"dslc: compile seconds of {label}, {report.processes} processes:", file=sys.stderr)
            for (where, types, _), s in sorted(zip(pending, seconds), key=lambda t: -t[1]):
                print(f"  {s:7.2f} s  {'.'.join(where)}  {_show(types)}", file=sys.stderr)
        for where, types, _ in pending:
            fn = _function(where)
            if _cached(fn, _signature(types)):
                cache.write_built(where, types, _index(fn))
        report.compiled = len(pending)
        report.seconds = time.perf_counter() - start
        tell.done(report.seconds)
    return report


def _compile(pending, tell) -> tuple[int, list[float]]:
    """Compile `pending` here and in worker processes; (how many processes worked, the
    seconds each task took).

    The functions of one library module are one unit of work, compiled in one process in
    turn: they call the same helpers (im2col, a GEMM block), which Numba then compiles
    once. Units go out largest first, to whichever process is free."""
    units: dict[str, list[int]] = {}
    for k, (where, _, _) in enumerate(pending):
        units.setdefault(where[0] if where[0].startswith("dslc.") else f"kernel {k}", []).append(k)
    cost = {u: sum(pending[k][2] for k in ks) for u, ks in units.items()}
    order = sorted(units, key=lambda u: -cost[u])
    spawn = min(workers(), len(order) - 1) if sum(cost.values()) >= SPAWN_WORTH else 0
    ctx = multiprocessing.get_context("spawn")  # a forked Numba (threads, LLVM) is not safe
    tasks = [[pending[k][:2] for k in units[u]] for u in order]
    taken, done, seconds = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Array("d", len(pending))
    procs = [ctx.Process(target=_work, args=(tasks, taken, done, seconds), daemon=True) for _ in range(spawn)]
    for p in procs:
        p.start()
    _work(tasks, taken, done, seconds, tell)
    while any(p.is_alive() for p in procs):
        for p in procs:
            p.join(0.2)
        tell.update(done.value)
    index = [k for u in order for k in units[u]]  # the seconds were recorded in task order
    return spawn + 1, [seconds[index.index(k)] for k in range(len(pending))]


def _work(tasks, taken, done, seconds, tell=None) -> None:
    """Take units one at a time until none is left (in this process, or as a worker's target)."""
    first = [sum(len(t) for t in tasks[:u]) for u in range(len(tasks))]  # each unit's first slot in `seconds`
    while True:
        with taken.get_lock():
            u = taken.value
            taken.value += 1
        if u >= len(tasks):
            return
        for j, (where, types) in enumerate(tasks[u]):
            start = time.perf_counter()
            try:
                _function(where).compile(_signature(types))
            except Exception:  # the first call compiles it again here and reports the error
                pass
            seconds[first[u] + j] = time.perf_counter() - start
            with done.get_lock():
                done.value += 1
            if tell is not None:
                tell.update(done.value)


def _function(where):
    """The dispatcher of ((module or shared kernel stem), name)."""
    place, name = where
    if place.startswith("dslc."):
        return getattr(importlib.import_module(place), name)
    return getattr(shared.module(shared.path_of(place)), name)


def _signature(types) -> tuple:
    from numba import types as nt
    scalars = {"int": nt.int64, "bool": nt.boolean, "NoneType": nt.none, "float": nt.float64}
    return tuple(nt.Array(getattr(nt, t[0]), t[1], "C") if isinstance(t, tuple) else scalars[t] for t in types)


def _cached(fn, sig) -> bool:
    """Whether Numba's on-disk cache holds `fn` compiled for `sig` (read from its index; private
    API, so any surprise counts as not cached: the first call then compiles or loads it)."""
    try:
        impl = fn._cache
        return impl._index_key(sig, fn.targetctx.codegen()) in impl._cache_file._load_index()
    except Exception:
        return False


def _index(fn) -> str | None:
    try:
        return fn._cache._cache_file._index_path
    except AttributeError:
        return None


def _show(types) -> str:
    return "(" + ", ".join(f"{t[0]}[{t[1]}d]" if isinstance(t, tuple) else t for t in types) + ")"


def _cost(where, fn) -> float:
    if where[0].startswith("dslc."):
        return COST["library"]
    return COST["parallel" if fn.targetoptions.get("parallel") else "serial"]


class _Progress:
    """One line on stderr: compiling k of n kernels (m from the cache); a terminal sees it count."""

    def __init__(self, label: str, todo: int, cached: int, quiet: bool):
        self.label, self.todo, self.cached = label, todo, cached
        self.tty = sys.stderr.isatty() and not quiet
        self.quiet = quiet
        self.shown = -1
        if not quiet:
            self._say(0, end="\r" if self.tty else "\n")

    def _say(self, k: int, end: str) -> None:
        print(f"dslc: {self.label}: compiling {self.todo} kernels ({self.cached} from the cache): {k}/{self.todo}",
              end=end, file=sys.stderr, flush=True)

    def update(self, k: int) -> None:
        if self.tty and k != self.shown:
            self.shown = k
            self._say(k, end="\r")

    def done(self, seconds: float) -> None:
        if not self.quiet:
            print(f"dslc: {self.label}: compiled {self.todo} kernels ({self.cached} from the cache) in "
                  f"{seconds:.1f} s" + " " * 10, file=sys.stderr, flush=True)
