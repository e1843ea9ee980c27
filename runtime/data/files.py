"""Finding and reading data files: only regular files, bounded reads, every failure a DataError.

Datasets are distributed both plain and gzipped (`train-images-idx3-ubyte.gz`), so the
loaders ask for a file by its plain name and `find` also accepts the `.gz` twin.

Every read is bounded. A FIFO, a device or a directory where a file is expected is refused
at once (dslc.files.open_regular), never waited on or read forever; `read_bytes` stops at a
limit the loader gives (what its format can sensibly hold) and at the memory available, so
a small .gz that inflates to gigabytes is refused after reading just past the limit;
formats with a header (IDX, .npy) check the size it claims with `check_memory` before
allocating it (see idx.py and arrays.py).
"""
from __future__ import annotations

import gzip
import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from io import BufferedIOBase
from typing import Iterator

from dslc.files import UnreadableFile, open_regular, reason
from dslc.reading import human_bytes, memory_available
from dslc.files import check_memory as _check_memory
from dslc.runtime.data.dataset import DataError


def directory(path) -> Path:
    """`path` as a Path, or DataError when it is not an existing directory."""
    path = Path(path)
    if not path.is_dir():
        raise DataError("no such directory" if not path.exists() else "not a directory", path)
    return path


def find(folder: Path, *names: str) -> Path:
    """The first of `names` (or its .gz twin) present in `folder`, else DataError naming the first.
    A name that is there but is not a regular file (a FIFO, a device) is returned too:
    reading it gives the message that says what it is."""
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if os.path.lexists(candidate):
                return candidate
    raise DataError(f"missing file (also looked for {names[0]}.gz)", folder / names[0])


def check_memory(nbytes: int, what: str, path) -> None:
    """DataError naming `path` when `what` (needing `nbytes`) would not fit in memory."""
    try:
        _check_memory(nbytes, what, path)
    except UnreadableFile as e:
        raise DataError(e.reason, e.path) from None


@contextmanager
def opened(path: Path) -> Iterator[BufferedIOBase]:
    """`path` open for reading, decompressed on the fly when its name ends in .gz; DataError
    (naming it) unless it is a regular file, and for any read or gzip failure inside the block."""
    try:
        raw = open_regular(path)
    except UnreadableFile as e:
        raise DataError(e.reason, e.path) from None
    try:
        with raw:
            yield gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"corrupt or truncated gzip file ({e or type(e).__name__})", path) from None
    except OSError as e:
        raise DataError(f"cannot read: {reason(e)}", path) from None


def read_bytes(path: Path, limit: int, what: str) -> bytes:
    """The content of `path` (decompressed when its name ends in .gz), refused when it holds
    more than `limit` bytes (`what` names the format in the message) or than memory allows."""
    bound = min(limit, memory_available())
    with opened(path) as f:
        if path.suffix != ".gz":
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise DataError(f"{human_bytes(size)}; more than the {human_bytes(limit)} {what} may hold", path)
            check_memory(size, f"reading it ({human_bytes(size)})", path)
        data = f.read(bound + 1)
    if len(data) > bound:
        why = (f"more than the {human_bytes(limit)} {what} may hold" if bound == limit
               else f"more than the {human_bytes(bound)} of memory available")
        raise DataError(f"decompresses to {why}", path)
    return data
