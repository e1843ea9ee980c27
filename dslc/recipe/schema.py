"""Training recipes: `train MODEL [as NAME] { key = value }` checked against one schema.

A recipe says how to train, never what to compute; the trainer gives each setting its
effect. Here every setting is declared once (`KEYS`, with its type, default and meaning)
and the AST values are turned into a frozen, JSON-able `Recipe` whose calls are
`CallValue`s with every argument present (defaults filled in). A call's arguments may be
given by position, in the order shown, or by name; a bare name stands for a call without
arguments (`schedule = constant`); `key = none` turns an optional setting off.

    data       digits() | mnist(dir) | fashion_mnist(dir) | cifar10(dir) | cifar100(dir, labels=fine)
               | npz(path, x="x", y="y") | csv(path, label="label") | image_folder(dir, size);
               each also takes `classes=[...]` (keyword only): keep those classes       required
    split      validation(fraction, test=0, seed=0) | none         validation(0.1, test=0, seed=0)
    normalize  none | mean_image | per_channel (statistics of the training split)      per_channel
    augment    [hflip(p=0.5), random_crop(size, pad=0), random_resized_crop(size, scale=[0.08, 1.0]),
                color_jitter(brightness=0, contrast=0, saturation=0), cutout(size), mixup(alpha)]   []
    batch      int > 0                                                                    64
    epochs     int > 0, or none when `steps` is given                                     10
    steps      int > 0 optimiser steps instead of epochs (not both)                       none
    optimizer  sgd(lr, momentum=0, nesterov=false, weight_decay=0) | adagrad(lr, eps=1e-8,
               weight_decay=0) | rmsprop(lr, decay=0.99, eps=1e-8, weight_decay=0)
               | adam(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0)
               | adamw(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)    adam()
    schedule   constant() | step(every, gamma=0.1) | exponential(k) | inverse_time(k)
               | inverse_sqrt(start=1) | linear(min_lr=0) | cosine(min_lr=0)
               | cosine_restarts(period, mult=1, min_lr=0) | cyclical(low, high, period)
               | one_cycle(max_lr, pct=0.3) | reduce_on_plateau(metric=val_loss, factor=0.1,
               patience=3, mode, threshold=1e-4, min_lr=0); each also takes `warmup=EPOCHS`
               (keyword only); time is counted in epochs                                  constant()
    lr         float > 0, shorthand for the optimizer's lr argument (moved there)
    weight_decay  float >= 0, shorthand for the optimizer's weight_decay argument (moved there)
    clip       norm(max_norm) or a bare number: clip gradients to this global L2 norm   none
    stop       early(metric=val_loss, patience=5, mode=min|max, min_delta=0); mode defaults to
               min for a metric ending in "loss", else max; metrics: train_/val_ + loss or a
               metric of the model                                                    none
    checkpoint every(n): save the last and best weights every n epochs | none           every(1)
    keep       every(n) | restarts (each minimum of a cosine_restarts or cyclical rate):
               snapshot checkpoints in snapshots/epoch-NNNN, for `dslc ensemble --snapshots`  none
    init       checkpoint(path, skip=[globs]) | none                                     none
    freeze     [globs] of parameters (or layers: a glob may match any dotted prefix)    []
    seed       int in [0, 2**32 - 1]                                                     0
    device     cpu | gpu | auto (the cpu until the current CUDA path passes on a GPU)     auto
    ranks      int > 0: data-parallel processes, started with mpiexec (runtime/mpi.py) when
               dslc is not under a launcher already; none: as many as the launcher started   none
    sync_batchnorm  true: batchnorm's batch statistics over all ranks' examples    false

Diagnostics (E05xx):
    E0501 unknown setting            E0507 a required setting is missing (data; epochs or steps)
    E0502 value of the wrong type    E0508 a setting given twice in one recipe
    E0503 unknown call or choice     E0509 a glob (freeze, init skip) matches no parameter
    E0504 unknown, missing, repeated or surplus argument of a call
    E0505 value out of range         E0510 the recipe trains a model that does not exist
    E0506 settings that conflict     E0511 two recipes share a name
    E0508 also: a class listed twice in `classes=`, or mixup twice in `augment`
    E0512 (warning) a glob matches only layers without parameters, so it selects nothing
    E0513 a crop (random_crop, random_resized_crop) whose size is not the model input's H x W
    E0514 the recipe freezes every trainable parameter, so nothing would train
    E0515 a mistake in the search block: an unknown key, not a distribution, bad bounds

A recipe may also hold one `search { KEY = DISTRIBUTION ... }` block, the space `dslc
search` samples (dslc/frontend/recipe_search.py); `Recipe.space` holds its dimensions.

The calls of the big families are declared beside what implements them, as ops are:
datasets in runtime/data/datasets.py, augmentations in runtime/data/augment.py, schedules
in runtime/schedules.py, optimizers in dslc/passes/train_step.py (each module's SCHEMA);
the value types are in dslc/frontend/recipe_values.py, command-line overrides in overrides.py.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from dslc.diagnostics import CompileError, Diagnostic, Span, did_you_mean
from dslc.frontend import ast
from dslc.frontend.recipe_search import Dimension, check_space
from dslc.frontend.recipe_values import (BELOW_ONE, FLAG, FRACTION, INT_POS, NONNEG, NONNEG_NUM, POS, REQUIRED, TEXT,
                                         Arg, Bad, Calls, CallSpec, CallValue, ListOf, Num, Range, Word, arg_expr,
                                         family, when)
from dslc.passes.train_step import SCHEMA as OPTIMIZERS
from dslc.runtime.data.augment import SCHEMA as AUGMENTATIONS, SIZED
from dslc.runtime.data.datasets import SCHEMA as DATASETS
from dslc.runtime.schedules import SCHEMA as SCHEDULES


@dataclass(frozen=True)
class Recipe:
    """A checked recipe with every setting of `KEYS` (off ones are None): recipe["batch"] -> 64."""

    model: str
    name: str
    entries: tuple[tuple[str, Any], ...]
    span: Span | None = field(default=None, compare=False)
    space: tuple[Dimension, ...] = field(default=(), compare=False)  # its search block (recipe_search.py)

    def __getitem__(self, key: str):
        return dict(self.entries)[key]

    def to_json(self) -> dict:
        return {"model": self.model, "name": self.name, "entries": {k: _to_json(v) for k, v in self.entries}}

    @classmethod
    def from_json(cls, data: dict) -> "Recipe":
        return cls(data["model"], data["name"], tuple((k, _from_json(v)) for k, v in data["entries"].items()))


def _to_json(v):
    if isinstance(v, CallValue):
        return {"call": v.name, "args": {k: _to_json(x) for k, x in v.args}}
    return [_to_json(x) for x in v] if isinstance(v, tuple) else v


def _from_json(v):
    if isinstance(v, dict):
        return CallValue(v["call"], tuple((k, _from_json(x)) for k, x in v["args"].items()))
    return tuple(_from_json(x) for x in v) if isinstance(v, list) else v



# ---- the schema: the small families, then every setting -----------------------------

SPLITS = family(CallSpec(
    "validation", "hold out a random fraction of the training data (and a test fraction if none ships)",
    (Arg("fraction", Num(range=FRACTION), doc="share of the examples used for validation"),
     Arg("test", Num(range=BELOW_ONE), 0.0, "share held out for testing when the data has no test set"),
     Arg("seed", Num(True, NONNEG), 0, "seed of the shuffle")),
    when(lambda a: a["fraction"] + a["test"] >= 1, "E0505", "test",
          "validation and test fractions must leave training data, got {fraction} + {test} >= 1")))

CLIPS = family(CallSpec("norm", "rescale gradients whose global L2 norm exceeds max_norm", (Arg("max_norm", POS),)))

STOPS = family(CallSpec(
    "early", "stop when `metric` has not improved by min_delta for `patience` epochs",
    (Arg("metric", Word(), "val_loss", "train_ or val_ + loss or a metric name"), Arg("patience", INT_POS, 5),
     Arg("mode", Word(("min", "max")), lambda a: "min" if a["metric"].endswith("loss") else "max"),
     Arg("min_delta", NONNEG_NUM, 0.0)),
    when(lambda a: not a["metric"].startswith(("train_", "val_")), "E0503", "metric",
          "metric must start with train_ or val_, got '{metric}'")))

CHECKPOINTS = family(CallSpec("every", "save the last and best weights every n epochs", (Arg("n", INT_POS),)))
KEEPS = family(CallSpec("every", "keep a snapshot every n epochs", (Arg("n", INT_POS),)),
               CallSpec("restarts", "keep a snapshot at each minimum of the learning rate: the end of each cycle "
                        "of cosine_restarts or cyclical (a snapshot ensemble)"))
RESTARTING = ("cosine_restarts", "cyclical")  # the schedules whose rate has minima before the end
INITS = family(CallSpec("checkpoint", "start from saved weights, except the parameters the skip globs match",
                        (Arg("path", TEXT, doc="checkpoint or run directory"), Arg("skip", ListOf(TEXT), ()))),
               CallSpec("torch_weights", "start from a PyTorch state_dict (.safetensors, or .pt read weights-only), "
                        "except the parameters the skip globs match",
                        (Arg("path", TEXT, doc="state_dict file"), Arg("skip", ListOf(TEXT), ()),
                         Arg("mapping", TEXT, None, "JSON file {torch name: dslc name or null}"))))


@dataclass(frozen=True)
class Key:
    """One recipe setting. `optional`: `none` turns it off; `excludes`: the setting it cannot go with;
    `moves_to`: (setting, argument) it is shorthand for. `after_training`: the commands on
    a trained run (eval, ensemble, explain) take the run's own --set of it, for it decides which
    examples the model is evaluated on (split). Settings that only shaped training (epochs,
    optimizer, seed) are not taken, nor is `data`: it names files, and a run's files never
    choose what dslc reads (eval warns when the run's data was another)."""

    name: str
    type: Any
    default: Any
    doc: str
    optional: bool = False
    excludes: str | None = None
    moves_to: tuple[str, str] | None = None
    after_training: bool = False


KEYS = {k.name: k for k in (
    Key("data", Calls(DATASETS, "dataset"), REQUIRED, "the examples to train on"),
    Key("split", Calls(SPLITS, "split"), SPLITS["validation"].make(fraction=0.1), "validation hold-out", True,
        after_training=True),
    Key("normalize", Word(("none", "mean_image", "per_channel")), "per_channel", "input standardisation"),
    Key("augment", ListOf(Calls(AUGMENTATIONS, "augmentation")), (), "random transforms of training images"),
    Key("batch", INT_POS, 64, "examples per optimiser step"),
    Key("epochs", INT_POS, 10, "passes over the training split", True, excludes="steps"),
    Key("steps", INT_POS, None, "optimiser steps, instead of epochs", True, excludes="epochs"),
    Key("optimizer", Calls(OPTIMIZERS, "optimizer"), OPTIMIZERS["adam"].make(), "the update rule"),
    Key("schedule", Calls(SCHEDULES, "schedule"), SCHEDULES["constant"].make(), "learning rate over time"),
    Key("lr", POS, None, "the optimizer's lr", moves_to=("optimizer", "lr")),
    Key("weight_decay", NONNEG_NUM, None, "the optimizer's weight_decay", moves_to=("optimizer", "weight_decay")),
    Key("clip", Calls(CLIPS, "clipping rule", bare_number="norm"), None, "gradient clipping", True),
    Key("stop", Calls(STOPS, "stopping rule"), None, "early stopping", True),
    Key("checkpoint", Calls(CHECKPOINTS, "checkpoint rule"), CHECKPOINTS["every"].make(n=1), "saving", True),
    Key("keep", Calls(KEEPS, "snapshot rule"), None, "snapshots kept in snapshots/ for ensembles", True),
    Key("init", Calls(INITS, "initialisation"), None, "initial weights", True),
    Key("freeze", ListOf(TEXT), (), "globs of parameters kept fixed"),
    Key("seed", Num(True, Range(0, 2**32 - 1)), 0, "seed of initialisation, shuffling and augmentation"),
    Key("device", Word(("cpu", "gpu", "auto")), "auto", "where to train"),
    Key("ranks", INT_POS, None, "data-parallel processes (MPI ranks); none: the launcher's", True),
    Key("sync_batchnorm", FLAG, False, "batchnorm statistics over the examples of every rank"),
)}


def defaults(model: str = "", name: str | None = None) -> Recipe:
    """The settings an empty `train MODEL {}` gets (data, which has no default, is None)."""
    entries = tuple((k.name, None if k.default is REQUIRED else k.default) for k in KEYS.values() if not k.moves_to)
    return Recipe(model, name or model, entries)


# ---- checking a train block ------------------------------------------------------

def validate(train: ast.TrainDef, model_graph=None, hyper: dict[str, str] | None = None) -> tuple[Recipe, list[Diagnostic]]:
    """Check one train block: the Recipe (bad settings keep their defaults) and every mistake found.

    `model_graph` (the model's typed Graph) enables the checks of freeze/skip globs and stop metrics;
    `hyper` (the model's hyper-parameters and their types) those of the search block's keys.
        recipe, errors = validate(module.trains[0])
    """
    errors: list[Diagnostic] = []
    values = {k.name: k.default for k in KEYS.values()}
    given: dict[str, ast.RecipeEntry] = {}  # the settings written and accepted
    seen: dict[str, ast.RecipeEntry] = {}
    for entry in train.entries:
        key = KEYS.get(entry.key)
        if key is None:
            errors.append(Diagnostic("E0501", f"unknown recipe setting '{entry.key}'", entry.key_span,
                                     did_you_mean(entry.key, KEYS) or f"settings: {', '.join(KEYS)}"))
            continue
        if entry.key in seen:
            errors.append(Diagnostic("E0508", f"'{entry.key}' is set twice", entry.key_span)
                          .with_note(seen[entry.key].key_span, "first set here"))
            continue
        seen[entry.key] = entry
        try:
            optional_off = key.optional and isinstance(entry.value, ast.Name) and entry.value.id == "none"
            values[entry.key] = None if optional_off else key.type.convert(entry.value, entry.key, errors)
            given[entry.key] = entry
        except Bad as bad:
            errors.extend([bad.diag] if bad.diag else [])
    _cross_check(values, given, train, errors)
    if model_graph is not None:
        _graph_check(values, given, model_graph, errors)
    if values["data"] is REQUIRED:
        values["data"] = None
        if "data" not in seen:
            errors.append(Diagnostic("E0507", f"recipe '{train.alias or train.model}' has no data",
                                     train.model_span, "add e.g. `data = digits()`"))
    space, found = check_space(train.searches, values, KEYS, hyper)
    entries = tuple((k, v) for k, v in values.items() if not KEYS[k].moves_to)
    return Recipe(train.model, train.alias or train.model, entries, train.span, space), errors + found


def _cross_check(values: dict, given: dict[str, ast.RecipeEntry], train: ast.TrainDef, errors) -> None:
    """The rules that involve two settings: exclusive pairs, shorthands, lengths and metrics."""
    for key in KEYS.values():
        other = key.excludes
        if other and key.name in given and other in given and None not in (values[key.name], values[other]):
            if key.name < other:  # report each pair once
                errors.append(Diagnostic("E0506", f"give '{key.name}' or '{other}', not both",
                                         given[other].span).with_note(given[key.name].span, "also set here"))
        elif other and key.name not in given and other in given and values[other] is not None:
            values[key.name] = None  # the default gives way to the setting written
    if values["epochs"] is None and values["steps"] is None:
        span = (given.get("epochs") or given.get("steps") or train).span
        errors.append(Diagnostic("E0507", "the recipe needs epochs or steps", span))
    for key in KEYS.values():
        if key.moves_to and key.name in given:
            target, arg = key.moves_to
            spec = KEYS[target].type.family[values[target].name]
            if target in given and arg_expr(given[target].value, spec, arg) is not None:
                errors.append(Diagnostic("E0506", f"'{key.name}' is also set in {target}", given[key.name].span)
                              .with_note(given[target].span, f"{target} sets {arg} here"))
            else:
                values[target] = values[target].with_arg(arg, values[key.name])
    written = _items(given["augment"].value) if "augment" in given else ()
    mixups = [e for call, e in zip(values["augment"], written) if call.name == "mixup"]
    if len(mixups) > 1:  # one mixup blends each batch (runtime/data/augment.py: build_augment)
        errors.append(Diagnostic("E0508", "augment: mixup is given more than once", mixups[1].span,
                                 "keep one mixup(alpha)").with_note(mixups[0].span, "first given here"))
    sched, opt = values["schedule"], values["optimizer"]
    where = given["schedule"].value if "schedule" in given else None
    if sched.name in ("cosine", "cosine_restarts", "linear") and sched["min_lr"] >= opt["lr"]:
        span = (arg_expr(where, SCHEDULES[sched.name], "min_lr") or where or train).span
        errors.append(Diagnostic("E0505", f"schedule {sched.name}(): min_lr ({sched['min_lr']:g}) must be below the "
                                 f"optimizer's lr ({opt['lr']:g})", span))
    if values["epochs"] is not None and sched["warmup"] >= values["epochs"]:
        span = (arg_expr(where, SCHEDULES[sched.name], "warmup") or where or train).span
        error = Diagnostic("E0505", f"schedule {sched.name}(): warmup ({sched['warmup']:g} epochs) must be "
                           f"shorter than training ({values['epochs']} epochs)", span)
        errors.append(error.with_note(given["epochs"].span, "training's epochs are set here") if "epochs" in given
                      else error)
    keep = values["keep"]
    if keep is not None and keep.name == "restarts" and sched.name not in RESTARTING:
        errors.append(Diagnostic("E0506", f"keep = restarts, but schedule {sched.name}() never restarts, so only "
                                 "the last epoch would be kept", given["keep"].span,
                                 "use schedule = cosine_restarts(period) or cyclical(...), or keep = every(n)"))
    for setting in ("stop", "schedule"):
        call = values[setting]
        watched = call["metric"] if call is not None and call.name in ("early", "reduce_on_plateau") else None
        if watched is not None and watched.startswith("val_") and values["split"] is None:
            errors.append(Diagnostic("E0506", f"{setting} watches '{watched}' but split = none leaves no validation "
                                     "data", (given.get(setting) or train).span).with_note(given["split"].span, "here"))


def _items(e) -> tuple:
    """The expressions a list was written with: a list's items, or a lone value as a list
    of one (as ListOf reads it)."""
    return e.items if isinstance(e, ast.ListLit) else (e,)


def _graph_check(values: dict, given: dict[str, ast.RecipeEntry], graph, errors) -> None:
    """Checks that need the model: globs must select parameters, stop must watch a real metric,
    crops must give images of the size the model reads."""
    globs: list[tuple[str, Any]] = []  # (pattern, the expression that wrote it)
    if "freeze" in given:
        globs += zip(values["freeze"], _items(given["freeze"].value))
    if values["init"] is not None and "init" in given:
        globs += zip(values["init"]["skip"], _items(arg_expr(given["init"].value, INITS["checkpoint"], "skip")))
    names = [p.name for p in graph.params]
    layers = sorted(_prefixes(n.name for n in graph.nodes if n.op != "input"))
    for pattern, expr in globs:
        if select_params(graph, [pattern]):
            continue
        hit = [name for name in layers if fnmatch.fnmatchcase(name, pattern)]
        if hit:  # e.g. a labelled pooling layer: legal, but the glob selects nothing
            errors.append(Diagnostic("E0512", f"'{pattern}' matches only layers without parameters "
                                     f"({', '.join(hit[:3])}), so it selects nothing", expr.span, severity="warning"))
            continue
        errors.append(Diagnostic("E0509", f"'{pattern}' matches no parameter of model '{graph.name}'",
                                 expr.span, did_you_mean(pattern.replace("*", ""), _prefixes(names))
                                 or f"parameters: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"))
    trainable = [p.name for p in graph.params if p.attr("trainable")]
    if "freeze" in given and trainable and set(trainable) <= set(select_params(graph, values["freeze"])):
        errors.append(Diagnostic("E0514", f"freeze selects every trainable parameter of model '{graph.name}', "
                                 "so nothing would train", given["freeze"].value.span,
                                 "freeze fewer parameters, or evaluate the model with `dslc eval` instead"))
    known = ["loss"] + [o.name for o in graph.outputs_of("metric")]
    metrics = [f"{p}_{m}" for p in ("train", "val") for m in known]
    for key, spec in (("stop", STOPS["early"]), ("schedule", SCHEDULES["reduce_on_plateau"])):
        call = values[key]
        if call is not None and call.name == spec.name and key in given and call["metric"] not in metrics:
            e = arg_expr(given[key].value, spec, "metric") or given[key].value
            errors.append(Diagnostic("E0503", f"model '{graph.name}' has no metric '{call['metric']}'", e.span,
                                     did_you_mean(call["metric"], metrics) or f"metrics: {', '.join(metrics)}"))
    _crop_check(values, given, graph, errors)


def _crop_check(values: dict, given: dict[str, ast.RecipeEntry], graph, errors) -> None:
    """A crop's images are `size` x `size` (augment.SIZED), and the model reads them as they
    come: `size` must be the H x W of its image input [N, C, H, W]. A flattened input (an
    MLP's f32[N, 64]) does not say the side: Layout.feeds (runtime/layout.py) names that
    mistake at the first step."""
    images = [n for n in graph.inputs if n.type.is_float and n.type.rank == 4]
    if len(images) != 1 or not all(isinstance(d, int) for d in images[0].type.shape[2:]):
        return
    image, (h, w) = images[0], images[0].type.shape[2:]
    written = _items(given["augment"].value) if "augment" in given else ()
    for call, e in zip(values["augment"], written):
        if call.name in SIZED and (call["size"], call["size"]) != (h, w):
            size = call["size"]
            hint = None if h != w else (f"random_crop({h}, pad=N) pads by N pixels and crops back to {h}x{h}"
                                        if call.name == "random_crop" else f"{call.name}({h}) gives {h}x{h} images")
            errors.append(Diagnostic("E0513", f"augment {call.name}({size}) gives {size}x{size} images, but input "
                                     f"'{image.name}' of model '{graph.name}' is {image.type.show()}",
                                     (arg_expr(e, AUGMENTATIONS[call.name], "size") or e).span, hint)
                          .with_note(image.span, f"input '{image.name}' is declared here"))


def _prefixes(names) -> set[str]:
    """Every dotted prefix of the names: a.b.c -> a, a.b, a.b.c (the layers and blocks a name is in)."""
    return {".".join(parts[:i]) for n in names for parts in [n.split(".")] for i in range(1, len(parts) + 1)}


def select_params(graph, patterns) -> list[str]:
    """The parameters (state such as running means included) a glob list selects: a glob
    matches a parameter's name or a layer or block it is in (a dotted prefix).

        select_params(g, ["stem*"]) -> ["stem.linear.weight", "stem.linear.bias"]
    """
    return [p.name for p in graph.params
            if any(fnmatch.fnmatchcase(prefix, pat) for prefix in _prefixes([p.name]) for pat in patterns)]


# ---- every recipe of a program ----------------------------------------------------

def program_recipes(program, graph_of: Callable[[str], Any] | None = None):
    """Check every train block of a Program: ({recipe name: Recipe}, diagnostics).

    `graph_of(model_name)` builds a model's graph, called only for recipes that need it
    (freeze, init, stop); a model that does not compile is reported elsewhere and skipped here.
    """
    recipes: dict[str, Recipe] = {}
    errors: list[Diagnostic] = []
    for train in program.trains:
        name = train.alias or train.model
        if train.model not in program.models:
            errors.append(Diagnostic("E0510", f"recipe trains unknown model '{train.model}'", train.model_span,
                                     did_you_mean(train.model, program.models)
                                     or f"models: {', '.join(program.models) or 'none'}"))
            continue
        if name in recipes:
            errors.append(Diagnostic("E0511", f"two recipes are named '{name}'", train.model_span,
                                     "name one with `train MODEL as NAME`")
                          .with_note(recipes[name].span, "first recipe here"))
            continue
        graph = None
        if graph_of is not None and any(_needs_graph(e) for e in train.entries):
            try:
                graph = graph_of(train.model)
            except CompileError:
                graph = None
        hyper = {f.name: f.type for f in program.models[train.model].formals if f.type is not None}
        recipes[name], found = validate(train, graph, hyper)
        errors += found
    return recipes, errors


def _needs_graph(entry: ast.RecipeEntry) -> bool:
    """Whether checking `entry` needs the model's graph: globs, watched metrics and crop sizes."""
    watches = entry.key == "schedule" and getattr(entry.value, "func", None) == "reduce_on_plateau"
    return entry.key in ("freeze", "init", "stop", "augment") or watches


def validate_program(program, graph_of: Callable[[str], Any] | None = None) -> list[Diagnostic]:
    """Every mistake in the train blocks of a Program (see program_recipes)."""
    return program_recipes(program, graph_of)[1]
