"""Learning-rate schedules: pure functions of training time, in epochs.

A recipe's `schedule = cosine(min_lr=1e-4, warmup=2)` becomes a function `lr(t)` where
`t` is the training time in epochs as a float (epoch 3, half-way through = 3.5), so one
schedule serves any batch size or dataset size, and `steps = N` recipes only need their
length expressed in epochs. Every schedule is a closed form of (t, base lr, run length):
no hidden state, so a resumed run gets exactly the rates it would have had. The one
exception is `reduce_on_plateau`, whose rate depends on the validation curve: its closed
form is the constant rate, which the trainer multiplies by a scale that a `Plateau` rule
lowers when the watched metric stalls (the scale is saved in each checkpoint).

    lr = schedule_from_recipe(recipe["schedule"], base_lr=0.1, total_epochs=30)
    lr(0.0), lr(29.5)

The recipe calls are declared here too (SCHEMA, beside the functions): a test checks that
every schedule the schema accepts is implemented with the same arguments.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from dslc.frontend.recipe_values import (FRACTION, INT_POS, NONNEG_NUM, POS, Arg, CallSpec, Num, Range, Word,
                                         family, when)

Schedule = Callable[[float], float]

# Warm-up starts at this fraction of the rate, not at 0: a rate of exactly 0 would make the
# first optimiser step (at t = 0) a wasted one.
WARMUP_START = 0.01
# one_cycle anneals to base_lr / ONE_CYCLE_FINAL_DIV, the final divisor of Smith's policy
# (PyTorch's OneCycleLR uses the same 1e4), far enough below the start to settle the weights.
ONE_CYCLE_FINAL_DIV = 1e4


def _cos_ramp(start: float, end: float, frac: float) -> float:
    """Half a cosine from start (frac=0) to end (frac=1); frac is clamped to [0, 1]."""
    frac = min(max(frac, 0.0), 1.0)
    return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2


# ---- the schedules: (base lr, run length in epochs, recipe arguments) -> lr(t) ----------

def constant(lr0: float, total: float) -> Schedule:
    """The optimizer's rate throughout."""
    return lambda t: lr0


def step(lr0: float, total: float, every: float, gamma: float) -> Schedule:
    """lr0 * gamma ** floor(t / every): a drop by gamma every `every` epochs."""
    # The 1e-9 keeps t = k * every (computed in floating point) on the dropped side.
    return lambda t: lr0 * gamma ** math.floor(max(t, 0.0) / every + 1e-9)


def exponential(lr0: float, total: float, k: float) -> Schedule:
    """lr0 * exp(-k t)."""
    return lambda t: lr0 * math.exp(-k * max(t, 0.0))


def inverse_time(lr0: float, total: float, k: float) -> Schedule:
    """lr0 / (1 + k t): the 1/t decay of stochastic approximation (Robbins-Monro)."""
    return lambda t: lr0 / (1 + k * max(t, 0.0))


def cosine(lr0: float, total: float, min_lr: float) -> Schedule:
    """min_lr + (lr0 - min_lr) (1 + cos(pi t / T)) / 2 over the whole run, min_lr after it."""
    return lambda t: _cos_ramp(lr0, min_lr, t / total)


def linear(lr0: float, total: float, min_lr: float) -> Schedule:
    """A straight line from lr0 at the start to min_lr at the end of the run."""
    return lambda t: lr0 + (min_lr - lr0) * min(max(t, 0.0) / total, 1.0)


def inverse_sqrt(lr0: float, total: float, start: float) -> Schedule:
    """lr0 * sqrt(start / t) once t > start, lr0 before: the Transformer's decay (with
    `warmup=start`, Vaswani et al. 2017's schedule up to its constant)."""
    return lambda t: lr0 * math.sqrt(start / max(t, start))


def cosine_restarts(lr0: float, total: float, period: float, mult: float, min_lr: float) -> Schedule:
    """SGDR (Loshchilov & Hutter 2017): cosine decays from lr0 to min_lr, restarting at lr0;
    the first cycle lasts `period` epochs and each next one `mult` times longer. The end of
    each cycle, where the rate is lowest, is where a snapshot ensemble keeps its members."""
    def lr(t: float) -> float:
        start, length = 0.0, period
        while t >= start + length:  # at most a few dozen cycles in any real run
            start, length = start + length, length * mult
        return _cos_ramp(lr0, min_lr, (max(t, 0.0) - start) / length)
    return lr


