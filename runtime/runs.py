"""The run directory: what a training run leaves behind for people and for resuming.

    runs/NAME/
      config.json     the resolved recipe, its hash, the model hash, seed, versions
      metrics.jsonl   one JSON record per epoch (the source of truth)
      metrics.csv     the same records as a spreadsheet: nested dicts flattened to columns
      metrics_steps.csv  the loss and learning rate of every step (dslc.runtime.steplog)
      curves.png      loss and metric curves, train vs validation, and the per-step loss
      last/ best/     checkpoints (dslc.runtime.checkpoint); snapshots/ when the recipe keeps them

A record is a flat-ish dict such as {"epoch": 3, "train_loss": 0.41, "val_loss": 0.45,
"train_accuracy": 0.88, "val_accuracy": 0.86, "lr": 0.01, "time": 2.3,
"update_ratio": {"fc1.weight": 0.001}}; nested dicts become `update_ratio/fc1.weight` columns.

metrics.jsonl is appended and fsynced each epoch; metrics.csv and curves.png are rewritten
whole and atomically from it, so the CSV header always covers every row even when a later
epoch brings a new column, and no reader ever sees half a file. curves.png is redrawn at
most every DRAW_SECONDS and at the end of a run: a plot takes a tenth of a second, more
than a whole epoch of a small model.

One process writes a run at a time: `create` and `resume` take an exclusive lock on the
directory (flock, released when the process ends), and a second writer is refused with a
RunError rather than interleaving its epochs with the first's. config.json and
metrics.jsonl are read bounded and checked (a hand-edited file is a RunError naming the
file, line and key).

    run = Run.create("runs/lenet5", make_config(recipe, model_hash(graph), seed=0))
    run.log({"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "lr": 0.1})
    plot_runs(["runs/a", "runs/b"], "compare.png")
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import platform
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from dslc.files import UnreadableFile, ensure_dir, read_json, reason, write_atomic
from dslc.runtime import plots, steplog, tensorboard
from dslc.runtime.checkpoint import digest
from dslc.runtime.errors import RunError
from dslc.runtime.jsondoc import Doc, is_int, lines_of

CONFIG, JSONL, CSV, CURVES, STEPS = "config.json", "metrics.jsonl", "metrics.csv", "curves.png", steplog.STEPS
SNAPSHOTS = "snapshots"  # RUN/snapshots/epoch-NNNN: the checkpoints `keep` asks for
RESULT = "result.json"  # the trainer's summary of a finished run (what a search reads of its trials)
SEARCH = "search.json"  # a search directory's plan (runtime/search.py): no run is made beside one
LEFT = ("last", "best", SNAPSHOTS, RESULT, tensorboard.FOLDER)  # what else a run leaves: checkpoints, events
_TEMPORARY = re.compile(r"^\..+\.tmp$")  # what write_atomic and checkpoints write before renaming
DRAW_SECONDS = 2.0  # curves.png is redrawn at most this often (and at the end): epochs can be faster than a plot
CONFIG_LIMIT = 16 << 20  # bytes: a resolved recipe and some versions
METRICS_LIMIT = 256 << 20  # one record per epoch, each with every parameter's update ratio


# ---- configuration -----------------------------------------------------------------------

def versions() -> dict[str, str]:
    """Versions of Python and the packages that decide a run's numbers (from package metadata,
    so nothing heavy such as CuPy is imported just to name it)."""
    found = {"python": platform.python_version()}
    for pkg in ("dslc", "numpy", "numba", "llvmlite", "cupy-cuda12x"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return found


def make_config(recipe, model_hash: str, seed: int, **extra: Any) -> dict:
    """config.json's content: the resolved recipe (Recipe.to_json), its hash, the model hash,
    the seed, the versions and the start time, plus any `extra` (e.g. the model file)."""
    return {"recipe": recipe.to_json(), "recipe_hash": digest(recipe.to_json()), "model_hash": model_hash,
            "seed": seed, "versions": versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}


def _plain(value):
    """JSON form of NumPy scalars and arrays in a record (a trainer's metrics often are)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to a metrics record")


# ---- records to columns ----------------------------------------------------------------------

def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}: nested dicts become columns named with `/` (layer
    names already contain dots)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cell(value) -> str:
    """A spreadsheet cell: plain numbers (repr keeps every digit), empty for missing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(float(value)) if isinstance(value, float) else str(value)


def to_csv(records: Iterable[Mapping[str, Any]]) -> str:
    """CSV text of the records: columns in first-seen order, `epoch` first."""
    rows = [flatten(r) for r in records]
    columns = list(dict.fromkeys(["epoch"] + [k for row in rows for k in row]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def read_records(path) -> list[dict]:
    """The records of a metrics.jsonl (none when it is absent); a torn last line (a run killed
    mid-write) is skipped. RunError names the line of a record that is not one."""
    lines = lines_of(path, METRICS_LIMIT, "a metrics.jsonl", RunError)
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if i != len(lines) - 1:
                raise RunError(f"{path}:{i + 1}: not a JSON record") from None
            continue
        records.append(_checked_record(record, f"{path}:{i + 1}"))
    return records


def _checked_record(record, where: str) -> dict:
    """A metrics record as the plots and `resume` read it: an object with an integer epoch,
    every train_/val_ value a number or null, and `update_ratio`, when there, an object of
    them (`dslc plot --ratios`). A number is one matplotlib can draw: an integer beyond
    float's range (1e400 written out) is none."""
    doc = Doc(record, where, RunError)
    doc.int("epoch", lo=0)
    for key, value in record.items():
        if key.startswith(("train_", "val_")) and not _plottable(value):
            raise doc.fail(key, "a number or null", value)
    if record.get("update_ratio") is not None:
        Doc(record["update_ratio"], where, RunError, "update_ratio.").values(_plottable, "a number or null")
    return record


