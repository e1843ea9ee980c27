"""Everything a training run must remember to continue exactly: counters, streams, statistics.

A checkpoint holds the arrays (weights and running statistics; optimizer state) and this
JSON state. Resuming from it reproduces the uninterrupted run bit for bit because every
source of variation is in it: the step (hence the learning rate and Adam's bias
correction), the data stream's position (`Batches.state`: shuffle generator and batches
taken), the dropout stream, and the running sums of a half-finished epoch.

state.json is plain text a person may edit, so `check` reads every key a command uses
through `jsondoc.Doc` first: a missing or extra key, a wrong type or an impossible value
is a CheckpointError naming the file and the key, never a traceback later on.

    progress = Progress()                             # a new run
    tmp = prepare(path, params, graph, progress, extra)  # then checkpoint.commit(tmp, path)
    check(ckpt)                                       # every key of a trainer's state.json
    problems = model_changes(ckpt, graph, "adam") + optimizer_changes(ckpt, step_graph)
    changes = recipe_changes(saved, recipe)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import numpy as np

from dslc.recipe.schema import KEYS, Recipe
from dslc.ir.types import NUMPY_DTYPE
from dslc.runtime import checkpoint
from dslc.runtime.checkpoint import CheckpointError, compare, model_hash
from dslc.runtime.data.normalize import KINDS
from dslc.runtime.jsondoc import Doc, is_int, is_number

OPT_PREFIX = "opt."  # optimizer state is named opt.SLOT.PARAM in the training-step graph


@dataclass
class Progress:
    """Counters of a run. `sums` are the current epoch's running totals (examples, loss,
    metrics, each summed over examples), `ratios` its update/weight ratios once its last
    step ran; `seconds` the time spent training and validating in the whole run and
    `epoch_seconds` in the current epoch so far; `plateau` the state of a reduce_on_plateau
    schedule (schedules.Plateau)."""

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
    plateau: dict = field(default_factory=dict)  # reduce_on_plateau's scale, best and bad epochs

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Progress":
        return cls(**data)


def prepare(path, params: dict, model_graph, progress: Progress, extra: dict):
    """Write a checkpoint into its temporary sibling (see checkpoint.prepare): model parameters
    to weights, optimizer state to optimizer, and the state (progress plus `extra`: streams,
    batches, statistics, recipe) to state.json."""
    names = {p.name for p in model_graph.params}
    weights = {k: v for k, v in params.items() if k in names}
    optimizer = {k: v for k, v in params.items() if k.startswith(OPT_PREFIX)}
    state = {"step": progress.step, "epoch": progress.epoch, "progress": progress.to_json(),
             "model_hash": model_hash(model_graph), **extra}
    return checkpoint.prepare(path, weights, optimizer, state)


def model_changes(ckpt, graph, optimizer: str) -> list[str]:
    """Why a checkpoint cannot be continued with this model and optimizer, one line each."""
    return [str(d) for d in compare(ckpt, graph, optimizer)]


def optimizer_changes(ckpt, step_graph) -> list[str]:
    """Why the checkpoint's optimizer state does not fit the training step's (opt.SLOT.PARAM
    arrays missing, extra, or of another shape or dtype), one line each."""
    wanted = {n.name: n for n in step_graph.params if n.name.startswith(OPT_PREFIX)}
    saved = ckpt.optimizer
    out = [f"{n}: optimizer state missing from the checkpoint" for n in wanted if n not in saved]
    out += [f"{n}: optimizer state in the checkpoint, not in the training step" for n in saved if n not in wanted]
    for name, node in wanted.items():
        have = saved.get(name)
        if have is None:
            continue
        shape, dtype = tuple(node.type.shape), np.dtype(NUMPY_DTYPE[node.type.dtype])
        if tuple(have.shape) != shape or have.dtype != dtype:
            out.append(f"{name}: the checkpoint's optimizer state is {have.dtype} {list(have.shape)}, the "
                       f"training step's {dtype} {list(shape)}")
    return out


# Settings a run may change when it resumes: how many processes train it, not what they compute.
RESUMABLE = ("ranks",)


def saved_recipe(saved: dict) -> Recipe:
    """The Recipe of a saved Recipe JSON (checked by `check`), a setting newer than the
    checkpoint (or deleted from it by hand) at its default: the trainer reads every setting
    of a run's old recipe by key (its `stop`, to judge a resumed run anew), and a missing one
    was a KeyError traceback."""
    before = Recipe.from_json(saved)
    entries = dict(before.entries)
    for key in KEYS:
        if key not in entries:
            entries[key] = KEYS[key].default
    return Recipe(before.model, before.name, tuple(entries.items()))


def recipe_changes(saved: dict, recipe) -> list[str]:
    """The settings that differ between a saved Recipe JSON (checked by `check`) and `recipe`:
    'epochs: 10 -> 20' (RESUMABLE ones aside). A setting newer than the checkpoint had its default."""
    before, after = dict(saved_recipe(saved).entries), dict(recipe.entries)
    out = []
    for key in dict.fromkeys([*before, *after]):
        if key not in RESUMABLE and before.get(key) != after.get(key):
            out.append(f"{key}: {_show(key, before.get(key))} -> {_show(key, after.get(key))}")
    return out


def _show(key: str, value) -> str:
    """A setting as .net text; a saved value its key's type cannot print (hand-edited) as JSON."""
    if value is None:
        return "none"
    try:
        return KEYS[key].type.show(value)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return repr(value)[:60]


