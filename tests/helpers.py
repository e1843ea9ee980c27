"""What several test modules share: the repository's paths, op-registry samples, random arrays.

Imported as `helpers` (tests/ is on sys.path under both `pytest` and `python -m pytest`);
a test module imports from here, never from another test module or from conftest.py.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from dslc.collective import Ranks, using
from dslc.ir.builder import GraphBuilder, complete_attrs
from dslc.ir.graph import Output
from dslc.ir.types import NUMPY_DTYPE, TensorType
from dslc.ops import registry
from dslc.passes.autodiff import differentiate

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
FIXTURES = ROOT / "tests" / "fixtures"


# ---- the op registry's samples (test_registry, test_numba_backend, test_gpu) ----------------

OPS = registry.all_ops()
SAMPLES = [(name, k, s) for name, op in OPS.items() for k, s in enumerate(op.samples)]


def draw(t: TensorType, domain: str, rng: np.random.Generator, classes: int) -> np.ndarray:
    """A value of type `t` from the Sample's domain; integer inputs are labels in [0, classes)."""
    shape = tuple(t.shape)
    if not t.is_float:
        return rng.integers(0, classes, shape).astype(NUMPY_DTYPE[t.dtype])
    if domain == "positive":
        x = rng.uniform(0.5, 2.0, shape)
    elif domain == "probability":
        x = rng.uniform(0.05, 0.95, shape)
    elif domain == "kinks":
        x = rng.standard_normal(shape)
        x = x + np.where(x >= 0, 0.1, -0.1)  # |x| >= 0.1: finite differences never cross a kink
    else:
        x = rng.standard_normal(shape)
    return x.astype(NUMPY_DTYPE[t.dtype])


def typed(sample, dtype: str) -> list[TensorType]:
    return [t.with_dtype(dtype) if t.is_float else t for t in sample.inputs]


