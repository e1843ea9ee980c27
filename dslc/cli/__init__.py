"""The `dslc` command line: one module per family of verbs, errors rendered in one place.

Exit status: 0 success, 1 a user mistake in a .net file, in data or with a file
named on the command line (located message), 2 a bad command line, 130 Ctrl-C. A
Python traceback is always a dslc bug.

Each verb module has `register(verbs)`, adding its verbs (flags, help, examples) to the
parser; VERB_MODULES lists them in the order `dslc --help` shows them. A new verb is a module
here and one entry in that list.

Nothing heavy is imported before `main` runs, so that Ctrl-C while Python starts up ends
with status 130 rather than a KeyboardInterrupt traceback; and standard output is watched,
so that a full disk or a closed pipe behind it is one message, not an OSError.
"""
from __future__ import annotations

import gc
import signal
import sys

import dslc

# The user mistakes of modules that NumPy and more come with, as (module, class): _user_errors.
_IMPORTED_LATE = (("dslc.runtime.data", "DataError"), ("dslc.runtime.checkpoint", "CheckpointError"),
                  ("dslc.runtime.runs", "RunError"))
VERB_MODULES = ("inspect_verbs", "train_verbs", "search_verb", "compile_verb", "interop_verbs", "explain_verbs")


def build_parser():
    """The argparse parser of every verb."""
    import argparse
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
    try:
        return _watched(argv)
    except KeyboardInterrupt:  # before the trainer's own handler: importing, compiling, loading data
        return 130
    except Exception as e:
        if _ctrl_c_inside(e):
            return 130
        raise
    finally:
        sys.stdout = real


def _ctrl_c_inside(error: BaseException) -> bool:
    """Whether `error` stands for a Ctrl-C: Python wraps an exception raised while it sets
    up a class attribute (`__set_name__`) in a RuntimeError, and a Ctrl-C landing while
    NumPy defines `finfo` during a lazy import came out as that RuntimeError's traceback
    (seen in CI, 0.1 s into `dslc train`)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def run() -> None:
    """The `dslc` command and `python -m dslc.cli`: `main`, its status the exit status.

    What is alive at exit is first frozen out of the garbage collector: Numba's compiler
    state runs to hundreds of thousands of objects, and the collections of interpreter
    shutdown over them took 0.2 s of every command that had loaded kernels (measured on
    small_cnn: 0.22 s, 0.05 s frozen). atexit handlers run as before; what the shutdown
    collection no longer does is finalize objects caught in reference cycles, and by then
    every file dslc wrote is closed (the `with` blocks that wrote them have ended).
    """
    _catch_ctrl_c()
    status = main()
    gc.freeze()
    sys.exit(status)


def _catch_ctrl_c() -> None:
    """Ctrl-C stops a command from its first moment, with status 130, whoever started it.

    Python leaves SIGINT ignored when the process that started it ignored it (a shell's
    background job, a test runner's worker), and the trainer installs its own handler only
    when training begins, over whatever was there: a Ctrl-C in the first half second was
    lost and the run went on to its end with status 0 (seen in CI under load, the hostile
    trial "Ctrl-C 0.25 s into start-up"), one a moment later stopped it. Now both stop it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _watched(argv: list[str] | None) -> int:
    """The command, with standard output watched (dslc/cli/stdout.py)."""
    from dslc.cli.stdout import StdoutError, Watched

    sys.stdout = watched = Watched(sys.stdout)
    try:
        status = _dispatch(argv)
        watched.flush()
        return status
    except BrokenPipeError:  # the reader went away (`dslc ops | head -3`): nothing more to say
        watched.discard()
        return 0
    except StdoutError as e:
        print(f"dslc: error: {e}", file=sys.stderr)
        return 1


def _user_errors(*always: type[BaseException]) -> tuple[type[BaseException], ...]:
    """`always` and those of _IMPORTED_LATE whose module has been imported, read when an
    exception reaches the `except` naming them: a class whose module was never imported was
    never raised, and importing those modules to name their classes took 0.1 s of every
    command, `dslc --help` and a `dslc check` that fails at once included."""
    late = (getattr(sys.modules.get(module), name, None) for module, name in _IMPORTED_LATE)
    return always + tuple(error for error in late if error is not None)  # None: not imported, or not that far


def _dispatch(argv: list[str] | None) -> int:
    from dslc.cli.stdout import StdoutError
    from dslc.diagnostics import GIVEN_AS, CliError, CompileError, UsageError
    from dslc.runtime.errors import DeviceError, Interrupted, RankStopped, TrainError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed its usage message
        return int(e.code or 0)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # what `dslc train --ranks N` passes on
    given = GIVEN_AS.set("flag")  # a hyper-parameter is given here by --set (its messages say so)
    try:
        return args.run(args)
    except CompileError as e:
        print(e.render(getattr(e, "sources", None)), file=sys.stderr)
        return 1
    except StdoutError:
        raise
    except _user_errors(CliError, TrainError, DeviceError) as e:
        print(f"dslc: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"dslc: {e}", file=sys.stderr)
        return 130
    except RankStopped as e:  # another rank of the run stopped it, and said why
        return e.status
    except MemoryError as e:  # an allocation no check foresaw: NumPy's message has the size
        print(f"dslc: error: out of memory{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"dslc: error: {e}", file=sys.stderr)
        return 2
    finally:
        GIVEN_AS.reset(given)
