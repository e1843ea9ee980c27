"""Run a generated module: one arena, allocated once, and the kernels in order.

    cg = compile_graph(build(model, "train_step"), batch=64)
    cg.load_params(model.init())                   # copied into the arena; prologue runs
    out = cg.run({"image": x, "label": y, "lr": 0.01, "step": 1.0})
    out["loss", "loss"]; cg.params()["fc.weight"]  # parameters are updated in place

Every buffer of the kernel graph is a view into one byte array at its planned offset
(dslc/kernels/memory_plan.py), the array starting on an ALIGN boundary (aligned_zeros);
the views, the conv workspace and the argument tuple of the module's `step` are made
once, so a steady-state step allocates nothing: it copies the feeds in, fills the
dropout masks in their buffers (one seed per mask from the generator, the elements by a
counter-based generator on every thread: dropout_masks.py), runs `step` (its calls bound
to the arena after the first run: bound_calls.py), and copies
the updates the plan could not do in place back. `run` returns the same dict every time,
holding views of the arena: they are overwritten by the next run (copy what you keep).

Parameters and optimizer state live in the arena between steps; `load_params` puts
them there (and runs the prologue kernels, which depend only on them, unless what they
read is byte for byte what they read last time) and `params()` copies them out. A parameter that no kernel updates and no buffer views (every one in
the compiled API's forward and grad graphs) is read where the caller keeps it instead,
its kernels' argument rebound to the caller's array: a saliency map of small_cnn copied
its 1.6 MB of weights into the arena at every call, 0.17 of 3.6 ms at batch 32.

Every run uses Numba's threads, at any size: each kernel decides whether to split its
work (gemm.py's MIN_SPLIT; a convolution of fewer images than threads splits its output
channels, taps.shares), and a worker that has just finished a kernel spins a little
before it sleeps (GOMP_SPINCOUNT, runtime/cpu/__init__.py), so the next kernel of a step
finds it awake. Steps under 24 MFLOP used to run on one thread (each parallel loop woke
a sleeping worker for more than it saved), and setting the threads to one and back cost
3 us a run: small_cnn's saliency gradient at batch 1 took 248 us so, and 198-224 on two
threads once its convolutions and fully connected layers split (the 2-core EPYC). The
results do not depend on the threads: the kernels split their work by the workspace's
rows or into whole blocks of output channels, and a GEMM's bands are computed alike.
"""
from __future__ import annotations

import atexit
import math
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Mapping

import dslc.runtime.cpu  # noqa: F401  (sets OMP_WAIT_POLICY before Numba starts its threads)

import numpy as np

from dslc import reference
from dslc.codegen import cache, externs, shared
from dslc.collective import current
from dslc.codegen.emit import host_of
from dslc.codegen.numba_cpu import Generator, generate_with
from dslc.debug import debug_level
from dslc.ir.graph import Graph
from dslc.ir.types import NUMPY_DTYPE
from dslc.reading import human_bytes
from dslc.kernels import lower
from dslc.kernels.graph import KernelGraph, bindings, float_dtype
from dslc.ops import registry
from dslc.kernels.memory_plan import ALIGN, MemoryPlan, aligned, plan
from dslc.kernels.geometry import default_parts
from dslc.runtime.cpu.bound_calls import bind as bind_calls, rebind as rebind_calls, run as run_calls
from dslc.runtime.cpu.build import Report, build
from dslc.runtime.cpu.collective import COLLECTIVES, check_buckets
from dslc.runtime.cpu.dropout_masks import fill_mask
from dslc.runtime.cpu.philox import draw_seed
from dslc.runtime.cpu.profile import Profile
from dslc.runtime.executor import arena_roles



