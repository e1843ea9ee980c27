"""The verbs that train a model or use what training left: train, eval, predict, ensemble, plot, lr-find, lr.

Their bodies live in dslc.runtime; each verb here parses its flags and prints the result.
"""
from __future__ import annotations

import json
from pathlib import Path

from dslc.cli.common import (add_checkpoint_args, add_recipe_args, checkpoint_sets, count, figure_file, load_model,
                             model_and_recipe, positive, recipe_sets, seed, verb)
from dslc.diagnostics import UsageError
from dslc.files import output_is_not


def cmd_train(args) -> int:
    from dslc.runtime import mpi
    from dslc.runtime.ranks import guard

    group = mpi.world()  # the ranks an MPI launcher started, else this process alone
    if group.rank:  # rank 0 speaks for the run
        import contextlib
        import os
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), guard(group):
            return _train(args, group)
    with guard(group):
        return _train(args, group)


def _train(args, group) -> int:
    from dslc.runtime import overfit, trainer
    from dslc.runtime.ranks import together

    model, recipe, out, options, sets = together(group, lambda: _setup(args, group))
    if group.size > 1 and not args.out and not args.resume:  # every rank names rank 0's choice
        out = group.broadcast(out)
    result = trainer.train(model, recipe, out, resume=args.resume, force=args.force, quiet=args.quiet,
                           device=args.device, detect_anomaly=args.detect_anomaly, overrides=sets, options=options)
    if args.overfit:
        reached, sentence = overfit.verdict(result, args.overfit)
        print(sentence)
        return 0 if reached else 1
    return 0


def _setup(args, group):
    """(model, recipe, run directory, trainer options, --set pairs) of a `dslc train` command line;
    a recipe asking for ranks outside a launcher replaces this process by mpiexec here."""
    from dslc.runtime import mpi, overfit, trainer
    from dslc.runtime.recipes import model_and_recipe as load_recipe

    if args.resume and args.out:
        raise UsageError("--resume DIR continues the run in DIR; --out cannot go with it")
    if args.overfit and (args.resume or args.test):
        raise UsageError(f"--overfit trains a fresh run on a few examples; --{'resume' if args.resume else 'test'} "
                         "cannot go with it")
    as_name, sets = args.as_name, recipe_sets(args)
    if args.ranks:
        sets["ranks"] = str(args.ranks)
    if args.resume:  # the same recipe and settings as the run's start, unless given anew
        saved_name, saved_sets = trainer.resume_settings(args.resume)
        as_name, sets = as_name or saved_name, {**saved_sets, **sets}
    model, recipe = load_recipe(args.file, as_name, sets)
    ranks = recipe["ranks"]
    if not mpi.launched_size() and ranks is not None and ranks > 1:
        mpi.spawn(ranks, args.argv)  # replaces this process by mpiexec, which starts the ranks
    if ranks is not None and mpi.launched_size() and ranks != group.size and not group.rank:
        mpi.warn_ranks(ranks, group.size)
    options = trainer.Options(test=args.test, tensorboard=args.tensorboard, check_reg=args.check_reg)
    name = recipe.name
    if args.overfit:
        model, recipe, changes = overfit.setup(model, recipe, args.overfit, epochs_given="epochs" in sets)
        options = trainer.Options(tensorboard=args.tensorboard, check_reg=args.check_reg, examples=args.overfit,
                                  stop_below=overfit.TARGET)
        name += "-overfit"
        print("overfitting: " + ", ".join(changes) + f"; stops once the training loss is below {overfit.TARGET:g}")
    out = args.out or (None if args.resume else
                       trainer.default_run_dir(name) if not args.force else Path("runs") / name)
    return model, recipe, out, options, sets


def cmd_eval(args) -> int:
    from dslc.frontend.program import load_program
    from dslc.runtime import predict, tta

    load_program(args.file)  # a mistake in the .net file first, as every verb reports it
    ckpt = predict.open_checkpoint(args.checkpoint)
    model, recipe = predict.model_and_recipe_for(args.file, ckpt, args.as_name, args.model,
                                                 checkpoint_sets(args, recipe=True))
    predict.fit_model(ckpt, model, args.force)
    report = predict.evaluate_checkpoint(model, recipe, ckpt, args.split, args.device,
                                         tta=tta.parse(args.tta) if args.tta is not None else ())  # --tta '': refused
    print(json.dumps(report, indent=2) if args.json else predict.format_eval(report))
    return 0


def cmd_predict(args) -> int:
    from dslc.runtime import predict
    from dslc.runtime.layout import reads_labels

    model = load_model(args)
    ckpt = predict.open_checkpoint(args.checkpoint)
    predict.fit_model(ckpt, model, args.force)
    if not reads_labels(model):  # regression: the predicted values, one example a line
        if args.mc_samples:
            raise UsageError("--mc-samples averages class probabilities; this is a regression model")
        values = predict.predict_values(model, ckpt, args.input, args.device)
        print(json.dumps(values.tolist(), indent=2) if args.json else
              "\n".join(f"{i}: " + " ".join(f"{v:.6g}" for v in row) for i, row in
                        enumerate(values.reshape(len(values), -1))))
        return 0
    rows = predict.predict(model, ckpt, args.input, args.top, args.device, args.mc_samples, args.seed)
    keys = ("class", "probability", "std")
    print(json.dumps([[dict(zip(keys, cell)) for cell in row] for row in rows], indent=2) if args.json
          else predict.format_predictions(rows))
    return 0


