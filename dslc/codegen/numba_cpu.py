"""KernelGraph -> the source of a Python module whose kernels Numba compiles.

    gen, source = generate_with(lower(optimize(build(model, "train_step"))[0]))

The module holds one `@njit` function per generated kernel, named after its layer
(`k_stage1_conv_bn_relu_sweep`), each under a header naming the ops it fuses and the
`.net` lines they came from, and two drivers:

    step(<every argument>, <tables>, workspace, scratch, fallback)       the kernels in order
    prologue(<every argument>, <tables>, workspace, scratch, fallback)   kernels of never-updated parameters

The drivers' arguments are the module's `ARGS`: every buffer of the kernel graph, then
the views of buffers the kernels read (VIEWS: flat, [N, C, S], [N, C], [d0, rest]), which the runner
(dslc/runtime/cpu/runner.py) binds once to the memory plan's arena, then its `TABLES`, each
Winograd pass's transformed filters (Generator.library), which the runner allocates; nothing
in the module allocates. So a kernel is generic in its sizes: its text depends on the form of
its loops only, and `gen.units` holds each kernel's text (with the chain functions it
calls), which the runner compiles once per machine, content-addressed, for every model
that has it (dslc/codegen/cache.py). Extern kernels call the library in
dslc/runtime/cpu/ (externs.py), as does an epilogue's host before its tail; a kernel
this generator cannot write yet (an op with no scalar expression or library kernel) is a
`fallback(k)` call: the runner evaluates kernel k with the NumPy references, which
allocates, and `FALLBACK` lists them so tests can tell.

The text depends only on the kernel graph (never on the batch size, the memory plan or
the clock), so the same graph always gives byte-identical source: the cache key and
golden diffs rely on it.
"""
from __future__ import annotations

import ast

from dslc.codegen import externs, numba_loops, numba_sweep, shared
from dslc.codegen.cache import numba_version
from dslc.codegen.emit import Emitter, Lang, form
from dslc.codegen.scalar import CONSTANTS, CPU_IMPORT
from dslc.codegen.source import Source, kernel_header, where
from dslc.ir.types import NUMPY_DTYPE, concrete
from dslc.kernels.graph import Kernel, KernelGraph, float_dtype
from dslc.kernels.loop_forms import as_loop
from dslc.version import __version__

# How a kernel may see a buffer (the name suffix of its argument): as it is, flat (every
# element in order), as [N, C, S] / [N, C] around its channel axis 1, or as [d0, rest].
VIEWS = {"": "", "flat": "f", "ncs": "3", "nc": "2", "rows": "r"}


def _chain_head(text, params, outs: int, dtype: str):
    return f"def chain({', '.join(params)}):"


def _chain_results(values, dtype: str) -> list[str]:
    return [f"return {', '.join(values)}{',' if len(values) == 1 else ''}"]


# Python for Numba: locals are plain names (float32 operands meet float literals in
# float64, rounded once on store); loops are range/prange over the arrays' shapes (numba_loops.py).
PYTHON = Lang(target="cpu", c=False, let="{name} = {value}", store="{at} = {value}", add_to="{acc} += {value}",
              fmax="max", sqrt="math.sqrt", library=frozenset(externs.CALLS),
              chain_head=_chain_head, chain_results=_chain_results)

# What each generated form of kernel is written by (emit.form); library calls and
# fallbacks are lines of the drivers, not functions.
EMIT = {"expand": numba_loops.expand, "regulariser": numba_loops.regulariser, "pointwise": numba_loops.pointwise,
        "elementwise": numba_loops.elementwise,
        "epilogue": numba_loops.elementwise, "reduce": numba_loops.reduce, "update": numba_loops.update,
        "sweep": numba_sweep.sweep}


