"""The verbs that read a model without training it: check, inspect, ops, gradcheck."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from dslc.cli.common import add_model_args, count, load_model, positive, seed, verb
from dslc.diagnostics import CliError, UsageError, did_you_mean
from dslc.files import output_is_not, write_atomic


# ---- check ---------------------------------------------------------------------------

def cmd_check(args) -> int:
    model = load_model(args)
    if model.warnings:
        from dslc.diagnostics import render_all
        print(render_all(model.warnings, model.program.sources), file=sys.stderr)
    summary = model.summary()
    print(json.dumps(summary.to_json(), indent=2) if args.json else summary.text())
    return 0


# ---- inspect -------------------------------------------------------------------------

TEXT_SUFFIXES = {".txt": "text", ".json": "json", ".dot": "dot", ".gv": "dot"}
IMAGE_SUFFIXES = {".svg": "svg", ".png": "png", ".pdf": "pdf"}


def _output_kind(fmt: str | None, out: str | None) -> tuple[str, str | None]:
    """(printer format, Graphviz image format or None) from --format and the -o suffix."""
    suffix = Path(out).suffix.lower() if out else ""
    if suffix in IMAGE_SUFFIXES:
        if fmt not in (None, "dot"):
            raise UsageError(f"-o {out} draws the graph with Graphviz; --format {fmt} cannot be drawn")
        return "dot", IMAGE_SUFFIXES[suffix]
    if fmt:
        return fmt, None
    if out and suffix not in TEXT_SUFFIXES:
        known = ", ".join(sorted(TEXT_SUFFIXES) + sorted(IMAGE_SUFFIXES))
        raise UsageError(f"cannot tell the format of -o {out} from its suffix ({known}); pass --format")
    return TEXT_SUFFIXES.get(suffix, "text"), None


def render_dot(source: str, image: str, what: str) -> bytes:
    """Run Graphviz `dot -T<image>` on DOT source; `what` names the output in messages."""
    dot = shutil.which("dot")
    if dot is None:
        raise CliError(f"writing {what} needs Graphviz's `dot` program, which is not on PATH; "
                       f"install graphviz, or write a .dot file instead")
    done = subprocess.run([dot, f"-T{image}"], input=source.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise CliError(f"Graphviz failed to draw {what}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def cmd_inspect(args) -> int:
    # Imported here, not at the top: stages imports every pass, which `dslc ops` never needs.
    from dslc.ir import printer
    from dslc.ir.verify import maybe_check
    from dslc.passes import pipeline
    from dslc.stages import build

    pipeline.check_pass_names(list(args.disable_pass or []) + ([args.after] if args.after else []))
    fmt, image = _output_kind(args.format, args.output)
    output_is_not(args.output, args.file)
    model = load_model(args)
    output_is_not(args.output, *model.program.modules)  # the files it imports are read too
    graph = maybe_check(build(model, args.stage), f"building stage {args.stage}")
    if args.after:
        _after_runs(args.after, graph, 2 if args.opt is None else args.opt, args.disable_pass or ())
    if args.passes or args.verify:
        print(_pass_table(graph, args))
        return 0
    if args.after or args.opt is not None:
        graph, _ = pipeline.optimize(graph, 2 if args.opt is None else args.opt, args.disable_pass or (),
                                     args.after, check=lambda name, _, after: maybe_check(after, name))
    text = {"text": printer.to_text, "json": printer.to_json, "dot": printer.to_dot}[fmt](graph)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    write_atomic(args.output, render_dot(text, image, args.output) if image else text.encode())
    return 0


def _after_runs(after: str, graph, level: int, disabled) -> None:
    """UsageError when pass `after` would not run (its -O level, --disable-pass, or a stage it
    does not apply to): `-O0 --after fuse` printed the unoptimised graph as if after fuse."""
    from dslc.passes import pipeline

    p = next(p for p in pipeline.PIPELINE if p.name == after)
    if p.applies(graph, level, disabled):
        return
    why = ("--disable-pass leaves it out" if after in disabled else f"it runs from -O{p.level}, not at -O{level}"
           if level < p.level else f"it runs on stage {', '.join(p.stages)} only, not {graph.stage}")
    raise UsageError(f"--after {after}: that pass does not run here ({why})")


def _pass_table(graph, args) -> str:
    """`inspect --passes`: each pass's report, with the node count and the memory-planned
    bytes of the graph after it (against one buffer per value); with --verify also the
    largest relative difference of every output against the graph before the pass."""
    from dslc.kernels import memory_plan
    from dslc.kernels.lower import lower
    from dslc.passes import check_numeric, pipeline

    bindings = check_numeric.random_bindings(graph, batch=args.batch, seed=0) if args.verify else None
    diffs: dict[str, float] = {}

    def measure(name, before, after):
        if bindings:
            diffs[name] = check_numeric.max_rel_difference(before, after, *bindings)

    def planned(g) -> tuple[str, str]:
        p = memory_plan.plan(lower(g), args.batch)
        return f"{p.arena_bytes:,}", f"{p.naive_bytes:,}"

    level = 2 if args.opt is None else args.opt
    _, results = pipeline.optimize(graph, level, args.disable_pass or (), args.after, check=measure)
    rows = [("(start)", str(len(graph)), *planned(graph), "", "")]
    for r in results:
        diff = f"{diffs[r.name]:.1e}" if r.name in diffs else ""
        rows.append((r.name, str(len(r.graph)), *planned(r.graph), diff, r.report.split(": ", 1)[1]))
    header = ("pass", "nodes", f"planned@N={args.batch}", "one-per-value", "max rel diff" if args.verify else "",
              "report")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(5)]
    fmt = lambda row: "  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w)
                                for i, (c, w) in enumerate(zip(row, widths + [0]))).rstrip()
    return "\n".join([f"{graph.name} ({graph.stage}) at -O{level}, bytes of per-step values",
                      fmt(header)] + [fmt(r) for r in rows])


# ---- ops -----------------------------------------------------------------------------

def cmd_ops(args) -> int:
    from dslc import catalog

    if args.name is None:
        print(catalog.op_table())
        return 0
    page = catalog.describe(args.name)
    if page is None:
        hint = did_you_mean(args.name, catalog.names())
        raise CliError(f"unknown op {args.name!r}" + (f"; {hint}" if hint else "; `dslc ops` lists them all"))
    print(page)
    return 0


# ---- gradcheck -----------------------------------------------------------------------

def cmd_gradcheck(args) -> int:
    from dslc import gradcheck as gc  # float64 numerics: loaded only for this verb

    rows = gc.gradcheck(load_model(args), batch=args.batch, seed=args.seed, threshold=args.threshold,
                        max_elements=args.max_elements, directions=args.directions, samples=args.samples,
                        inputs=args.inputs)
    print(json.dumps(gc.to_json(rows, args.threshold), indent=2) if args.json
          else gc.format_table(rows, args.threshold))
    return 0 if all(r.passed for r in rows) else 1



def register(verbs) -> None:
    """Add check, inspect, ops and gradcheck to the CLI's subparsers."""
    p = verb(verbs, "check", "parse, resolve and shape-check a model; print its summary",
              "Parse, resolve and shape-check a model, then print one row per layer "
              "with its output shape, parameter count and forward FLOPs.",
              "  dslc check models/lenet5.net\n  dslc check models/mlp_bn.net --set width=32 --json")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=cmd_check)

    p = verb(verbs, "inspect", "print a model's graph IR at some stage, as text, JSON or a Graphviz drawing",
              "Print the graph IR of a model at one stage of the compiler: text (one node per line "
              "with its type and source line), JSON (round-trips exactly), or DOT for Graphviz. "
              "With -o, the format follows the file's suffix: .txt, .json, .dot/.gv, or "
              ".svg/.png/.pdf (drawn by Graphviz's `dot`). Under DSLC_VERIFY=1 the graph is "
              "verified before printing.",
              "  dslc inspect models/lenet5.net\n"
              "  dslc inspect models/lenet5.net --format json > lenet5.json\n"
              "  dslc inspect models/lenet5.net -o lenet5.svg\n"
              "  dslc inspect models/small_cnn.net --stage infer --passes --verify\n"
              "  dslc inspect models/small_cnn.net --stage infer --after fold-batchnorm")
    add_model_args(p)
    p.add_argument("--stage", default="typed", help="which stage of the graph to print (default: typed); "
                                                     "an unknown name lists the stages")
    p.add_argument("--format", choices=("text", "json", "dot"),
                   help="output format (default: text, or from the suffix of -o)")
    p.add_argument("-o", "--output", metavar="OUT", help="write to OUT instead of standard output")
    p.add_argument("-O", dest="opt", type=int, choices=(0, 1, 2), metavar="LEVEL",
                   help="optimise the graph first: 0 nothing, 1 cheap clean-ups, 2 everything")
    p.add_argument("--after", metavar="PASS", help="show the graph after this pass of the pipeline (implies -O2)")
    p.add_argument("--disable-pass", action="append", metavar="PASS", help="leave out a pass (repeatable)")
    p.add_argument("--passes", action="store_true",
                   help="print the pipeline: each pass's report, node count and bytes after it")
    p.add_argument("--verify", action="store_true",
                   help="with the pass table, run the NumPy reference before and after every pass on "
                        "random inputs and report the largest relative difference")
    p.add_argument("--batch", type=count, default=2, help="batch size for byte counts and --verify (default: 2)")
    p.set_defaults(run=cmd_inspect)

    p = verb(verbs, "ops", "list the ops of the language, or describe one",
              "Without NAME: every op of the language grouped by category, with its formula. "
              "With NAME: its attributes (kinds, defaults, choices), tensor inputs, the "
              "parameters it creates, formula and an example of its shape rule. "
              "`dslc ops init` lists the initialisers.",
              "  dslc ops\n  dslc ops conv2d\n  dslc ops init")
    p.add_argument("name", nargs="?", help="an op, `init`, or an initialiser name")
    p.set_defaults(run=cmd_ops)

    p = verb(verbs, "gradcheck", "check a model's gradients against central differences in float64",
              "Run the model in float64 and training mode (dropout masks fixed) on a random batch, and "
              "compare the gradient of the loss with respect to every trainable parameter and float "
              "input with central differences: every element of a small tensor; random directions "
              "(each testing the whole gradient at once) and a few random elements of a large one. A "
              "check whose perturbation crosses a kink (relu, max-pooling) is retried smaller, then left "
              "out and counted. Exit status 1 if any tensor's max relative error reaches the threshold, if "
              "every check of a tensor crossed a kink (not checked), or if the loss is not finite at the "
              "random point.",
              "  dslc gradcheck models/two_layer.net\n  dslc gradcheck models/small_cnn.net --set width=4 --json\n"
              "  dslc gradcheck models/resnet20.net --batch 2")
    add_model_args(p)
    p.add_argument("--batch", type=count, default=2, help="batch size of the random inputs (default: 2)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the inputs, parameters and masks (default: 0)")
    p.add_argument("--threshold", type=positive, default=1e-6, help="largest relative error that passes "
                                                                     "(default: 1e-6)")
    p.add_argument("--max-elements", type=count, default=16, metavar="K",
                   help="check every element of a tensor of at most K elements (default: 16)")
    p.add_argument("--directions", type=count, default=2, metavar="D",
                   help="random directions checked in a larger tensor (default: 2)")
    p.add_argument("--samples", type=count, default=3, metavar="S",
                   help="random elements also checked in a larger tensor (default: 3)")
    p.add_argument("--inputs", choices=("normal", "positive"), default="normal",
                   help="draw the float inputs from a standard normal (default) or uniformly from [0.5, 2], "
                        "for a model that takes their log, sqrt or a fractional power")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(run=cmd_gradcheck)
