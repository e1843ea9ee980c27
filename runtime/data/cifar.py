"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html).

Two distributions are read:
- the BINARY one: records of label byte(s) then 3,072 pixel bytes (1,024 red, then green,
  then blue, each row-major 32x32); CIFAR-10 has one label byte, CIFAR-100 two (coarse, fine);
- the PYTHON one: pickled dicts {data: uint8 [N, 3072], labels: [...]}, read by `safe_unpickle`,
  which resolves no global at all, so loading a file never runs code from it.
`dir` may be the extracted folder itself or the folder holding it (cifar-10-batches-bin, ...).
Pixels are scaled to 0..1: x float32 [N, 3, 32, 32].

A batch file is read bounded (at most the 60,000 images of the whole set), the unpickled
structure is at most a few levels deep and shared objects are resolved once (a 62 KB
pickle of `L = [L, L]` nested 60 times is 60 lists, not 2**60), and labels must be one
integer per image, checked against the classes in the file that holds them.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from dslc.runtime.data.dataset import DataError, Dataset, checked
from dslc.runtime.data.files import directory, find, read_bytes

_PIXELS = 3 * 32 * 32
_MOST = 60_000  # images in the largest file of either distribution (the whole of CIFAR)
PICKLE_LIMIT = _MOST * (_PIXELS + 64) + (1 << 20)  # bytes: pixels, labels and file names
NAMES_LIMIT = 1 << 20  # bytes of a label-names file
DEPTH = 8  # levels of nesting a CIFAR pickle needs: dict -> list -> bytes, with room to spare


def cifar10(dir) -> tuple[Dataset, Dataset]:
    """(train, test): the five training batches (50,000 images) and test_batch (10,000)."""
    binary, python = _locate(directory(dir), "cifar-10-batches", "data_batch_1")
    if binary:
        names = _text_names(binary / "batches.meta.txt", 10)
        train = [_binary(find(binary, f"data_batch_{i}.bin"), 1) for i in range(1, 6)]
        test = _binary(find(binary, "test_batch.bin"), 1)
    else:
        names = _pickled_names(python / "batches.meta", "label_names", 10)
        train = [_pickled(find(python, f"data_batch_{i}"), "labels") for i in range(1, 6)]
        test = _pickled(find(python, "test_batch"), "labels")
    return _join(train, 0, "cifar10", 10, names), _join([test], 0, "cifar10-test", 10, names)


def cifar100(dir, labels: str = "fine") -> tuple[Dataset, Dataset]:
    """(train, test) of 50,000 and 10,000 images with the 100 fine (or the 20 coarse) labels."""
    if labels not in ("fine", "coarse"):
        raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
    classes, pick = (100, 1) if labels == "fine" else (20, 0)
    binary, python = _locate(directory(dir), "cifar-100", "train")
    if binary:
        names = _text_names(binary / f"{labels}_label_names.txt", classes)
        parts = [_binary(find(binary, f"{s}.bin"), 2) for s in ("train", "test")]
    else:
        names = _pickled_names(python / "meta", f"{labels}_label_names", classes)
        parts = [_pickled(find(python, s), "coarse_labels", "fine_labels") for s in ("train", "test")]
    return (_join(parts[:1], pick, "cifar100", classes, names),
            _join(parts[1:], pick, "cifar100-test", classes, names))


def _locate(folder: Path, stem: str, first: str) -> tuple[Path | None, Path | None]:
    """(binary folder, None) or (None, python folder) holding `first`, looked for in `folder`
    and in the sub-folders the official archives extract to."""
    subs = {"bin": (f"{stem}-bin", f"{stem}-binary"), "py": (f"{stem}-py", f"{stem}-python")}
    for kind, name in (("bin", f"{first}.bin"), ("py", first)):
        for place in (folder, *(folder / s for s in subs[kind])):
            if (place / name).is_file() or (place / f"{name}.gz").is_file():
                return (place, None) if kind == "bin" else (None, place)
    raise DataError(f"no CIFAR files: expected {first}.bin (binary version) or {first} (python version) "
                    f"here or in {subs['bin'][0]}/ or {subs['py'][0]}/", folder)


