"""Babysitting a run, as the lectures teach: the sanity block (loss at initialisation,
regularisation), the per-step log and its curve, TensorBoard events read back by TensorBoard's
own reader, --overfit, reduce_on_plateau in a run, snapshots and their ensemble, test-time
augmentation, Monte-Carlo dropout and the update-ratio plot. Each on the shipped digits, small."""
from __future__ import annotations

import json
import math
import struct
import sys

import numpy as np
import pytest

import dslc
from dslc.cli import main
from dslc.diagnostics import UsageError
from dslc.runtime import sanity
from dslc.runtime.mc_dropout import stochastic_graph
from dslc.runtime.data import digits
from dslc.runtime.recipes import model_and_recipe
from dslc.runtime.runs import read_records
from dslc.runtime.steplog import STEPS, read_steps
from dslc.runtime.trainer import derived_seed, train
from helpers import MODELS, mnist_from_digits, run_cli as run

MLP = MODELS / "digits_mlp.net"
REF = ("--device", "reference")  # the NumPy interpreter: nothing to compile for these small runs
DROPOUT_MLP = """
model mlp(hidden: int = 32, p: float = 0.3) {{
    input image : f32[N, 64]
    input label : i64[N]
    fc1: h = image |> linear(hidden{init}) |> relu |> dropout(p=p)
    fc2: logits = h |> linear(10{init})
    output probs = softmax(logits)
    metric accuracy(logits, label)
    loss cross_entropy(logits, label){penalty}
}}

train mlp {{
    data = digits()
    split = validation(0.1, test=0.2, seed=0)
    epochs = {epochs}
    {extra}
}}
"""


def write(tmp_path, init="", penalty="", epochs=3, extra="optimizer = adam(lr=3e-3)", name="m.net"):
    path = tmp_path / name
    path.write_text(DROPOUT_MLP.format(init=init, penalty=penalty, epochs=epochs, extra=extra))
    return path


# ---- the sanity block ------------------------------------------------------------------------

def _initial(path, n=64, **sets):
    model, recipe = model_and_recipe(path, sets=sets)
    from dslc.runtime.layout import layout
    from dslc.runtime.prepare import load_data
    data = load_data(recipe)
    fit = layout(model, data.train)
    feeds = fit.feeds(data.transform(data.train.x[:n]), data.train.y[:n])
    return sanity.check(model, feeds, n, regularisation=True, params=model.init(derived_seed(0, "init")))


def test_initial_loss_warns_on_a_badly_initialised_model(tmp_path):
    report = _initial(write(tmp_path, init=", init=normal(std=1.0)"))
    assert report.initial_loss > 10 * math.log(10) and report.expected == pytest.approx(math.log(10))
    assert "FAR OFF" in report.lines[0] and len(report.warnings) == 1
    assert "far above ln 10 = 2.30" in report.warnings[0] and "initialised too large" in report.warnings[0]


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "two_layer", "norm_cnn"])
def test_initial_loss_is_silent_on_the_shipped_digits_models(name):
    report = _initial(MODELS / f"{name}.net")
    assert report.warnings == [] and report.lines[0].endswith(": ok"), report.lines
    if name == "two_layer":  # a multiclass SVM starts near (C - 1) * margin
        assert report.expected == 9.0 and "svm loss" in report.lines[0]


@pytest.mark.parametrize("name, n", [("small_cnn", 16), ("mlp_bn", 16), ("lenet5", 16), ("cifar_cnn", 16),
                                     ("resnet20", 16), ("resnet18", 2), pytest.param("alexnet", 2, marks=pytest.mark.slow),
                                     pytest.param("vgg16", 2, marks=pytest.mark.slow)])
def test_initial_loss_is_silent_on_the_shipped_models_on_standardised_inputs(name, n):
    # their data is not shipped: standard-normal inputs are what per_channel normalisation gives
    model = dslc.load(MODELS / f"{name}.net")
    image, label = model.graph.inputs
    rng = np.random.default_rng(0)
    feeds = {image.name: rng.standard_normal((n, *image.type.shape[1:])).astype(np.float32),
             label.name: rng.integers(0, 10, n)}
    report = sanity.check(model, feeds, n, params=model.init(derived_seed(0, "init")))
    assert report.warnings == [] and report.lines[0].endswith(": ok"), report.lines


