"""The --set pairs a trained run was started with, for the commands that use its checkpoints.

`dslc train m.net --set hidden=32 --out run1` records {"hidden": "32"} in run1/config.json,
and `dslc eval m.net --checkpoint run1` must build that same model, or the checkpoint does
not fit it. So every command that loads a checkpoint of a run (eval, predict, ensemble,
explain, export) takes the run's pairs that decide the model, its hyper-parameters, and,
when the command builds a recipe, the settings that decide which examples the model is
evaluated on (`split`: Key.after_training in dslc/recipe/schema.py says which). The command
line's own --set win key by key. Settings that only shaped training (epochs, optimizer,
seed) are left alone, and so is `data`, which names files: a run's files never choose what
dslc reads, as the checkpoint's own recipe does not (runtime/predict.py, which warns when
the run's data was another).

A checkpoint belongs to a run when it is the run directory, or its last/, best/ or
snapshots/epoch-NNNN, and that run directory has a config.json. It is read with Run.config's
checks, as `dslc train --resume` reads it (trainer.resume_settings): a damaged one is a
RunError naming it, and so is a recorded pair the .net file no longer takes. A checkpoint
outside a run (a directory someone sent) gets the command line's settings alone.

    taken = run_settings("models/digits_mlp.net", ["runs/a"], given={}, recipe=True)
    taken.pairs    # {"hidden": "32"}
    taken.note     # "using a's settings: --set hidden=32 (from runs/a/config.json)"
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from dslc.diagnostics import UsageError, printable
from dslc.frontend.program import load_program
from dslc.frontend.resolve import check_overrides
from dslc.frontend.values import literals
from dslc.recipe.overrides import read_setting
from dslc.recipe.schema import KEYS
from dslc.runtime.errors import RunError
from dslc.runtime.runs import CONFIG, SNAPSHOTS, Run
from dslc.runtime.transfer import resolve


@dataclass(frozen=True)
class Taken:
    """What the runs give a command: `pairs` to apply under the command line's own, and the
    `note` saying so, to print once on standard error (None when nothing was taken)."""

    pairs: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


def run_of(checkpoint) -> Path | None:
    """The run directory `checkpoint` belongs to (see the module doc), or None."""
    path = Path(checkpoint)
    found = resolve(path)  # a run means its best, else its last checkpoint
    candidates = [path, found.parent] if found.name in ("last", "best") else [path]
    if found.parent.name == SNAPSHOTS:
        candidates.append(found.parent.parent)
    return next((c for c in candidates if os.path.lexists(c / CONFIG)), None)


def run_settings(file, checkpoints: Sequence, given: Mapping[str, Any], recipe: bool = False,
                 model: str | None = None) -> Taken:
    """The pairs the runs of `checkpoints` were trained with that a command on `file` takes (model
    hyper-parameters; with `recipe`, also the settings that decide the evaluated examples), less
    those the command line `given` decides; none when the command builds another `model` than
    the runs trained. UsageError when the runs disagree on one that `given` leaves open: the
    checkpoints are of different models."""
    runs = list(dict.fromkeys(run for run in map(run_of, checkpoints) if run is not None))
    if not runs:
        return Taken()
    recorded = {run: Run(run).overrides for run in runs}
    kept = {run: {k: v for k, v in pairs.items() if k not in given and _taken(k, recipe)}
            for run, pairs in recorded.items()}
    _agree(kept)
    if not kept[runs[0]]:  # nothing left to take (`given` decides it all, as when dslc.load is
        return Taken()     # called by a verb that took the run's settings already): no second parse
    program = load_program(file)
    trained = _trained(runs[0], program)
    if trained not in program.models or model not in (None, trained):  # the settings of another model
        return Taken()
    pairs = kept[runs[0]]
    _check(program.models[trained], runs[0], pairs)
    where = f"{runs[0].name or runs[0]}'s" if len(runs) == 1 else "the runs'"
    sources = ", ".join(str(run / CONFIG) for run in runs)
    return Taken(pairs, f"using {where} settings: {_shown(pairs)} (from {sources})" if pairs else None)


def _key(dotted: str):
    """The recipe setting a --set key changes, or None for a model hyper-parameter."""
    return KEYS.get(dotted.split(".", 1)[0])


def _taken(dotted: str, recipe: bool) -> bool:
    key = _key(dotted)
    return key is None or (recipe and key.after_training)


def _shown(pairs: Mapping[str, Any]) -> str:
    return " ".join(f"--set {k}={printable(str(v))}" for k, v in pairs.items())


def _agree(kept: Mapping[Path, Mapping[str, Any]]) -> None:
    """UsageError naming each setting the runs were trained with differently (an absent one is
    the file's, and differs from a given one)."""
    keys = list(dict.fromkeys(k for pairs in kept.values() for k in pairs))
    differ = [k for k in keys if len({str(pairs.get(k)) for pairs in kept.values()}) > 1]
    if not differ:
        return
    def value(pairs, k) -> str:
        return printable(str(pairs[k])) if k in pairs else "the .net file's"
    lines = [f"  {k}: " + ", ".join(f"{value(pairs, k)} in {run}" for run, pairs in kept.items()) for k in differ]
    raise UsageError("the checkpoints come from runs trained with different settings, so their models "
                     "(or the examples they are evaluated on) differ:\n" + "\n".join(lines)
                     + "\nuse checkpoints of one setting, or choose with --set, e.g. "
                     + _shown({differ[0]: next(iter(kept.values())).get(differ[0], "...")}))


def _trained(run: Path, program) -> str | None:
    """The model `run` trained, as its config.json names it (else the file's first model)."""
    config = Run(run).config
    named = config.get("model", (config.get("recipe") or {}).get("model"))
    return named if isinstance(named, str) else program.default_model()


def _check(mdef, run: Path, pairs: Mapping[str, Any]) -> None:
    """RunError naming the run's config.json and the .net file when model `mdef` (or the recipe)
    no longer takes a recorded pair (a hyper-parameter renamed or retyped since, or a
    hand-edited value)."""
    hyper = {k: v for k, v in pairs.items() if _key(k) is None}
    try:
        check_overrides(mdef, literals(hyper))
        for k, v in pairs.items():
            if _key(k) is not None and "." not in k:  # `key.arg` is checked where it is applied
                read_setting(k, v)
    except UsageError as e:
        problems = "\n".join(f"  {line}" for line in str(e).splitlines())
        raise RunError(f"{run / CONFIG}: {run} was trained with settings that model '{mdef.name}' of "
                       f"{printable(str(mdef.span.file))} does not take now:\n{problems}\n(give the --set this "
                       "model needs on the command line: it wins over the run's)") from None