def _binary(path: Path, label_bytes: int):
    """(uint8 images [N, 3, 32, 32], uint8 labels [N, label_bytes], path) of one binary file."""
    record = label_bytes + _PIXELS
    raw = read_bytes(path, _MOST * record, "a CIFAR binary file")
    if not raw:
        raise DataError(f"an empty file, no images (a CIFAR binary file holds a {record}-byte record per image)",
                        path)
    if len(raw) % record:
        raise DataError(f"truncated or not a CIFAR binary file: {len(raw)} bytes is not a whole "
                        f"number of {record}-byte records", path)
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, :label_bytes], path


def _pickled(path: Path, *label_keys: str):
    """Like `_binary`, for one pickled batch of the python version."""
    batch = safe_unpickle(read_bytes(path, PICKLE_LIMIT, "a CIFAR python batch"), path)
    if not isinstance(batch, dict) or "data" not in batch or any(k not in batch for k in label_keys):
        raise DataError(f"not a CIFAR python batch: expected a dict with data and "
                        f"{', '.join(label_keys)}", path)
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"data must be a uint8 array [N, {_PIXELS}], got {got}", path)
    if not len(data):
        raise DataError(f"a batch of no images (data is [0, {_PIXELS}])", path)
    labels = np.stack([_labels(batch[k], k, len(data), path) for k in label_keys], axis=1)
    return data.reshape(-1, 3, 32, 32), labels, path


def _labels(value, key: str, count: int, path) -> np.ndarray:
    """`count` integer labels from a batch's list (or 1-D integer array) under `key`."""
    if isinstance(value, np.ndarray):
        ok = value.ndim == 1 and value.dtype.kind in "iu"
    else:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        got = (f"an array of {value.dtype} {list(value.shape)}" if isinstance(value, np.ndarray)
               else "a list holding other things than integers" if isinstance(value, (list, tuple))
               else "None" if value is None else f"a {type(value).__name__}")
        raise DataError(f"'{key}' must be a list of integers, one per image, got {got}", path)
    if len(value) != count:
        raise DataError(f"{count} images but {len(value)} labels in '{key}'", path)
    # int64 cannot hold every Python int or uint64: the cast would fail, or wrap 2**63 to -2**63
    if isinstance(value, np.ndarray):
        beyond = int(value.max()) if value.dtype == np.uint64 and count and value.max() >= 2 ** 63 else None
    else:
        beyond = next((v for v in value if not -2 ** 63 <= v < 2 ** 63), None)
    if beyond is not None:
        raise DataError(f"label {beyond} in '{key}' is beyond int64's range", path)
    return np.asarray(value, np.int64).reshape(count)


def _join(parts, pick: int, name: str, classes: int, names) -> Dataset:
    for _, labels, path in parts:  # each file's labels checked there, so a message names the right one
        bad = labels[:, pick][(labels[:, pick] < 0) | (labels[:, pick] >= classes)]
        if len(bad):
            raise DataError(f"label {int(bad[0])} out of range for {classes} classes", path)
    x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    return checked(x, np.concatenate([p[1][:, pick] for p in parts]), name, parts[0][2], classes, names)


def _text_names(path: Path, classes: int):
    """Class names from a one-name-per-line file, or None when it is absent or does not fit."""
    if not path.is_file():
        return None
    text = read_bytes(path, NAMES_LIMIT, "a label-names file").decode("utf-8", "replace")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return tuple(names) if len(names) == classes else None


def _pickled_names(path: Path, key: str, classes: int):
    """Like `_text_names`, from the python version's pickled meta file: None also when its
    `key` is not a list of names (strings, or bytes decoded as `_text_names` decodes)."""
    if not path.is_file():
        return None
    meta = safe_unpickle(read_bytes(path, NAMES_LIMIT, "a CIFAR meta file"), path)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        return None
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
    return tuple(names) if len(names) == classes else None


# ---- an unpickler that runs no code from the file -------------------------------------

