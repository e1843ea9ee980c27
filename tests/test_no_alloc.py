"""A steady-state training step allocates nothing.

Three independent checks on the small CNN (Adam, batchnorm), the batchnorm MLP
(Nesterov momentum, dropout masks drawn every step) and the CNN with group, instance
and layer norm (momentum; the norms' scale gradient uses the shared workspace):
- identity: every output and parameter array is the same object, at the same address,
  step after step (the arena is planned once; nothing is re-bound);
- tracemalloc: NumPy reports every array it allocates to tracemalloc, so the peak of
  traced memory during a few steps, above what was live before them, must stay below
  SLACK: the few KiB of Python objects that calling ~30 compiled kernels makes and
  drops. Every hidden activation here is larger than that, so a temporary of any of them
  shows up, even one freed before the step returns;
- the generated kernels contain no allocating call (np.empty/zeros/ones/array, copy).
"""
from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest

import dslc
from dslc.passes.train_step import Optimizer
from dslc.runtime.cpu.runner import compile_graph
from dslc.stages import build
from helpers import MODELS, arrays

BATCH = 64
CASES = {
    "small_cnn": (dict(width=8, hidden=128), Optimizer("adam", lr=1e-3)),
    "mlp_bn": (dict(h1=128, h2=96), Optimizer("sgd", lr=0.1, momentum=0.9, nesterov=True)),
    # groupnorm, instancenorm and layernorm: library kernels, no NumPy fallback
    "norm_cnn": (dict(width=8, groups=2, hidden=96), Optimizer("sgd", lr=0.1, momentum=0.9)),
}
SLACK = 16 * 1024  # bytes
ALLOCATING = re.compile(r"np\.(empty|zeros|ones|array|asarray|copy|concatenate)\b|\.copy\(\)|\.flatten\(\)")


@pytest.fixture(scope="module", params=sorted(CASES))
def compiled(request):
    overrides, opt = CASES[request.param]
    graph = build(dslc.load(MODELS / f"{request.param}.net", **overrides), "train_step", opt)
    feeds, params, _ = arrays(graph, BATCH)
    cg = compile_graph(graph, BATCH)
    cg.load_params(params)
    rng = np.random.default_rng(0)
    for _ in range(2):  # compile and warm up
        cg.run(feeds, rng=rng)
    return cg, feeds, rng


def test_no_fallbacks(compiled):
    cg, _, _ = compiled
    assert cg.fallbacks == ()


def test_outputs_and_parameters_keep_their_memory(compiled):
    cg, feeds, rng = compiled
    before = {k: (id(v), v.ctypes.data) for k, v in cg.run(feeds, rng=rng).items()}
    views = {k: (id(v), v.ctypes.data) for k, v in cg.views.items()}
    for _ in range(3):
        out = cg.run(feeds, rng=rng)
        assert {k: (id(v), v.ctypes.data) for k, v in out.items()} == before
    assert {k: (id(v), v.ctypes.data) for k, v in cg.views.items()} == views


def test_steady_state_step_allocates_no_arrays(compiled):
    cg, feeds, rng = compiled
    hidden = [v.nbytes for b in cg.kg.buffers if b.type.rank >= 2 and not isinstance(b.shape[0], int)
              and b.role != "input" and (v := cg.views[b.name]).size // v.shape[0] > 10]  # logits excepted
    assert min(hidden) > SLACK  # every hidden activation is big enough to be seen
    tracemalloc.start()
    try:
        cg.run(feeds, rng=rng)
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(3):
            cg.run(feeds, rng=rng)
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < SLACK, f"a step allocated {peak - base} bytes at its peak"
    assert now - base < 4096, f"{now - base} bytes stayed allocated after 3 steps"


def test_the_check_catches_an_allocating_step(compiled):
    """The same measurement sees a kernel that makes a temporary array."""
    cg, feeds, rng = compiled
    calls = cg._calls  # the driver's calls, bound to the arena after the first run (bound_calls.py)
    assert calls is not None
    first = cg._args[0]
    # then one temporary the size of the first buffer
    cg._calls = calls + [(lambda a: np.copyto(a, a * 1.0), (first,))]
    try:
        tracemalloc.start()
        cg.run(feeds, rng=rng)
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        cg.run(feeds, rng=rng)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        cg._calls = calls
    assert peak - base >= first.nbytes


def test_generated_kernels_make_no_arrays(compiled):
    cg, _, _ = compiled
    source = cg.path.read_text()
    assert not ALLOCATING.findall(source)
