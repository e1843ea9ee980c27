"""The per-step log of a run: metrics_steps.csv, one row per optimiser step.

The lectures ask to watch the loss per iteration, not per epoch: its noise tells a batch
size from a learning rate, and a loss that explodes within an epoch shows here first.

    step,epoch,loss,lr
    1,0.05,2.8868,3e-05

`epoch` is the training time in epochs at the end of the step (step / steps per
epoch), the x axis the per-epoch curves share. Recording a step costs one tuple
appended to a list (the loss is already on the host: the trainer checks it for NaN);
the rows are written in batches, when an epoch ends, before a checkpoint, and at least
every FLUSH_SECONDS on long epochs, so a run can be watched live. A run resumed from a
checkpoint drops the rows of the steps after it (`truncate`), as metrics.jsonl drops
later epochs.

    log = StepLog(run_dir / STEPS, per_epoch=20)
    log.add(step=1, loss=2.89, lr=3e-5)
    rows = log.flush()                    # written; returned for TensorBoard: [(1, 2.89, 3e-05)]
    read_steps(run_dir / STEPS)           # [{"step": 1, "epoch": 0.05, "loss": 2.89, "lr": 3e-05}]
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from dslc.files import UnreadableFile, read_limited, reason, write_atomic
from dslc.runtime.errors import RunError
from dslc.runtime.jsondoc import lines_of

STEPS = "metrics_steps.csv"
HEADER = "step,epoch,loss,lr\n"
FLUSH_SECONDS = 10.0  # the longest a written row waits in memory during a long epoch
LIMIT = 1 << 30  # bytes: about 25 million steps


class StepLog:
    """Rows of one run's steps, buffered in memory and appended to `path` in batches."""

    def __init__(self, path, per_epoch: int):
        self.path, self.per_epoch = Path(path), per_epoch
        self.rows: list[tuple[int, float, float]] = []
        self.flushed_at = time.monotonic()

    def add(self, step: int, loss: float, lr: float) -> None:
        self.rows.append((step, loss, lr))

    def due(self) -> bool:
        """Whether rows have waited FLUSH_SECONDS (checked once per step: one clock read)."""
        return bool(self.rows) and time.monotonic() - self.flushed_at >= FLUSH_SECONDS

    def flush(self) -> list[tuple[int, float, float]]:
        """Append the buffered rows (step, loss, lr) to the file and return them; RunError when
        the file cannot be written (the run stops as for any run file)."""
        rows, per = self.rows, self.per_epoch
        self.rows, self.flushed_at = [], time.monotonic()
        if rows:
            text = "".join(f"{s},{round(s / per, 6)!r},{loss!r},{lr!r}\n" for s, loss, lr in rows)
            try:
                with open(self.path, "a") as f:  # not kept open: a file open for writing pins its disk
                    f.write((HEADER if f.tell() == 0 else "") + text)
            except OSError as e:
                raise RunError(f"cannot write {self.path}: {reason(e)}") from None
        return rows


def read_steps(path) -> list[dict]:
    """The rows of a metrics_steps.csv (none when it is absent), read bounded; a torn last
    line (a run killed mid-write) is skipped, a bad row elsewhere is a RunError naming its line."""
    lines = lines_of(path, LIMIT, "a metrics_steps.csv", RunError)
    if lines and lines[0] + "\n" != HEADER:
        raise RunError(f"{path}:1: expected the header {HEADER.strip()!r}")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        row = _row(line)
        if row is None:
            if i != len(lines):
                raise RunError(f"{path}:{i}: not a row of step,epoch,loss,lr")
            continue
        rows.append(row)
    return rows


def _row(line: str) -> dict | None:
    parts = line.split(",")
    try:
        step, epoch, loss, lr = int(parts[0]), float(parts[1]), float(parts[2]), float(parts[3])
    except (ValueError, IndexError):
        return None
    if len(parts) != 4 or step < 1 or not (math.isfinite(epoch) and math.isfinite(lr)):
        return None
    return {"step": step, "epoch": epoch, "loss": loss, "lr": lr}


def truncate(path, step: int) -> None:
    """Drop the rows after `step` (and a torn last line): a resumed run writes them again.
    Rows are in step order, so the file is cut before the first later row; a row up to
    `step` that is not one (a hand-edited file) is a RunError naming its line."""
    if not os.path.lexists(path):
        return
    try:
        data = read_limited(path, LIMIT, "a metrics_steps.csv")
    except UnreadableFile as e:
        raise RunError(str(e)) from None
    lines = data.splitlines(keepends=True)
    keep = 0
    for i, line in enumerate(lines):
        text = line.decode("utf-8", "replace")
        if i == 0 and text == HEADER:
            keep += len(line)
            continue
        row = _row(text.rstrip("\n"))
        if row is None and text.endswith("\n") and i + 1 < len(lines):
            raise RunError(f"{path}:{i + 1}: not a row of step,epoch,loss,lr")
        if row is None or not text.endswith("\n") or row["step"] > step:
            break
        keep += len(line)
    if keep < len(data):
        write_atomic(path, data[:keep])