# ---- checking a state.json -------------------------------------------------------------------

def _progress(doc: Doc) -> None:
    p = doc.obj("progress")
    p.exactly([f.name for f in fields(Progress)])
    for key in ("step", "epoch", "best_epoch", "bad_epochs"):
        p.int(key, lo=0)
    p.get("best", lambda v: v is None or is_int(v) or isinstance(v, float), "a number or null")
    p.bool("stopped")
    p.obj("sums").values(lambda v: is_int(v) or isinstance(v, float), "a number")
    p.obj("ratios").values(lambda v: v is None or is_number(v), "a finite number or null")
    p.number("seconds", lo=0)
    p.number("epoch_seconds", lo=0)
    plateau = p.obj("plateau", optional=True)  # absent from checkpoints written before reduce_on_plateau
    if plateau is not None:
        plateau.exactly(("scale", "best", "bad"))
        plateau.number("scale", optional=True)
        plateau.number("best", optional=True, null=True)
        plateau.int("bad", lo=0, optional=True)
    for key in ("step", "epoch"):
        if p.value[key] != doc.int(key, lo=0):
            raise doc.error(f"{doc.file}: '{key}' is {doc.value[key]} but 'progress.{key}' is {p.value[key]}")
    if p.value["best_epoch"] > p.value["epoch"]:
        raise doc.error(f"{doc.file}: 'progress.best_epoch' {p.value['best_epoch']} is after 'epoch' "
                        f"{p.value['epoch']}")


def _rng(doc: Doc) -> None:
    for name in doc.obj("rng").value:
        doc.obj("rng").obj(name).str("bit_generator")


def _batches(doc: Doc) -> None:
    b = doc.obj("batches")
    b.exactly(("epoch", "position", "rng", "examples", "batch"))
    for key, lo in (("epoch", 0), ("position", 0), ("examples", 1), ("batch", 1)):
        b.int(key, lo=lo)
    b.obj("rng").str("bit_generator")


def _recipe_value(v) -> bool:
    """A value Recipe.from_json can read: a call {call, args}, a list, a string, number or bool."""
    if isinstance(v, dict):
        return set(v) == {"call", "args"} and isinstance(v["call"], str) and isinstance(v["args"], dict) \
            and all(map(_recipe_value, v["args"].values()))
    if isinstance(v, list):
        return all(map(_recipe_value, v))
    return v is None or isinstance(v, (str, bool)) or is_number(v)


