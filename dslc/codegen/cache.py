"""The dslc cache (`dslc.debug.cache_dir()`: DSLC_CACHE, default ~/.cache/dslc): generated
modules, and what is known to be built.

    module, path = load(kg, source)       # <model>_<stage>_<key>.py, imported

A generated module is keyed by the kernel graph's deterministic text, its source, the
dslc and Numba versions and the library kernels' sources; it holds the drivers the runner
calls and the readable kernels, each of which runs as its shared compiled copy (one file
per distinct kernel text, shared.py). A file is written once and never rewritten (unless damaged: `write_once`): Numba's
own cache (`cache=True`) is invalidated by the source file's modification time, so
leaving an existing file untouched is what lets a second process load compiled kernels.

Build notes: `write_built` records that a function the drivers call (a library kernel or a
shared kernel) is compiled for given argument types, and where Numba keeps it;
`built_index` reads that back without Numba, so `dslc compile` answers at once for a
model whose every kernel is built (a size change). Build records (`record_path`,
`write_record`, `read_record`) answer an unchanged `dslc compile` request without even
loading the model.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from dslc.codegen.source import identifier
from dslc.debug import cache_dir
from dslc.diagnostics import CliError
from dslc.files import ensure_dir, write_atomic
from dslc.kernels.graph import KernelGraph
from dslc.version import __version__


def kernel_text(kg: KernelGraph) -> str:
    """A deterministic text of everything in the kernel graph (frozen dataclass reprs)."""
    return repr((kg.name, kg.stage, kg.buffers, kg.kernels, kg.outputs))


@lru_cache(maxsize=None)
def numba_version() -> str:
    """Numba's version, read from its package metadata: importing Numba takes a quarter second."""
    return importlib.metadata.version("numba")


def digest(root: Path, pattern: str) -> str:
    """sha256 over the relative names and contents of the files under `root` matching `pattern`."""
    h = hashlib.sha256()
    for f in sorted(root.glob(pattern)):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=None)
def library_digest() -> str:
    """The hash of the CPU library kernels' sources (dslc/runtime/cpu/*.py, found without
    importing them: the runtime sits above code generation) and of the window geometry
    they compile in (dslc/kernels/geometry.py)."""
    runtime = importlib.util.find_spec("dslc.runtime").submodule_search_locations[0]
    kernels = Path(__file__).resolve().parents[1] / "kernels"
    return digest(Path(runtime) / "cpu", "*.py") + digest(kernels, "geometry.py")


def key(kg: KernelGraph, source: str) -> str:
    h = hashlib.sha256()
    for part in (__version__, numba_version(), library_digest(), kernel_text(kg), source):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def path_for(kg: KernelGraph, source: str) -> Path:
    return cache_dir() / f"{identifier(kg.name)}_{kg.stage}_{key(kg, source)}.py"


