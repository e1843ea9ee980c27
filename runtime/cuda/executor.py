"""The CUDA executor: the `Executor` interface of dslc/runtime/executor.py on the GPU.

    step = GpuExecutor().compile(train_step_graph)     # DeviceError without CuPy or a GPU
    out = step(feeds, params, rng)     # {"loss": ..., "accuracy": ...} as host arrays

Both executors' steps are dslc.runtime.executor.ArenaStep: a step is bound lazily per
batch size, and after a step `params` holds the arena's own arrays for every updated parameter
and state, here CuPy arrays on the GPU, so the next step copies nothing. Whoever needs
host arrays (a checkpoint) copies them with dslc.runtime.host.to_host, only when it writes.
Results (loss, metrics, declared outputs) are copied to the host: they are small, and
the trainer logs them every step.
"""
from __future__ import annotations

from dslc.ir.graph import Graph
from dslc.runtime.cuda.runner import bind, cupy, load_kernels
from dslc.runtime.executor import ArenaStep


class GpuExecutor:
    """Compiles graphs to CUDA kernels (dslc/codegen/cuda_gpu.py) run in one arena on the GPU."""

    name = "cuda"

    def compile(self, graph: Graph) -> ArenaStep:
        cupy()  # a DeviceError now, not at the first step
        return ArenaStep(graph, load_kernels, bind)