def test_regularisation_check_sees_the_penalty_rise(tmp_path):
    report = _initial(write(tmp_path, penalty=" + 1e-3 * l2(weights)"))
    assert "regularisation x10: loss" in report.lines[1] and "(rises: ok)" in report.lines[1]
    report = _initial(write(tmp_path, name="plain.net"))
    assert "the loss has no penalty term" in report.lines[1]


def test_train_prints_the_sanity_block_and_warns(tmp_path, capsys):
    path = write(tmp_path, init=", init=normal(std=1.0)", epochs=1)
    code, out, err = run(capsys, "train", path, "--out", tmp_path / "r", "--check-reg", *REF)
    assert code == 0 and "sanity checks:\n  initial cross_entropy loss" in out and "regularisation:" in out
    assert "dslc: warning: the initial loss" in err


def test_a_loss_over_three_times_its_start_is_called_diverged():
    """CS231n's rule: a loss above 3x where it started has diverged (the sanity check's loss,
    regularisation included, as the step reports it)."""
    assert sanity.diverged(2, 6.8, 2.3) is None and sanity.diverged(2, float("nan"), 2.3) is None
    assert sanity.diverged(1, 1e9, None) is None and sanity.diverged(1, 1e9, float("nan")) is None
    warning = sanity.diverged(4, 6.91, 2.3)
    assert warning.startswith("epoch 4: the training loss 6.91 is over 3 times its value before training (2.3)")
    assert "dslc lr-find" in warning


def test_train_warns_once_when_the_loss_diverges_and_not_otherwise(tmp_path, capsys):
    """A learning rate far too high ran to its last epoch without a word (digits_mlp's loss
    went from 2.9 to 2.5e15 at sgd(lr=1e4)): the run now says once that it diverged."""
    code, _, err = run(capsys, "train", write(tmp_path, epochs=3, extra="optimizer = sgd(lr=1e4)"), "--out",
                       tmp_path / "r", "--quiet", *REF)
    assert code == 0 and err.count("the run has diverged") == 1 and "epoch 1: the training loss" in err, err
    code, _, err = run(capsys, "train", write(tmp_path, epochs=3, name="fine.net"), "--out", tmp_path / "f",
                       "--quiet", *REF)
    assert code == 0 and "diverged" not in err, err


# ---- the per-step log --------------------------------------------------------------------------

def test_every_step_is_logged_and_drawn_under_the_epoch_curves(tmp_path):
    model, recipe = model_and_recipe(write(tmp_path, epochs=2))
    result = train(model, recipe, tmp_path / "r", quiet=True, echo=lambda _: None, device="reference")
    steps = read_steps(tmp_path / "r" / STEPS)
    assert [s["step"] for s in steps] == list(range(1, result.steps + 1))
    assert steps[19]["epoch"] == 1.0 and all(math.isfinite(s["loss"]) and s["lr"] > 0 for s in steps)
    records = read_records(tmp_path / "r" / "metrics.jsonl")
    # the epoch's training loss is the mean of its steps' losses (each batch weighted by its size)
    assert np.mean([s["loss"] for s in steps[:20]]) == pytest.approx(records[0]["train_loss"], rel=0.02)
    png = (tmp_path / "r" / "curves.png").read_bytes()
    assert struct.unpack(">II", png[16:24]) == (1100, 800)  # two rows: epochs above, steps below


# ---- TensorBoard --------------------------------------------------------------------------------

