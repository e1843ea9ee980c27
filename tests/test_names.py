"""A model's names never meet the words generated code writes itself, in either language.

Generated kernels name their arguments and locals after the model's parameters and
layers. A parameter called `c` once collided with a loop index of the Numba generator,
and `blockIdx` with CUDA's. The fix is a mangling scheme (dslc/codegen/source.Namer):
every name made from a model's ends in `_`, a kernel's starts with `k_`, and nothing
else in generated code does. These tests name parameters and layers after Python's and
CUDA C++'s keywords and builtins and after every word the generators write (computed
from their output, so a new loop variable is covered the day it appears), then check
each compiled step against the NumPy reference: Numba on the CPU, the CUDA module as
host C++ (helpers.check_cuda_on_host).
"""
from __future__ import annotations

import builtins
import keyword
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

import dslc
from dslc import reference
from dslc.codegen.cuda_gpu import generate as cuda_module
from dslc.codegen.numba_cpu import generate as numba_module
from dslc.kernels import lower
from dslc.passes.pipeline import optimize
from dslc.passes.train_step import Optimizer
from dslc.runtime.cpu.runner import compile_graph
from dslc.stages import build
from helpers import CXX, MODELS, TOL, arrays, check_cuda_on_host, run_cli

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

# C++ and CUDA words a kernel could meet: keywords, CUDA's built-in variables and
# intrinsics, math functions, and macros of the headers a module includes.
CUDA_WORDS = """alignas alignof asm auto bool break case catch char char16_t char32_t class const constexpr
const_cast continue decltype default delete do double dynamic_cast else enum explicit export extern false
float for friend goto if inline int long mutable namespace new noexcept nullptr operator private protected
public register reinterpret_cast return short signed sizeof static static_assert static_cast struct switch
template this thread_local throw true try typedef typeid typename union unsigned using virtual void volatile
wchar_t while blockIdx threadIdx blockDim gridDim warpSize __syncthreads __shared__ __global__ __device__
atomicAdd dim3 exp expm1 log log1p sqrt rsqrt erf tanh pow fmin fmax fabs floor ceil round isnan isinf abs
max min NULL NAN INFINITY EOF errno assert size_t std""".split()

# The words of generated code that are not a model's: a model's end in `_`, a kernel's start with `k_`.
_OWN = re.compile(r"[A-Za-z_]\w*")


def generator_words() -> set[str]:
    """Every identifier the two generators write themselves (loop indices, accumulators,
    library functions, macros) for models with convolutions, batchnorm sweeps, reductions
    and two optimizers' update groups."""
    words: set[str] = set()
    for name, sizes in (("small_cnn", {"width": 3, "hidden": 10}), ("mlp_bn", {"h1": 9, "h2": 7})):
        for opt in (Optimizer("adam", lr=1e-3), Optimizer("sgd", lr=0.1, momentum=0.9)):
            kg = lower(optimize(build(dslc.load(MODELS / f"{name}.net", **sizes), "train_step", opt))[0])
            for src in (cuda_module(kg).source, numba_module(kg)):
                code = re.sub(r"(#|//)[^\n]*|'[^'\n]*'", "", src)  # comments and ARGS' strings
                words |= {w for w in _OWN.findall(code) if not w.endswith("_") and not w.startswith("k_")}
    return words


# Names the .net language itself takes: statement keywords, literals, the training step's
# own inputs (E0406), and the template's names below.
LANGUAGE = {"input", "param", "output", "metric", "loss", "return", "repeat", "as", "true", "false", "lr", "step",
            "opt", "x", "y", "W", "h", "z", "s"}
WORDS = sorted({w for w in set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | set(CUDA_WORDS)
                | generator_words() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", w)} - LANGUAGE)

TEMPLATE = """
model m {{
    input x : f32[N, 4]
    input y : i64[N]
    param W : f32[4, 10] = kaiming()
    param {0} : f32[10] = zeros()
    param {1} : f32[10, 10] = kaiming()
    {2}: h = relu(x @ W + {0})
    {3}: z = h @ {1} |> batchnorm
    {4}: s = sum(z * z)
    loss cross_entropy(z, y) + 0.01 * l2(weights) + 0.001 * s
}}
"""


def _check_both(names, tmp_path) -> None:
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "m.net"
    path.write_text(TEMPLATE.format(*names))
    graph = build(dslc.load(path), "train_step", Optimizer("adam", lr=1e-3))
    feeds, params, _ = arrays(graph, 5)
    want = reference.run_outputs(graph, feeds, params)
    got = compile_graph(graph, 5).run(feeds, params)
    for key, w in want.items():
        err = float(np.max(np.abs(got[key] - w))) / max(float(np.max(np.abs(w))), 1e-6)
        assert err <= TOL, f"names {names}: {key} relative error {err:.2e}"
    if CXX is not None:  # a folder per example: a library loaded once is not reloaded from the same path
        assert check_cuda_on_host(optimize(graph)[0], Path(tempfile.mkdtemp(dir=tmp_path)), batch=5)


def test_the_generators_words_are_found():
    words = generator_words()
    assert {"i", "n", "c", "acc", "range", "prange", "blockIdx", "DSLC_FOR", "dslc_block_sum"} <= words
    assert not any(w.endswith("_") for w in words)


def test_names_from_the_issue_compile_and_match_the_reference(tmp_path):
    _check_both(["c", "acc", "range", "i", "blockIdx"], tmp_path)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(WORDS), min_size=5, max_size=5, unique=True))
def test_parameters_and_layers_named_after_any_reserved_word(tmp_path, names):
    _check_both(names, tmp_path)


SIX_LINES = """
model m {
    input x : f32[N, 4]
    input y : i64[N]
    param W : f32[4, 3] = kaiming()
    param c : f32[3] = zeros()
    loss cross_entropy(x @ W + c, y)
}
train m {
    data = csv("points.csv", label="y")
    epochs = 3
}
"""


def test_the_issue_model_with_a_param_named_c_compiles_and_trains(tmp_path, capsys):
    """The six-line model of the issue: `dslc compile` and `dslc train` once ended in a traceback."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 4))
    y = np.argmax(x[:, :3], axis=1)
    (tmp_path / "points.csv").write_text("a,b,c,d,y\n" + "".join(f"{','.join(map(str, r))},{k}\n"
                                                                  for r, k in zip(x, y)))
    (tmp_path / "m.net").write_text(SIX_LINES.replace("points.csv", str(tmp_path / "points.csv")))
    code, out, _ = run_cli(capsys, "compile", tmp_path / "m.net", "--stage", "train_step", "--emit", tmp_path)
    assert code == 0 and "c_" in (tmp_path / "m_train_step.py").read_text()
    code, out, _ = run_cli(capsys, "train", tmp_path / "m.net", "--out", tmp_path / "run")
    assert code == 0 and "trained 3 epochs" in out
