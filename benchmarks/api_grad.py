"""The compiled Python API's grad against the NumPy reference's: a class score's gradient
with respect to the input images of models/small_cnn.net (a saliency map).

    python -m benchmarks.api_grad [--batch 1 16 64] [--rounds 15] [--block-ms 20] [--device cpu]

For each batch size: `m.compile(device).grad(params, {"image": x}, of="out[:, 3]",
wrt=["image"])` and `m.grad(...)` (the NumPy reference interpreter, the same graph) are
run in rounds: calls of one for `--block-ms` milliseconds, then of the other as long, so
a load that comes and goes weighs on both, and each is timed as a loop of saliency maps
runs it, call after call. The figures are the medians over all the calls, after one
warm-up call each (the compiled one compiles then). `after ref` is the median of the
compiled calls that come right after the reference's: on the 2-core EPYC the first took
2-3 times as long, and the next few 10-30% longer, after any 17 ms of other work, even a
sleep (the VM's idle core waking, not the reference's temporaries). Until 486ba70 the
blocks were five calls of each, so one compiled call in five was such a first call and
two more were slowed: at batch 1 the median was 10-20% above a loop's. The gradients must
agree within 1e-4 of their largest entry (exit status 1 otherwise). Both run in this
process with the BLAS threading the CPU executor sets (one BLAS thread per Numba thread:
dslc/runtime/cpu/blas.py), as `dslc train` does.

On the CPU the table also gives the floor: the compiled graph's FLOPs (the op registry's
count over its kernels; a multiply-add is two) at the machine's float32 GEMM rate,
measured in the same run with dslc's GEMM on every Numba thread. No implementation of
this graph can beat it by much, so `best` = reference / floor bounds the speed-up any
CPU kernels could show against this reference on this machine.

`core trip` is a cache line's round trip between two of Numba's threads, measured after
each round's compiled block (benchmarks/core_latency.py): 50-110 ns where this VM's two vCPUs
share an L3, 310-420 where they do not, and the compiled call's time follows it (small_cnn
at batch 1: 0.15 ms a call against 0.24 on 2026-12-07, the reference's 3.4-3.6 ms in both).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.core_latency import round_trip_ns
from benchmarks.train_step import at_least_one, sgemm_gflops

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4


def graph_gflop(compiled, batch: int) -> float:
    """FLOPs (in 1e9) of the compiled objective graphs' kernels at `batch`: what the grad computes."""
    total = 0
    for step in compiled._steps.values():
        kg = step.kernels
        total += sum(kg.flops(k, batch) for k in kg.kernels)
    return total / 1e9


def timed_blocks(fns, rounds: int, seconds: float, probe=None) -> tuple[list[list[float]], list[list[int]], list]:
    """Each function's call times in seconds, over `rounds` rounds of calls of each function
    in turn for `seconds` (at least one call), the indices of each block's first call, and
    what `probe()` gave after each round's first block (none without one): there, so that
    each first block still follows the last function's block of the round before."""
    times: list[list[float]] = [[] for _ in fns]
    firsts: list[list[int]] = [[] for _ in fns]
    probes = []
    for _ in range(rounds):
        for i, (fn, spent, first) in enumerate(zip(fns, times, firsts)):
            if i == 1 and probe is not None:
                probes.append(probe())
            first.append(len(spent))
            end = time.perf_counter() + seconds
            while True:
                start = time.perf_counter()
                fn()
                spent.append(time.perf_counter() - start)
                if start + spent[-1] >= end:
                    break
    return times, firsts, probes


def measure(batch: int, rounds: int, block_ms: float, device: str, seed: int = 0) -> dict:
    import dslc
    m = dslc.load(ROOT / "models" / "small_cnn.net")
    params = m.init(seed)
    x = np.random.default_rng(seed).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    c = m.compile(device)
    call = dict(of="out[:, 3]", wrt=["image"])
    start = time.perf_counter()
    value, got = c.grad(params, {"image": x}, **call)
    first = time.perf_counter() - start
    ref_value, want = m.grad(params, {"image": x}, **call)
    (compiled, reference), (firsts, _), trips = timed_blocks(
        [lambda: c.grad(params, {"image": x}, **call), lambda: m.grad(params, {"image": x}, **call)],
        rounds, block_ms / 1e3, probe=round_trip_ns if device == "cpu" else None)
    after = [compiled[i] for i in firsts]  # each block's first: right after the reference's calls
    err = float(np.abs(got["image"] - want["image"]).max() / np.abs(want["image"]).max())
    ms = lambda times: 1e3 * float(np.median(times))
    return {"batch": batch, "first_s": first, "compiled_ms": ms(compiled), "after_ms": ms(after),
            "reference_ms": ms(reference), "rel_err": err,
            "value_err": abs(value - ref_value) / max(abs(ref_value), 1e-12),
            "gflop": graph_gflop(c, batch) if device == "cpu" else None,
            "round_trips": [t for t in trips if t is not None]}


def positive_ms(text: str) -> float:
    """An argparse type: a duration in milliseconds, above 0 and finite (a usage error otherwise)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected milliseconds above 0, got {text!r}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=at_least_one, default=15)
    parser.add_argument("--block-ms", type=positive_ms, default=20.0,
                        help="milliseconds of calls of each per round (default 20)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from dslc.runtime.errors import DeviceError
    try:
        from dslc.runtime.executor import executor_for
        executor_for(args.device)
    except DeviceError as e:
        print(e, file=sys.stderr)
        return 1
    sgemm = sgemm_gflops()["dslc"] if args.device == "cpu" else None  # dslc's GEMM, as its kernels run
    if sgemm:
        round_trip_ns(100)  # compiles the probe
    print(f"small_cnn: grad of the class-3 score w.r.t. the images, {args.device} vs the NumPy reference "
          f"(medians over {args.rounds} rounds of {args.block_ms:g} ms of calls of each; load average {os.getloadavg()[0]:.1f})")
    if sgemm:
        print(f"floor: the graph's FLOPs at {sgemm:.1f} GFLOP/s (dslc's sgemm, this run); best: reference / floor")
        print("core trip: a cache line's round trip between two threads after each round's compiled calls, median "
              "(min-max) in ns (benchmarks/core_latency.py)")
    print(f"{'batch':>5}  {'compiled ms':>11}  {'reference ms':>12}  {'speed-up':>8}  {'after ref':>9}  "
          f"{'max rel diff':>12}  {'first call s':>12}"
          + (f"  {'GFLOP':>6}  {'floor ms':>8}  {'best':>6}  {'core trip':>13}" if sgemm else ""))
    ok = True
    for batch in args.batch:
        r = measure(batch, args.rounds, args.block_ms, args.device)
        ok &= r["rel_err"] <= TOL and r["value_err"] <= TOL
        line = (f"{batch:>5}  {r['compiled_ms']:>11.2f}  {r['reference_ms']:>12.2f}  "
                f"{r['reference_ms'] / r['compiled_ms']:>7.1f}x  {r['reference_ms'] / r['after_ms']:>8.1f}x  "
                f"{r['rel_err']:>12.1e}  {r['first_s']:>12.1f}")
        if sgemm:
            floor = r["gflop"] / sgemm * 1e3
            line += f"  {r['gflop']:>6.3f}  {floor:>8.2f}  {r['reference_ms'] / floor:>5.1f}x"
            trips = r["round_trips"]
            line += f"  {np.median(trips):>4.0f} ({min(trips):.0f}-{max(trips):.0f})" if trips else "  (not measured)"
        print(line)
    if not ok:
        print(f"the compiled gradient differs from the reference's by more than {TOL}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