def _plottable(value) -> bool:
    return value is None or isinstance(value, float) or (is_int(value) and abs(value) <= sys.float_info.max)


# ---- plots ---------------------------------------------------------------------------------

def _read_runs(run_dirs: Iterable) -> list[tuple[str, list[dict]]]:
    runs = []
    for d in map(Path, run_dirs):
        if not (d / JSONL).exists():
            if (d / CONFIG).is_file():  # a run that stopped (a NaN loss, Ctrl-C) before its first epoch ended
                raise RunError(f"{d}: a run directory with no epoch to plot (no {JSONL}): its training "
                               "stopped before the first epoch ended")
            raise RunError(f"{d}: no {JSONL}; is it a run directory?")
        runs.append((d.name, read_records(d / JSONL)))
    return runs


def plot_runs(run_dirs: Iterable, path) -> None:
    """Several runs on the same two panels (one colour each), for `dslc plot RUN...`."""
    plots.plot_epochs(_read_runs(run_dirs), path)


def plot_run_ratios(run_dirs: Iterable, path) -> None:
    """The update/weight ratio of every parameter of each run over its epochs, for `dslc plot --ratios`."""
    plots.plot_ratios(_read_runs(run_dirs), path)


# ---- the run directory -------------------------------------------------------------------------

# (device, inode) of each run directory this process has locked -> the descriptor holding the flock
_HELD: dict[tuple[int, int], int] = {}


