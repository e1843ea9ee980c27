"""`dslc explain` on a digits CNN trained here: what each method must show, with stated
thresholds, and every verb from the command line, its mistakes included.

The model is models/digits_cnn.net at width 8 without dropout, trained for 3 epochs by the
NumPy reference (nothing to compile, about 5 s; 93% test accuracy). Thresholds leave room
below what it measured (in brackets) on the held-out digits split (359 images).
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from dslc.cli import main
from dslc.explain import adversarial, gradients, objectives, occlusion, optimise
from dslc.explain.subject import open_subject
from helpers import FIXTURES, MODELS

DIGITS_CNN = MODELS / "digits_cnn.net"
SETS = ["--set", "width=8", "--set", "p=0.0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "run"
    assert main(["train", str(DIGITS_CNN), "--device", "reference", "--epochs", "3", *SETS,
                 "--set", "optimizer.lr=0.01", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def s(run):
    return open_subject(DIGITS_CNN, run, "cpu", sets={"width": 8, "p": 0.0}, quiet=True)


@pytest.fixture(scope="module")
def test_split(s):
    return s.dataset("test")


def test_the_trained_model_is_good_enough_to_explain(s, test_split):
    assert (s.scores(test_split.x).argmax(1) == test_split.y).mean() > 0.88  # [0.93]


def test_saliency_is_largest_on_the_strokes(s, test_split):
    """More gradient mass on the ink (pixels with any ink) than off it, plain and guided."""
    x, y = test_split.x[:40], test_split.y[:40]
    plain = gradients.ink_share(x, gradients.saliency(s, x, y), threshold=0.0)
    guided = gradients.ink_share(x, gradients.saliency(s, x, y, guided=True), threshold=0.0)
    assert (plain > 0.5).sum() >= 36 and plain.mean() > 0.55, plain  # [40 of 40, mean 0.65, least 0.53]
    assert (guided > 0.5).all() and guided.mean() > 0.65, guided  # [mean 0.77, least 0.62]


def test_fgsm_at_epsilon_0_2_takes_test_accuracy_below_20_percent(s, test_split):
    x, y = test_split.x, test_split.y
    moved = adversarial.fgsm(s, x, y, eps=0.2)
    assert np.abs(moved - x).max() <= 0.2 + 1e-6 and moved.min() >= 0 and moved.max() <= 1
    assert (s.scores(moved).argmax(1) == y).mean() < 0.2  # [0.06; 0.42 at epsilon 0.1]


def test_fooling_reaches_p_target_above_0_9_on_10_of_10(s, test_split):
    x = test_split.x[test_split.y != 8][:10]
    fooled, steps = adversarial.fool(s, x, target=8, confidence=0.9, steps=200, lr=0.05)
    rows = adversarial.report(s, x, fooled, target=8)
    assert all(r["target_probability"] > 0.9 and r["new"] == "8" for r in rows), rows  # [in 66 steps]
    assert all(0 < r["l2"] < 3 for r in rows), rows


def test_class_visualisation_raises_every_class_score(s, test_split):
    """From the mean image, every class's score rises by at least 1.5 (a factor e^1.5 = 4.5 in
    its unnormalised probability), and the ten visualisations score twice the real digits."""
    start = np.repeat(s.blank(), 10, axis=0)
    x, history = optimise.descend(s, objectives.classviz_loss(s, list(range(10)), 1e-3), start,
                                  optimise.Settings(steps=150, lr=0.05, jitter=1, blur_every=10, blur_sigma=0.3))
    diagonal = np.arange(10), np.arange(10)
    rise = s.scores(x)[diagonal] - s.scores(start)[diagonal]
    scores = s.scores(test_split.x)
    real = np.mean([scores[test_split.y == k, k].mean() for k in range(10)])
    assert (rise > 1.5).all(), rise  # [2.1 (the digit 1) to 16.7]
    assert s.scores(x)[diagonal].mean() > 2 * real  # [7.8 against 2.45]
    assert history[-1] < history[0]


def test_occlusion_maps_have_the_inputs_size_and_find_the_evidence(s, test_split):
    x, y = test_split.x[:3], test_split.y[:3]
    maps = occlusion.occlusion(s, x, y, patch=3, stride=2)
    assert maps.shape == (3, 8, 8) and (maps >= 0).all() and (maps <= 1).all()
    assert (maps.min(axis=(1, 2)) < s.probs(x)[np.arange(3), y]).all()


def test_style_transfer_lowers_the_gram_loss_tenfold(s, test_split):
    content, style = test_split.x[:1], test_split.x[7:8]
    layers = [s.layer("conv1"), s.layer("conv2")]
    feats = s.forward(style, layers)
    conv3 = s.layer("conv3")
    loss = objectives.StyleLoss(s, conv3, s.forward(content, [conv3])[conv3], layers,
                                [objectives.gram(feats[n]) for n in layers], [500.0, 500.0], 1.0, 1e-3)
    out, _ = optimise.descend(s, loss, content, optimise.Settings(steps=100, lr=0.02, jitter=0))
    assert loss.style_value(out) < loss.style_value(content) / 10  # [17x]


def test_compiled_gradients_are_the_references(s, test_split):
    """Every method's gradient on the compiled executor, against the NumPy reference's (1e-4 of the largest)."""
    ref = replace(s, compiled=s.model.compile("reference"))
    x = test_split.x[:2]
    conv2 = s.layer("conv2")
    for what, make in [("saliency", lambda t: lambda v: t.grad(v, f"{t.logits}[:, 3]")),
                       ("guided", lambda t: lambda v: (0.0, gradients.class_gradient(t, v, [3, 3], guided=True))),
                       ("dream", lambda t: objectives.dream_loss(t, conv2)),
                       ("invert", lambda t: objectives.inversion_loss(t, conv2, np.ones((2, 16, 4, 4)), 0.1))]:
        got, want = make(s)(x)[1], make(ref)(x)[1]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), what


# ---- the command line ---------------------------------------------------------------------

def explain(run, method: str, *flags: str) -> list[str]:
    return ["explain", method, str(DIGITS_CNN), "--checkpoint", str(run), *SETS, "--quiet", *flags]


@pytest.mark.parametrize("method,flags", [
    ("filters", []),
    ("activations", ["--index", "0,1", "--layer", "conv1"]),
    ("neighbors", ["--index", "0", "--layer", "conv3", "-k", "4", "--limit", "300"]),
    ("embed", ["--layer", "conv3", "--examples", "60", "--method", "pca"]),
    ("occlusion", ["--index", "0,1", "--patch", "2", "--stride", "2"]),
    ("saliency", ["--index", "0,1", "--guided", "--class", "3"]),
    ("classviz", ["--class", "3", "--class", "7", "--steps", "5"]),
    ("adversarial", ["--index", "0", "--target", "8", "--steps", "5"]),
    ("invert", ["--index", "0", "--layer", "conv2", "--steps", "5"]),
    ("dream", ["--index", "0", "--layer", "conv3", "--steps", "5"]),
    ("style", ["--index", "0", "--style-index", "7", "--style-layers", "conv1,conv2", "--content-layer", "conv3",
               "--steps", "5"]),
])
def test_every_method_writes_a_picture_and_its_numbers(run, tmp_path, capsys, method, flags):
    from PIL import Image

    png, npy = tmp_path / "out.png", tmp_path / "out.npy"
    assert main(explain(run, method, *flags, "-o", str(png), "--npy", str(npy), "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    with Image.open(png) as image:
        assert image.size[0] > 50 and image.size[1] > 50
    numbers = np.load(npy)
    assert numbers.size and np.isfinite(numbers).all()
    if method == "occlusion":
        assert numbers.shape == (2, 8, 8) and report["patch"] == 2
    if method == "filters":
        assert numbers.shape == (8, 1, 3, 3)


def test_adversarial_prints_classes_probabilities_and_norms(run, tmp_path, capsys):
    assert main(explain(run, "adversarial", "--index", "0,1", "--epsilon", "0.2", "-o", str(tmp_path / "a.png"))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("->" in line and "L2" in line and "Linf 0.200" in line for line in lines[:2])


def test_bad_input_is_one_located_message(run, tmp_path, capsys):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(big)
    cases = [
        (explain(run, "saliency", "--image", str(big)), 1, f"{big}: the image is 12x10 pixels; the model reads 8x8"),
        (explain(run, "activations", "--index", "0", "--layer", "conv4"), 1, "model 'digits_cnn' has no layer 'conv4'; did you mean"),
        # the labels, the loss and metrics are no layers of the image (they were the compiled
        # API's "this needs the input(s) label", exit 2)
        (explain(run, "activations", "--index", "0", "--layer", "label"), 1,
         "no layer 'label' computed from the image alone ('label' is another input); its layers are conv1"),
        (explain(run, "invert", "--index", "0", "--layer", "loss"), 1,
         "no layer 'loss' computed from the image alone ('loss' reads the input label); its layers are conv1"),
        (["explain", "saliency", str(FIXTURES / "explain_tiny.net"), "--checkpoint", str(run), "--index", "0"], 1,
         "does not fit model 'explain_tiny'"),
        (explain(run, "saliency", "--index", "400"), 1, "--index 400: the test split (digits-test) has 359 examples"),
        (explain(run, "occlusion", "--index", "0", "--patch", "9"), 2, "--patch 9 is larger than the 8x8 image"),
        (explain(run, "occlusion", "--index", "0", "--patch", "0"), 2, "must be at least 1"),
        (explain(run, "saliency", "--index", "0", "--class", "12"), 2, "the classes are 0..9"),
        (explain(run, "saliency"), 2, "give the examples with one of --image PNG, --input X.npy or --index N"),
        (explain(run, "saliency", "--index", "0", "-o", str(DIGITS_CNN)), 2, "a figure is written as .png, .pdf"),
        (explain(run, "saliency", "--image", str(big), "-o", str(big)), 2, "which this command reads"),
        (explain(run, "saliency", "--image", str(big), "--npy", str(big)), 2, f"--npy {big} is {big}, which this"),
    ]
    truncated, wrong = tmp_path / "cut.png", tmp_path / "wrong.npy"
    truncated.write_bytes(big.read_bytes()[:30])
    np.save(wrong, np.zeros((2, 7, 7), np.float32))
    cases += [
        (explain(run, "saliency", "--image", "/dev/zero"), 1, "/dev/zero: is a character device, not a regular file"),
        (explain(run, "saliency", "--image", str(truncated)), 1, f"{truncated}: not a readable image"),
        (explain(run, "saliency", "--input", str(wrong)), 1, f"{wrong}: array of shape [2, 7, 7] is neither"),
        (explain(run, "saliency", "--index", "0", "--image", str(big)), 2, "not --image and --index"),
        # the style example's flags are named as given (both said --index, --input)
        (explain(run, "style", "--index", "0", "--style-index", "400", "--style-layers", "conv1",
                 "--content-layer", "conv2"), 1, "--style-index 400: the test split (digits-test) has 359"),
        (explain(run, "style", "--index", "0", "--style-index", "1", "--style-image", str(big), "--style-layers",
                 "conv1", "--content-layer", "conv2"), 2, "not --style-image and --style-index"),
        (explain(run, "saliency", "--index", "0", "-o", str(tmp_path)), 1, f"{tmp_path}"),
        (explain(run, "saliency", "--index", "0", "-o", str(tmp_path / "no" / "s.png")), 1, "no such directory"),
    ]
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    cases.append((explain(run, "saliency", "--image", str(fifo)), 1, f"{fifo}: is a FIFO"))
    for argv, status, message in cases:
        assert main(argv) == status, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert DIGITS_CNN.read_text().startswith("#")  # never replaced


def test_embed_without_scikit_learn_says_how_to_install_it(run, tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    monkeypatch.setitem(sys.modules, "sklearn.decomposition", None)
    assert main(explain(run, "embed", "--layer", "conv3", "-o", str(tmp_path / "e.png"))) == 2
    assert "pip install 'dslc[explain]'" in capsys.readouterr().err
    assert not (tmp_path / "e.png").exists()


def test_device_gpu_reaches_the_cuda_executor(run, tmp_path, capsys):
    """Without a GPU, --device gpu is accepted and stops at the CUDA executor's own message (exit 1)."""
    status = main(explain(run, "saliency", "--index", "0", "--device", "gpu", "-o", str(tmp_path / "g.png")))
    if status == 0:  # a machine with a GPU
        assert (tmp_path / "g.png").exists()
    else:
        err = capsys.readouterr().err
        assert status == 1 and "Traceback" not in err and "gpu" in err.lower(), err


def test_every_method_has_help_with_an_example(capsys):
    from dslc.cli import build_parser

    methods = ("filters activations neighbors embed occlusion saliency classviz adversarial invert dream "
               "style").split()
    for method in methods:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["explain", method, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and f"dslc explain {method} models/" in out.split("examples:")[1], method
    assert main(["explain"]) == 2
    out = capsys.readouterr().out
    assert all(m in out for m in methods)
