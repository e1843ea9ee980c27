"""The run directory: config.json, metrics.jsonl/.csv (read back with the csv module),
curves.png (a real PNG), resuming that drops later epochs, torn lines, several runs in one plot."""
from __future__ import annotations

import csv
import json
import math
import struct

import numpy as np
import pytest

from dslc.recipe import schema as R
from dslc.runtime import plots, runs
from dslc.runtime.runs import Run, RunError


def record(epoch: int, **extra) -> dict:
    """A plausible epoch: loss falling, accuracy rising, per-layer update ratios."""
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "val_loss": 2.2 / epoch, "train_accuracy": 1 - 0.5 / epoch,
            "val_accuracy": 1 - 0.6 / epoch, "lr": 0.1 * 0.9 ** epoch, "time": 1.5,
            "update_ratio": {"fc1.weight": 1e-3 / epoch, "fc2.weight": 2e-3 / epoch}, **extra}


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def run(tmp_path):
    return Run.create(tmp_path / "lenet", runs.make_config(R.defaults("lenet"), "abcd", seed=3, model_file="x.net"))


def test_config_holds_recipe_hashes_seed_and_versions(run):
    config = json.loads((run.path / "config.json").read_text())
    assert R.Recipe.from_json(config["recipe"]) == R.defaults("lenet")
    assert config["model_hash"] == "abcd" and config["seed"] == 3 and config["model_file"] == "x.net"
    assert len(config["recipe_hash"]) == 16 and {"python", "numpy", "dslc"} <= set(config["versions"])
    assert run.config == config


def test_an_existing_run_is_not_overwritten_by_accident(run):
    run.log(record(1))
    with pytest.raises(RunError, match="already holds a run"):
        Run.create(run.path, {})
    fresh = Run.create(run.path, {"seed": 1}, overwrite=True)
    assert fresh.history() == [] and not (run.path / "metrics.csv").exists() and fresh.config == {"seed": 1}


def test_metrics_files_are_written_each_epoch_and_well_formed(run):
    for epoch in (1, 2, 3):
        run.log(record(epoch))
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [record(e) for e in (1, 2, 3)] == run.history()
    rows = read_csv(run.path / "metrics.csv")
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr", "time",
                             "update_ratio/fc1.weight", "update_ratio/fc2.weight"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row, epoch in zip(rows, (1, 2, 3)):  # every cell a plain number that reads back exactly
        assert float(row["val_loss"]) == 2.2 / epoch and float(row["update_ratio/fc2.weight"]) == 2e-3 / epoch


def test_csv_header_covers_a_column_that_appears_later_and_blank_cells(run):
    run.log(record(1, val_loss=None))
    run.log(record(2, grad_norm=np.float32(0.5), val_accuracy=float("nan")))
    rows = read_csv(run.path / "metrics.csv")
    assert rows[0]["grad_norm"] == "" and rows[1]["grad_norm"] == "0.5"
    assert rows[0]["val_loss"] == "" and math.isnan(float(rows[1]["val_accuracy"]))
    assert run.history()[1]["grad_norm"] == 0.5  # NumPy scalars are stored as plain numbers


