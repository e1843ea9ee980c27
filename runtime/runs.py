"""The run directory: what a training run leaves behind for people and for resuming.

    runs/NAME/
      config.json     the resolved recipe, its hash, the model hash, seed, versions
      metrics.jsonl   one JSON record per epoch (the source of truth)
      metrics.csv     the same records as a spreadsheet: nested dicts flattened to columns
      curves.png      loss and metric curves, train vs validation, redrawn every epoch
      last/ best/     checkpoints (dslc.runtime.checkpoint)

A record is a flat-ish dict such as {"epoch": 3, "train_loss": 0.41, "val_loss": 0.45,
"train_accuracy": 0.88, "val_accuracy": 0.86, "lr": 0.01, "time": 2.3,
"update_ratio": {"fc1.weight": 0.001}}; nested dicts become `update_ratio/fc1.weight` columns.

metrics.jsonl is appended and fsynced each epoch; metrics.csv and curves.png are rewritten
whole and atomically from it, so the CSV header always covers every row even when a later
epoch brings a new column, and no reader ever sees half a file.

    run = Run.create("runs/lenet5", make_config(recipe, model_hash(graph), seed=0))
    run.log({"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "lr": 0.1})
    plot_runs(["runs/a", "runs/b"], "compare.png")
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from dslc.files import write_atomic
from dslc.runtime.checkpoint import digest

CONFIG, JSONL, CSV, CURVES = "config.json", "metrics.jsonl", "metrics.csv", "curves.png"


class RunError(Exception):
    """A run directory that cannot be created or read as asked."""


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
    """The records of a metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise RunError(f"{path}:{i + 1}: not a JSON record") from None
    return records


# ---- plots -----------------------------------------------------------------------------------

def figure(panels: int):
    """A matplotlib Figure with `panels` side-by-side axes, built without pyplot so no global
    state or GUI backend is involved (rendering uses Agg)."""
    from matplotlib.figure import Figure

    width = 5.5 * panels
    fig = Figure(figsize=(width, 4))
    # Fixed margins in inches: an automatic layout engine would draw the figure twice.
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.13, top=0.86, wspace=0.25)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, list(axes)


def save_figure(fig, path) -> None:
    """Render a Figure to PNG and write it atomically (a viewer never reads half a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


def metric_names(records: list[Mapping]) -> list[str]:
    """Metrics logged with a train_ or val_ prefix, loss excluded: ["accuracy", ...]."""
    names = [k.split("_", 1)[1] for r in records for k in r if k.startswith(("train_", "val_"))]
    return [m for m in dict.fromkeys(names) if m != "loss"]


def _draw(ax, records, metric: str, color=None, label: str = "") -> None:
    """Train (dashed) and validation (solid) curves of one metric against the epoch."""
    for split, style in (("train", "--"), ("val", "-")):
        points = [(r["epoch"], r[f"{split}_{metric}"]) for r in records if r.get(f"{split}_{metric}") is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, style, color=color, marker="." if len(xs) < 30 else None,
                    label=f"{label}{'train' if split == 'train' else 'validation'}")


def _panels(axes, runs: list[tuple[str, list[dict]]]) -> None:
    """Loss on the left; the first metric (accuracy for classifiers) on the right."""
    metric = next((m for _, records in runs for m in metric_names(records)), None)
    for ax, name in zip(axes, ("loss", metric)):
        if name is None:
            ax.text(0.5, 0.5, "no metric logged", ha="center", va="center", transform=ax.transAxes)
            continue
        for i, (run, records) in enumerate(runs):
            many = len(runs) > 1  # one colour per run; a lone run gets one per split
            _draw(ax, records, name, color=f"C{i}" if many else None, label=f"{run} " if many else "")
        ax.set(xlabel="epoch", ylabel=name, title=name)
        if ax.lines:
            ax.legend(fontsize="small")


def plot_curves(records: list[dict], path, title: str = "") -> None:
    """curves.png of one run: loss and the first metric, train vs validation, two panels."""
    fig, axes = figure(2)
    _panels(axes, [(title, records)])
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_runs(run_dirs: Iterable, path) -> None:
    """Several runs on the same two panels (one colour each), for `dslc plot RUN...`."""
    runs = []
    for d in map(Path, run_dirs):
        if not (d / JSONL).exists():
            raise RunError(f"{d}: no {JSONL}; is it a run directory?")
        runs.append((d.name, read_records(d / JSONL)))
    fig, axes = figure(2)
    _panels(axes, runs)
    save_figure(fig, path)


# ---- the run directory -------------------------------------------------------------------------

class Run:
    """A run directory: its config, per-epoch metrics and checkpoint locations."""

    def __init__(self, path):
        self.path = Path(path)

    @property
    def last(self) -> Path:
        return self.path / "last"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @classmethod
    def create(cls, path, config: Mapping, overwrite: bool = False) -> "Run":
        """A new run at `path` with its config.json. An existing run is an error unless
        `overwrite`, which clears its metrics and curves (checkpoints are replaced as saved)."""
        run = cls(path)
        if (run.path / CONFIG).exists() and not overwrite:
            raise RunError(f"{run.path} already holds a run; resume it or choose another name")
        run.path.mkdir(parents=True, exist_ok=True)
        for name in (JSONL, CSV, CURVES):
            (run.path / name).unlink(missing_ok=True)
        write_atomic(run.path / CONFIG, json.dumps(dict(config), indent=2).encode())
        return run

    @classmethod
    def resume(cls, path, epoch: int) -> "Run":
        """An existing run continued after `epoch` (the checkpoint's): later records, from
        epochs trained after that checkpoint was saved, are dropped so they are not repeated."""
        run = cls(path)
        if not (run.path / CONFIG).exists():
            raise RunError(f"{run.path}: no {CONFIG}; nothing to resume")
        run._rewrite([r for r in run.history() if r["epoch"] <= epoch], fresh_jsonl=True)
        return run

    @property
    def config(self) -> dict:
        try:
            return json.loads((self.path / CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunError(f"{self.path / CONFIG}: unreadable ({e})") from None

    def annotate(self, fields: Mapping[str, Any]) -> None:
        """Add `fields` to config.json (rewritten atomically): facts known only once the run
        is under way, such as the seconds its kernels took to compile."""
        write_atomic(self.path / CONFIG, json.dumps({**self.config, **fields}, indent=2).encode())

    def history(self) -> list[dict]:
        return read_records(self.path / JSONL)

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one epoch's record (it must have "epoch"), then refresh the CSV and curves."""
        if "epoch" not in record:
            raise ValueError("a metrics record needs its 'epoch'")
        file = self.path / JSONL
        line = json.dumps(dict(record), default=_plain)
        records = self.history() + [json.loads(line)]
        if file.exists() and file.stat().st_size and not file.read_bytes().endswith(b"\n"):
            self._rewrite(records, fresh_jsonl=True)  # drop a torn line rather than extend it
            return
        with open(file, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._rewrite(records, fresh_jsonl=False)

    def _rewrite(self, records: list[dict], fresh_jsonl: bool) -> None:
        """Bring the derived files (and the JSONL itself when `fresh_jsonl`) in line with `records`."""
        if fresh_jsonl:
            write_atomic(self.path / JSONL, "".join(json.dumps(r) + "\n" for r in records).encode())
        write_atomic(self.path / CSV, to_csv(records).encode())
        if records:
            plot_curves(records, self.path / CURVES, title=self.path.name)
        else:  # resumed before the first epoch: a stale picture would show epochs that no longer exist
            (self.path / CURVES).unlink(missing_ok=True)
