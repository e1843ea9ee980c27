"""The `dslc` command line. Each verb is a small function; errors are rendered in one place.

Exit status: 0 success, 1 a user mistake in a .net file, in data or with a file
named on the command line (located message), 2 a bad command line. A Python
traceback is always a dslc bug.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import dslc
from dslc.diagnostics import CompileError, UsageError, did_you_mean
from dslc.runtime.checkpoint import CheckpointError
from dslc.runtime.data import DataError
from dslc.runtime.errors import DeviceError, Interrupted, TrainError
from dslc.runtime.runs import RunError


class CliError(Exception):
    """A user mistake outside any .net source (a missing program, an unwritable file): exit 1."""


def parse_value(text: str) -> Any:
    """A --set value: int, float, true/false, or else a string."""
    low = text.strip()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(low)
        except ValueError:
            pass
    return text


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def _load(args) -> dslc.Model:
    return dslc.load(args.file, model=args.model, **parse_sets(args.set))


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and a rename, so a reader (or a
    crash half-way) never sees a half-written file."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


# ---- check ---------------------------------------------------------------------------

def cmd_check(args) -> int:
    model = _load(args)
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
    graph = maybe_check(build(_load(args), args.stage), f"building stage {args.stage}")
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


def _pass_table(graph, args) -> str:
    """`inspect --passes`: each pass's report, with the node count and the memory-planned
    bytes of the graph after it (against one buffer per value); with --verify also the
    largest relative difference of every output against the graph before the pass."""
    from dslc.kernels.lower import lower
    from dslc.passes import check_numeric, memory_plan, pipeline

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

    if args.batch < 1 or args.max_elements < 1:
        raise UsageError("--batch and --max-elements must be at least 1")
    rows = gc.gradcheck(_load(args), batch=args.batch, seed=args.seed, threshold=args.threshold,
                        max_elements=args.max_elements)
    print(json.dumps(gc.to_json(rows, args.threshold), indent=2) if args.json
          else gc.format_table(rows, args.threshold))
    return 0 if all(r.passed for r in rows) else 1


# ---- training and using trained models (bodies in dslc.runtime) -----------------------

def _sets(args) -> dict[str, Any]:
    sets = parse_sets(args.set)
    if getattr(args, "epochs", None) is not None:
        sets["epochs"] = args.epochs
    return sets


def _model_and_recipe(args):
    from dslc.runtime.recipes import model_and_recipe

    return model_and_recipe(args.file, args.as_name, _sets(args))


def cmd_train(args) -> int:
    from dslc.runtime import trainer
    from dslc.runtime.recipes import model_and_recipe

    if args.resume and args.out:
        raise UsageError("--resume DIR continues the run in DIR; --out cannot go with it")
    as_name, sets = args.as_name, _sets(args)
    if args.resume:  # the same recipe and settings as the run's start, unless given anew
        saved_name, saved_sets = trainer.resume_settings(args.resume)
        as_name, sets = as_name or saved_name, {**saved_sets, **sets}
    model, recipe = model_and_recipe(args.file, as_name, sets)
    out = args.out or (None if args.resume else
                       trainer.default_run_dir(recipe.name) if not args.force else Path("runs") / recipe.name)
    trainer.train(model, recipe, out, resume=args.resume, force=args.force, quiet=args.quiet, device=args.device,
                  detect_anomaly=args.detect_anomaly, overrides=sets)
    return 0


def _checkpoint_model(args) -> dslc.Model:
    return dslc.load(args.file, model=args.model, **parse_sets(args.set))


def cmd_eval(args) -> int:
    from dslc.runtime import predict

    report = predict.evaluate_checkpoint(_checkpoint_model(args), args.checkpoint, args.split, args.device)
    print(json.dumps(report, indent=2) if args.json else predict.format_eval(report))
    return 0


def cmd_predict(args) -> int:
    from dslc.runtime import predict

    if args.top < 1:
        raise UsageError("--top must be at least 1")
    rows = predict.predict(_checkpoint_model(args), args.checkpoint, args.input, args.top, args.device)
    print(json.dumps([[{"class": c, "probability": p} for c, p in row] for row in rows], indent=2) if args.json
          else predict.format_predictions(rows))
    return 0


def cmd_ensemble(args) -> int:
    from dslc.runtime import predict

    if len(args.checkpoint) < 2:
        raise UsageError("an ensemble needs at least two --checkpoint DIR")
    report = predict.ensemble(_checkpoint_model(args), args.checkpoint, args.split, args.device)
    print(json.dumps(report, indent=2) if args.json else predict.format_ensemble(report))
    return 0


def cmd_plot(args) -> int:
    from dslc.runtime.runs import plot_runs

    plot_runs(args.runs, args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_lr(args) -> int:
    from dslc.runtime.lrfind import schedule_plot

    _, recipe = _model_and_recipe(args)
    points = schedule_plot(recipe, args.output)
    print(f"wrote {args.output}: " + ", ".join(f"epoch {t:g}: {lr:.3g}" for t, lr in points))
    return 0


def cmd_lr_find(args) -> int:
    from dslc.runtime.lrfind import lr_find, plot_lr_find

    model, recipe = _model_and_recipe(args)
    try:
        found = lr_find(model, recipe, args.start, args.end, args.steps, args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    plot_lr_find(found, args.output, f"learning-rate range test of {recipe.name}")
    advice = (f"suggested lr {found.suggestion:.3g} (a tenth of the rate at the lowest loss)" if found.suggestion
              else "the loss was never finite: lower --start")
    print(f"wrote {args.output}; {advice}")
    return 0


# ---- the parser ----------------------------------------------------------------------

def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .net file")
    p.add_argument("--model", help="which model of the file (default: the first one defined in it)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a hyper-parameter of the model (repeatable), e.g. --set width=32")


def _verb(verbs, name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    return verbs.add_parser(name, help=help, description=description, epilog="examples:\n" + examples,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dslc", description="dslc compiles neural networks written in the .net language.",
        epilog="Run `dslc VERB --help` for the options of one verb.")
    parser.add_argument("--version", action="version", version=f"dslc {dslc.__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    p = _verb(verbs, "check", "parse, resolve and shape-check a model; print its summary",
              "Parse, resolve and shape-check a model, then print one row per layer "
              "with its output shape, parameter count and forward FLOPs.",
              "  dslc check models/lenet5.net\n  dslc check models/mlp_bn.net --set width=32 --json")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=cmd_check)

    p = _verb(verbs, "inspect", "print a model's graph IR at some stage, as text, JSON or a Graphviz drawing",
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
    _add_model_args(p)
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
    p.add_argument("--batch", type=int, default=2, help="batch size for byte counts and --verify (default: 2)")
    p.set_defaults(run=cmd_inspect)

    p = _verb(verbs, "ops", "list the ops of the language, or describe one",
              "Without NAME: every op of the language grouped by category, with its formula. "
              "With NAME: its attributes (kinds, defaults, choices), tensor inputs, the "
              "parameters it creates, formula and an example of its shape rule. "
              "`dslc ops init` lists the initialisers.",
              "  dslc ops\n  dslc ops conv2d\n  dslc ops init")
    p.add_argument("name", nargs="?", help="an op, `init`, or an initialiser name")
    p.set_defaults(run=cmd_ops)

    p = _verb(verbs, "gradcheck", "check a model's gradients against central differences in float64",
              "Run the model in float64 and training mode (dropout masks fixed) on a random batch, and "
              "compare the gradient of the loss with respect to every trainable parameter and float "
              "input with central differences: every element of small tensors, a seeded random "
              "subset of large ones. Exit status 1 if any tensor's max relative error reaches the threshold.",
              "  dslc gradcheck models/two_layer.net\n  dslc gradcheck models/small_cnn.net --set width=4 --json")
    _add_model_args(p)
    p.add_argument("--batch", type=int, default=2, help="batch size of the random inputs (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs, parameters and masks (default: 0)")
    p.add_argument("--threshold", type=float, default=1e-6, help="largest relative error that passes "
                                                                  "(default: 1e-6)")
    p.add_argument("--max-elements", type=int, default=50, metavar="K",
                   help="check every element of a tensor up to K elements, else K random ones (default: 50)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(run=cmd_gradcheck)
    _add_training_verbs(verbs)
    from dslc.codegen.compile_cmd import add_compile_verb  # the body lives with the code generator
    add_compile_verb(verbs, _verb, _add_model_args)
    return parser


def _add_recipe_args(p: argparse.ArgumentParser, epochs: bool = False) -> None:
    p.add_argument("file", help="a .net file with a `train` block")
    p.add_argument("--as", dest="as_name", metavar="NAME",
                   help="which recipe (`train MODEL as NAME`; default: the first model's recipe)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe setting (epochs=5, optimizer.lr=0.01) or else a model "
                        "hyper-parameter (hidden=64); repeatable")
    if epochs:
        p.add_argument("--epochs", type=int, metavar="N", help="train N epochs (same as --set epochs=N)")


def _add_checkpoint_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    _add_model_args(p)
    p.add_argument("--checkpoint", required=True, metavar="DIR", action="append" if many else "store",
                   help="a checkpoint directory, or a run directory (its best checkpoint, else its last)"
                        + ("; repeat for each member" if many else ""))
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu", help="where to run (default: cpu)")


def _add_training_verbs(verbs) -> None:
    p = _verb(verbs, "train", "train a model with the recipe of its `train` block",
              "Train a model on the data its recipe names and leave a run directory (config.json, "
              "metrics.jsonl/csv, curves.png, checkpoints last/ and best/). A progress bar shows each "
              "epoch on a terminal; one summary line per epoch and the final test accuracy are printed. "
              "Ctrl-C writes a checkpoint before stopping (exit status 130); --resume continues exactly.",
              "  dslc train models/digits_mlp.net\n"
              "  dslc train models/digits_mlp.net --epochs 5 --set optimizer.lr=0.003 --out runs/quick\n"
              "  dslc train models/digits_mlp.net --resume runs/digits_mlp")
    _add_recipe_args(p, epochs=True)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/NAME, or runs/NAME-2, ... if taken)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--device", choices=("cpu", "gpu", "reference"),
                   help="where to train (default: the recipe's device; reference: the NumPy interpreter)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    p.add_argument("--detect-anomaly", action="store_true",
                   help="when the loss becomes NaN or Inf, replay the step to name the first non-finite node")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing run directory, or resume although the recipe changed")
    p.set_defaults(run=cmd_train)

    p = _verb(verbs, "eval", "evaluate a checkpoint on the test, validation or training split",
              "Rebuild the data split a checkpoint was trained with (its recipe and normalisation are "
              "saved in it) and print loss, metrics, accuracy and, with more than 5 classes, top-5 "
              "accuracy; --json adds the confusion matrix (rows: true class, columns: predicted).",
              "  dslc eval models/digits_mlp.net --checkpoint runs/digits_mlp\n"
              "  dslc eval models/digits_mlp.net --checkpoint runs/digits_mlp/last --split val --json")
    _add_checkpoint_args(p)
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default: test)")
    p.add_argument("--json", action="store_true", help="print the report as JSON, confusion matrix included")
    p.set_defaults(run=cmd_eval)

    p = _verb(verbs, "predict", "classify examples from a .npy array or an image file",
              "Print the most probable classes of each example: a .npy holding one example or a batch, "
              "or an image (converted to the checkpoint's channels and size, pixels scaled to 0..1).",
              "  dslc predict models/digits_mlp.net --checkpoint runs/digits_mlp --input x.npy --top 3")
    _add_checkpoint_args(p)
    p.add_argument("--input", required=True, metavar="FILE", help="x.npy or an image (.png, .jpg, ...)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes shown per example (default: 5)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(run=cmd_predict)

    p = _verb(verbs, "ensemble", "evaluate the average prediction of several checkpoints",
              "Average the predicted class probabilities of several checkpoints of one model (e.g. "
              "trained with different seeds) and report each member's and the ensemble's accuracy.",
              "  dslc ensemble models/digits_mlp.net --checkpoint runs/a --checkpoint runs/b")
    _add_checkpoint_args(p, many=True)
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default: test)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=cmd_ensemble)

    p = _verb(verbs, "plot", "draw the loss and accuracy curves of one or several runs",
              "Draw loss and the first metric, train (dashed) vs validation (solid), of each run "
              "into one PNG, one colour per run.",
              "  dslc plot runs/digits_mlp runs/digits_cnn -o compare.png")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("-o", "--output", default="curves.png", help="PNG to write (default: curves.png)")
    p.set_defaults(run=cmd_plot)

    p = _verb(verbs, "lr-find", "run the learning-rate range test and suggest a rate",
              "Train from the initial weights for a few steps while the learning rate grows "
              "exponentially; plot the smoothed loss against the rate and suggest a tenth of the "
              "rate where the loss is lowest.",
              "  dslc lr-find models/digits_mlp.net -o lr_find.png")
    _add_recipe_args(p)
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (default: 1e-7)")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate (default: 10)")
    p.add_argument("--steps", type=int, default=100, help="steps of the test (default: 100)")
    p.add_argument("--device", choices=("cpu", "gpu"), help="where to run (default: the recipe's device)")
    p.add_argument("-o", "--output", default="lr_find.png", help="PNG to write (default: lr_find.png)")
    p.set_defaults(run=cmd_lr_find)

    p = _verb(verbs, "lr", "plot the learning-rate schedule of a recipe without training",
              "Draw the learning rate the recipe's schedule gives over its run, warm-up included.",
              "  dslc lr models/small_cnn.net -o lr.png")
    _add_recipe_args(p, epochs=True)
    p.add_argument("-o", "--output", default="lr.png", help="PNG to write (default: lr.png)")
    p.set_defaults(run=cmd_lr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed its usage message
        return int(e.code or 0)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except CompileError as e:
        print(e.render(getattr(e, "sources", None)), file=sys.stderr)
        return 1
    except (CliError, DataError, CheckpointError, RunError, TrainError, DeviceError) as e:
        print(f"dslc: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"dslc: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        return 130
    except UsageError as e:
        print(f"dslc: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
