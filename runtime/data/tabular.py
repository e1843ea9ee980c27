"""Your own data: NumPy .npz archives and CSV tables.

npz: arrays named `x` and `y` (names configurable); uint8 inputs are taken to be 0..255
pixels and scaled to 0..1, any other number type is used as it is. Arrays of Python
objects are refused (allow_pickle=False), so a file cannot run code when loaded.

csv: a header row, then one example per row; the label column (by name, or by 0-based
index when no column has that name) holds the class, every other column a float feature:
x float32 [N, F]. Labels that are all whole numbers are the class indices; otherwise
each distinct label text is a class, numbered in sorted order and kept as class_names.
"""
from __future__ import annotations

import csv as _csv
import io
import zipfile
from pathlib import Path

import numpy as np

from dslc.runtime.data.dataset import DataError, Dataset, checked
from dslc.runtime.data.files import read_bytes


def npz(path, x: str = "x", y: str = "y") -> Dataset:
    """The dataset in a .npz archive holding arrays `x` [N, ...] and `y` [N]."""
    path = Path(path)
    raw = read_bytes(path)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            missing = [k for k in (x, y) if k not in archive.files]
            if missing:
                raise DataError(f"no array named {', '.join(missing)} "
                                f"(it has: {', '.join(archive.files)})", path)
            xs, ys = archive[x], archive[y]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"not a readable .npz archive ({e})", path) from None
    if not (np.issubdtype(xs.dtype, np.number) or xs.dtype == bool):
        raise DataError(f"array {x} must hold numbers, got dtype {xs.dtype}", path)
    xs = xs.astype(np.float32) / 255.0 if xs.dtype == np.uint8 else xs
    return checked(xs, ys, path.stem, path)


def csv(path, label: str | int = "label") -> Dataset:
    """The dataset in a CSV file with a header row; `label` names (or indexes) the class column."""
    path = Path(path)
    try:
        text = read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    rows = [r for r in _csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError("empty file: expected a header row", path)
    header, body = [h.strip() for h in rows[0]], rows[1:]
    col = _column(header, label, path)
    for n, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise DataError(f"row {n} has {len(r)} fields, the header {len(header)}", path)
    if not body:
        raise DataError("no examples: the file has only a header", path)
    features = [i for i in range(len(header)) if i != col]
    x = np.empty((len(body), len(features)), np.float32)
    for n, r in enumerate(body):
        for j, i in enumerate(features):
            try:
                x[n, j] = float(r[i])
            except ValueError:
                raise DataError(f"row {n + 2}, column '{header[i]}': {r[i]!r} is not a number",
                                path) from None
    y, names = _labels([r[col].strip() for r in body])
    return checked(x, y, path.stem, path, None if names is None else len(names), names)


def _column(header: list[str], label, path) -> int:
    if str(label) in header:
        return header.index(str(label))
    if str(label).lstrip("-").isdigit() and -len(header) <= int(label) < len(header):
        return int(label) % len(header)
    raise DataError(f"no label column '{label}' (columns: {', '.join(header)})", path)


def _labels(cells: list[str]):
    """(int labels, None) when every cell is a whole number, else (indices, sorted class names)."""
    try:
        values = np.array([float(c) for c in cells])
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64), None
    except ValueError:
        pass
    names = sorted(set(cells))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[c] for c in cells], np.int64), names
