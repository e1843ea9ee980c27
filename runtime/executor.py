"""Executors: compile a graph once, then run it step after step.

An executor turns a graph into a `Step`, a plain function of the arrays a step reads:

    step = executor_for("cpu").compile(train_step_graph)
    out = step(feeds, params, rng)     # {"loss": ..., "accuracy": ...}
    params["fc1.linear.weight"]        # the updated weights

`params` holds every `param` node's array (weights, optimizer state, running
statistics). A step replaces (or overwrites in place) the entries the graph's
`param` and `state` outputs name, and returns its other outputs (loss, metrics,
declared outputs) by name. Random nodes (dropout masks) draw from `rng`, so the
caller decides where randomness comes from and can checkpoint its state.

The graph is optimised first (dslc.passes.pipeline at -O2: constant folding, common
subexpressions, dead code, fusion), which changes no result. Two executors implement
these two calls: the CPU default, Numba-compiled kernels in one planned arena
(dslc/runtime/cpu/executor.py: after a step `params` holds live arena views, so copy
what you keep), and the NumPy reference interpreter, slow and obviously right, which
`--device reference` (executor_for("reference")) selects to check the compiled one.
"""
from __future__ import annotations

from typing import Mapping, MutableMapping, Protocol

import numpy as np

from dslc import reference
from dslc.ir.graph import Graph
from dslc.passes.pipeline import optimize
from dslc.runtime.errors import DeviceError

UPDATES = ("param", "state")  # output kinds a step writes back into `params`


class Step(Protocol):
    graph: Graph

    def __call__(self, feeds: Mapping[str, np.ndarray], params: MutableMapping[str, np.ndarray],
                 rng: np.random.Generator | None = None) -> dict[str, np.ndarray]: ...


class Executor(Protocol):
    name: str

    def compile(self, graph: Graph) -> Step: ...


class ReferenceStep:
    """One compiled graph run by the NumPy reference interpreter (dslc.reference)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self._updates = [(o.name, o.value) for o in graph.outputs if o.kind in UPDATES]
        self._results = [(o.name, o.value) for o in graph.outputs if o.kind not in UPDATES]

    def __call__(self, feeds, params, rng=None):
        values = reference.evaluate(self.graph, feeds, params, rng)
        # Every new value is computed before any is written: a step never reads a half-updated dict.
        for name, value in self._updates:
            params[name] = values[value]
        return {name: values[value] for name, value in self._results}


class ReferenceExecutor:
    """Runs graphs with the NumPy oracle: slow, obviously right, available everywhere."""

    name = "reference"

    def compile(self, graph: Graph) -> ReferenceStep:
        return ReferenceStep(optimize(graph)[0])


def executor_for(device: str = "cpu") -> Executor:
    """The executor for a recipe's or the command line's device: cpu, gpu, auto or reference.

    auto means the GPU when one can be used, else the CPU (the Numba executor); asking
    for gpu explicitly without one is a DeviceError rather than a silent fall-back.
    reference is the NumPy interpreter on the CPU, for checking the compiled kernels.
    """
    if device == "reference":
        return ReferenceExecutor()
    if device in ("cpu", "auto"):
        from dslc.runtime.cpu.executor import NumbaExecutor  # imports Numba: only when training
        return NumbaExecutor()
    if device != "gpu":
        raise DeviceError(f"unknown device '{device}'; devices: cpu, gpu, auto, reference")
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # ImportError, or CuPy present without a driver
        count, why = 0, f" ({type(e).__name__}: {e})"
    else:
        why = ""
    if not count:
        raise DeviceError(f"device gpu: no usable CUDA GPU{why}; install cupy-cuda12x on a machine with an "
                          "NVIDIA GPU, or train on the cpu")
    raise DeviceError(f"device gpu: {count} GPU(s) found, but dslc has no GPU executor yet; train on the cpu")
