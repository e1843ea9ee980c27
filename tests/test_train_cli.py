"""The training verbs of the command line: train, eval, predict, ensemble, plot, lr, lr-find.
Each happy path on the shipped digits, and the mistakes a person makes: exit status 1 with
a message naming the file (2 for a bad command line), never a traceback."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.runtime.data import digits
from helpers import MODELS

MLP = MODELS / "digits_mlp.net"
CNN = MODELS / "digits_cnn.net"


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two quick runs of the digits MLP with different seeds."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        assert main(["train", str(MLP), "--epochs", "3", "--set", f"seed={seed}", "--out", str(root / f"s{seed}"),
                     "--quiet"]) == 0
    return root / "s0", root / "s1"


def test_train_prints_sanity_epochs_and_validation_not_test(tmp_path, capsys):
    code, out, _ = run(capsys, "train", MLP, "--epochs", "2", "--out", tmp_path / "r", "--set", "hidden=32",
                       "--set", "optimizer.lr=0.01")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("starting step 0 of 40") and "359 test" in lines[0]
    assert lines[1] == "sanity checks:" and "expected about ln 10 = 2.30" in lines[2] and lines[2].endswith(": ok")
    assert lines[3].startswith("epoch 1/2  train loss") and "val loss" in lines[3]
    assert lines[-2].startswith("best val_accuracy ") and "at epoch" in lines[-2]
    assert "test_accuracy" not in out and "test_loss" not in out  # nothing evaluates the test split
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["overrides"] == {"hidden": "32", "optimizer.lr": "0.01", "epochs": 2}  # as written
    assert config["recipe"]["entries"]["optimizer"]["args"]["lr"] == 0.01


def test_train_default_run_directory_is_never_overwritten(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert run(capsys, "train", MLP, "--epochs", "2", "--quiet")[0] == 0
    assert (tmp_path / "runs" / "digits_mlp" / "config.json").exists()
    assert (tmp_path / "runs" / "digits_mlp-2" / "config.json").exists()
    code, _, err = run(capsys, "train", MLP, "--epochs", "2", "--quiet", "--out", "runs/digits_mlp")
    assert code == 1 and "already holds a run" in err and "--force" in err


def test_a_warm_up_that_outlasts_a_run_of_steps_is_said(tmp_path, capsys):
    """The recipe's check refuses a warm-up as long as its epochs; one as long as `steps`
    (known only with the data's batches per epoch) is a warning: a few steps try a recipe out."""
    code, _, err = run(capsys, "train", MLP, "--set", "steps=10", "--out", tmp_path / "r", "--quiet")
    assert code == 0 and "warm-up (1 epochs, 20 steps of 20 an epoch here) outlasts the run (steps = 10)" in err


def test_train_a_model_with_nothing_to_train_is_one_located_error(tmp_path, capsys):
    """Every parameter `as state`: one message at the model (exit 1), no traceback, no run directory."""
    text = MLP.read_text().replace("fc1: h      = image |> linear(hidden) |> relu",
                                   "param W : f32[64, 10] = kaiming() as state")
    text = text.replace("fc2: logits = h |> linear(classes, init=xavier)", "logits = image @ W")
    assert "as state" in text and "logits = image @ W" in text
    path = tmp_path / "frozen.net"
    path.write_text(text)
    for verb in (("train", "--out", tmp_path / "r", "--quiet"), ("lr-find",)):
        code, _, err = run(capsys, verb[0], path, *verb[1:])
        assert code == 1 and "frozen.net:4:7: error[E0408]: model 'digits_mlp' has nothing to train" in err, err
    assert not (tmp_path / "r").exists()


def test_train_force_leaves_nothing_of_the_run_it_replaces(tmp_path, capsys):
    """--force starts the run again: the old run's best/, snapshots and result are gone with
    its metrics, not left for eval and ensemble to read as the new run's."""
    out = tmp_path / "r"
    assert run(capsys, "train", MLP, "--epochs", "3", "--set", "keep=every(1)", "--out", out, "--quiet")[0] == 0
    assert (out / "best").is_dir() and len(list((out / "snapshots").iterdir())) == 3
    assert run(capsys, "train", MLP, "--epochs", "1", "--set", "checkpoint=none", "--set", "schedule.warmup=0",
               "--out", out, "--force", "--quiet")[0] == 0
    left = sorted(p.name for p in out.iterdir())
    assert "best" not in left and "snapshots" not in left and "config.json" in left, left
    assert json.loads((out / "result.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("args, status, message", [
    (["nowhere.net"], 1, "nowhere.net"),
    ([MLP, "--as", "fast"], 1, "no recipe named 'fast'"),
    ([MLP, "--set", "optimizer.lr=-1"], 2, "optimizer.lr=-1"),
    ([MLP, "--set", "epochz=3"], 2, "epochz"),  # not a recipe key: a model hyper-parameter it lacks
    ([MLP, "--device", "gpu"], 1, "gpu"),
    ([MLP, "--resume", "nowhere"], 1, "nowhere"),
    # the note names the override as typed: the flag, or --set
    ([MLP, "--epochs", "1"], 2, "warmup (1 epochs) must be shorter than training (1 epochs); given --epochs 1"),
    ([MLP, "--set", "epochs=1"], 2, "warmup (1 epochs) must be shorter than training (1 epochs); given --set epochs=1"),
    ([MLP, "--resume", "a", "--out", "b"], 2, "--out cannot go with it"),
    # the data's size is known once read: located at the train block, the split as given
    ([MLP, "--set", "split=validation(0.9999)"], 1, "digits_mlp.net:17:1: error[E0505]: split = "
     "validation(fraction=0.9999, test=0, seed=0) does not fit digits: cannot hold out 0.9999 of 1797 examples"),
    ([MLP, "--set", "augment=[random_crop(16)]"], 1, "random_crop(16, pad=0) does not fit images of 8x8"),
    # a cutout wider than the image blanked most or all of every image, without a word
    ([MLP, "--set", "augment=[cutout(9)]"], 1, "cutout(9) does not fit images of 8x8"),
    # a flat input does not say the images' side: the first step names a crop of another size
    ([MLP, "--set", "augment=[random_crop(6)]"], 1, "examples of shape [1, 6, 6] do not fit input 'image'"),
])
def test_train_mistakes(tmp_path, capsys, monkeypatch, args, status, message):
    monkeypatch.chdir(tmp_path)
    if "gpu" in args and importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed")
    code, _, err = run(capsys, "train", *args)
    assert code == status and message in err


def test_train_data_that_does_not_fit_is_located(tmp_path, capsys):
    bad = tmp_path / "bad.net"
    bad.write_text(MLP.read_text().replace("f32[N, 64]", "f32[N, 60]"))
    code, _, err = run(capsys, "train", bad, "--out", tmp_path / "r")
    assert code == 1 and f"{bad}:5:" in err and "E0513" in err and "[1, 8, 8]" in err


def test_classes_a_data_file_lacks_are_located_at_the_train_block(tmp_path, capsys):
    """An npz's (or csv's, or image folder's) number of classes is known once it is read, so a
    `classes=` beyond it is refused then, as the recipe mistake it is: located at the train
    block (as a split too large for the data), exit 1, no traceback."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((40, 4)).astype(np.float32), y=rng.integers(0, 3, 40))
    net = tmp_path / "m.net"
    net.write_text(f"""model m {{
    input x : f32[N, 4]
    input y : i64[N]
    param W : f32[4, 3] = kaiming()
    loss cross_entropy(x @ W, y)
}}
train m {{
    data = npz("{tmp_path / 'd.npz'}", classes=[0, 7])
    epochs = 1
}}
""")
    code, _, err = run(capsys, "train", net, "--out", tmp_path / "r")
    assert code == 1 and "Traceback" not in err
    assert f"{net}:7:1: error[E0505]: data = npz(classes=[0, 7]): class 7 is not one of 0..2 (d has 3 classes)" in err


@pytest.mark.parametrize("setting, code, at, words", [
    ("augment = [hflip(), random_crop(6)]", "E0513", "6)]", "random_crop(6) gives 6x6 images, but input 'image'"),
    ("augment = [random_resized_crop(5)]", "E0513", "5)]", "random_resized_crop(5) gives 5x5 images"),
    ("augment = [mixup(0.2), mixup(0.4)]", "E0508", "mixup(0.4)", "mixup is given more than once"),
    ("data = digits(classes=[1, 1])", "E0508", "[1, 1]", "classes=[1, 1] lists class 1 twice"),
    ("data = digits(classes=[11])", "E0505", "[11]", "class 11 is not one of 0..9"),
])
def test_train_recipe_mistakes_of_augment_and_classes_are_located(tmp_path, capsys, setting, code, at, words):
    """A crop of another size than the model's input, two mixups and bad `classes=` are
    recipe mistakes: in the file, located (exit 1, for check and train alike); in a --set,
    that --set named (exit 2); never a traceback from the data or the trainer."""
    key = setting.split()[0]
    text = CNN.read_text()
    # the setting replaces the recipe's own line of that key, or comes after its epochs
    old = next((t for t in text.splitlines() if t.split("=")[0].strip() == key), "    epochs    = 30")
    text = text.replace(old + "\n", ("" if key in old else old + "\n") + "    " + setting + "\n")
    bad = tmp_path / "bad.net"
    bad.write_text(text)
    lines = text.splitlines()
    line = next(i for i, t in enumerate(lines, 1) if t.strip() == setting)
    where = f"{bad}:{line}:{lines[line - 1].index(at) + 1}: error[{code}]"
    for verb in ("check", "train"):
        status, _, err = run(capsys, verb, bad, *(["--out", tmp_path / "r"] if verb == "train" else []))
        assert status == 1 and where in err and words in err, err
    value = setting.split("=", 1)[1].strip()
    status, _, err = run(capsys, "train", CNN, "--set", f"{key}={value}", "--out", tmp_path / "r")
    assert status == 2 and f"--set {key}={value}: " in err and words in err, err


def test_eval_text_and_json(runs, capsys):
    code, out, _ = run(capsys, "eval", MLP, "--checkpoint", runs[0])
    assert code == 0 and "test split of digits-test (359 examples)" in out and "top-5 accuracy" in out
    code, out, _ = run(capsys, "eval", MLP, "--checkpoint", runs[0] / "last", "--split", "val", "--json")
    report = json.loads(out)
    assert code == 0 and report["split"] == "val" and report["examples"] == 180
    confusion = np.array(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 180
    assert np.trace(confusion) / 180 == pytest.approx(report["accuracy"])
    assert report["accuracy"] == pytest.approx(report["metrics"]["accuracy"], abs=1e-6)
    assert report["top5_accuracy"] >= report["accuracy"]


def test_eval_and_ensemble_read_every_chunk_of_a_large_split(runs, capsys):
    """The train split's 1,258 examples are evaluated in chunks of 512: the accuracy of the
    class probabilities (the confusion matrix's) is the graph's accuracy metric, and an
    ensemble's member is its eval. The probabilities were views of the CPU step's arena, so
    the second full chunk overwrote the first: accuracy 0.57 against the metric's 0.90."""
    code, out, _ = run(capsys, "eval", MLP, "--checkpoint", runs[0], "--split", "train", "--json")
    report = json.loads(out)
    assert code == 0 and report["examples"] == 1258
    assert report["accuracy"] == pytest.approx(report["metrics"]["accuracy"], abs=1e-6)
    code, out, _ = run(capsys, "ensemble", MLP, "--checkpoint", runs[0], "--checkpoint", runs[1], "--split",
                       "train", "--json")
    assert code == 0 and json.loads(out)["members"][0]["accuracy"] == pytest.approx(report["accuracy"])


def test_eval_mistakes(runs, tmp_path, capsys):
    code, _, err = run(capsys, "eval", MLP, "--checkpoint", tmp_path / "none")
    assert code == 1 and "none" in err
    code, _, err = run(capsys, "eval", MLP, "--checkpoint", runs[0], "--set", "hidden=16")
    assert code == 1 and "does not fit model 'digits_mlp'" in err and "[64, 16]" in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state.json").write_text("{")
    code, _, err = run(capsys, "eval", MLP, "--checkpoint", tmp_path / "broken")
    assert code == 1 and "bad JSON" in err
    code, _, err = run(capsys, "eval", MLP, "--checkpoint", runs[0], "--model", "")  # '' is no model's name
    assert code == 1 and "no model named ''; it defines: digits_mlp" in err


def test_a_run_stopped_before_its_first_checkpoint_says_so(runs, tmp_path, capsys):
    """A run directory holding only its config.json (killed before the first epoch ended) is
    named as such by eval and by train --resume, not as a checkpoint missing its state.json."""
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.json").write_bytes((runs[0] / "config.json").read_bytes())
    code, _, err = run(capsys, "eval", MLP, "--checkpoint", tmp_path / "early")
    assert code == 1 and "is a run directory with no checkpoint yet" in err
    code, _, err = run(capsys, "train", MLP, "--resume", tmp_path / "early")
    assert code == 1 and "it has no checkpoint yet" in err and "--force" in err
    assert sorted(p.name for p in (tmp_path / "early").iterdir()) == ["config.json"]  # nothing written


def test_a_search_directory_given_as_a_checkpoint_points_at_its_trials(tmp_path, capsys):
    """`dslc search --out S` then `dslc eval --checkpoint S` said 'S/state.json: missing; the
    checkpoint is incomplete'; a search directory's checkpoints are its trials'."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "search.json").write_text("{}")
    for verb in ("eval", "predict"):
        code, _, err = run(capsys, verb, MLP, "--checkpoint", tmp_path / "s",
                           *(["--input", tmp_path / "x.npy"] if verb == "predict" else []))
        assert code == 1 and f"is a search directory; each trial is a run with its checkpoints, e.g. " \
                             f"{tmp_path / 's' / 'trial-001' / 'best'}" in err, err


def test_predict_npy_and_image(runs, tmp_path, capsys):
    data = digits()
    np.save(tmp_path / "x.npy", data.x[:4])
    code, out, _ = run(capsys, "predict", MLP, "--checkpoint", runs[0], "--input", tmp_path / "x.npy", "--top", "2")
    assert code == 0 and len(out.splitlines()) == 4 and out.startswith("0: ")
    code, out, _ = run(capsys, "predict", MLP, "--checkpoint", runs[0], "--input", tmp_path / "x.npy", "--json")
    rows = json.loads(out)
    assert len(rows) == 4 and len(rows[0]) == 5
    assert sum(r["probability"] for r in rows[0]) <= 1 + 1e-6
    correct = sum(row[0]["class"] == str(y) for row, y in zip(rows, data.y[:4]))
    assert correct >= 2
    from PIL import Image
    Image.fromarray((data.x[0, 0] * 255).astype(np.uint8)).resize((32, 32)).save(tmp_path / "d.png")
    code, out, _ = run(capsys, "predict", MLP, "--checkpoint", runs[0], "--input", tmp_path / "d.png", "--top", "1")
    assert code == 0 and out.startswith("0: ")


def test_predict_mistakes(runs, tmp_path, capsys):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 7)))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    (tmp_path / "x.txt").write_text("1 2 3")
    for name, message in (("wrong.npy", "neither one example"), ("junk.png", "not a readable image"),
                          ("x.txt", "cannot read .txt"), ("missing.npy", "no such file")):
        code, _, err = run(capsys, "predict", MLP, "--checkpoint", runs[0], "--input", tmp_path / name)
        assert code == 1 and message in err and name in err
    assert run(capsys, "predict", MLP, "--checkpoint", runs[0], "--input", "x.npy", "--top", "0")[0] == 2


def test_ensemble(runs, capsys):
    code, out, _ = run(capsys, "ensemble", MLP, "--checkpoint", runs[0], "--checkpoint", runs[1], "--json")
    report = json.loads(out)
    assert code == 0 and len(report["members"]) == 2 and report["examples"] == 359
    best_member = max(m["accuracy"] for m in report["members"])
    assert report["accuracy"] >= best_member - 0.03  # averaging rarely hurts much, usually helps
    code, out, _ = run(capsys, "ensemble", MLP, "--checkpoint", runs[0], "--checkpoint", runs[1])
    assert code == 0 and "ensemble of 2: accuracy" in out
    code, _, err = run(capsys, "ensemble", MLP, "--checkpoint", runs[0])
    assert code == 2 and "at least two" in err


def test_plot_runs(runs, tmp_path, capsys):
    code, out, _ = run(capsys, "plot", *runs, "-o", tmp_path / "both.png")
    assert code == 0 and (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run(capsys, "plot", tmp_path / "nothing", "-o", tmp_path / "x.png")
    assert code == 1 and "nothing" in err


def test_names_that_are_not_utf8_are_drawn_escaped(runs, tmp_path, capsys):
    """A run directory whose name holds a byte that is not UTF-8 (Python's lone surrogate
    '\udcff') was a matplotlib TypeError traceback when its curves.png was drawn, after the
    last epoch; `dslc plot` of such a run too (explain's captions also: every figure is written by
    files.write_figure)."""
    out = tmp_path / "r\udcff"
    assert run(capsys, "train", MLP, "--epochs", "2", "--out", out, "--quiet", "--device", "reference")[0] == 0
    assert (out / "curves.png").stat().st_size and (out / "best" / "state.json").exists()
    assert run(capsys, "plot", out, runs[0], "-o", tmp_path / "both.png")[0] == 0
    assert run(capsys, "plot", out, "--ratios", "-o", tmp_path / "ratios.png")[0] == 0


def test_lr_plots_the_schedule(tmp_path, capsys):
    code, out, _ = run(capsys, "lr", MLP, "-o", tmp_path / "lr.png")
    assert code == 0 and (tmp_path / "lr.png").exists()
    assert "epoch 0: 3e-05" in out and "epoch 40: 0" in out  # warm-up from 1% of 3e-3; cosine to 0
    code, out, _ = run(capsys, "lr", MLP, "--set", "steps=100", "-o", tmp_path / "lr2.png")
    assert code == 0 and "epoch 5: 0" in out  # 100 steps of 20 per epoch
    code, out, _ = run(capsys, "lr", MLP, "--set", "schedule=cyclical(1e-4, 1e-2, 2)", "-o", tmp_path / "lr3.png")
    assert code == 0 and "epoch 0: 0.0001, epoch 1: 0.01, epoch 2: 0.0001" in out and ", ..., epoch 40: " in out


def test_train_overrides_warmup_and_epochs_together(tmp_path, capsys):
    code, out, _ = run(capsys, "train", MLP, "--epochs", "1", "--set", "schedule.warmup=0", "--out", tmp_path / "r",
                       "--set", "hidden=16")
    assert code == 0 and "epoch 1/1" in out


def test_lr_find_suggests_a_rate(tmp_path, capsys):
    code, out, _ = run(capsys, "lr-find", MLP, "--steps", "60", "-o", tmp_path / "find.png")
    assert code == 0 and (tmp_path / "find.png").exists()
    suggested = float(out.split("suggested lr ")[1].split()[0])
    assert 1e-5 < suggested < 1.0
    code, _, err = run(capsys, "lr-find", MLP, "--start", "1", "--end", "0.1")
    assert code == 2 and "start < end" in err


BATCHNORM_MLP = """
model bnmlp(hidden: int = 8) {
    input image : f32[N, 64]
    input label : i64[N]
    fc1: h = image |> linear(hidden, bias=false) |> batchnorm |> relu
    fc2: logits = h |> linear(10)
    metric accuracy(logits, label)
    loss   cross_entropy(logits, label)
}

train bnmlp {
    data      = digits()
    split     = validation(0.1, test=0.2, seed=0)
    batch     = 64
    epochs    = 2
    optimizer = adam(lr=3e-3)
}
"""


def test_a_batch_of_one_example_never_reaches_a_batchnorm_over_examples(tmp_path, capsys):
    """A batchnorm after a linear layer takes its statistics over the examples alone, and one
    example has no variance: the running variance became NaN (0/0), silently, when an epoch's
    last batch held one example (1,258 training examples in batches of 419). That batch is
    now left out, and said so; a batch of one is refused; the compiled step refuses one too."""
    import dslc
    from dslc.diagnostics import UsageError
    from dslc.runtime.checkpoint import load_checkpoint
    path = tmp_path / "bn.net"
    path.write_text(BATCHNORM_MLP)
    code, out, err = run(capsys, "train", path, "--set", "batch=419", "--out", tmp_path / "r")
    assert code == 0 and "left out of the epoch" in out + err
    state = load_checkpoint(tmp_path / "r" / "last").weights
    assert np.isfinite(state["fc1.batchnorm.running_var"]).all()
    code, _, err = run(capsys, "train", path, "--set", "batch=1", "--out", tmp_path / "one")
    assert code != 0 and "a batch of 1 example has no variance" in err and "Traceback" not in err
    model = dslc.load(path)
    params, x = model.init(0), digits().x[:1]
    with pytest.raises(UsageError, match="one example has no variance"):
        model.compile("cpu").step(params, {"image": x, "label": np.zeros(1, np.int64)})