def reduce_on_plateau(lr0: float, total: float, metric: str, factor: float, patience: int, mode: str,
                      threshold: float, min_lr: float) -> Schedule:
    """The constant rate: the trainer scales it by the Plateau rule's factor (see Plateau)."""
    return lambda t: lr0


def cyclical(lr0: float, total: float, low: float, high: float, period: float) -> Schedule:
    """Triangular cycles (Smith 2017): low -> high -> low once every `period` epochs.

    The bounds are absolute rates: the cycle replaces the optimizer's rate, as in the paper.
    """
    def lr(t: float) -> float:
        phase = (max(t, 0.0) / period) % 1.0
        return low + (high - low) * (1 - abs(2 * phase - 1))
    return lr


def one_cycle(lr0: float, total: float, max_lr: float, pct: float) -> Schedule:
    """Smith's 1cycle: cosine rise from lr0 to max_lr over the first `pct` of the run, then a
    cosine anneal to lr0 / 1e4 at its end (the final divisor PyTorch's OneCycleLR uses)."""
    peak = pct * total

    def lr(t: float) -> float:
        if t < peak:
            return _cos_ramp(lr0, max_lr, t / peak)
        return _cos_ramp(max_lr, lr0 / ONE_CYCLE_FINAL_DIV, (t - peak) / (total - peak))
    return lr


SCHEDULES: dict[str, Callable[..., Schedule]] = {f.__name__: f for f in (
    constant, step, exponential, inverse_time, inverse_sqrt, linear, cosine, cosine_restarts, cyclical, one_cycle,
    reduce_on_plateau)}


# The recipe's `schedule = ...` calls; every one also takes `warmup=EPOCHS` by keyword.
_WARMUP = Arg("warmup", NONNEG_NUM, 0.0, "epochs of linear warm-up from 0 to the rate", positional=False)


def _schedule(name: str, doc: str, *args: Arg, check=None) -> CallSpec:
    return CallSpec(name, doc, (*args, _WARMUP), check)


SCHEMA = family(
    _schedule("constant", "the optimizer's rate throughout"),
    _schedule("step", "multiply the rate by gamma every `every` epochs",
              Arg("every", POS), Arg("gamma", Num(range=Range(0, 1, lo_open=True)), 0.1)),
    _schedule("exponential", "lr * exp(-k * epoch)", Arg("k", POS)),
    _schedule("inverse_time", "lr / (1 + k * epoch)", Arg("k", POS)),
    _schedule("inverse_sqrt", "lr * sqrt(start / epoch) after `start` epochs (with warmup=start: the "
              "Transformer's schedule)", Arg("start", POS, 1.0)),
    _schedule("linear", "a straight line from lr to min_lr over the training", Arg("min_lr", NONNEG_NUM, 0.0)),
    _schedule("cosine", "cosine decay from lr to min_lr over the training", Arg("min_lr", NONNEG_NUM, 0.0)),
    _schedule("cosine_restarts", "cosine decays to min_lr restarting at lr (SGDR): the first cycle `period` "
              "epochs, each next one `mult` times longer", Arg("period", POS), Arg("mult", Num(range=Range(1)), 1.0),
              Arg("min_lr", NONNEG_NUM, 0.0)),
    _schedule("cyclical", "triangular cycles between low and high, `period` epochs each",
              Arg("low", POS), Arg("high", POS), Arg("period", POS),
              check=when(lambda a: a["low"] >= a["high"], "E0505", "high",
                         "high must exceed low, got low={low}, high={high}")),
    _schedule("one_cycle", "rise to max_lr during the first pct of training, then anneal",
              Arg("max_lr", POS), Arg("pct", Num(range=FRACTION), 0.3)),
    _schedule("reduce_on_plateau", "multiply the rate by `factor` when `metric` has not improved by `threshold` "
              "(relative) for `patience` epochs, down to min_lr",
              Arg("metric", Word(), "val_loss", "train_ or val_ + loss or a metric name"),
              Arg("factor", Num(range=Range(0, 1, True, True)), 0.1), Arg("patience", INT_POS, 3),
              Arg("mode", Word(("min", "max")), lambda a: "min" if a["metric"].endswith("loss") else "max"),
              Arg("threshold", NONNEG_NUM, 1e-4), Arg("min_lr", NONNEG_NUM, 0.0),
              check=when(lambda a: not a["metric"].startswith(("train_", "val_")), "E0503", "metric",
                         "metric must start with train_ or val_, got '{metric}'")))