class CompiledGraph:
    """A kernel graph bound to a memory plan and a generated module (see the module docstring)."""

    def __init__(self, kg: KernelGraph, memory: MemoryPlan, gen: Generator, module, path):
        self.kg, self.plan, self.module, self.path = kg, memory, module, path
        self.kernels = gen.kernels
        self.arena = aligned_zeros(memory.arena_bytes, np.uint8)
        self.views = {b.name: self._view(b) for b in kg.buffers}
        self.workspace = aligned_zeros((default_parts(), workspace_slot(kg, self.kernels, memory.batch)),
                                       float_dtype(kg))
        # float64 slots per thread for the per-channel values of rows-layout sweeps
        self.scratch = aligned_zeros((default_parts(), gen.scratch_slots), np.float64)
        # each Winograd pass's table of transformed weights (winograd.transform_weights)
        self.tables = tuple(aligned_zeros(size, NUMPY_DTYPE[kg.buffer(w).dtype]) for w, size, _ in gen.tables.values())
        self._args = tuple(_shaped(self.views[b], view) for b, view in module.ARGS) + self.tables + (
            self.workspace, self.scratch, self._fallback)
        self._inputs, self._writebacks, self._outputs, self.param_types = arena_roles(kg, self.views, memory)
        self._arg_at: dict[str, list[tuple[int, str]]] = {}  # buffer -> every (argument, view) of it
        for i, (b, view) in enumerate(module.ARGS):
            self._arg_at.setdefault(b, []).append((i, view))
        self._lendable = _lendable(kg, self.param_types, self._arg_at)
        self._lent: dict[str, np.ndarray] = {}  # parameter -> the caller's array its kernels read
        self._randoms = [(b.name, self.views[b.name], self.views[b.name].reshape(-1), dict(b.attrs))
                         for b in kg.buffers if b.role == "random"]
        for b in kg.buffers:
            if b.role == "const":
                self.views[b.name][...] = dict(b.attrs)["value"]
        self.rng = np.random.default_rng(0)
        self.fallbacks = tuple(module.FALLBACK)
        self._step = module.step
        self._calls: list | None = None  # the driver's calls bound to _args (bound_calls), after a first run
        if debug_level() >= 2:  # time every kernel; the table is printed when the process exits
            collectives = any(k.kind == "extern" and k.op in COLLECTIVES for k in kg.kernels)
            self._step = Profile(module.step, current() if collectives else None)
            atexit.register(self._step.report, f"of {kg.name} ({kg.stage}, {dict(memory.batch)})")
        self._prologue_done = False
        reads = {i for k in kg.kernels if k.prologue for i in k.inputs} | {w for w, _, pro in gen.tables.values() if pro}
        self._names = tuple(self.param_types)
        self._read_at = [i for i, name in enumerate(self._names) if name in reads]  # the prologue's, in _names
        self._read_place = {self._names[i]: k for k, i in enumerate(self._read_at)}  # name -> its place there
        self._read_bytes: list[bytes] = []  # in _read_at's order, what the prologue last read of them
        self._kept: tuple | None = None  # the arrays of the last load, when each was lent or the arena's
        self._layouts: list = []  # and their (shape, strides)

    def _view(self, b) -> np.ndarray:
        start = self.plan.offsets[b.name]
        raw = self.arena[start:start + b.nbytes(self.plan.batch)]
        return raw.view(NUMPY_DTYPE[b.dtype]).reshape(b.type.bind(self.plan.batch))

    def load_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Copy parameters and state into the arena, or lend the kernels the caller's array
        where that is safe (the module docstring), then run the prologue kernels that
        depend on them, unless every parameter they read holds the bytes it held when they
        last ran (_changed). A name missing from `params`, or an array of another shape
        or kind of dtype, is the reference's ValueError naming it (reference.given).

        When every parameter is the array the last load lent or found in the arena, of the
        same shape and layout, only what the prologue reads is compared (the compiled API's
        calls with the same parameters): the loop over each took 7 us of small_cnn's saliency
        gradient at batch 1."""
        given = tuple(map(params.get, self._names))
        if self._kept is not None and all(map(operator.is_, given, self._kept)) \
                and list(map(_LAYOUT, given)) == self._layouts:
            if [given[i].tobytes() for i in self._read_at] != self._read_bytes:
                self._prologue_done = False
        else:
            self._load(params, given)
        if not self._prologue_done:
            self.module.prologue(*self._args)
            self._read_bytes = [self._lent.get(self._names[i], self.views[self._names[i]]).tobytes()
                                for i in self._read_at]  # what it read, for the next load
            self._prologue_done = True

    def _load(self, params: Mapping[str, np.ndarray], given: tuple) -> None:
        """load_params' loop over each parameter; the arrays are kept for the next load's
        shortcut when each was lent or is the arena's own."""
        args, self._kept, copied = None, None, False
        try:
            for name, value in zip(self._names, given):
                arena = self.views[name]
                if value is arena:
                    continue
                if value is None:  # missing, or given as None: raises the reference's error
                    reference.given("param", name, self.param_types[name], params, "params", arena.shape)
                if self._lent.get(name) is value and value.shape == arena.shape and value.strides == arena.strides:
                    self._changed(name, value)  # lent already and still of its shape and layout (its dtype and
                    continue  # memory are fixed), but perhaps changed in place
                lend = name in self._lendable and _fits(value, arena)
                if lend or name in self._lent:
                    args = list(self._args) if args is None else args
                    for at, view in self._arg_at[name]:  # each view of it the kernels take
                        args[at] = _shaped(value if lend else self.views[name], view)
                    if lend:
                        self._lent[name] = value
                        self._changed(name, value)
                        continue
                    del self._lent[name]
                copied = True
                value = reference.given("param", name, self.param_types[name], params, "params", arena.shape)
                if name not in self._read_place or self._changed(name, value):
                    np.copyto(arena, value, casting="same_kind")
        finally:  # the kernels' arguments follow _lent, whatever stopped the loop
            if args is not None:
                self._args = tuple(args)
                if self._calls is not None:  # the entry points kept where the new arrays fit them
                    self._calls = rebind_calls(self.module.step, self._args, self._calls)
        if not copied:
            self._kept, self._layouts = given, list(map(_LAYOUT, given))

    def _changed(self, name: str, given) -> bool:
        """Whether `given` changes what the prologue reads of parameter `name`: true unless the
        prologue does not read it, or it has the arena's dtype and shape (as what the prologue
        read has) and holds the bytes the prologue last read of it (_read_bytes).
        When true, the prologue is due (at once: a later parameter's error leaves it to the
        next load). The compiled API passes the same parameters call after call: small_cnn's
        saliency gradient at batch 1 refolded its batchnorms into the convolutions' weights
        every time, 9 of its 180 us (31 of 270 where the VM made writing what both cores had
        read slow), where comparing the 19k values they fold takes 3 (bytes: memcmp)."""
        if name not in self._read_place:
            return False
        arena = self.views[name]
        same = (bool(self._read_bytes) and isinstance(given, np.ndarray) and given.dtype == arena.dtype
                and given.shape == arena.shape and given.tobytes() == self._read_bytes[self._read_place[name]])
        if not same:
            self._prologue_done = False
        return not same

    def params(self) -> dict[str, np.ndarray]:
        """Copies of the parameters and optimizer state as they are now."""
        return {name: self._lent.get(name, self.views[name]).copy() for name in self.param_types}

    def run(self, feeds: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray] | None = None,
            randoms: Mapping[str, np.ndarray] | None = None,
            rng: np.random.Generator | None = None) -> dict[tuple[str, str], np.ndarray]:
        """One run: outputs keyed (kind, name) as dslc.reference.run_outputs gives them (views
        of the arena, valid until the next run). `params`, when given, is loaded first;
        dropout masks come from `randoms` by name, else from one seed per mask drawn from
        `rng` (or the graph's own generator), dropout_masks.fill_mask."""
        if params is not None:
            self.load_params(params)
        for name, view in self._inputs:
            np.copyto(view, feeds[name], casting="same_kind")
        for name, view, flat, attrs in self._randoms:
            if randoms is not None and name in randoms:
                np.copyto(view, randoms[name], casting="same_kind")
            else:
                fill_mask(flat, draw_seed(rng or self.rng), attrs["p"], attrs["scale"])
        if self._calls is not None:
            run_calls(self._calls)
        else:  # through the driver, which compiles (or loads) what it calls; then bound to its entries
            self._step(*self._args)
            if self._step is self.module.step:  # not profiled (DSLC_DEBUG>=2 times each kernel)
                self._calls = bind_calls(self.module.step, self._args)
        for value, target in self._writebacks:
            np.copyto(target, value)
        return self._outputs

    def _fallback(self, position: int) -> None:
        """Kernel `position` by the NumPy references, node by node (allocates). A parameter lent
        to the kernels is read from the caller's array, as they read it: its arena view holds
        nothing (a dropconnect layer at inference, run so, computed x @ 0 + 0)."""
        for node in self.kernels[position].nodes:
            ins = (self._lent.get(i, self.views[i]) for i in node.inputs)
            value = registry.get(node.op).reference(*ins, **node.attr_dict)
            np.copyto(self.views[node.name], value, casting="same_kind")