def write_once(path: Path, data: bytes) -> None:
    """Write `data` at `path` unless the file there already holds exactly it (then it is left
    untouched, its modification time too). A file whose bytes differ from what its name
    promises (cut short by a full disk or a crash before the data reached the disk, or edited)
    is replaced: left alone, it failed to import, or ran the wrong code, on every run."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    try:  # a concurrent process sees either no file or the whole file; no fsync: it can be remade
        write_atomic(path, data, durable=False)
    except CliError as e:
        raise CliError(f"{e}{WHAT_TO_DO}") from None


# What a user whose cache cannot be written can do (a read-only home, a file in the way).
WHAT_TO_DO = "; set DSLC_CACHE to a writable directory for dslc's kernel cache (default ~/.cache/dslc)"


def folder(path: Path) -> Path:
    """Create the cache folder `path`; a CliError saying what to do when it cannot be one."""
    try:
        return ensure_dir(path)
    except CliError as e:
        raise CliError(f"{e}{WHAT_TO_DO}") from None


def store(kg: KernelGraph, source: str) -> Path:
    """The cache file for `source`, written first if it is not there (write_once)."""
    path = path_for(kg, source)
    folder(path.parent)  # first: a cache directory that cannot be one is said so
    write_once(path, source.encode())
    return path


def load(kg: KernelGraph, source: str) -> tuple[ModuleType, Path]:
    """Import the module for `source`, writing it to the cache first if it is not there."""
    path = store(kg, source)
    name = f"dslc_generated_{path.stem}"
    if name in sys.modules:
        return sys.modules[name], path
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module, path


# ---- build records: an unchanged `dslc compile` is answered without compiling anything ----

def code_digest() -> str:
    """The hash of everything that turns a .net file into kernels: dslc's own sources (the
    front end, passes, code generator), its grammar and the CPU library."""
    import dslc.grammar
    package = Path(__file__).resolve().parents[1]
    return hashlib.sha256("".join((digest(package, "**/*.py"), digest(Path(dslc.grammar.__file__).parent, "*.lark"),
                                   library_digest())).encode()).hexdigest()


def record_path(request: dict) -> Path:
    """Where the build record of a compile request lives: keyed by the request (file, model,
    settings, stages, batch), the code that compiles it, the versions and the cache locations."""
    ident = json.dumps([request, __version__, numba_version(), code_digest(),
                        os.environ.get("NUMBA_CACHE_DIR", ""), str(cache_dir())], sort_keys=True)
    return cache_dir() / "built" / f"{hashlib.sha256(ident.encode()).hexdigest()[:24]}.json"


def _sha(path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def write_record(path: Path, inputs, artefacts, lines: list) -> None:
    """Record a finished build: the .net files read (and their hashes), the files it made
    (generated modules, Numba's cache indexes) and the lines it printed."""
    record = {"inputs": {str(Path(f).resolve()): _sha(f) for f in inputs},
              "artefacts": sorted({str(Path(f).resolve()) for f in artefacts}), "lines": lines}
    _note(path, json.dumps(record, indent=1).encode())


def _note(path: Path, data: bytes) -> None:
    """Write a build note (a record, a built-kernel marker), or nothing where the cache cannot
    hold it (read-only, a file in the way of `built/`): a note only spares later work, and
    failing for it made `dslc compile` of a model built in a read-only cache print its
    result, then exit 1, and a run there stop before its first step."""
    try:
        ensure_dir(path.parent)
        write_atomic(path, data, durable=False)
    except CliError:
        pass


def read_record(path: Path) -> dict | None:
    """The record at `path` when its build is still current: every input file unchanged and
    every artefact still there; else None (the request must be compiled)."""
    try:
        record = json.loads(path.read_text())
        if any(_sha(f) != h for f, h in record["inputs"].items()):
            return None
        if not all(Path(f).exists() for f in record["artefacts"]):
            return None
    except (OSError, ValueError, LookupError, TypeError, AttributeError):  # unreadable, or not a record
        return None
    return record


# ---- built kernels: a function compiled for argument types, wherever Numba keeps it ----

def _built_path(where, types) -> Path:
    """The marker of library function or shared kernel `where` built for `types`
    (numba_cpu.driver_calls), keyed also by the versions, the library's sources and
    Numba's cache directory."""
    library = library_digest() if where[0].startswith("dslc.") else ""
    ident = json.dumps([list(where), list(types), __version__, numba_version(), library,
                        os.environ.get("NUMBA_CACHE_DIR", "")])
    return cache_dir() / "built" / "kernels" / hashlib.sha256(ident.encode()).hexdigest()[:24]


def write_built(where, types, index: str | None) -> None:
    """Note that `where` is compiled for `types`, its machine code indexed by Numba's file `index`."""
    path = _built_path(where, types)
    if index and not path.exists():
        _note(path, index.encode())


def built_index(where, types) -> Path | None:
    """Numba's index file of `where` compiled for `types`, when a process noted it and it is
    still there; else None (it must be compiled, or at least loaded, to know)."""
    try:
        index = Path(_built_path(where, types).read_text())
    except (OSError, ValueError):  # ValueError: not UTF-8 text, a damaged marker
        return None
    return index if index.exists() else None
