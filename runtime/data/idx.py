"""MNIST and Fashion-MNIST from their IDX files (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file is a 4-byte magic number — two zero bytes, a type code (0x08 = unsigned
byte) and the number of dimensions — then one big-endian unsigned 32-bit size per dimension, then the
values in C order. MNIST images are idx3 (magic 2051 = 0x00000803), labels idx1 (2049).
Images are scaled from 0..255 to 0..1 and given one channel: x float32 [N, 1, 28, 28].
"""
from __future__ import annotations

from math import prod

import numpy as np

from dslc.reading import human_bytes
from dslc.runtime.data.dataset import DataError, Dataset, checked
from dslc.runtime.data.files import check_memory, directory, find, opened

# type code -> big-endian dtype, from the IDX format description
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path, ndim: int) -> np.ndarray:
    """The array in IDX file `path` (optionally gzipped), which must have `ndim` dimensions,
    e.g. read_idx(folder / "train-images-idx3-ubyte.gz", 1) -> uint8 [60000].

    The header is read first: its dimensions are unsigned 32-bit counts, and the size they
    claim must fit in memory (with the float32 copies a loader makes) before the data is read;
    then exactly that many bytes are read, and one more to find trailing bytes, however
    far a .gz file would inflate."""
    with opened(path) as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _TYPES:
            raise DataError(f"not an IDX file (bad magic number {magic.hex() or 'none'})", path)
        if magic[3] != ndim:
            raise DataError(f"expected an idx{ndim} file, the magic number says idx{magic[3]}", path)
        dims = f.read(4 * ndim)
        start = 4 + 4 * ndim
        if len(dims) < 4 * ndim:
            raise DataError(f"truncated: the header needs {start} bytes, file has {4 + len(dims)}", path)
        shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
        dtype = np.dtype(_TYPES[magic[2]])
        nbytes = prod(shape) * dtype.itemsize
        # the raw values, then the loader's float32 copy and its scaled twin
        check_memory(nbytes + prod(shape) * 8, f"the header's shape {shape} ({human_bytes(nbytes)}, "
                                               "and its float32 copies)", path)
        data = f.read(nbytes + 1)
    if len(data) != nbytes:
        problem = "truncated" if len(data) < nbytes else "trailing bytes"
        found = f"file has {start + len(data)} bytes" if len(data) < nbytes else "file has more"
        raise DataError(f"{problem}: header says shape {shape} ({start + nbytes} bytes), {found}", path)
    return np.frombuffer(data, dtype).reshape(shape)


def _split(folder, prefix: str, name: str, class_names) -> Dataset:
    # both the official names (train-images-idx3-ubyte) and the common dotted ones
    images = find(folder, f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte")
    labels = find(folder, f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte")
    x, y = read_idx(images, 3), read_idx(labels, 1)
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {labels.name} has {len(y)} labels", images)
    return checked(x[:, None].astype(np.float32) / 255.0, y, name, labels, 10, class_names, x_path=images)


def mnist(dir, name: str = "mnist", class_names=None) -> tuple[Dataset, Dataset]:
    """(train, test) from the four MNIST IDX files in `dir`: 60,000 and 10,000 images [1, 28, 28]."""
    folder = directory(dir)
    return _split(folder, "train", name, class_names), _split(folder, "t10k", f"{name}-test", class_names)


def fashion_mnist(dir) -> tuple[Dataset, Dataset]:
    """(train, test) from Fashion-MNIST (Xiao et al. 2017), which uses MNIST's file names and format."""
    return mnist(dir, "fashion_mnist", FASHION_CLASSES)
