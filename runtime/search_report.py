"""What `dslc search` shows: the results table (text, CSV) and the metric against each hyper-parameter.

All three read the report Search.report() builds: the trials best first, the space, the
watched metric and its direction.

    print(table(report)); plot(report, space, "search.png")
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from dslc.frontend.recipe_search import Dimension, shown, value_text
from dslc.runtime.plots import figure, save_figure


def table(report: dict) -> str:
    """The trials as an aligned table, best first, then a line naming the best trial's run."""
    keys = [d["key"] for d in report["space"]]
    metric = report["metric"]
    head = ["rank", "trial", *keys, metric, "epoch", "time"]
    body, rank = [], 0
    for t in report["trials"]:
        if t["status"] == "done":
            rank += 1
            tail = [f"{t['best']:.4f}" if t["best"] is not None else "-", str(t["best_epoch"]), f"{t['seconds']:.1f}s"]
        else:
            tail = [t["status"] + (f": {t['error']}" if t["error"] else ""), "", ""]
        body.append([str(rank) if t["status"] == "done" else "-", t["id"], *(shown(t["params"].get(k)) for k in keys),
                     *tail])
    done_rows = [head] + [row for row in body if row[0] != "-"]  # a failure's message runs on past the columns
    widths = [max(len(row[c]) for row in (done_rows if c >= len(head) - 3 else [head] + body))
              for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [head] + body]
    direction = "higher" if report["mode"] == "max" else "lower"
    done = sum(t["status"] == "done" for t in report["trials"])
    title = (f"search of {report['recipe']}: {len(report['trials'])} trials ({done} done), {metric} ({direction} is "
             f"better), {_length(report)}; in {report['search']}")
    best = report["best"]
    verdict = (f"best: {best['id']} ({', '.join(f'{k}={shown(v)}' for k, v in best['params'].items())}): {metric} "
               f"{best['best']:.4f}; its run is {best['run']}" if best
               else f"no finished trial has a finite {metric}" if done else "no trial has finished")
    return "\n".join([title, *(line.rstrip() for line in lines), verdict])


def _length(report: dict) -> str:
    """How long each trial trains, for the title: its epochs, or its steps for a recipe of
    `steps = N` (epochs is null then), or its point's when the space searches either."""
    searched = [d["key"] for d in report["space"] if d["key"] in ("epochs", "steps")]
    if searched:
        return f"{searched[0]} as each point says"
    return f"{report['epochs']} epochs each" if report["epochs"] is not None else f"{report['steps']} steps each"


def to_csv(report: dict) -> str:
    """One row per trial, best first: id, round, each hyper-parameter, the metric, status."""
    keys = [d["key"] for d in report["space"]]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial", "round", *keys, report["metric"], "best_epoch", "seconds", "status", "error"])
    for t in report["trials"]:
        writer.writerow([t["id"], t["round"], *(value_text(t["params"].get(k)) for k in keys),
                         "" if t["best"] is None else repr(t["best"]), t["best_epoch"] or "",
                         "" if t["seconds"] is None else f"{t['seconds']:.3f}", t["status"], t["error"]])
    return buf.getvalue()


def plot(report: dict, space: tuple[Dimension, ...], path) -> None:
    """One panel per hyper-parameter: the metric of each finished trial against its value (a
    log axis for a log-scale dimension, categories for a choice of text), round 2 in another
    colour, the best trial starred."""
    done = [t for t in report["trials"] if t["status"] == "done" and t["best"] is not None
            and math.isfinite(t["best"])]
    fig, axes = figure(max(1, len(space)))
    for ax, dim in zip(axes, space):
        numeric = dim.kind != "choice" or all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                              for c in dim.choices)
        labels = [value_text(c) for c in dim.choices]
        for round_, color in ((1, "C0"), (2, "C1")):
            points = [(_x(t["params"][dim.key], numeric, labels), t["best"]) for t in done if t["round"] == round_]
            if points:
                xs, ys = zip(*points)
                ax.scatter(xs, ys, color=color, s=22, label="round 1" if round_ == 1 else "round 2 (refined)")
        if done:
            best = done[0]
            ax.scatter([_x(best["params"][dim.key], numeric, labels)], [best["best"]], marker="*", s=180, color="C3", zorder=3,
                       label=f"best ({best['id']})")
            ax.legend(fontsize="small")
        if dim.log:
            ax.set_xscale("log")
        if dim.kind != "choice":  # the whole range searched, so a crowded corner shows as one
            ax.set_xlim(*_padded(dim))
        elif numeric:
            ax.set_xticks(list(dim.choices), labels)
            ax.minorticks_off()
        else:
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize="small")
        ax.set(xlabel=dim.key + (" (log scale)" if dim.log else ""), ylabel=report["metric"],
               title=f"{report['metric']} against {dim.key}")
    save_figure(fig, path)


# The widest axes matplotlib draws: past them its tick locators overflow (decades of 1e400,
# an arange of 2e308 / step), a ValueError or OverflowError when the figure is saved.
LOG_AXIS, LINEAR_AXIS = (1e-200, 1e200), (-1e300, 1e300)


def _padded(dim: Dimension) -> tuple[float, float]:
    """The axis of a range: 3% wider on each side (of its logarithm on a log scale), within
    what matplotlib can draw. loguniform(1e-300, 1e300) or uniform(-1e308, 1e308) made
    infinite limits, or ticks past float's end, and a traceback ended the search after its
    trials had trained; a trial beyond those axes is off its panel (the table lists it)."""
    with np.errstate(over="ignore", under="ignore"):
        if dim.log:
            pad = np.exp(0.03 * (np.log(dim.high) - np.log(dim.low)))
            low, high, (least, most) = dim.low / pad, dim.high * pad, LOG_AXIS
        else:
            pad = 0.03 * (np.float64(dim.high) - np.float64(dim.low))
            low, high, (least, most) = dim.low - pad, dim.high + pad, LINEAR_AXIS
    return float(np.clip(low, least, most)), float(np.clip(high, least, most))


def _x(value, numeric: bool, labels: list[str]):
    """Where a value sits on its panel's axis: itself, or the position of its category."""
    if numeric:
        return value
    text = value_text(value)
    return labels.index(text) if text in labels else -1
