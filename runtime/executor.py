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
subexpressions, dead code, fusion), which changes no result. Three executors implement
these two calls: the CPU default, Numba-compiled kernels in one planned arena
(dslc/runtime/cpu/executor.py: after a step `params` holds live arena views, so copy
what you keep); the GPU one, CUDA kernels run through CuPy (dslc/runtime/cuda/executor.py:
`params` then holds CuPy arrays, which dslc.runtime.host.to_host copies to the host); and
the NumPy reference interpreter, slow and obviously right, which `--device reference`
(executor_for("reference")) selects to check the compiled ones.
"""
from __future__ import annotations

import time
from typing import Mapping, MutableMapping, Protocol

import numpy as np

from dslc import reference
from dslc.ir.graph import Graph
from dslc.passes.pipeline import optimize
from dslc.runtime.errors import DeviceError
from dslc.runtime.host import to_host

UPDATES = ("param", "state")  # output kinds a step writes back into `params`
BOUND = 4  # arenas an ArenaStep keeps, one per batch size, the most recently used


class Step(Protocol):
    graph: Graph
    compile_seconds: float

    def prepare(self, quiet: bool = False) -> object: ...

    def __call__(self, feeds: Mapping[str, np.ndarray], params: MutableMapping[str, np.ndarray],
                 rng: np.random.Generator | None = None) -> dict[str, np.ndarray]: ...

    def again(self, feeds: Mapping[str, np.ndarray], params: MutableMapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Executor(Protocol):
    name: str

    def compile(self, graph: Graph) -> Step: ...


class ReferenceStep:
    """One compiled graph run by the NumPy reference interpreter (dslc.reference)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.compile_seconds = 0.0
        self._updates = [(o.name, o.value) for o in graph.outputs if o.kind in UPDATES]
        self._results = [(o.name, o.value) for o in graph.outputs if o.kind not in UPDATES]
        self.rng = np.random.default_rng(0)  # dropout masks when the caller gives no generator, as the runners'

    def prepare(self, quiet: bool = False) -> None:
        """Nothing to compile: the references are NumPy."""

    def again(self, feeds, params):
        """A call like the last (ArenaStep.again): the reference has nothing to skip."""
        return self(feeds, params)

    def __call__(self, feeds, params, rng=None):
        values = reference.evaluate(self.graph, feeds, params, rng or self.rng)
        # Every new value is computed before any is written: a step never reads a half-updated dict.
        for name, value in self._updates:
            params[name] = values[value]
        return {name: values[value] for name, value in self._results}


