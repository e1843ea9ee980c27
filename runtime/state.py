"""Everything a training run must remember to continue exactly: counters, streams, statistics.

A checkpoint holds the arrays (weights and running statistics; optimizer state) and this
JSON state. Resuming from it reproduces the uninterrupted run bit for bit because every
source of variation is in it: the step (hence the learning rate and Adam's bias
correction), the data stream's position (`Batches.state`: shuffle generator and batches
taken), the dropout stream, and the running sums of a half-finished epoch.

    progress = Progress()                       # a new run
    save(path, params, graph, progress, extra)  # atomic (dslc.runtime.checkpoint)
    problems = model_changes(ckpt, graph, "adam"); changes = recipe_changes(saved, recipe)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dslc.frontend.recipe import KEYS, Recipe
from dslc.runtime.checkpoint import compare, model_hash, save_checkpoint

OPT_PREFIX = "opt."  # optimizer state is named opt.SLOT.PARAM in the training-step graph


@dataclass
class Progress:
    """Counters of a run. `sums` are the current epoch's running totals (examples, loss,
    metrics, each summed over examples), `ratios` its update/weight ratios once its last
    step ran; `seconds` the time spent training and validating in the whole run and
    `epoch_seconds` in the current epoch so far."""

    step: int = 0
    epoch: int = 0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    sums: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    epoch_seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Progress":
        return cls(**data)


def save(path, params: dict, model_graph, progress: Progress, extra: dict):
    """Write a checkpoint: model parameters to weights, optimizer state to optimizer, and the
    state (progress plus `extra`: streams, batches, statistics, recipe) to state.json."""
    names = {p.name for p in model_graph.params}
    weights = {k: v for k, v in params.items() if k in names}
    optimizer = {k: v for k, v in params.items() if k.startswith(OPT_PREFIX)}
    state = {"step": progress.step, "epoch": progress.epoch, "progress": progress.to_json(),
             "model_hash": model_hash(model_graph), **extra}
    return save_checkpoint(path, weights, optimizer, state)


def model_changes(ckpt, graph, optimizer: str) -> list[str]:
    """Why a checkpoint cannot be continued with this model and optimizer, one line each."""
    return [str(d) for d in compare(ckpt, graph, optimizer)]


def recipe_changes(saved: dict, recipe) -> list[str]:
    """The settings that differ between a saved Recipe JSON and `recipe`: 'epochs: 10 -> 20'."""
    before, after = dict(Recipe.from_json(saved).entries), dict(recipe.entries)
    out = []
    for key in dict.fromkeys([*before, *after]):
        if before.get(key) != after.get(key):
            out.append(f"{key}: {_show(key, before.get(key))} -> {_show(key, after.get(key))}")
    return out


def _show(key: str, value) -> str:
    """A recipe setting's value as the recipe writes it."""
    return "none" if value is None else KEYS[key].type.show(value) if key in KEYS else repr(value)
