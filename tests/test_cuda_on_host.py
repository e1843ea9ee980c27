"""The CUDA kernels, generated and library, run on the host: their indexing and their size arguments.

No GPU runs here, so the CUDA module itself is compiled as host C++ (g++) with the CUDA
words defined away: `blockIdx`/`gridDim` are globals the test sets, every block has one
thread (blockDim.x = 1; `dslc_block_sum` of one thread is its value, its other shared
slots staying zero), so a launch is a loop over the grid. Each generated kernel of a
model's step is then called with the arguments the CUDA runner passes
(`Launch.arguments`: every buffer, then the dimensions it reads) on a grid from `Launch.grid`,
its inputs the NumPy reference's values of the same graph, and its outputs compared
with the reference's (helpers.check_cuda_on_host). This checks what a GPU run would: the
element and channel indexing, the block loops, and that sizes reach the kernels as
arguments, at sizes other than those the module was generated for (the text is the same
at every width). What it cannot check is concurrency: 256 threads in one block summing together.
"""
from __future__ import annotations

import numpy as np
import pytest

import dslc
from dslc.passes.pipeline import optimize
from dslc.stages import build
from helpers import CXX, MODELS, SAMPLES, check_cuda_on_host, samples_graph

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")

CASES = {  # model, sizes other than the file's defaults (the module is the same text at any)
    "small_cnn": {"width": 3, "hidden": 10}, "mlp_bn": {"h1": 9, "h2": 7}, "two_layer": {"hidden": 5},
    "lenet5": {}, "resnet20": {"n": 1, "width": 4}, "digits_cnn": {"width": 3},
    "norm_cnn": {"width": 6, "groups": 3, "hidden": 10},
}


@pytest.mark.parametrize("stage", ["train_step", "infer"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_and_library_kernels_match_the_reference(name, stage, tmp_path):
    """Every generated kernel, and every library launch (slice, pad, svm, norms, im2col and
    the GEMMs around it, pooling, losses) as runtime/cuda/ops.py binds it, with NumPy for
    CuPy: each launch on the reference's inputs, its output against the reference's."""
    graph = optimize(build(dslc.load(MODELS / f"{name}.net", **CASES[name]), stage))[0]
    assert check_cuda_on_host(graph, tmp_path)


def test_library_and_pointwise_kernels_of_every_op_sample_match_the_reference(tmp_path):
    """Every sample of an op the CUDA module runs as a library kernel (through the runner's
    ops.py) or as a pointwise loss loop, with its gradient, in one module."""
    from dslc.codegen.cuda_library import NEEDS
    from dslc.ops import registry
    wanted = [s for s in SAMPLES if s[0] in NEEDS or registry.get(s[0]).pointwise is not None]
    graph, feeds = samples_graph(wanted)
    assert check_cuda_on_host(optimize(graph)[0], tmp_path, feeds=feeds) >= len(wanted)


@pytest.mark.parametrize("shift", [0.0, 0.25])
def test_r2_of_a_constant_target_matches_the_reference(net, tmp_path, shift):
    """Targets all equal: no spread to explain, so 1 for an exact prediction, else 0 (the
    reference's rule, scikit-learn's force_finite), not 1 - R / 0."""
    path = net("model fit {\n    input p : f32[N, 2]\n    input y : f32[N, 2]\n"
               "    metric r2(p, y)\n    loss mse(p, y)\n}\n")
    graph = optimize(build(dslc.load(path), "typed"))[0]
    t = np.full((3, 2), 0.5, np.float32)
    assert check_cuda_on_host(graph, tmp_path, feeds={"p": t + shift, "y": t}) == 2
