"""The `dslc` command line: one module per family of verbs, errors rendered in one place.

Exit status: 0 success, 1 a user mistake in a .net file, in data or with a file
named on the command line (located message), 2 a bad command line. A Python
traceback is always a dslc bug.

Each verb module has `register(verbs)`, adding its verbs (flags, help, examples) to the
parser; VERBS lists them in the order `dslc --help` shows them. A new verb is a module
here and one entry in that list.
"""
from __future__ import annotations

import argparse
import sys

import dslc
from dslc.cli import compile_verb, inspect_verbs, train_verbs
from dslc.diagnostics import CliError, CompileError, UsageError
from dslc.runtime.checkpoint import CheckpointError
from dslc.runtime.data import DataError
from dslc.runtime.errors import DeviceError, Interrupted, TrainError
from dslc.runtime.runs import RunError

VERBS = (inspect_verbs, train_verbs, compile_verb)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dslc", description="dslc compiles neural networks written in the .net language.",
        epilog="Run `dslc VERB --help` for the options of one verb.")
    parser.add_argument("--version", action="version", version=f"dslc {dslc.__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERBS:
        module.register(verbs)
    return parser


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
    except MemoryError as e:  # an allocation no check foresaw: NumPy's message has the size
        print(f"dslc: error: out of memory{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"dslc: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


