"""Reading a .net file and everything it imports into one namespace.

`import "blocks.net"` is resolved relative to the importing file. Each file is read
once (diamond imports are fine); a cycle is an error that shows the chain. Blocks,
models and training recipes of all files share one namespace, and a name defined
twice is an error pointing at both places.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dslc.diagnostics import CompileError, Diagnostic, SourceCache, Span
from dslc.frontend import ast
from dslc.frontend.parse import parse


@dataclass
class Program:
    """All definitions reachable from one root file."""

    root: str
    modules: dict[str, ast.Module] = field(default_factory=dict)
    blocks: dict[str, ast.BlockDef] = field(default_factory=dict)
    models: dict[str, ast.ModelDef] = field(default_factory=dict)
    trains: list[ast.TrainDef] = field(default_factory=list)
    sources: SourceCache = field(default_factory=SourceCache)

    @property
    def root_module(self) -> ast.Module:
        return self.modules[self.root]

    def default_model(self) -> str | None:
        """The first model of the root file, else the first model imported."""
        own = self.root_module.models
        if own:
            return own[0].name
        return next(iter(self.models), None)


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(Path(path).resolve()) if rel.startswith("..") else rel


def load_program(path: str | os.PathLike, text: str | None = None) -> Program:
    """Parse `path` and its imports; raises CompileError with every problem found.

    `text`, when given, is used instead of reading `path` (imports are still read
    from disk, relative to `path`).
    """
    root = Path(path)
    prog = Program(root=display_path(root))
    if text is None:
        text = _read(root)
        if not isinstance(text, str):
            raise CompileError.single("E0001", f"cannot read {prog.root}: {_reason(text)}")
    errors: list[Diagnostic] = []
    _load(prog, root.resolve(), text, [], errors, set())
    if not errors:
        _collect(prog, errors)
    if errors:
        raise CompileError(errors, prog.sources)
    return prog


def _read(path: Path) -> str | OSError | UnicodeDecodeError:
    """The text of a file, or the reason it cannot be read (a value, so callers word the error)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return e


def _reason(err: OSError | UnicodeDecodeError) -> str:
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte {err.start})"
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, IsADirectoryError):
        return "it is a directory"
    return (err.strerror or str(err)).lower()


def _load(prog: Program, path: Path, text: str, chain: list[Path], errors, seen: set[Path]) -> None:
    """Parse one file, then the files it imports (depth first, each file once)."""
    seen.add(path)
    name = display_path(path)
    prog.sources.add(name, text)
    try:
        module = parse(text, name)
    except CompileError as e:
        errors.extend(e.diagnostics)
        return
    prog.modules[name] = module
    stack = chain + [path]
    for imp in module.imports:
        target = (path.parent / imp.path).resolve()
        if target in stack:
            cycle = " -> ".join(display_path(p) for p in stack[stack.index(target):] + [target])
            errors.append(Diagnostic("E0003", f"import cycle: {cycle}", imp.span,
                                     hint="move the shared blocks into a file that both import"))
            continue
        if target in seen:  # a diamond: already read (or already reported) through another path
            continue
        sub = _read(target)
        if not isinstance(sub, str):
            seen.add(target)
            errors.append(Diagnostic("E0002", f"cannot import '{imp.path}': {display_path(target)}: "
                                     f"{_reason(sub)}", imp.span,
                                     hint="import paths are relative to the importing file"))
            continue
        _load(prog, target, sub, stack, errors, seen)


def _collect(prog: Program, errors: list[Diagnostic]) -> None:
    """Gather the definitions of all files into one namespace; a name may be defined once."""
    seen: dict[str, Span] = {}
    for module in prog.modules.values():
        for defs, table in ((module.blocks, prog.blocks), (module.models, prog.models)):
            for d in defs:
                if d.name in seen:
                    errors.append(Diagnostic("E0203", f"'{d.name}' is defined twice", d.name_span)
                                  .with_note(seen[d.name], "first defined here"))
                    continue
                seen[d.name] = d.name_span
                table[d.name] = d
        prog.trains.extend(module.trains)
