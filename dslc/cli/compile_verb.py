"""`dslc compile`: generate, cache and build a model's kernels; optionally write their source.

    dslc compile models/small_cnn.net                       # train_step and infer, built and cached
    dslc compile models/small_cnn.net --emit out/ --stage infer
    dslc compile models/small_cnn.net --target gpu --emit out/   # out/small_cnn_train_step.cu, ...

For each stage the kernel graph is generated (dslc/codegen/numba_cpu.py), written to
the cache (dslc/codegen/cache.py) and every kernel is compiled by running the graph
once on zeros at `--batch` (Numba compiles on first call and saves the machine code in
its own cache). `--emit DIR` also writes `DIR/<model>_<stage>.py`, byte-identical for
identical input. The time of each stage is printed, so cold and warm starts compare,
and each kernel that would run by the NumPy references (slow, allocating: an op with
neither a library kernel nor a generated loop) is named with its op and `.net` line.

A finished build leaves a record (cache.write_record): the .net files it read, the
modules and Numba cache files it made. The same request again, with every input file
and every piece of dslc's code unchanged and the artefacts still there, is answered
from the record: the kernels are built already, so nothing is loaded, not even Numba
(a second `dslc compile` takes a fraction of a second). Anything changed, and it builds.

`--target gpu` generates the CUDA module of each stage (dslc/codegen/cuda_gpu.py), writes
it to `DIR/<model>_<stage>.cu` (without --emit, to the cache, named by its hash), and,
where `nvcc` is on the PATH, compiles it with `nvcc -cubin` for `--arch` (default: the
local GPU's, else sm_80), printing the time as the cpu target does. Neither CuPy nor a
GPU is needed: this is how a machine without one checks the generated kernels. Without
nvcc it says so, and the source is only written. No build record: nvcc takes seconds.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from dslc.cli.common import add_model_args, count, load_model, verb
from dslc.diagnostics import CliError, UsageError, printable
from dslc.files import ensure_dir, write_atomic

STAGES = ("train_step", "infer")
DEFAULT_ARCH = "sm_80"  # A100: what `--target gpu` compiles for when no GPU is here to ask


def register(verbs) -> None:
    """Add compile to the CLI's subparsers."""
    p = verb(verbs, "compile", "generate and build a model's CPU (or GPU) kernels; optionally write their source",
             "Lower a model to its kernel graph, generate the Numba kernels of the training step and "
             "the inference graph, cache them (DSLC_CACHE, default ~/.cache/dslc) and compile them by "
             "one run on zeros. A second compile of the same model finds them built and returns at once. "
             "With --target gpu: generate the CUDA source of each stage and, where nvcc is on the PATH, "
             "compile it with nvcc -cubin (no GPU or CuPy needed).",
             "  dslc compile models/small_cnn.net\n"
             "  dslc compile models/mlp_bn.net --stage train_step --emit generated/\n"
             "  dslc compile models/small_cnn.net --target gpu --emit generated/")
    add_model_args(p)
    p.add_argument("--target", choices=("cpu", "gpu"), default="cpu",
                   help="code generator (default: cpu, Numba; gpu: CUDA C, compiled by nvcc when present)")
    p.add_argument("--stage", choices=STAGES, action="append",
                   help="which graph to compile (repeatable; default: train_step and infer)")
    p.add_argument("--emit", metavar="DIR",
                   help="also write the generated source to DIR/<model>_<stage>.py (gpu: .cu)")
    p.add_argument("--batch", type=count, default=2, help="batch size of the warm-up run (default: 2)")
    p.add_argument("--no-build", action="store_true", help="generate and cache the source only; compile nothing")
    p.add_argument("--arch", help=f"gpu: the nvcc -arch (default: the local GPU's, else {DEFAULT_ARCH})")
    p.set_defaults(run=cmd_compile)


