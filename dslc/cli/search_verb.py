"""The `dslc search` verb: a hyper-parameter search over the space a recipe declares.

Its body is dslc.runtime.search (the plan, resuming, the table) and engines.py (where the
trials run); here the flags are read, the space assembled from the recipe's search block
and --space, and the table printed.
"""
from __future__ import annotations

import json
import sys

from dslc.cli.common import add_recipe_args, count, recipe_sets, seed, verb
from dslc.diagnostics import UsageError, printable


def space_of(model, recipe, texts: list[str]):
    """The recipe's search space with the --space KEY=DISTRIBUTION given (each replaces or adds
    a dimension); UsageError naming the --space that is wrong."""
    from dslc.recipe import schema as R
    from dslc.frontend.parse import parse_expression
    from dslc.frontend.recipe_search import dimension, setting_key
    from dslc.diagnostics import CompileError, Span

    # `lr` and `optimizer.lr` name one setting: a --space of either replaces the block's other
    dims = {setting_key(d.key, R.KEYS): d for d in recipe.space}
    hyper = {f.name: f.type for f in model.program.models[model.name].formals if f.type is not None}
    for text in texts:
        key, eq, value = text.partition("=")
        where = f"--space {printable(text)}"
        if not eq or not key.strip():
            raise UsageError(f"{where}: expected KEY=DISTRIBUTION, e.g. --space 'lr=loguniform(1e-4, 1e-1)'")
        try:
            e = parse_expression(value, where)
        except CompileError as err:
            raise UsageError(f"{where}: {err.diagnostics[0].message}") from None
        errors: list = []
        dim = dimension(key.strip(), e, Span(where, 1, 1, 1, 1), dict(recipe.entries), R.KEYS, hyper, errors)
        if dim is None:
            d = errors[0]
            raise UsageError(f"{where}: {d.message}" + (f" ({d.hint})" if d.hint else ""))
        dims[setting_key(dim.key, R.KEYS)] = dim
    return tuple(dims.values())


def _length_clash(epochs_flag: bool, sets: dict, space) -> str | None:
    """Why the trials' length given on the command line (--epochs, --set epochs or steps) cannot
    go with the space's, if it cannot: every trial is given --epochs after its point, so it wins
    over a searched epochs; and epochs beside steps, either way round, failed every trial, as a
    recipe trains one or the other."""
    searched = next((d.key for d in space if d.key in ("epochs", "steps")), None)
    given = "epochs" if epochs_flag else next((k for k in ("epochs", "steps") if k in sets and k != searched), None)
    if searched is None or given is None:
        return None
    both = "" if given == searched else " (a recipe trains epochs or steps, not both)"
    return (f"{'--epochs' if epochs_flag else f'--set {given}'} trains every trial that many {given}, and the space "
            f"searches {searched}{both}: drop one")


