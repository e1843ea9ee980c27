"""Your own data: NumPy .npz archives and CSV tables.

npz: arrays named `x` and `y` (names configurable); uint8 inputs are taken to be 0..255
pixels and scaled to 0..1, any other number type is used as it is. y holds class labels,
or with `targets` float targets of any shape per example (regression). Arrays of Python
objects (which would unpickle), complex numbers and records are refused, and every
header is checked before its array is read (arrays.py), so a file cannot run code or
claim terabytes.

csv: a header row, then one example per row; the label column (by name, or by 0-based
index when no column has that name) holds the class, every other column a float feature
used as it is (never scaled): x float32 [N, F]. Labels that are all whole numbers are the
class indices; otherwise each distinct label text is a class, numbered in sorted order and
kept as class_names. For regression, `target` names the columns of float targets instead
(y [N, len(target)], the other columns features), or `targets` reads the label column as
one float [N]. A column named twice among the targets, and a table with no column left
for features, are refused.

Every value must be finite (no NaN, no infinity, nothing beyond float32's range): a bad
value is reported at load with its row and column, not as a NaN loss at step 1. A row is
named by the file line it starts on (the header's is 1; blank lines count, and a quoted
field may carry a record over several lines). Messages name rows and columns but never
quote a cell, so a file read by mistake is not echoed.
"""
from __future__ import annotations

import csv as _csv
import io
from pathlib import Path

import numpy as np

from dslc.runtime.data.arrays import read_npz
from dslc.runtime.data.dataset import DataError, Dataset, checked, checked_targets
from dslc.reading import human_bytes
from dslc.runtime.data.files import check_memory, read_bytes

CSV_LIMIT = 1 << 30  # bytes of a CSV table
PARSED = 10  # bytes of memory per byte of CSV while its rows are held as Python strings


def npz(path, x: str = "x", y: str = "y", targets: bool = False) -> Dataset:
    """The dataset in a .npz archive holding arrays `x` [N, ...] and `y` [N] (labels), or with
    `targets`, y [N, ...] float targets."""
    path = Path(path)
    arrays = read_npz(path, (x, y))
    xs, ys = scaled(arrays[x]), arrays[y]
    return checked_targets(xs, ys, path.stem, path) if targets else checked(xs, ys, path.stem, path)


def scaled(x: np.ndarray) -> np.ndarray:
    """Inputs as npz feeds them to a model: uint8 taken to be 0..255 pixels and scaled to
    float32 0..1, any other number type as it is. `dslc predict` reads a .npy by this rule too
    (runtime/predict.py), so a model sees at prediction what it saw in training.

    >>> scaled(np.array([0, 255], np.uint8)).tolist(), scaled(np.array([0, 255])).tolist()
    ([0.0, 1.0], [0, 255])
    """
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x