class Generator(Emitter):
    def __init__(self, kg: KernelGraph):
        super().__init__(kg, PYTHON)
        self.views: dict[tuple[str, str], str] = {(b.name, ""): self.arg(b.name) for b in kg.buffers}
        self.calls: dict[str, list] = {}  # kernel -> the driver's lines running it (str, or (function, args))
        self.units: dict[str, str] = {}  # kernel function -> its text, with the chain functions it calls
        self.fallback: list[int] = []
        self.kernels: list[Kernel] = list(kg.kernels)
        self.scratch_slots = 0  # float64 slots per thread that rows-layout sweeps use (numba_sweep.py)
        # Winograd passes' tables of transformed weights: argument -> (weights buffer, elements,
        # filled in the prologue), and the prologue's lines filling them (library)
        self.tables: dict[str, tuple[str, int, bool]] = {}
        self.prologue_lines: list[str] = []
        made = {o: k for k in kg.kernels for o in k.outputs}
        updated = {b.updates for b in kg.buffers if b.updates}
        self.static = frozenset(b.name for b in kg.buffers if (made[b.name].prologue if b.name in made else
                                                               b.role in ("param", "const") and b.name not in updated))

    def view(self, buffer: str, kind: str = "") -> str:
        """The driver argument holding `buffer` seen as `kind` (VIEWS), named on first use."""
        if (buffer, kind) not in self.views:
            self.views[buffer, kind] = self.names.get(f"{buffer} {VIEWS[kind]}")
        return self.views[buffer, kind]

    def bound(self, buffer: str) -> tuple[int, ...]:
        """A shape with the batch bound to 1: only its static (spatial) sizes may be used."""
        return tuple(concrete(d, {"N": 1}) for d in self.kg.buffer(buffer).shape)

    def call(self, kernel: Kernel, line, comment: str | None = None) -> None:
        """A line of the driver for `kernel` (after a comment, if given): a library call's text,
        or (function, arguments) of a generated kernel's call, wrapped where the driver writes it."""
        self.calls.setdefault(kernel.name, []).extend(([f"# {comment}"] if comment else []) + [line])

    def library(self, node, buffers: list[str], relu: bool = False) -> list[str]:
        """The driver's lines calling the library kernel of `node` (an extern, or an epilogue's
        host) on `buffers` (its inputs, then its output): externs.call's, with the table of a
        Winograd pass (externs.weight_table), which winograd.transform_weights fills first: in
        the prologue where the weights never change (a model's parameters in the compiled API's
        forward and grad), else in the step, once per run rather than once per thread."""
        args = [self.arg(b) for b in buffers]
        shapes = [self.bound(b) for b in buffers[:-1]]
        table = externs.weight_table(node, shapes)
        lines: list[str] = []
        name: str | None = None
        if table is not None:
            name = self.names.get(f"{node.name} winograd")
            self.tables[name] = (buffers[1], table[1], buffers[1] in self.static)
            fill = f"winograd.transform_weights({args[1]}, {name}, {table[0]})"
            (self.prologue_lines if buffers[1] in self.static else lines).append(fill)
        return lines + externs.call(node, args, shapes, relu, name)

    def decorator(self, kernel: Kernel, parallel: bool, accumulate: bool = False) -> str:
        """fastmath only for float32 graphs, and only contraction (and reassociation of
        float64 accumulators): within float32 rounding. error_model="numpy": x / 0 is inf
        or nan as in the references, never an exception."""
        opts = ["cache=True", 'error_model="numpy"'] + (["parallel=True"] if parallel else [])
        if self.kg.buffer(kernel.outputs[0]).dtype == "f32":
            opts.append('fastmath={"reassoc", "contract"}' if accumulate else 'fastmath={"contract"}')
        return f"@njit({', '.join(opts)})"

    def signature(self, src: Source, kernel: Kernel, params: list[str], parallel: bool,
                  accumulate: bool = False) -> str:
        """Write the decorator and record the driver's call; return the `def` line."""
        name = self.kernel_name(kernel)
        src.line(self.decorator(kernel, parallel, accumulate))
        self.call(kernel, (name, params))
        return src.wrapped(f"def {name}(", params, "):")


