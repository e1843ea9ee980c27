"""NumPy arrays from .npy and .npz files someone sent: the header is checked before anything is read.

np.load trusts the header: a 100-byte .npy claiming shape (2**40,) allocates 8 TiB, and an
.npz member is only as small as its zip entry says. Here the header is parsed first
(np.lib.format's readers, no pickle); the dtype must be plain numbers (bool, int, uint,
float: object arrays would unpickle, complex ones lose their imaginary part, structured
ones are not features); the bytes the shape needs must be exactly what the file (or the
zip entry) holds and must fit in memory. Only then are they read, into a writable array.

    x = read_npy(path)                      # a .npy file
    arrays = read_npz(path, ("x", "y"))     # named arrays of an .npz archive
"""
from __future__ import annotations

import os
import zipfile
from math import prod
from pathlib import Path
from io import BufferedIOBase
from typing import cast

import numpy as np

from dslc.reading import human_bytes
from dslc.runtime.data.dataset import DataError
from dslc.runtime.data.files import check_memory, opened

MAGIC_NPY, MAGIC_ZIP = b"\x93NUMPY", b"PK"
HEADER_LIMIT = 10_000  # bytes of a .npy header: NumPy's own default for untrusted files


def _array(f: BufferedIOBase, size: int, path, name: str) -> np.ndarray:
    """The array of an open .npy stream holding `size` bytes in all; `name` says which in messages."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]} (only plain arrays are read)")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f, max_header_size=HEADER_LIMIT)
    except ValueError as e:
        raise DataError(f"{name}: not a readable .npy array ({e})", path) from None
    if dtype.kind == "c":
        raise DataError(f"{name} holds complex numbers ({dtype}); dslc reads real numbers only", path)
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise DataError(f"{name} holds {dtype} values, not numbers", path)
    nbytes = prod(shape) * dtype.itemsize
    have = size - f.tell()
    if nbytes != have:
        problem = "truncated" if have < nbytes else "trailing bytes"
        raise DataError(f"{name}: {problem}: its header claims shape {list(shape)} of {dtype} "
                        f"({human_bytes(nbytes)}), the data is {human_bytes(have)}", path)
    check_memory(nbytes, f"{name} ({list(shape)} of {dtype}, {human_bytes(nbytes)})", path)
    data = bytearray(nbytes)
    if f.readinto(data) != nbytes:
        raise DataError(f"{name}: truncated", path)
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def read_npy(path: Path) -> np.ndarray:
    """The array in .npy file `path`, checked as the module docstring says; DataError naming it."""
    if path.suffix == ".gz":
        raise DataError("a gzipped .npy cannot be checked before it is inflated; give the .npy itself", path)
    with opened(path) as f:
        return _array(f, os.fstat(f.fileno()).st_size, path, "the array")


def read_npz(path: Path, names) -> dict[str, np.ndarray]:
    """The arrays `names` of .npz archive `path`, each checked as the module docstring says."""
    if path.suffix == ".gz":
        raise DataError("a gzipped .npz cannot be checked before it is inflated; give the .npz itself", path)
    with opened(path) as f:
        magic = f.read(len(MAGIC_NPY))
        if magic == MAGIC_NPY:
            raise DataError("is a .npy array, not an .npz archive; save inputs and labels together with "
                            "np.savez(path, x=inputs, y=labels)", path)
        if not magic.startswith(MAGIC_ZIP):
            raise DataError("not an .npz archive (no zip signature)", path)
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as archive:
                members = {m.filename.removesuffix(".npy"): m for m in archive.infolist()}
                missing = [n for n in names if n not in members]
                if missing:
                    have = ", ".join(sorted(members)[:20]) or "nothing"
                    raise DataError(f"no array named {', '.join(missing)} (it has: {have})", path)
                out = {}
                for name in names:
                    with archive.open(members[name]) as member:  # a ZipExtFile: a BufferedIOBase
                        out[name] = _array(cast(BufferedIOBase, member), members[name].file_size, path,
                                           f"array {name}")
                return out
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
            raise DataError(f"not a readable .npz archive ({e or type(e).__name__})", path) from None
