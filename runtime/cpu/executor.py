"""The Numba CPU executor: the `Executor` interface of dslc/runtime/executor.py on compiled kernels.

    step = NumbaExecutor().compile(train_step_graph)
    out = step(feeds, params, rng)     # {"loss": ..., "accuracy": ...}

A step compiles lazily per batch size (the last batch of an epoch is often smaller:
the generated module is the same, only the arena is planned again). After a step,
`params` holds the arena's own arrays for every updated parameter and state, so the
next step finds them already in place and copies nothing; the trainer must treat
them as live (they change with every step) and copy what it wants to keep.
"""
from __future__ import annotations

from typing import Mapping, MutableMapping

import numpy as np

from dslc.ir.graph import Graph
from dslc.reference import bind_inputs
from dslc.runtime.cpu.runner import CompiledGraph, compile_kernels

UPDATES = ("param", "state")


class NumbaStep:
    """One graph, compiled on first use for each batch size it is run at."""

    def __init__(self, graph: Graph, level: int = 2):
        from dslc.kernels import lower
        from dslc.passes.pipeline import optimize
        self.graph = graph
        self.kernels = lower(optimize(graph, level)[0])
        self.compiled: dict[tuple, CompiledGraph] = {}
        self._updates = [(o.name, o.kind) for o in graph.outputs if o.kind in UPDATES]
        self._results = [(o.kind, o.name) for o in graph.outputs if o.kind not in UPDATES]

    def __call__(self, feeds: Mapping[str, np.ndarray], params: MutableMapping[str, np.ndarray],
                 rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        sizes = bind_inputs(self.graph, feeds)
        key = tuple(sorted(sizes.items()))
        cg = self.compiled.get(key)
        if cg is None:
            cg = self.compiled[key] = compile_kernels(self.kernels, sizes or {"N": 1})
        cg.load_params(params)  # copies only arrays that are not already the arena's
        out = cg.run(feeds, rng=rng)
        for name, kind in self._updates:
            params[name] = out[kind, name]
        return {name: out[kind, name] for kind, name in self._results}


class NumbaExecutor:
    """Compiles graphs to Numba kernels (dslc/codegen/numba_cpu.py) run in one planned arena."""

    name = "numba"

    def compile(self, graph: Graph) -> NumbaStep:
        return NumbaStep(graph)