_LAYOUT = operator.attrgetter("shape", "strides")


def _lendable(kg: KernelGraph, names, arg_at) -> frozenset:
    """The parameters a run may read from the caller's arrays: passed to the kernels (in
    the module's ARGS), never updated (no training step's new value replaces them) and
    viewed by no other buffer (a view would still read the arena)."""
    kept = {b.updates for b in kg.buffers if b.updates}
    for b in kg.buffers:
        while b.alias is not None:
            kept.add(b.alias)
            b = kg.buffer(b.alias)
    return frozenset(name for name in names if name in arg_at and name not in kept)


def _fits(given, view: np.ndarray) -> bool:
    """Whether the caller's array can stand for the arena's view: a C-contiguous, aligned
    NumPy array of the same dtype and shape."""
    return (isinstance(given, np.ndarray) and given.dtype == view.dtype and given.shape == view.shape
            and given.flags.c_contiguous and given.flags.aligned)


def _shaped(array: np.ndarray, view: str) -> np.ndarray:
    """A buffer's array as a kernel sees it (numba_cpu.VIEWS): itself, flat, [N, C, S] /
    [N, C] around axis 1, or [d0, rest]. Views of the arena: no copy."""
    if view == "flat":
        return array.reshape(-1)
    if view == "rows":
        return array.reshape(array.shape[0], -1)
    if view in ("ncs", "nc"):
        return array.reshape(array.shape[0], array.shape[1], *((-1,) if view == "ncs" else ()))
    return array