def feeds_for(types, domain, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = types[0].shape[-1] if types[0].rank else 2
    return [draw(t, domain, rng, classes) for t in types]


def op_graph(name, sample):
    """loss = sum(op(x...) * r) in float32, stage backward: the op, its gradient, fused around it
    (an op with an integer result is the graph's output)."""
    op = OPS[name]
    types = typed(sample, "f32")
    attrs = dict(complete_attrs(op, sample.attrs))
    b = GraphBuilder()
    xs = [b.source(f"x{k}", "input", t) for k, t in enumerate(types)]
    out = b.add(name, xs, attrs)
    if not b.type_of(out).is_float:  # an index (argmax): compared as an output, not differentiated
        return b.graph(f"op_{name}", [Output("output", "out", out)], "typed"), types, sample.domain
    loss = out
    if b.type_of(out).rank:
        loss = b.add("sum", [b.add("mul", [out, b.source("r", "input", b.type_of(out))])])
    graph = b.graph(f"op_{name}", [Output("loss", "loss", loss)], "typed")
    wrt = [x for k, x in enumerate(xs) if k not in op.integer_inputs and types[k].is_float]
    return (differentiate(graph, wrt) if op.grad and wrt else graph), types, sample.domain


def samples_graph(samples, name: str = "samples"):
    """Many op samples as one graph (each as op_graph makes it, its names prefixed `s<k>.`,
    the losses summed, every float input differentiated): one module to compile for all of
    them. (graph, feeds drawn from each sample's domain)."""
    b = GraphBuilder()
    feeds, terms, outputs, wrt = {}, [], [], []
    for j, (op_name, _, sample) in enumerate(samples):
        op, types = OPS[op_name], typed(sample, "f32")
        xs = [b.source(f"s{j}.x{i}", "input", t) for i, t in enumerate(types)]
        feeds.update(zip(xs, feeds_for(types, sample.domain, seed=j)))
        out = b.add(op_name, xs, dict(complete_attrs(op, sample.attrs)), name=f"s{j}.{op_name}")
        if not b.type_of(out).is_float:
            outputs.append(Output("output", out, out))
            continue
        wrt += [x for i, x in enumerate(xs) if op.grad and i not in op.integer_inputs and types[i].is_float]
        if b.type_of(out).rank:
            r = b.source(f"s{j}.r", "input", b.type_of(out))
            # its own stream: drawn from feeds_for's seed, r would equal the first input, and
            # sum(instancenorm(x) * x) has a gradient of zero, all rounding noise to compare
            feeds[r] = np.random.default_rng((j, 1)).standard_normal(b.type_of(out).bind({})).astype(np.float32)
            out = b.add("sum", [b.add("mul", [out, r])])
        terms.append(out)
    loss = terms[0]
    for t in terms[1:]:
        loss = b.add("add", [loss, t])
    graph = b.graph(name, outputs + [Output("loss", "loss", loss)], "typed")
    return differentiate(graph, wrt), feeds


# ---- compiled backends against the reference (test_numba_backend, test_gpu, test_no_alloc) ----

# Ops that neither backend generates or has a library kernel for yet: a kernel holding one
# runs the NumPy references on the host (it allocates). Every other op's samples must lower
# to real kernels on both (test_numba_backend, test_cuda_codegen): this list only shrinks.
HOST_FALLBACKS = {"batchnorm_grad_gamma", "batchnorm_grad_x", "concat", "dropout", "groupnorm", "groupnorm_grad_gamma",
                  "groupnorm_grad_input", "instancenorm", "layernorm", "maxout", "maxout_grad", "pad", "slice",
                  "slice_grad", "stochastic_depth", "svm", "svm_grad", "transpose", "var_grad", "zeros_like"}

TOL = 1e-4


def relative_error(got, want) -> float:
    """max |got - want| over max |want| (at least 1e-6), in float64; 0 for empty arrays: how
    every backend test compares an output with the reference's."""
    if not want.size:
        return 0.0
    return float(np.max(np.abs(np.asarray(got, np.float64) - want))) / max(float(np.max(np.abs(want))), 1e-6)
SMALL = {"small_cnn": {"width": 4, "hidden": 16}, "cifar_cnn": {"width": 4, "hidden": 16},
         "resnet20": {"n": 1, "width": 4}, "mlp_bn": {"h1": 24, "h2": 12}, "digits_cnn": {"width": 4},
         "digits_mlp": {"hidden": 16}, "two_layer": {"hidden": 12}}
# Models with 224x224 (alexnet: 227x227) inputs and fixed widths: no small size to test them
# at. test_numba_backend checks them at their own sizes with their initialisers' weights
# (with the random weights of `arrays` a deep network without batchnorm blows up to 1e7);
# the reasons below skip them elsewhere.
_FULL_SIZE = "inputs with fixed widths: checked at full size on the CPU only (test_numba_backend)"
TOO_BIG = {"alexnet": f"227x227 {_FULL_SIZE}", "vgg16": f"224x224 {_FULL_SIZE}", "resnet18": f"224x224 {_FULL_SIZE}"}


def arrays(graph, batch: int, seed: int = 0):
    """Feeds, parameters (optimizer state non-zero, variances positive) and fixed masks, float32."""
    rng = np.random.default_rng(seed)
    sizes = {"N": batch}
    f32 = lambda a: np.asarray(a, np.float32)
    feeds = {}
    for n in graph.inputs:
        shape = n.type.bind(sizes)
        classes = 10
        feeds[n.name] = (f32(rng.standard_normal(shape)) if n.type.is_float
                         else rng.integers(0, classes, shape).astype(np.int64 if n.type.dtype == "i64" else np.int32))
    feeds.update({k: f32(v) for k, v in (("lr", 0.05), ("step", 3.0)) if k in feeds})
    params = {p.name: f32(rng.uniform(0.5, 1.5, p.type.bind({})) if p.name.startswith(("opt.v.", "opt.cache."))
                          or p.name.endswith("running_var") else 0.1 * rng.standard_normal(p.type.bind({})))
              for p in graph.params}
    randoms = {r.name: f32((rng.random(r.type.bind(sizes)) < r.attr("p")) * r.attr("scale"))
               for r in graph.of_op("random")}
    return feeds, params, randoms


def trained_like(model, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights from the initialisers, with batchnorm's scale, shift and running statistics moved
    away from 1 and 0, as after training (folding them is then no identity)."""
    rng = np.random.default_rng(seed)
    weights = model.init(seed)
    for name, spec in model.param_specs.items():
        shape = weights[name].shape
        if spec.role == "scale" or name.endswith("running_var"):
            weights[name] = rng.uniform(0.5, 1.5, shape).astype(weights[name].dtype)
        elif spec.role in ("shift", "state"):
            weights[name] = rng.normal(0.0, 0.2, shape).astype(weights[name].dtype)
    return weights


# ---- the command line (test_babysitting, test_search) -----------------------------------------

def run_cli(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `dslc ARGS` run in this process; never a traceback."""
    from dslc.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def mnist_from_digits(folder: Path) -> Path:
    """The shipped 8x8 digits scaled to 28x28 (3x3 blocks, a 2-pixel border) and written as
    MNIST's IDX files in `folder`: MNIST-shaped data for models/small_cnn.net without a download."""
    import struct

    from dslc.runtime.data import digits

    d = digits()
    images = np.pad(np.kron((d.x[:, 0] * 255).astype(np.uint8), np.ones((3, 3), np.uint8)), ((0, 0), (2, 2), (2, 2)))
    idx = lambda a: bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, part in (("train", slice(0, 1500)), ("t10k", slice(1500, None))):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx(images[part]))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(d.y[part].astype(np.uint8)))
    return folder