def test_tensorboard_events_are_read_by_tensorboards_reader(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    code, _, _ = run(capsys, "train", write(tmp_path, epochs=2), "--out", tmp_path / "r", "--tensorboard", "--quiet",
                       *REF)
    assert code == 0
    events = accumulator.EventAccumulator(str(tmp_path / "r" / "tensorboard"),
                                          size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"step/loss", "step/lr", "loss/train", "loss/val", "accuracy/val", "update_ratio/fc2.weight"} \
        <= set(tags["scalars"])
    # every step of the first epoch; later ones thinned if writing them cost over 1% of training
    logged = {e.step: e.value for e in events.Scalars("step/loss")}
    steps = {r["step"]: r["loss"] for r in read_steps(tmp_path / "r" / STEPS)}
    assert set(range(1, 21)) <= set(logged) <= set(steps)
    assert all(logged[k] == pytest.approx(steps[k]) for k in logged)
    assert [e.step for e in events.Scalars("accuracy/val")] == [20, 40]
    val = read_records(tmp_path / "r" / "metrics.jsonl")[-1]["val_accuracy"]
    assert events.Scalars("accuracy/val")[-1].value == pytest.approx(val)
    assert {"weights/fc1.linear.weight", "update_ratio"} <= set(tags["histograms"])
    assert tags["graph"] and any(n.name == "fc1/linear" and n.op == "linear" for n in events.Graph().node)


def test_tensorboard_without_its_extra_is_said_before_a_run_is_made_or_cleared(tmp_path, capsys, monkeypatch):
    # the run directory was made (a second try was told it 'already holds a run'), and with
    # --force an old run's checkpoints and metrics were cleared, before the extra was missed
    path = write(tmp_path, epochs=2)
    assert run(capsys, "train", path, "--out", tmp_path / "old", "--quiet", *REF)[0] == 0
    before = sorted(p.relative_to(tmp_path / "old") for p in (tmp_path / "old").rglob("*"))
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` raises ImportError
    for out, force in ((tmp_path / "new", ()), (tmp_path / "old", ("--force",))):
        code, _, err = run(capsys, "train", path, "--out", out, "--tensorboard", "--quiet", *force, *REF)
        assert code == 1 and "--tensorboard needs tensorboardX" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()
    assert sorted(p.relative_to(tmp_path / "old") for p in (tmp_path / "old").rglob("*")) == before


# ---- overfitting a few examples -----------------------------------------------------------------

def test_overfit_reaches_near_zero_loss_on_a_few_examples(tmp_path, capsys):
    code, out, _ = run(capsys, "train", write(tmp_path, penalty=" + 1e-2 * l2(weights)"), "--overfit", "16",
                       "--out", tmp_path / "o", "--quiet", *REF)
    assert code == 0, out
    assert out.startswith("overfitting: 16 training examples, batch 16, a constant rate, augmentation off, "
                          "weight decay 0, 2 penalty or dropout nodes off")
    assert "below 0.01: the model can fit its data" in out.splitlines()[-1]
    records = read_records(tmp_path / "o" / "metrics.jsonl")
    assert records[-1]["train_loss"] < 0.01 and all("val_loss" not in r for r in records)


@pytest.mark.slow  # about 6 s: small_cnn at full width, 20 steps on the NumPy interpreter
def test_small_cnn_overfits_20_examples(tmp_path, capsys):
    data = mnist_from_digits(tmp_path / "mnist")
    code, out, _ = run(capsys, "train", MODELS / "small_cnn.net", "--overfit", "20", "--set", f'data=mnist("{data}")',
                       "--out", tmp_path / "o", "--quiet", *REF)
    assert code == 0 and "below 0.01: the model can fit its data" in out
    assert read_records(tmp_path / "o" / "metrics.jsonl")[-1]["train_loss"] < 0.01


def test_overfit_that_cannot_get_there_says_so(tmp_path, capsys):
    code, out, _ = run(capsys, "train", write(tmp_path, extra="optimizer = sgd(lr=1e-6)"), "--overfit", "16",
                       "--epochs", "3", "--out", tmp_path / "o", "--quiet", *REF)
    assert code == 1 and "did not reach 0.01" in out and "dslc lr-find" in out
    code, _, err = run(capsys, "train", MLP, "--overfit", "16", "--test")
    assert code == 2 and "--test cannot go with it" in err


def test_overfit_of_many_examples_trains_past_the_warmup_it_keeps(tmp_path, capsys):
    """--overfit keeps the recipe's warmup and shortens the run to about 300 steps: on 1,200
    examples (19 steps an epoch) that was 16 epochs under a 20-epoch warmup, refused with a
    --set schedule=... the user never wrote, and N beyond the training split was blamed on
    the warmup instead of on N."""
    from dslc.runtime import overfit

    model, recipe = model_and_recipe(MLP, sets={"schedule": "cosine(warmup=20)"})
    _, short, _ = overfit.setup(model, recipe, 1200)
    assert short["epochs"] == 21 and short["schedule"]["warmup"] == 20
    model, recipe = model_and_recipe(MLP)
    assert overfit.setup(model, recipe, 100_000)[1]["epochs"] == 2
    code, _, err = run(capsys, "train", MLP, "--overfit", "100000", "--out", tmp_path / "o", *REF)
    assert code == 1 and "cannot take 100000 examples of 1,258 in the training split" in err, err


# ---- schedules and snapshots in a run -----------------------------------------------------------

def test_reduce_on_plateau_lowers_the_rate_of_a_run(tmp_path):
    path = write(tmp_path, epochs=6, extra="optimizer = adam(lr=3e-3)\n"
                 "    schedule = reduce_on_plateau(metric=val_loss, patience=1, threshold=0.5, factor=0.5)")
    model, recipe = model_and_recipe(path)
    train(model, recipe, tmp_path / "r", quiet=True, echo=lambda _: None, device="reference")
    lrs = [r["lr"] for r in read_records(tmp_path / "r" / "metrics.jsonl")]
    # a 50% relative improvement is asked for, so the rate halves after each epoch that lacks it
    assert lrs[0] == pytest.approx(3e-3) and lrs[-1] < lrs[0] and all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert {round(lr / 3e-3, 6) for lr in lrs} <= {1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125}


def test_snapshots_at_restarts_make_an_ensemble(tmp_path, capsys):
    path = write(tmp_path, epochs=6, extra="optimizer = adam(lr=3e-3)\n"
                 "    schedule = cosine_restarts(period=2)\n    keep = restarts")
    assert run(capsys, "train", path, "--out", tmp_path / "r", "--quiet", *REF)[0] == 0
    kept = sorted(p.name for p in (tmp_path / "r" / "snapshots").iterdir())
    assert kept == ["epoch-0002", "epoch-0004", "epoch-0006"]
    code, out, _ = run(capsys, "ensemble", path, "--snapshots", tmp_path / "r", "--split", "val", "--json", *REF)
    report = json.loads(out)
    assert code == 0 and len(report["members"]) == 3 and 0.5 < report["accuracy"] <= 1
    code, _, err = run(capsys, "ensemble", path, "--snapshots", tmp_path)
    assert code == 1 and "no snapshots" in err and "keep = every(n)" in err


def test_snapshots_at_the_minima_of_a_cyclical_rate(tmp_path, capsys):
    """A triangle's minimum is at its cycle's boundary, the next epoch's first step: kept at the
    end of the epoch before it (only the last epoch was kept)."""
    path = write(tmp_path, epochs=6, extra="optimizer = adam(lr=3e-3)\n"
                 "    schedule = cyclical(low=1e-4, high=1e-2, period=2)\n    keep = restarts")
    assert run(capsys, "train", path, "--out", tmp_path / "r", "--quiet", *REF)[0] == 0
    assert sorted(p.name for p in (tmp_path / "r" / "snapshots").iterdir()) == ["epoch-0002", "epoch-0004",
                                                                                 "epoch-0006"]


def test_keep_restarts_needs_a_restarting_schedule(tmp_path, capsys):
    path = write(tmp_path, extra="optimizer = adam(lr=3e-3)\n    keep = restarts")
    code, _, err = run(capsys, "train", path, "--out", tmp_path / "r")
    assert code == 1 and "E0506" in err and "never restarts" in err


# ---- using the model: TTA, MC dropout, ratios ---------------------------------------------------

@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dropout")
    path = write(root, extra="optimizer = adam(lr=3e-3)\n    augment = [random_crop(8, pad=1)]")
    assert main(["train", str(path), "--out", str(root / "r"), "--quiet", *REF]) == 0
    return path, root / "r"


def test_eval_with_test_time_augmentation(dropout_run, capsys):
    path, r = dropout_run
    code, out, _ = run(capsys, "eval", path, "--checkpoint", r, "--tta", "flip,crops", "--json", *REF)
    report = json.loads(out)
    assert code == 0 and len(report["tta"]["views"]) == 10 and report["tta"]["views"][0] == "image"
    plain = json.loads(run(capsys, "eval", path, "--checkpoint", r, "--json", *REF)[1])
    assert report["tta"]["accuracy_without"] == plain["accuracy"]
    assert np.array(report["confusion"]).sum() == plain["examples"]
    code, out, _ = run(capsys, "eval", path, "--checkpoint", r, "--tta", "crops", *REF)
    assert code == 0 and "averaged over 5 views" in out and "without test-time augmentation" in out
    code, _, err = run(capsys, "eval", path, "--checkpoint", r, "--tta", "rotate")
    assert code == 2 and "flip, crops" in err
    code, _, err = run(capsys, "eval", path, "--checkpoint", r, "--tta", "")  # was no augmentation, silently
    assert code == 2 and "flip, crops" in err


def test_predict_with_monte_carlo_dropout(dropout_run, tmp_path, capsys):
    path, r = dropout_run
    np.save(tmp_path / "x.npy", digits().x[:3])
    code, out, _ = run(capsys, "predict", path, "--checkpoint", r, "--input", tmp_path / "x.npy",
                       "--mc-samples", "20", "--top", "2", "--json", *REF)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 3 and set(rows[0][0]) == {"class", "probability", "std"}
    assert all(0 <= c["std"] <= 0.5 for row in rows for c in row) and any(c["std"] > 0 for row in rows for c in row)
    code, out, _ = run(capsys, "predict", path, "--checkpoint", r, "--input", tmp_path / "x.npy", "--mc-samples", "5",
                       *REF)
    assert code == 0 and " ± " in out
    with pytest.raises(UsageError, match="has no dropout"):
        stochastic_graph(dslc.load(MLP).graph)


def test_plot_ratios_draws_every_parameter(dropout_run, tmp_path, capsys):
    _, r = dropout_run
    code, out, _ = run(capsys, "plot", r, "--ratios", "-o", tmp_path / "ratios.png")
    assert code == 0 and (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_update_ratio_of_blown_up_weights_is_not_finite_without_a_numpy_warning():
    """Weights whose norm overflows give a ratio that is not finite (the anomaly report says
    why), not a bare `RuntimeWarning: overflow encountered` on the terminal."""
    import warnings

    from dslc.runtime.trainer import _ratio
    old = np.full(1000, 3e38, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not np.isfinite(_ratio(old * 0.5, old))


def test_a_number_improves_on_a_nan_best():
    """A run whose first epoch's watched metric is NaN moves its best (`best/`, the early
    stop's count) to the first later epoch with a number; a NaN never improves on a number."""
    from dslc.runtime.trainer import improves
    nan = float("nan")
    assert improves(nan, None, "min", 0.0) and improves(0.7, None, "max", 0.0)
    assert improves(2.5, nan, "min", 0.0) and improves(0.1, nan, "max", 0.0)
    assert not improves(nan, 2.5, "min", 0.0) and not improves(nan, nan, "min", 0.0)
    assert improves(2.4, 2.5, "min", 0.0) and not improves(2.45, 2.5, "min", 0.1)


def test_monte_carlo_dropout_keeps_running_sums_not_every_pass(monkeypatch):
    """mc_probabilities' mean and standard deviation are those of all the passes stacked
    (within float32 rounding), computed without keeping the passes: --mc-samples K is the
    user's number, and K x N x classes floats took all memory for a large K."""
    from dslc.runtime import mc_dropout
    monkeypatch.setattr(mc_dropout, "as_probabilities", lambda graph, output, value: value)
    draws = np.random.default_rng(0).random((50, 4, 3)).astype(np.float32)
    passes = iter(draws)
    mean, std = mc_dropout.mc_probabilities(lambda feeds, params, rng: {"p": next(passes)}, {}, {}, None, "p",
                                            samples=50, rng=None)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, draws.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, draws.astype(np.float64).std(axis=0), rtol=1e-5)
    import tracemalloc
    one = np.ones((100, 10), np.float32)  # 4 KB a pass: 2000 passes stacked are 8 MB
    tracemalloc.start()
    try:
        mc_dropout.mc_probabilities(lambda feeds, params, rng: {"p": one}, {}, {}, None, "p", samples=2000, rng=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak
