"""Finding and reading data files, with every OS or gzip failure turned into a DataError.

Datasets are distributed both plain and gzipped (`train-images-idx3-ubyte.gz`), so the
loaders ask for a file by its plain name and `find` also accepts the `.gz` twin.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from dslc.runtime.data.dataset import DataError


def directory(path) -> Path:
    """`path` as a Path, or DataError when it is not an existing directory."""
    path = Path(path)
    if not path.is_dir():
        raise DataError("no such directory" if not path.exists() else "not a directory", path)
    return path


def find(folder: Path, *names: str) -> Path:
    """The first of `names` (or its .gz twin) present in `folder`, else DataError naming the first."""
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"missing file (also looked for {names[0]}.gz)", folder / names[0])


def read_bytes(path: Path) -> bytes:
    """The content of `path`, decompressed when its name ends in .gz."""
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError("no such file", path) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"corrupt or truncated gzip file ({e or type(e).__name__})", path) from None
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path) from None
