"""The generated-module cache: source files keyed by what they were made from.

    module, path = load(kg, source)

The key hashes the kernel graph's deterministic text, the generated source, the dslc
version and the Numba version; the file is `<model>_<stage>_<key>.py` in
`dslc.debug.cache_dir()` (DSLC_CACHE, default ~/.cache/dslc). A file is written once
and never rewritten: Numba's own cache (`cache=True`, stored in `__pycache__` beside the
file) is invalidated by the source file's modification time, so leaving an existing
file untouched is what lets a second process load compiled kernels instead of
compiling them again.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numba

import dslc
from dslc.codegen.source import identifier
from dslc.debug import cache_dir
from dslc.kernels.graph import KernelGraph


def kernel_text(kg: KernelGraph) -> str:
    """A deterministic text of everything in the kernel graph (frozen dataclass reprs)."""
    return repr((kg.name, kg.stage, kg.buffers, kg.kernels, kg.outputs))


def key(kg: KernelGraph, source: str) -> str:
    h = hashlib.sha256()
    for part in (dslc.__version__, numba.__version__, kernel_text(kg), source):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def path_for(kg: KernelGraph, source: str) -> Path:
    return cache_dir() / f"{identifier(kg.name)}_{kg.stage}_{key(kg, source)}.py"


def load(kg: KernelGraph, source: str) -> tuple[ModuleType, Path]:
    """Import the module for `source`, writing it to the cache first if it is not there."""
    path = path_for(kg, source)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a concurrent process sees either no file or the whole file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    name = f"dslc_generated_{path.stem}"
    if name in sys.modules:
        return sys.modules[name], path
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module, path
