"""How long a person waits before a model's first training step: dslc's compiler against torch.compile.

    python -m benchmarks.compile_time [--json] [--models mlp,small_cnn,cifar_cnn]

Every figure is the wall time from starting a fresh process that loads a model, builds its
training step (the batch and optimizer of benchmarks/train_step.py), compiles it and runs
one step, to the end of that step (the child stamps it), interpreter start included: what
`dslc train` costs before its first step. The child's exit is left out: `dslc train` pays
it after its last step. Per
model, the scenarios run in this order and share one temporary DSLC_CACHE and
NUMBA_CACHE_DIR:

    cold          empty dslc and Numba caches: every library and generated kernel compiled
    unchanged     the same model again: everything loaded from the caches
    size_change   the model at other widths (SIZES): the same kernel texts, nothing compiled
    new_model     a model not seen before made of the same layer kinds (NEW): only kernels
                  of new forms compile
    warm_library  an empty dslc cache beside the full Numba one: the library kernels load,
                  every generated kernel compiles

Each child also reports the seconds its executor spent compiling (`*_compile_s`) and its
peak RSS. `compile_cli_s` is `dslc compile MODEL --stage train_step` at the SIZES widths
after the same command at the file's own widths: the size change a person makes at the
command line, answered from what is built. The peer is torch.compile of the same model (benchmarks/torch_models.py), in a
fresh process to its first compiled training step: cold (an empty TORCHINDUCTOR_CACHE_DIR)
and warm (the cache kept); PyTorch eager to its first step shows what no compiler costs.

Children run with Python's bytecode cache on (PYTHONDONTWRITEBYTECODE unset), as an
installed dslc runs. Kernels compile in worker processes only where the load average
leaves cores idle (runtime/cpu/build.py): on a busy machine the cold figures are
serial ones; the machine's load average is printed with the table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.peer import import_torch
from benchmarks.train_step import BENCHES, ROOT, batch_data, dslc_step, report

SIZES = {"mlp": {"h1": 400, "h2": 200}, "small_cnn": {"width": 40, "hidden": 96},
         "cifar_cnn": {"width": 24, "hidden": 200}, "resnet20": {"width": 24}}
SCENARIOS = ("cold", "unchanged", "size_change", "new_model", "warm_library")

# New arrangements of the benchmark models' layer kinds, at new widths (the input as the model's).
NEW = {
    "mlp": """
block layer(x, n: int) {
    return x |> linear(n, bias=false) |> batchnorm |> relu |> dropout(p=0.25)
}
model fresh_mlp {
    input image : f32[N, 784]
    input label : i64[N]
    logits = image |> layer(300) |> layer(200) |> layer(100) |> linear(10)
    metric accuracy(logits, label)
    loss   cross_entropy(logits, label)
}
""",
    "cnn": """
block conv_bn_relu(x, c: int) {
    return x |> conv2d(c, kernel=3, pad=same, bias=false) |> batchnorm |> relu
}
model fresh_cnn {
    input image : f32[N, %s]
    input label : i64[N]
    x = image |> conv_bn_relu(24) |> maxpool(2) |> conv_bn_relu(48) |> conv_bn_relu(48) |> maxpool(2)
    x = x |> flatten |> linear(100) |> relu
    logits = x |> linear(10)
    metric accuracy(logits, label)
    loss   cross_entropy(logits, label)
}
""",
    "resnet": """
