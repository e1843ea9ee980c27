"""Commands on a trained run use the run's own --set (dslc/runtime/run_settings.py): eval,
predict, ensemble and explain build the model the run trained without the user repeating
`--set hidden=32`; the command line's --set wins; a checkpoint outside a run is used as
given; a damaged config.json is one message naming it (exit 1); an ensemble of runs trained
with different settings is refused."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from helpers import MODELS, run_cli

MLP = MODELS / "digits_mlp.net"
REF = ("--device", "reference")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Quick runs of the digits MLP (reference interpreter): h32 and h32b (another seed, with
    snapshots) trained with --set hidden=32, h16 with hidden=16, split with a 20% validation
    split."""
    root = tmp_path_factory.mktemp("runs")
    for name, sets in (("h32", ["hidden=32"]), ("h32b", ["hidden=32", "seed=1", "keep=every(1)"]),
                       ("h16", ["hidden=16"]), ("split", ["split=validation(0.2, test=0.2, seed=1)"])):
        argv = ["train", str(MLP), "--epochs", "2", "--out", str(root / name), "--quiet", *REF]
        assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    return root


def _note(run: Path) -> str:
    return f"using {run.name}'s settings: --set hidden=32 (from {run / 'config.json'})"


def test_eval_predict_and_explain_build_the_model_the_run_trained(runs, tmp_path, capsys):
    h32 = runs / "h32"
    code, out, err = run_cli(capsys, "eval", MLP, "--checkpoint", h32, "--json", *REF)
    assert code == 0 and json.loads(out)["checkpoint"] == str(h32 / "best")  # the note is not on stdout
    assert err.count(_note(h32)) == 1
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 64), np.float32))
    code, out, err = run_cli(capsys, "predict", MLP, "--checkpoint", h32 / "last", "--input", x, *REF)
    assert code == 0 and out.startswith("0: ") and _note(h32) in err
    code, out, err = run_cli(capsys, "explain", "saliency", MLP, "--checkpoint", h32, "--index", "0",
                             "-o", tmp_path / "s.png", "--json", *REF)
    assert code == 0 and (tmp_path / "s.png").exists() and _note(h32) in err


def test_epochs_and_other_training_settings_are_not_taken(runs, capsys):
    code, _, err = run_cli(capsys, "eval", MLP, "--checkpoint", runs / "h16", *REF)
    assert code == 0 and "--set hidden=16 (from" in err and "epochs" not in err  # --epochs 2 is recorded too


def test_a_runs_split_decides_the_examples_evaluated(runs, capsys):
    code, out, err = run_cli(capsys, "eval", MLP, "--checkpoint", runs / "split", "--split", "val", "--json", *REF)
    assert code == 0 and "--set split=validation(0.2, test=0.2, seed=1)" in err
    assert json.loads(out)["examples"] == 360  # 20% of digits' 1797 images; the file's 10% has 162


def test_the_command_lines_set_wins_over_the_runs(runs, capsys):
    code, _, err = run_cli(capsys, "eval", MLP, "--checkpoint", runs / "h32", "--set", "hidden=16", *REF)
    assert code == 1 and "does not fit" in err and "checkpoint has shape [64, 32], model [64, 16]" in err
    assert "using" not in err  # the run gave nothing the command line did not decide
    code, _, err = run_cli(capsys, "eval", MLP, "--checkpoint", runs / "h32", "--set", "hidden=32", *REF)
    assert code == 0 and "using" not in err


def test_a_checkpoint_outside_a_run_is_used_as_given(runs, tmp_path, capsys):
    sent = tmp_path / "sent"
    shutil.copytree(runs / "h32" / "best", sent)  # no config.json beside it
    code, _, err = run_cli(capsys, "eval", MLP, "--checkpoint", sent, *REF)
    assert code == 1 and "does not fit" in err and "using" not in err
    code, _, err = run_cli(capsys, "eval", MLP, "--checkpoint", sent, "--set", "hidden=32", *REF)
    assert code == 0 and "using" not in err


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _huge(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(17 << 20)  # sparse: the limit refuses it before a byte is read


def _edit(overrides) -> object:
    def change(path: Path) -> None:
        doc = json.loads(path.read_text())
        doc["overrides"] = overrides
        path.write_text(json.dumps(doc))
    return change


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_text("{"), "bad JSON"),
    (_edit([1]), "'overrides'"),
    (_edit({"hidden": {"x": 1}}), "'overrides.hidden'"),
    (_fifo, "FIFO"),
    (_huge, "16 MiB"),
    (_edit({"hidden": "abc"}), "hyper-parameter 'hidden' is int"),
    (_edit({"width": "32"}), "no hyper-parameter 'width'"),  # renamed in the .net file since
    (_edit({"split": "}"}), "cannot read '}'"),
], ids=["json", "overrides-list", "value-object", "fifo", "huge", "wrong-type", "renamed", "bad-split"])
def test_a_damaged_config_json_is_one_message_naming_it(runs, tmp_path, capsys, damage, says):
    run = tmp_path / "run"
    shutil.copytree(runs / "h32", run)
    damage(run / "config.json")
    code, _, err = run_cli(capsys, "eval", MLP, "--checkpoint", run / "best", *REF)
    assert code == 1 and str(run / "config.json") in err and says in err
    if "hyper-parameter" in says:
        assert "model 'digits_mlp' of " in err and "digits_mlp.net does not take" in err  # and the .net file


def test_an_ensemble_of_runs_trained_differently_is_refused_unless_set_decides(runs, capsys):
    code, _, err = run_cli(capsys, "ensemble", MLP, "--checkpoint", runs / "h32", "--checkpoint", runs / "h16", *REF)
    assert code == 2 and "different settings" in err
    assert f"hidden: 32 in {runs / 'h32'}, 16 in {runs / 'h16'}" in err
    code, _, err = run_cli(capsys, "ensemble", MLP, "--checkpoint", runs / "h32", "--checkpoint", runs / "h16",
                           "--set", "hidden=16", *REF)
    assert code == 1 and f"{runs / 'h32' / 'best'} does not fit" in err  # decided: the h32 member cannot be used


def test_an_ensemble_of_runs_trained_alike_uses_their_settings(runs, capsys):
    code, out, err = run_cli(capsys, "ensemble", MLP, "--checkpoint", runs / "h32", "--checkpoint", runs / "h32b",
                             *REF)
    assert code == 0 and "ensemble of 2" in out and "using the runs' settings: --set hidden=32" in err
    code, out, err = run_cli(capsys, "ensemble", MLP, "--snapshots", runs / "h32b", *REF)
    assert code == 0 and "ensemble of 2" in out and _note(runs / "h32b") in err


def test_export_writes_the_model_the_run_trained(runs, tmp_path, capsys):
    pytest.importorskip("onnx")
    code, out, err = run_cli(capsys, "export", MLP, "--checkpoint", runs / "h32", "-o", tmp_path / "m.onnx")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'm.onnx'}") and _note(runs / "h32") in err


def test_the_python_api_loads_a_run_with_its_own_settings(runs):
    """dslc.load(file, checkpoint=RUN) builds the model the run trained, as the verbs do; a
    keyword given wins over the run's."""
    import dslc
    from dslc.runtime.errors import TrainError

    m = dslc.load(MLP, checkpoint=runs / "h32")
    assert m.params["fc1.linear.weight"].shape == (64, 32)
    with pytest.raises(TrainError, match="does not fit"):
        dslc.load(MLP, checkpoint=runs / "h32", hidden=16)