def with_warmup(fn: Schedule, warmup: float) -> Schedule:
    """fn scaled by a linear ramp from WARMUP_START to 1 over the first `warmup` epochs.

    The ramp multiplies the schedule on its own time axis, so the rate is continuous at the
    end of warm-up and the schedule's landmarks (step drops, the cosine's end) stay put.
    """
    if warmup <= 0:
        return fn
    return lambda t: fn(t) * (WARMUP_START + (1 - WARMUP_START) * min(max(t, 0.0) / warmup, 1.0))


def schedule_from_recipe(call, base_lr: float, total_epochs: float) -> Schedule:
    """lr(t) for a recipe's schedule CallValue (all arguments present, warmup included).

        fn = schedule_from_recipe(CallValue("step", (("every", 10), ("gamma", 0.5), ("warmup", 0.0))),
                                  base_lr=0.1, total_epochs=30)
        fn(10.0) -> 0.05
    """
    make = SCHEDULES.get(call.name)
    if make is None:
        raise ValueError(f"unknown schedule '{call.name}'; schedules: {', '.join(SCHEDULES)}")
    if total_epochs <= 0:
        raise ValueError(f"a schedule needs a positive run length, got {total_epochs} epochs")
    args = call.kwargs
    warmup = args.pop("warmup", 0.0)
    return with_warmup(make(float(base_lr), float(total_epochs), **args), warmup)


@dataclass
class Plateau:
    """reduce_on_plateau's rule: after each epoch, `update` reads the watched metric and
    multiplies the scale by `factor` once it has not improved (relatively, by `threshold`)
    for `patience` epochs, never taking the rate below min_lr; it then waits `patience`
    epochs again. Its state is three numbers, saved with the run's progress.

        rule = Plateau.from_recipe(recipe["schedule"], base_lr=0.1)
        state = rule.update(state, record)      # {"scale": 1.0, "best": 0.42, "bad": 0}
    """

    metric: str
    factor: float
    patience: int
    mode: str
    threshold: float
    floor: float  # the smallest scale: min_lr / base lr

    @classmethod
    def from_recipe(cls, call, base_lr: float) -> "Plateau | None":
        """The rule of a reduce_on_plateau schedule; None for every other schedule."""
        if call.name != "reduce_on_plateau":
            return None
        a = call.kwargs
        return cls(a["metric"], a["factor"], a["patience"], a["mode"], a["threshold"], a["min_lr"] / base_lr)

    def update(self, state: dict, record: dict) -> dict:
        """The state after an epoch whose metrics record is `record`."""
        value = record.get(self.metric)
        scale, best, bad = state.get("scale", 1.0), state.get("best"), state.get("bad", 0)
        if value is None or not math.isfinite(value):
            return {"scale": scale, "best": best, "bad": bad}
        margin = self.threshold * abs(best) if best is not None else 0.0
        if best is None or (value < best - margin if self.mode == "min" else value > best + margin):
            return {"scale": scale, "best": value, "bad": 0}
        if bad + 1 >= self.patience:
            return {"scale": max(scale * self.factor, self.floor), "best": best, "bad": 0}
        return {"scale": scale, "best": best, "bad": bad + 1}


def sample(fn: Schedule, epochs: float, points: int = 1001) -> tuple[list[float], list[float]]:
    """(times, rates) at `points` evenly spaced times over [0, epochs], for plots and tables."""
    ts = [epochs * i / (points - 1) for i in range(points)]
    return ts, [fn(t) for t in ts]


def landmarks(fn: Schedule, epochs: float, limit: int = 8, points: int = 4001) -> tuple[list[tuple[float, float]], bool]:
    """The (epoch, rate) points that describe a schedule in words: the start, every turn (a
    peak, a trough, the corner of a drop or a plateau) and the end, at most `limit` of them
    besides the end; and whether some turns were left out. A cyclical schedule shows its
    peaks and troughs where evenly spaced samples could all land on troughs.

        landmarks(cyclical_fn, 8)  ->  ([(0, 1e-4), (2, 1e-2), (4, 1e-4), (6, 1e-2), (8, 1e-4)], False)
    """
    ts, lrs = sample(fn, epochs, points)
    scale = max(map(abs, lrs)) or 1.0

    def direction(i: int) -> int:
        d = lrs[i + 1] - lrs[i]
        return 0 if abs(d) <= 1e-9 * scale else (1 if d > 0 else -1)

    turns = [i for i in range(1, points - 1) if direction(i - 1) != direction(i)]
    kept = [0] + turns[:limit - 1]
    shown = [(ts[i], lrs[i]) for i in kept]
    return shown + [(ts[-1], lrs[-1])], len(turns) > limit - 1
