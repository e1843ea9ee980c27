"""Run a generated CUDA module with CuPy: one arena on the GPU, the launches in order.

    gg = compile_graph(build(model, "train_step"), batch=64)    # DeviceError without CuPy or a GPU
    gg.load_params(model.init())                                # copied to the GPU; prologue runs
    out = gg.run({"image": x, "label": y, "lr": 0.01, "step": 1.0})
    float(out["loss", "loss"]); gg.params()["fc.weight"]        # host copies on request only

As dslc/runtime/cpu/runner.py, on the device: every buffer of the kernel graph is a view
into one device byte array at its planned offset (dslc/kernels/memory_plan.py); the
generated module (dslc/codegen/cuda_gpu.py) is compiled once by NVRTC through
`cupy.RawModule` (CuPy caches the binary on disk, keyed by the source); each launch is
bound to its views, grid and arguments when the graph is bound, so a step copies the
feeds in, fills the dropout masks, calls the bound launches and copies back the updates
the plan could not do in place. Parameters, optimizer state and the arena stay on the
GPU between steps; `run` returns CuPy views of the arena (valid until the next run), and
`params()` copies to the host only when asked (checkpoints).

Kernels the generator could not write (`fallback` launches) run on the host with the
NumPy references: their inputs are copied down and the result up. Only this module and
ops.py import CuPy, and only when called.
"""
from __future__ import annotations

import sys
from typing import Mapping

import numpy as np

from dslc import reference
from dslc.codegen.cuda_gpu import BLOCK, CudaModule, Launch, generate
from dslc.debug import debug_level
from dslc.ir.graph import Graph
from dslc.ir.types import NUMPY_DTYPE
from dslc.kernels import lower
from dslc.kernels.graph import KernelGraph, bindings, float_dtype
from dslc.ops import registry
from dslc.kernels.memory_plan import MemoryPlan, plan
from dslc.runtime.cpu.philox import draw_seed, mask
from dslc.runtime.cuda import ops
from dslc.runtime.errors import DeviceError
from dslc.runtime.executor import arena_roles
from dslc.runtime.host import host_block, to_host


def cupy():
    """The cupy module, or a DeviceError saying why the GPU cannot be used."""
    try:
        import cupy as cp
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # ImportError, or CuPy present without a driver or device
        raise DeviceError(f"device gpu: no usable CUDA GPU ({type(e).__name__}: {e}); install the `gpu` extra "
                          "(cupy-cuda12x) on a machine with an NVIDIA GPU, or use the cpu") from None
    if not count:
        raise DeviceError("device gpu: CuPy found no CUDA GPU; use the cpu")
    return cp