def cmd_compile(args) -> int:
    from dslc.codegen import cache
    _check_flags(args)
    if args.target == "gpu":
        return _compile_gpu(args)
    start = time.perf_counter()
    stages = list(dict.fromkeys(args.stage or STAGES))
    # realpath, not Path.resolve: a symlink loop is for load() to report, located
    request = {"file": os.path.realpath(args.file), "model": args.model, "set": sorted(args.set or []),
               "stages": stages, "batch": args.batch, "target": args.target}
    record_at = cache.record_path(request)
    record = None if args.no_build else cache.read_record(record_at)
    if record is not None:
        for line, (stage, module), notes in record["lines"]:
            where = _emit(args, line.split()[0], stage, Path(module)) or module
            print(f"{line}: built already ({time.perf_counter() - start:.2f} s) -> {where}")
            _fallbacks(notes, "NumPy")
        return 0
    from dslc.codegen.emit import fallback_notes
    from dslc.codegen.numba_cpu import counts
    from dslc.stages import build
    model = load_model(args)
    lines, artefacts = [], []
    for stage in _stages(model, stages):
        start = time.perf_counter()
        gen, path, made = _compile(build(model, stage), args.batch, build_it=not args.no_build)
        seconds = time.perf_counter() - start
        generated, library = counts(gen)
        summary = (f"{model.name} {stage}: {len(gen.kernels)} kernels ({generated} generated, "
                   f"{library} library, {len(gen.fallback)} NumPy fallbacks)")
        notes = fallback_notes(gen.kernels, gen.fallback)
        where = _emit(args, model.name, stage, path) or path
        print(f"{summary}{': built already' if made is None else ''} in {seconds:.2f} s -> {where}")
        _fallbacks(notes, "NumPy")
        lines.append((summary, (stage, str(path)), notes))
        artefacts += [path] + (made or [])
    if not args.no_build:
        cache.write_record(record_at, model.program.modules, artefacts, lines)
    return 0


def _check_flags(args) -> None:
    """A UsageError for a flag that would do nothing: `--emit ''` emitted nothing, and `--arch`
    with the CPU target was ignored, each without a word."""
    if args.emit is not None and not args.emit.strip():
        raise UsageError("--emit: give the directory to write the generated modules to (it was empty)")
    if args.arch is not None and args.target != "gpu":
        raise UsageError(f"--arch {printable(args.arch)}: the nvcc architecture of --target gpu; the CPU target "
                         "compiles for this machine")


def _fallbacks(notes: list[str], kind: str) -> None:
    """Name each kernel that runs by the NumPy references (allocating, slow): op and `.net` line."""
    for note in notes:
        print(f"  {kind} fallback: {note}")


def _stages(model, stages) -> list[str]:
    """The stages the model has: train_step needs a loss (said when skipped)."""
    if "train_step" in stages and not any(o.kind == "loss" for o in model.graph.outputs):
        print(f"{model.name} train_step: skipped, the model has no loss")
        return [s for s in stages if s != "train_step"]
    return stages


def _emit(args, name: str, stage: str, module: Path) -> Path | None:
    """With --emit, copy the generated module to DIR/<model>_<stage>.py; its path, else None."""
    if not args.emit:
        return None
    from dslc.codegen.source import identifier
    out = ensure_dir(args.emit) / f"{identifier(name)}_{stage}.py"
    write_atomic(out, module.read_bytes())
    return out


def _compile(graph, batch: int, build_it: bool):
    """(the generator, the module's path, what the build made: the shared kernels' files and
    Numba's index files, or None when every kernel was built already). Without build_it the
    source is only generated and cached; else every kernel missing from the caches is compiled
    (runtime/cpu/build.py) and one run on zeros at `batch` checks that the whole step runs.
    A model whose kernels are all built (cache.built_index) needs neither Numba nor a run."""
    from dslc.codegen import cache, shared
    from dslc.codegen.numba_cpu import driver_calls, generate_with
    from dslc.kernels import lower
    from dslc.passes.pipeline import optimize
    kg = lower(optimize(graph)[0])
    gen, source = generate_with(kg)
    path = cache.store(kg, source)
    if not build_it:
        return gen, path, []
    calls = driver_calls(gen)
    kernels = [shared.path_for(shared.canonical(unit)) for unit in gen.units.values()]
    indexes = [cache.built_index(*c) for c in calls]
    if all(indexes):
        return gen, path, None
    import numpy as np

    from dslc.ir.types import NUMPY_DTYPE
    from dslc.kernels.memory_plan import plan
    from dslc.memory import array_bytes, require
    from dslc.runtime.cpu.runner import compile_kernels
    # asked before the arena and the zeros are allocated: `--batch` is anyone's number, and
    # NumPy fails on one beyond its largest dimension with a traceback
    inputs = [b.type for b in kg.buffers if b.role == "input"]
    require(plan(kg, batch).arena_bytes + array_bytes(inputs, {"N": batch}),
            f"the warm-up run of '{graph.name}' at --batch {batch:,}")
    cg = compile_kernels(kg, batch, (gen, source))
    feeds = {}
    for b in cg.kg.buffers:
        if b.role == "input":
            shape = b.type.bind(cg.plan.batch)
            # scalars (learning rate, step count) 1, data and labels 0
            feeds[b.name] = (np.ones if not shape else np.zeros)(shape, NUMPY_DTYPE[b.dtype])
    cg.run(feeds)
    return gen, path, kernels + [index for c in calls if (index := cache.built_index(*c))]


