"""Compile what a step runs before it runs: the kernels no cache holds, at once, in worker processes.

    report = build(gen, label="small_cnn train_step")    # before the first step
    report.compiled, report.cached, report.seconds

Numba compiles a function on its first call, one after another, in the calling process.
Here every function the drivers call is listed with its argument types ahead of time
(numba_cpu.driver_calls: library kernels and each generated kernel's shared copy), those
Numba's cache already holds for these types are left to load on first call, and the rest
are compiled concurrently: the calling process and `workers()` worker processes share
them out, largest first, each filling the same on-disk caches. The first step then only
loads.

A worker that fails leaves its function to the first call, which compiles it in this
process and raises any error where it belongs. While it works, build() says on stderr how
many kernels it compiles and how many came from the cache (one line that updates on a
terminal). It records each function it finds built (cache.write_built), so that
`dslc compile` of a model whose kernels all exist answers without loading Numba at all.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from dslc.codegen import cache, shared
from dslc.codegen.numba_cpu import Generator, driver_calls
from dslc.debug import compile_workers, debug_level
from dslc.runtime.parent_death import die_with_parent

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
    from numba.core import config
    start = time.perf_counter()
    calls = driver_calls(gen)
    report = Report(calls=len(calls))
    if config.DISABLE_JIT:  # type: ignore[attr-defined]  # set from NUMBA_DISABLE_JIT when Numba loads
        return report
    pending = []
    for where, types in calls:
        fn = _function(where)
        sig = _signature(types, fn)
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
            if _cached(fn, _signature(types, fn)):
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
    once. Units wait in one queue, largest estimate first, and a process takes the next
    when it has finished its last: the estimates are rough (Winograd's module takes 25 s,
    softmax's 1 s, both estimated 9), and a fixed share per process left one compiling
    alone for 35 s of small_cnn's 44 while the other sat idle. A worker is `python -m
    dslc.runtime.cpu.build` reading one unit per line on stdin and printing one line per
    task done: a fresh interpreter, never a re-run of the caller's script (which
    multiprocessing's spawn would import again)."""
    units: dict[str, list[int]] = {}
    for k, (where, _, _) in enumerate(pending):
        units.setdefault(where[0] if where[0].startswith("dslc.") else f"kernel {k}", []).append(k)
    cost = {u: sum(pending[k][2] for k in ks) for u, ks in units.items()}
    spawn = min(workers(), len(units) - 1) if sum(cost.values()) >= SPAWN_WORTH else 0
    queue = [units[u] for u in sorted(units, key=lambda u: -cost[u])]
    seconds = [0.0] * len(pending)
    done = [0]
    lock = threading.Lock()

    def take() -> list[int] | None:
        with lock:
            return queue.pop(0) if queue else None

    def finished(k: int, s: float) -> None:
        with lock:
            seconds[k] = s
            done[0] += 1
            tell.update(done[0])

    def feed(proc) -> None:
        """Give a worker the next unit whenever it has finished its last; then let it end."""
        try:
            while (unit := take()) is not None:
                proc.stdin.write(json.dumps([[k, *pending[k][:2]] for k in unit]) + "\n")
                proc.stdin.flush()
                for _ in unit:
                    line = proc.stdout.readline()
                    if not line:  # the worker died: what it had is left to the first call
                        return
                    finished(*json.loads(line))
        except (OSError, ValueError):
            return
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    feeders = []
    for _ in range(spawn):
        proc = subprocess.Popen([sys.executable, "-m", "dslc.runtime.cpu.build", str(os.getpid())],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        feeder = threading.Thread(target=feed, args=(proc,), daemon=True)
        feeder.start()
        feeders.append((proc, feeder))
    while (unit := take()) is not None:
        for k in unit:
            finished(k, _compile_one(*pending[k][:2]))
    for proc, feeder in feeders:
        feeder.join()
        proc.wait()
    return spawn + 1, seconds


def _compile_one(where, types) -> float:
    """Compile one function for its argument types; the seconds it took. A failure is left to
    the first call, which compiles it again in the caller's process and reports the error."""
    start = time.perf_counter()
    try:
        fn = _function(where)
        fn.compile(_signature(types, fn))
    except Exception:
        pass
    return time.perf_counter() - start


def _worker(parent: int) -> None:
    """`python -m dslc.runtime.cpu.build PARENT_PID`: compile the units on stdin, one per line
    ([[index, where, types], ...]), printing [index, seconds] as each task is done. Numba's
    cache is made safe to share first (kernel_cache.py): a worker given shared kernels only
    would otherwise never import it. It ends with its parent (parent_death.py): when a
    `dslc compile` was killed, it went on compiling its unit for up to 25 s, then found its
    stdin closed."""
    die_with_parent(parent)
    from dslc.runtime.cpu import kernel_cache  # noqa: F401
    for line in sys.stdin:
        for k, where, types in json.loads(line):
            seconds = _compile_one(tuple(where), tuple(tuple(t) if isinstance(t, list) else t for t in types))
            print(json.dumps([k, seconds]), flush=True)


def _function(where):
    """The dispatcher of ((module or shared kernel stem), name)."""
    place, name = where
    if place.startswith("dslc."):
        return getattr(importlib.import_module(place), name)
    return getattr(shared.module(shared.path_of(place)), name)


def _signature(types, fn) -> tuple:
    """The Numba signature a call of `fn` with arguments of `types` compiles: theirs, then
    Omitted(default) for each defaulted parameter the call leaves out, as Numba types it
    (conv.py's `phased`, which only strided.py passes)."""
    from numba import types as nt
    scalars = {"int": nt.int64, "bool": nt.boolean, "NoneType": nt.none, "float": nt.float64}
    given = tuple(nt.Array(getattr(nt, t[0]), t[1], "C") if isinstance(t, tuple)
                  else nt.UniTuple(nt.int64, int(t[4:])) if t.startswith("ints") else scalars[t] for t in types)
    rest = list(inspect.signature(fn.py_func).parameters.values())[len(given):]
    return given + tuple(nt.Omitted(p.default) for p in rest)


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


if __name__ == "__main__":
    _worker(int(sys.argv[1]))
