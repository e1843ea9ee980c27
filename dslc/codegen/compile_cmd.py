"""`dslc compile`: generate, cache and build a model's kernels; optionally write their source.

    dslc compile models/small_cnn.net                       # train_step and infer, built and cached
    dslc compile models/small_cnn.net --emit out/ --stage infer

For each stage the kernel graph is generated (dslc/codegen/numba_cpu.py), written to
the cache (dslc/codegen/cache.py) and every kernel is compiled by running the graph
once on zeros at `--batch` (Numba compiles on first call; a second `dslc compile` of
the same model loads the compiled kernels from Numba's cache instead). `--emit DIR`
also writes `DIR/<model>_<stage>.py`, byte-identical for identical input.
The time of each stage is printed, so cold and warm starts can be compared.
"""
from __future__ import annotations

import time
from pathlib import Path

STAGES = ("train_step", "infer")


def add_compile_verb(verbs, verb, add_model_args) -> None:
    """Register the verb on the CLI's subparsers (`verb` and `add_model_args` are cli.py's helpers)."""
    p = verb(verbs, "compile", "generate and build a model's CPU kernels; optionally write their source",
             "Lower a model to its kernel graph, generate the Numba kernels of the training step and "
             "the inference graph, cache them (DSLC_CACHE, default ~/.cache/dslc) and compile them by "
             "one run on zeros. A second compile of the same model loads them from the cache.",
             "  dslc compile models/small_cnn.net\n"
             "  dslc compile models/mlp_bn.net --stage train_step --emit generated/")
    add_model_args(p)
    p.add_argument("--target", choices=("cpu",), default="cpu", help="code generator (default: cpu, Numba)")
    p.add_argument("--stage", choices=STAGES, action="append",
                   help="which graph to compile (repeatable; default: train_step and infer)")
    p.add_argument("--emit", metavar="DIR", help="also write the generated source to DIR/<model>_<stage>.py")
    p.add_argument("--batch", type=int, default=2, help="batch size of the warm-up run (default: 2)")
    p.add_argument("--no-build", action="store_true", help="generate and cache the source only; compile nothing")
    p.set_defaults(run=cmd_compile)


def cmd_compile(args) -> int:
    import dslc
    from dslc.cli import parse_sets, write_atomic
    from dslc.codegen.source import identifier
    from dslc.stages import build
    model = dslc.load(args.file, model=args.model, **parse_sets(args.set))
    for stage in args.stage or STAGES:
        if stage == "train_step" and not any(o.kind == "loss" for o in model.graph.outputs):
            print(f"{model.name} train_step: skipped, the model has no loss")
            continue
        start = time.perf_counter()
        graph = build(model, stage)
        cg, source = _compile(graph, args.batch, build_it=not args.no_build)
        seconds = time.perf_counter() - start
        if args.emit:
            out = Path(args.emit) / f"{identifier(model.name)}_{stage}.py"
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out, source.encode())
            where = out
        else:
            where = cg.path
        kernels = cg.kernels
        made = sum(k.kind in ("fused", "group") for k in kernels) - len(cg.fallbacks)
        print(f"{model.name} {stage}: {len(kernels)} kernels ({made} generated, "
              f"{sum(k.kind == 'extern' for k in kernels)} library, {len(cg.fallbacks)} NumPy fallbacks) "
              f"in {seconds:.2f} s -> {where}")
    return 0


def _compile(graph, batch: int, build_it: bool):
    """The bound CompiledGraph and its source; with build_it, one run on zeros compiles every kernel."""
    import numpy as np

    from dslc.ir.types import NUMPY_DTYPE
    from dslc.runtime.cpu.runner import compile_graph
    cg = compile_graph(graph, batch)
    if build_it:
        feeds = {}
        for b in cg.kg.buffers:
            if b.role == "input":
                shape = b.type.bind(cg.plan.batch)
                # scalars (learning rate, step count) 1, data and labels 0
                feeds[b.name] = (np.ones if not shape else np.zeros)(shape, NUMPY_DTYPE[b.dtype])
        cg.run(feeds)
    return cg, cg.path.read_text()