def test_curves_png_is_a_real_image(run):
    for epoch in range(1, 6):
        run.log(record(epoch))
    width, height = png_size(run.path / "curves.png")
    assert (width, height) == (1100, 400) and (run.path / "curves.png").stat().st_size > 10_000
    assert not list(run.path.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_curves_without_a_metric_still_draw_the_loss(run):
    run.log({"epoch": 1, "train_loss": 1.0})
    run.log({"epoch": 2, "train_loss": 0.5})
    assert png_size(run.path / "curves.png") == (1100, 400)
    assert plots.metric_names(run.history()) == []


def test_resume_drops_epochs_after_the_checkpoint_and_appends_after_it(run):
    for epoch in (1, 2, 3, 4):
        run.log(record(epoch))
    resumed = Run.resume(run.path, epoch=2)
    assert [r["epoch"] for r in resumed.history()] == [1, 2]
    resumed.log(record(3, time=9.0))
    assert [r["epoch"] for r in resumed.history()] == [1, 2, 3]
    rows = read_csv(run.path / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and rows[2]["time"] == "9.0"


def test_resume_clears_the_temporaries_an_earlier_writer_could_not(run):
    """A writer killed mid-checkpoint, or whose disk went read-only, leaves hidden .tmp files
    and directories; the next writer holding the lock removes them, and nothing else."""
    left = [run.path / ".best.tmp", run.path / ".last.tmp", run.path / runs.SNAPSHOTS / ".epoch-0002.tmp"]
    for d in left:
        d.mkdir(parents=True)
        (d / "weights.safetensors").write_bytes(b"half")
    (run.path / ".metrics.csv.x1y2.tmp").write_bytes(b"half")
    (run.path / "notes.tmp").write_bytes(b"the user's")
    (run.path / ".hidden").write_bytes(b"the user's")
    run.close()
    Run.resume(run.path, epoch=0)
    assert sorted(p.name for p in run.path.iterdir()) == [".hidden", "config.json", "metrics.csv",
                                                          "metrics.jsonl", "notes.tmp", "snapshots"]
    assert not any((run.path / runs.SNAPSHOTS).iterdir())


def test_resume_needs_an_existing_run(tmp_path):
    with pytest.raises(RunError, match="nothing to resume"):
        Run.resume(tmp_path / "none", epoch=1)


def test_a_torn_last_line_is_skipped_and_then_replaced(run):
    run.log(record(1))
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # killed mid-write
    assert [r["epoch"] for r in run.history()] == [1]
    run.log(record(2))
    assert run.history() == [record(1), record(2)]
    assert (run.path / "metrics.jsonl").read_text().count("\n") == 2


def test_a_damaged_middle_line_is_an_error(run):
    (run.path / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(RunError, match=r"metrics.jsonl:2: not a JSON record"):
        run.history()


@pytest.mark.parametrize("edit, message", [
    ({"update_ratio": "x"}, "'update_ratio' must be a JSON object, got a string"),
    ({"update_ratio": [1e-3]}, "'update_ratio' must be a JSON object, got a list"),
    ({"update_ratio": {"fc1.weight": "x"}}, "'update_ratio.fc1.weight' must be a number or null, got a string"),
    ({"train_loss": 10 ** 400}, "'train_loss' must be a number or null, got a 401-digit number")])
def test_hand_edited_records_the_plots_cannot_draw_are_named(tmp_path, edit, message):
    # an update_ratio that is no object was an AttributeError traceback from plot --ratios,
    # and an integer beyond float's range an OverflowError from matplotlib
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text(json.dumps(record(1)) + "\n" + json.dumps(record(2, **edit)) + "\n")
    for draw in (runs.plot_runs, runs.plot_run_ratios):
        with pytest.raises(RunError) as e:
            draw([tmp_path / "r"], tmp_path / "out.png")
        assert str(e.value) == f"{tmp_path / 'r' / 'metrics.jsonl'}:2: {message}"
    assert not (tmp_path / "out.png").exists()
    (tmp_path / "r" / "metrics.jsonl").write_text(json.dumps(record(1, update_ratio=None)) + "\n")
    runs.plot_run_ratios([tmp_path / "r"], tmp_path / "out.png")  # null: no ratios that epoch


def test_plot_runs_draws_several_runs(tmp_path):
    for name, scale in (("adam", 1.0), ("sgd", 1.4)):  # written directly: log() is tested above
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(
            {"epoch": e, "train_loss": scale / e, "val_loss": scale * 1.1 / e, "train_accuracy": 1 - scale / (3 * e),
             "val_accuracy": 1 - scale / (2.5 * e)}) + "\n" for e in range(1, 8)))
    out = tmp_path / "compare.png"
    runs.plot_runs([tmp_path / "adam", tmp_path / "sgd"], out)
    assert png_size(out) == (1100, 400) and out.stat().st_size > 10_000
    with pytest.raises(RunError, match="missing: no metrics.jsonl; is it a run directory"):
        runs.plot_runs([tmp_path / "missing"], out)
    (tmp_path / "stopped").mkdir()  # a run whose loss became NaN in its first epoch: config.json alone
    (tmp_path / "stopped" / "config.json").write_text("{}")
    with pytest.raises(RunError, match="stopped: a run directory with no epoch to plot .* stopped before the first"):
        runs.plot_runs([tmp_path / "adam", tmp_path / "stopped"], out)


def test_records_need_an_epoch(run):
    with pytest.raises(ValueError, match="epoch"):
        run.log({"train_loss": 1.0})
