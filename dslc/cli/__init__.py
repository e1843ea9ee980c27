"""The `dslc` command line: one module per family of verbs, errors rendered in one place.

Exit status: 0 success, 1 a user mistake in a .net file, in data or with a file
named on the command line (located message), 2 a bad command line, 130 Ctrl-C. A
Python traceback is always a dslc bug.

Each verb module has `register(verbs)`, adding its verbs (flags, help, examples) to the
parser; VERBS lists them in the order `dslc --help` shows them. A new verb is a module
here and one entry in that list.

Nothing heavy is imported before `main` runs, so that Ctrl-C while Python starts up ends
with status 130 rather than a KeyboardInterrupt traceback; and standard output is watched,
so that a full disk or a closed pipe behind it is one message, not an OSError.
"""
from __future__ import annotations

import argparse
import os
import sys

import dslc
from dslc.diagnostics import CliError

VERB_MODULES = ("inspect_verbs", "train_verbs", "compile_verb")


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module

    parser = argparse.ArgumentParser(
        prog="dslc", description="dslc compiles neural networks written in the .net language.",
        epilog="Run `dslc VERB --help` for the options of one verb.")
    parser.add_argument("--version", action="version", version=f"dslc {dslc.__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        import_module(f"dslc.cli.{name}").register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status (see the module docstring)."""
    real = sys.stdout
    sys.stdout = watched = _Stdout(real)
    try:
        status = _dispatch(argv)
        watched.flush()
        return status
    except KeyboardInterrupt:  # before the trainer's own handler, e.g. while importing or compiling
        return 130
    except BrokenPipeError:  # the reader went away (`dslc ops | head -3`): nothing more to say
        watched.discard()
        return 0
    except StdoutError as e:
        print(f"dslc: error: {e}", file=sys.stderr)
        return 1
    finally:
        sys.stdout = real


def _dispatch(argv: list[str] | None) -> int:
    from dslc.diagnostics import CompileError, UsageError
    from dslc.runtime.checkpoint import CheckpointError
    from dslc.runtime.data import DataError
    from dslc.runtime.errors import DeviceError, Interrupted, TrainError
    from dslc.runtime.runs import RunError

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
    except StdoutError:
        raise
    except (CliError, DataError, CheckpointError, RunError, TrainError, DeviceError) as e:
        print(f"dslc: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"dslc: {e}", file=sys.stderr)
        return 130
    except UsageError as e:
        print(f"dslc: error: {e}", file=sys.stderr)
        return 2


class StdoutError(CliError):
    """Standard output cannot take what a command prints (a full disk, an I/O error)."""


class _Stdout:
    """sys.stdout while a command runs: the first failed write or flush raises StdoutError
    (BrokenPipeError stays itself), and later output is dropped, so the message is said once
    and Python's own flush at exit finds nothing left to fail on."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def _guard(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            from dslc.files import reason
            self.discard()
            raise StdoutError(f"cannot write to standard output: {reason(e)}") from None

    def discard(self) -> None:
        """Send the rest, and what is still buffered, to /dev/null."""
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (a test's capture): just stop writing
            fd = None
        if fd is not None:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        self._stream = open(os.devnull, "w")
