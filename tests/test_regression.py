"""Regression from the command line: float targets in the data, the model's target input, the
shipped example trained by `dslc train` to a stated error, and eval/predict of its checkpoint.

models/curve_mlp.net fits y = sin(2 x1) + x2^2 / 2 - x1 x2 / 2 + noise (std 0.1, so an
MSE of 0.01 is the best any model can do) from 1,000 shipped samples; its recipe's 60
epochs take its loss from about 3 at initialisation to about 0.02 (the README's figures).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import dslc
from dslc.diagnostics import CompileError
from dslc.runtime.data import DataError, load
from dslc.runtime.data.datasets import CURVE_FILE, curve, curve_function, make_curve
from dslc.runtime.data.tabular import csv, npz
from dslc.runtime.layout import layout
from helpers import MODELS, run_cli

CURVE = MODELS / "curve_mlp.net"


def test_the_shipped_curve_is_what_make_curve_writes_and_fits_its_function():
    assert CURVE_FILE.read_text() == make_curve()
    ds = curve()
    assert ds.regression and ds.x.shape == (1000, 2) and ds.y.shape == (1000, 1) and ds.classes == 0
    residual = ds.y[:, 0] - curve_function(ds.x[:, 0], ds.x[:, 1])
    assert abs(residual.std() - 0.1) < 0.01 and abs(residual.mean()) < 0.01


def test_csv_target_columns_and_npz_float_targets(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,y1,y2\n1,2,0.5,1.5\n3,4,2.5,-1\n")
    ds = csv(tmp_path / "t.csv", target=["y1", "y2"])
    np.testing.assert_array_equal(ds.x, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(ds.y, [[0.5, 1.5], [2.5, -1]])
    one = csv(tmp_path / "t.csv", label="y2", targets=True)  # the label column read as one float
    assert one.y.dtype == np.float32 and one.y.tolist() == [1.5, -1.0] and one.x.shape == (2, 3)
    with pytest.raises(DataError, match="no target column 'z'"):
        csv(tmp_path / "t.csv", target=["z"])
    np.savez(tmp_path / "r.npz", x=np.ones((3, 2)), y=np.arange(6.0).reshape(3, 2, 1))
    assert npz(tmp_path / "r.npz", targets=True).y.shape == (3, 2, 1)
    np.savez(tmp_path / "bad.npz", x=np.ones((3, 2)), y=np.array([0.0, np.nan, 1.0]))
    with pytest.raises(DataError, match="the target of example 1"):
        npz(tmp_path / "bad.npz", targets=True)


def test_csv_target_naming_a_column_twice_or_leaving_no_feature_is_refused(tmp_path):
    """target=["y", "y"] (or a name and its index) made y [N, 2] of one column, reported as a
    shape mismatch pointing at the model; every column a target made x [N, 0], and the hint
    then said to declare `input x : f32[N, 0]`."""
    (tmp_path / "t.csv").write_text("a,b,y1,y2\n1,2,0.5,1.5\n3,4,2.5,-1\n")
    for twice in (["y1", "y1"], ["y1", "2"]):
        with pytest.raises(DataError, match=r"target names column 3 \('y1'\) twice"):
            csv(tmp_path / "t.csv", target=twice)
    with pytest.raises(DataError, match="no feature column: every column is a target"):
        csv(tmp_path / "t.csv", target=["a", "b", "y1", "y2"])
    (tmp_path / "l.csv").write_text("label\n1\n0\n")
    with pytest.raises(DataError, match="no feature column: the only column is the label"):
        csv(tmp_path / "l.csv")


def test_a_regression_model_reads_labels_as_numbers_and_a_classifier_refuses_targets():
    digits, _ = load("digits", {}, labels=False)
    assert digits.regression and digits.y.dtype == np.float32 and digits.classes == 0
    with pytest.raises(DataError, match="holds float targets"):
        load("curve", {}, labels=True)


def test_the_target_input_is_the_one_the_loss_reads_and_must_fit_the_data(net):
    model = dslc.load(CURVE)
    fit = layout(model, curve())
    assert (fit.x, fit.y, fit.regression, fit.target_shape) == ("x", "y", True, (1,))
    assert fit.feeds(np.zeros((4, 2)), np.zeros(4))["y"].shape == (4, 1)
    wrong = dslc.load(net(CURVE.read_text().replace("input y : f32[N, 1]", "input y : f32[N, 3]")
                          .replace("linear(1)", "linear(3)")))
    with pytest.raises(CompileError, match=r"targets of shape \[1\] per example but input 'y' is f32\[N, 3\]"):
        layout(wrong, curve())
    unread = dslc.load(net("model m {\n  input x : f32[N, 2]\n  input t : f32[N, 1]\n"
                           "  loss mse(x |> linear(1), t * 2.0)\n}\n"))
    with pytest.raises(CompileError, match="regression targets"):
        layout(unread, curve())


@pytest.fixture(scope="module")
def curve_run(tmp_path_factory):
    """models/curve_mlp.net trained by `dslc train` with its own recipe (60 epochs, about a second)."""
    from dslc.cli import main
    out = tmp_path_factory.mktemp("runs") / "curve"
    assert main(["train", str(CURVE), "--out", str(out), "--test", "--quiet"]) == 0
    return out


def test_curve_mlp_trains_to_a_fiftieth_of_its_initial_loss(curve_run):
    """The stated result: the MSE falls at least 50-fold from its value at initialisation (3.06 on
    the sanity check's sample), the test split's below 0.03 (three times the noise's 0.01), r2 above 0.95."""
    records = [json.loads(line) for line in (curve_run / "metrics.jsonl").read_text().splitlines()]
    result = json.loads((curve_run / "result.json").read_text())
    first, best = records[0]["train_loss"], result["best"]
    assert result["metric"] == "val_loss" and best < records[0]["val_loss"] / 50
    assert result["test_loss"] < 0.03 and result["test_r2"] > 0.95 and first > 1.0
    assert {"train_mae", "train_r2", "val_mae", "val_r2"} <= set(records[-1])


def test_eval_and_predict_a_regression_checkpoint(curve_run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "eval", CURVE, "--checkpoint", curve_run / "best", "--json")
    report = json.loads(out)
    assert code == 0 and report["loss"] < 0.03 and set(report["metrics"]) == {"mae", "r2"}
    assert "accuracy" not in report
    points = np.array([[0.5, -1.0], [1.0, 1.0]], np.float32)
    np.save(tmp_path / "x.npy", points)
    code, out, _ = run_cli(capsys, "predict", CURVE, "--checkpoint", curve_run / "best", "--input",
                           tmp_path / "x.npy", "--json")
    got = np.array(json.loads(out))[:, 0]
    assert code == 0 and np.all(np.abs(got - curve_function(points[:, 0], points[:, 1])) < 0.3)
    code, _, err = run_cli(capsys, "ensemble", CURVE, "--checkpoint", curve_run / "best", "--checkpoint",
                           curve_run / "last")
    assert code == 1 and "regression model" in err


def test_mixup_and_classes_are_refused_for_regression(net, tmp_path, capsys):
    text = CURVE.read_text()
    mixed = net(text.replace("epochs    = 60", "epochs    = 2\n    augment   = [mixup(0.2)]"))
    code, _, err = run_cli(capsys, "train", mixed, "--out", tmp_path / "a")
    assert code == 1 and "mixup blends class labels" in err
    chosen = net(text.replace("data      = curve()", "data      = digits(classes=[1, 2])"), name="b.net")
    code, _, err = run_cli(capsys, "train", chosen, "--out", tmp_path / "b")
    assert code == 1 and "reads float targets, not classes" in err


R2 = """
model fit {
    input p : f32[N, 2]
    input y : f32[N, 2]
    metric r2(p, y)
    loss mse(p, y)
}
"""


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_r2_of_a_constant_target_is_1_for_an_exact_prediction_else_0(net, device):
    """A batch whose targets are all equal (a last batch of one) has nothing to explain: r2 is
    scikit-learn's force_finite value, the same on every device, never a ZeroDivisionError or -inf."""
    fit = dslc.load(net(R2)).compile(device)
    t = np.full((3, 2), 0.5, np.float32)
    r2 = lambda p, y: float(fit.forward({}, {"p": p, "y": y})["r2"])
    assert r2(t, t) == 1.0 and r2(t + 0.25, t) == 0.0 and r2(t[:1] - 1, t[:1]) == 0.0
    assert np.isnan(r2(np.where(np.eye(3, 2) > 0, np.nan, t).astype(np.float32), t))
    spread = np.array([[0.5, 0.5], [0.5, 1.5], [0.5, 0.5]], np.float32)  # one target differs: the formula
    assert r2(spread, spread) == 1.0 and abs(r2(np.full_like(spread, 2 / 3), spread)) < 1e-6  # the mean: 0
    curve = dslc.load(CURVE)
    out = curve.compile(device).forward(curve.init(0), {"x": np.ones((4, 2), np.float32),
                                                        "y": np.full((4, 1), 0.5, np.float32)})
    assert float(out["r2"]) == 0.0


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_r2_of_a_constant_target_has_a_zero_gradient(net, device):
    """r2 of a constant target is the constant 1 or 0, so its gradient is 0, not the infinity or
    NaN that dividing by sum (t - mean t)^2 = 0 gave; targets that differ keep the formula's."""
    fit = dslc.load(net(R2)).compile(device)
    t = np.full((3, 2), 0.1, np.float32)  # 0.1: the mean of its copies need not be exactly 0.1
    value, g = fit.grad({}, {"p": t + 0.25, "y": t}, of="r2", wrt=["p", "y"])
    assert value == 0.0 and not np.any(g["p"]) and not np.any(g["y"])
    spread = np.array([[0.5, 0.5], [0.5, 1.5], [0.5, 0.5]], np.float32)  # T = 5/6: d r2/dp = -2 (p - t) / T
    value, g = fit.grad({}, {"p": spread + 0.1, "y": spread}, of="r2", wrt=["p"])
    assert np.allclose(g["p"], -0.24, rtol=1e-5)
