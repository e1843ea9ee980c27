"""Training recipes checked against what the runtime can do.

    schema.py     every recipe setting (KEYS), the checked Recipe, validation of a train block
    overrides.py  command-line `--set` pairs applied to a recipe, as values, never as source

The vocabulary a recipe is written in (value types, calls, search dimensions) lives with the
front end (dslc/frontend/recipe_values.py, recipe_search.py); the calls each runtime component
accepts are declared beside its code (datasets and augmentations in runtime/data/, schedules
in runtime/schedules.py, optimizers in dslc/passes/train_step.py). This package gathers
them, so it sits above those components and below the model API and the trainer.
"""
