"""Standard output while a command runs: a failed write is one message, not an OSError traceback.

`dslc ops > /dev/full` or a disk filling up under `dslc inspect > big.txt` makes print()
raise OSError; a reader that went away (`dslc ops | head -3`) raises BrokenPipeError.
`Watched` wraps sys.stdout for the duration of `dslc.cli.main`: the first failed write or
flush raises StdoutError (BrokenPipeError stays itself), and everything after it, including
what Python's own buffer still holds, goes to /dev/null, so the message is said once and
the interpreter's flush at exit finds nothing left to fail on.
"""
from __future__ import annotations

import os

from dslc.diagnostics import CliError
from dslc.files import reason


class StdoutError(CliError):
    """Standard output cannot take what a command prints (a full disk, an I/O error)."""


class Watched:
    """sys.stdout for one command (see the module docstring)."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        try:
            return self._guard(self._stream.write, text)
        except UnicodeEncodeError:
            # A name that is not UTF-8 ('r\udcff', a byte Python could not decode) under a
            # strict locale, or an accent in an ASCII one: escaped, as standard error does.
            # It was a UnicodeEncodeError traceback after training ("run saved in ...").
            encoding = getattr(self._stream, "encoding", None) or "utf-8"
            return self._guard(self._stream.write, text.encode(encoding, "backslashreplace").decode(encoding))

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def _guard(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
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