# ---- ranks without MPI (test_data_parallel) -----------------------------------------------------

class Mirror(Ranks):
    """`size` ranks in one process, each holding the examples this one holds: the mean over
    ranks of x is x, and the global batch is `size` copies of the local one. So a data-parallel
    step on a batch equals the one-process step on that batch repeated `size` times, and every
    collective path (buckets, traffic, global counts) runs in one process."""

    def __init__(self, size: int = 2):
        super().__init__()
        self.size = size

    def allreduce_sum(self, buffer):
        buffer *= self.size

    def broadcast(self, value, root=0):
        return value

    def lowest(self, flag):
        return 0 if flag else None

    def abort(self, status):
        raise AssertionError(f"a mirrored rank aborted with status {status}")


class ThreadRank(Ranks):
    """Rank `rank` of `size` threads of this process, exchanging values through `shared`
    (a barrier and one slot per rank): see thread_ranks."""

    def __init__(self, rank: int, size: int, shared):
        super().__init__()
        self.rank, self.size, self.shared = rank, size, shared

    def _exchange(self, value) -> list:
        barrier, slots = self.shared
        slots[self.rank] = value
        barrier.wait()
        seen = list(slots)
        barrier.wait()
        return seen

    def allreduce_sum(self, buffer):
        buffer[...] = sum(np.asarray(v, np.float64) for v in self._exchange(buffer.copy()))

    def broadcast(self, value, root=0):
        return self._exchange(value)[root]

    def lowest(self, flag):
        return next((r for r, f in enumerate(self._exchange(bool(flag))) if f), None)

    def abort(self, status):
        raise AssertionError(f"rank {self.rank} aborted with status {status}")


def thread_ranks(size: int) -> list[ThreadRank]:
    """`size` ranks that are threads of this process (run them with on_threads)."""
    shared = (threading.Barrier(size), [None] * size)
    return [ThreadRank(r, size, shared) for r in range(size)]


