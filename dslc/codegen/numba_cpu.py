"""KernelGraph -> the source of a Python module whose kernels Numba compiles.

    source = generate(lower(optimize(build(model, "train_step"))[0]))

The module holds one `@njit` function per generated kernel, named after its layer
(`k_stage1_conv_bn_relu_sweep`), each under a header naming the ops it fuses and the
`.net` lines they came from, and two drivers:

    step(<every buffer>, workspace, fallback)       the kernels in order, one call each
    prologue(<every buffer>, workspace, fallback)   kernels of never-updated parameters

Buffers arrive as arrays already bound to the memory plan's arena (see
dslc/runtime/cpu/runner.py), in the order of the module's `BUFFERS`; nothing in the
module allocates. Extern kernels call the library in dslc/runtime/cpu/ (externs.py);
a kernel this generator cannot write yet (an op with no scalar expression or library
kernel) is a `fallback(k)` call: the runner evaluates kernel k with the NumPy
references, which allocates, and `FALLBACK` lists them so tests can tell.

The text depends only on the kernel graph (never on the batch size, the memory plan or
the clock), so the same graph always gives byte-identical source: the cache key and
golden diffs rely on it.
"""
from __future__ import annotations

from dslc.version import __version__
from dslc.codegen import externs, numba_loops
from dslc.codegen.cache import numba_version
from dslc.codegen.emit import Emitter, Lang, form
from dslc.codegen.scalar import CONSTANTS
from dslc.codegen.source import Source, kernel_header, where
from dslc.ir.types import concrete
from dslc.kernels.graph import Kernel, KernelGraph
from dslc.kernels.loop_forms import as_loop

MODULE_GLOBALS = ("math", "np", "njit", "prange", "conv", "gemm", "pool", "softmax", "step", "prologue",
                  "workspace", "fallback", "BUFFERS", "FALLBACK", "max", "min") + tuple(CONSTANTS)


def _chain_head(text, params, outs: int, dtype: str):
    return f"def chain({', '.join(params)}):", ["math", "max", "min"]


def _chain_results(values, dtype: str) -> list[str]:
    return [f"return {', '.join(values)}{',' if len(values) == 1 else ''}"]


# Python for Numba: locals are plain names (float32 operands meet float literals in
# float64, rounded once on store); loops are range/prange over the arrays' shapes (numba_loops.py).
PYTHON = Lang(target="cpu", c=False, let="{name} = {value}", store="{at} = {value}", add_to="{acc} += {value}",
              fmax="max", sqrt="math.sqrt", library=frozenset(externs.CALLS),
              chain_head=_chain_head, chain_results=_chain_results)

# What each generated form of kernel is written by (emit.form); library calls and
# fallbacks are lines of the drivers, not functions.
EMIT = {"expand": numba_loops.expand, "regulariser": numba_loops.regulariser, "elementwise": numba_loops.elementwise,
        "epilogue": numba_loops.elementwise, "reduce": numba_loops.reduce, "update": numba_loops.update,
        "sweep": numba_loops.sweep}


class Generator(Emitter):
    def __init__(self, kg: KernelGraph):
        super().__init__(kg, PYTHON, MODULE_GLOBALS + tuple(externs.HELPERS))
        self.params: dict[str, list[str]] = {}
        self.fallback: list[int] = []
        self.helpers: set[str] = set()
        self.kernels: list[Kernel] = list(kg.kernels)
        self.scratch_bytes = 0  # per thread: float64 scratch of rows-layout sweeps (numba_loops.py)

    def bound(self, buffer: str) -> tuple[int, ...]:
        """A shape with the batch bound to 1: only its static (spatial) sizes may be used."""
        return tuple(concrete(d, {"N": 1}) for d in self.kg.buffer(buffer).shape)

    def buffer_params(self, kernel: Kernel) -> list[str]:
        return [self.arg(b) for b in dict.fromkeys(kernel.inputs + kernel.outputs + kernel.scratch)]

    def signature(self, src: Source, kernel: Kernel, parallel: bool, workspace: bool = False,
                  accumulate: bool = False) -> str:
        """Write the decorator; return the `def` line. fastmath only for float32 graphs, and
        only contraction (and reassociation of float64 accumulators): within float32 rounding."""
        params = self.buffer_params(kernel) + (["workspace"] if workspace else [])
        self.params[kernel.name] = params
        # error_model="numpy": x / 0 is inf or nan as in the references, never an exception.
        opts = ["cache=True", 'error_model="numpy"'] + (["parallel=True"] if parallel else [])
        if self.kg.buffer(kernel.outputs[0]).dtype == "f32":
            opts.append('fastmath={"reassoc", "contract"}' if accumulate else 'fastmath={"contract"}')
        src.line(f"@njit({', '.join(opts)})")
        return src.wrapped(f"def {self.kernel_name(kernel)}(", params, "):")


