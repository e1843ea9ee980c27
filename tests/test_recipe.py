"""Training recipes: the sketch's recipes, one test per kind of mistake, overrides, JSON."""
from __future__ import annotations

import json
import pickle

import pytest

from dslc.diagnostics import UsageError
from dslc.frontend import ast
from dslc.recipe import schema as R
from dslc.frontend.parse import parse
from dslc.frontend.program import load_program
from dslc.recipe.overrides import Flagged, apply_overrides
from dslc.frontend.resolve import elaborate
from helpers import FIXTURES

SKETCH = FIXTURES / "language-sketch.net"  # the language's design sketch, kept as a fixture

MLP = """
model mlp(hidden: int = 32) {
    input x : f32[N, 64]
    input y : i64[N]
    stem: h = x |> linear(hidden) |> relu
    head: logits = h |> linear(10)
    metric accuracy(logits, y)
    loss cross_entropy(logits, y)
}
"""


def check(body: str, graph=None, model: str = "m"):
    """Validate `train MODEL { body }`, the body starting on line 2 at column 5."""
    module = parse(f"train {model} {{\n    " + body.strip().replace("\n", "\n    ") + "\n}\n", "r.net")
    return R.validate(module.trains[0], graph)


def only_error(body: str, graph=None):
    recipe, errors = check(body, graph)
    assert len(errors) == 1, [e.message for e in errors]
    return errors[0]


