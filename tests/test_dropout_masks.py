"""Dropout masks from Philox-4x32-10 (runtime/cpu/philox.py), the parallel kernel that fills
them (runtime/cpu/dropout_masks.py) and the runner that calls it.

- the rounds are Random123's (its known-answer vectors);
- the parallel Numba kernel and the NumPy twin the CUDA runner uses agree bit for bit, at
  sizes off every block and vector width, and write nothing past the mask;
- statistics: the keep rate within 5 binomial sigma, no correlation between neighbouring
  elements, between the masks of one step, of successive steps or of adjacent seeds, and
  the 24-bit uniform behind the mask even over 16 bins (read through masks at p = k/16);
- the runner: a mask is the twin's for seeds drawn from `rng` in buffer order, so the same
  generator state gives the same masks (in a fresh CompiledGraph too), `rng=None` is the
  graph's own generator, and masks passed in `randoms=` are used as given and draw no seed.

The thresholds are fixed seeds' outcomes, not flaky draws: each test passes or fails
every time. 5 sigma (and chi-square's 1e-6 tail) leave a correct generator far inside.
"""
from __future__ import annotations

import numpy as np
import pytest

import dslc
from dslc.runtime.cpu.dropout_masks import BLOCK, fill_mask
from dslc.runtime.cpu.philox import draw_seed, mask, philox
from dslc.runtime.cpu.runner import compile_graph
from dslc.stages import build
from helpers import MODELS, arrays

SIZES = [1, 7, 1000, 3 * 4 * BLOCK + 3, 98304 + 5]  # 4 * BLOCK elements per parallel task
EDGES = [4 * BLOCK, 4 * BLOCK + 1]  # the largest mask filled on the calling thread, the smallest threaded
SEEDS = [0, 12345, 2**63 + 11, 2**64 - 1]


def filled(n: int, dtype, seed, p: float, scale: float = 1.0) -> np.ndarray:
    out = np.empty(n, dtype)
    fill_mask(out, seed, p, scale)
    return out


@pytest.mark.parametrize("counter, key, want", [  # Random123 tests/kat_vectors, "philox4x32 10"
    ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
    ([0xffffffff] * 4, [0xffffffff] * 2, [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
    ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0],
     [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
])
def test_philox_known_answers(counter, key, want):
    assert [int(w) for w in philox(*map(np.uint64, counter + key))] == want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES + EDGES)
def test_numba_kernel_equals_numpy_twin(n, dtype):
    for seed, p, scale in zip(SEEDS, (0.1, 0.5, 0.7, 0.9), (10.0, 2.0, 1 / 0.7, 1 / 0.9)):
        got = filled(n, dtype, seed, p, scale)
        want = mask((n,), dtype, seed, p, scale)
        assert want.dtype == dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8)), (seed, p)
        assert set(np.unique(got)) <= {0, dtype(scale)}


def test_writes_only_its_mask():
    guard = np.full(4 * BLOCK + 13, -1.0, np.float32)
    fill_mask(guard[3:-3], 5, 0.5, 2.0)
    assert (guard[:3] == -1).all() and (guard[-3:] == -1).all() and (guard[3:-3] >= 0).all()