def generate(kg: KernelGraph) -> str:
    """The module source for `kg` (see the module docstring)."""
    return generate_with(kg)[1]


def generate_with(kg: KernelGraph) -> tuple[Generator, str]:
    """The generator's state (kernels as emitted, fallbacks, each kernel's text) and the module source."""
    gen = Generator(kg)
    kernels = Source()
    gen.kernels = [as_loop(k, kg) for k in kg.kernels]
    for pos, k in enumerate(gen.kernels):
        if k.kind == "view":
            continue
        function = Source()
        if not _emit(gen, function, k):
            gen.fallback.append(pos)
        elif function.lines:  # library calls have no function of their own
            gen.units.setdefault(gen.kernel_name(k), function.text())  # an update's are its segments
            kernels.blank()
            kernels.blank()
            kernel_header(kernels, pos, k)
            kernels.lines.extend(function.lines)
    src = Source()
    _module_header(src, kg, gen)
    src.lines.extend(kernels.lines)
    for driver, prologue in (("prologue", True), ("step", False)):
        src.blank()
        src.blank()
        _driver(src, gen, driver, prologue)
    return gen, src.text()


def _emit(gen: Generator, src: Source, k: Kernel) -> bool:
    """Write kernel k's function and its driver lines; False when it must fall back to the references."""
    how = form(gen, k)
    if how == "fallback":
        return False
    if how == "library":
        node = k.nodes[0]  # its own inputs, in order: a kernel's are listed once each (x @ x reads x twice)
        lines = gen.library(node, list(node.inputs + (node.name,)))
        gen.call(k, lines[0], comment=f"{k.name}: {node.op}, {where(node.span)}")
        for line in lines[1:]:
            gen.call(k, line)
    else:
        EMIT[how](gen, src, k)
    return True


def _module_header(src: Source, kg: KernelGraph, gen: Generator) -> None:
    src.comment(f"{kg.name} ({kg.stage}): generated by dslc {__version__} for Numba {numba_version()} "
                "(dslc/codegen/numba_cpu.py).")
    src.comment("Do not edit: `dslc compile` regenerates it, byte for byte, from the model.")
    generated, library = counts(gen)
    src.comment(f"{len(kg.kernels)} kernels: {generated} generated, {library} library calls, "
                f"{len(gen.fallback)} NumPy fallbacks. The runner runs each generated")
    src.comment("kernel's copy in the kernel cache, compiled once for every model with the same kernel text.")
    src.line("import math")
    src.blank()
    src.line("import numpy as np")
    src.line("from numba import njit, prange")
    src.blank()
    src.line(externs.IMPORTS)
    src.line(CPU_IMPORT)
    src.blank()
    for name, value in CONSTANTS.items():
        src.line(f"{name} = {value}")
    src.comment("The drivers' arguments, in order: (buffer, view) pairs the runner binds to the arena once.")
    args = [repr(key) for key in gen.views]
    src.line(src.wrapped("ARGS = (", args, ",)" if len(args) == 1 else ")"))
    src.comment("Winograd passes' tables of transformed weights, (argument, elements), after ARGS; each")
    src.comment("filled by winograd.transform_weights in the prologue, or in the step before its pass.")
    tables = [repr((name, size)) for name, (_, size, _) in gen.tables.items()]
    src.line(src.wrapped("TABLES = (", tables, ",)" if len(tables) == 1 else ")"))
    src.comment("Kernels (by position in the kernel graph) run by the NumPy references: they allocate.")
    src.line(f"FALLBACK = ({', '.join(str(p) for p in gen.fallback)}{',' if len(gen.fallback) == 1 else ''})")


