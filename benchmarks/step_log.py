"""What the per-step log costs a training step (metrics_steps.csv, and TensorBoard's step scalars).

    python -m benchmarks.step_log [--model models/digits_mlp.net] [--blocks 40] [--steps 50] [--json]

The smallest shipped model (the digits MLP, a step of a few hundred microseconds) is the
worst case: the log's cost per step is fixed, so it weighs most on the fastest step. The
trainer's own objects are used: a Trainer is built for the recipe, and blocks of
`--steps` steps are timed alternately without the logger (the step alone, as before the
log existed) and with it (the step, `StepLog.add` and `due()` as the trainer's loop calls
them, and the block's rows flushed to the file at its end, as at an epoch's end, so the
writing is counted too), `--blocks` times each, the order swapped every round so drift
and a passing load weigh on both. Reported: the median step time of each, their
difference as a share of a step, and the logger's own cost per step measured alone
(add + due for each of 2,000 blocks of steps and the flush that ends each block), which
the A/B difference, a small difference of two noisy medians, cannot resolve on a shared
machine. With --tensorboard the step scalars are written too, at the stride the writer
chooses to stay within its budget.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import dslc.runtime.cpu  # noqa: F401  (sets OpenMP's waiting before Numba loads)

ROOT = Path(__file__).resolve().parent.parent


def _trainer(model_file: str, out: Path, tensorboard: bool):
    from dslc.runtime.recipes import model_and_recipe
    from dslc.runtime.trainer import Options, Trainer

    model, recipe = model_and_recipe(ROOT / model_file)
    trainer = Trainer(model, recipe, "cpu", True, False, lambda _: None, Options(tensorboard=tensorboard))
    trainer.start(out, force=True, overrides={})
    return trainer


def _block(trainer, steps: int, log: bool) -> float:
    """Seconds per step over `steps` steps, with or without the per-step log (as _epoch runs it)."""
    batches = iter(trainer.batches)
    started = time.perf_counter()
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:
            batches = iter(trainer.batches)
            batch = next(batches)
        step_started = time.perf_counter()
        loss = trainer._step(batch)
        if log:
            trainer.step_seconds += time.perf_counter() - step_started
            trainer.steplog.add(trainer.progress.step, loss, trainer.lr)
            if trainer.steplog.due():
                trainer._flush_steps()
    if log:
        trainer._flush_steps()
    return (time.perf_counter() - started) / steps


def _alone(trainer, steps: int, step_seconds: float, blocks: int = 2000) -> float:
    """The logger's own seconds per step: add and due for every step, and a flush (TensorBoard
    included when on) every `steps` steps, as many blocks as `blocks`, each step said to
    have taken `step_seconds`."""
    log = trainer.steplog
    started = time.perf_counter()
    for b in range(blocks):
        for i in range(steps):
            log.add(b * steps + i + 1, 0.5, 1e-3)
            log.due()
        trainer.step_seconds = steps * step_seconds
        trainer._flush_steps()
    return (time.perf_counter() - started) / (blocks * steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/digits_mlp.net")
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tensorboard", action="store_true", help="also write the step scalars to TensorBoard")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(args.model, Path(tmp) / "run", args.tensorboard)
        _block(trainer, 3 * args.steps, log=False)  # warm-up: compile, caches, BLAS threads
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.blocks):
            for log in ((False, True) if r % 2 == 0 else (True, False)):
                times[log].append(_block(trainer, args.steps, log))
        off, on = statistics.median(times[False]), statistics.median(times[True])
        alone = _alone(trainer, args.steps, off)
        if trainer.board is not None:
            trainer.board.close()
    result = {"model": args.model, "tensorboard": args.tensorboard, "load": os.getloadavg()[0],
              "step_ms_without": off * 1e3, "step_ms_with": on * 1e3, "ab_share": (on - off) / off,
              "logger_us_per_step": alone * 1e6, "logger_share": alone / off}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model}: step {off * 1e3:.3f} ms without the per-step log, {on * 1e3:.3f} ms with it "
              f"(medians of {args.blocks} interleaved blocks of {args.steps}; A/B difference {100 * (on - off) / off:+.2f}%)"
              f"\nthe logger alone: {alone * 1e6:.2f} us per step = {100 * alone / off:.3f}% of a step"
              f"{' (TensorBoard scalars included)' if args.tensorboard else ''}; load average {result['load']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
