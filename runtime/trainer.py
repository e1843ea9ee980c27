"""The training loop behind `dslc train`: a model, its recipe, and a run directory.

    result = train(dslc.load("models/digits_mlp.net"), recipe, "runs/digits_mlp")
    result.best, result.metric                     # 0.983, "val_accuracy"

One run: load and split the data the recipe names, fit the normalisation on the training
split, build the training-step graph (the recipe's optimizer, `freeze` globs, gradient
clipping; mixup's blended loss when augment has mixup) and compile it once; then, per
step, feed a batch, the scheduled learning rate and the step count, and let the step
update the parameters in place. After each epoch: validation loss and metrics, the
update/weight ratio of every trained parameter (|dW| / |W| of the epoch's last step; the
lectures suggest about 1e-3), one record in metrics.jsonl, curves.png redrawn, the
`best` checkpoint when the watched metric improved (the stop metric, else validation
accuracy, else validation loss), `last` every `checkpoint = every(n)` epochs, snapshots
(`keep = every(n)` or `keep = restarts`) for ensembles, and early stopping. Every step's
loss and rate go to metrics_steps.csv (steplog.py), and with `tensorboard` to TensorBoard
event files. Before the first step, the sanity block (sanity.py) checks the loss at
initialisation. At the end the best validation metric is reported: the test split is
evaluated only when asked (`test=True`, `dslc train --test`), once, with the best weights,
so that nothing is chosen by looking at it.

Stopping cleanly: a non-finite loss raises TrainError naming the step and the last good
checkpoint (with detect_anomaly, also the first non-finite node, see anomaly.py), and so
does a state that became non-finite without the loss showing it (a batchnorm variance
overflowing): no checkpoint is replaced by it. A disk that fills up or turns read-only
stops the run the same way, `last` and `best` left as they were. Ctrl-C finishes the
current step, writes `last` and raises Interrupted. `resume` continues a run from its
`last` checkpoint exactly as if it had never stopped (see state.py), after checking that
its state.json, weights and optimizer state fit this model, recipe and data.

Data-parallel: under a group of ranks (dslc/collective.py; MPI in mpi.py), every rank
builds the data-parallel step (dslc/passes/data_parallel.py) and trains on its shard of
each global batch (the same seed-derived order for any number of ranks); rank 0 alone
writes the run directory and evaluates, and the ranks stop together (ranks.py).
"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dslc.collective import current
from dslc.recipe.schema import Recipe, select_params
from dslc.ir.types import NUMPY_DTYPE
from dslc.ops.norm import over_examples_alone
from dslc.passes.data_parallel import DataParallel
from dslc.passes.train_step import LR, STEP, Optimizer, train_step
from dslc.diagnostics import CliError
from dslc.files import ensure_dir, write_atomic
from dslc.runtime import anomaly, checkpoint, sanity, state
from dslc.runtime.checkpoint import CheckpointError, load_checkpoint, model_hash, recipe_hash
from dslc.runtime.data import Batches, build_augment
from dslc.runtime.data.batches import OtherCut
from dslc.runtime.errors import Interrupted, RankStopped, TrainError
from dslc.runtime.evaluate import Evaluation, Evaluator
from dslc.runtime.executor import executor_for
from dslc.runtime.host import to_host
from dslc.runtime.mixup import LABEL as MIX_LABEL, mix_feeds, mix_losses
from dslc.runtime.layout import layout, reads_labels
from dslc.runtime.prepare import digest, load_data, split_changed, subset
from dslc.runtime.ranks import Follower, coordinated, on_rank0, together
from dslc.runtime.rng import Streams, stream
from dslc.runtime.runs import CONFIG, RESULT, SNAPSHOTS, Run, RunError, make_config
from dslc.runtime.schedules import Plateau, schedule_from_recipe
from dslc.runtime.tensorboard import TensorBoard, writer_class
from dslc.runtime.transfer import init_from
from dslc.stages import located_at_model
from dslc.summary import summarize



@dataclass
class TrainResult:
    run: Path
    epochs: int
    steps: int
    seconds: float
    best_epoch: int
    stopped_early: bool
    test: Evaluation | None
    metric: str = ""  # the watched metric (picks `best`, stops early)
    mode: str = "max"
    best: float | None = None


@dataclass(frozen=True)
class Options:
    """What a run does besides training. `test`: evaluate the test split at the end;
    `tensorboard`: write event files; `check_reg`: add the regularisation check to the
    sanity block; `examples`: train on that many examples of the training split only (no
    validation), and `stop_below`: stop once an epoch's training loss is below it (both
    for `dslc train --overfit N`)."""

    test: bool = False
    tensorboard: bool = False
    check_reg: bool = False
    examples: int | None = None
    stop_below: float | None = None


def train(model, recipe, out_dir=None, resume=None, force: bool = False, quiet: bool = False,
          device: str | None = None, detect_anomaly: bool = False, echo=print,
          overrides: dict | None = None, options: Options = Options(), warn=None) -> TrainResult:
    """Train `model` with the checked Recipe `recipe` into run directory `out_dir`, or continue
    the run in `resume`. `force` overwrites an existing run, or resumes despite a changed
    recipe; `device` overrides the recipe's; `echo` prints the per-epoch summaries and `warn`
    the warnings (default: standard error); `overrides` (the command line's --set pairs) are
    recorded in config.json for `resume_settings`; `options` see Options."""
    group = current()
    trainer = together(group, lambda: Trainer(model, recipe, device, quiet, detect_anomaly, echo, options, warn))
    try:
        if resume is not None:
            together(group, lambda: trainer.resume(Path(resume), force))
        else:
            together(group, lambda: trainer.start(Path(out_dir), force, overrides or {}))
        return trainer.run()
    finally:
        if hasattr(trainer, "out"):
            trainer.out.close()  # the run directory's lock


def resume_settings(run_dir) -> tuple[str | None, dict]:
    """(recipe name, --set pairs) a run was started with, so that `--resume DIR` alone trains
    the same recipe and model; pairs given again on the command line win."""
    run = Run(run_dir)
    try:
        return run.config.get("recipe", {}).get("name"), run.overrides
    except RunError as e:
        raise TrainError(f"cannot resume: {e}") from None


def default_run_dir(name: str, root="runs") -> Path:
    """runs/NAME, or runs/NAME-2, -3, ... when it already holds a run: a second
    `dslc train` of the same file never overwrites the first."""
    base = Path(root) / name
    candidates = (base if i == 1 else base.with_name(f"{name}-{i}") for i in range(1, 10_000))
    return next(p for p in candidates if not (p / "config.json").exists())


def watched_metric(recipe, metrics: list[str], validation: bool = True) -> tuple[str, str, float, int | None]:
    """(metric, min|max, min_delta, patience or None): what picks a run's `best` checkpoint and
    stops it early: the recipe's stop metric, else the validation (or, without validation
    data, training) accuracy when the model has that metric, else the loss."""
    stop = recipe["stop"]
    if stop is not None:
        return stop["metric"], stop["mode"], stop["min_delta"], stop["patience"]
    split = "val" if validation else "train"
    metric = f"{split}_accuracy" if "accuracy" in metrics else f"{split}_loss"
    return metric, "min" if metric.endswith("loss") else "max", 0.0, None


def derived_seed(seed: int, name: str) -> int:
    """An integer seed of its own for one use of the recipe's seed (init, shuffle)."""
    return int(stream(seed, name).integers(2**63))


