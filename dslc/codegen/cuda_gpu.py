"""KernelGraph -> one CUDA C module (`.cu`) and the launches that run it, for CuPy.

    module = generate(lower(optimize(build(model, "train_step"))[0]))
    module.source      # the .cu text: nvcc -cubin compiles it, cupy.RawModule loads it
    module.launches    # one Launch per kernel graph kernel, in order

The module holds one `extern "C" __global__` function per generated kernel, named after
its layer (`k_stage1_conv_bn_relu_sweep`) under a header naming the ops it fuses and
their `.net` lines (written by the shared emitter, emit.py and groups.py, in the
`Cuda` syntax table below, laid out over blocks and threads by cuda_loops.py), and the
library kernels the graph's extern ops use (dslc/codegen/cuda_library.py), once per dtype. GEMMs are not in the source:
the runner (dslc/runtime/cuda/runner.py) calls cuBLAS through `cupy.matmul` for
matmul, linear and the convolutions' im2col products, and launches the rest.

Generated kernels take their buffers as pointers, in `Launch.args` order, each followed
by the dimensions the kernel reads (`const long long x_s0, x_s1, ...`, `Launch.axes`;
`Launch.arguments` builds them and
`Launch.grid` sizes the grid from the bound arrays): the text depends only on the form
of the kernel graph, never on the batch size, a width or the memory plan, so one module
(and CuPy's cached binary of it) serves every size, and the same graph always gives
byte-identical source. A kernel this generator cannot write (an op with no expression
and no library kernel: slice, pad, svm ...) is a `fallback` launch: the runner computes
it on the host with the NumPy references, as the CPU backend does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from dslc.codegen import cuda_library as library
from dslc.codegen import cuda_loops
from dslc.codegen.emit import Emitter, Lang, form, host_of
from dslc.codegen.scalar import CONSTANTS
from dslc.codegen.source import Source, kernel_header
from dslc.kernels.graph import Kernel, KernelGraph
from dslc.kernels.loop_forms import as_loop, sweep_space
from dslc.version import __version__

BLOCK = 256  # threads per block of every launch (library.PRELUDE's DSLC_BLOCK)
MAX_BLOCKS = 8192  # grid-stride loops cover the rest
CTYPE = library.CTYPE
# What a kernel's `extern "C"` line reads until its body is written (Generator.close).
SIGNATURE = "@signature@"


def _chain_head(text, params, outs: int, dtype: str):
    """`void chain(p0, ..., r0, ...)`: results stored through r* (typed by the chain's
    dtype: a chain's values share one)."""
    results = [f"r{k}" for k in range(outs)]
    return text.wrapped("__device__ __forceinline__ void chain(",
                        [f"double {p}" for p in params] + [f"{CTYPE[dtype]}* {r}" for r in results], ")")


def _chain_results(values, dtype: str) -> list[str]:
    return [f"*r{k} = ({CTYPE[dtype]})({v});" for k, v in enumerate(values)]


# CUDA C: locals are `const double` (every operand loaded as a double, rounded once on
# store by a cast); loops are grid- and block-strided (cuda_loops.py).
CUDA = Lang(target="cuda", c=True, let="const double {name} = {value};", store="{at} = ({ctype})({value});",
            add_to="{acc} += {value};", fmax="fmax", sqrt="sqrt", library=frozenset(library.NEEDS),
            chain_head=_chain_head, chain_results=_chain_results)


Size = tuple[str, int]  # (buffer, axis): a size the runner reads from the bound buffer's shape


@dataclass(frozen=True)
class Launch:
    """How the runner runs kernel `position` of the kernel graph.

    kind: generated (`function` in the module; each buffer of `args` passed as its pointer
    followed by its dimensions along `axes`), library (the runner's call for the extern op, see
    runtime/cuda/ops.py), epilogue (the host op by the library, then `function` over its
    output), fallback (NumPy on the host) or view (nothing). The grid covers `work`, the
    largest of its products of sizes: one thread per element, or one block per element
    when `per_block`; `segments` is gridDim.y.
    """

    position: int
    kind: str
    name: str
    function: str = ""
    args: tuple[str, ...] = ()
    axes: tuple[tuple[int, ...], ...] = ()  # per buffer of `args`: the dimensions passed after it
    work: tuple[tuple[Size, ...], ...] = ()
    per_block: bool = False
    segments: int = 1

    def grid(self, views: Mapping) -> tuple[int, int]:
        """(gridDim.x, gridDim.y) for the buffers bound as `views` (arrays by buffer name)."""
        count = max((math.prod(views[b].shape[a] for b, a in term) for term in self.work), default=1)
        blocks = count if self.per_block else -(-count // BLOCK)
        return max(1, min(blocks, MAX_BLOCKS)), self.segments

    def arguments(self, views: Mapping, size=int) -> tuple:
        """The generated function's arguments: each buffer's array from `views`, followed by
        the dimensions the function reads (as `size`, e.g. numpy.int64), in signature order."""
        return tuple(a for b, axes in zip(self.args, self.axes)
                     for a in (views[b], *(size(views[b].shape[k]) for k in axes)))


@dataclass(frozen=True)
class CudaModule:
    name: str
    stage: str
    source: str
    launches: tuple[Launch, ...]
    kernels: tuple[Kernel, ...]  # as generated: a lone sum/mean or optimizer op as a loop

    @property
    def fallbacks(self) -> tuple[int, ...]:
        return tuple(launch.position for launch in self.launches if launch.kind == "fallback")


class Generator(Emitter):
    def __init__(self, kg: KernelGraph):
        super().__init__(kg, CUDA)
        # Every buffer's dimensions, named before any local: `x_s0`, `x_s1`, ...
        self.dims = {(b.name, a): self.names.get(f"{b.name} s{a}") for b in kg.buffers for a in range(len(b.shape))}
        self.used: set[tuple[str, int]] = set()  # the dimensions the kernel being written reads
        self.segments: dict[str, int] = {}
        self.library: set[tuple[str, str | None, str | None]] = set()

    def ctype(self, buffer: str) -> str:
        return CTYPE[self.kg.buffer(buffer).dtype]

    def params(self, kernel: Kernel) -> list[str]:
        return list(dict.fromkeys(kernel.inputs + kernel.outputs + kernel.scratch))

    def dim(self, buffer: str, axis: int) -> str:
        """The kernel argument holding the size of `buffer` along `axis` (a parameter of the
        kernel being written, from the first use on)."""
        self.used.add((buffer, axis))
        return self.dims[buffer, axis]

    def signature(self, kernel: Kernel) -> str:
        """The `extern "C" __global__` line, written once the body is (`close`): the
        parameters name the dimensions the body reads, so it stands in as SIGNATURE."""
        return SIGNATURE

    def axes(self, kernel: Kernel) -> tuple[tuple[int, ...], ...]:
        """Per buffer parameter of `kernel`: the dimensions its body read, in order."""
        return tuple(tuple(a for a in range(len(self.kg.buffer(b).shape)) if (b, a) in self.used)
                     for b in self.params(kernel))

    def close(self, src: Source, kernel: Kernel) -> None:
        """Put the real signature in place of SIGNATURE: each buffer as `T*` (written) or
        `const T*` (read only), followed by the dimensions the body reads, as `long long`."""
        written = set(kernel.outputs + kernel.scratch)
        params = []
        for b, axes in zip(self.params(kernel), self.axes(kernel)):
            params.append(f"{'' if b in written else 'const '}{self.ctype(b)}* {self.arg(b)}")
            params += [f"const long long {self.dims[b, a]}" for a in axes]
        head = Source(c=True).wrapped(f'extern "C" __global__ void {self.kernel_name(kernel)}(', params, ")")
        at = next(k for k, line in enumerate(src.lines) if line.startswith(SIGNATURE))
        src.lines[at] = head + src.lines[at][len(SIGNATURE):]

    def need(self, op: str, node) -> None:
        """Record the library kernels extern `op` uses, for its dtypes: scalar_t the first float
        input's (the output's, for one_hot), label_t the first integer input's."""
        dtypes = [self.kg.buffer(i).dtype for i in node.inputs]
        floats = [d for d in dtypes if d in ("f32", "f64")] or [self.kg.buffer(node.name).dtype]
        labels = [d for d in dtypes if d in ("i32", "i64")]
        for name in library.NEEDS[op]:
            self.library.add((name, None if name in library.UNTYPED else floats[0],
                              labels[0] if name in library.LABELLED else None))


def generate(kg: KernelGraph) -> CudaModule:
    """The module and launches of a kernel graph (see the module docstring)."""
    gen = Generator(kg)
    kernels = tuple(as_loop(k, kg) for k in kg.kernels)
    body, launches = Source(c=True), []
    for pos, k in enumerate(kernels):
        function = Source(c=True)
        launch = _emit(gen, function, pos, k)
        launches.append(launch)
        if function.lines:
            body.blank()
            kernel_header(body, pos, k)
            body.lines.extend(function.lines)
    src = Source(c=True)
    _module_header(src, kg, launches)
    src.lines.extend(library.PRELUDE.splitlines())
    src.blank()
    for name, value in CONSTANTS.items():  # macros: an unused one draws no warning
        src.line(f"#define {name} {value}")
    order = {name: k for k, name in enumerate(library.KERNELS)}
    for name, dtype, label in sorted(gen.library, key=lambda t: (order[t[0]], t[1] or "", t[2] or "")):
        src.blank()
        src.lines.extend(library.source(name, dtype, label).splitlines())
    src.lines.extend(body.lines)
    src.blank()
    _launch_order(src, kernels, launches)
    return CudaModule(kg.name, kg.stage, src.text(), tuple(launches), kernels)


# What each generated form of kernel is written by (emit.form).
EMIT = {"expand": cuda_loops.expand, "regulariser": cuda_loops.regulariser, "pointwise": cuda_loops.pointwise,
        "elementwise": cuda_loops.elementwise,
        "epilogue": cuda_loops.elementwise, "reduce": cuda_loops.reduce, "update": cuda_loops.update,
        "sweep": cuda_loops.sweep}


def _emit(gen: Generator, src: Source, pos: int, k: Kernel) -> Launch:
    """Write kernel k's function (if it has one) and say how it is launched."""
    how = form(gen, k)
    if how in ("view", "fallback"):
        return Launch(pos, how, k.name)
    if how == "library":
        gen.need(k.nodes[0].op, k.nodes[0])
        return Launch(pos, "library", k.name)
    gen.used = set()
    EMIT[how](gen, src, k)
    gen.close(src, k)
    numel = lambda name: tuple((name, a) for a in range(len(gen.kg.buffer(name).shape)))
    generated = lambda **kw: Launch(pos, "generated", k.name, gen.kernel_name(k), tuple(gen.params(k)),
                                    gen.axes(k), **kw)
    if how in ("regulariser", "pointwise"):  # one block
        return generated(per_block=True)
    if how == "reduce":  # one block per output element
        return generated(work=(numel(k.outputs[0]),), per_block=True)
    if how == "epilogue":
        host = host_of(k.nodes[0].attr("body"))
        gen.need(host.op, k.nodes[0].replace(inputs=tuple(k.inputs[int(r[1:])] for r in host.inputs)))
        return Launch(pos, "epilogue", k.name, gen.kernel_name(k), tuple(gen.params(k)), gen.axes(k),
                      work=(numel(k.outputs[0]),))
    if how == "update":  # one segment per parameter, the grid as wide as the largest
        chains = [part[-1] for part in k.parts]
        return generated(work=tuple(numel(c) for c in chains), segments=gen.segments[k.name])
    if how == "sweep":  # one block per channel
        space = next(i for i in k.inputs if gen.kg.buffer(i).shape == sweep_space(gen.kg, k))
        return generated(work=(((space, 1),),), per_block=True)
    return generated(work=(numel(k.outputs[0]),))  # elementwise, expand


def _module_header(src: Source, kg: KernelGraph, launches: list[Launch]) -> None:
    count = {kind: sum(launch.kind == kind for launch in launches) for kind in
             ("generated", "epilogue", "library", "fallback", "view")}
    src.comment(f"{kg.name} ({kg.stage}): generated by dslc {__version__} for CUDA (dslc/codegen/cuda_gpu.py).")
    src.comment("Do not edit: `dslc compile --target gpu` regenerates it, byte for byte, from the model.")
    src.comment(f"{len(launches)} kernels: {count['generated']} generated, {count['epilogue']} library GEMMs or "
                f"convolutions with a generated epilogue, {count['library']} library calls, "
                f"{count['fallback']} host fallbacks, {count['view']} views.")
    src.comment("GEMMs run in cuBLAS (cupy.matmul); every other launch is a function of this file, with "
                f"{BLOCK} threads per block.")
    src.blank()


def _launch_order(src: Source, kernels, launches: list[Launch]) -> None:
    """The step as the runner runs it, as a comment: what each kernel graph kernel launches."""
    src.comment("---- the step, in order (dslc/runtime/cuda/runner.py)")
    for launch, k in zip(launches, kernels):
        node = k.nodes[0]
        text = {"generated": launch.function, "view": f"(a view of {k.inputs[0] if k.inputs else ''})",
                "library": f"library {node.op}", "fallback": f"host fallback: {'+'.join(n.op for n in k.covers())}",
                "epilogue": f"library {host_of(node.attr('body')).op}, "
                            f"then {launch.function}" if launch.kind == "epilogue" else ""}[launch.kind]
        src.comment(f"  {launch.position:>3}{' prologue' if k.prologue else ''}  {k.name}: {text}")

