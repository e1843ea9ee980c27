"""`dslc search`: hyper-parameter search as a set of ordinary training runs.

    runs/digits_mlp-search/
      search.json        what is searched (file, recipe, --set, space, settings) and every
                         planned trial with its point; written before any trial starts
      trial-001/ ...     one run directory per trial, trained by `dslc train ... --set KEY=VALUE`
        trial.json       the trial's point, its command, and how it ended
      results.json/.csv  the table, best first, rewritten as trials finish
      search.png         the metric against each hyper-parameter

A trial's metric is the one its run watches (validation accuracy for a classifier, the
recipe's `stop` metric if it has one), read from the result.json `dslc train` leaves; the
test split is never evaluated. The plan is fixed before anything runs (random points from
the seed, or a grid), so a search killed at any moment is continued by the same command:
finished trials are kept, a trial that failed (a diverged loss) stays failed, and a trial
that was cut short (Ctrl-C, a signal, an environment it could not run in) resumes from its
last checkpoint (`dslc train --resume`) or starts again. A different command on the same
directory is refused with what differs, unless --force, which starts over. `--refine N`
adds a second round of N trials in the region of the best first-round trials
(sampling.refine), planned once the first round has finished.

Where trials run is an Engine (engines.py): local processes here; the plan, the table and
resuming do not depend on it.

    trials = Search(file, recipe, {}, recipe.space, Settings(trials=12, epochs=5), Path("s"), LocalProcesses(2),
                    ("val_accuracy", "max")).run()
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dslc.files import UnreadableFile, ensure_dir, read_json, read_limited, write_atomic
from dslc.frontend.recipe_search import Dimension, shown, value_text
from dslc.runtime import sampling
from dslc.runtime.engines import Engine, Outcome, Task
from dslc.runtime.errors import TrainError
from dslc.runtime.jsondoc import Doc, is_int, is_number
from dslc.runtime.runs import CONFIG, RESULT, SEARCH

TRIAL, LOG = "trial.json", "train.log"
JSON_LIMIT = 64 << 20
BUSY = "is being written by another dslc process"  # a trial still running elsewhere: not a failure
# Exit statuses of a trial that failed for good: 1 a mistake (data, a diverged run ...), 2 a command
# line its point makes invalid (a warmup as long as the --epochs given), each once its `dslc train` has
# said why (REPORTED, in what this run of it printed: `dslc: error:`, argparse's `dslc train: error:`, a
# located `m.net:3:18: error[E0202]`). Others (130: Ctrl-C, a signal) leave it pending, resumed by the
# next run; a status 2 was, and failed again each time. So does a 1 or 2 that dslc did not report: the
# environment's (a Python that cannot start, `No module named dslc` on a node, a traceback), which
# had failed for good, never tried again.
FAILED = (1, 2)
REPORTED = re.compile(rb"^dslc(?: train)?: error: |: error\[E", re.MULTILINE)
TAIL = 64 << 10  # bytes of a trial's output searched for REPORTED: dslc's report ends it


@dataclass(frozen=True)
class Settings:
    """How a search samples and trains: random `trials` (or a `grid` of `grid_points` per
    numeric dimension), `epochs` per trial (None: the recipe's), `refine` trials in a second
    round, the sampling `seed`, the trials' `device`."""

    trials: int = 10
    epochs: int | None = None
    grid: bool = False
    grid_points: int = 3
    refine: int = 0
    seed: int = 0
    device: str | None = None


@dataclass
class Trial:
    id: str
    round: int
    params: dict
    status: str = "pending"  # pending | done | failed
    best: float | None = None
    best_epoch: int | None = None
    seconds: float | None = None
    error: str = ""
    command: list[str] = field(default_factory=list)

    def row(self, root: Path) -> dict:
        return {**asdict(self), "run": str(root / self.id)}


def file_digest(path) -> str:
    return hashlib.sha256(read_limited(path, 1 << 20, "a .net file")).hexdigest()


class Search:
    """One search directory (see the module docstring); `run` trains what is left."""

    def __init__(self, file, recipe, sets: dict, space: tuple[Dimension, ...], settings: Settings, out: Path,
                 engine: Engine, watched: tuple[str, str], force: bool = False, echo: Callable[[str], None] = print):
        self.file, self.recipe, self.sets, self.space = str(file), recipe, dict(sets), space
        self.settings, self.out, self.engine, self.force, self.echo = settings, Path(out), engine, force, echo
        self.trials: list[Trial] = []
        self.output_from: dict[str, int] = {}  # where in its log each running trial's output begins
        self.metric, self.mode = watched  # what each trial's run watches (trainer.watched_metric)

    # ---- the plan ------------------------------------------------------------------------

    def key(self) -> dict:
        """What must match for a directory to be continued by this command."""
        return {"file": self.file, "file_sha256": file_digest(self.file), "recipe": self.recipe.name,
                "sets": self.sets, "space": [d.to_json() for d in self.space], "settings": asdict(self.settings)}

    def _load_or_plan(self) -> None:
        path = self.out / SEARCH
        if os.path.lexists(self.out / CONFIG):  # a training run's directory: --force starts no search there
            raise TrainError(f"{self.out} holds a training run ({CONFIG}); choose another --out for the search")
        if os.path.lexists(path) and not self.force:
            # a search.json edited or cut short is a TrainError naming it and the key, nothing rewritten
            key = self.key()
            try:
                saved = Doc(_read(path), path, TrainError)
                differs = _differences(_saved_key(saved, key), key)
                self.trials = [] if differs else _saved_trials(saved, self.space)
            except TrainError as e:
                raise TrainError(f"{e}; mend it, or pass --force to start the search over") from None
            if differs:
                raise TrainError(f"{self.out} holds another search ({'; '.join(differs)}); run its command to "
                                 "continue it, choose another --out, or pass --force to start over")
            return
        if os.path.lexists(path):  # --force: the old plan's trials go with it, whatever its state
            for run in self.out.glob("trial-*"):
                if (run / TRIAL).is_file():  # a trial this search started (_task writes it first)
                    shutil.rmtree(run, ignore_errors=True)
        ensure_dir(self.out)
        self._plan_round(1, self.space, self.settings.trials)

    def _plan_round(self, round_: int, space, n: int) -> None:
        rng = np.random.default_rng([self.settings.seed, round_])
        points = sampling.grid(space, self.settings.grid_points) if self.settings.grid and round_ == 1 \
            else sampling.sample(space, n, rng)
        start = len(self.trials)
        self.trials += [Trial(f"trial-{start + i + 1:03d}", round_, p) for i, p in enumerate(points)]
        self._save_plan()

    def _save_plan(self) -> None:
        plan = {"key": self.key(), "trials": [{"id": t.id, "round": t.round, "params": t.params}
                                              for t in self.trials]}
        write_atomic(self.out / SEARCH, json.dumps(plan, indent=2).encode())

    # ---- running -------------------------------------------------------------------------

    def run(self) -> list[Trial]:
        """Train every trial not yet finished (both rounds); the trials, best first."""
        self._load_or_plan()
        for t in self.trials:
            self._read_outcome(t)
        self._run_pending()
        if self.settings.refine and not any(t.round == 2 for t in self.trials):
            # refined from every first-round result: not while a trial killed on its own (a signal,
            # out of memory) waits to be resumed; the run that finishes it plans the round
            stopped = sum(t.status == "pending" for t in self.trials)
            if stopped:
                self.echo(f"{stopped} trial(s) stopped before the end: run the same command to continue them; "
                          "the refining round is planned once every first-round trial has finished")
                return self.ranked()
            finer = sampling.refine(self.space, [(t.params, t.best) for t in self.trials
                                                 if t.status == "done" and t.best is not None], self.mode)
            self.echo("refining: " + ", ".join(f"{d.key} {d.show()}" for d in finer))
            self._plan_round(2, finer, self.settings.refine)
            self._run_pending()
        return self.ranked()

    def _run_pending(self) -> None:
        pending = [t for t in self.trials if t.status == "pending"]
        if not pending:
            return
        total = len(self.trials)
        self.echo(f"{len(pending)} of {total} trials to train ({self.engine.name}); in {self.out}")
        by_id = {t.id: t for t in pending}

        def done(outcome: Outcome) -> None:
            t = by_id[outcome.id]
            self._finished(t, outcome)
            finished = sum(x.status != "pending" for x in self.trials)
            what = (f"{self.metric} {_score(t.best)} (epoch {t.best_epoch}, {t.seconds:.1f}s)" if t.status == "done"
                    else f"failed: {t.error}" if t.status == "failed"
                    else f"stopped (status {outcome.status}{f': {outcome.error}' if outcome.status in FAILED else ''})")
            self.echo(f"[{finished}/{total}] {t.id} {_point(t.params)}: {what}")
            self.write_results()

        self.engine.run([self._task(t) for t in pending], done)

    def _task(self, t: Trial) -> Task:
        run = self.out / t.id
        device = ["--device", self.settings.device] if self.settings.device else []
        if (run / "last" / "state.json").exists():  # cut short after a checkpoint: continue it
            argv = ["train", self.file, "--resume", str(run), "--quiet", *device]
        else:
            sets = {**self.sets, **{k: value_text(v) for k, v in t.params.items()}}
            epochs = ["--epochs", str(self.settings.epochs)] if self.settings.epochs else []
            argv = ["train", self.file, "--as", self.recipe.name, *(a for k, v in sets.items()
                                                                    for a in ("--set", f"{k}={v}")),
                    *epochs, "--out", str(run), "--quiet", "--force", *device]
        t.command = ["dslc", *argv]
        ensure_dir(run)
        self._write_trial(t)
        log = run / LOG
        self.output_from[t.id] = log.stat().st_size if log.exists() else 0  # appended: a resume's comes after
        return Task(t.id, tuple(argv), log)

    def _finished(self, t: Trial, outcome: Outcome) -> None:
        if outcome.status == 0:
            self._read_outcome(t)
            if t.status == "done":  # trial.json says how it ended, not the "pending" it started with
                self._write_trial(t)
        elif (outcome.status in FAILED and BUSY not in outcome.error
              and _reported(self.out / t.id / LOG, self.output_from[t.id])):
            t.status, t.error = "failed", outcome.error
            self._write_trial(t)
        # anything else (Ctrl-C, a kill, the environment): still pending, resumed by the next run

    def _write_trial(self, t: Trial) -> None:
        write_atomic(self.out / t.id / TRIAL, json.dumps(asdict(t), indent=2).encode())

    def _read_outcome(self, t: Trial) -> None:
        """The trial's state from its run directory: done (result.json), failed (trial.json), or pending."""
        run = self.out / t.id
        if (run / RESULT).exists():
            result = Doc(_read(run / RESULT), run / RESULT, TrainError)
            t.status, t.error = "done", ""
            t.best = result.number("best", null=True)
            t.best_epoch, t.seconds = result.int("best_epoch", lo=0), result.number("train_seconds", lo=0)
        elif (run / TRIAL).exists():
            saved = Doc(_read(run / TRIAL), run / TRIAL, TrainError)
            if saved.str("status") == "failed":
                t.status, t.error = "failed", saved.str("error")

    # ---- the table -------------------------------------------------------------------------

    def ranked(self) -> list[Trial]:
        """Finished trials best first (by the watched metric), then failed ones, then pending ones."""
        sign = -1 if self.mode == "max" else 1
        order = {"done": 0, "failed": 1, "pending": 2}
        return sorted(self.trials, key=lambda t: (order[t.status], sign * t.best if t.best is not None
                                                  and math.isfinite(t.best) else math.inf, t.id))

    def write_results(self) -> None:
        """results.json, results.csv and search.png from the trials as they stand."""
        from dslc.runtime.search_report import plot, to_csv

        report = self.report()
        write_atomic(self.out / "results.json", json.dumps(report, indent=2).encode())
        write_atomic(self.out / "results.csv", to_csv(report).encode())
        plot(report, self.space, self.out / "search.png")

    def report(self) -> dict:
        rows = [t.row(self.out) for t in self.ranked()]
        done = [r for r in rows if r["status"] == "done" and r["best"] is not None]  # null: not finite
        epochs = self.settings.epochs or self.recipe["epochs"]  # null for a recipe of `steps = N`
        return {"search": str(self.out), "recipe": self.recipe.name, "metric": self.metric, "mode": self.mode,
                "epochs": epochs, "steps": None if epochs else self.recipe["steps"],
                "space": [{**d.to_json(), "log": d.log} for d in self.space], "trials": rows,
                "best": done[0] if done else None}


def _differences(saved, key: dict) -> list[str]:
    """'settings.trials: 6 -> 7' for each part of a search's key that differs from the saved one."""
    saved = saved if isinstance(saved, dict) else {}
    out = []
    for k, v in key.items():
        was = saved.get(k)
        if isinstance(v, dict) and isinstance(was, dict):
            out += [f"{k}.{f}: {was.get(f)!r} -> {v.get(f)!r}" for f in dict.fromkeys([*was, *v]) if was.get(f) != v.get(f)]
        elif was != v:
            out.append(f"its {k} changed" if k in ("file_sha256", "space") else f"{k}: {was!r} -> {v!r}")
    return out


def _score(best: float | None) -> str:
    """A trial's best metric for the progress line; result.json holds null for a non-finite one."""
    return "not finite" if best is None else f"{best:.4f}"


def _point(params: dict) -> str:
    return " ".join(f"{k}={shown(v)}" for k, v in params.items())


def _reported(log: Path, start: int) -> bool:
    """Whether a trial's output from byte `start` of its log (this run of it: a resumed trial's log
    holds its earlier parts too) holds dslc's report of an error (REPORTED); not when unreadable."""
    try:
        with open(log, "rb") as f:
            f.seek(max(start, os.fstat(f.fileno()).st_size - TAIL))
            return REPORTED.search(f.read()) is not None
    except OSError:
        return False


def _read(path) -> dict:
    try:
        value = read_json(path, JSON_LIMIT, f"a {Path(path).name}")
    except UnreadableFile as e:
        raise TrainError(str(e)) from None
    if not isinstance(value, dict):
        raise TrainError(f"{path}: not a JSON object")
    return value


def _saved_key(saved: Doc, key: dict) -> dict:
    """search.json's key, holding every part `key` has: one missing is a damaged file, not another search."""
    doc = saved.obj("key")
    for part in key:
        doc.get(part, lambda v: True, "present")
    return doc.value


def _saved_trials(saved: Doc, space: tuple[Dimension, ...]) -> list[Trial]:
    """The trials search.json plans, each point checked against the space: a point missing a
    dimension reached the plot as a KeyError, a text where a number belongs as a TypeError."""
    trials = [_trial(Doc(d, saved.file, TrainError, "trials."), space)
              for d in saved.list("trials", lambda v: isinstance(v, dict), "objects")]
    ids = [t.id for t in trials]
    twice = next((tid for tid in ids if ids.count(tid) > 1), None)
    if twice:
        raise TrainError(f"{saved.file}: trial '{twice}' is planned twice")
    return trials


def _trial(doc: Doc, space: tuple[Dimension, ...]) -> Trial:
    params = doc.obj("params")
    params.exactly([d.key for d in space])
    for d in space:
        params.get(d.key, *_holds(d))
    return Trial(_trial_id(doc), doc.int("round", lo=1), params.value)


def _trial_id(doc: Doc) -> str:
    tid = doc.str("id")
    if not tid.startswith("trial-") or "/" in tid or tid in (".", ".."):
        raise TrainError(f"{doc.file}: 'trials.id' must name a trial directory, got {tid!r}")
    return tid


def _holds(d: Dimension) -> tuple[Callable[[Any], bool], str]:
    """A check of a saved point's value of `d`, and what it wants (for the message)."""
    if d.kind == "choice":
        return (lambda v: any(type(v) is type(c) and v == c for c in d.choices),
                "one of " + ", ".join(map(value_text, d.choices)))
    return (is_int, "an integer") if d.integer else (is_number, "a finite number")