class _Array:
    """Stands for a NumPy array while unpickling; BUILD hands it the raw bytes."""

    def __setstate__(self, state):
        *_, shape, dtype, fortran, raw = state  # (version,) shape, dtype, is_fortran, raw bytes
        if not isinstance(dtype, _Dtype) or not isinstance(raw, bytes):
            raise pickle.UnpicklingError("only arrays of numbers are allowed")
        self.array = _frombuffer(raw, dtype, shape, "F" if fortran else "C")


class _Dtype:
    """Stands for a numeric np.dtype; BUILD may set its byte order."""

    def __init__(self, spec, align=False, copy=True):
        spec = spec.decode() if isinstance(spec, bytes) else spec
        if not isinstance(spec, str) or spec[:1] not in ("u", "i", "f", "b"):
            raise pickle.UnpicklingError(f"only numeric dtypes are allowed, got {spec!r}")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        order = state[1].decode() if isinstance(state[1], bytes) else state[1]
        self.dtype = self.dtype.newbyteorder(order) if order in ("<", ">") else self.dtype


def _reconstruct(cls, shape, typecode):
    return _Array()


def _frombuffer(buf, dtype, shape, order):
    raw = bytes(buf)
    count = int(np.prod(shape))
    if len(raw) != count * dtype.dtype.itemsize:
        raise pickle.UnpicklingError(f"array of shape {tuple(shape)} has {len(raw)} bytes")
    return np.frombuffer(raw, dtype.dtype).reshape(shape, order=order)


def _empty_bytes(*args):
    # how protocol 2 writes b"" (an array of no elements' data): __builtin__.bytes()
    if args:
        raise pickle.UnpicklingError("only bytes() of nothing is allowed")
    return b""


def _latin1(text, encoding="latin1"):
    # how Python 3 writes bytes in protocol 2: _codecs.encode(text, "latin1")
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("only latin-1 encoded bytes are allowed")
    return text.encode("latin1")


# The only names an array pickle uses, each mapped to an inert stand-in above, never to
# the real NumPy function: resolving nothing from the file is what makes loading safe.
_STANDINS = {
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): None, ("numpy", "dtype"): _Dtype, ("_codecs", "encode"): _latin1,
    ("__builtin__", "bytes"): _empty_bytes, ("builtins", "bytes"): _empty_bytes,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _STANDINS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only NumPy arrays, numbers, "
                                         "strings, lists and dicts may be loaded")
        return _STANDINS[module, name]

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent references are not allowed")


def safe_unpickle(raw: bytes, path) -> object:
    """The object pickled in `raw`, with arrays as NumPy arrays and bytes dict keys decoded;
    DataError naming `path` for a corrupt pickle or one that names any other global."""
    try:
        return _resolve(_Unpickler(io.BytesIO(raw), encoding="bytes").load())
    except Exception as e:  # whatever a malformed stream provokes, the file is unusable
        raise DataError(f"unsafe, corrupt or truncated pickle: {e or type(e).__name__}", path) from None


def _resolve(obj, depth: int = 0, done: dict | None = None):
    """`obj` with stand-ins replaced by arrays and bytes keys decoded. An object the pickle
    shares is resolved once (`done`, by id) and stays shared; nesting beyond DEPTH is refused."""
    done = {} if done is None else done
    if id(obj) in done:
        return done[id(obj)]
    if depth > DEPTH:
        raise pickle.UnpicklingError(f"nested more than {DEPTH} levels deep; a CIFAR batch is not")
    if isinstance(obj, _Array):
        if not hasattr(obj, "array"):
            raise pickle.UnpicklingError("an array without data")
        out = obj.array
    elif isinstance(obj, dict):
        out = {(k.decode() if isinstance(k, bytes) else k): _resolve(v, depth + 1, done) for k, v in obj.items()}
    elif isinstance(obj, (list, tuple)):
        out = type(obj)(_resolve(v, depth + 1, done) for v in obj)
    else:
        return obj
    done[id(obj)] = out
    return out