# ---- --target gpu ------------------------------------------------------------------------

def _compile_gpu(args) -> int:
    """Generate each stage's CUDA module, write it, and compile it with nvcc where there is one."""
    import shutil

    from dslc.codegen.cuda_gpu import generate
    from dslc.codegen.emit import fallback_notes
    from dslc.kernels import lower
    from dslc.passes.pipeline import optimize
    from dslc.stages import build
    model = load_model(args)
    nvcc = None if args.no_build else shutil.which("nvcc")
    arch = args.arch or _local_arch()
    for stage in _stages(model, list(dict.fromkeys(args.stage or STAGES))):
        start = time.perf_counter()
        module = generate(lower(optimize(build(model, stage))[0]))
        path = _write_cu(args, model.name, stage, module.source)
        count = {kind: sum(launch.kind == kind for launch in module.launches)
                 for kind in ("generated", "epilogue", "library", "fallback")}
        print(f"{model.name} {stage}: {sum(count.values())} kernels ({count['generated']} generated, "
              f"{count['library']} library, {count['epilogue']} library GEMM/conv + generated epilogue, "
              f"{count['fallback']} host fallbacks) in {time.perf_counter() - start:.2f} s -> {path}")
        _fallbacks(fallback_notes(module.kernels, module.fallbacks), "host")
        if nvcc is not None:
            start = time.perf_counter()
            cubin = _nvcc(nvcc, path, arch)
            print(f"  nvcc -cubin -arch={arch}: built in {time.perf_counter() - start:.2f} s -> {cubin}")
        elif not args.no_build:
            print("  nvcc is not on the PATH: the CUDA source was only written, not compiled")
    return 0


def _write_cu(args, name: str, stage: str, source: str) -> Path:
    """DIR/<model>_<stage>.cu with --emit, else the cache's <model>_<stage>_<hash>.cu; written
    atomically, and byte-identical for identical input."""
    import hashlib

    from dslc.codegen.source import identifier
    from dslc.debug import cache_dir
    if args.emit:
        out = ensure_dir(args.emit) / f"{identifier(name)}_{stage}.cu"
    else:
        digest = hashlib.sha256(source.encode()).hexdigest()[:20]
        out = ensure_dir(cache_dir()) / f"{identifier(name)}_{stage}_{digest}.cu"
    write_atomic(out, source.encode())
    return out


def _nvcc(nvcc: str, source: Path, arch: str) -> Path:
    """`nvcc -cubin` of one module beside it; a CliError with nvcc's messages when it fails."""
    import subprocess

    cubin = source.with_suffix(".cubin")
    done = subprocess.run([nvcc, "-cubin", f"-arch={arch}", "-o", str(cubin), str(source)],
                          capture_output=True, text=True)
    if done.returncode:
        raise CliError(f"nvcc -arch={arch} failed on {source}:\n{(done.stdout + done.stderr).strip()}")
    return cubin


def _local_arch() -> str:
    """sm_XY of the first GPU nvidia-smi reports; DEFAULT_ARCH where there is none."""
    import shutil
    import subprocess
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return DEFAULT_ARCH
    try:
        done = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
        major, minor = done.stdout.split()[0].strip().split(".")
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):  # no driver, no device
        return DEFAULT_ARCH
    return f"sm_{int(major)}{int(minor)}"
