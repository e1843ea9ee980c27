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

from dslc.ir.graph import Graph
from dslc.runtime.cpu.runner import bind, load_kernels
from dslc.runtime.executor import ArenaStep


class NumbaExecutor:
    """Compiles graphs to Numba kernels (dslc/codegen/numba_cpu.py) run in one planned arena."""

    name = "numba"

    def compile(self, graph: Graph) -> ArenaStep:
        return ArenaStep(graph, load_kernels, bind)
