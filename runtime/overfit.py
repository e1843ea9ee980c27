"""`dslc train --overfit N`: can the model learn N examples by heart?

The lectures' first experiment with a new model: take a tiny subset of the training data,
turn regularisation off, and train until the training loss is near zero. A model that
cannot fit twenty examples has a bug (a wrong gradient, a learning rate far off, labels
that do not match their inputs), and finding it on twenty examples takes seconds.

What changes for the run, and nothing else: the data is N examples of the training split
(seeded by the recipe's seed; no validation or test), the batch at most N, the rate
constant (a decay to zero would stop it short of zero loss), augmentation off, the
optimizer's weight decay 0, penalty terms and dropout off (passes/unregularise.py),
no periodic checkpoints or early stopping, and training stops once an epoch's loss is
below TARGET. Without --epochs it runs about STEPS steps.

    model, recipe, changes = setup(model, recipe, 20)
    result = train(model, recipe, out, options=Options(examples=20, stop_below=TARGET))
    print(verdict(result, 20))
"""
from __future__ import annotations

import math

from dslc.recipe.overrides import apply_overrides
from dslc.model import Model
from dslc.passes.unregularise import unregularised
from dslc.runtime.runs import read_records

TARGET = 0.01  # "near zero": a training loss below this on N examples
STEPS = 300  # the default length of the run, in steps


def setup(model, recipe, n: int, epochs_given: bool = False):
    """(model, recipe) for overfitting `n` examples, and the changes made, for the banner."""
    batch = min(recipe["batch"], n)
    warmup = recipe["schedule"]["warmup"]
    sets: dict = {"augment": "[]", "optimizer.weight_decay": 0.0, "batch": batch, "checkpoint": "none",
                  "stop": "none", "keep": "none", "schedule": f"constant(warmup={warmup!r})"}
    if not epochs_given:  # and longer than the warmup kept, which a large N would not be
        sets["epochs"] = max(math.ceil(STEPS / math.ceil(n / batch)), math.floor(warmup) + 1)
    recipe = apply_overrides(recipe, sets, model.graph)
    graph, changed = unregularised(model.graph)
    changes = [f"{n} training examples", f"batch {batch}", "a constant rate", "augmentation off", "weight decay 0"]
    if changed:
        changes.append(f"{changed} penalty or dropout node{'s' if changed > 1 else ''} off")
    return Model(model.program, model.name, graph, model.overrides), recipe, changes


def verdict(result, n: int) -> tuple[bool, str]:
    """(reached, the sentence the command prints) from a finished overfitting run."""
    records = read_records(result.run / "metrics.jsonl")
    losses = [(r["train_loss"], r["epoch"]) for r in records if r.get("train_loss") is not None]
    if not losses:
        return False, f"overfit {n} examples: no epoch finished"
    low, epoch = min(losses)
    if low < TARGET:
        return True, (f"overfit {n} examples: training loss {low:.4g} at epoch {epoch} ({result.steps} steps), "
                      f"below {TARGET:g}: the model can fit its data")
    return False, (f"overfit {n} examples: the training loss did not reach {TARGET:g} (lowest {low:.4g} at epoch "
                   f"{epoch} of {result.epochs}). Something keeps the model from learning: try a larger or smaller "
                   "learning rate (dslc lr-find), check the gradients (dslc gradcheck), and that labels match inputs")
