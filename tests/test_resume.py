"""Resuming is exact: a run killed at a random moment (SIGKILL), interrupted with Ctrl-C
(SIGINT, mid-epoch) or killed while writing a checkpoint ends with parameters and
optimizer state bit-identical to an uninterrupted run of the same seed. The recipe
exercises every source of randomness: shuffling, augmentation, dropout masks, and the
step-dependent learning rate and Adam bias correction. A changed model is refused."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.runs import read_records

pytestmark = pytest.mark.slow

MODEL = """
model mlp(hidden: int = 32) {
    input image : f32[N, 64]
    input label : i64[N]
    fc1: h = image |> linear(hidden) |> relu |> dropout(p=0.3)
    fc2: logits = h |> linear(10)
    metric accuracy(logits, label)
    loss cross_entropy(logits, label)
}

train mlp {
    data = digits()
    split = validation(0.1, test=0.2, seed=0)
    augment = [random_crop(8, pad=1)]
    batch = 32
    epochs = 6
    optimizer = adam(lr=3e-3)
    schedule = cosine(warmup=1)
    seed = 7
}
"""


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "dslc.cli", *map(str, args)]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "mlp.net"
    path.write_text(MODEL)
    return path


@pytest.fixture(scope="module")
def uninterrupted(model_file) -> Path:
    out = model_file.parent / "whole"
    assert main(["train", str(model_file), "--out", str(out), "--quiet"]) == 0
    return out


def assert_same_final_state(run: Path, reference: Path) -> None:
    got, want = load_checkpoint(run / "last"), load_checkpoint(reference / "last")
    assert got.state["step"] == want.state["step"] == 6 * 40
    for part in ("weights", "optimizer"):
        a, b = getattr(got, part), getattr(want, part)
        assert a.keys() == b.keys()
        for name in a:
            assert np.array_equal(a[name], b[name]), f"{part} {name} differs"
    # the metrics of the resumed run are the uninterrupted run's, epoch for epoch
    drop_time = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]
    assert drop_time(read_records(run / "metrics.jsonl")) == drop_time(read_records(reference / "metrics.jsonl"))


def start(model_file, out) -> subprocess.Popen:
    return subprocess.Popen(cli("train", model_file, "--out", out, "--quiet"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc, out: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "last" / "state.json").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.02)


def resume(model_file, out) -> None:
    done = subprocess.run(cli("train", model_file, "--resume", out, "--quiet"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(model_file, uninterrupted):
    out = model_file.parent / "killed"
    proc = start(model_file, out)
    wait_for_checkpoint(proc, out)
    delay = random.uniform(0.0, 1.5)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(out / "last").state["step"]
    print(f"killed {delay:.2f}s after the first checkpoint; resuming from step {killed_at}")
    resume(model_file, out)
    assert_same_final_state(out, uninterrupted)


def test_ctrl_c_writes_a_checkpoint_mid_epoch_and_resumes_exactly(model_file, uninterrupted):
    out = model_file.parent / "interrupted"
    proc = start(model_file, out)
    wait_for_checkpoint(proc, out)
    time.sleep(random.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "checkpoint written to" in err and "--resume" in err
    state = load_checkpoint(out / "last").state
    assert state["step"] == state["epoch"] * 40 + state["batches"]["position"]
    resume(model_file, out)
    assert_same_final_state(out, uninterrupted)


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(model_file, uninterrupted):
    out = model_file.parent / "torn"
    proc = start(model_file, out)
    wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The state a kill between save_checkpoint's two renames leaves: the previous checkpoint
    # moved aside to .last.old, and a half-written new one in .last.tmp.
    os.rename(out / "last", out / ".last.old")
    shutil.copytree(out / ".last.old", out / ".last.tmp")
    weights = out / ".last.tmp" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    resume(model_file, out)
    assert_same_final_state(out, uninterrupted)


def test_resume_with_a_changed_model_or_recipe(model_file, uninterrupted, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    assert main(["train", str(model_file), "--resume", str(run), "--set", "hidden=16", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "differs from its checkpoint" in err and "fc1.linear.weight: checkpoint has shape [64, 32], model [64, 16]" in err
    assert main(["train", str(model_file), "--resume", str(run), "--set", "optimizer=sgd(lr=0.1)", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint was trained with adam, recipe uses sgd" in err
    assert main(["train", str(model_file), "--resume", str(run), "--epochs", "7", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "the recipe changed" in err and "epochs: 6 -> 7" in err and "--force" in err
    assert main(["train", str(model_file), "--resume", str(run), "--epochs", "7", "--quiet", "--force"]) == 0
    assert load_checkpoint(run / "last").state["step"] == 7 * 40
    assert [r["epoch"] for r in read_records(run / "metrics.jsonl")] == list(range(1, 8))
