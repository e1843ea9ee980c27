"""The pictures of training: curves.png, `dslc plot` (several runs, or update ratios), shared figure plumbing.

Every drawing takes plain data (metrics records, per-step rows) and writes a figure
atomically (PNG, or the .pdf, .svg or .jpg its name asks for: files.write_figure);
none reads a run directory (runs.py does, and calls these).

    plot_curves(records, steps, "runs/a/curves.png", title="a")
    plot_ratios([("a", records)], "ratios.png")

Figures are built without pyplot, so no global state or GUI backend is involved
(rendering uses Agg) and matplotlib loads only when something is drawn.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from dslc.files import write_figure

RATIO_GUIDE = 1e-3  # the update/weight ratio the lectures call healthy
MAX_POINTS = 4000  # per-step points drawn per curve; longer runs are thinned (the mean uses every step)


def figure(panels: int, rows: int = 1):
    """A matplotlib Figure with `rows` x `panels` axes (a flat list, row by row)."""
    from matplotlib.figure import Figure

    width, height = 5.5 * panels, 4 * rows
    fig = Figure(figsize=(width, height))
    # Fixed margins in inches: an automatic layout engine would draw the figure twice.
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.5 / height, top=1 - 0.56 / height,
                        wspace=0.25, hspace=0.35)
    axes = fig.subplots(rows, panels, squeeze=False)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return fig, list(axes.flat)


def save_figure(fig, path) -> None:
    """Write a Figure in the format its name asks for (files.write_figure: PNG by default)."""
    write_figure(fig, path, dpi=100)


def metric_names(records: Sequence[Mapping]) -> list[str]:
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


def epoch_panels(axes, runs: list[tuple[str, list[dict]]]) -> None:
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


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """The mean of the last `window` values at each position (fewer at the start).

    >>> running_mean([1, 2, 3, 4], 2)
    [1.0, 1.5, 2.5, 3.5]
    """
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def steps_panel(ax, steps: list[dict], window: int) -> None:
    """The loss of every step (thin, pale) and its running mean over `window` steps (one
    epoch's worth, so at each epoch's end it is that epoch's training loss), against the
    epoch; the learning rate on a right-hand axis."""
    finite = [s for s in steps if math.isfinite(s["loss"])]
    if not finite:
        ax.text(0.5, 0.5, "no step logged", ha="center", va="center", transform=ax.transAxes)
        return
    xs, losses = [s["epoch"] for s in finite], [s["loss"] for s in finite]
    mean = running_mean(losses, max(1, window))
    stride = max(1, len(xs) // MAX_POINTS)
    ax.plot(xs[::stride], losses[::stride], color="C0", alpha=0.3, linewidth=0.6, label="loss per step")
    ax.plot(xs[::stride], mean[::stride], color="C0", linewidth=1.5, label=f"running mean ({window} steps)")
    ax.set(xlabel="epoch", ylabel="training loss", title="training loss per step")
    if min(losses) > 0 and max(losses) / min(losses) > 50:
        ax.set_yscale("log")
    lr = ax.twinx()
    lr.plot(xs[::stride], [s["lr"] for s in finite][::stride], color="C2", linewidth=1, label="learning rate")
    lr.set_ylabel("learning rate", color="C2")
    lr.tick_params(axis="y", colors="C2")
    handles = ax.get_legend_handles_labels()[0] + lr.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize="small")


def steps_per_epoch(records: Sequence[Mapping]) -> int:
    """Optimiser steps in an epoch, from the first whole epoch's record (step / epoch)."""
    first = next((r for r in records if r.get("epoch") and r.get("step")), None)
    return max(1, round(first["step"] / first["epoch"])) if first else 1


def plot_curves(records: list[dict], path, title: str = "", steps: list[dict] | None = None) -> None:
    """curves.png of one run: loss and the first metric, train vs validation; below them,
    when per-step rows are given, the loss of every step with its running mean."""
    fig, axes = figure(2, rows=2 if steps else 1)
    epoch_panels(axes[:2], [(title, records)])
    if steps:  # one panel as wide as the two above it
        for ax in axes[2:]:
            ax.remove()
        wide = fig.add_subplot(2, 1, 2)
        wide.grid(alpha=0.3)
        steps_panel(wide, steps, steps_per_epoch(records))
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_epochs(runs: list[tuple[str, list[dict]]], path) -> None:
    """Several runs on the same two panels, one colour each (`dslc plot RUN...`)."""
    fig, axes = figure(2)
    epoch_panels(axes, runs)
    save_figure(fig, path)


def plot_ratios(runs: list[tuple[str, list[dict]]], path) -> None:
    """One panel per run: the update/weight ratio |dW| / |W| of every parameter against the
    epoch on a log scale, with the 1e-3 guide line (far below: learning too slowly; far
    above: too fast)."""
    fig, axes = figure(len(runs))
    for ax, (name, records) in zip(axes, runs):
        params = list(dict.fromkeys(k for r in records for k in (r.get("update_ratio") or {})))
        for i, param in enumerate(params):
            points = [(r["epoch"], r["update_ratio"][param]) for r in records
                      if (r.get("update_ratio") or {}).get(param)]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=f"C{i % 10}", marker="." if len(xs) < 30 else None, label=param)
        ax.axhline(RATIO_GUIDE, color="black", linestyle="--", linewidth=1, label="1e-3")
        ax.set(yscale="log", xlabel="epoch", ylabel="|update| / |weight|", title=f"update ratios: {name}")
        ax.legend(fontsize="x-small", ncol=1 + len(params) // 12)
    save_figure(fig, path)
