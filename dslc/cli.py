"""The `dslc` command line. Each verb is a small function; errors are rendered in one place.

Exit status: 0 success, 1 a user mistake in a .net file or data (located message),
2 a bad command line. A Python traceback is always a dslc bug.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import dslc
from dslc.diagnostics import CompileError, UsageError


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


def cmd_check(args) -> int:
    summary = _load(args).summary()
    print(json.dumps(summary.to_json(), indent=2) if args.json else summary.text())
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .net file")
    p.add_argument("--model", help="which model of the file (default: the first one defined in it)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a hyper-parameter of the model (repeatable), e.g. --set width=32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dslc", description="dslc compiles neural networks written in the .net language.",
        epilog="Run `dslc VERB --help` for the options of one verb.")
    parser.add_argument("--version", action="version", version=f"dslc {dslc.__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    p = verbs.add_parser("check", help="parse, resolve and shape-check a model; print its summary",
                         description="Parse, resolve and shape-check a model, then print one row per layer "
                                     "with its output shape, parameter count and forward FLOPs.")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=cmd_check)
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
    except UsageError as e:
        print(f"dslc: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
