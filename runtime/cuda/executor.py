"""The CUDA executor: the `Executor` interface of dslc/runtime/executor.py on the GPU.

    step = GpuExecutor().compile(train_step_graph)     # DeviceError without CuPy or a GPU
    out = step(feeds, params, rng)     # {"loss": ..., "accuracy": ...} as host arrays

As the Numba executor (dslc/runtime/cpu/executor.py): a step is bound lazily per batch
size, and after a step `params` holds the arena's own arrays for every updated parameter
and state, here CuPy arrays on the GPU, so the next step copies nothing. Whoever needs
host arrays (a checkpoint) copies them with dslc.runtime.host.to_host, only when it writes.
Results (loss, metrics, declared outputs) are copied to the host: they are small, and
the trainer logs them every step.
"""
from __future__ import annotations

from typing import Mapping, MutableMapping

import numpy as np

from dslc.ir.graph import Graph
from dslc.reference import bind_inputs
from dslc.runtime.cuda.runner import GpuGraph, compile_kernels, cupy
from dslc.runtime.host import to_host

UPDATES = ("param", "state")


class GpuStep:
    """One graph, bound on the GPU on first use for each batch size it is run at."""

    def __init__(self, graph: Graph, level: int = 2):
        from dslc.kernels import lower
        from dslc.passes.pipeline import optimize
        cupy()  # a DeviceError now, not at the first step
        self.graph = graph
        self.kernels = lower(optimize(graph, level)[0])
        self.compiled: dict[tuple, GpuGraph] = {}
        self._updates = [(o.name, o.kind) for o in graph.outputs if o.kind in UPDATES]
        self._results = [(o.kind, o.name) for o in graph.outputs if o.kind not in UPDATES]

    def __call__(self, feeds: Mapping[str, np.ndarray], params: MutableMapping[str, object],
                 rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        sizes = bind_inputs(self.graph, feeds)
        key = tuple(sorted(sizes.items()))
        gg = self.compiled.get(key)
        if gg is None:
            gg = self.compiled[key] = compile_kernels(self.kernels, sizes or {"N": 1})
        gg.load_params(params)  # copies only arrays that are not already the arena's
        out = gg.run(feeds, rng=rng)
        for name, kind in self._updates:
            params[name] = out[kind, name]
        return {name: to_host(out[kind, name]) for kind, name in self._results}


class GpuExecutor:
    """Compiles graphs to CUDA kernels (dslc/codegen/cuda_gpu.py) run in one arena on the GPU."""

    name = "cuda"

    def compile(self, graph: Graph) -> GpuStep:
        return GpuStep(graph)
