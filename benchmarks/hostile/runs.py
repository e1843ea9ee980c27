"""Issue 12, items 6, 7, 8 and 11: run files edited by hand or damaged, values accepted
silently (optimizer state, progress, model hash, non-finite state, NaN inputs), a checkpoint
choosing what eval reads, and faults during training (full or read-only disk, two writers,
Ctrl-C while starting)."""
from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import safetensors.numpy as st

from benchmarks.hostile.kit import MLP, MODELS, Case, Trial, dslc, interrupt_after


def resume(run) -> list:
    return ["train", MLP, "--resume", run, "--device", "reference", "--quiet"]


def edit_json(path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def rewrite_arrays(checkpoint, file: str, change) -> None:
    """Replace the arrays of `file` in a checkpoint by change(arrays), keeping state.json's checksum right."""
    path = checkpoint / file
    data = st.save(change(st.load(path.read_bytes())))
    path.write_bytes(data)
    edit_json(checkpoint / "state.json",
              lambda doc: doc["files"].update({file: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}))


def state_trial(item: int, name: str, change, *says, checkpoint: str = "last", raw: str | None = None) -> Trial:
    """Resuming a run whose checkpoint's state.json was edited by `change` (or replaced by `raw` text)."""
    def make(ws):
        run = ws.run_dir()
        state = run / checkpoint / "state.json"
        if raw is not None:
            state.write_text(raw)
        else:
            edit_json(state, change)
        return Case(resume(run), 1, says=("state.json", *says))
    return Trial(item, name, make)


def run_file_trial(name: str, stage, *says, verb: str = "resume") -> Trial:
    """Resuming (or plotting, or evaluating its best checkpoint) a run after `stage(run)` damaged
    one of its files."""
    def make(ws):
        run = ws.run_dir()
        stage(run)
        argv = {"resume": resume(run), "plot": ["plot", run, "-o", "c.png"],
                "eval": ["eval", MLP, "--checkpoint", run / "best", "--device", "reference"]}[verb]
        return Case(argv, 1, says=says)
    return Trial(6, name, make)


def _set(**values):
    return lambda doc: doc.update(values)


def _in(key: str, **values):
    return lambda doc: doc[key].update(values)


def _counter(key: str, value):
    """Set a counter both at the top of state.json and in its progress, as a careful editor would."""
    def change(doc):
        doc[key] = doc["progress"][key] = value
    return change


def _directory_for(path):
    path.unlink()
    path.mkdir()


def _fifo_for(path):
    path.unlink()
    os.mkfifo(path)


def _damage_steps(path):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + ["1,x,y\n"] + lines[3:]))