def test_keep_everything_or_nothing():
    assert (filled(1000, np.float32, 3, 1.0, 1.0) == 1).all()
    assert (filled(1000, np.float32, 3, 0.0, 1.0) == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("n", SIZES)
def test_keep_rate_is_binomial(n, p, dtype):
    rng = np.random.default_rng(1)
    draws = 200 if n < 100 else 4  # small masks: pool several seeds so the rate means something
    kept = sum(int(np.count_nonzero(filled(n, dtype, draw_seed(rng), p))) for _ in range(draws))
    trials = n * draws
    assert abs(kept - p * trials) <= 5 * np.sqrt(trials * p * (1 - p)) + 1, (kept, trials)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def test_neighbouring_elements_are_uncorrelated():
    n = 98304 + 5
    m = filled(n, np.float32, 77, 0.5)
    for lag in range(1, 9):  # within one counter's four words, and across counters
        assert abs(_correlation(m[:-lag], m[lag:])) < 5 / np.sqrt(n), lag


def test_masks_of_one_step_of_successive_steps_and_of_adjacent_seeds_are_uncorrelated():
    n, rng = 98304 + 5, np.random.default_rng(2)
    one, two, three = (filled(n, np.float32, draw_seed(rng), 0.5) for _ in range(3))
    pairs = {"one step": (one, two), "next step": (two, three),
             "seeds s, s+1": (filled(n, np.float32, 1000, 0.5), filled(n, np.float32, 1001, 0.5))}
    for what, (a, b) in pairs.items():
        assert abs(_correlation(a, b)) < 5 / np.sqrt(n), what


@pytest.mark.parametrize("seed", SEEDS)
def test_uniform_is_even_over_16_bins(seed):
    """An element is kept at p = k/16 when its uniform is below k/16, so the counts kept at
    successive k are the cumulative counts of the 16 bins."""
    n = 98304 + 5
    cumulative = [0] + [int(np.count_nonzero(filled(n, np.float64, seed, k / 16))) for k in range(1, 17)]
    counts = np.diff(cumulative)
    chi2 = float(((counts - n / 16) ** 2 / (n / 16)).sum())
    assert cumulative[-1] == n and chi2 < 56.5, (counts, chi2)  # chi-square(15 dof) exceeds 56.5 with p = 1e-6


# ---- the runner ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp():
    """mlp_bn's training-step graph (two dropout masks), its feeds and parameters."""
    graph = build(dslc.load(MODELS / "mlp_bn.net", h1=24, h2=10), "train_step")
    feeds, params, _ = arrays(graph, 5)
    return graph, feeds, params


def _compiled(mlp):
    """A fresh CompiledGraph whose `masks` are those its last run filled, copied as the step
    starts (the memory plan lets later buffers reuse a mask's bytes within the step)."""
    graph, feeds, params = mlp
    cg = compile_graph(graph, 5)
    cg.load_params(params)
    step, names = cg._step, [b.name for b in cg.kg.buffers if b.role == "random"]

    def capturing(*args):
        cg.masks = {k: cg.views[k].copy() for k in names}
        step(*args)

    cg._step = capturing
    return cg


def test_runner_mask_is_the_twin_of_seeds_drawn_in_buffer_order(mlp):
    cg = _compiled(mlp)
    cg.run(mlp[1], rng=np.random.default_rng(7))
    rng, buffers = np.random.default_rng(7), [b for b in cg.kg.buffers if b.role == "random"]
    assert len(buffers) == 2
    for b in buffers:
        got, attrs = cg.masks[b.name], dict(b.attrs)
        assert np.array_equal(got, mask(got.shape, got.dtype, draw_seed(rng), attrs["p"], attrs["scale"])), b.name


def test_same_generator_state_same_masks_and_each_step_new_ones(mlp):
    cg, fresh = _compiled(mlp), _compiled(mlp)
    assert fresh is not cg
    steps = []
    rng = np.random.default_rng(3)
    for _ in range(2):
        cg.run(mlp[1], rng=rng)
        steps.append(cg.masks)
    rng = np.random.default_rng(3)
    for want in steps:  # a fresh graph and a fresh generator of the same state: the same masks, step for step
        fresh.run(mlp[1], rng=rng)
        for name, m in fresh.masks.items():
            assert np.array_equal(m, want[name]), name
    for name in steps[0]:
        assert not np.array_equal(steps[0][name], steps[1][name]), name


def test_rng_none_is_the_graphs_own_generator(mlp):
    cg = _compiled(mlp)
    cg.run(mlp[1])
    own = cg.masks
    other = _compiled(mlp)
    other.run(mlp[1], rng=np.random.default_rng(0))  # CompiledGraph.rng starts as default_rng(0)
    assert all(np.array_equal(own[k], v) for k, v in other.masks.items())


def test_given_masks_are_used_as_given_and_draw_no_seed(mlp):
    cg = _compiled(mlp)
    names = [b.name for b in cg.kg.buffers if b.role == "random"]
    given = {k: np.full(cg.views[k].shape, 0.5, np.float32) for k in names}
    rng = np.random.default_rng(4)
    state = rng.bit_generator.state
    cg.run(mlp[1], randoms=given, rng=rng)
    assert rng.bit_generator.state == state
    assert all((cg.masks[k] == 0.5).all() for k in names)
    cg.run(mlp[1], randoms={names[0]: given[names[0]]}, rng=rng)  # the other draws the first seed
    got, attrs = cg.masks[names[1]], dict(cg.kg.buffer(names[1]).attrs)
    want = mask(got.shape, got.dtype, draw_seed(np.random.default_rng(4)), attrs["p"], attrs["scale"])
    assert (cg.masks[names[0]] == 0.5).all() and np.array_equal(got, want)
