"""Reading a .net file and everything it imports into one namespace.

`import "blocks.net"` is resolved relative to the importing file. Each file is read
once (diamond imports are fine); a cycle is an error that shows the chain. Blocks,
models and training recipes of all files share one namespace, and a name defined
twice is an error pointing at both places.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dslc.diagnostics import CompileError, Diagnostic, SourceCache, Span, printable, quoted
from dslc.frontend import ast
from dslc.frontend.parse import parse
from dslc.reading import Refused, read_bounded


@dataclass
class Program:
    """All definitions reachable from one root file."""

    root: str
    modules: dict[str, ast.Module] = field(default_factory=dict)
    blocks: dict[str, ast.BlockDef] = field(default_factory=dict)
    models: dict[str, ast.ModelDef] = field(default_factory=dict)
    trains: list[ast.TrainDef] = field(default_factory=list)
    sources: SourceCache = field(default_factory=SourceCache)
    display: dict[Path, str] = field(default_factory=dict)  # real path -> the name messages use

    @property
    def root_module(self) -> ast.Module:
        return self.modules[self.root]

    def default_model(self) -> str | None:
        """The first model of the root file, else the first model imported."""
        own = self.root_module.models
        if own:
            return own[0].name
        return next(iter(self.models), None)


MAX_SOURCE_BYTES = 1 << 20  # a .net file is written by hand: 1 MiB is ~20,000 lines


def display_path(path: str | os.PathLike) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return os.path.abspath(path) if rel.startswith("..") else rel


def _real(path: str | os.PathLike) -> Path:
    """The file a path names, symbolic links followed (a loop is left for open() to report)."""
    return Path(os.path.realpath(path))


def _name(lexical: str | os.PathLike, real: Path) -> str:
    """How messages name a file: as it was reached (`models/x.net` through a symlinked
    folder), unless that spelling names another file, then by where it really is."""
    plain = os.path.normpath(lexical)
    return display_path(plain) if _real(plain) == real else display_path(real)


def load_program(path: str | os.PathLike, text: str | None = None) -> Program:
    """Parse `path` and its imports; raises CompileError with every problem found.

    `text`, when given, is used instead of reading `path` (imports are still read
    from disk, relative to `path`).
    """
    real = _real(path)
    prog = Program(root=_name(path, real))
    if text is None:
        read = _read(real)
        if not isinstance(read, str):
            raise CompileError.single("E0001", f"cannot read {printable(prog.root)}: {_reason(read)}")
        text = read
    errors: list[Diagnostic] = []
    _load(prog, prog.root, real, text, errors)
    if not errors:
        _collect(prog, errors)
    if errors:
        raise CompileError(errors, prog.sources)
    return prog


def _read(path: Path) -> str | OSError | UnicodeDecodeError:
    """The text of a file, or the reason it cannot be read (a value, so callers word the error).
    Only a regular file of at most MAX_SOURCE_BYTES is read (a FIFO or /dev/zero is refused).
    A byte-order mark opening it, as Windows' Notepad writes UTF-8, is dropped (utf-8-sig):
    it was E0101 "unexpected character '\\ufeff'" at 1:1, a character no editor shows."""
    try:
        return read_bounded(path, MAX_SOURCE_BYTES).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        return e


def _reason(err: OSError | UnicodeDecodeError) -> str:
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte {err.start})"
    if isinstance(err, Refused):
        return err.strerror
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, IsADirectoryError):
        return "it is a directory"
    if err.errno == errno.ELOOP:
        return "a loop of symbolic links"
    return (err.strerror or str(err)).lower()


def _load(prog: Program, name: str, path: Path, text: str, errors: list[Diagnostic]) -> None:
    """Parse the root file, then the files it imports, depth first, each file once.

    A work list rather than recursion: a chain of a thousand imports is legal. Each entry
    carries the chain of files that led to it, where an import cycle is found.
    """
    seen: set[Path] = set()
    todo: list[tuple[str, Path, str | None, tuple[Path, ...], ast.Import | None]] = [(name, path, text, (), None)]
    while todo:
        name, path, given, chain, imp = todo.pop()
        if imp is not None:  # an import: the checks the importing file's statement gets
            if path in chain:
                cycle = " -> ".join(prog.display[p] for p in chain[chain.index(path):]) + f" -> {prog.display[path]}"
                errors.append(Diagnostic("E0003", f"import cycle: {printable(cycle)}", imp.span,
                                         hint="move the shared blocks into a file that both import"))
                continue
            if path in seen:  # a diamond: already read (or already reported) through another path
                continue
            read = _read(path)
            if not isinstance(read, str):
                seen.add(path)
                errors.append(Diagnostic("E0002", f"cannot import {quoted(imp.path)}: {printable(name)}: "
                                         f"{_reason(read)}", imp.span,
                                         hint="import paths are relative to the importing file"))
                continue
            given = read
        text = given or ""
        seen.add(path)
        prog.display[path] = name
        prog.sources.add(name, text)
        try:
            module = parse(text, name)
        except CompileError as e:
            errors.extend(e.diagnostics)
            continue
        prog.modules[name] = module
        folder = os.path.dirname(name)
        for sub in reversed(module.imports):
            target = _real(path.parent / sub.path)
            # Named through the importing file's name where that reaches the same file.
            shown = _name(os.path.join(folder, sub.path), target) if _real(folder or ".") == path.parent \
                else display_path(target)
            todo.append((prog.display.get(target, shown), target, None, chain + (path,), sub))


def _collect(prog: Program, errors: list[Diagnostic]) -> None:
    """Gather the definitions of all files into one namespace; a name may be defined once."""
    seen: dict[str, Span] = {}
    for module in prog.modules.values():
        tables: tuple[tuple[tuple[Any, ...], dict[str, Any]], ...] = (
            (module.blocks, prog.blocks), (module.models, prog.models))
        for defs, table in tables:
            for d in defs:
                if d.name in seen:
                    errors.append(Diagnostic("E0203", f"'{d.name}' is defined twice", d.name_span)
                                  .with_note(seen[d.name], "first defined here"))
                    continue
                seen[d.name] = d.name_span
                table[d.name] = d
        prog.trains.extend(module.trains)
