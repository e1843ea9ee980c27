"""A call stack deep enough for every program the front end accepts.

The front end walks expressions recursively (resolve.py, recipe checking), so a program's
nesting becomes Python's recursion. The parser bounds brackets (parse.MAX_NESTING) and the
elaborator bounds nesting across block calls (resolve.MAX_DEPTH); pipelines and sums, which
nest without brackets, are walked iteratively. What those bounds allow can still exceed
Python's default of 1,000 frames, so `@deep` runs a function on a thread with a larger stack
and recursion limit. (Raising the limit on the main thread alone is not safe: its C stack is
fixed, and running out of it is a crash rather than a RecursionError.)

    @deep
    def elaborate(program, model): ...
"""
from __future__ import annotations

import contextvars
import functools
import sys
import threading

STACK_BYTES = 64 << 20  # address space reserved for the thread; pages are used as touched
RECURSION_LIMIT = 60_000  # frames; the bounds above need a few tens of thousands at most

_inside = threading.local()


def deep(fn):
    """`fn` run on a thread with STACK_BYTES of stack and RECURSION_LIMIT frames (directly
    when already on one), in a copy of the caller's context (a thread starts with an empty
    one: the command line's GIVEN_AS was lost there); its result is returned and its
    exception re-raised here."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if getattr(_inside, "active", False):
            return fn(*args, **kwargs)
        outcome: dict = {}
        context = contextvars.copy_context()

        def target() -> None:
            _inside.active = True
            try:
                outcome["value"] = context.run(fn, *args, **kwargs)
            except BaseException as e:  # re-raised in the caller's thread
                outcome["error"] = e

        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, RECURSION_LIMIT))
        try:
            worker = _start(target, f"dslc-{fn.__name__}")
            if worker is None:  # no thread could be made (a tight address-space limit)
                sys.setrecursionlimit(limit)
                return fn(*args, **kwargs)
            worker.join()
        finally:
            sys.setrecursionlimit(limit)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
    return run


def _start(target, name: str) -> threading.Thread | None:
    """A started daemon thread with a STACK_BYTES stack, or None if none can be made."""
    old = threading.stack_size(STACK_BYTES)
    try:
        worker = threading.Thread(target=target, name=name, daemon=True)
        worker.start()
        return worker
    except (RuntimeError, MemoryError):
        return None
    finally:
        threading.stack_size(old)
