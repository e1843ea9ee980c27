"""Data parallelism on this machine: what a step sends, and how the step time scales with ranks.

    python -m benchmarks.data_parallel [--json] [--models digits_mlp,small_cnn,mlp_bn] [--steps 30] [--rounds 3]

Two tables:
- volume: for every shipped model, what each rank sends per training step, read from the
  data-parallel step graph (dslc/passes/data_parallel.py) without running anything: the
  one flat bucket (every trainable parameter's gradient, the loss and the metrics, and
  without sync_batchnorm the running statistics) and, with sync_batchnorm, the batch
  statistics reduced inside the forward and backward passes (2 x 2 x channels per
  batchnorm), in float32. A ring allreduce moves about 2 (N - 1) / N times that per rank.
- scaling: the median step time of `--models` at their recipes' batch on 1 and 2 ranks
  (`mpiexec -n R`), the same global batch either way (each rank B/R examples, with
  cores / R Numba threads), in `--rounds` alternating rounds so a passing load weighs on
  both; throughput in examples per second over all ranks, and the share of the step spent
  in the reductions (rank 0's). Needs the `mpi` extra; the volume table does not.

Each rank of the scaling runs `python -m benchmarks.data_parallel --worker MODEL ...`: it
builds the training step (data-parallel with more than one rank), feeds random data of
its shard, warms up, and times `--steps` steps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dslc.runtime.cpu import openmp_env

ROOT = Path(__file__).resolve().parent.parent
SCALED = {"digits_mlp": 64, "small_cnn": 128, "mlp_bn": 128}  # their recipes' batches


def volume(file: Path, sync: bool) -> tuple[int, int]:
    """(bytes in the step's bucket, bytes reduced at once) each rank sends per step."""
    import dslc
    from dslc.passes.data_parallel import DataParallel
    from dslc.passes.train_step import Optimizer, train_step

    model = dslc.load(file)
    graph = train_step(model.graph, Optimizer("sgd", lr=0.01), parallel=DataParallel(sync_batchnorm=sync))
    bucket = now = 0
    for n in graph.of_op("allreduce_mean"):
        size = 4 * n.type.numel() if n.type.rank else 4
        if n.attr("bucket"):
            bucket += size
        else:
            now += size
    return bucket, now


def volumes() -> list[dict]:
    rows = []
    for file in sorted((ROOT / "models").glob("*.net")):
        bucket, _ = volume(file, False)
        sync_bucket, sync_now = volume(file, True)
        rows.append({"model": file.stem, "bucket_bytes": bucket, "sync_bucket_bytes": sync_bucket,
                     "sync_batch_statistics_bytes": sync_now})
    return rows


def worker(name: str, batch: int, steps: int) -> None:
    """One rank's timing (run under mpiexec): prints one JSON line on rank 0."""
    import dslc
    from dslc.collective import using
    from dslc.passes.data_parallel import DataParallel
    from dslc.passes.train_step import Optimizer, train_step
    from dslc.runtime.executor import executor_for
    from dslc.runtime.mpi import world

    group = world()
    model = dslc.load(ROOT / "models" / f"{name}.net")
    parallel = DataParallel() if group.size > 1 else None
    graph = train_step(model.graph, Optimizer("adam", lr=1e-4), parallel=parallel)
    local = len(np.array_split(np.arange(batch), group.size)[group.rank])
    rng = np.random.default_rng(group.rank)
    feeds = {}
    for n in graph.inputs:
        shape = n.type.bind({"N": local})
        feeds[n.name] = (rng.standard_normal(shape).astype(np.float32) if n.type.is_float
                         else rng.integers(0, 10, shape).astype(np.int64))
    feeds.update({k: np.asarray(v, np.float32) for k, v in (("lr", 1e-4), ("step", 1.0)) if k in feeds})
    params = model.init(0)
    for p in graph.params:
        params.setdefault(p.name, np.zeros(p.type.bind({}), np.float32))
    step = executor_for("cpu").compile(graph)
    step.prepare(quiet=True)
    times = []
    with using(group):
        for k in range(steps + 5):
            group.begin_step(local, batch) if group.size > 1 else None
            start = time.perf_counter()
            step(feeds, params)
            group.lowest(False) if group.size > 1 else None  # the trainer's per-step Ctrl-C check
            if k >= 5:
                times.append(time.perf_counter() - start)
        traffic = group.traffic
    if group.rank == 0:
        seconds = traffic.seconds / max(traffic.steps, 1)
        print(json.dumps({"model": name, "ranks": group.size, "batch": batch, "step_ms": statistics.median(times) * 1e3,
                          "allreduce_ms": seconds * 1e3, "bytes": traffic.bytes // max(traffic.steps, 1)}), flush=True)


def scaling(models: list[str], steps: int, rounds: int) -> list[dict]:
    from dslc.runtime.mpi import launcher

    mpiexec = launcher()
    cores = len(os.sched_getaffinity(0))
    found: dict[tuple[str, int], list[dict]] = {}
    for _ in range(rounds):
        for name in models:
            for ranks in (1, 2):
                env = {**os.environ, "NUMBA_NUM_THREADS": str(max(1, cores // ranks)), **openmp_env()}
                argv = [mpiexec, "-n", str(ranks), sys.executable, "-m", "benchmarks.data_parallel", "--worker", name,
                        "--batch", str(SCALED[name]), "--steps", str(steps)]
                out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
                if out.returncode:
                    raise SystemExit(f"{name} on {ranks} ranks failed:\n{out.stderr}")
                found.setdefault((name, ranks), []).append(json.loads(out.stdout.splitlines()[-1]))
    rows = []
    for (name, ranks), runs in found.items():
        step = statistics.median(r["step_ms"] for r in runs)
        rows.append({"model": name, "ranks": ranks, "batch": runs[0]["batch"], "step_ms": round(step, 3),
                     "examples_per_s": round(runs[0]["batch"] / step * 1e3),
                     "allreduce_ms": round(statistics.median(r["allreduce_ms"] for r in runs), 3),
                     "bytes": runs[0]["bytes"], "rounds": [round(r["step_ms"], 3) for r in runs]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_parallel", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits_mlp,small_cnn,mlp_bn")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-scaling", action="store_true", help="only the volume table")
    p.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.batch, args.steps)
        return 0
    report = {"volume": volumes(), "load_average": os.getloadavg()}
    if not args.no_scaling:
        report["scaling"] = scaling(args.models.split(","), args.steps, args.rounds)
        report["load_average_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("bytes each rank sends per step (float32)")
    print(f"{'model':<12} {'bucket':>14} {'sync: bucket':>14} {'+ batch statistics':>20}")
    for r in report["volume"]:
        print(f"{r['model']:<12} {r['bucket_bytes']:>14,} {r['sync_bucket_bytes']:>14,} "
              f"{r['sync_batch_statistics_bytes']:>20,}")
    for r in report.get("scaling", []):
        print(f"{r['model']:<12} ranks {r['ranks']}  batch {r['batch']}  step {r['step_ms']:.2f} ms  "
              f"{r['examples_per_s']:,} ex/s  allreduce {r['allreduce_ms']:.3f} ms  rounds {r['rounds']}")
    print(f"load average {report['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