def cmd_search(args) -> int:
    from pathlib import Path

    from dslc.runtime.engines import LocalProcesses, RayTasks
    from dslc.runtime.errors import Interrupted, TrainError
    from dslc.runtime.recipes import model_and_recipe
    from dslc.runtime.search import Search, Settings
    from dslc.runtime.search_report import table
    from dslc.runtime.trainer import watched_metric

    if args.grid and args.trials is not None:
        raise UsageError("--grid tries every combination; --trials cannot go with it")
    if args.address and args.engine != "ray":
        raise UsageError("--address names a Ray cluster; it goes with --engine ray")
    sets = recipe_sets(args)
    # checked with --epochs, as every trial trains with it (a warmup as long would fail each one)
    model, recipe = model_and_recipe(args.file, args.as_name, sets)
    if args.epochs is not None:  # --epochs is the trials' setting, recorded as such; a --set epochs=N
        sets.pop("epochs")  # stays one of the --set pairs every trial is given
    space = space_of(model, recipe, args.space or [])
    if not space:
        raise UsageError(f"recipe '{recipe.name}' of {args.file} has no search block and no --space was given; "
                         "add e.g. `search { lr = loguniform(1e-4, 1e-1) }` to its train block")
    clash = _length_clash(args.epochs is not None, sets, space)
    if clash:
        raise UsageError(clash)
    if recipe["split"] is None:
        raise TrainError(f"recipe '{recipe.name}' holds out no validation data (split = none): a search compares "
                         "trials on validation data, never on the test set")
    settings = Settings(trials=args.trials or 10, epochs=args.epochs, grid=args.grid, grid_points=args.grid_points,
                        refine=args.refine or 0, seed=args.seed, device=args.device)
    out = Path(args.out or Path("runs") / f"{recipe.name}-search")
    metric, mode, _, _ = watched_metric(recipe, [o.name for o in model.graph.outputs_of("metric")])
    progress = (lambda text: print(text, file=sys.stderr)) if args.json else print
    engine = RayTasks(args.address, args.jobs) if args.engine == "ray" else LocalProcesses(args.jobs or 1)
    search = Search(args.file, recipe, sets, space, settings, out, engine, (metric, mode), args.force, progress)
    try:
        search.run()
    except KeyboardInterrupt:
        raise Interrupted(f"search interrupted; the trials stopped at a checkpoint. Run the same command to "
                          f"continue: finished trials are kept ({out})") from None
    search.write_results()
    report = search.report()
    print(json.dumps(report, indent=2) if args.json else table(report))
    print(f"wrote {out / 'results.csv'} and {out / 'search.png'}", file=sys.stderr if args.json else sys.stdout)
    return 0


def register(verbs) -> None:
    """Add search to the CLI's subparsers."""
    p = verb(verbs, "search", "search hyper-parameters: many short runs, compared on validation data",
             "Sample points of the recipe's search space (its `search { ... }` block, and --space), train "
             "each as an ordinary run directory in DIR (parallel processes with --jobs), and print the "
             "trials sorted by the validation metric their runs watch; write results.csv/json and "
             "search.png (the metric against each hyper-parameter, log axes for log scales). The test "
             "split is never evaluated. Rerunning the same command continues a search that was stopped: "
             "finished trials are kept, interrupted ones resume from their last checkpoint.",
             "  dslc search models/digits_mlp.net --trials 12 --jobs 2 --epochs 5\n"
             "  dslc search models/digits_mlp.net --space 'lr=loguniform(1e-3, 1e-1)' --refine 6\n"
             "  dslc search models/digits_mlp.net --grid --grid-points 4 --json\n"
             "  dslc search models/digits_mlp.net --trials 64 --engine ray --address ray://head:10001")
    add_recipe_args(p, epochs=True)
    p.add_argument("--space", action="append", metavar="KEY=DIST",
                   help="add or replace a dimension, e.g. 'lr=loguniform(1e-4, 1e-1)' (repeatable)")
    p.add_argument("--trials", type=count, metavar="N", help="random trials in the first round (default: 10)")
    p.add_argument("--grid", action="store_true", help="every combination instead of random points")
    p.add_argument("--grid-points", type=count, default=3, metavar="K",
                   help="values per numeric dimension of --grid (default: 3)")
    p.add_argument("--refine", type=count, metavar="N",
                   help="coarse to fine: a second round of N trials in the region of the best first-round ones")
    p.add_argument("--jobs", type=count, metavar="J",
                   help="trials trained at once (default: 1 locally; with Ray as many as the cluster's CPUs)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where trials run: processes on this machine, or tasks of a Ray cluster (the `ray` extra; "
                        "the search directory must be on a file system every node sees)")
    p.add_argument("--address", metavar="ADDR",
                   help="the Ray cluster (default: RAY_ADDRESS or the one `ray start` runs here; `local`: start one "
                        "in this process)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the sampling (default: 0)")
    p.add_argument("--device", choices=("cpu", "gpu", "reference"),
                   help="where trials train (default: the recipe's device; reference: the NumPy interpreter)")
    p.add_argument("--out", metavar="DIR", help="search directory (default: runs/NAME-search)")
    p.add_argument("--force", action="store_true", help="start over in a directory that holds another search")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress goes to stderr)")
    p.set_defaults(run=cmd_search)
