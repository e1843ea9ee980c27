"""How long one cache line takes to go from one of Numba's threads to another and back.

    python -m benchmarks.core_latency [--rounds 100000] [--samples 5]

Two of Numba's threads pass a counter back and forth through one 64-byte line: one
writes an odd value and waits for the next even one, the other waits for the odd value
and writes the next. A round trip is two transfers of the line between the cores that
run them, so its time is what every parallel loop pays to start and join, and what a
kernel pays for each line it reads or overwrites that another core last wrote.

Why. On the 2-core EPYC VM the compiled saliency gradient of benchmarks/api_grad.py at
batch 1 took 0.15 ms a call for some minutes and 0.23 for others, with no other load and
no steal time (/proc/stat). The round trip told the two apart on 2026-12-07: 50-90 ns in
the fast minutes, 320-420 ns in the slow ones, switching with the call's time within a
second, in one process. The host runs the VM's two vCPUs on cores that share an L3
(Zen 4: a CCX) at some times and on cores farther apart at others, and the second costs
every transfer between them about five times as much. One thread's kernels do not move.
api_grad prints the round trip with its table, so that a reader can tell which kind of
minute a figure came from.

The loads and stores are atomic (acquire and release, through llvmlite), so LLVM cannot
hoist a load out of its wait loop. The two sides are the two iterations of a `prange`,
which Numba's static schedule gives to two threads. Each side gives up after
`SPIN_BUDGET` polls in all (half a second or so), and None is returned: the two threads
were not running at once. Two of Numba's threads on one core take a time slice of the
scheduler for each pass of the line, minutes for a probe; a process held to one CPU (by
`taskset`, a cpuset) is not probed at all.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from dslc.runtime.cpu import kernel_cache  # noqa: F401  (sets the threading up before Numba starts)
from numba import get_num_threads, njit, prange, types
from numba.extending import intrinsic

# Polls of one side's waits in one probe: about 0.5 s. A poll hits the core's own copy of
# the line until the other core writes it, so polls run at about two a cycle: 100000 round
# trips of 80 ns took 2^25 of them.
SPIN_BUDGET = 1 << 31


@intrinsic
def _load_acquire(typingctx, flags):
    """flags[0], as an atomic load with acquire ordering."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, "acquire", 8)
    return types.int64(flags), codegen


@intrinsic
def _store_release(typingctx, flags, value):
    """flags[0] = value, as an atomic store with release ordering."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        builder.store_atomic(args[1], data, "release", 8)
        return context.get_dummy_value()
    return types.void(flags, types.int64), codegen


@njit(inline="always")
def _wait_for(flags, value, budget):
    """The polls it took for flags[0] to become `value`, or -1 when `budget` polls did not see it."""
    for spent in range(budget):
        if _load_acquire(flags) == value:
            return spent
    return -1


@njit(parallel=True)
def _ping_pong(flags, rounds, done):
    """`rounds` round trips of flags[0] between the two iterations' threads; done[side] = 1
    when that side finished them all within SPIN_BUDGET polls (0: it gave up)."""
    for side in prange(2):
        left, spent = SPIN_BUDGET, 0
        for r in range(rounds):
            if side == 0:
                _store_release(flags, 2 * r + 1)
                spent = _wait_for(flags, 2 * r + 2, left)
            else:
                spent = _wait_for(flags, 2 * r + 1, left)
                _store_release(flags, 2 * r + 2)
            if spent < 0:
                break
            left -= spent
        done[side] = 1 if left > 0 and spent >= 0 else 0


def round_trip_ns(rounds: int = 20000) -> float | None:
    """Nanoseconds of one round trip of a cache line between two of Numba's threads (the
    whole call over `rounds`: waking the second thread is under 0.1 us a round at 20000);
    None for no rounds, with fewer than two threads or CPUs, or when the two sides did not
    run at once."""
    if rounds < 1 or get_num_threads() < 2 or len(os.sched_getaffinity(0)) < 2:  # each thread on a core of its own
        return None
    flags = np.zeros(16, np.int64)  # 128 bytes: the counter alone on its line, wherever it starts
    done = np.zeros(2, np.int64)
    start = time.perf_counter()
    _ping_pong(flags[8:], rounds, done)
    spent = time.perf_counter() - start
    return 1e9 * spent / rounds if done.all() else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100000)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args(argv)
    round_trip_ns(100)  # compiles
    times = [round_trip_ns(max(1, args.rounds)) for _ in range(max(1, args.samples))]
    if None in times:
        print("core_latency: needs two of Numba's threads running at once, on two CPUs (NUMBA_NUM_THREADS >= 2, "
              "and no taskset to one CPU)", file=sys.stderr)
        return 1
    print(f"round trip of a cache line between two threads: {' '.join(f'{t:.0f}' for t in times)} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