TRIALS = [
    state_trial(6, "state.json without 'progress'", lambda doc: doc.pop("progress"), "'progress' is missing"),
    state_trial(6, "state.json with an extra key", _set(extra=1), "unknown key 'extra'"),
    state_trial(6, "state.json: progress a string", _set(progress="x"), "'progress'"),
    state_trial(6, "state.json: progress with an extra key", _in("progress", speed=1), "'progress.speed'"),
    state_trial(6, "state.json: rng a list", _set(rng=[]), "'rng'"),
    state_trial(6, "state.json: batches empty", _set(batches={}), "'batches."),
    state_trial(6, "state.json: recipe a number", _set(recipe=1), "'recipe'"),
    state_trial(6, "state.json: recipe entries of the wrong shape", _in("recipe", entries={"data": {"call": 1}}),
                "'recipe.entries.data'"),
    state_trial(6, "state.json: normalization a string", _set(normalization="x"), "'normalization'"),
    state_trial(6, "state.json: files a list", _set(files=[]), "files"),
    state_trial(6, "state.json: step a string", _set(step="1"), "'step'"),
    state_trial(6, "state.json: 100,000 nested [", None, "nested too deeply", raw="[" * 100_000),
    run_file_trial("config.json is []", lambda run: (run / "config.json").write_text("[]"), "config.json"),
    run_file_trial("config.json: recipe a number", lambda run: edit_json(run / "config.json", _set(recipe=1)),
                   "config.json", "'recipe'"),
    run_file_trial("config.json: overrides a list", lambda run: edit_json(run / "config.json", _set(overrides=[1])),
                   "config.json", "'overrides'"),
    run_file_trial("eval: config.json overrides a list", lambda run: edit_json(run / "config.json",
                                                                            _set(overrides=[1])),
                   "config.json", "'overrides'", verb="eval"),
    run_file_trial("eval: config.json overrides a hyper-parameter the model lacks",
                   lambda run: edit_json(run / "config.json", _set(overrides={"hiddn": "32"})),
                   "config.json", "digits_mlp.net", "no hyper-parameter 'hiddn'", verb="eval"),
    run_file_trial("eval: config.json is a FIFO", lambda run: _fifo_for(run / "config.json"),
                   "config.json", "FIFO", verb="eval"),
    run_file_trial("metrics.jsonl: a record without epoch",
                   lambda run: (run / "metrics.jsonl").write_text('{"train_loss": 1.0}\n'), "metrics.jsonl:1", "epoch"),
    run_file_trial("metrics.jsonl is a directory", lambda run: _directory_for(run / "metrics.jsonl"),
                   "metrics.jsonl", "directory"),
    run_file_trial("metrics_steps.csv: a damaged row", lambda run: _damage_steps(run / "metrics_steps.csv"),
                   "metrics_steps.csv:3", "not a row"),
    run_file_trial("metrics_steps.csv is a directory", lambda run: _directory_for(run / "metrics_steps.csv"),
                   "metrics_steps.csv", "directory"),
    state_trial(7, "progress: a plateau scale that is a string", _in("progress", plateau={"scale": "x"}),
                "'progress.plateau.scale'"),
    run_file_trial("plot: a metrics record without epoch",
                   lambda run: (run / "metrics.jsonl").write_text('{"val_loss": 1.0}\n'), "metrics.jsonl:1",
                   verb="plot"),
    state_trial(7, "progress: batches.position = 10^6", _in("batches", position=10**6), "'batches.position'"),
    state_trial(7, "progress: a negative epoch", _counter("epoch", -1), "epoch"),
    state_trial(7, "progress: step = 10^12", _counter("step", 10**12), "'step'"),
    state_trial(7, "progress: classes = -1", _set(classes=-1), "'classes'"),
]


def _transposed_moment(ws):
    run = ws.run_dir()
    rewrite_arrays(run / "last", "optimizer.safetensors",
                   lambda arrays: {k: (np.ascontiguousarray(v.T) if v.ndim == 2 else v) for k, v in arrays.items()})
    return Case(resume(run), 1, says=("optimizer state", "differs from its checkpoint"))


def _edited_model(force: bool, verb: str = "eval"):
    def make(ws):
        run = ws.run_dir()
        net = ws.net(text=MLP.read_text().replace("|> relu", "|> tanh"), name="digits_mlp.net")
        extra = ["--input", ws.file("x.npy", _npy(np.zeros((1, 64), np.float32)))] if verb == "predict" else []
        argv = [verb, net, "--checkpoint", run, "--device", "reference", *extra] + (["--force"] if force else [])
        return Case(argv, 0 if force else 1, says=("warning",) if force else ("another graph", "--force"))
    return make


def _npy(array) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _nan_weights(ws):
    run = ws.run_dir()
    rewrite_arrays(run / "best", "weights.safetensors",
                   lambda arrays: {k: np.full_like(v, np.nan) if v.ndim == 2 else v for k, v in arrays.items()})
    return Case(["eval", MLP, "--checkpoint", run, "--device", "reference"], 1, says=("weights.safetensors", "NaN"))


def _finite_checkpoints(run):
    """`after` check: every checkpoint left in `run` loads (finite, complete), and none is `best` alone."""
    def after(_):
        from dslc.runtime.checkpoint import CheckpointError, load_checkpoint
        problems = []
        for name in ("last", "best"):
            if (run / name).exists():
                try:
                    load_checkpoint(run / name)
                except CheckpointError as e:
                    problems.append(f"{name} does not load: {e}")
        if (run / "best").exists() and not (run / "last").exists():
            problems.append("best was written but last was not: the run cannot be resumed")
        return problems
    return after


def _diverging(ws):
    net = ws.net(text=(MODELS / "digits_cnn.net").read_text(), name="digits_cnn.net")
    argv = ["train", net, "--device", "reference", "--set", "optimizer=sgd(lr=1e6)", "--epochs", "3", "--out", "run",
            "--quiet"]
    return Case(argv, 1, says=("not written", "infinite"), after=_finite_checkpoints(ws.path / "run"))