def on_threads(groups, work) -> list:
    """work(group) in one thread per group, under `using(group)`; the results in rank order."""
    results, errors = [None] * len(groups), []

    def run(g):
        try:
            with using(g):
                results[g.rank] = work(g)
        except BaseException as e:  # re-raised in the caller
            errors.append(e)
            g.shared[0].abort()  # the other ranks stop waiting

    threads = [threading.Thread(target=run, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]
    return results


# A digits MLP with a search block; {space} is its search space (a str.format template).
SEARCH_MLP = """
model mlp(hidden: int = 16, classes: int = 10) {{
    input image : f32[N, 64]
    input label : i64[N]
    fc1: h = image |> linear(hidden) |> relu
    fc2: logits = h |> linear(classes)
    metric accuracy(logits, label)
    loss cross_entropy(logits, label)
}}

train mlp {{
    data = digits()
    split = validation(0.1, test=0.2, seed=0)
    epochs = 2
    optimizer = adam(lr=3e-3)
    search {{
        {space}
    }}
}}
"""


def search_net(folder: Path, space: str) -> Path:
    """SEARCH_MLP with `space` as its search block, written to folder/m.net."""
    path = folder / "m.net"
    path.write_text(SEARCH_MLP.format(space=space))
    return path
# ---- the CUDA module run on the host (test_cuda_on_host, test_names) ----------------------------

CXX = shutil.which("g++") or shutil.which("c++")

# The CUDA words a generated module uses, as host C++: one thread per block.
HOST = r"""
#include <cmath>
#include <cstring>
#include <algorithm>
using namespace std;
struct dslc_dim3 { long long x, y, z; };
static dslc_dim3 blockIdx, threadIdx, blockDim = {1, 1, 1}, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads()
static inline double __longlong_as_double(long long v) { double d; memcpy(&d, &v, sizeof d); return d; }
extern "C" void dslc_set_block(long long bx, long long by, long long gx, long long gy) {
    blockIdx.x = bx; blockIdx.y = by; gridDim.x = gx; gridDim.y = gy;
}
"""


def compile_host(source: str, tmp_path: Path) -> ctypes.CDLL:
    """A generated CUDA module compiled as a host shared library (HOST's one thread per block)."""
    src = tmp_path / "module.cpp"
    src.write_text(HOST + source)
    lib = tmp_path / "module.so"
    done = subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-w", "-o", str(lib), str(src)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return ctypes.CDLL(str(lib))


def _c(value):
    if isinstance(value, np.ndarray):
        return ctypes.c_void_p(value.ctypes.data)
    if isinstance(value, (np.int32, np.int16, np.int8)):
        return ctypes.c_int(int(value))
    if isinstance(value, (float, np.floating)):
        return ctypes.c_double(float(value))
    return ctypes.c_longlong(int(value))


def _launch(lib, function: str, grid: tuple[int, int], args) -> None:
    """`function` run over every block of `grid`, one thread each."""
    fn = getattr(lib, function)
    args = [_c(a) for a in args]
    gx, gy = grid
    for by in range(gy):
        for bx in range(gx):
            lib.dslc_set_block(bx, by, gx, gy)
            fn(*args)


class HostModule:
    """What runtime/cuda/ops.py reads of a `cupy.RawModule`, over the host library: functions
    called as `fn((blocks,), (threads,), args)`."""

    def __init__(self, lib):
        self.lib = lib

    def get_function(self, name: str):
        return lambda grid, block, args: _launch(self.lib, name, (grid[0], 1), args)


# What ops.Library calls of CuPy, on NumPy arrays.
HOST_CUPY = SimpleNamespace(matmul=np.matmul, add=np.add, copyto=np.copyto, multiply=np.multiply)


def _host_value(kernel, values):
    """An epilogue's host (matmul, conv2d ...) by its reference: what the library writes first."""
    body = kernel.nodes[0].attr("body")
    host = next(b for b in body if registry.epilogue_host(b.op))
    ins = [values[kernel.inputs[int(r[1:])]] for r in host.inputs]
    return registry.get(host.op).reference(*ins, **host.attr_dict)


def check_cuda_on_host(graph, tmp_path: Path, batch: int = 3, library: bool = True, feeds=None) -> int:
    """Generate `graph`'s CUDA module, compile it as host C++ and run each generated kernel
    (and, with `library`, each library launch through runtime/cuda/ops.py) on the NumPy
    reference's values of its inputs (for `feeds`, else random ones), comparing its outputs
    with the reference's within 1e-4 of their largest magnitude; the number of kernels checked."""
    from dslc import reference
    from dslc.codegen.cuda_gpu import generate
    from dslc.kernels import lower
    from dslc.runtime.cuda import ops

    kg = lower(graph)
    module = generate(kg)
    lib = compile_host(module.source, tmp_path)
    drawn, params, randoms = arrays(graph, batch=batch)
    values = reference.evaluate(graph, drawn if feeds is None else feeds, params, randoms=randoms)
    sizes = reference.bind_inputs(graph, drawn if feeds is None else feeds)
    bound = lambda b: np.asarray(values[b], NUMPY_DTYPE[kg.buffer(b).dtype]).reshape(kg.buffer(b).type.bind(sizes))
    checked = 0
    for launch in module.launches:
        k = module.kernels[launch.position]
        if launch.kind not in ("generated", "epilogue") and not (library and launch.kind == "library"):
            continue
        # each buffer as the runner binds it: C-contiguous, in the kernel graph's shape at this batch
        names = launch.args if launch.kind != "library" else k.inputs + k.outputs
        views = {b: bound(b).copy(order="C") for b in names}
        for o in k.outputs + k.scratch:  # what the kernel writes starts as NaN
            if o in views and views[o].dtype.kind == "f":
                views[o][...] = np.nan
        if launch.kind == "library":
            node = k.nodes[0]
            shapes = [views[i].shape for i in node.inputs]
            workspace = np.zeros(max(1, ops.workspace_elements(node, shapes, views[node.name].shape)),
                                 views[node.name].dtype if views[node.name].dtype.kind == "f" else np.float32)
            library_ops = ops.Library(HOST_CUPY, HostModule(lib), workspace)
            library_ops.bind(node, [views[i] for i in node.inputs], views[node.name])()
        else:
            if launch.kind == "epilogue":
                views[k.outputs[0]][...] = _host_value(k, values)
            _launch(lib, launch.function, launch.grid(views), launch.arguments(views))
        for o in k.outputs:
            want = values[o].astype(np.float64).reshape(views[o].shape)
            err = relative_error(views[o], want)
            assert err <= 1e-4, f"{graph.name} {graph.stage} {launch.function or k.name}: {o} relative error {err:.2e}"
        checked += 1
    return checked
