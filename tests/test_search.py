"""`dslc search`: the search block and --space (checked like settings), sampling (random on
log scales, grids, coarse to fine), and whole searches on the shipped digits as ordinary run
directories in parallel processes: the table, the JSON, the plot, resuming a search killed
with SIGKILL without repeating a finished trial, and never a look at the test set."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import dslc
from dslc.diagnostics import CompileError
from dslc.frontend.recipe_search import Dimension
from dslc.runtime import sampling
from dslc.runtime.engines import LocalProcesses, Outcome
from dslc.runtime.recipes import model_and_recipe
from dslc.runtime.runs import read_records
from dslc.runtime.search import Search, Settings
from dslc.runtime.search_report import table
from helpers import MODELS, SEARCH_MLP, run_cli as run, search_net

SPACE = "lr = loguniform(1e-3, 1e-1)\n        batch = choice(32, 64)"
REF = ("--device", "reference")  # trials on the NumPy interpreter: nothing to compile, quick to start


# ---- the space ------------------------------------------------------------------------------

def test_the_shipped_digits_mlp_carries_a_log_rate_and_a_width():
    _, recipe = model_and_recipe(MODELS / "digits_mlp.net")
    dims = {d.key: d for d in recipe.space}
    assert dims["lr"].kind == "loguniform" and dims["lr"].log and (dims["lr"].low, dims["lr"].high) == (1e-4, 0.1)
    assert dims["hidden"].kind == "choice" and dims["hidden"].choices == (32, 64, 128, 256)


@pytest.mark.parametrize("space, code, line, message", [
    ("hiden = choice(8, 16)", "E0515", 17, "'hiden' is neither a recipe setting nor a hyper-parameter"),
    ("lr = loguniform(0, 0.1)", "E0515", 17, "loguniform() needs 0 < low < high, got 0 and 0.1"),
    ("optimizer.lr = uniform(-1, 1)", "E0505", 17, "lr must be > 0, got -1"),
    ("hidden = uniform(8, 32)", "E0515", 17, "hidden is an integer: search it with int_uniform"),
    ("optimizer.momentum = choice(0.5, 0.9)", "E0515", 17, "adam() has no argument 'momentum'"),
    ("lr = 0.01", "E0515", 17, "lr must be a distribution"),
    ("lr = choice(0.01)", "E0515", 17, "choice() needs at least two values"),
    ("lr = choice(0.1, 0.2)\n        lr = choice(0.3, 0.4)", "E0508", 18, "'lr' is searched twice"),
    ("lr = choice(0.1, 0.2)\n        optimizer.lr = choice(0.3, 0.4)", "E0508", 18,
     "'lr' and 'optimizer.lr' are one setting, searched twice"),
])
def test_search_block_mistakes_are_located(tmp_path, space, code, line, message):
    with pytest.raises(CompileError) as err:
        dslc.load(search_net(tmp_path, space))
    d = err.value.diagnostics[0]
    assert (d.code, d.span.line) == (code, line) and message in f"{d.message} {d.hint}", d.message


def test_a_block_of_another_name_and_search_as_an_ordinary_name(tmp_path, net):
    path = tmp_path / "x.net"
    path.write_text(SEARCH_MLP.format(space=SPACE).replace("search {", "serch {"))
    with pytest.raises(CompileError, match="unknown block 'serch' in a train block"):
        dslc.load(path)
    # `search` is no keyword: models may still use it as a name
    dslc.load(net("model m(search: int = 2) {\n input x : f32[N, 2]\n search = x |> relu\n output y = search\n}"))


def test_space_on_the_command_line(tmp_path, capsys):
    path = search_net(tmp_path, SPACE)
    code, _, err = run(capsys, "search", path, "--space", "hidden=uniform(8, 16)", "--out", tmp_path / "s")
    assert code == 2 and "--space hidden=uniform(8, 16): hidden is an integer" in err
    code, _, err = run(capsys, "search", path, "--space", "lr", "--out", tmp_path / "s")
    assert code == 2 and "expected KEY=DISTRIBUTION" in err
    code, _, err = run(capsys, "search", path, "--grid", "--trials", "3")
    assert code == 2 and "--trials cannot go with it" in err
    bare = tmp_path / "bare.net"
    bare.write_text(SEARCH_MLP.format(space="").replace("search {\n        \n    }", ""))
    code, _, err = run(capsys, "search", bare, "--out", tmp_path / "s")
    assert code == 2 and "has no search block" in err


# ---- sampling -------------------------------------------------------------------------------

def test_random_points_cover_a_log_scale_evenly():
    space = (Dimension("lr", "loguniform", 1e-4, 1e-1), Dimension("hidden", "int_loguniform", 8, 256),
             Dimension("p", "uniform", 0.2, 0.6), Dimension("opt", "choice", choices=("sgd(lr=0.1)", "adam()")))
    points = sampling.sample(space, 4000, np.random.default_rng(0))
    lrs = np.array([p["lr"] for p in points])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-1
    decades = np.histogram(np.log10(lrs), bins=[-4, -3, -2, -1])[0]
    assert np.all(np.abs(decades / len(lrs) - 1 / 3) < 0.03)  # a third per decade, not 90% in the top one
    widths = [p["hidden"] for p in points]
    assert all(isinstance(w, int) and 8 <= w <= 256 for w in widths) and np.median(widths) < 64
    assert {p["opt"] for p in points} == {"sgd(lr=0.1)", "adam()"}


def test_grid_and_refine():
    space = (Dimension("lr", "loguniform", 1e-4, 1e-1), Dimension("b", "choice", choices=(32, 64)))
    points = sampling.grid(space, 4)
    assert len(points) == 8 and sorted({p["lr"] for p in points}) == [1e-4, 1e-3, 1e-2, 1e-1]
    results = [({"lr": lr, "b": b}, -abs(math.log10(lr) + 2) + (b == 64) * 0.1) for lr in np.geomspace(1e-4, 0.1, 20)
               for b in (32, 64)]
    lr, b = sampling.refine(space, results, "max")
    assert 1e-3 < lr.low < 1e-2 < lr.high < 1e-1 and lr.kind == "loguniform" and b.choices in ((64,), (32, 64))


# ---- whole searches -------------------------------------------------------------------------

def test_search_trains_trials_in_parallel_and_ranks_them_on_validation(tmp_path, capsys):
    path = search_net(tmp_path, SPACE)
    out = tmp_path / "s"
    code, stdout, stderr = run(capsys, "search", path, "--trials", "3", "--jobs", "2", "--refine", "1", "--out", out,
                               "--json", *REF)
    assert code == 0, stderr
    report = json.loads(stdout)
    trials = report["trials"]
    assert report["metric"] == "val_accuracy" and report["mode"] == "max" and len(trials) == 4
    assert [t["round"] for t in sorted(trials, key=lambda t: t["id"])] == [1, 1, 1, 2]
    assert all(t["status"] == "done" for t in trials)
    scores = [t["best"] for t in trials]
    assert scores == sorted(scores, reverse=True) and report["best"]["id"] == trials[0]["id"]
    assert "[4/4] trial-004" in stderr and "refining: lr loguniform(" in stderr
    for t in trials:  # ordinary run directories, trained with the point's --set and never tested
        run_dir = out / t["id"]
        config = json.loads((run_dir / "config.json").read_text())
        assert float(config["overrides"]["lr"]) == t["params"]["lr"]
        result = json.loads((run_dir / "result.json").read_text())
        assert result["best"] == t["best"] and not [k for k in result if k.startswith("test")]
        assert not [k for r in read_records(run_dir / "metrics.jsonl") for k in r if k.startswith("test")]
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "trial,round,lr,batch,val_accuracy,best_epoch,seconds,status,error" and len(rows) == 5
    # the same command again trains nothing more and prints the table
    code, stdout, _ = run(capsys, "search", path, "--trials", "3", "--jobs", "2", "--refine", "1", "--out", out, *REF)
    assert code == 0 and stdout.splitlines()[0].startswith("search of mlp: 4 trials (4 done), val_accuracy")
    assert "trials to train" not in stdout
    code, _, err = run(capsys, "search", path, "--trials", "4", "--out", out, *REF)
    assert code == 1 and "settings.trials: 3 -> 4" in err and "--force" in err


def test_a_trial_its_point_makes_invalid_fails_with_its_message(tmp_path, capsys):
    """A trial whose `dslc train` refuses its command line (status 2; here epochs = 1 under a
    one-epoch warmup) has failed: it was left pending, its message unseen, and trained again
    by every rerun. --epochs that no trial could train with is refused before any starts."""
    warmup = "epochs = 2\n    schedule = cosine(warmup=1)\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = search_net(tmp_path / "a", "epochs = choice(1, 2)")
    path.write_text(path.read_text().replace("epochs = 2\n", warmup))
    code, stdout, stderr = run(capsys, "search", path, "--grid", "--out", tmp_path / "s", "--json", *REF)
    assert code == 0, stderr
    trials = {t["params"]["epochs"]: t for t in json.loads(stdout)["trials"]}
    assert trials[1]["status"] == "failed" and "warmup (1 epochs) must be shorter" in trials[1]["error"]
    assert trials[2]["status"] == "done"
    path = search_net(tmp_path / "b", "lr = loguniform(1e-3, 1e-1)")
    path.write_text(path.read_text().replace("epochs = 2\n", warmup))
    code, _, err = run(capsys, "search", path, "--epochs", "1", "--out", tmp_path / "s2", *REF)
    assert code == 2 and "shorter than training (1 epochs)" in err and not (tmp_path / "s2").exists()


def test_a_killed_search_resumes_without_repeating_finished_trials(tmp_path):
    path = search_net(tmp_path, "lr = loguniform(1e-3, 1e-1)")
    out = tmp_path / "s"
    argv = [sys.executable, "-m", "dslc.cli", "search", str(path), "--trials", "4", "--jobs", "1", "--epochs", "2",
            "--out", str(out), *REF]
    search = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        second = out / "trial-002" / "result.json"
        deadline = time.monotonic() + 120
        while not second.exists() and time.monotonic() < deadline and search.poll() is None:
            time.sleep(0.05)
        assert second.exists()
        search.send_signal(signal.SIGKILL)
        search.wait(30)
    finally:
        search.kill()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("trial-*/result.json")}
    time.sleep(0.5)  # a trial orphaned by the kill would write on (PR_SET_PDEATHSIG ends it)
    assert {p.parent.name: p.stat().st_mtime_ns for p in out.glob("trial-*/result.json")} == finished
    # and trial-002 as if the kill had come after its last checkpoint but before its end
    second.unlink()
    del finished["trial-002"]
    (out / "trial-002" / "trial.json").write_text(json.dumps({"status": "pending"}))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{4 - len(finished)} of 4 trials to train" in done.stdout
    for name, mtime in finished.items():  # kept, not trained again
        assert (out / name / "result.json").stat().st_mtime_ns == mtime
    assert len(list(out.glob("trial-*/result.json"))) == 4
    assert "--resume" in json.loads((out / "trial-002" / "trial.json").read_text())["command"]


# ---- mistakes found in review: --set epochs, shorthand keys, non-finite metrics, refining ------

def test_set_epochs_reaches_every_trial(tmp_path, capsys):
    """`--set epochs=N` is `--epochs N` (dslc train's help says so): the search popped it from
    the trials' --set pairs without making it their --epochs, so each trained the recipe's
    epochs while the table said N."""
    path = search_net(tmp_path, "lr = loguniform(1e-3, 1e-1)")
    code, stdout, stderr = run(capsys, "search", path, "--trials", "1", "--set", "epochs=1", "--set",
                               "schedule=constant()", "--out", tmp_path / "s", "--json", *REF)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["epochs"] == 1
    assert json.loads((tmp_path / "s" / "trial-001" / "result.json").read_text())["epochs"] == 1


def test_epochs_searched_and_given_is_refused(tmp_path, capsys):
    """Every trial is given --epochs N after its point's --set epochs=E, and --epochs wins: all
    trained N epochs while the table ranked them by the E they never trained."""
    path = search_net(tmp_path, "epochs = choice(1, 2)")
    code, _, err = run(capsys, "search", path, "--epochs", "3", "--out", tmp_path / "s", *REF)
    assert code == 2 and "the space searches epochs: drop one" in err and not (tmp_path / "s").exists()


def test_space_replaces_the_dimension_of_a_shorthand():
    """`lr` is `optimizer.lr`: a --space of one replaced nothing when the block searched the
    other, so the trials were given both and the table and plot showed a rate never used."""
    from dslc.cli.search_verb import space_of

    model, recipe = model_and_recipe(MODELS / "digits_mlp.net")
    space = space_of(model, recipe, ["optimizer.lr=loguniform(1e-3, 1e-2)"])
    assert [(d.key, d.low) for d in space if d.kind != "choice"] == [("optimizer.lr", 1e-3)]
    assert [d.key for d in space] == ["optimizer.lr", "hidden"]


class Scripted:
    """An engine that trains nothing: each trial's result.json says `best(lr)`, the trials in
    `killed` end as if killed by a signal (status -9, nothing written), and those in `failed`
    as if their training failed (status 1 after dslc's `dslc: error:` line)."""

    name = "scripted"

    def __init__(self, best, killed=(), failed=()):
        self.best, self.killed, self.failed = best, set(killed), set(failed)

    def run(self, tasks, done):
        for task in tasks:
            if task.id in self.killed:
                done(Outcome(task.id, -signal.SIGKILL))
                continue
            if task.id in self.failed:
                with open(task.log, "a") as log:
                    log.write("dslc: error: the loss is not finite at step 3\n")
                done(Outcome(task.id, 1, "the loss is not finite at step 3"))
                continue
            lr = float(next(a for a in task.argv if a.startswith("lr=")).partition("=")[2])
            result = {"epochs": 1, "steps": 20, "train_seconds": 0.1, "best_epoch": 1, "stopped_early": False,
                      "metric": "val_loss", "mode": "min", "best": self.best(lr)}
            (task.log.parent / "result.json").write_text(json.dumps(result))
            done(Outcome(task.id, 0))


def _search(tmp_path, engine, refine=0, trials=3, lines=None):
    path = search_net(tmp_path, "lr = loguniform(1e-3, 1e-1)")
    model, recipe = model_and_recipe(path)
    return Search(path, recipe, {}, recipe.space, Settings(trials=trials, epochs=1, refine=refine), tmp_path / "s",
                  engine, ("val_loss", "min"), echo=(lines if lines is not None else []).append)


def test_a_trial_whose_metric_is_not_finite_is_shown_not_a_traceback(tmp_path):
    """A run whose watched metric was NaN every epoch (a val_loss of a diverging rate while the
    training loss stayed finite) writes `"best": null`: the progress line formatted it as a
    number, a TypeError that stopped every rerun of the search too."""
    lines: list[str] = []
    search = _search(tmp_path, Scripted(lambda lr: None), refine=1, lines=lines)
    search.run()
    assert "[1/3] trial-001 lr=" in lines[1] and lines[1].endswith("val_loss not finite (epoch 1, 0.1s)")
    report = search.report()
    assert report["best"] is None and len(report["trials"]) == 4  # refined from no finite result: the space
    assert table(report).splitlines()[-1] == "no finished trial has a finite val_loss"


@pytest.mark.parametrize("space", ["lr = loguniform(1e-300, 1e300)", "lr = uniform(1e-3, 1.7e308)"])
def test_a_range_near_the_ends_of_float_is_plotted(tmp_path, space):
    """search.png's axis is the range searched, 3% wider: for these ranges the widened limits
    overflowed to infinity or went past what matplotlib draws ('Axis limits cannot be NaN or
    Inf', 'arange: cannot compute length'), a traceback after the trials had trained."""
    path = search_net(tmp_path, space)
    model, recipe = model_and_recipe(path)
    search = Search(path, recipe, {}, recipe.space, Settings(trials=2, epochs=1), tmp_path / "s",
                    Scripted(lambda lr: 0.5), ("val_loss", "min"), echo=[].append)
    search.run()
    assert (tmp_path / "s" / "search.png").stat().st_size > 0


def test_refining_waits_for_a_first_round_trial_killed_on_its_own(tmp_path):
    """A first-round trial killed by a signal (out of memory) stays pending for the next run;
    the refining round was planned at once without it and never revised when it finished."""
    lines: list[str] = []
    first = _search(tmp_path, Scripted(lambda lr: lr, killed={"trial-002"}), refine=2, lines=lines)
    first.run()
    assert [t.round for t in first.trials] == [1, 1, 1] and "run the same command to continue" in lines[-1]
    again = _search(tmp_path, Scripted(lambda lr: lr), refine=2)
    again.run()
    assert [t.round for t in again.trials] == [1, 1, 1, 2, 2] and all(t.status == "done" for t in again.trials)


def test_trial_json_says_how_a_trial_ended(tmp_path):
    """trial.json holds "the trial's point, its command, and how it ended" (search.py): a
    finished trial's still said "pending" with no metric, as written before it started."""
    search = _search(tmp_path, Scripted(lambda lr: lr), trials=2)
    search.run()
    for t in search.trials:
        saved = json.loads((tmp_path / "s" / t.id / "trial.json").read_text())
        assert (saved["status"], saved["best"], saved["best_epoch"]) == ("done", t.params["lr"], 1)


def test_a_resumed_trial_keeps_the_output_of_its_first_part(tmp_path):
    """A trial's train.log was opened for writing anew each time it ran, so resuming a trial
    cut short replaced what its first part printed (its sanity block, where it stopped)."""
    from dslc.runtime.engines import Task

    log = tmp_path / "train.log"
    log.write_text("dslc: interrupted at step 7; checkpoint written\n")
    ended: list[Outcome] = []
    LocalProcesses(1).run([Task("trial-001", ("--version",), log)], ended.append)
    assert ended == [Outcome("trial-001", 0)]
    assert log.read_text().splitlines() == ["dslc: interrupted at step 7; checkpoint written", f"dslc {dslc.__version__}"]


# ---- mistakes found in review: steps recipes, refined bounds, damaged plans, the environment ----

def test_a_recipe_trained_by_steps_says_so_in_the_title(tmp_path):
    """A recipe of `steps = N` has no epochs: the table's title said "None epochs each"."""
    path = search_net(tmp_path, "lr = loguniform(1e-3, 1e-1)")
    path.write_text(path.read_text().replace("epochs = 2\n", "steps = 30\n"))
    _, recipe = model_and_recipe(path)

    def report(epochs, space=recipe.space):
        return Search(path, recipe, {}, space, Settings(epochs=epochs), tmp_path / "s", Scripted(lambda lr: lr),
                      ("val_loss", "min")).report()

    by_steps = report(None)
    assert (by_steps["epochs"], by_steps["steps"]) == (None, 30)
    assert ", 30 steps each; in " in table(by_steps).splitlines()[0]
    assert ", 3 epochs each; in " in table(report(3)).splitlines()[0]  # --epochs 3
    searched = report(None, (Dimension("steps", "int_uniform", 10, 40),))
    assert ", steps as each point says; in " in table(searched).splitlines()[0]


def test_steps_searched_and_epochs_given_is_refused(tmp_path, capsys):
    """A trial given --epochs (or --set epochs) and its point's --set steps has both, which
    exclude each other: every trial failed with that message."""
    path = search_net(tmp_path, "steps = int_uniform(5, 10)")
    code, _, err = run(capsys, "search", path, "--epochs", "1", "--trials", "1", "--out", tmp_path / "s", *REF)
    assert code == 2 and "the space searches steps (a recipe trains epochs or steps, not both): drop one" in err
    code, _, err = run(capsys, "search", path, "--set", "epochs=1", "--trials", "1", "--out", tmp_path / "s", *REF)
    assert code == 2 and "--set epochs trains every trial that many epochs, and the space searches steps" in err
    assert not (tmp_path / "s").exists()


def test_refined_bounds_are_shown_rounded(tmp_path):
    """The refining round's bounds are any floats: the progress line printed them in full,
    loguniform(0.011162457230450255, 0.0701406315684866)."""
    lines: list[str] = []
    _search(tmp_path, Scripted(lambda lr: lr), refine=2, lines=lines).run()
    assert "refining: lr loguniform(0.01116, 0.07014)" in lines


@pytest.mark.parametrize("damage, message", [
    (lambda plan: plan["trials"][0]["params"].clear(), "'trials.params.lr' is missing"),  # a KeyError in the plot
    (lambda plan: plan["trials"][1]["params"].update(lr="fast"), "'trials.params.lr' must be a finite number"),
    (lambda plan: plan.pop("trials"), "'trials' is missing"),  # planned anew over the trials there
    (lambda plan: plan["key"].pop("settings"), "'key.settings' is missing"),  # "holds another search"
    (lambda plan: plan["trials"][2].update(id="trial-001"), "trial 'trial-001' is planned twice"),
])
def test_a_damaged_search_json_is_named_and_nothing_is_lost(tmp_path, capsys, damage, message):
    """A hand-edited search.json is a message naming it and its key, exit status 1: a point
    missing a dimension was a KeyError traceback from the plot, a plan without trials was
    planned again over the trials there."""
    _search(tmp_path, Scripted(lambda lr: lr), refine=1).run()
    out = tmp_path / "s"
    plan = json.loads((out / "search.json").read_text())
    damage(plan)
    (out / "search.json").write_text(json.dumps(plan))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run(capsys, "search", tmp_path / "m.net", "--trials", "3", "--epochs", "1", "--refine", "1",
                       "--out", out)
    assert code == 1 and err.startswith(f"dslc: error: {out / 'search.json'}: {message}"), err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_force_starts_over_from_a_search_json_it_cannot_read(tmp_path, capsys):
    """--force starts over, whatever the old plan's state: a search.json cut short was the same
    TrainError with --force as without, and only deleting it by hand went on. The old trials
    go with it (a new trial-001 would otherwise resume the old one's checkpoint)."""
    _search(tmp_path, Scripted(lambda lr: lr)).run()
    out = tmp_path / "s"
    (out / "search.json").write_text('{"key": {"file": ')
    (out / "trial-002" / "mark").write_text("old")
    argv = ("search", tmp_path / "m.net", "--trials", "1", "--epochs", "1", "--out", out, *REF)
    code, _, err = run(capsys, *argv)
    assert code == 1 and err.startswith(f"dslc: error: {out / 'search.json'}: bad JSON at line 1")
    assert err.rstrip().endswith("; mend it, or pass --force to start the search over")
    code, _, err = run(capsys, *argv, "--force")
    assert code == 0, err
    assert len(json.loads((out / "search.json").read_text())["trials"]) == 1
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-001"] and not (out / "trial-002").exists()


def test_a_search_and_a_training_run_keep_to_their_own_directories(tmp_path, capsys):
    """`dslc search --out RUN` planned its trials beside a training run's files, and `dslc train
    --out SEARCH` wrote a run beside a search's plan: each now names what is there, exit 1,
    with --force too (which starts over a search or a run, not the other), nothing written."""
    _search(tmp_path, Scripted(lambda lr: lr), trials=1).run()
    out = tmp_path / "s"
    before = sorted(p.name for p in out.iterdir())
    for force in ((), ("--force",)):
        code, _, err = run(capsys, "train", tmp_path / "m.net", "--out", out, "--epochs", "1", *REF, *force)
        assert code == 1 and "holds a search (search.json), whose trials are runs; choose another name" in err, err
    assert sorted(p.name for p in out.iterdir()) == before
    trained = tmp_path / "trial-001-copy"
    (trained).mkdir()
    (trained / "config.json").write_text("{}")
    for force in ((), ("--force",)):
        code, _, err = run(capsys, "search", tmp_path / "m.net", "--trials", "1", "--epochs", "1", "--out", trained,
                           *REF, *force)
        assert code == 1 and "holds a training run (config.json); choose another --out for the search" in err, err
    assert sorted(p.name for p in trained.iterdir()) == ["config.json"]


def test_a_trial_its_environment_stopped_is_tried_again(tmp_path):
    """A trial that ends with status 1 that dslc did not report (here Python cannot start: a
    PYTHONHOME with no standard library) failed for good, like a diverged one, and no rerun
    tried it again. A failure dslc reported stays failed, a finished trial stays done."""
    broken = LocalProcesses(1)
    broken.env["PYTHONHOME"] = str(tmp_path / "nowhere")
    lines: list[str] = []
    first = _search(tmp_path, broken, trials=2, lines=lines)
    first.run()
    assert [t.status for t in first.trials] == ["pending", "pending"] and "stopped (status 1: " in lines[1]
    again = _search(tmp_path, Scripted(lambda lr: lr, failed={"trial-002"}), trials=2)
    again.run()
    assert [(t.status, t.error) for t in again.trials] == [("done", ""), ("failed", "the loss is not finite at step 3")]
    third = _search(tmp_path, Scripted(lambda lr: 1 / 0), trials=2)  # trains nothing: nothing is left
    third.run()
    assert [t.status for t in third.trials] == ["done", "failed"]