def aligned_zeros(shape, dtype) -> np.ndarray:
    """Zeros starting on an ALIGN-byte boundary; for a (threads, slot) shape, each thread's row too.

    The memory plan places buffers at multiples of ALIGN from the arena's start, but NumPy's
    large arrays start 16 bytes past a page (glibc's mmap'd blocks), so every buffer sat 16
    bytes off its cache lines: a 64-byte vector straddled two lines, and two threads' bands
    of one output shared the line at their border (small_cnn's fc at 4 rows, two threads
    adding into halves of its output, took twice as long so: few_rows.py). A slot is at
    least one element, rounded up to whole ALIGN blocks.
    """
    dtype = np.dtype(dtype)
    if isinstance(shape, tuple):
        shape = (shape[0], aligned(shape[1] * dtype.itemsize) // dtype.itemsize)
    nbytes = (math.prod(shape) if isinstance(shape, tuple) else shape) * dtype.itemsize
    if nbytes + ALIGN > sys.maxsize:  # NumPy would raise a ValueError ("Maximum allowed dimension exceeded")
        raise MemoryError(f"Unable to allocate {human_bytes(nbytes)}, more than one array can span on this machine")
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def workspace_slot(kg: KernelGraph, kernels, batch: Mapping[str, int]) -> int:
    """The largest workspace slot (per thread) any convolution (extern, or an epilogue's host)
    needs at `batch`."""
    shape = lambda name: kg.buffer(name).type.bind(dict(batch))
    need = 0
    for k in kernels:
        node = k.nodes[0]
        if k.kind == "extern":
            need = max(need, externs.workspace_slot(node, [shape(i) for i in node.inputs], shape(node.name)))
        elif k.kind == "fused" and k.op == "epilogue":
            host = host_of(node.attr("body"))
            if all(r.startswith("$") for r in host.inputs):
                ins = [shape(node.inputs[int(r[1:])]) for r in host.inputs]
                need = max(need, externs.workspace_slot(host, ins, shape(node.name)))
    return need


def compile_graph(graph: Graph, batch: int | Mapping[str, int], level: int = 2) -> CompiledGraph:
    """Optimise, lower, plan and generate `graph`, load (or build) its cached module, bind it."""
    from dslc.passes.pipeline import optimize
    kg = lower(optimize(graph, level)[0])
    return compile_kernels(kg, batch)


@dataclass(frozen=True)
class Loaded:
    """A kernel graph's generated module, loaded, its kernels compiled: ready to bind to arenas."""

    kg: KernelGraph
    gen: Generator
    module: ModuleType
    path: Path
    build: Report


def load_kernels(kg: KernelGraph, generated=None, quiet: bool = False) -> Loaded:
    """Generate the module of `kg` (or take `generated` = generate_with(kg)), load it with each
    kernel bound to its shared compiled copy, and compile the kernels missing from the caches
    (runtime/cpu/build.py; progress on stderr unless `quiet`): what a step needs before any
    arena exists."""
    check_buckets(kg)
    gen, source = generated or generate_with(kg)
    module, path = cache.load(kg, source)
    for name, unit in gen.units.items():  # each kernel runs as the shared copy of its text
        setattr(module, name, shared.load(shared.canonical(unit)))
    report = build(gen, f"{kg.name} {kg.stage}", quiet)
    if debug_level() >= 2:
        print(f"dslc: {kg.name} ({kg.stage}) -> {path}", file=sys.stderr)
    if debug_level() >= 4:
        print(source, file=sys.stderr)
    return Loaded(kg, gen, module, path, report)


def bind(loaded: Loaded, batch: int | Mapping[str, int]) -> CompiledGraph:
    """A loaded module bound to an arena planned for `batch`."""
    return CompiledGraph(loaded.kg, plan(loaded.kg, bindings(batch)), loaded.gen, loaded.module, loaded.path)


def compile_kernels(kg: KernelGraph, batch: int | Mapping[str, int], generated=None) -> CompiledGraph:
    """load_kernels, then bind."""
    return bind(load_kernels(kg, generated), batch)
