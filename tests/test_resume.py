"""Resuming is exact: a run killed (SIGKILL) at a step drawn from a seeded generator,
interrupted with Ctrl-C (SIGINT) mid-epoch, or killed while writing a checkpoint ends with
parameters and optimizer state bit-identical to an uninterrupted run of the same seed. The
recipe exercises every source of randomness: shuffling, augmentation, dropout masks, and
the step-dependent learning rate and Adam bias correction. A changed model is refused.

The signal lands where the test says: the training process is started through LAUNCH,
which sends it to itself right after a given step (not after a sleep, which lands
wherever the machine's load puts it)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.runs import read_records
from dslc.runtime.steplog import STEPS, read_steps
from helpers import MODELS

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
    # and so are the per-step rows: those of steps trained again after the checkpoint are not doubled
    steps = read_steps(run / "metrics_steps.csv")
    assert [r["step"] for r in steps] == list(range(1, 6 * 40 + 1)) and steps == read_steps(reference / STEPS)


# `python -c LAUNCH STEP SIGNAL ARGS...`: dslc ARGS, sending SIGNAL to itself once STEP is done.
LAUNCH = """
import os, signal, sys
from dslc.cli import main
from dslc.runtime.trainer import Trainer
at, sig, real = int(sys.argv[1]), getattr(signal, sys.argv[2]), Trainer._step
def step_then_signal(self, batch):
    loss = real(self, batch)
    if self.progress.step == at:
        os.kill(os.getpid(), sig)
    return loss
Trainer._step = step_then_signal
sys.exit(main(sys.argv[3:]))
"""


def train_until(model_file, out, step: int, sig: str) -> subprocess.CompletedProcess:
    """Train into `out`, sending `sig` (SIGKILL, SIGINT) to the process right after `step`."""
    return subprocess.run([sys.executable, "-c", LAUNCH, str(step), sig, "train", str(model_file), "--out",
                           str(out), "--quiet"], capture_output=True, text=True, timeout=600)


def resume(model_file, out) -> None:
    done = subprocess.run(cli("train", model_file, "--resume", out, "--quiet"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_sigkill_at_a_drawn_step_then_resume_is_bit_identical(model_file, uninterrupted):
    step = random.Random(2024).randrange(41, 6 * 40)  # after the first checkpoint, before the end
    out = model_file.parent / "killed"
    done = train_until(model_file, out, step, "SIGKILL")
    assert done.returncode == -signal.SIGKILL, done.stderr
    # checkpoints are written at the end of each epoch of 40 steps, after its last step
    assert load_checkpoint(out / "last").state["step"] == (step - 1) // 40 * 40
    resume(model_file, out)
    assert_same_final_state(out, uninterrupted)


def test_ctrl_c_writes_a_checkpoint_mid_epoch_and_resumes_exactly(model_file, uninterrupted):
    out = model_file.parent / "interrupted"
    done = train_until(model_file, out, 97, "SIGINT")  # step 17 of epoch 3
    assert done.returncode == 130, done.stderr
    assert "interrupted at step 97 (epoch 3)" in done.stderr and "--resume" in done.stderr
    state = load_checkpoint(out / "last").state
    assert (state["step"], state["epoch"], state["batches"]["position"]) == (97, 2, 17)
    resume(model_file, out)
    assert_same_final_state(out, uninterrupted)


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(model_file, uninterrupted):
    out = model_file.parent / "torn"
    assert train_until(model_file, out, 50, "SIGKILL").returncode == -signal.SIGKILL
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


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_resuming_a_run_another_process_writes_is_refused_before_its_checkpoint_is_read(
        model_file, uninterrupted, tmp_path, capsys):
    """The lock comes before the checkpoint: a writer still running may be replacing `last`,
    and a second writer that read it first was told the checkpoint was incomplete instead of
    who holds the run (the hostile trial "a second writer resuming a running run", now and
    then)."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "last" / "optimizer.safetensors").unlink()  # as a writer mid-replacement leaves it
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["train", str(model_file), "--resume", str(run), "--quiet"]) == 1
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"cannot resume: {run} is being written by another dslc process" in err and "incomplete" not in err
    assert main(["train", str(model_file), "--resume", str(run), "--quiet"]) == 1  # once it is free: why
    assert "optimizer.safetensors: missing" in capsys.readouterr().err


def test_an_early_stopped_run_resumed_with_a_changed_recipe_trains_on(tmp_path, capsys):
    """The early stop was the old recipe's verdict: resumed with more epochs and no stop rule,
    the run trains to its new end; and a changed watched metric starts its best afresh
    instead of comparing val_loss with a val_accuracy. (Before, nothing was trained, exit 0.)"""
    model, run = MODELS / "digits_mlp.net", tmp_path / "run"
    # a val_loss that falls never "improves" when more is better: stopped after 2 epochs
    stop = "stop=early(metric=val_loss, mode=max, patience=1)"
    assert main(["train", str(model), "--epochs", "6", "--set", stop, "--out", str(run), "--quiet"]) == 0
    assert load_checkpoint(run / "last").state["progress"]["stopped"]
    assert [r["epoch"] for r in read_records(run / "metrics.jsonl")] == [1, 2]
    assert main(["train", str(model), "--resume", str(run), "--epochs", "4", "--set", "stop=none", "--force",
                 "--quiet"]) == 0
    assert [r["epoch"] for r in read_records(run / "metrics.jsonl")] == [1, 2, 3, 4]
    progress = load_checkpoint(run / "last").state["progress"]
    assert not progress["stopped"] and progress["best_epoch"] >= 3  # val_accuracy's best, judged from epoch 3
    capsys.readouterr()


