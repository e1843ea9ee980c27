"""Reading JSON that a person may have edited (state.json, config.json, metrics.jsonl) with checks.

A run's files are data dslc wrote, but they are plain text: someone may edit, truncate or
hand-write them. Every field the runtime uses is fetched through a `Doc`, which checks its
type and range and, when it is wrong, raises the caller's error type with the file and the
key's dotted path: `runs/m/last/state.json: 'progress.step' must be an integer >= 0, got
-3`. Values are described by their type (numbers are shown), never quoted, so a message
never echoes the content of a file.

    doc = Doc(json.loads(text), "state.json", CheckpointError)
    step = doc.int("step", lo=0)
    shape = doc.list("example_shape", lambda v: is_int(v) and v > 0, "positive integers")
"""
from __future__ import annotations

import builtins
import math
import os
from typing import Any, Callable

from dslc.files import UnreadableFile, read_limited


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def describe(v) -> str:
    """What a JSON value is, for a message: numbers and booleans themselves, else their kind."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if is_int(v) or isinstance(v, float):
        return repr(v) if len(repr(v)) <= 24 else f"a {len(str(v))}-digit number"
    kinds: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(v), type(v).__name__)


class Doc:
    """A JSON object from `file`, read field by field with checks (see the module docstring).
    `error` is the exception class raised (its one argument is the message); `prefix` the
    dotted path of this object inside the document."""

    def __init__(self, value, file, error: type[Exception], prefix: str = ""):
        self.file, self.error, self.prefix = str(file), error, prefix
        if not isinstance(value, dict):
            raise self.fail(prefix.rstrip(".") or None, "a JSON object", value)
        self.value = value

    def fail(self, key: str | None, wanted: str, got=None, missing: bool = False) -> Exception:
        where = f"'{key}'" if key else "the document"
        if missing:
            return self.error(f"{self.file}: {where} is missing")
        return self.error(f"{self.file}: {where} must be {wanted}, got {describe(got)}")

    def get(self, key: str, ok: Callable[[Any], bool], wanted: str, optional: bool = False):
        """The value of `key` when `ok(value)`; None when absent and `optional`."""
        path = self.prefix + key
        if key not in self.value:
            if optional:
                return None
            raise self.fail(path, wanted, missing=True)
        value = self.value[key]
        if not ok(value):
            raise self.fail(path, wanted, value)
        return value

    def int(self, key: str, lo: int | None = None, optional: bool = False) -> int | None:
        wanted = "an integer" + (f" >= {lo}" if lo is not None else "")
        return self.get(key, lambda v: is_int(v) and (lo is None or v >= lo), wanted, optional)

    def number(self, key: str, lo: float | None = None, optional: bool = False, null: bool = False):
        wanted = "a finite number" + (f" >= {lo}" if lo is not None else "") + (" or null" if null else "")
        return self.get(key, lambda v: (null and v is None) or (is_number(v) and (lo is None or v >= lo)),
                        wanted, optional)

    def str(self, key: builtins.str, optional: builtins.bool = False) -> builtins.str | None:
        return self.get(key, lambda v: isinstance(v, str), "a string", optional)

    def bool(self, key: builtins.str) -> builtins.bool:
        return self.get(key, lambda v: isinstance(v, bool), "true or false")

    def obj(self, key: builtins.str, optional: builtins.bool = False) -> "Doc | None":
        value = self.get(key, lambda v: isinstance(v, dict), "an object", optional)
        return None if value is None else Doc(value, self.file, self.error, f"{self.prefix}{key}.")

    def list(self, key: builtins.str, ok: Callable[[Any], builtins.bool], wanted: builtins.str) -> builtins.list:
        """A list whose every item passes `ok`; `wanted` describes the items."""
        return self.get(key, lambda v: isinstance(v, list) and all(map(ok, v)), f"a list of {wanted}")

    def values(self, ok: Callable[[Any], builtins.bool], wanted: builtins.str) -> dict:
        """This object as a dict, every value passing `ok` (e.g. the sums of a half-done epoch)."""
        for key, value in self.value.items():
            if not ok(value):
                raise self.fail(self.prefix + key, wanted, value)
        return self.value

    def exactly(self, keys) -> None:
        """Refuse a key outside `keys` (a missing one is refused when it is read)."""
        extra = [k for k in self.value if k not in keys]
        if extra:
            name = extra[0] if len(extra[0]) <= 40 else extra[0][:40] + "..."
            raise self.error(f"{self.file}: unknown key '{self.prefix}{name}'")


def lines_of(path, limit: int, what: str, error: type[Exception]) -> builtins.list[builtins.str]:
    """The lines of a run file a person may have edited (metrics.jsonl, metrics_steps.csv), read
    bounded by `limit`; none when it is absent; `error` names the file when it cannot be read."""
    if not os.path.lexists(path):
        return []
    try:
        return read_limited(path, limit, what).decode("utf-8", "replace").splitlines()
    except UnreadableFile as e:
        raise error(str(e)) from None
