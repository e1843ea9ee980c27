"""Numba's cached kernels of this package, dropped when any of its source files changed.

Numba revalidates a cached kernel against its own file only, not the helpers it inlined
from other files (blas.gemm_block, the explicit vectors of lanes.py, philox.py's counter
generator, geometry.py's sizes), and a stale kernel can compute wrong results or crash.
So the package keeps a hash of its sources beside Numba's cache and deletes every cached
kernel of the package when the hash changes. This runs once, when the first module here
that others inline from is imported (blas.py, lanes.py, dropout_masks.py import it
first), before any of their kernels is loaded: until 2026-12-06 it ran only in blas.py,
and a script importing pool.py alone ran the max pool's stale kernels after lanes.py
had changed.

It also makes a damaged cache file a cache miss, and saves into one function's cache one
process at a time (`tolerate_damaged_files`): Numba raises from unpickling an index or
data file cut short (a full disk, a crash before the data reached the disk) or
overwritten, on every later run, until someone finds and deletes it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: saves are not serialised (Numba's own behaviour)
    fcntl = None

_STAMP = "dslc-sources.sha256"


def drop_stale() -> None:
    """Delete Numba's cached kernels of this package when any of its source files changed,
    or the window geometry they compile in (dslc/kernels/geometry.py: conv's tile_rows).
    The locator is asked for a function of this file: every module here caches in the same
    directory.

    The cache lives where Numba puts it for this directory (`__pycache__`, or under
    NUMBA_CACHE_DIR); a stamp file there holds the hash of the package's sources.
    """
    from numba.core.caching import CompileResultCacheImpl

    from dslc.kernels import geometry
    here = Path(__file__).parent
    sources = sorted(here.glob("*.py")) + [Path(geometry.__file__)]
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()
    try:
        cache = Path(CompileResultCacheImpl(drop_stale)._locator.get_cache_path())
        stamp = cache / _STAMP
        if stamp.is_file() and stamp.read_text() == digest:
            return
        stems = {p.stem for p in sources}
        for f in (*cache.glob("*.nbi"), *cache.glob("*.nbc")):
            if f.name.split(".")[0] in stems:
                f.unlink(missing_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        staged = stamp.with_name(f"{_STAMP}.{os.getpid()}.tmp")  # renamed whole: another process may read it
        staged.write_text(digest)
        os.replace(staged, stamp)
    except (OSError, RuntimeError):  # no writable cache: Numba compiles in memory, nothing is stale
        pass


def _or_missing(method, missing):
    """`method` returning `missing()` where it raises anything but an OSError (a file that
    cannot be read is Numba's to report)."""
    def tolerant(self, *args):
        try:
            return method(self, *args)
        except OSError:
            raise
        except Exception:
            return missing()
    return tolerant


def tolerate_damaged_files() -> None:
    """Read a Numba cache file that cannot be unpickled as a missing one (numba 0.68's
    IndexDataCacheFile: `_load_index` feeds both loading and saving, `load` reads the data
    file), so the function is compiled again and its index rewritten: without this, a
    truncated `.nbi` or `.nbc` was an UnpicklingError traceback on every run from then on.
    Patched once per process, for every Numba cache (the shared kernels' too)."""
    from numba.core.caching import IndexDataCacheFile
    if getattr(IndexDataCacheFile, "_dslc_tolerant", False):
        return
    if not all(hasattr(IndexDataCacheFile, name) for name in ("_load_index", "load", "save")):
        return  # another Numba's internals: its caches as they are
    # an index that cannot be unpickled (truncated, garbage) is no index; a data file, no entry:
    # compiled again, the index then names a new one
    _load_index = _or_missing(IndexDataCacheFile._load_index, dict)
    _load = _or_missing(IndexDataCacheFile.load, lambda: None)

    save = IndexDataCacheFile.save

    def _save(self, key, data):
        """Numba's save reads the index, picks the first data file name it does not list and
        writes both: two processes saving two signatures of one function at once (two models
        compiling, a build's workers) both took `.1.nbc`, one index entry then named the
        other's machine code, and a later run loaded it for the wrong types ("can't unbox
        array", or wrong numbers). An exclusive lock on `<index>.lock` makes saves one at a time."""
        if fcntl is None:
            return save(self, key, data)
        try:
            lock = os.open(self._index_path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # a cache that cannot hold a lock cannot hold the save either: Numba says so
            return save(self, key, data)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return save(self, key, data)
        finally:
            os.close(lock)

    for name, value in (("_load_index", _load_index), ("load", _load), ("save", _save), ("_dslc_tolerant", True)):
        setattr(IndexDataCacheFile, name, value)


tolerate_damaged_files()
drop_stale()
