"""Time whole training steps: dslc's compiled CPU step against the same model in PyTorch eager.

    python -m benchmarks.train_step [--json] [--models mlp,small_cnn,cifar_cnn] [--steps 30]

For each benchmark model, in one run:
- step: the median time of a dslc training step (the Numba executor the trainer uses,
  called as `dslc train` calls it: feeds, params, dropout generator) over `--steps`
  timed steps after a warm-up, on random data of the model's input shape;
- compile: a fresh process builds the training step and runs it once, first with
  empty DSLC_CACHE and NUMBA_CACHE_DIR (cold: everything generated and compiled), then
  again with the same directories (warm: loaded from the caches); wall seconds of the
  whole process, interpreter start included, as a user waits for `dslc compile`;
- memory: the step's arena (every buffer of the memory plan plus the conv workspace)
  and the peak RSS of that warm process (dslc alone, no PyTorch loaded);
- torch: where PyTorch is installed, the same architecture and optimizer in eager mode
  (benchmarks/torch_models.py) on the same arrays, with torch.set_num_threads equal to
  the threads dslc uses, and the ratio dslc / PyTorch (below 1: dslc is faster).

The median of many steps is robust to other processes briefly taking a core; the
machine's load average is printed so a reader can judge the conditions.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dslc.runtime.cpu  # noqa: F401  (OMP_WAIT_POLICY=passive before Numba starts)

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bench:
    file: str
    batch: int
    optimizer: dict  # keyword arguments of dslc.passes.train_step.Optimizer


BENCHES = {
    "mlp": Bench("models/mlp_bn.net", 128, dict(kind="adam", lr=1e-3)),
    "small_cnn": Bench("models/small_cnn.net", 64, dict(kind="sgd", lr=0.01, momentum=0.9)),
    "cifar_cnn": Bench("models/cifar_cnn.net", 128, dict(kind="sgd", lr=0.05, momentum=0.9, nesterov=True)),
}


def prepare(name: str):
    """(optimizer, training-step graph, model) of benchmark `name`."""
    import dslc
    from dslc.passes.train_step import Optimizer
    from dslc.stages import build
    bench = BENCHES[name]
    model = dslc.load(ROOT / bench.file)
    opt = Optimizer(**bench.optimizer)
    return opt, build(model, "train_step", opt), model


def batch_data(graph, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random image batch of the graph's input shape and labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    shape = graph["image"].type.bind({"N": batch})
    return rng.standard_normal(shape, dtype=np.float32), rng.integers(0, 10, batch).astype(np.int64)


def dslc_step(name: str):
    """A function running one dslc training step of benchmark `name` (as the trainer runs it),
    and the compiled graph behind it."""
    from dslc.ir.types import NUMPY_DTYPE
    from dslc.runtime.cpu.executor import NumbaExecutor
    opt, graph, model = prepare(name)
    x, y = batch_data(graph, BENCHES[name].batch)
    params = model.init(0)
    for node in graph.params:  # optimizer state starts at zero
        params.setdefault(node.name, np.zeros(node.type.bind({}), NUMPY_DTYPE[node.type.dtype]))
    feeds = {"image": x, "label": y, "lr": np.float32(opt.lr)}
    if opt.needs_step:
        feeds["step"] = np.float32(1)
    step, rng = NumbaExecutor().compile(graph), np.random.default_rng(0)

    def run():
        return float(step(feeds, params, rng)["loss"])
    run()
    return run, next(iter(step.compiled.values()))


def median_ms(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def compile_child(name: str) -> None:
    """Child process: build, compile and run one step of `name`; print its peak RSS as JSON."""
    dslc_step(name)
    print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def compile_times(name: str) -> dict:
    """Cold and warm compile seconds (whole fresh processes) and the warm process's peak RSS."""
    with tempfile.TemporaryDirectory(prefix="dslc-bench-") as tmp:
        env = dict(os.environ, DSLC_CACHE=f"{tmp}/dslc", NUMBA_CACHE_DIR=f"{tmp}/numba")
        out = {}
        for run in ("cold", "warm"):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--child", name], cwd=ROOT,
                                  env=env, capture_output=True, text=True)
            out[f"compile_{run}_s"] = time.perf_counter() - start
            if done.returncode:
                raise RuntimeError(f"compiling {name} failed:\n{done.stderr}")
        out["rss_mb"] = json.loads(done.stdout.splitlines()[-1])["rss_mb"]
    return out


def threads() -> int:
    import numba
    return numba.get_num_threads()


def measure(name: str, steps: int) -> dict:
    run, cg = dslc_step(name)
    row = {"model": name, "batch": BENCHES[name].batch, "optimizer": BENCHES[name].optimizer["kind"],
           "threads": threads(), "dslc_ms": median_ms(run, steps),
           "arena_mb": (cg.arena.nbytes + cg.workspace.nbytes) / 2**20}
    row.update(compile_times(name))
    try:
        import torch
    except ImportError:
        row["torch_ms"] = row["ratio"] = None
        return row
    from benchmarks.torch_models import step_function
    from dslc.passes.train_step import Optimizer
    torch.set_num_threads(row["threads"])
    opt, graph, _ = prepare(name)
    x, y = batch_data(graph, row["batch"])
    row["torch_ms"] = median_ms(step_function(name, opt, x, y), steps)
    row["ratio"] = row["dslc_ms"] / row["torch_ms"]
    return row


COLUMNS = [("model", "{}"), ("batch", "{}"), ("optimizer", "{}"), ("threads", "{}"), ("dslc_ms", "{:.2f}"),
           ("torch_ms", "{:.2f}"), ("ratio", "{:.2f}"), ("compile_cold_s", "{:.1f}"), ("compile_warm_s", "{:.2f}"),
           ("arena_mb", "{:.1f}"), ("rss_mb", "{:.0f}")]


def table(rows: list[dict]) -> str:
    cells = [[name for name, _ in COLUMNS]]
    cells += [["-" if r[c] is None else fmt.format(r[c]) for c, fmt in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    p.add_argument("--steps", type=int, default=30, help="timed steps per model (default: 30)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        compile_child(args.child)
        return 0
    names = args.models.split(",")
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(BENCHES)}")
    rows = [measure(n, args.steps) for n in names]
    machine = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=1))
    else:
        print(table(rows))
        print(f"\n{machine['cpus']} CPUs, load average {' '.join(f'{v:.2f}' for v in machine['load_average'])}; "
              "ms: median training step; ratio: dslc / PyTorch eager; compile: seconds of a fresh process, "
              "cold (empty caches) and warm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
