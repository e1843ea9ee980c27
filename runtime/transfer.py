"""Starting from saved weights: which checkpoint a path means, and a recipe's `init`:
`init = checkpoint(run, skip=[...])` or `init = torch_weights(file, skip=[...])` (torch_weights.py).

A path on the command line or in a recipe may name a checkpoint directory (runs/m/best)
or a whole run (runs/m), which means its best checkpoint, else its last one.

Transfer learning loads every parameter of the model from the checkpoint except those the
skip globs select (matched like `freeze`: a parameter's name or a layer it is in), which
keep their fresh initialisation: typically the classifier head, re-learnt for new classes.

    params = model.init(seed)
    params.update(from_checkpoint(model, "runs/digits-0to4", skip=["out*"]))
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dslc.recipe.schema import select_params
from dslc.runtime.checkpoint import Checkpoint, CheckpointError, compare, load_checkpoint, saved
from dslc.runtime.torch_weights import load_torch_weights


def resolve(path) -> Path:
    """The checkpoint directory `path` means: itself, or a run's best (else last) checkpoint."""
    path = Path(path)
    for name in ("best", "last"):
        if saved(path, name):
            return path / name
    return path


def load(path) -> Checkpoint:
    """Load the checkpoint `path` means (see `resolve`); CheckpointError names what is wrong."""
    return load_checkpoint(resolve(path))


def init_from(model, init) -> dict[str, np.ndarray]:
    """The weights a recipe's `init` call gives: checkpoint(path, skip) or torch_weights(path, skip, mapping)."""
    if init.name == "torch_weights":
        return load_torch_weights(model, init["path"], init["skip"], init["mapping"])
    return from_checkpoint(model, init["path"], init["skip"])


def from_checkpoint(model, path, skip=()) -> dict[str, np.ndarray]:
    """The model's parameters from checkpoint `path`, except those the `skip` globs select.

    Every other parameter must be in the checkpoint with the same shape and dtype; a
    CheckpointError lists every one that is not.
    """
    ckpt = load(path)
    skipped = set(select_params(model.graph, skip))
    problems = [d for d in compare(ckpt, model.graph)
                if d.name not in skipped and d.kind in ("missing", "shape", "dtype")]
    if problems:
        raise CheckpointError(f"init = checkpoint({str(path)!r}): {ckpt.path} does not fit model "
                              f"'{model.name}':\n" + "\n".join(f"  {d}" for d in problems)
                              + "\n  (skip=[...] the parameters that should start fresh)")
    return {p.name: ckpt.weights[p.name].copy() for p in model.graph.params if p.name not in skipped}