def _secret_recipe(ws):
    run = ws.run_dir()
    secret = ws.file("secret.csv", "SECRET-LINE-4711,x\n1,2\n")
    data = {"call": "csv", "args": {"path": str(secret), "label": "label", "classes": []}}
    edit_json(run / "best" / "state.json", lambda doc: doc["recipe"]["entries"].update(data=data))
    return Case(["eval", MLP, "--checkpoint", run, "--device", "reference"], 0, says=("warning",),
                never_says=("SECRET",))


TRIALS += [
    Trial(7, "optimizer: a transposed Adam moment", _transposed_moment),
    Trial(7, "model hash: eval with relu edited to tanh", _edited_model(False)),
    Trial(7, "model hash: eval --force with relu edited to tanh", _edited_model(True)),
    Trial(7, "model hash: predict with relu edited to tanh", _edited_model(False, "predict")),
    Trial(7, "non-finite: NaN weights evaluated", _nan_weights),
    Trial(7, "non-finite: running_var overflowing (SGD lr 1e6, digits_cnn)", _diverging, slow=True),
    Trial(8, "a checkpoint's recipe naming a secret file", _secret_recipe),
]


# ---- faults during training ---------------------------------------------------------------

def _full_disk(size: str):
    def make(ws):
        disk = ws.tmpfs("disk", size)
        run = disk / "run"
        argv = ["train", MLP, "--device", "reference", "--epochs", "6", "--out", run, "--quiet"]

        def after(outcome):
            problems = _finite_checkpoints(run)(outcome)
            if outcome.status == 1 and "no space" not in outcome.stderr:
                problems.append(f"the message does not say the disk is full: {outcome.stderr!r}")
            return problems  # temporaries left on the disk: kit.check looks under the whole workspace
        return Case(argv, (0, 1), after=after)
    return make


def _wait_for(path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _read_only_mid_run(ws):
    disk = ws.tmpfs("disk", "16m")
    run = disk / "run"
    argv = ["train", MLP, "--device", "reference", "--epochs", "400", "--out", run, "--quiet"]

    def during(proc):
        _wait_for(run / "last" / "state.json")
        ws.remount(disk, "ro")

    def after(outcome):
        # A checkpoint half-written when the disk went read-only cannot be removed there; the
        # next run on the mended disk must clear it and continue from what was saved.
        problems = _finite_checkpoints(run)(outcome)
        ws.remount(disk, "rw")
        epoch = json.loads((run / "last" / "state.json").read_text())["epoch"]
        done = dslc([*resume(run), "--epochs", epoch + 1, "--force"], cwd=ws.path, env=ws.env({}))
        if done.returncode:
            problems.append(f"resuming on the mended disk failed ({done.returncode}): {done.stderr[-500:]!r}")
        return problems
    return Case(argv, 1, says=("read-only",), during=during, after=after)


def _second_writer(ws, argv_for):
    run = ws.path / "run"
    first = ["train", MLP, "--device", "reference", "--epochs", "400", "--out", run, "--quiet"]
    return Case(argv_for(run), 1, says=(str(run), "another dslc process"), background=first,
                wait_for=run / "last" / "state.json")


TRIALS += [Trial(11, f"training onto a full disk of {size}", _full_disk(size), slow=True)
           for size in ("64k", "160k", "256k", "384k", "512k", "768k")]
TRIALS += [
    Trial(11, "a run directory made read-only mid-run", _read_only_mid_run, slow=True),
    Trial(11, "a second writer resuming a running run", lambda ws: _second_writer(ws, resume), slow=True),
    Trial(11, "a second writer forcing a running run",
          lambda ws: _second_writer(ws, lambda run: ["train", MLP, "--device", "reference", "--out", run,
                                                     "--force", "--quiet"]), slow=True),
]
# Ctrl-C from the moment dslc's code runs: in the first few hundredths of a second Python
# itself is starting (site, io) and a KeyboardInterrupt there is CPython's to report. The
# run is long enough (400 epochs, several seconds) that every delay lands before its end:
# the recipe's 40 take half a second on the reference, and a run that has finished exits 0.
TRIALS += [Trial(11, f"Ctrl-C {delay:g} s into start-up",
                 lambda ws, d=delay: Case(["train", MLP, "--device", "reference", "--out", "run", "--quiet",
                                           "--epochs", "400"], (130, -2), during=interrupt_after(d)))
           for delay in (0.25, 0.5, 1.0, 1.5)]
