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
"""
from __future__ import annotations

import hashlib
from pathlib import Path

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
        stamp.write_text(digest)
    except (OSError, RuntimeError):  # no writable cache: Numba compiles in memory, nothing is stale
        pass


drop_stale()