class Trainer:
    out: Run | Follower  # the run directory (rank 0), set by start() or resume()

    def __init__(self, model, recipe, device, quiet, detect_anomaly, echo, options: Options = Options(), warn=None):
        self.created = time.perf_counter()  # time to the first step counts from here (data, compiling)
        self.timing: dict[str, float] = {}
        self.group = group = current()
        if group.size > 1:
            self.timing["ranks"] = group.size  # config.json: how many processes trained it
        if group.rank:  # rank 0 speaks for the run
            quiet, echo, warn = True, lambda text: None, lambda text: None
        self.model, self.recipe, self.quiet, self.detect, self.echo = model, recipe, quiet, detect_anomaly, echo
        self.options, self.warn = options, warn or (lambda text: print(f"dslc: warning: {text}", file=sys.stderr))
        self.start_loss: float | None = None  # the sanity check's loss before training (not on a resume)
        if options.tensorboard and not group.rank:
            # a missing extra is said before the data are read and the kernels compiled, and
            # before the run directory is made, or (--force) an old run in it cleared
            writer_class()
        self.opt = Optimizer.from_recipe(recipe["optimizer"])
        self.data = load_data(recipe, labels=reads_labels(model), model=model)
        if options.examples is not None:
            self.data = subset(self.data, options.examples, recipe["seed"])
        self.fit = layout(model, self.data.train)
        self.executor = executor_for(device or recipe["device"])
        if group.size > 1 and self.executor.name == "cuda":  # one GPU per rank of a machine
            from dslc.runtime.cuda.nccl import use_device
            use_device(group)
        augment = build_augment(recipe["augment"])
        if augment.mixup and self.fit.regression:
            raise TrainError("augment: mixup blends class labels; model "
                             f"'{model.name}' regresses float targets (drop mixup from its recipe)")
        try:  # a transform that does not fit the examples fails now, not in the data thread
            augment(self.data.train.x[:2], self.data.train.y[:2], np.random.default_rng(0))
        except ValueError as e:
            raise TrainError(f"augment of {self.data.train.name}: {e}") from None
        graph = mix_losses(model.graph, self.fit.y) if augment.mixup else model.graph
        parallel = DataParallel(recipe["sync_batchnorm"]) if group.size > 1 else None
        self.graph = located_at_model(model, lambda: train_step(
            graph, self.opt, select_params(model.graph, recipe["freeze"]),
            recipe["clip"]["max_norm"] if recipe["clip"] else None, parallel))
        self.step_fn = self.executor.compile(self.graph)
        self.dtype = self.graph[LR].type.dtype
        self.loss_name = self.graph.outputs_of("loss")[0].name
        self.metric_names = [o.name for o in self.graph.outputs_of("metric")]
        self.trained = [o.name for o in self.graph.outputs_of("param")]
        self.evaluator = Evaluator(model, self.fit, self.executor)
        seed = recipe["seed"]
        self.batches = Batches(self.data.train, recipe["batch"], seed=derived_seed(seed, "shuffle"),
                               augment=augment, transform=self.data.transform, shard=(group.rank, group.size))
        self.per_epoch = len(self.batches)
        self._check_shards()
        self._check_single_examples()
        self.total = recipe["steps"] or recipe["epochs"] * self.per_epoch
        self._check_warmup()
        self.schedule = schedule_from_recipe(recipe["schedule"], self.opt.lr, self.total / self.per_epoch)
        self.plateau = Plateau.from_recipe(recipe["schedule"], self.opt.lr)
        self.lr = 0.0  # the rate of the step being fed
        self.streams = Streams(seed)
        self.params = self._fresh_params(seed)
        self.progress = state.Progress()
        self.watch = self._watched()
        self.saved: tuple[Path, int, int] | None = None  # the last `last` checkpoint: path, epoch, step
        self._train_digest: str | None = None  # see _digest
        self.interrupted = False
        self.board: TensorBoard | None = None
        self.step_seconds = 0.0  # training time of the steps not yet flushed to the per-step log

    # ---- setting up ------------------------------------------------------------------

    def _check_warmup(self) -> None:
        """A warm-up as long as training never reaches the rate. The recipe's check refuses it
        against `epochs` (E0505); against `steps` only the data's batches per epoch tell, and
        a few steps are how a recipe is tried out, so it is said, not refused (a 10-step run
        of a cosine(warmup=1) peaked at a seventh of its rate, without a word)."""
        sched, steps = self.recipe["schedule"], self.recipe["steps"]
        warmup = sched["warmup"] * self.per_epoch
        if steps and warmup >= steps:
            self.warn(f"schedule {sched.name}(): the warm-up ({sched['warmup']:g} epochs, {warmup:g} steps of "
                      f"{self.per_epoch} an epoch here) outlasts the run (steps = {steps}): the rate never "
                      f"reaches the optimizer's lr")

    def _check_shards(self) -> None:
        """Every rank needs an example of every batch: refuse a batch (or an epoch's last,
        smaller one) with fewer examples than ranks before anything runs."""
        ranks, b = self.group.size, self.recipe["batch"]
        smallest = self.batches.total(self.per_epoch - 1)
        if ranks > 1 and smallest < ranks:
            raise TrainError(f"{ranks} ranks need at least one example each of every batch, but "
                             + (f"batch = {b}" if b < ranks else f"the last batch of an epoch holds {smallest} "
                                f"({len(self.data.train):,} examples in batches of {b})")
                             + "; choose a batch size that leaves every rank an example")

    def _check_single_examples(self) -> None:
        """A batchnorm over the examples alone (after a linear layer) has no variance for a
        batch of one: its running variance became NaN, silently, and every prediction after
        it with it (as a train split of 1,601 examples in batches of 100 would: its last batch
        holds one). A batch of one is refused; an epoch's last batch of one is left out of it
        (a different example each epoch, the order being shuffled), and said so."""
        names = over_examples_alone(self.model.graph)
        if not names:
            return
        ranks, b = self.group.size, self.recipe["batch"]
        share = 1 if ranks == 1 or self.recipe["sync_batchnorm"] else ranks  # what one batchnorm sees of a batch
        first = self.batches.total(0) // share
        if first < 2:
            raise TrainError(f"batchnorm '{names[0]}' takes its statistics over the examples of a batch alone, and "
                             f"a batch of {first} example has no variance (its running variance would be NaN)"
                             f"; train with at least 2 examples a batch{' on each rank' if share > 1 else ''}")
        if self.batches.total(self.per_epoch - 1) // share < 2:
            self.batches.drop_last = True
            self.per_epoch = len(self.batches)
            self.warn(f"the last batch of each epoch would hold one example ({len(self.data.train):,} in batches of "
                      f"{b}), which batchnorm '{names[0]}' cannot take statistics of: it is left out of the epoch")

    def _dropout(self) -> np.random.Generator:
        """Rank 0 draws dropout masks from the run's checkpointed stream; another rank from its
        own stream, derived from the seed, its rank and the step it started at (not saved: a
        resumed run's masks on those ranks are new draws, equal in distribution)."""
        if not self.group.rank:
            return self.streams["dropout"]
        if getattr(self, "_rank_dropout", None) is None:
            self._rank_dropout = stream(self.recipe["seed"], f"dropout/rank {self.group.rank}/step {self.progress.step}")
        return self._rank_dropout

    def _fresh_params(self, seed: int) -> dict[str, np.ndarray]:
        params = self.model.init(derived_seed(seed, "init"))
        for node in self.graph.params:  # optimizer state starts at zero
            if node.name not in params:
                params[node.name] = np.zeros(node.type.bind({}), NUMPY_DTYPE[node.type.dtype])
        return params

    def load_init(self) -> None:
        """Apply the recipe's `init = checkpoint(run, skip=[...])` (a new run, or the range test)."""
        init = self.recipe["init"]
        if init is not None:
            self.params.update(init_from(self.model, init))

    def _watched(self) -> tuple[str, str, float, int | None]:
        return watched_metric(self.recipe, self.metric_names, self.data.val is not None)

    def start(self, out_dir: Path, force: bool, overrides: dict) -> None:
        self.load_init()
        if self.group.rank:  # rank 0 creates the run directory
            self.out = Follower(out_dir)
            self._open_logs()
            return
        config = make_config(self.recipe, model_hash(self.model.graph), self.recipe["seed"], model=self.model.name,
                             file=str(self.model.program.root), executor=self.executor.name, overrides=overrides)
        if os.path.lexists(out_dir / CONFIG) and not force:
            raise TrainError(f"{out_dir} already holds a run; resume it, choose another name, "
                             f"or pass --force to start it again")
        try:
            self.out = Run.create(out_dir, config, overwrite=force)
        except RunError as e:
            raise TrainError(str(e)) from None
        self._open_logs()

    def _open_logs(self) -> None:
        """The per-step log and, when asked, the TensorBoard writer of the run directory."""
        self.steplog = self.out.steps(self.per_epoch)
        if self.options.tensorboard and not self.group.rank:
            self.board = TensorBoard(self.out.path, self.model.graph, purge_step=self.progress.step)

    def resume(self, run_dir: Path, force: bool) -> None:
        if not self.group.rank and run_dir.is_dir():
            # Locked before its checkpoint is read: a writer still running may be replacing
            # `last`, and a second one read it half-replaced ("optimizer.safetensors: missing")
            # instead of being told another process holds the run. train() releases it.
            self.out = Run(run_dir)
            try:
                self.out.lock()
            except RunError as e:
                raise TrainError(f"cannot resume: {e}") from None
        if checkpoint.unsaved_run(run_dir):
            raise TrainError(f"cannot resume {run_dir}: it has no checkpoint yet (its training stopped before "
                             f"the first was saved); train it again with --out {run_dir} --force")
        ckpt = load_checkpoint(run_dir / "last")
        state.check(ckpt)
        problems = state.model_changes(ckpt, self.model.graph, self.opt.kind)
        problems += [] if problems else state.optimizer_changes(ckpt, self.graph)
        if problems:
            raise TrainError(f"cannot resume {run_dir}: model '{self.model.name}' differs from its checkpoint "
                             f"{ckpt.path}:\n" + "\n".join(f"  {p}" for p in problems))
        changes = state.recipe_changes(ckpt.state["recipe"], self.recipe)
        if changes and not force:
            raise TrainError(f"the recipe changed since {run_dir} was saved:\n"
                             + "\n".join(f"  {c}" for c in changes) + "\npass --force to continue with the new recipe")
        if changes:
            self.echo("continuing with the changed recipe: " + "; ".join(changes))
        moved = split_changed(ckpt.state, self.data.train, self._digest())  # each save records it too
        if moved and not force:  # the same recipe, other examples: data files, or how dslc splits them
            raise TrainError(f"cannot resume {run_dir}: {moved}; it would go on training on other examples "
                             "than it started with. Start a new run, or pass --force to continue on this split")
        if moved:
            self.echo(f"continuing on another training split: {moved}")
        if not changes and not moved:  # the same data and recipe: the saved statistics are the ones fitted before
            self.data.stats = ckpt.state["normalization"]
        self.params.update(ckpt.weights)
        self.params.update(ckpt.optimizer)
        try:
            self.batches.restore(ckpt.state["batches"])
            self.streams = Streams.restore(self.recipe["seed"], ckpt.state["rng"])
        except OtherCut as e:  # --force takes a changed recipe, but a data stream goes on only as it was cut
            raise TrainError(f"cannot continue the data stream of {run_dir}: it was cut in batches of "
                             f"{e.saved[1]} from {e.saved[0]} training examples, and this recipe cuts {e.now[1]} "
                             f"from {e.now[0]}. Start a new run from its weights instead: "
                             f"init = checkpoint(\"{ckpt.path}\")") from None
        except (ValueError, TypeError, KeyError, OverflowError) as e:  # OverflowError: a count beyond uint64
            raise TrainError(f"cannot continue the random streams of {run_dir} from {ckpt.path / 'state.json'}: "
                             f"{e}") from None
        self.progress = state.Progress.from_json(ckpt.state["progress"])
        self._check_progress(ckpt, changed=bool(changes))
        if changes:
            self._judge_anew(state.saved_recipe(ckpt.state["recipe"]))
        self.saved = (ckpt.path, self.progress.epoch, self.progress.step)
        if self.group.rank:  # rank 0 continues the run directory
            self.out = Follower(run_dir)
            self._open_logs()
            return
        try:
            self.out = Run.resume(run_dir, self.progress.epoch, self.progress.step)
        except RunError as e:
            raise TrainError(f"cannot resume: {e}") from None
        self._open_logs()

    def _judge_anew(self, before: Recipe) -> None:
        """A run resumed with a changed recipe goes on under the new one. Its early stop was
        the old recipe's verdict: cleared, so more epochs or another rule train on, judged
        again at the next epoch's end (before, an early-stopped run resumed with
        `--set epochs=20 stop=none` trained nothing and exited 0). A best kept by another
        metric or mode starts afresh, rather than the new metric's values being compared with
        the old one's (val_loss against a val_accuracy of 0.87)."""
        p = self.progress
        p.stopped = False
        if watched_metric(before, self.metric_names, self.data.val is not None)[:2] != self.watch[:2]:
            p.best, p.best_epoch, p.bad_epochs = None, 0, 0

    def _check_progress(self, ckpt, changed: bool) -> None:
        """Refuse counters no run of this recipe and data can reach (a hand-edited state.json):
        the step must be where the data stream is, within the recipe's steps unless the recipe
        changed, and the classes and example shape those of the data."""
        p, b, per_epoch, s = self.progress, ckpt.state["batches"], self.per_epoch, ckpt.state
        impossible = None
        if b["position"] > per_epoch:
            impossible = f"'batches.position' {b['position']} is beyond the {per_epoch} batches of an epoch"
        elif p.step != b["epoch"] * per_epoch + b["position"]:
            impossible = (f"'step' {p.step} is not where the data stream is ({b['epoch']} epochs and "
                          f"{b['position']} batches of {per_epoch})")
        elif p.epoch not in (b["epoch"], b["epoch"] + 1):
            impossible = f"'epoch' {p.epoch} does not fit the data stream's {b['epoch']} epochs"
        elif p.step > self.total and not changed:
            impossible = f"'step' {p.step} is beyond the recipe's {self.total} steps"
        elif s["example_shape"] != list(self.data.train.shape) and math.prod(s["example_shape"]) == \
                math.prod(self.data.train.shape):
            impossible = (f"its examples were of shape {s['example_shape']}; dslc now brings them to the model "
                          f"input's {list(self.data.train.shape)} before normalising and augmenting them, so its "
                          "statistics do not fit (one per row of a grey image, not per channel): start a new run")
        elif s["classes"] != self.fit.classes or s["example_shape"] != list(self.data.train.shape):
            impossible = (f"'classes' {s['classes']} and 'example_shape' {s['example_shape']} are not the "
                          f"data's ({self.fit.classes} classes of shape {list(self.data.train.shape)})")
        if impossible:
            raise TrainError(f"cannot resume from {ckpt.path / 'state.json'}: {impossible}")

    # ---- the loop --------------------------------------------------------------------

    def run(self) -> TrainResult:
        if not self.quiet:
            self.echo(self._banner())
        if self.progress.step == 0 and not self.group.rank:
            self._sanity()
        old = self._catch_sigint()
        try:
            on_rank0(self.group, self._compile)  # the other ranks then find every kernel in the caches
            together(self.group, self._compile if self.group.rank else lambda: None)
            while self.progress.step < self.total and not self.progress.stopped:
                self._epoch()
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
            if self.board is not None:
                self.board.close()
        return self._finish()

    def _sanity(self) -> None:
        """Print the sanity block (sanity.py) over a sample of the training split, as the
        first step would read it; its warnings go to `warn` even when quiet."""
        n = sanity.sample_size(summarize(self.model.graph).flops, self.recipe["batch"], len(self.data.train))
        if n == 0:
            lines, warnings = ["initial loss: not checked (the model is too large for the host-side check)"], []
        else:
            x, y = self.data.train.x[:n], self.data.train.y[:n]
            init = self.recipe["init"]
            report = sanity.check(self.model, self.fit.feeds(self.data.transform(x), y), n, self.options.check_reg,
                                  init["path"] if init is not None else None, self.opt.weight_decay,
                                  {k: to_host(v) for k, v in self.params.items()})
            lines, warnings = report.lines, report.warnings
            self.start_loss = report.initial_total
        if not self.quiet:
            self.echo("sanity checks:\n" + "\n".join(f"  {line}" for line in lines))
        for text in warnings:
            self.warn(text)

    def _compile(self) -> None:
        """Compile the training step and the evaluation graph before the first step (with
        progress on stderr while kernels compile), so the progress bar's ETA counts steps only."""
        started = time.perf_counter()
        self.step_fn.prepare(quiet=self.quiet)
        if not self.group.rank:  # rank 0 evaluates
            self.evaluator.step.prepare(quiet=self.quiet)
        self.timing["compile_seconds"] = round(time.perf_counter() - started, 3)

    def _catch_sigint(self):
        """Ctrl-C sets a flag the loop reads between steps; a second one interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self.interrupted = True
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return signal.signal(signal.SIGINT, handler)

    def _epoch(self) -> None:
        from tqdm import tqdm

        p = self.progress
        epochs = math.ceil(self.total / self.per_epoch)
        bar = tqdm(total=self.per_epoch, initial=self.batches.position, desc=f"epoch {p.epoch + 1}/{epochs}",
                   unit="step", file=sys.stderr, leave=False, dynamic_ncols=True,
                   disable=self.quiet or not sys.stderr.isatty())
        with bar:
            for batch in self.batches:
                started = time.perf_counter()
                loss = self._step(batch)
                spent = time.perf_counter() - started
                if "first_step_seconds" not in self.timing:  # config.json: compile and first-step seconds
                    self.timing["first_step_seconds"] = round(time.perf_counter() - self.created, 3)
                    self.out.annotate(self.timing)
                p.seconds += spent
                p.epoch_seconds += spent
                self.step_seconds += spent
                bar.update(1)
                examples = self.batches.total(self.batches.position - 1)  # of every rank
                bar.set_postfix({"loss": f"{loss:.4f}", "ex/s": f"{examples / spent:.0f}"}, refresh=False)
                self.steplog.add(p.step, loss, self.lr)
                if self.steplog.due():
                    self._flush_steps()
                if self.group.size > 1:  # Ctrl-C reaches the ranks at different steps: stop at the same one
                    self.interrupted = self.group.lowest(self.interrupted) is not None
                if self.interrupted:
                    self._interrupt()
                if p.step >= self.total and self.batches.position < self.per_epoch:
                    break  # a `steps = N` run ends mid-epoch; at an epoch's end the stream finishes it
        self._end_epoch()

    def _interrupt(self) -> None:
        """Write `last` (rank 0) and stop every rank with Interrupted (rank 0 says how to resume)."""
        p = self.progress

        def save() -> None:
            self._flush_steps()
            self.out.draw()
            self._save(["last"])
        on_rank0(self.group, save)
        if self.group.rank:
            raise RankStopped(130)
        raise coordinated(Interrupted(f"interrupted at step {p.step} (epoch {p.epoch + 1}); checkpoint written to "
                                      f"{self.out.last}; continue with: dslc train "
                                      f"{self.model.program.root} --resume {self.out.path}"))

    def feeds(self, batch) -> dict[str, np.ndarray]:
        dtype = NUMPY_DTYPE[self.dtype]
        feeds = self.fit.feeds(batch.x, batch.y)
        self.lr = self.rate(self.progress.step / self.per_epoch)
        feeds[LR] = np.asarray(self.lr, dtype)
        if self.opt.needs_step:
            feeds[STEP] = np.asarray(self.progress.step + 1, dtype)  # Adam's t counts from 1
        if MIX_LABEL in self.graph:
            feeds.update(mix_feeds(batch, self.dtype))
        return feeds

    def rate(self, t: float) -> float:
        """The learning rate at training time t (epochs): the schedule's, times the plateau rule's scale."""
        return self.schedule(t) * self.progress.plateau.get("scale", 1.0)

    def _flush_steps(self) -> None:
        """Write the buffered per-step rows (and their TensorBoard scalars)."""
        try:
            rows = self.steplog.flush()
        except RunError as e:
            raise self._stopped(str(e)) from None
        if self.board is not None:
            self.board.steps(rows, self.step_seconds)
        self.step_seconds = 0.0

    def _step(self, batch) -> float:
        p = self.progress
        feeds = self.feeds(batch)
        rng = self._dropout()
        n = self.batches.total(self.batches.position - 1)  # the global batch; the outputs are its means
        if self.group.size > 1:
            self.group.begin_step(len(batch.y), n)
        last = (self.batches.position == self.per_epoch or p.step + 1 == self.total) and not self.group.rank
        before = {k: self.params[k].copy() for k in self.trained} if last else None
        replay = (copy.deepcopy(rng.bit_generator.state), {k: v.copy() for k, v in self.params.items()}) \
            if self.detect else None
        with np.errstate(all="ignore"):
            out = self.step_fn(feeds, self.params, rng)
        loss = float(out[self.loss_name])
        if not math.isfinite(loss):
            self._diverged(loss, feeds, replay)
        p.step += 1
        for name in ("examples", self.loss_name, *self.metric_names):
            value = n if name == "examples" else float(out[name]) * n
            p.sums[name] = p.sums.get(name, 0.0) + value
        if before is not None:
            p.ratios = {k: _ratio(self.params[k], w) for k, w in before.items()}
        return loss

    def _diverged(self, loss: float, feeds, replay) -> None:
        p = self.progress
        where = f"step {p.step + 1} (epoch {p.epoch + 1}, batch {self.batches.position} of {self.per_epoch})"
        if self.saved:
            good = f"the last good checkpoint is {self.saved[0]} (epoch {self.saved[1]}, step {self.saved[2]})"
        else:
            good = "no checkpoint was saved before it"
        if replay is not None:
            rng_state, params = replay
            rng = np.random.default_rng()
            rng.bit_generator.state = rng_state
            params = {k: to_host(v) for k, v in params.items()}  # the NumPy interpreter replays it
            detail = anomaly.explain(self.graph, feeds, params, rng)  # unoptimised: the user's names
        else:
            detail = "rerun with --detect-anomaly to find the first operation that produced it"
        if self.group.rank:  # the loss is the global batch's: every rank stops here, rank 0 says why
            raise RankStopped(1)
        raise coordinated(TrainError(f"the loss is {loss} at {where}; {good}\n  {detail}"))

    def _end_epoch(self) -> None:
        """Close the epoch: on rank 0, which evaluates and writes, and the other ranks take its
        decisions (best, early stop, the plateau's rate), so all go on or stop together."""
        if self.group.size == 1:
            return self._close_epoch()
        on_rank0(self.group, self._close_epoch)
        self.progress, self.saved = self.group.broadcast((self.progress, self.saved))

    def _close_epoch(self) -> None:
        p = self.progress
        started = time.perf_counter()
        p.epoch += 1
        n = p.sums.get("examples", 0.0) or 1.0
        record: dict[str, Any] = {"epoch": p.epoch, "step": p.step, "train_loss": p.sums.get(self.loss_name, 0.0) / n,
                  **{f"train_{m}": p.sums.get(m, 0.0) / n for m in self.metric_names}}
        if self.data.val is not None:
            record.update(self.evaluator(self.data.val, self.params, self.data.transform).record("val"))
        record["lr"] = self.rate((p.step - 1) / self.per_epoch)
        if self.plateau is not None:
            p.plateau = self.plateau.update(p.plateau, record)
        metric, mode, min_delta, patience = self.watch
        value = record.get(metric, float("nan"))
        improved = improves(value, p.best, mode, min_delta)
        if improved:
            p.best, p.best_epoch, p.bad_epochs = value, p.epoch, 0
        else:
            p.bad_epochs += 1
        below = self.options.stop_below
        reached = below is not None and record["train_loss"] < below
        p.stopped = reached or (patience is not None and p.bad_epochs >= patience)
        record["update_ratio"] = p.ratios
        spent = time.perf_counter() - started
        p.seconds += spent
        p.epoch_seconds += spent
        record["time"] = p.epoch_seconds
        p.sums, p.ratios, p.epoch_seconds = {}, {}, 0.0
        # The record goes first: a kill before the checkpoint replays this epoch, whose record
        # Run.resume then drops; the other order would lose the record for good.
        done = p.stopped or p.step >= self.total
        self._flush_steps()
        try:
            self.out.log(record, final=done)
        except (RunError, CliError) as e:
            raise self._stopped(str(e)) from None
        if self.board is not None:
            self.board.epoch(record, self.params, self.trained)
        every = self.recipe["checkpoint"]
        due = done or (every is not None and p.epoch % every["n"] == 0)
        self._save((["best"] if improved and every is not None else []) + (["last"] if due else [])
                   + [f"{SNAPSHOTS}/epoch-{p.epoch:04d}"] * self._snapshot_due(done))
        if not self.quiet:
            self.echo(self._summary(record, improved))
        warning = sanity.diverged(p.epoch, record["train_loss"], self.start_loss)
        if warning is not None:
            self.warn(warning)
            self.start_loss = None  # said once a run
        if reached:
            self.echo(f"stopping: the training loss {record['train_loss']:.4g} is below {below:g}")
        elif p.stopped:
            self.echo(f"stopping early: {metric} has not improved for {p.bad_epochs} epochs "
                      f"(best {p.best:.4f} at epoch {p.best_epoch})")

    def _snapshot_due(self, done: bool) -> bool:
        """Whether the recipe's `keep` asks for a snapshot at the end of this epoch: every n
        epochs, or at a minimum of the learning rate at the epoch's end, where cosine_restarts
        and cyclical end a cycle. cosine_restarts reaches its minimum at the epoch's last step
        and jumps at the next; cyclical's triangle reaches it at the cycle's boundary, which is
        the next epoch's first step: both are minima here (the second was missed, so a
        cyclical rate kept only the last epoch). A rate still falling when training ends counts."""
        keep, p = self.recipe["keep"], self.progress
        if keep is None:
            return False
        if keep.name == "every":
            return p.epoch % keep["n"] == 0
        rate = lambda k: self.rate((p.step + k) / self.per_epoch)  # -1: the epoch's last step, 0: the next
        bottom = lambda k: rate(k) < rate(k - 1) and rate(k + 1) > rate(k)
        return (done and rate(-1) < rate(-2)) or bottom(-1) or bottom(0)

    def _digest(self) -> str:
        """The training split's fingerprint (prepare.digest), computed once: each save records it."""
        if self._train_digest is None:
            self._train_digest = digest(self.data.train)
        return self._train_digest

    def _save(self, names: list[str]) -> None:
        """Write the checkpoints `names` (best, last) together: each is prepared in full before
        any is put in place, so a full disk, a read-only directory or a non-finite state leaves
        every one of them as it was, and the run stops with a TrainError saying so."""
        if self.group.rank:  # rank 0 writes; the ranks hold the same weights
            return
        extra = {"optimizer": self.opt.kind, "recipe": self.recipe.to_json(), "recipe_hash": recipe_hash(self.recipe),
                 "rng": self.streams.state(),
                 "batches": self.batches.state(), "normalization": self.data.stats, "model": self.model.name,
                 "classes": self.fit.classes, "class_names": list(self.data.train.class_names or ()),
                 "example_shape": list(self.data.train.shape), "train_digest": self._digest()}
        prepared = []
        try:
            for name in names:
                path = self.out.path / name
                if name.startswith(SNAPSHOTS):
                    ensure_dir(path.parent)
                prepared.append((state.prepare(path, self.params, self.model.graph, self.progress, extra), path))
            for tmp, path in prepared:  # best first: a kill between the two leaves `last` one epoch behind
                checkpoint.commit(tmp, path)
        except (CheckpointError, CliError) as e:
            for tmp, _ in prepared:
                checkpoint.discard(tmp)
            raise self._stopped(str(e)) from None
        if "last" in names:
            self.saved = (self.out.last, self.progress.epoch, self.progress.step)

    def _stopped(self, why: str) -> TrainError:
        """The error that ends a run which cannot write its files: what failed, what is kept."""
        p = self.progress
        if self.saved:
            kept = (f"the last good checkpoint is {self.saved[0]} (epoch {self.saved[1]}, step {self.saved[2]}); "
                    f"continue with: dslc train {self.model.program.root} --resume {self.out.path}")
        else:
            kept = "no checkpoint was saved before it"
        return TrainError(f"stopped at epoch {p.epoch} (step {p.step}): {why}\n  {kept}")

    # ---- reporting -------------------------------------------------------------------

    def _banner(self) -> str:
        d, p = self.data, self.progress
        sizes = " / ".join(f"{len(s):,} {n}" for n, s in (("train", d.train), ("val", d.val), ("test", d.test)) if s)
        what = "resuming at" if p.step else "starting"
        ranks = f" x {self.group.size} ranks" if self.group.size > 1 else ""
        return (f"{what} step {p.step} of {self.total} ({self.per_epoch} per epoch) | model {self.model.name}, "
                f"data {d.train.name}: {sizes} | {self.executor.name} executor{ranks} | run {self.out.path}")

    def _summary(self, r: dict, improved: bool) -> str:
        epochs = math.ceil(self.total / self.per_epoch)
        parts = [f"epoch {r['epoch']:>{len(str(epochs))}}/{epochs}"]
        for split in ("train", "val"):
            shown = [f"{k[len(split) + 1:]} {v:.4f}" for k, v in r.items() if k.startswith(split + "_")]
            if shown:
                parts.append(f"{split} " + " ".join(shown))
        parts += [f"lr {r['lr']:.3g}", f"{r['time']:.1f}s"]
        return "  ".join(parts) + ("  *" if improved else "")

    def _finish(self) -> TrainResult:
        p = self.progress
        metric, mode = self.watch[:2]
        results: list[TrainResult] = []

        def publish() -> None:  # rank 0 reports, tests once when asked, and writes result.json
            if p.best is not None:
                where = f"; weights in {self.out.best}" if (self.out.best / "state.json").exists() else ""
                self.echo(f"best {metric} {p.best:.4f} at epoch {p.best_epoch}{where}")
            test = self._test() if self.options.test else None
            self.echo(f"trained {p.epoch} epochs ({p.step} steps) in {p.seconds:.1f}s; run saved in {self.out.path}")
            results.append(TrainResult(self.out.path, p.epoch, p.step, p.seconds, p.best_epoch, p.stopped, test,
                                       metric, mode, p.best))
            summary = {"epochs": p.epoch, "steps": p.step, "train_seconds": p.seconds, "best_epoch": p.best_epoch,
                       "stopped_early": p.stopped, "metric": metric, "mode": mode,
                       "best": p.best if p.best is not None and math.isfinite(p.best) else None,
                       **(test.record("test") if test else {})}
            write_atomic(self.out.path / RESULT, json.dumps(summary, indent=2).encode())
        on_rank0(self.group, publish)
        return results[0] if results else TrainResult(self.out.path, p.epoch, p.step, p.seconds, p.best_epoch,
                                                      p.stopped, None, metric, mode, p.best)

    def _test(self) -> Evaluation | None:
        """The test split evaluated once, with the best weights (`--test`)."""
        if self.data.test is None:
            self.warn("--test: the recipe's data and split hold out no test set; nothing evaluated")
            return None
        best, best_epoch = self.out.best, self.progress.best_epoch
        params = dict(self.params)
        if (best / "state.json").exists():
            saved = load_checkpoint(best)
            params.update(saved.weights)
            best_epoch = saved.state.get("epoch", best_epoch)  # what the files hold, even after a failed save
        test = self.evaluator(self.data.test, params, self.data.transform)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in test.record("test").items())
        self.echo(f"{shown}  ({test.examples:,} examples, weights of epoch {best_epoch})")
        return test


def improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether an epoch's watched value is the run's new best: the first epoch's always, a
    number over a NaN best (a first epoch whose metric was NaN kept `best/` and the early
    stop's count for the whole run: no number compares above NaN), and otherwise a move of
    more than min_delta in the mode's direction (never a NaN)."""
    if best is None or (best != best and value == value):
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _ratio(new: np.ndarray, old: np.ndarray) -> float | None:
    """|new - old| / |old| (Frobenius norms); None for an all-zero parameter. Once an epoch,
    so GPU parameters are simply copied to the host for it. Weights that blew up give inf or
    NaN, which the anomaly report explains, not a bare NumPy overflow warning."""
    new, old = to_host(new), to_host(old)
    with np.errstate(over="ignore", invalid="ignore"):
        norm = float(np.linalg.norm(old))
        return float(np.linalg.norm(new - old)) / norm if norm else None


