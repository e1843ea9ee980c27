"""The stages of a model's graph, by name: what `dslc inspect --stage` shows.

    typed       the elaborated, shape-checked graph (inference semantics)
    train       training-mode lowering: batch statistics, dropout masks, running-stat updates
    backward    train, plus the gradient of the loss w.r.t. every trainable parameter
    train_step  backward, plus the optimizer update: one whole training step
    infer       the forward a deployed model runs: no loss, no dropout

    g = build(dslc.load("models/mlp.net"), "train_step", Optimizer("adam", lr=1e-3))
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, TypeVar

from dslc.diagnostics import CompileError, UsageError, did_you_mean
from dslc.recipe import schema as recipe
from dslc.ir.graph import Graph
from dslc.ir.verify import maybe_check
from dslc.model import Model
from dslc.passes.autodiff import differentiate, trainable_params
from dslc.passes.infer import inference
from dslc.passes.train_mode import lower
from dslc.passes.train_step import Optimizer, train_step

T = TypeVar("T")
STAGES = ("typed", "train", "backward", "train_step", "infer")
DEFAULT_OPTIMIZER = Optimizer("sgd", lr=0.01)


def build(model: Model, stage: str, optimizer: "Optimizer | Mapping | None" = None,
          frozen: Iterable[str] = ()) -> Graph:
    """The graph of `model` at `stage`; backward and train_step need a loss (E0401 otherwise).

    train_step uses `optimizer`, else the optimizer (and `freeze` list, unless `frozen` is
    given) of the model's training recipe, else DEFAULT_OPTIMIZER (plain SGD, lr 0.01). A mistake a
    pass reports without a location (no loss, nothing to infer) is located at the model's name.
    """
    if stage not in STAGES:
        hint = did_you_mean(stage, STAGES)
        raise UsageError(f"unknown stage '{stage}'; stages: {', '.join(STAGES)}" + (f" ({hint})" if hint else ""))
    def build_stage():
        nonlocal optimizer, frozen
        clip = None
        if stage == "train_step" and optimizer is None:
            optimizer, recipe_frozen, clip = recipe_settings(model)
            frozen = frozen or recipe_frozen
        return maybe_check(_build(model.graph, stage, optimizer, frozen, clip), stage)

    return located_at_model(model, build_stage)


def located_at_model(model: Model, build: Callable[[], T]) -> T:
    """Run `build`; a CompileError it raises without a location (a pass found no loss,
    nothing to infer) is placed at the model's name, with the model's sources to quote."""
    try:
        return build()
    except CompileError as err:
        mdef = model.program.models.get(model.name)
        for d in err.diagnostics:
            d.span = d.span or (mdef.name_span if mdef is not None else None)
        err.sources = model.program.sources
        raise


def recipe_settings(model: Model) -> tuple[Optimizer, list[str], float | None]:
    """The optimizer, frozen parameters and gradient-clipping norm of the recipe that trains
    `model` (the one named after it first), or (DEFAULT_OPTIMIZER, [], None) when no recipe
    does; a broken recipe is an error."""
    settings = model.recipe()
    if settings is None:
        return DEFAULT_OPTIMIZER, [], None
    clip = settings["clip"]["max_norm"] if settings["clip"] else None
    return (Optimizer.from_recipe(settings["optimizer"]), recipe.select_params(model.graph, settings["freeze"]),
            clip)


def _build(graph: Graph, stage: str, optimizer, frozen, clip=None) -> Graph:
    if stage == "typed":
        return graph
    if stage == "train":
        return lower(graph)
    if stage == "backward":
        return differentiate(lower(graph), [p.name for p in trainable_params(graph)])
    if stage == "train_step":
        return train_step(graph, optimizer, frozen, clip)
    return inference(graph)