def cmd_ensemble(args) -> int:
    from dslc.frontend.program import load_program
    from dslc.runtime import predict

    load_program(args.file)  # a mistake in the .net file first, as every verb reports it
    paths = list(args.checkpoint or []) + [snap for run in args.snapshots or [] for snap in predict.snapshots(run)]
    if len(paths) < 2:
        raise UsageError("an ensemble needs at least two members: --checkpoint DIR or --snapshots RUN")
    members = [predict.open_checkpoint(path) for path in paths]
    model, recipe = predict.model_and_recipe_for(args.file, members[0], args.as_name, args.model,
                                                 checkpoint_sets(args, paths, recipe=True))
    for ckpt in members:
        predict.fit_model(ckpt, model, args.force)
    report = predict.ensemble(model, recipe, members, args.split, args.device)
    print(json.dumps(report, indent=2) if args.json else predict.format_ensemble(report))
    return 0


def cmd_plot(args) -> int:
    from dslc.runtime.runs import plot_run_ratios, plot_runs

    output_is_not(args.output, *(f"{run}/metrics.jsonl" for run in args.runs))
    (plot_run_ratios if args.ratios else plot_runs)(args.runs, args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_lr(args) -> int:
    from dslc.runtime.lrfind import schedule_plot

    output_is_not(args.output, args.file)
    _, recipe = model_and_recipe(args)
    points, more = schedule_plot(recipe, args.output)
    shown = [f"epoch {t:.4g}: {lr:.3g}" for t, lr in points]
    if recipe["schedule"].name == "reduce_on_plateau":
        shown.append("then lowered when the validation stalls")
    print(f"wrote {args.output}: " + ", ".join(shown[:-1] + ["..."] * more + shown[-1:]))
    return 0


def cmd_lr_find(args) -> int:
    from dslc.runtime.lrfind import lr_find, plot_lr_find

    output_is_not(args.output, args.file)
    model, recipe = model_and_recipe(args)
    try:
        found = lr_find(model, recipe, args.start, args.end, args.steps, args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    plot_lr_find(found, args.output, f"learning-rate range test of {recipe.name}")
    advice = (f"suggested lr {found.suggestion:.3g} (a tenth of the rate at the lowest loss)" if found.suggestion
              else "the loss was never finite: lower --start")
    print(f"wrote {args.output}; {advice}")
    return 0


def register(verbs) -> None:
    """Add train, eval, predict, ensemble, plot, lr-find and lr to the CLI's subparsers."""
    p = verb(verbs, "train", "train a model with the recipe of its `train` block",
              "Train a model on the data its recipe names and leave a run directory (config.json, "
              "metrics.jsonl/csv, metrics_steps.csv, curves.png, checkpoints last/ and best/). A sanity "
              "block checks the loss at initialisation first; a progress bar shows each epoch on a "
              "terminal; one summary line per epoch and the best validation metric are printed. The test "
              "split is evaluated only with --test (or later by `dslc eval --split test`), so that "
              "settings are chosen on validation data. Ctrl-C writes a checkpoint before stopping (exit "
              "status 130); --resume continues exactly.",
              "  dslc train models/digits_mlp.net\n"
              "  dslc train models/digits_mlp.net --epochs 5 --set optimizer.lr=0.003 --out runs/quick\n"
              "  dslc train models/digits_mlp.net --resume runs/digits_mlp\n"
              "  dslc train models/small_cnn.net --overfit 20          # can it learn 20 examples by heart?\n"
              "  dslc train models/digits_mlp.net --tensorboard --test\n"
              "  dslc train models/small_cnn.net --ranks 2            # data-parallel, 2 processes (MPI)\n"
              "  mpiexec -n 4 dslc train models/small_cnn.net --set sync_batchnorm=true")
    add_recipe_args(p, epochs=True)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/NAME, or runs/NAME-2, ... if taken)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--device", choices=("cpu", "gpu", "reference"),
                   help="where to train (default: the recipe's device; reference: the NumPy interpreter)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    p.add_argument("--detect-anomaly", action="store_true",
                   help="when the loss becomes NaN or Inf, replay the step to name the first non-finite node")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing run directory, or resume although the recipe changed")
    p.add_argument("--test", action="store_true",
                   help="evaluate the test split once at the end, with the best weights")
    p.add_argument("--overfit", type=count, metavar="N",
                   help="train on N examples with regularisation and augmentation off until the training loss "
                        "is near zero (exit status 1 if it never gets there); a sanity check of model and recipe")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to RUN/tensorboard (the `tensorboard` extra)")
    p.add_argument("--check-reg", action="store_true",
                   help="sanity check: the loss must rise when regularisation is turned up 10x")
    p.add_argument("--ranks", type=count, metavar="N",
                   help="data-parallel training in N processes on this machine, started with mpiexec (the `mpi` "
                        "extra; same as --set ranks=N); under mpiexec the launcher decides")
    p.set_defaults(run=cmd_train)

    p = verb(verbs, "eval", "evaluate a checkpoint on the test, validation or training split",
              "Build the data split of the .net file's recipe (the one named like the checkpoint's, "
              "else --as NAME, else the model's), normalise it with the checkpoint's statistics and "
              "print loss, metrics, accuracy and, with more than 5 classes, top-5 accuracy; --json adds "
              "the confusion matrix (rows: true class, columns: predicted). The checkpoint's own recipe "
              "is never used to find data: a checkpoint cannot make eval read a file.",
              "  dslc eval models/digits_mlp.net --checkpoint runs/digits_mlp\n"
              "  dslc eval models/digits_mlp.net --checkpoint runs/digits_mlp/last --split val --json")
    add_checkpoint_args(p, recipe=True)
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default: test)")
    p.add_argument("--tta", metavar="KINDS",
                   help="test-time augmentation: average over views of each image, `flip`, `crops` or `flip,crops`")
    p.add_argument("--json", action="store_true", help="print the report as JSON, confusion matrix included")
    p.set_defaults(run=cmd_eval)

    p = verb(verbs, "predict", "classify examples from a .npy array or an image file",
              "Print the most probable classes of each example: a .npy holding one example or a batch, "
              "or an image (converted to the checkpoint's channels and size, pixels scaled to 0..1).",
              "  dslc predict models/digits_mlp.net --checkpoint runs/digits_mlp --input x.npy --top 3")
    add_checkpoint_args(p)
    p.add_argument("--input", required=True, metavar="FILE", help="x.npy or an image (.png, .jpg, ...)")
    p.add_argument("--top", type=count, default=5, metavar="K", help="classes shown per example (default: 5)")
    p.add_argument("--mc-samples", type=count, metavar="K",
                   help="Monte-Carlo dropout: K passes with dropout on; mean probability and its spread")
    p.add_argument("--seed", type=seed, default=0, help="seed of the dropout masks of --mc-samples (default: 0)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(run=cmd_predict)

    p = verb(verbs, "ensemble", "evaluate the average prediction of several checkpoints",
              "Average the predicted class probabilities of several checkpoints of one model (e.g. "
              "trained with different seeds, or the snapshots one run kept with `keep = ...`) and report "
              "each member's and the ensemble's accuracy.",
              "  dslc ensemble models/digits_mlp.net --checkpoint runs/a --checkpoint runs/b\n"
              "  dslc ensemble models/digits_mlp.net --snapshots runs/digits_mlp --split val")
    add_checkpoint_args(p, many=True, recipe=True, required=False)
    p.add_argument("--snapshots", action="append", metavar="RUN",
                   help="every snapshot a run kept in RUN/snapshots (its recipe's `keep`); repeatable")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default: test)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=cmd_ensemble)

    p = verb(verbs, "plot", "draw the loss and accuracy curves of one or several runs",
              "Draw loss and the first metric, train (dashed) vs validation (solid), of each run "
              "into one PNG, one colour per run; with --ratios, the update/weight ratio of every "
              "parameter over the epochs instead (one panel per run, the 1e-3 guide line dashed).",
              "  dslc plot runs/digits_mlp runs/digits_cnn -o compare.png\n"
              "  dslc plot runs/digits_mlp --ratios -o ratios.png")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--ratios", action="store_true", help="plot the update/weight ratios per parameter")
    p.add_argument("-o", "--output", default="curves.png", type=figure_file,
                   help="figure to write: .png (default: curves.png), .pdf, .svg or .jpg")
    p.set_defaults(run=cmd_plot)

    p = verb(verbs, "lr-find", "run the learning-rate range test and suggest a rate",
              "Train from the initial weights for a few steps while the learning rate grows "
              "exponentially; plot the smoothed loss against the rate and suggest a tenth of the "
              "rate where the loss is lowest.",
              "  dslc lr-find models/digits_mlp.net -o lr_find.png")
    add_recipe_args(p)
    p.add_argument("--start", type=positive, default=1e-7, help="first learning rate (default: 1e-7)")
    p.add_argument("--end", type=positive, default=10.0, help="last learning rate (default: 10)")
    p.add_argument("--steps", type=count, default=100, help="steps of the test (default: 100)")
    p.add_argument("--device", choices=("cpu", "gpu"), help="where to run (default: the recipe's device)")
    p.add_argument("-o", "--output", default="lr_find.png", type=figure_file,
                   help="figure to write: .png (default: lr_find.png), .pdf, .svg or .jpg")
    p.set_defaults(run=cmd_lr_find)

    p = verb(verbs, "lr", "plot the learning-rate schedule of a recipe without training",
              "Draw the learning rate the recipe's schedule gives over its run, warm-up included.",
              "  dslc lr models/small_cnn.net -o lr.png")
    add_recipe_args(p, epochs=True)
    p.add_argument("-o", "--output", default="lr.png", type=figure_file,
                   help="figure to write: .png (default: lr.png), .pdf, .svg or .jpg")
    p.set_defaults(run=cmd_lr)