def _ends_a_line(file: Path) -> bool:
    """True when `file` is absent, empty or ends with a newline (its last record is whole)."""
    try:
        with open(file, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except FileNotFoundError:
        return True
    except OSError as e:
        raise RunError(f"cannot read {file}: {reason(e)}") from None


class RunPaths:
    """Where a run directory keeps its checkpoints: what every rank of a data-parallel run
    knows of it (runtime/ranks.py's Follower), whether or not it writes there."""

    def __init__(self, path):
        self.path = Path(path)

    @property
    def last(self) -> Path:
        return self.path / "last"

    @property
    def best(self) -> Path:
        return self.path / "best"


class Run(RunPaths):
    """A run directory: its config, per-epoch metrics and checkpoint locations."""

    @classmethod
    def create(cls, path, config: Mapping, overwrite: bool = False) -> "Run":
        """A new run at `path` with its config.json, locked for this process. An existing run
        is an error unless `overwrite`, which clears everything it left (metrics, curves,
        checkpoints, snapshots, result, event files): a `best/` or snapshot of the old run
        left beside the new one was read by eval and ensemble as the new run's."""
        run = cls(path)
        if os.path.lexists(run.path / SEARCH):  # its trials are the runs; --force clears no search
            raise RunError(f"{run.path} holds a search ({SEARCH}), whose trials are runs; choose another name")
        if os.path.lexists(run.path / CONFIG) and not overwrite:
            raise RunError(f"{run.path} already holds a run; resume it or choose another name")
        ensure_dir(run.path)
        run.lock()
        if os.path.lexists(run.path / CONFIG) and not overwrite:  # made by a process that just ended
            run.close()
            raise RunError(f"{run.path} already holds a run; resume it or choose another name")
        run._clear_temporaries()
        for name in (JSONL, CSV, CURVES, STEPS, *LEFT):
            path = run.path / name
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as e:
                raise RunError(f"cannot clear {path}: {reason(e)}") from None
        write_atomic(run.path / CONFIG, json.dumps(dict(config), indent=2).encode())
        return run

    @classmethod
    def resume(cls, path, epoch: int, step: int | None = None) -> "Run":
        """An existing run continued after `epoch` and `step` (the checkpoint's), locked for
        this process: later records and per-step rows, from what was trained after that
        checkpoint was saved, are dropped so they are not repeated."""
        run = cls(path)
        _ = run.config  # read for its checks: a run without a readable config is not one
        run.lock()
        run._clear_temporaries()
        if step is not None:
            steplog.truncate(run.path / STEPS, step)
        run._rewrite([r for r in run.history() if r["epoch"] <= epoch], fresh_jsonl=True)
        return run

    def lock(self) -> None:
        """Hold an exclusive lock on the run directory until `close` or the end of the process;
        RunError when another process holds it (this process may open its runs again)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise RunError(f"cannot open the run directory {self.path}: {reason(e)}") from None
        st = os.fstat(fd)
        self._lock = (st.st_dev, st.st_ino)
        if self._lock in _HELD:
            os.close(fd)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            del self._lock
            raise RunError(f"{self.path} is being written by another dslc process; wait for it to end, "
                           "or train into another directory (--out)") from None
        _HELD[self._lock] = fd

    def _clear_temporaries(self) -> None:
        """Remove the hidden `.NAME.tmp` files and checkpoint directories an earlier writer left
        in the run (and its snapshots/) because it could not: killed while writing, or its disk
        went read-only under it. Called with the lock held, so no writer is using them; one that
        cannot be removed now is left for the next run, as the write that follows will say why."""
        for folder in (self.path, self.path / SNAPSHOTS):
            try:
                names = [e for e in os.scandir(folder) if _TEMPORARY.match(e.name)]
            except OSError:
                continue
            for entry in names:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def close(self) -> None:
        """Release the lock `create` or `resume` took."""
        fd = _HELD.pop(self.__dict__.pop("_lock", None), None)
        if fd is not None:
            os.close(fd)

    @property
    def config(self) -> dict:
        """config.json, checked to be an object whose `recipe` names its recipe and whose
        `overrides` are plain --set values (what `--resume` reads back)."""
        file = self.path / CONFIG
        if not os.path.lexists(file):
            raise RunError(f"{self.path}: no {CONFIG}; nothing to resume, is it a run directory?")
        try:
            config = read_json(file, CONFIG_LIMIT, "a config.json")
        except UnreadableFile as e:
            raise RunError(str(e)) from None
        doc = Doc(config, file, RunError)
        recipe = doc.obj("recipe", optional=True)
        if recipe is not None:
            recipe.str("name")
        overrides = doc.obj("overrides", optional=True)
        if overrides is not None:
            overrides.values(lambda v: isinstance(v, (str, int, float, bool)), "a number, a string or a boolean")
        return config

    @property
    def overrides(self) -> dict[str, Any]:
        """The --set pairs the run was started with (config.json's `overrides`, checked)."""
        return dict(self.config.get("overrides") or {})

    def annotate(self, fields: Mapping[str, Any]) -> None:
        """Add `fields` to config.json (rewritten atomically): facts known only once the run
        is under way, such as the seconds its kernels took to compile."""
        write_atomic(self.path / CONFIG, json.dumps({**self.config, **fields}, indent=2).encode())

    def history(self) -> list[dict]:
        return read_records(self.path / JSONL)

    def steps(self, per_epoch: int) -> steplog.StepLog:
        """The per-step log of this run (metrics_steps.csv), `per_epoch` steps an epoch."""
        return steplog.StepLog(self.path / STEPS, per_epoch)

    def log(self, record: Mapping[str, Any], final: bool = False) -> None:
        """Append one epoch's record (it must have "epoch"), then refresh the CSV, and the
        curves when DRAW_SECONDS have passed since they were drawn or when `final`."""
        if "epoch" not in record:
            raise ValueError("a metrics record needs its 'epoch'")
        file = self.path / JSONL
        line = json.dumps(dict(record), default=_plain)
        records = self.history() + [json.loads(line)]
        if not _ends_a_line(file):
            self._rewrite(records, fresh_jsonl=True, draw=final)  # drop a torn line rather than extend it
            return
        try:
            with open(file, "a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise RunError(f"cannot write {file}: {reason(e)}") from None
        self._rewrite(records, fresh_jsonl=False, draw=final)

    def draw(self, records: list[dict] | None = None) -> None:
        """Redraw curves.png from the records (read when not given) and the per-step rows."""
        records = self.history() if records is None else records
        self._drawn_at = time.monotonic()
        if records:
            plots.plot_curves(records, self.path / CURVES, self.path.name, steplog.read_steps(self.path / STEPS))
        else:  # resumed before the first epoch: a stale picture would show epochs that no longer exist
            (self.path / CURVES).unlink(missing_ok=True)

    def _rewrite(self, records: list[dict], fresh_jsonl: bool, draw: bool = True) -> None:
        """Bring the derived files (and the JSONL itself when `fresh_jsonl`) in line with `records`;
        the curves when `draw`, or when they were last drawn DRAW_SECONDS ago or never."""
        if fresh_jsonl:
            write_atomic(self.path / JSONL, "".join(json.dumps(r) + "\n" for r in records).encode())
        write_atomic(self.path / CSV, to_csv(records).encode())
        if draw or time.monotonic() - getattr(self, "_drawn_at", -math.inf) >= DRAW_SECONDS:
            self.draw(records)