block conv_bn(x, c: int, stride: int = 1) {
    return x |> conv2d(c, kernel=3, stride=stride, pad=1, bias=false) |> batchnorm
}
block down(x, c: int) {
    y = x |> conv_bn(c, stride=2) |> relu |> conv_bn(c)
    return relu(y + (x |> slice(axis=2, step=2) |> slice(axis=3, step=2) |> pad([0, 0, c / 4, c / 4, 0, 0, 0, 0])))
}
model fresh_resnet {
    input image : f32[N, 3, 32, 32]
    input label : i64[N]
    x = image |> conv_bn(20) |> relu
    x = relu(x + (x |> conv_bn(20) |> relu |> conv_bn(20)))
    x = x |> down(40) |> down(80) |> global_avgpool
    logits = x |> linear(10)
    metric accuracy(logits, label)
    loss   cross_entropy(logits, label)
}
""",
}
INPUTS = {"small_cnn": "1, 28, 28", "cifar_cnn": "3, 32, 32"}


def new_model(name: str) -> str:
    return {"mlp": NEW["mlp"], "resnet20": NEW["resnet"]}.get(name) or NEW["cnn"] % INPUTS[name]


def child(name: str, file: str | None, sets: list[str]) -> None:
    """Child process: load, build, compile and run one step; print what the executor compiled."""
    import dslc
    from dslc.cli.common import parse_sets
    from dslc.frontend.values import literals
    overrides = literals(parse_sets(sets))  # as the CLI reads --set: each value one .net literal
    model = dslc.load(file or ROOT / BENCHES[name].file, **overrides)
    _, _, step = dslc_step(name, model=model)
    print(json.dumps({"first_step_at": time.time(), "compile_s": step.compile_seconds,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def torch_child(name: str, compiled: bool) -> None:
    """Child process: the model in PyTorch, compiled (torch.compile) or eager, to its first step."""
    torch = import_torch()

    from benchmarks.torch_models import step_function
    from benchmarks.train_step import prepare
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    opt, graph, _ = prepare(name)
    x, y = batch_data(graph, BENCHES[name].batch)
    step_function(name, opt, x, y, compile=compiled)()
    print(json.dumps({"first_step_at": time.time()}))


def run(args: list[str], env: dict, module: str = "benchmarks.compile_time") -> tuple[float, dict]:
    """(wall seconds, the child's JSON, if it printed one) of `python -m MODULE ARGS`: to
    the first step the child stamps (`first_step_at`), else to its exit."""
    start = time.time()  # the clock the child stamps with
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    ended = time.time()
    if done.returncode:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    last = done.stdout.splitlines()[-1] if done.stdout.strip() else ""
    out = json.loads(last) if last.startswith("{") else {}
    return out.get("first_step_at", ended) - start, out


def measure(name: str, torch: bool) -> dict:
    row = {"model": name}
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="dslc-compile-") as tmp:
        env = dict(base, DSLC_CACHE=f"{tmp}/dslc", NUMBA_CACHE_DIR=f"{tmp}/numba")
        new = Path(tmp) / f"new_{name}.net"
        new.write_text(new_model(name))
        sizes = [f"--set={k}={v}" for k, v in SIZES[name].items()]
        plan = {"cold": ([], env), "unchanged": ([], env), "size_change": (sizes, env),
                "new_model": (["--file", str(new)], env),
                "warm_library": ([], dict(env, DSLC_CACHE=f"{tmp}/dslc-empty"))}
        for scenario in SCENARIOS:
            args, scenario_env = plan[scenario]
            row[f"{scenario}_s"], out = run(["--child", name, *args], scenario_env)
            row[f"{scenario}_compile_s"] = out["compile_s"]
            if scenario == "unchanged":
                row["rss_mb"] = out["rss_mb"]
        compile_ = ["compile", str(ROOT / BENCHES[name].file), "--stage", "train_step"]
        run(compile_, env, "dslc.cli")  # the file's own widths (and its recipe's optimizer)
        row["compile_cli_s"] = run(compile_ + [f"--set={k}={v}" for k, v in SIZES[name].items()], env, "dslc.cli")[0]
        if torch:
            inductor = dict(base, TORCHINDUCTOR_CACHE_DIR=f"{tmp}/inductor")
            row["torch_compile_cold_s"] = run(["--torch", name, "--compiled"], inductor)[0]
            row["torch_compile_warm_s"] = run(["--torch", name, "--compiled"], inductor)[0]
            row["torch_eager_s"] = run(["--torch", name], inductor)[0]
    return row


COLUMNS = ["model", *(f"{s}_s" for s in SCENARIOS), "compile_cli_s", "torch_compile_cold_s", "torch_compile_warm_s",
           "torch_eager_s", "rss_mb"]


def table(rows: list[dict]) -> str:
    cells = [COLUMNS] + [[r.get(c) if isinstance(r.get(c), str) else "-" if r.get(c) is None else f"{r[c]:.2f}"
                          for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compile_time", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--torch", help=argparse.SUPPRESS)
    p.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.file, args.set)
        return 0
    if args.torch:
        torch_child(args.torch, args.compiled)
        return 0
    names = args.models.split(",")
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(BENCHES)}")
    has_torch = import_torch() is not None
    report([measure(n, has_torch) for n in names], args.json, table,
           "seconds of a fresh process to its first training step (compile_cli_s: to `dslc compile`'s answer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