@pytest.fixture(scope="module")
def mlp_program(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "mlp.net"
    path.write_text(MLP)
    return load_program(path)


@pytest.fixture(scope="module")
def mlp_graph(mlp_program):
    return elaborate(mlp_program, "mlp")


# ---- the sketch -------------------------------------------------------------------

def test_sketch_recipes_validate_cleanly():
    first, second = parse(SKETCH.read_text(), "sketch.net").trains
    r1, e1 = R.validate(first)
    r2, e2 = R.validate(second)
    assert e1 == [] and e2 == []
    assert (r1.name, r2.name) == ("resnet_tiny", "finetune")
    assert r1["optimizer"] == R.CallValue("sgd", (("lr", 0.1), ("momentum", 0.9), ("nesterov", True),
                                                  ("weight_decay", 5e-4), ("decay_roles", ("weight",))))
    assert r1["schedule"]["warmup"] == 2.0 and r1["schedule"]["min_lr"] == 0.0
    assert r1["stop"].kwargs == {"metric": "val_accuracy", "patience": 5, "mode": "max", "min_delta": 0.0}
    assert r1["augment"] == (R.CallValue("hflip", (("p", 0.5),)),
                             R.CallValue("random_crop", (("size", 32), ("pad", 4))))
    assert r1["split"]["fraction"] == 0.1 and r1["epochs"] == 30 and r1["steps"] is None
    assert r2["freeze"] == ("stem*", "residual*") and r2["init"]["skip"] == ("linear*",)
    assert r2["optimizer"]["beta2"] == 0.999 and r2["batch"] == 64  # defaults filled in


def test_every_setting_is_documented_in_the_module_docstring():
    for key in R.KEYS:
        assert f"\n    {key} " in R.__doc__, key


# ---- values ---------------------------------------------------------------------

def test_shorthands_and_defaults():
    recipe, errors = check("data = digits\nschedule = constant\nclip = 5\naugment = hflip()\n"
                           "stop = early(metric=val_loss)\nsteps = 100\ncheckpoint = none")
    assert errors == []
    assert recipe["data"] == R.CallValue("digits", (("classes", ()),)) and recipe["schedule"]["warmup"] == 0.0
    assert recipe["clip"] == R.CallValue("norm", (("max_norm", 5.0),))
    assert recipe["augment"] == (R.CallValue("hflip", (("p", 0.5),)),)
    assert recipe["stop"]["mode"] == "min"  # derived from a metric that ends in loss
    assert recipe["epochs"] is None and recipe["steps"] == 100 and recipe["checkpoint"] is None
    assert recipe["optimizer"] == R.defaults()["optimizer"]
    recipe, errors = check("data = digits()\nepochs = 1e2\nclip = norm(max_norm=1)")
    assert errors == [] and recipe["epochs"] == 100 and recipe["clip"]["max_norm"] == 1.0
    d = only_error("data = digits()\nfreeze = 5")
    assert d.message == "freeze must be a list (each a string), got the number 5"


def test_lr_is_shorthand_for_the_optimizers_rate():
    recipe, errors = check("data = digits()\noptimizer = adam(beta1=0.8)\nlr = 0.03")
    assert errors == [] and recipe["optimizer"]["lr"] == 0.03 and recipe["optimizer"]["beta1"] == 0.8
    _, errors = check("data = digits()\noptimizer = sgd(lr=0.1)\nlr = 0.03")
    assert [e.code for e in errors] == ["E0506"] and "'lr' is also set in optimizer" in errors[0].message


def test_weight_decay_moves_into_the_optimizer():
    recipe, errors = check("data = digits()\noptimizer = sgd(0.1, 0.9)\nweight_decay = 1e-4")
    assert errors == []
    assert recipe["optimizer"]["weight_decay"] == 1e-4 and recipe["optimizer"]["momentum"] == 0.9
    assert "weight_decay" not in dict(recipe.entries)


def test_defaults_recipe():
    d = R.defaults("m")
    assert d["batch"] == 64 and d["epochs"] == 10 and d["data"] is None and d["normalize"] == "per_channel"
    assert d["optimizer"].kwargs == {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
                                     "decay_roles": ("weight",)}
    assert d["split"].kwargs == {"fraction": 0.1, "test": 0.0, "seed": 0} and d["seed"] == 0
    assert [k for k, _ in d.entries] == [k for k in R.KEYS if k not in ("lr", "weight_decay")]


def test_json_and_expression_round_trip():
    recipe, errors = check('data = csv("a \\"b\\".csv", label="y")\naugment = [random_resized_crop(24), '
                           'color_jitter(0.1, 0.2)]\noptimizer = rmsprop(0.01)\nschedule = step(5, warmup=1)\n'
                           'init = checkpoint("runs/x", skip=["head*"])\nfreeze = "stem*"\nstop = early(patience=2)')
    assert errors == []
    text = json.dumps(recipe.to_json())
    assert R.Recipe.from_json(json.loads(text)) == recipe
    assert apply_overrides(recipe, {}) == recipe  # no override: the recipe itself
    span = recipe.span
    entries = tuple(ast.RecipeEntry(k, R.KEYS[k].type.expr(v, span), span, span) for k, v in recipe.entries
                    if v is not None)
    again, errors = R.validate(ast.TrainDef(recipe.model, None, entries, span, span))
    assert errors == [] and again == recipe  # every value written back as an expression reads the same
    assert recipe["data"]["path"] == 'a "b".csv' and recipe["augment"][0]["scale"] == (0.08, 1.0)


# ---- one test per kind of mistake -----------------------------------------------

@pytest.mark.parametrize("body, code, line, col, words", [
    ("data = digits()\nepoch = 5", "E0501", 3, 5, "unknown recipe setting 'epoch'"),
    ('data = digits()\nbatch = "64"', "E0502", 3, 13, "batch must be an integer, got a string"),
    ("data = digits()\nbatch = 0.5", "E0502", 3, 13, "batch must be an integer"),
    ("data = digits()\nfreeze = [stem]", "E0502", 3, 15, "freeze must be a string, got the name 'stem'"),
    ("data = digits()\noptimizer = sgdd(lr=0.1)", "E0503", 3, 17, "unknown optimizer 'sgdd'"),
    ("data = digits()\nschedule = cosin()", "E0503", 3, 16, "unknown schedule 'cosin'"),
    ("data = cifar(\"d\")", "E0503", 2, 12, "unknown dataset 'cifar'"),
    ("data = digits()\naugment = [hflip(), flip()]", "E0503", 3, 25, "unknown augmentation 'flip'"),
    ("data = digits()\nnormalize = per_chanel", "E0503", 3, 17, "normalize must be one of none, mean_image"),
    ("data = digits()\ndevice = tpu", "E0503", 3, 14, "device must be one of cpu, gpu, auto"),
    ("data = digits()\noptimizer = sgd(lr=0.1, momentun=0.9)", "E0504", 3, 29, "has no argument 'momentun'"),
    ("data = digits()\noptimizer = sgd(momentum=0.9)", "E0504", 3, 17, "sgd() needs argument(s) lr"),
    ("data = digits()\naugment = [hflip(0.5, 0.3)]", "E0504", 3, 27, "takes 1 positional argument(s), got 2"),
    ("data = digits()\noptimizer = sgd(0.1, lr=0.2)", "E0504", 3, 26, "argument 'lr' is given twice"),
    ("data = digits()\noptimizer = adam(lr=0)", "E0505", 3, 25, "optimizer adam(): lr must be > 0, got 0"),
    ("data = digits()\noptimizer = sgd(-0.1)", "E0505", 3, 21, "lr must be > 0, got -0.1"),
    ("data = digits()\naugment = [hflip(p=1.5)]", "E0505", 3, 24, "p must be in [0, 1], got 1.5"),
    ("data = digits()\nbatch = 0", "E0505", 3, 13, "batch must be > 0, got 0"),
    ("data = digits()\nsplit = validation(1.0)", "E0505", 3, 24, "fraction must be in (0, 1), got 1.0"),
    ("data = digits()\nsplit = validation(0.5, test=0.5)", "E0505", 3, 34, "must leave training data"),
    ("data = digits()\nschedule = cosine(warmup=10)", "E0505", 3, 30, "warmup (10 epochs) must be shorter"),
    ("data = digits()\noptimizer = sgd(0.1)\nschedule = cosine(min_lr=0.1)", "E0505", 4, 30,
     "min_lr (0.1) must be below the optimizer's lr (0.1)"),
    ("data = digits()\nschedule = cyclical(0.1, 0.01, 4)", "E0505", 3, 30, "high must exceed low"),
    ("data = digits()\nepochs = 3\nsteps = 100", "E0506", 4, 5, "give 'epochs' or 'steps', not both"),
    ("data = digits()\noptimizer = sgd(0.1, nesterov=true)", "E0506", 3, 35,
     "optimizer sgd(): nesterov=true needs momentum > 0"),
    ("data = digits()\noptimizer = adamw(weight_decay=0.1)\nweight_decay = 0.2", "E0506", 4, 5,
     "'weight_decay' is also set in optimizer"),
    ("data = digits()\nsplit = none\nstop = early(metric=val_accuracy)", "E0506", 4, 5, "leaves no validation data"),
    ("data = digits()\nstop = early(metric=accuracy)", "E0503", 3, 25, "metric must start with train_ or val_"),
    ("batch = 32", "E0507", 1, 7, "recipe 'm' has no data"),
    ("data = digits()\nepochs = none", "E0507", 3, 5, "needs epochs or steps"),
    ("data = digits()\nbatch = 32\nbatch = 16", "E0508", 4, 5, "'batch' is set twice"),
    ("data = digits()\naugment = [mixup(0.2), hflip(), mixup(0.4)]", "E0508", 3, 37, "mixup is given more than once"),
    ("data = digits(classes=[1, 2, 1])", "E0508", 2, 27, "data digits(): classes=[1, 2, 1] lists class 1 twice"),
    ('data = csv("a.csv", classes=[0, 0])', "E0508", 2, 33, "lists class 0 twice"),
    ("data = digits(classes=[11])", "E0505", 2, 27, "data digits(): classes=[11]: class 11 is not one of 0..9"),
    ('data = mnist("d", classes=[3, 10])', "E0505", 2, 31, "class 10 is not one of 0..9"),
    ('data = cifar100("d", labels=coarse, classes=[20])', "E0505", 2, 49, "class 20 is not one of 0..19"),
])
def test_each_mistake_is_located(body, code, line, col, words):
    d = only_error(body)
    assert (d.code, d.span.line, d.span.col) == (code, line, col), (d.code, d.span, d.message)
    assert words in d.message


def test_did_you_mean_hints():
    assert only_error("data = digits()\nepoch = 5").hint == "did you mean 'epochs'?"
    assert only_error("data = digits()\noptimizer = sgdd(0.1)").hint == "did you mean 'sgd'?"
    assert only_error("data = digits()\nnormalize = per_chanel").hint == "did you mean 'per_channel'?"
    assert only_error("data = digits()\noptimizer = sgd(0.1, momentun=0.9)").hint == "did you mean 'momentum'?"
    assert only_error("data = digits()\nbatch = 1\nbatch = 2").notes[0][0].line == 3


def test_several_mistakes_are_reported_together():
    recipe, errors = check("data = digits()\nbach = 3\noptimizer = sgd(lr=-1, momentum=2)\n"
                           "augment = [flip(), cutout()]")
    assert [e.code for e in errors] == ["E0501", "E0505", "E0505", "E0503", "E0504"]
    assert recipe["optimizer"] == R.defaults()["optimizer"]  # a bad setting keeps its default


# ---- checks against the model -----------------------------------------------------

def test_freeze_and_skip_globs_are_matched_against_parameters_and_layers(mlp_graph):
    assert R.select_params(mlp_graph, ["stem"]) == ["stem.linear.weight", "stem.linear.bias"]
    assert R.select_params(mlp_graph, ["*.bias"]) == ["stem.linear.bias", "head.bias"]
    recipe, errors = check('data = digits()\nfreeze = ["stem*", "head.weight"]\n'
                           'init = checkpoint("runs/x", skip=["head"])\nstop = early(metric=train_accuracy)',
                           mlp_graph)
    assert errors == []
    d = only_error('data = digits()\nfreeze = ["stem*", "stm*"]', mlp_graph)
    assert (d.code, d.span.line, d.span.col) == ("E0509", 3, 24)
    assert d.message == "'stm*' matches no parameter of model 'mlp'" and d.hint == "did you mean 'stem'?"
    d = only_error('data = digits()\ninit = checkpoint("runs/x", skip=["linear*"])', mlp_graph)
    assert (d.code, d.span.col) == ("E0509", 39)


def test_a_glob_matching_only_parameterless_layers_is_a_warning(mlp_graph):
    d = only_error('data = digits()\nfreeze = ["stem.relu"]', mlp_graph)
    assert (d.code, d.severity, d.span.col) == ("E0512", "warning", 15)
    assert "matches only layers without parameters (stem.relu)" in d.message


def test_a_crop_gives_images_of_the_model_inputs_size(tmp_path):
    path = tmp_path / "cnn.net"
    path.write_text(MLP.replace("f32[N, 64]", "f32[N, 1, 8, 8]").replace("x |> linear", "x |> flatten |> linear"))
    graph = elaborate(load_program(path), "mlp")
    assert check("data = digits()\naugment = [random_crop(8, pad=1), random_resized_crop(8)]", graph)[1] == []
    d = only_error("data = digits()\naugment = [hflip(), random_crop(6, pad=1)]", graph)
    assert (d.code, d.span.line, d.span.col) == ("E0513", 3, 37)
    assert d.message == "augment random_crop(6) gives 6x6 images, but input 'x' of model 'mlp' is f32[N, 1, 8, 8]"
    assert d.hint == "random_crop(8, pad=N) pads by N pixels and crops back to 8x8" and d.notes[0][0].line == 3
    d = only_error("data = digits()\naugment = random_resized_crop(size=16)", graph)
    assert (d.code, d.span.col) == ("E0513", 40) and "gives 16x16 images" in d.message


def test_a_flat_input_leaves_the_crop_to_the_first_step(mlp_graph):
    assert check("data = digits()\naugment = [random_crop(6)]", mlp_graph)[1] == []  # f32[N, 64]: no side


def test_sketch_recipes_against_the_sketch_model(tmp_path):
    (tmp_path / "blocks.net").write_text("")  # the sketch imports a file of blocks it does not use
    (tmp_path / "sketch.net").write_text(SKETCH.read_text())
    program = load_program(tmp_path / "sketch.net")
    graph = elaborate(program, "resnet_tiny")
    recipes, found = R.program_recipes(program, lambda name: graph)
    # `stem` labels a max-pool: freezing it is legal but selects nothing, hence a warning.
    assert [(d.code, d.severity, d.span.line) for d in found] == [("E0512", "warning", 67)]
    frozen = R.select_params(graph, recipes["finetune"]["freeze"])
    assert frozen and all(name.startswith("residual") for name in frozen)
    assert R.select_params(graph, ["linear*"]) == ["linear.weight", "linear.bias"]


def test_stop_metric_must_exist_in_the_model(mlp_graph):
    d = only_error("data = digits()\nstop = early(metric=val_acuracy)", mlp_graph)
    assert (d.code, d.span.line, d.span.col) == ("E0503", 3, 25)
    assert "no metric 'val_acuracy'" in d.message and d.hint == "did you mean 'val_accuracy'?"


def test_program_recipes(mlp_program, tmp_path):
    path = tmp_path / "p.net"
    path.write_text(MLP + 'train mlp { data = digits()\n freeze = ["nope"] }\ntrain mlp { data = digits() }\n'
                    "train mpl as other { data = digits() }\ntrain mlp as fast { data = digits()\n epochs = 1 }\n")
    program = load_program(path)
    built = []
    recipes, errors = R.program_recipes(program, lambda name: built.append(name) or elaborate(program, name))
    assert sorted(recipes) == ["fast", "mlp"] and built == ["mlp"]  # the graph is built only when needed
    assert [(e.code, e.span.line) for e in errors] == [("E0509", 11), ("E0511", 12), ("E0510", 13)]
    assert "did you mean 'mlp'?" == errors[2].hint and errors[1].notes
    assert R.validate_program(load_program(path)) == [errors[1], errors[2]]  # no graph: no glob check


# ---- command-line overrides -----------------------------------------------------------

@pytest.fixture
def base():
    recipe, errors = check("data = digits()\noptimizer = sgd(lr=0.1, momentum=0.9)\nepochs = 20\n"
                           "stop = early(metric=val_loss)")
    assert errors == []
    return recipe


def test_overrides_set_whole_values_and_arguments(base):
    r = apply_overrides(base, {"epochs": 5, "optimizer.lr": "0.01", "batch": "32", "weight_decay": 1e-4})
    assert r["epochs"] == 5 and r["batch"] == 32
    assert r["optimizer"].kwargs == {"lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
                                     "decay_roles": ("weight",)}
    assert base["epochs"] == 20 and r.span == base.span  # the original is unchanged
    r = apply_overrides(base, {"optimizer": "adam()", "optimizer.beta1": 0.8, "steps": 50})
    assert r["optimizer"]["beta1"] == 0.8 and r["optimizer"].name == "adam"
    assert (r["epochs"], r["steps"]) == (None, 50)  # steps replaces epochs
    r = apply_overrides(base, {"freeze": "stem*", "data": 'mnist("data/mnist")', "data.dir": "other/dir"})
    assert r["freeze"] == ("stem*",) and r["data"] == R.CallValue("mnist", (("dir", "other/dir"), ("classes", ())))
    r = apply_overrides(base, {"stop.metric": "val_accuracy", "clip": 1, "normalize": "none"})
    assert r["stop"]["mode"] == "max" and r["clip"]["max_norm"] == 1.0 and r["normalize"] == "none"


def test_overrides_are_checked_together_not_one_batch_at_a_time(base):
    warm = apply_overrides(base, {"schedule": "cosine(warmup=3)"})
    r = apply_overrides(warm, {"epochs": 1, "schedule.warmup": 0})  # the file's warm-up alone would not fit
    assert r["epochs"] == 1 and r["schedule"]["warmup"] == 0.0
    r = apply_overrides(base, {"optimizer": "sgd(0.1)", "weight_decay": 0.01, "optimizer.momentum": 0.9})
    assert (r["optimizer"]["weight_decay"], r["optimizer"]["momentum"]) == (0.01, 0.9)
    with pytest.raises(UsageError, match="unknown optimizer 'sgdd'"):
        apply_overrides(base, {"optimizer": "sgdd(0.1)", "optimizer.momentum": 0.9})


@pytest.mark.parametrize("sets, words", [
    ({"epoch": 5}, "--set epoch: recipes have no setting 'epoch'; did you mean 'epochs'?"),
    ({"optimizer.lrr": 1}, "--set optimizer.lrr: sgd() has no argument 'lrr'; did you mean 'lr'?"),
    ({"optimizer.lr": -1}, "--set optimizer.lr=-1: optimizer sgd(): lr must be > 0, got -1"),
    ({"batch": "many"}, "--set batch=many: batch must be an integer, got the name 'many'"),
    ({"optimizer": "sgd(lr=0.1"}, "--set optimizer=sgd(lr=0.1: cannot read 'sgd(lr=0.1' as a value"),
    ({"epochs": "2 } model zz {"}, "--set epochs=2 } model zz {: cannot read '2 } model zz {' as a value: "
                                   "unexpected '}'"),
    ({"seed": "1e308"}, "--set seed=1e308: seed must be in [0, 4294967295], got 1e+308"),
    ({"augment.p": 0.5}, "'augment' is not a single call"),
    ({"clip.max_norm": 1}, "--set clip.max_norm: 'clip' is none here"),
    ({"epochs": 1, "schedule": "cosine(warmup=2)"}, "--set schedule=cosine(warmup=2): schedule cosine(): warmup"),
    ({"augment": "[mixup(0.2), mixup(0.4)]"}, "--set augment=[mixup(0.2), mixup(0.4)]: augment: mixup is given more"),
    ({"data.classes": "[11]"}, "--set data.classes=[11]: data digits(): classes=[11]: class 11 is not one of 0..9"),
])
def test_override_errors(base, sets, words):
    with pytest.raises(UsageError) as err:
        apply_overrides(base, sets)
    assert words in str(err.value)


def test_a_flag_given_setting_is_named_by_its_flag(base):
    """`--epochs 1` is reported as typed, not as `--set epochs=1`; its value is an int to
    everything else, and a copy (pickle, deepcopy: a worker's) keeps the flag."""
    epochs = Flagged(1, "--epochs")
    with pytest.raises(UsageError) as err:
        apply_overrides(base, {"epochs": epochs, "steps": 5})
    assert "given --epochs 1" in str(err.value) and "--set epochs" not in str(err.value)
    with pytest.raises(UsageError, match=r"warmup \(2 epochs\) must be shorter than training \(1 epochs\); given --epochs 1$"):
        apply_overrides(base, {"schedule": "cosine(warmup=2)", "epochs": epochs})
    assert apply_overrides(base, {"epochs": Flagged(3, "--epochs")})["epochs"] == 3
    again = pickle.loads(pickle.dumps(epochs))
    assert (again, again.flag, json.dumps(again)) == (1, "--epochs", "1")


def test_override_globs_are_checked_against_the_model(base, mlp_graph):
    assert apply_overrides(base, {"freeze": "head"}, mlp_graph)["freeze"] == ("head",)
    with pytest.raises(UsageError, match="'hed' matches no parameter"):
        apply_overrides(base, {"freeze": "hed"}, mlp_graph)
