"""Which model and which recipe a command means: `dslc train FILE [--as NAME] [--set k=v]`.

A file may hold several models and several `train` blocks. Without --as, the recipe is
the one for the file's first model (the one named after it, i.e. without `as`, first);
with --as NAME, recipe NAME and the model it trains. `--set` keys that are recipe
settings (`epochs`, `optimizer.lr`: the first dotted part is a key of recipe.KEYS) change
the recipe; every other key is a hyper-parameter of the model (`hidden=64`).

    model, recipe = model_and_recipe("models/digits_mlp.net", sets={"epochs": 5, "hidden": 64})
"""
from __future__ import annotations

from typing import Any

from dslc.model import load
from dslc.diagnostics import did_you_mean
from dslc.recipe import schema as R
from dslc.frontend.program import load_program
from dslc.recipe.overrides import apply_overrides
from dslc.frontend.values import literals
from dslc.runtime.errors import TrainError


def split_sets(sets: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(recipe settings, model hyper-parameters) of the --set pairs."""
    is_recipe = lambda key: key.split(".", 1)[0] in R.KEYS
    return ({k: v for k, v in sets.items() if is_recipe(k)}, {k: v for k, v in sets.items() if not is_recipe(k)})


def model_and_recipe(file, as_name: str | None = None, sets: dict[str, Any] | None = None,
                     model: str | None = None):
    """(Model, checked Recipe with the --set overrides) for a command on `file` (see the module
    doc); without `as_name`, the recipe of `model` (default: the file's first model)."""
    recipe_sets, model_sets = split_sets(sets or {})
    program = load_program(file)
    trains = {t.alias or t.model: t for t in program.trains}
    if as_name is not None:
        if as_name not in trains:
            hint = did_you_mean(as_name, trains) or (f"its recipes: {', '.join(trains)}" if trains else
                                                     "it has no train block")
            raise TrainError(f"{file}: no recipe named '{as_name}'; {hint}")
        model_name = trains[as_name].model
    else:
        model_name = program.default_model() if model is None else model
        if model_name not in program.models:  # (a train block's model is checked by load below)
            hint = did_you_mean(model_name, program.models) or f"it defines: {', '.join(program.models)}"
            raise TrainError(f"{file}: no model named '{model_name}'; {hint}")
        mine = sorted((t for t in program.trains if t.model == model_name), key=lambda t: t.alias is not None)
        if not mine:
            raise TrainError(f"{file}: no `train` block for model '{model_name}'; add one, e.g. "
                             f"`train {model_name} {{ data = digits() }}`")
        as_name = mine[0].alias or mine[0].model
    loaded = load(file, model=model_name, **literals(model_sets))  # checks every recipe of the file too
    recipes, _ = R.program_recipes(loaded.program, lambda m: loaded.graph if m == loaded.name else None)
    return loaded, apply_overrides(recipes[as_name], recipe_sets, loaded.graph)
