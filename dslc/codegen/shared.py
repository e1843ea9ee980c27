"""Content-addressed kernels: one compiled copy of each distinct kernel text, shared by every model.

A generated kernel's text depends on the form of its loops, not on the layer, model or
width it was made for, except through names: its parameters are named after buffers and
its locals after layers. `canonical` replaces every name the kernel binds by its position
(parameters a0, a1, ..., locals v0, v1, ..., the kernel itself `kernel`, the chain
functions it calls chain0, ...), drops the comments, and prints the rest as Python
prints it (ast.unparse). Two kernels with the same canonical text compute the same
thing, so they share one file, `kernels/k_<hash>.py` in the dslc cache, and Numba
(`cache=True`) compiles that file's `kernel` once per machine for each signature
(dtypes and ranks) it is called with:

    text = canonical(unit)              # the unit: a kernel's def, after the chains it calls
    fn = load(text)                     # the shared module's `kernel` (imported once per process)

The readable per-model module (numba_cpu.py) keeps the layer names; the runner binds
each of its kernels to the shared one (dslc/runtime/cpu/runner.py).
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from dslc.codegen.cache import folder, numba_version, write_once
from dslc.codegen.scalar import CONSTANTS, CPU_IMPORT
from dslc.debug import cache_dir
from dslc.version import __version__


def _source_digest(module: str) -> str:
    """A hash of `module`'s source: Numba revalidates a cached kernel against its own file
    only, not the functions it inlined from others (runtime/cpu/kernel_cache.py)."""
    origin = importlib.util.find_spec(module).origin
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:20]


# What a kernel may use besides its own names: the header of every shared module. It is part
# of the kernel's key, with the source of the functions its expressions inline (elementary's),
# so a kernel compiled against an older one is not reused.
HEADER = "\n".join([
    "# A dslc kernel, shared by every generated kernel with this text (dslc/codegen/shared.py).",
    f"# It inlines dslc.runtime.cpu.elementary {_source_digest('dslc.runtime.cpu.elementary')}.",
    "import math", "", "import numpy as np", "from numba import njit, prange", "", CPU_IMPORT, "",
    *(f"{name} = {value}" for name, value in CONSTANTS.items()), "", ""])


class _Renamer(ast.NodeTransformer):
    """Renames the names a unit binds (defs, their parameters, assigned locals) by position."""

    def __init__(self, bound: set[str], entry: str):
        self.bound, self.entry = bound, entry
        self.names: dict[str, str] = {}
        self.counts = {"a": 0, "v": 0, "chain": 0}

    def new(self, name: str, kind: str) -> str:
        if name not in self.names:
            if name == self.entry:
                self.names[name] = "kernel"
            else:
                self.names[name] = f"{kind}{self.counts[kind]}"
                self.counts[kind] += 1
        return self.names[name]

    def visit_FunctionDef(self, node):
        node.name = self.new(node.name, "chain")
        return self.generic_visit(node)

    def visit_arg(self, node):
        node.arg = self.new(node.arg, "a")
        return node

    def visit_Name(self, node):
        if node.id in self.bound:
            node.id = self.new(node.id, "v")
        return node


@lru_cache(maxsize=4096)
def canonical(unit: str) -> str:
    """`unit` (defs, the last one the kernel) with positional names and no comments."""
    tree = ast.parse(unit)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    bound = {d.name for d in defs}
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
    renamer = _Renamer(bound, defs[-1].name)
    for d in defs:  # functions first, so a chain is chain0 wherever the kernel calls it
        renamer.new(d.name, "chain")
    return ast.unparse(renamer.visit(tree)) + "\n"


def key(text: str) -> str:
    """The hash naming a canonical kernel's file: its header and text, dslc's and Numba's versions."""
    return hashlib.sha256("\0".join((__version__, numba_version(), HEADER, text)).encode()).hexdigest()[:20]


def path_for(text: str) -> Path:
    return path_of(f"k_{key(text)}")


def path_of(stem: str) -> Path:
    """The shared kernel file named `stem` (`k_<hash>`)."""
    return cache_dir() / "kernels" / f"{stem}.py"


def store(text: str) -> Path:
    """The shared module of canonical kernel `text`, written first if it is not there
    (never rewritten unless damaged: Numba's cache is keyed by the file's modification time)."""
    path = path_for(text)
    folder(path.parent)  # a file in the way is said so (CliError), not a traceback
    write_once(path, (HEADER + text).encode())  # a damaged file is rewritten
    return path


def load(text: str):
    """The compiled-on-first-call `kernel` of canonical kernel `text` (its module imported once)."""
    return module(store(text)).kernel


@lru_cache(maxsize=None)
def module(path: Path) -> ModuleType:
    """Import a shared kernel module from its file (in a worker process too)."""
    name = f"dslc_kernel_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]