class ArenaStep:
    """One graph run by a compiled backend (Numba on the CPU, CUDA on the GPU), bound on first
    use for each batch size it is run at (the last batch of an epoch is often smaller: the
    kernels are the same, only the arena is planned again).

    `load(kernels)` is the backend's compiler: it generates the module and compiles its
    kernels (once; `prepare()` does it before the first step, and `compile_seconds` is what it
    took); `bind(loaded, sizes)` plans an arena and binds the loaded module to it. After a
    step `params` holds the arena's own arrays for every updated parameter and state, so the
    next step copies nothing; results (loss, metrics, outputs) come back as host arrays
    (`to_host`: the arena's views themselves on the CPU).

    The BOUND arenas used last are kept, one per batch size, and the oldest is dropped for
    a new one: a loop over batches of many sizes (the compiled API's callers) kept them all,
    2.1 GB for small_cnn's saliency gradient at sizes 1 to 120. Training uses two sizes (the
    full batch and the last). A dropped arena's views in `params` keep their memory until
    the caller lets them go, and the next bind for that size loads from them.
    """

    def __init__(self, graph: Graph, load, bind, level: int = 2):
        from dslc.kernels import lower
        self.graph = graph
        self.kernels = lower(optimize(graph, level)[0])
        self.load, self.bind = load, bind
        self.loaded = None
        self.compile_seconds = 0.0
        self.compiled: dict[tuple, object] = {}
        self._updates = [(o.name, o.kind) for o in graph.outputs if o.kind in UPDATES]
        # A result that is a parameter itself (forward(outputs=["fc2.weight"])) is the caller's
        # array: a parameter the runner lends its kernels is read where the caller keeps it, and
        # its arena view holds nothing (such a result came back as zeros).
        kinds = {b.name: b.role for b in self.kernels.buffers}
        self._results = [(o.kind, o.name, o.value if kinds.get(o.value) in UPDATES else None)
                         for o in self.kernels.outputs if o.kind not in UPDATES]
        self._checked: tuple = ((), {}, ())  # the last feeds' (names, shapes, kinds of dtype), sizes, their key

    def _sizes(self, feeds) -> tuple[dict[str, int], tuple]:
        """reference.bind_inputs of the feeds (their check against the inputs' types, and the
        symbols' sizes) and the sizes as a key of `compiled`, answered from the last call's
        when the feeds have the same names, shapes and kinds of dtype: 11 of the 0.39 ms of a
        saliency gradient at batch 1."""
        seen = tuple((name, v.shape, v.dtype.kind) if isinstance(v, np.ndarray) else
                     (name, np.shape(v), np.asarray(v).dtype.kind) for name, v in feeds.items())
        if seen != self._checked[0]:
            sizes = reference.bind_inputs(self.graph, feeds)
            self._checked = (seen, sizes, tuple(sorted(sizes.items())))
        return self._checked[1], self._checked[2]

    def prepare(self, quiet: bool = False):
        """Compile (or load from the caches) everything the step runs, before its first call;
        progress on stderr while kernels compile, unless `quiet`."""
        if self.loaded is None:
            start = time.perf_counter()
            self.loaded = self.load(self.kernels, quiet=quiet)
            self.compile_seconds = time.perf_counter() - start
        return self.loaded

    def __call__(self, feeds, params, rng=None):
        sizes, key = self._sizes(feeds)
        bound = self.compiled.pop(key, None)
        if bound is None:
            while len(self.compiled) >= BOUND:  # the least recently used first (the dict's order)
                del self.compiled[next(iter(self.compiled))]
            bound = self.bind(self.prepare(), sizes or {"N": 1})
        self.compiled[key] = bound  # (again) the most recently used
        return self._run(bound, feeds, params, rng)

    def again(self, feeds, params):
        """A call on feeds of the names, shapes and kinds of dtype of the last call's, with no
        generator: the last call's arena, found without _sizes and the bound arenas' order
        (the compiled API's grad called again alike: Compiled.grad)."""
        return self._run(self.compiled[next(reversed(self.compiled))], feeds, params, None)

    def _run(self, bound, feeds, params, rng):
        bound.load_params(params)  # copies only arrays that are not already the arena's
        out = bound.run(feeds, rng=rng)
        for name, kind in self._updates:
            params[name] = out[kind, name]
        return {name: to_host(out[kind, name] if param is None else params[param])
                for kind, name, param in self._results}


def arena_roles(kg, views, memory) -> tuple[list, list, dict, dict]:
    """What a kernel graph bound to an arena (CPU or GPU runner) reads and writes around each
    run, as views of the arena: (inputs [(name, view)], writebacks [(value, target)],
    outputs {(kind, name): view}, the parameters and state {name: type}, in graph order).
    An update's output is its parameter's own buffer, which holds the new value after the
    step (written in place, or copied back): callers keep one array per parameter."""
    inputs = [(b.name, views[b.name]) for b in kg.buffers if b.role == "input"]
    writebacks = [(views[v], views[t]) for v, t in memory.writebacks]
    outputs = {(o.kind, o.name): views[o.name if o.kind in UPDATES else o.value] for o in kg.outputs}
    return inputs, writebacks, outputs, {b.name: b.type for b in kg.buffers if b.role in UPDATES}


class ReferenceExecutor:
    """Runs graphs with the NumPy oracle: slow, obviously right, available everywhere."""

    name = "reference"

    def compile(self, graph: Graph) -> ReferenceStep:
        return ReferenceStep(optimize(graph)[0])


def executor_for(device: str = "cpu") -> Executor:
    """The executor for a recipe's or the command line's device: cpu, gpu, auto or reference.

    gpu is the CUDA executor (dslc/runtime/cuda/executor.py: CuPy, kernels generated by
    dslc/codegen/cuda_gpu.py); asking for it without CuPy or a GPU is a DeviceError saying
    why, never a silent fall-back. auto is the CPU (the Numba executor) until the CUDA path
    as it stands has passed `benchmarks/gpu_check.sh` on a GPU: it did on an NVIDIA H200 at
    commit 133d526, but the generator has changed since (sizes became kernel arguments) and
    no GPU was at hand to run it again. reference is the NumPy interpreter, for checking the
    compiled kernels.
    """
    if device == "reference":
        return ReferenceExecutor()
    if device not in ("cpu", "gpu", "auto"):
        raise DeviceError(f"unknown device '{device}'; devices: cpu, gpu, auto, reference")
    if device == "gpu":
        from dslc.runtime.cuda.runner import cupy  # CuPy itself only inside, when asked for
        cupy()  # DeviceError saying why, without CuPy or a GPU
        from dslc.runtime.cuda.executor import GpuExecutor
        return GpuExecutor()
    from dslc.runtime.cpu.executor import NumbaExecutor  # imports Numba: only when training
    return NumbaExecutor()