def test_a_run_resumed_on_another_training_split_is_refused(tmp_path, capsys):
    """A checkpoint records its training split (state.json's train_digest): the same recipe
    resumed on other examples is refused, not continued on them. A `classes=` run saved before
    the record, when the classes were kept before the split (so its validation and test
    examples were others), is refused too; --force continues on the new split."""
    model, run = MODELS / "digits_mlp.net", tmp_path / "run"
    sets = ["--epochs", "2", "--set", "data.classes=[5, 6, 7, 8, 9]", "--quiet"]
    assert main(["train", str(model), *sets, "--out", str(run)]) == 0
    state_file = run / "last" / "state.json"
    saved = json.loads(state_file.read_text())
    assert len(saved["train_digest"]) == 32
    for digest, words in (("0" * 32, "its training split is not the same examples now"),
                          (None, "kept `classes=` before splitting the data")):
        state = {k: v for k, v in saved.items() if k != "train_digest"}
        state_file.write_text(json.dumps(state if digest is None else {**state, "train_digest": digest}))
        capsys.readouterr()
        assert main(["train", str(model), *sets, "--resume", str(run)]) == 1
        err = capsys.readouterr().err
        assert f"cannot resume {run}: " in err and words in err and "--force" in err
    # evaluating that old checkpoint on its test split warns: it may have trained on some of it
    assert main(["eval", str(model), "--checkpoint", str(run / "last"), "--set", sets[3]]) == 0
    assert "the test split may hold examples it was trained on" in capsys.readouterr().err
    assert main(["train", str(model), *sets, "--resume", str(run), "--force"]) == 0


def test_a_saved_recipe_edited_by_hand_is_named_or_read_with_its_defaults(tmp_path, capsys):
    """The trainer reads the saved recipe's `stop` to judge a run resumed with a changed one:
    a `stop` that was no early() call was a TypeError traceback, and one deleted (as a newer
    setting is absent from an older checkpoint) a KeyError; the first is now refused naming
    the key, the second read at its default."""
    model, run = MODELS / "digits_mlp.net", tmp_path / "run"
    assert main(["train", str(model), "--epochs", "2", "--device", "reference", "--out", str(run), "--quiet"]) == 0
    state_file = run / "last" / "state.json"
    saved = json.loads(state_file.read_text())
    for stop in ("x", 3, {"call": "early", "args": {}}):
        saved["recipe"]["entries"]["stop"] = stop
        state_file.write_text(json.dumps(saved))
        capsys.readouterr()
        assert main(["train", str(model), "--resume", str(run), "--epochs", "3", "--force", "--device",
                     "reference", "--quiet"]) == 1
        assert f"{state_file}: 'recipe.entries.stop' must be null or an early(" in capsys.readouterr().err
    del saved["recipe"]["entries"]["stop"]
    state_file.write_text(json.dumps(saved))
    assert main(["train", str(model), "--resume", str(run), "--epochs", "3", "--force", "--device", "reference",
                 "--quiet"]) == 0
    assert [r["epoch"] for r in read_records(run / "metrics.jsonl")] == [1, 2, 3]
    capsys.readouterr()


def test_a_resume_that_cuts_the_data_otherwise_says_how_to_start_from_its_weights(tmp_path, capsys):
    """--force takes a changed recipe, but a run's data stream goes on only in the batches it
    was cut in: another batch size was refused as "saved batches are of 64 from 1258
    examples, these of 1000 from 1258", with no way out; it now names init = checkpoint(...).
    Nothing of the run is touched."""
    model, run = MODELS / "digits_mlp.net", tmp_path / "run"
    assert main(["train", str(model), "--epochs", "2", "--device", "reference", "--out", str(run), "--quiet"]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", str(model), "--resume", str(run), "--set", "batch=1000", "--epochs", "3", "--force",
                 "--device", "reference", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert (f"cannot continue the data stream of {run}: it was cut in batches of 64 from 1258 training examples, "
            f"and this recipe cuts 1000 from 1258. Start a new run from its weights instead: "
            f'init = checkpoint("{run / "last"}")') in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_random_streams_edited_beyond_their_ranges_are_named(tmp_path, capsys):
    """A generator's state holds unsigned counters: -1 or 2**64 in state.json was an
    OverflowError traceback from NumPy's PCG64, not the message other bad states get."""
    model, run = MODELS / "digits_mlp.net", tmp_path / "run"
    assert main(["train", str(model), "--epochs", "2", "--device", "reference", "--out", str(run), "--quiet"]) == 0
    state_file = run / "last" / "state.json"
    saved = json.loads(state_file.read_text())
    for stream, key, value in (("batches", "uinteger", -1), ("batches", "has_uint32", 2**64),
                               ("rng", "uinteger", 2**64)):
        state = json.loads(json.dumps(saved))
        target = state["batches"]["rng"] if stream == "batches" else state["rng"]["dropout"]
        target[key] = value
        state_file.write_text(json.dumps(state))
        capsys.readouterr()
        assert main(["train", str(model), "--resume", str(run), "--device", "reference", "--quiet"]) == 1
        assert f"cannot continue the random streams of {run} from {state_file}" in capsys.readouterr().err
