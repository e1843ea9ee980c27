"""Choosing a learning rate: the range test (`dslc lr-find`) and the schedule plot (`dslc lr`).

The range test (Smith 2017, "Cyclical learning rates"; fastai's lr_find) trains from the
initial weights for ~100 steps while the rate grows exponentially from `start` to `end`,
recording the loss, smoothed by an exponential moving average (bias-corrected, as
Adam's moments). The loss falls while the rate is useful and explodes once it is too
large; the test stops when the smoothed loss passes 4x its minimum. The suggestion is
the rate at the minimum divided by 10: still on the descending part of the curve, where
training is fast and stable.

    found = lr_find(model, recipe)
    found.suggestion, plot_lr_find(found, "lr_find.png")
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from dslc.passes.train_step import LR
from dslc.runtime.plots import figure, save_figure
from dslc.runtime.prepare import load_data
from dslc.runtime.schedules import Schedule, landmarks, sample, schedule_from_recipe
from dslc.runtime.trainer import Trainer

SMOOTHING = 0.98  # weight of the past in the moving average of the loss
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float | None


def lr_find(model, recipe, start: float = 1e-7, end: float = 10.0, steps: int = 100,
            device: str | None = None) -> RangeTest:
    """Run the range test from the recipe's initial weights, data and optimizer (its lr replaced)."""
    if not 0 < start < end or steps < 2:
        raise ValueError("lr-find needs 0 < start < end and at least 2 steps")
    trainer = Trainer(model, recipe, device, quiet=True, detect_anomaly=False, echo=lambda _: None)
    trainer.load_init()
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    batches: Iterator = iter(())
    with np.errstate(all="ignore"):
        for i in range(steps):
            batch = next(batches, None)
            if batch is None:  # another epoch of the training data
                batches = iter(trainer.batches)
                batch = next(batches)
            lr = start * (end / start) ** (i / (steps - 1))
            feeds = trainer.feeds(batch)
            feeds[LR] = np.asarray(lr, feeds[LR].dtype)
            loss = float(trainer.step_fn(feeds, trainer.params, trainer.streams["dropout"])[trainer.loss_name])
            trainer.progress.step += 1
            if not math.isfinite(loss):
                break
            avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
            smoothed = avg / (1 - SMOOTHING ** (i + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if smoothed > DIVERGED * best:
                break
    at_min = lrs[int(np.argmin(losses))] / 10 if losses else None
    return RangeTest(lrs, losses, at_min)


def plot_lr_find(found: RangeTest, path, title: str = "learning-rate range test") -> None:
    """Smoothed loss against the rate (log scale), the suggestion marked."""
    fig, (ax,) = figure(1)
    ax.plot(found.lrs, found.losses, color="tab:blue")
    if found.suggestion:
        ax.axvline(found.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {found.suggestion:.2g}")
        ax.legend(fontsize="small")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)", title=title)
    save_figure(fig, path)


def schedule_plot(recipe, path) -> tuple[list[tuple[float, float]], bool]:
    """Draw the recipe's learning rate over its run into `path` without training, and return
    its landmarks for the console (start, turns, end; see schedules.landmarks) and whether
    some were left out. A `steps = N` recipe needs its data's size."""
    epochs = recipe["epochs"]
    if epochs is None:
        per_epoch = math.ceil(len(load_data(recipe).train) / recipe["batch"])
        epochs = recipe["steps"] / per_epoch
    fn = schedule_from_recipe(recipe["schedule"], recipe["optimizer"]["lr"], epochs)
    plot_schedule(fn, epochs, path, title=f"learning rate of {recipe.name}")
    return landmarks(fn, epochs)


def plot_schedule(fn: Schedule, epochs: float, path, title: str = "learning rate") -> None:
    """Draw lr(t) over the run into a PNG at `path` (written atomically), for `dslc lr FILE`."""
    fig, (ax,) = figure(1)
    ts, lrs = sample(fn, epochs)
    ax.plot(ts, lrs, color="tab:blue")
    ax.set(xlabel="epoch", ylabel="learning rate", title=title, xlim=(0, epochs))
    ax.set_ylim(bottom=0)
    save_figure(fig, path)