def csv(path, label: str | int = "label", target=(), targets: bool = False) -> Dataset:
    """The dataset in a CSV file with a header row; `label` names (or indexes) the class column,
    or `target` the columns of float targets (regression; `targets` reads the label column so)."""
    path = Path(path)
    try:
        raw = read_bytes(path, CSV_LIMIT, "a CSV table")
        check_memory(len(raw) * PARSED, f"parsing its {human_bytes(len(raw))} into rows", path)
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    reader = _csv.reader(io.StringIO(text))
    rows, lines, start = [], [], 1  # the rows that are not blank, and the file line each starts on
    try:
        for r in reader:
            if any(cell.strip() for cell in r):
                rows.append(r)
                lines.append(start)
            start = reader.line_num + 1  # line_num counts lines read: a record's last, not its first
    except _csv.Error as e:  # e.g. a field over the csv module's 131,072-character limit
        raise DataError(f"line {reader.line_num}: not a CSV row ({e})", path) from None
    if not rows:
        raise DataError("empty file: expected a header row", path)
    header, body, lines = [h.strip() for h in rows[0]], rows[1:], lines[1:]
    cols = [_column(header, t, path, "target") for t in target] if target else [_column(header, label, path)]
    twice = next((c for i, c in enumerate(cols) if c in cols[:i]), None)
    if twice is not None:  # by name or by index: y would hold one column twice, a model output fit to a copy
        raise DataError(f"target names column {_name(header, twice)} twice", path)
    if len(cols) == len(header):  # x [N, 0]: the model's input would be told to read no numbers
        raise DataError("no feature column: " + ("every column is a target" if target
                                                 else "the only column is the label"), path)
    for n, r in zip(lines, body):
        if len(r) != len(header):
            raise DataError(f"row {n} has {len(r)} fields, the header {len(header)}", path)
    if not body:
        raise DataError("no examples: the file has only a header", path)
    x = _numbers(body, lines, header, [i for i in range(len(header)) if i not in cols], path)
    if target or targets:
        y = _numbers(body, lines, header, cols, path)
        return checked_targets(x, y if target else y[:, 0], path.stem, path)
    y, names = _labels([r[cols[0]].strip() for r in body])
    if names is None and len(y) and (beyond := np.flatnonzero(np.abs(y) >= 2.0**63)).size:
        raise DataError(f"row {lines[beyond[0]]}, column {_name(header, cols[0])}: a label beyond int64's range "
                        "(a class index counts from 0 to the classes less one)", path)
    return checked(x, y.astype(np.int64), path.stem, path, None if names is None else len(names), names)


def _numbers(body: list[list[str]], lines: list[int], header: list[str], columns: list[int], path) -> np.ndarray:
    """float32 [rows, len(columns)]: the cells of `columns`, each a finite float32 number; a
    message names a row by its line in `lines`."""
    out = np.empty((len(body), len(columns)), np.float32)
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, reported below
        for n, r in enumerate(body):
            for j, i in enumerate(columns):
                try:
                    out[n, j] = float(r[i])
                except ValueError:
                    raise DataError(f"row {lines[n]}, column {_name(header, i)}: not a number", path) from None
    bad = np.argwhere(~np.isfinite(out))
    if len(bad):
        n, j = bad[0]
        raise DataError(f"row {lines[n]}, column {_name(header, columns[j])}: not a finite float32 number "
                        "(NaN, infinity, or beyond 3.4e38)", path)
    return out


def _name(header: list[str], i: int) -> str:
    """Column `i` for a message: its number, and its header name when that is a short one."""
    name = header[i]
    return f"{i + 1} ('{name}')" if name.isprintable() and len(name) <= 32 else str(i + 1)


def _column(header: list[str], label, path, what: str = "label") -> int:
    if header.count(str(label)) > 1:  # the first was read, the others were features: the answer among them
        twice = [str(i) for i, h in enumerate(header) if h == str(label)]
        raise DataError(f"the header names the {what} column '{label}' more than once (columns "
                        f"{', '.join(twice)}, from 0); rename the others", path)
    if str(label) in header:
        return header.index(str(label))
    if str(label).lstrip("-").isdigit() and -len(header) <= int(label) < len(header):
        return int(label) % len(header)
    shown = [h for h in header if h.isprintable() and len(h) <= 32]
    columns = f"columns: {', '.join(shown)}" if len(shown) == len(header) <= 50 else f"{len(header)} columns"
    raise DataError(f"no {what} column '{label}' ({columns})", path)


def _labels(cells: list[str]):
    """(whole-number labels, as floats, None) when every cell is a whole number, else
    (indices, sorted class names). The caller casts the first to int64 once it has refused
    one beyond int64's range: the cast made 1e20 -9223372036854775808, with NumPy's
    RuntimeWarning, and the message then said 'labels must be >= 0, found -9223372036854775808'."""
    try:
        values = np.array([float(c) for c in cells])
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values, None
    except ValueError:
        pass
    names = sorted(set(cells))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[c] for c in cells], np.int64), names
