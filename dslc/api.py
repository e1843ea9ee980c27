"""`dslc.load`: a model, its trained parameters when given a run, and its compiled callables.

    m = dslc.load("models/small_cnn.net", checkpoint="runs/small_cnn")   # best/, else last/
    x = m.normalize(images)                  # the run's input statistics, as training applied them
    c = m.compile(device="cpu")              # "gpu" (CuPy), or "reference" (the NumPy oracle)
    probs = c.forward(m.params, {"image": x})["probs"]
    score, g = c.grad(m.params, {"image": x}, of="fc8[:, 3]", wrt=["image"])   # saliency of class 3

The front end's Model (dslc/model.py: graph, recipe, init, the reference forward and grad)
sits below the executors; this layer, above them, adds what needs them: checkpoints
(runtime/predict.py checks that one fits the model) and `compile` (runtime/compiled.py).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from dslc import model as front
from dslc.diagnostics import UsageError
from dslc.passes.train_step import Optimizer


class Model(front.Model):
    """A loaded model (dslc/model.py's) with `params`, the parameters and running statistics
    of a checkpoint when `dslc.load(..., checkpoint=RUN)` was given one (else None), the
    checkpoint's input `normalization`, and `compile`."""

    params: dict[str, np.ndarray] | None = None
    normalization: dict[str, Any] | None = None
    checkpoint: Any = None  # the Checkpoint read (runtime/checkpoint.py): its state.json's classes, recipe ...

    @classmethod
    def of(cls, loaded: front.Model) -> "Model":
        out = cls(loaded.program, loaded.name, loaded.graph, loaded.overrides)
        out.warnings = loaded.warnings
        return out

    def compile(self, device: str = "cpu", optimizer: Optimizer | None = None):
        """forward, grad and step on `device`'s executor (runtime/compiled.py): cpu (Numba
        kernels), gpu (CUDA through CuPy), auto, or reference (the NumPy interpreter).
        `optimizer` is what `step` uses, else the model's recipe's, else plain SGD."""
        from dslc.runtime.compiled import compile_model  # Numba or CuPy load only when asked
        return compile_model(self, device, optimizer)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Examples as the checkpoint's run fed them: its training split's statistics applied
        (no change without a checkpoint, or for a run that did not normalise). Examples of
        another shape holding as many numbers (digits_mlp's [n, 64] for its run's [n, 1, 8, 8])
        are standardised as the run's examples were, and given back in their own shape."""
        try:
            x = np.asarray(x, np.float32)
        except (TypeError, ValueError) as e:  # NumPy's "could not convert string to float: 'abc'"
            raise UsageError(f"normalize: examples are an array of numbers, not {type(x).__name__} ({e})") from None
        if self.normalization is None:
            return x
        from dslc.runtime.data import normalize
        run = tuple(self.checkpoint.state["example_shape"])
        if x.ndim >= 1 and x.shape[1:] != run and np.prod(x.shape[1:]) == np.prod(run):
            return normalize.apply(x.reshape((len(x), *run)), self.normalization).reshape(x.shape)
        try:
            return normalize.apply(x, self.normalization)
        except ValueError as e:  # NumPy's or normalize's words alone did not say what the run fed
            raise UsageError(f"normalize: examples of shape {list(x.shape)} do not fit the run's, "
                             f"[N, {', '.join(map(str, run))}] ({e})") from None


def load(path: str | os.PathLike, model: str | None = None, text: str | None = None,
         checkpoint: str | os.PathLike | None = None, force: bool = False, **overrides) -> Model:
    """Parse, resolve and shape-check a model (CompileError for a mistake in the file); with
    `checkpoint` (a run directory, whose best/ else last/ is read, or a checkpoint
    directory), also its parameters, which must fit the model: every parameter with its shape
    and dtype (TrainError otherwise), and, unless `force`, the same graph. A checkpoint of a
    run trained with `--set` builds the model with the run's hyper-parameters (RUN/config.json),
    under the keyword `overrides` given here, as the CLI's verbs do (runtime/run_settings.py)."""
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):  # else a TypeError from pathlib
        raise UsageError(f"load: checkpoint is the path of a run or checkpoint directory, not "
                         f"{type(checkpoint).__name__}")
    if checkpoint is not None and text is None:
        overrides = {**_run_overrides(path, model, checkpoint, overrides), **overrides}
    loaded = Model.of(front.load(path, model, text, **overrides))
    if checkpoint is not None:
        from dslc.runtime import predict
        ckpt = predict.open_checkpoint(checkpoint)
        predict.fit_model(ckpt, loaded, force)
        loaded.params = {p.name: ckpt.weights[p.name] for p in loaded.graph.params}
        loaded.normalization = ckpt.state.get("normalization")
        loaded.checkpoint = ckpt
    return loaded


def _run_overrides(path, model: str | None, checkpoint, given: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters `checkpoint`'s run was trained with, as values, for those `given` leaves open."""
    from dslc.frontend.values import literals
    from dslc.runtime.run_settings import run_settings
    return literals(run_settings(path, [checkpoint], given, model=model).pairs)