def generate(kg: KernelGraph) -> str:
    """The module source for `kg` (see the module docstring)."""
    return generate_with(kg)[1]


def generate_with(kg: KernelGraph) -> tuple[Generator, str]:
    """The generator's state (kernels as emitted, fallbacks) and the module source."""
    gen = Generator(kg)
    kernels = Source()
    gen.kernels = [as_loop(k, kg) for k in kg.kernels]
    for pos, k in enumerate(gen.kernels):
        if k.kind == "view":
            continue
        function = Source()
        if not _emit(gen, function, k):
            gen.fallback.append(pos)
        elif function.lines:  # extern calls have no function of their own
            kernels.blank()
            kernels.blank()
            kernel_header(kernels, pos, k)
            kernels.lines.extend(function.lines)
    src = Source()
    _module_header(src, kg, gen)
    for name in sorted(gen.helpers):
        src.blank()
        src.blank()
        src.lines.extend(externs.HELPERS[name].rstrip("\n").splitlines())
    src.lines.extend(kernels.lines)
    for driver, prologue in (("prologue", True), ("step", False)):
        src.blank()
        src.blank()
        _driver(src, gen, driver, prologue)
    return gen, src.text()


def _emit(gen: Generator, src: Source, k: Kernel) -> bool:
    """Write kernel k's function; False when it must fall back to the references."""
    if k.kind == "extern" and k.nodes[0].op in externs.HELPERS:
        gen.helpers.add(k.nodes[0].op)
    how = form(gen, k)
    if how == "fallback":
        return False
    if how == "library":
        gen.params[k.name] = [gen.arg(b) for b in k.inputs + k.outputs]
    else:
        EMIT[how](gen, src, k)
    return True


def _module_header(src: Source, kg: KernelGraph, gen: Generator) -> None:
    src.comment(f"{kg.name} ({kg.stage}): generated by dslc {__version__} for Numba {numba_version()} "
                "(dslc/codegen/numba_cpu.py).")
    src.comment("Do not edit: `dslc compile` regenerates it, byte for byte, from the model.")
    ext = sum(k.kind == "extern" for k in kg.kernels)
    src.comment(f"{len(kg.kernels)} kernels: {len(kg.kernels) - ext - len(gen.fallback)} generated, "
                f"{ext} library calls, {len(gen.fallback)} NumPy fallbacks.")
    src.line("import math")
    src.blank()
    src.line("import numpy as np")
    src.line("from numba import njit, prange")
    src.blank()
    src.line(externs.IMPORTS)
    src.blank()
    for name, value in CONSTANTS.items():
        src.line(f"{name} = {value}")
    src.comment("The drivers' buffer parameters, in order: the runner binds arena views to them by position.")
    src.line(src.wrapped("BUFFERS = (", [repr(b.name) for b in kg.buffers], ",)" if len(kg.buffers) == 1 else ")"))
    src.comment("Kernels (by position in the kernel graph) run by the NumPy references: they allocate.")
    src.line(f"FALLBACK = ({', '.join(str(p) for p in gen.fallback)}{',' if len(gen.fallback) == 1 else ''})")


def _driver(src: Source, gen: Generator, name: str, prologue: bool) -> None:
    params = [gen.arg(b.name) for b in gen.kg.buffers] + ["workspace", "fallback"]
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
            elif k.kind == "extern" and externs.has_library(k.nodes[0].op):
                node = k.nodes[0]
                args = [gen.arg(b) for b in k.inputs + k.outputs]
                src.comment(f"{k.name}: {node.op}, {where(node.span)}")
                src.line(externs.call(node, args, [gen.bound(i) for i in k.inputs]))
            else:
                src.line(src.wrapped(f"{gen.kernel_name(k)}(", gen.params[k.name], ")"))
        src.line("return None")


def _ops(k: Kernel) -> str:
    return "+".join(dict.fromkeys(n.op for n in k.covers()))