class GpuGraph:
    """A kernel graph bound to a memory plan and a compiled module on the GPU."""

    def __init__(self, kg: KernelGraph, memory: MemoryPlan, module: CudaModule):
        cp = self.cp = cupy()
        self.kg, self.plan, self.module = kg, memory, module
        self.arena = cp.zeros(memory.arena_bytes, cp.uint8)
        self.views = {b.name: self._view(b) for b in kg.buffers}
        self.raw = cp.RawModule(code=module.source)
        self.workspace = cp.zeros(max(1, self._workspace_elements()), float_dtype(kg))
        self.library = ops.Library(cp, self.raw, self.workspace)
        self._steps = [(module.kernels[launch.position].prologue, self._bind(launch)) for launch in module.launches
                       if launch.kind != "view"]
        self._inputs, self._writebacks, self._outputs, self.param_types = arena_roles(kg, self.views, memory)
        self._randoms = [(b.name, self.views[b.name], dict(b.attrs)) for b in kg.buffers if b.role == "random"]
        for b in kg.buffers:
            if b.role == "const":
                self._put(self.views[b.name], np.broadcast_to(dict(b.attrs)["value"], self.views[b.name].shape))
        self.fallbacks = module.fallbacks
        self.rng = cp.random.default_rng(0)
        self._prologue_done = False

    def _view(self, b):
        start = self.plan.offsets[b.name]
        raw = self.arena[start:start + b.nbytes(self.plan.batch)]
        return raw.view(NUMPY_DTYPE[b.dtype]).reshape(b.type.bind(self.plan.batch))

    def _workspace_elements(self) -> int:
        shape = lambda name: self.kg.buffer(name).type.bind(self.plan.batch)
        need = 0
        for launch, k in zip(self.module.launches, self.module.kernels):
            node, ins = _host(launch, k)
            if node is not None:
                need = max(need, ops.workspace_elements(node, [shape(i) for i in ins], shape(k.outputs[0])))
        return need

    def _bind(self, launch: Launch):
        """A no-argument function doing kernel `launch.position` on the arena."""
        k = self.module.kernels[launch.position]
        if launch.kind == "fallback":
            return lambda: self._fallback(k)
        steps = []
        node, ins = _host(launch, k)
        if node is not None:
            steps.append(self.library.bind(node, [self.views[i] for i in ins], self.views[k.outputs[0]]))
        if launch.function:
            fn = self.raw.get_function(launch.function)
            args = launch.arguments(self.views, np.int64)  # each buffer, then the dimensions read
            grid = launch.grid(self.views)
            steps.append(lambda: fn(grid, (BLOCK,), args))
        return steps[0] if len(steps) == 1 else lambda: [s() for s in steps]

    def _fallback(self, k) -> None:
        """Kernel k by the NumPy references, node by node, through host copies."""
        for node in k.nodes:
            ins = [to_host(self.views[i]) for i in node.inputs]
            value = registry.get(node.op).reference(*ins, **node.attr_dict)
            view = self.views[node.name]
            view.set(host_block(value, view.dtype, view.shape))

    def load_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Copy parameters and state to the GPU, then run the prologue kernels that depend on
        them. A name missing from `params`, or an array of another shape or kind of dtype,
        is the reference's ValueError naming it (reference.given), as on the CPU."""
        for name in self.param_types:
            view = self.views[name]
            if params.get(name) is not view:
                self._prologue_done = False  # (first: a later parameter's error leaves it to the next load)
                self._put(view, reference.given("param", name, self.param_types[name], params, "params", view.shape))
        if not self._prologue_done:
            for prologue, step in self._steps:
                if prologue:
                    step()
            self._prologue_done = True

    def params(self) -> dict[str, np.ndarray]:
        """Host copies of the parameters and optimizer state as they are now."""
        return {name: to_host(self.views[name]) for name in self.param_types}

    def _put(self, view, value) -> None:
        if isinstance(value, self.cp.ndarray):
            self.cp.copyto(view, value.reshape(view.shape).astype(view.dtype, copy=False))
        else:
            view.set(host_block(value, view.dtype, view.shape))

    def run(self, feeds: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray] | None = None,
            randoms: Mapping[str, np.ndarray] | None = None,
            rng: np.random.Generator | None = None) -> dict[tuple[str, str], object]:
        """One run: outputs keyed (kind, name) as dslc.reference.run_outputs gives them (CuPy
        views of the arena, valid until the next run). `params`, when given, is loaded
        first; dropout masks come from `randoms` by name, else from `rng` (a NumPy
        generator: one seed per mask, the mask computed on the host exactly as the CPU
        runner computes it, philox.mask, so a checkpointed generator state resumes
        the same masks), else from the graph's own generator on the device."""
        if params is not None:
            self.load_params(params)
        for name, view in self._inputs:
            self._put(view, feeds[name])
        for name, view, attrs in self._randoms:
            if randoms is not None and name in randoms:
                self._put(view, randoms[name])
            elif rng is not None:  # the CPU runner's mask, computed by its NumPy twin
                self._put(view, mask(view.shape, view.dtype, draw_seed(rng), attrs["p"], attrs["scale"]))
            else:
                u = self.rng.random(view.shape, dtype=view.dtype)
                self.cp.multiply(u < attrs["p"], attrs["scale"], out=view)
        for prologue, step in self._steps:
            if not prologue:
                step()
        for value, target in self._writebacks:
            self.cp.copyto(target, value)
        return self._outputs


def _host(launch: Launch, k):
    """(node, input buffers) of the library op a launch runs: an extern op, or an epilogue's
    host; (None, ()) for generated-only launches."""
    if launch.kind == "library":
        return k.nodes[0], k.nodes[0].inputs
    if launch.kind == "epilogue":
        body = k.nodes[0].attr("body")
        host = next(b for b in body if registry.epilogue_host(b.op))
        return host, tuple(k.inputs[int(r[1:])] for r in host.inputs)
    return None, ()


def compile_graph(graph: Graph, batch: int | Mapping[str, int], level: int = 2) -> GpuGraph:
    """Optimise, lower, plan and generate `graph`, and bind it on the GPU."""
    from dslc.passes.pipeline import optimize
    return compile_kernels(lower(optimize(graph, level)[0]), batch)


def load_kernels(kg: KernelGraph, quiet: bool = False) -> tuple[KernelGraph, CudaModule]:
    """The generated module of `kg` (CuPy compiles it when the first GpuGraph is made, and
    keeps the binary in its own cache, keyed by the source: the same at every size, so one
    compile serves every width). Nothing compiles here, so there is no progress to quiet."""
    module = generate(kg)
    if debug_level() >= 4:
        print(module.source, file=sys.stderr)
    return kg, module


def bind(loaded: tuple[KernelGraph, CudaModule], batch: int | Mapping[str, int]) -> GpuGraph:
    kg, module = loaded
    return GpuGraph(kg, plan(kg, bindings(batch)), module)


def compile_kernels(kg: KernelGraph, batch: int | Mapping[str, int]) -> GpuGraph:
    """load_kernels, then bind."""
    return bind(load_kernels(kg), batch)