def counts(gen: Generator) -> tuple[int, int]:
    """(generated, library) kernels of the module, neither views nor fallbacks; an epilogue
    (a library GEMM or convolution, then a generated loop over its output) counts as generated,
    unless the library kernel applies its tail itself (a relu: externs.RELU_LAST)."""
    runs = [k for pos, k in enumerate(gen.kernels) if k.kind != "view" and pos not in gen.fallback]
    forms = [(form(gen, k), gen.kernel_name(k)) for k in runs]
    library = sum(how == "library" or (how == "epilogue" and name not in gen.units) for how, name in forms)
    return len(runs) - library, library


def _driver(src: Source, gen: Generator, name: str, prologue: bool) -> None:
    params = list(gen.views.values()) + list(gen.tables) + ["workspace", "scratch", "fallback"]
    with src.block(src.wrapped(f"def {name}(", params, "):")):
        src.line('"""' + ("Kernels that read only never-updated parameters: once per parameter load."
                          if prologue else "One run of the graph: every kernel in order.") + '"""')
        for pos, k in enumerate(gen.kernels):
            if k.prologue != prologue:
                continue
            if k.kind == "view":
                src.comment(f"{k.name}: a view of {k.inputs[0]} ({k.op})")
            elif pos in gen.fallback:
                src.line(f"fallback({pos})  # {k.name}: {_ops(k)} by the NumPy reference")
            else:
                for line in gen.calls[k.name]:
                    src.line(line if isinstance(line, str) else src.wrapped(f"{line[0]}(", line[1], ")"))
        if prologue:
            for line in gen.prologue_lines:
                src.line(line)
        src.line("return None")


def _ops(k: Kernel) -> str:
    return "+".join(dict.fromkeys(n.op for n in k.covers()))


# ---- what the drivers call, with which argument types: planned without Numba ---------------

NDIM = {"flat": 1, "ncs": 3, "nc": 2, "rows": 2}  # the rank of each view (VIEWS); "" keeps the buffer's


def constant_type(value) -> str:
    """How driver_calls names the type of a constant argument: its Python type (int, float,
    bool, NoneType), or `ints<k>` for a tuple of k ints (pad's offsets)."""
    if isinstance(value, tuple):
        return f"ints{len(value)}"
    return type(value).__name__


def driver_calls(gen: Generator) -> list[tuple[tuple[str, str], tuple]]:
    """Every compiled function the drivers call, once per argument types: ((where, name), types),
    where is a library module (`dslc.runtime.cpu.conv`) or, for a generated kernel, its
    shared file's stem (shared.py); each type is (dtype, rank) for an array, else the
    type of a constant (constant_type: int, float, bool, NoneType, ints<k>). What the runner compiles ahead of the
    first step, and `dslc compile` checks is built."""
    arrays = {name: (NUMPY_DTYPE[gen.kg.buffer(b).dtype], NDIM.get(kind, len(gen.kg.buffer(b).shape)))
              for (b, kind), name in gen.views.items()}
    arrays.update(workspace=(float_dtype(gen.kg), 2), scratch=("float64", 2))
    arrays.update({name: (NUMPY_DTYPE[gen.kg.buffer(w).dtype], 1) for name, (w, _, _) in gen.tables.items()})
    entries = {name: shared.path_for(shared.canonical(unit)).stem for name, unit in gen.units.items()}
    out: dict[tuple, None] = {}  # in first-call order, once each
    runs = [gen.calls[k.name] for pos, k in enumerate(gen.kernels) if k.kind != "view" and pos not in gen.fallback]
    for lines in runs + [gen.prologue_lines]:
        for line in lines:
            if isinstance(line, tuple):
                where, args = (entries[line[0]], "kernel"), [ast.Name(a) for a in line[1]]
            elif line.startswith("#"):
                continue
            else:
                call = ast.parse(line).body[0].value
                if call.func.value.id in externs.HOST_MODULES:
                    continue
                where, args = (f"dslc.runtime.cpu.{call.func.value.id}", call.func.attr), call.args
            types = tuple(arrays[a.id] if isinstance(a, ast.Name) else constant_type(ast.literal_eval(a)) for a in args)
            out.setdefault((where, types), None)
    return list(out)
