"""What every verb shares: --set parsing, loading the model, and the arguments verbs have in common.

    sets = parse_sets(["width=32", "optimizer.lr=1e-3"])   # {"width": "32", "optimizer.lr": "1e-3"}
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

import dslc
from dslc.diagnostics import UsageError, printable
from dslc.files import figure_format
from dslc.frontend.values import INT_MAX, literals


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """The KEY=VALUE pairs of --set, values as written: each is read later as one .net value
    by what it sets (a hyper-parameter, a recipe setting), never pasted into source."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {printable(item)!r}")
        out[key.strip()] = value
    return out


# ---- argument types: a bad number is argparse's usage error (exit 2), never a traceback later

def count(text: str) -> int:
    """An integer >= 1 (a batch, a number of steps, of epochs, of elements)."""
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def seed(text: str) -> int:
    """An integer seed in [0, 2**32 - 1], as in a recipe."""
    value = _number(text, int, "an integer")
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 4294967295], got {text!r}")
    return value


def positive(text: str) -> float:
    """A finite number > 0 (a learning rate, a threshold)."""
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative(text: str) -> float:
    """A finite number >= 0 (a penalty's weight; 0 turns it off)."""
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and value >= 0):  # the message said "> 0" though 0 was allowed
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def steps_apart(text: str) -> int:
    """An integer >= 0 (every how many steps; 0 never): a negative --blur-every meant never too."""
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (never) or more, got {text!r}")
    return value


def checkpoint_dir(text: str) -> str:
    """A --checkpoint path as written, except that `.` (a checkpoint read from inside it) is
    made absolute: the checkpoint reader names siblings from the last component, which `.`
    lacks (a ValueError traceback; runtime/checkpoint.py's `_siblings`). An empty path is
    refused rather than taken for no checkpoint (export fell back to fresh weights).

        checkpoint_dir(".")   # '/home/me/runs/a/best', run from inside it
    """
    if not text:
        raise argparse.ArgumentTypeError("expected a checkpoint or run directory, got ''")
    path = text if os.path.basename(os.path.normpath(text)) not in ("", ".") else os.path.abspath(text)
    if not os.path.basename(path):
        raise argparse.ArgumentTypeError(f"{printable(text)!r} is no checkpoint or run directory")
    return path


def figure_file(text: str) -> str:
    """The name of a figure to write, its format from its suffix (files.figure_format): a
    suffix no figure has is refused before anything is computed."""
    try:
        figure_format(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    # as --set reads it: an integer beyond int64 (--epochs 10**23) ran "forever" or failed
    # deep inside (a matplotlib TypeError traceback from `dslc lr`)
    if kind is int and abs(value) > INT_MAX:
        raise argparse.ArgumentTypeError(f"the integer {text} is too large (at most {INT_MAX})")
    return value


def load_model(args) -> dslc.Model:
    """The model of `args.file` with the --set hyper-parameters (and those of the run of
    `args.checkpoint`, for a verb that takes one)."""
    return dslc.load(args.file, model=args.model, **literals(checkpoint_sets(args)))


def checkpoint_sets(args, checkpoints=None, recipe: bool = False) -> dict[str, Any]:
    """The --set pairs of a verb that loads `checkpoints` (default: its --checkpoint): those the
    checkpoints' run was trained with that decide the model (with `recipe`, also the examples
    it is evaluated on; dslc/runtime/run_settings.py), under the command line's own. What was
    taken from a run is said once on standard error."""
    given = parse_sets(args.set)
    if checkpoints is None:
        one = getattr(args, "checkpoint", None)
        checkpoints = [one] if isinstance(one, (str, os.PathLike)) else list(one or [])
    if not checkpoints:
        return given
    from dslc.runtime.run_settings import run_settings

    taken = run_settings(args.file, checkpoints, given, recipe)
    if taken.note:
        print(f"dslc: {taken.note}", file=sys.stderr)
    return {**taken.pairs, **given}


def checkpoint_files(checkpoint) -> list:
    """The files a verb reads from `--checkpoint` (a checkpoint directory or a run): its
    weights, optimizer state and state.json, and the run's config.json. A verb that writes
    (-o, --npy) refuses these names, as it refuses its .net file: `export -o
    runs/a/best/weights.safetensors` replaced the checkpoint with an ONNX file.

        output_is_not(args.output, args.file, *checkpoint_files(args.checkpoint))
    """
    if checkpoint is None:
        return []
    from dslc.runtime.checkpoint import OPTIMIZER, STATE, WEIGHTS
    from dslc.runtime.transfer import resolve

    where = resolve(checkpoint)
    return [where / WEIGHTS, where / OPTIMIZER, where / STATE, where.parent / "config.json",
            os.path.join(checkpoint, "config.json")]


def recipe_sets(args) -> dict[str, Any]:
    from dslc.recipe.overrides import Flagged

    sets: dict[str, Any] = parse_sets(args.set)
    if getattr(args, "epochs", None) is not None:
        sets["epochs"] = Flagged(args.epochs, "--epochs")
    return sets


def model_and_recipe(args):
    from dslc.runtime.recipes import model_and_recipe as load

    return load(args.file, args.as_name, recipe_sets(args))


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .net file")
    p.add_argument("--model", help="which model of the file (default: the first one defined in it)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a hyper-parameter of the model (repeatable), e.g. --set width=32")


def verb(verbs, name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    return verbs.add_parser(name, help=help, description=description, epilog="examples:\n" + examples,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def add_recipe_args(p: argparse.ArgumentParser, epochs: bool = False) -> None:
    p.add_argument("file", help="a .net file with a `train` block")
    p.add_argument("--as", dest="as_name", metavar="NAME",
                   help="which recipe (`train MODEL as NAME`; default: the first model's recipe)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe setting (epochs=5, optimizer.lr=0.01) or else a model "
                        "hyper-parameter (hidden=64); repeatable")
    if epochs:
        p.add_argument("--epochs", type=count, metavar="N", help="train N epochs (same as --set epochs=N)")


def add_checkpoint_args(p: argparse.ArgumentParser, many: bool = False, recipe: bool = False,
                        required: bool = True) -> None:
    add_model_args(p)
    p.add_argument("--checkpoint", required=required, metavar="DIR", action="append" if many else "store",
                   type=checkpoint_dir,
                   help="a checkpoint directory, or a run directory (its best checkpoint, else its last); "
                        "a run's checkpoint is used with the run's own --set, under yours"
                        + ("; repeat for each member" if many else ""))
    p.add_argument("--device", choices=("cpu", "gpu", "auto", "reference"), default="cpu",
                   help="where to run (default: cpu; reference: the NumPy interpreter, nothing compiled)")
    p.add_argument("--force", action="store_true",
                   help="use the checkpoint although the model's graph changed since it was saved (a warning)")
    if recipe:
        p.add_argument("--as", dest="as_name", metavar="NAME",
                       help="the recipe whose data to use (default: the one named like the checkpoint's "
                            "recipe, else the model's)")


