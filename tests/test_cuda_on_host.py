"""The CUDA kernels, generated and library, run on the host: their indexing and their size arguments.

No GPU runs here, so the CUDA module itself is compiled as host C++ (g++) with the CUDA
words defined away: `blockIdx`/`gridDim` are globals the test sets, every block has one
thread (blockDim.x = 1; `dslc_block_sum` of one thread is its value, its other shared
slots staying zero), so a launch is a loop over the grid. Each generated kernel of a
model's step is then called with the arguments the CUDA runner passes
(`Launch.arguments`: every buffer, then the dimensions it reads) on a grid from `Launch.grid`,
its inputs the NumPy reference's values of the same graph, and its outputs compared
with the reference's. This checks what a GPU run would: the element and channel
indexing, the block loops, and that sizes reach the kernels as arguments, at sizes
other than those the module was generated for (the text is the same at every width).
Library launches (convolutions, pooling, losses, slice/pad, the norms) run as the runner
binds them, through runtime/cuda/ops.py with NumPy standing in for CuPy (its matmul for
cuBLAS) and a host module standing in for `cupy.RawModule`.
What it cannot check is concurrency: 256 threads in one block summing together.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

import dslc
from dslc import reference
from dslc.codegen.cuda_gpu import generate
from dslc.ir.types import NUMPY_DTYPE
from dslc.kernels import lower
from dslc.kernels.graph import float_dtype
from dslc.ops import registry
from dslc.passes.pipeline import optimize
from dslc.runtime.cuda import ops
from dslc.stages import build
from helpers import MODELS, arrays

CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")

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

CASES = {  # model, sizes other than the file's defaults (the module is the same text at any)
    "small_cnn": {"width": 3, "hidden": 10}, "mlp_bn": {"h1": 9, "h2": 7}, "two_layer": {"hidden": 5},
    "lenet5": {}, "resnet20": {"n": 1, "width": 4}, "digits_cnn": {"width": 3},
    "norm_cnn": {"width": 6, "groups": 3, "hidden": 10},
}


def _compile(source: str, tmp_path) -> ctypes.CDLL:
    src = tmp_path / "module.cpp"
    src.write_text(HOST + source)
    lib = tmp_path / "module.so"
    done = subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-w", "-o", str(lib), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return ctypes.CDLL(str(lib))


def _c(value):
    """A launch argument as ctypes passes it to the host-compiled kernel, by its exact C type."""
    if isinstance(value, np.ndarray):
        return ctypes.c_void_p(value.ctypes.data)
    kinds = {np.int32: ctypes.c_int, np.int64: ctypes.c_longlong, np.float32: ctypes.c_float,
             np.float64: ctypes.c_double}
    return kinds[type(value)](value.item()) if type(value) in kinds else ctypes.c_longlong(int(value))


class HostModule:
    """What the CUDA runner's library (runtime/cuda/ops.py) asks of a `cupy.RawModule`,
    for the host-compiled module: `get_function(name)(grid, block, args)` runs the kernel
    once per block of the grid (one thread each)."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def get_function(self, name: str):
        fn = getattr(self.lib, name)

        def launch(grid, block, args):
            gx = grid[0]
            cargs = [_c(a) for a in args]
            for bx in range(gx):
                self.lib.dslc_set_block(bx, 0, gx, 1)
                fn(*cargs)
        return launch


def _library_op(launch, k):
    """(node, input buffers) of the library op a library or epilogue launch runs first."""
    if launch.kind == "library":
        return k.nodes[0], k.nodes[0].inputs
    host = next(b for b in k.nodes[0].attr("body") if registry.epilogue_host(b.op))
    return host, tuple(k.inputs[int(r[1:])] for r in host.inputs)


@pytest.mark.parametrize("stage", ["train_step", "infer"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_and_library_kernels_match_the_reference(name, stage, tmp_path):
    """Every generated kernel, and every library launch (slice, pad, svm, norms, im2col and
    the GEMMs around it, pooling, losses) as runtime/cuda/ops.py binds it, with NumPy for
    CuPy: each launch on the reference's inputs, its output against the reference's."""
    graph = optimize(build(dslc.load(MODELS / f"{name}.net", **CASES[name]), stage))[0]
    kg = lower(graph)
    module = generate(kg)
    lib = _compile(module.source, tmp_path)
    feeds, params, randoms = arrays(graph, batch=3)
    values = reference.evaluate(graph, feeds, params, randoms=randoms)
    sizes = reference.bind_inputs(graph, feeds)
    shape = lambda b: kg.buffer(b).type.bind(sizes)
    need = max([ops.workspace_elements(*_sizes(launch, k, shape)) for launch, k in zip(module.launches, module.kernels)
                if launch.kind in ("library", "epilogue")] + [1])
    library = ops.Library(np, HostModule(lib), np.full(need, np.nan, float_dtype(kg)))
    checked = set()
    for launch in module.launches:
        if launch.kind not in ("generated", "epilogue", "library"):
            continue
        k = module.kernels[launch.position]
        buffers = dict.fromkeys(launch.args + k.inputs + k.outputs)
        # each buffer as the runner binds it: C-contiguous, in the kernel graph's shape at this batch
        views = {b: np.asarray(values[b], NUMPY_DTYPE[kg.buffer(b).dtype]).reshape(shape(b)).copy(order="C")
                 for b in buffers}
        for o in k.outputs + k.scratch:  # what the kernel writes starts as NaN
            if views[o].dtype.kind == "f":
                views[o][...] = np.nan
        if launch.kind in ("library", "epilogue"):
            node, ins = _library_op(launch, k)
            library.bind(node, [views[i] for i in ins], views[k.outputs[0]])()
            checked.add(node.op)
        if launch.function:
            fn = getattr(lib, launch.function)
            args = [_c(a) for a in launch.arguments(views)]
            gx, gy = launch.grid(views)
            for by in range(gy):
                for bx in range(gx):
                    lib.dslc_set_block(bx, by, gx, gy)
                    fn(*args)
            checked.add("generated")
        for o in k.outputs:
            want = values[o].astype(np.float64).reshape(views[o].shape)
            scale = max(float(np.max(np.abs(want))), 1e-6) if want.size else 1.0
            err = float(np.max(np.abs(views[o] - want))) / scale if want.size else 0.0
            assert err <= 1e-4, f"{name} {stage} {launch.function or k.nodes[0].op}: {o} relative error {err:.2e}"
    assert "generated" in checked and (stage == "infer" or len(checked) > 2), checked


def _sizes(launch, k, shape):
    node, ins = _library_op(launch, k)
    return node, [shape(i) for i in ins], shape(k.outputs[0])