def _recipe(doc: Doc) -> None:
    r = doc.obj("recipe")
    for key in ("model", "name"):
        r.str(key)
    entries = r.obj("entries")
    entries.exactly(KEYS)
    entries.values(_recipe_value, "a recipe value (a call, a list, a string, a number or a boolean)")
    entries.get("stop", _stop, "null or an early(metric, patience, mode, min_delta) call", optional=True)


def _stop(v) -> bool:
    """A saved `stop` the trainer can read (trainer.watched_metric judges a run resumed with a
    changed recipe by it): `"stop": "x"` was a TypeError traceback there."""
    if v is None:
        return True
    args = v.get("args") if isinstance(v, dict) else None
    return isinstance(args, dict) and v.get("call") == "early" and isinstance(args.get("metric"), str) \
        and args.get("mode") in ("min", "max") and is_number(args.get("min_delta")) \
        and is_int(args.get("patience"))


def _normalization(doc: Doc) -> None:
    n = doc.obj("normalization")
    kind = n.get("kind", lambda v: v in KINDS, f"one of {', '.join(KINDS)}")
    if kind == "none":
        return
    shape = doc.value.get("example_shape")
    for key in ("mean", "std") if kind == "per_channel" else ("mean",):
        value = n.get(key, lambda v: isinstance(v, (list, np.ndarray)), "a list of numbers")
        try:
            array = np.asarray(value, np.float64)
        except (ValueError, TypeError):
            raise n.fail(f"normalization.{key}", "a list of numbers", value) from None
        if not np.isfinite(array).all() or (key == "std" and not (array > 0).all()):
            raise doc.error(f"{doc.file}: 'normalization.{key}' must hold finite numbers"
                            + (" > 0" if key == "std" else ""))
        want = None if not isinstance(shape, list) else shape[:1] if kind == "per_channel" else shape
        if want is not None and list(array.shape) != want:
            raise doc.error(f"{doc.file}: 'normalization.{key}' has shape {list(array.shape)}; examples of "
                            f"shape {shape} need {want}")


def _classes(doc: Doc) -> None:
    classes = doc.int("classes", lo=0)  # 0: a regression run (float targets, no classes)
    names = doc.list("class_names", lambda v: isinstance(v, str), "strings")
    if names and len(names) != classes:
        raise doc.error(f"{doc.file}: 'class_names' has {len(names)} names for {classes} classes")


def _example_shape(doc: Doc) -> None:
    shape = doc.list("example_shape", lambda v: is_int(v) and v >= 1, "positive integers")
    if not shape or math.prod(shape) > 2**31:
        raise doc.error(f"{doc.file}: 'example_shape' must be a non-empty list of positive integers "
                        f"of at most 2**31 numbers")


def _text(key: str) -> Callable[[Doc], None]:
    """The check that `key` is a string."""
    def check(doc: Doc) -> None:
        doc.str(key)
    return check


def _train_digest(doc: Doc) -> None:
    doc.str("train_digest", optional=True)  # absent from checkpoints written before it was recorded


CHECKS = {"progress": _progress, "rng": _rng, "batches": _batches, "recipe": _recipe,
          "example_shape": _example_shape, "normalization": _normalization, "classes": _classes,
          "train_digest": _train_digest,
          **{key: _text(key) for key in ("model_hash", "recipe_hash", "optimizer", "model")}}
TOP = ("step", "epoch", "dslc_version", "format", "class_names", *CHECKS)  # every key a trainer's state.json has


def check(ckpt, keys=None) -> None:
    """Check the state.json keys `keys` (default: all, and no other) of a loaded checkpoint;
    CheckpointError naming the file and the first wrong key."""
    doc = Doc(ckpt.state, ckpt.path / checkpoint.STATE, CheckpointError)
    if keys is None:
        doc.exactly(TOP)
    for key in keys or CHECKS:
        CHECKS[key](doc)
