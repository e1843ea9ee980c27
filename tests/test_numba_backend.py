"""The Numba CPU backend against the NumPy reference: models, every op's samples, edge cases.

Each case compiles an unoptimised graph with `compile_graph` (which optimises, lowers,
plans and generates it) and compares every output (loss, metrics, gradients, updated
parameters and optimizer state) with `dslc.reference.run_outputs` on the same graph:
|got - want| <= 1e-4 * max|want| per output, in float32. Optimizer state starts
non-zero so Adam's first step is not the ill-conditioned g/|g|, and dropout masks are
fixed so both sides draw the same. Compiled kernels are cached (DSLC_CACHE), so only
the first run of this file pays Numba's compile time; the model cases are marked slow.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import dslc
from dslc import reference
from dslc.passes.train_step import Optimizer
from dslc.kernels.memory_plan import ALIGN
from dslc.runtime.cpu.runner import aligned_zeros, compile_graph
from dslc.stages import build
from helpers import (CXX, HOST_FALLBACKS, MODELS, SAMPLES, SMALL, TOL, TOO_BIG, arrays, check_cuda_on_host,
                     feeds_for, op_graph, relative_error)



def check(graph, batch: int, seed: int = 0):
    """Compile `graph`, run it once, compare every output with the reference; the CompiledGraph."""
    feeds, params, randoms = arrays(graph, batch, seed)
    want = reference.run_outputs(graph, feeds, params, randoms=randoms)
    cg = compile_graph(graph, batch)
    got = cg.run(feeds, params, randoms=randoms)
    for key, w in want.items():
        g = got[key]
        assert g.shape == w.shape, f"{key}: shape {g.shape}, reference {w.shape}"
        err = relative_error(g, w)
        assert err <= TOL, f"{graph.name} {graph.stage} {key}: relative error {err:.2e} > {TOL}"
    return cg


def _models():
    """Every model in models/ but the three at 224x224 with fixed widths (TOO_BIG), which
    test_full_size_model_matches_reference checks at their own sizes."""
    return [pytest.param(p.stem, marks=[pytest.mark.slow], id=p.stem)
            for p in sorted(MODELS.glob("*.net")) if p.stem not in TOO_BIG]


@pytest.mark.parametrize("stage", ["train_step", "infer"])
@pytest.mark.parametrize("name", _models())
def test_model_matches_reference(name, stage):
    model = dslc.load(MODELS / f"{name}.net", **SMALL.get(name, {}))
    cg = check(build(model, stage), batch=3)
    assert not [cg.kernels[p].name for p in cg.fallbacks], "kernels fell back to the NumPy references"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train_step", "infer"])
@pytest.mark.parametrize("name", sorted(TOO_BIG))
def test_full_size_model_matches_reference(name, stage):
    """alexnet, resnet18 and vgg16 at their own sizes (224x224 images, two of them), with
    their initialisers' weights: the 0.1 * N(0, 1) draws of `arrays` blow a deep network
    without batchnorm up to 1e7. Each output is within 1e-4 of the reference, or within ten
    times the most the reference itself moves when its images move by one part in a million
    (three random moves): deep in such a network a max pool's winner or a ReLU's gate flips
    at float32 rounding, and the compiled step's sums round differently (Winograd, blocked
    GEMMs). One move can miss the gate that flips: resnet18's step updates output channel 85
    of layer3.basic.conv1.weight by 1.3e-4 (relative) differently under four of six moves,
    by 2.7e-6 under the other two, and the compiled step lands on the flipped side, off in
    that channel only. Measured: VGG-16's step moves by up to 2.1e-4 and differs from the
    compiled one by as much (with seed 1 instead of 0, by 3.6e-7); every other output is
    within 1e-4. A wrong kernel is off by far more than either, in every channel."""
    model = dslc.load(MODELS / f"{name}.net")
    graph = build(model, stage)
    feeds, params, randoms = arrays(graph, 2)
    params.update({k: v.astype(np.float32) for k, v in model.init(0).items() if k in params})
    want = reference.run_outputs(graph, feeds, params, randoms=randoms)
    cg = compile_graph(graph, 2)
    got = cg.run(feeds, params, randoms=randoms)
    assert cg.fallbacks == ()
    moves: list = []  # the moved references, run only when an output is off by more than TOL
    for key, w in want.items():
        assert got[key].shape == w.shape, f"{key}: shape {got[key].shape}, reference {w.shape}"
        err = relative_error(got[key], w)
        if err <= TOL:
            continue
        moves = moves or [reference.run_outputs(graph, dict(feeds, image=(feeds["image"] * (
            1 + 1e-6 * np.random.default_rng(seed).standard_normal(feeds["image"].shape))).astype(np.float32)),
            params, randoms=randoms) for seed in (1, 2, 3)]
        noise = max(relative_error(moved[key], w) for moved in moves)
        assert err <= 10 * noise, f"{name} {stage} {key}: relative error {err:.2e}, the reference's own {noise:.2e}"


@pytest.mark.parametrize("opt", [Optimizer("sgd", lr=0.1, momentum=0.9, nesterov=True),
                                 Optimizer("adam", lr=1e-3, weight_decay=0.01), Optimizer("rmsprop", lr=1e-3),
                                 Optimizer("adagrad", lr=1e-2)], ids=["nesterov", "adamw", "rmsprop", "adagrad"])
def test_every_optimizer_step_matches_reference(opt):
    model = dslc.load(MODELS / "two_layer.net", hidden=12)
    check(build(model, "train_step", opt), batch=5)


@pytest.mark.parametrize("t", [1, 1000])
def test_float32_adam_step_is_within_float32_rounding_of_the_float64_rule(t):
    """A float32 update computes in float32 (numba_loops._chain), but Adam's bias corrections
    1 / (1 - beta ** t) in float64 first: in float32, 1 - 0.999 loses 1.3e-5 of itself to
    cancellation, 6.5e-6 of every step at t = 1. From w = 0 the new parameter is the step
    itself; m, v and g are positive, so no moving average cancels either."""
    from dslc.ir.builder import GraphBuilder
    from dslc.ir.graph import Output
    from dslc.ir.types import TensorType
    b, size = GraphBuilder(), 4096
    w, m, v, g = (b.source(k, "input", TensorType("f32", (size,))) for k in "wmvg")
    lr, step = (b.source(k, "input", TensorType("f32", ())) for k in ("lr", "step"))
    m1 = b.add("moving_average", [m, g], {"decay": 0.9, "square": False})
    v1 = b.add("moving_average", [v, g], {"decay": 0.999, "square": True})
    w1 = b.add("adam_step", [w, m1, v1, lr, step], {})
    graph = b.graph("adam", [Output("param", "w", w1), Output("state", "m", m1), Output("state", "v", v1)],
                    "train_step")
    rng = np.random.default_rng(0)
    feeds = {"w": np.zeros(size, np.float32), "m": (1e-3 * rng.random(size)).astype(np.float32),
             "v": (1e-6 * rng.random(size)).astype(np.float32), "g": (1e-3 * rng.random(size)).astype(np.float32),
             "lr": np.float32(1e-3), "step": np.float32(t)}
    got = compile_graph(graph, 1).run(feeds, {})[("param", "w")]
    m64, g64 = feeds["m"].astype(np.float64), feeds["g"].astype(np.float64)
    v64 = 0.999 * feeds["v"] + 0.001 * g64 * g64
    want = -float(feeds["lr"]) * (0.9 * m64 + 0.1 * g64) / (1 - 0.9 ** t) / (np.sqrt(v64 / (1 - 0.999 ** t)) + 1e-8)
    assert np.max(np.abs(got - want) / np.abs(want)) < 1e-6


@pytest.mark.parametrize("batch", [1, 5])
def test_group_instance_and_layer_norm_train_compiled_within_tolerance(batch):
    """models/norm_cnn.net (groupnorm, instancenorm, layernorm) at sizes other than the file's,
    3 groups of 2 channels: library kernels only, the step within 1e-4 of the reference, and
    the same again after a parameter update (statistics recomputed, workspace reused)."""
    model = dslc.load(MODELS / "norm_cnn.net", width=6, groups=3, hidden=10)
    graph = build(model, "train_step", Optimizer("adam", lr=1e-3))
    cg = check(graph, batch=batch)
    assert cg.fallbacks == ()
    ops = {n.op for k in cg.kernels for n in k.covers()}
    assert {"groupnorm", "instancenorm", "layernorm", "groupnorm_grad_input", "groupnorm_grad_gamma"} <= ops
    check(graph, batch=batch, seed=1)


def test_slice_and_pad_of_any_rank_and_a_negative_start():
    """slice with a negative start and a step on the last axis of a 3-D tensor, pad on two
    axes of it with a border value: library kernels (runtime/cpu/slicing.py), no fallback."""
    from dslc.ir.builder import GraphBuilder
    from dslc.ir.graph import Output
    from dslc.ir.types import TensorType
    b = GraphBuilder()
    x = b.source("x", "input", TensorType("f32", (2, 5, 9)))
    s = b.add("slice", [x], {"axis": -1, "start": -7, "stop": None, "step": 3})
    p = b.add("pad", [s], {"pads": (0, 0, 2, 1, 1, 3), "value": -1.5})
    graph = b.graph("shapes", [Output("output", "p", p)], "typed")
    x_value = np.arange(90, dtype=np.float32).reshape(2, 5, 9)
    cg = compile_graph(graph, 1)
    assert cg.fallbacks == ()
    want = np.pad(x_value[:, :, -7::3], ((0, 0), (2, 1), (1, 3)), constant_values=-1.5)
    np.testing.assert_array_equal(cg.run({"x": x_value}, {})["output", "p"], want)


@pytest.mark.parametrize("axis, first, step", [(3, 0, 2), (3, 1, 3), (2, 1, 2), (0, 1, 1)])
def test_slice_kernels_match_numpy_on_every_axis(axis, first, step):
    """slicing.slice_forward and slice_backward, the last axis (one element a run, flat
    indices) and the others (runs of the axes after it), against NumPy's slicing."""
    from dslc.runtime.cpu import slicing
    x = np.random.default_rng(axis).standard_normal((3, 4, 5, 7)).astype(np.float32)
    at = (slice(None),) * axis + (slice(first, None, step),)
    out = np.full(x[at].shape, np.nan, np.float32)
    slicing.slice_forward(x, out, axis, first, step)
    np.testing.assert_array_equal(out, x[at])
    dx, want = np.full(x.shape, np.nan, np.float32), np.zeros_like(x)
    want[at] = out
    slicing.slice_backward(out, dx, axis, first, step)
    np.testing.assert_array_equal(dx, want)


def test_batch_of_one_and_odd_sizes():
    model = dslc.load(MODELS / "mlp_bn.net", h1=7, h2=5)
    check(build(model, "infer"), batch=1)
    check(build(model, "train_step"), batch=7)


def test_every_buffer_and_thread_slot_starts_on_a_cache_line():
    """The arena, so every buffer the memory plan places at a multiple of ALIGN in it, and each
    thread's row of the workspace and scratch start on an ALIGN boundary: NumPy's own large
    arrays start 16 bytes past one, where two threads' bands of an output share a line."""
    cg = compile_graph(build(dslc.load(MODELS / "small_cnn.net"), "train_step"), 3)
    assert cg.arena.size == cg.plan.arena_bytes
    starts = [v.ctypes.data for v in cg.views.values()]
    starts += [row.ctypes.data for row in (*cg.workspace, *cg.scratch)]
    assert all(at % ALIGN == 0 for at in starts)
    slots = aligned_zeros((3, 5), np.float32)  # a slot is rounded up to whole ALIGN blocks
    assert slots.shape == (3, ALIGN // 4) and not slots.any() and all(r.ctypes.data % ALIGN == 0 for r in slots)


def test_an_arena_no_machine_can_address_is_out_of_memory():
    """A model whose every tensor fits a 64-bit machine (E0315) may still need an arena beyond
    one at its batch: upsample(scale=2**26) of 8x8 images at batch 8 is 2**63 bytes. NumPy
    refuses that with a ValueError, which `dslc train` showed as a traceback; it is the
    MemoryError the CLI reports in one line ('dslc: error: out of memory: ...', exit 1)."""
    with pytest.raises(MemoryError, match="Unable to allocate 8 EiB"):
        aligned_zeros(2**63, np.uint8)
    with pytest.raises(MemoryError, match="Unable to allocate 8 EiB"):
        aligned_zeros((4, 2**59), np.float32)



@pytest.mark.slow
def test_batchnorm_sweeps_over_rows_in_channel_blocks():
    """Batchnorm over [N, C] runs by rows in blocks of ROWS_BLOCK channels, with its
    per-channel values in float64 scratch: a partial last block (70 = 64 + 6 channels) and,
    at 1100 channels, the parallel loop dealing blocks to the scratch's rows (one per thread)."""
    from dslc.codegen.numba_sweep import ROWS_BLOCK
    model = dslc.load(MODELS / "mlp_bn.net", h1=1100, h2=70)
    cg = check(build(model, "train_step", Optimizer("adam", lr=1e-3)), batch=5)
    source = cg.path.read_text()
    assert source.count("slots = scratch[p]") == 4  # 2 layers, forward and backward
    assert "for p in prange(scratch.shape[0]):" in source and "for p in range(1):" in source
    assert cg.scratch.shape[1] >= ROWS_BLOCK and cg.scratch.dtype == np.float64
    # Per-channel terms (gamma / sqrt(var + eps), 1 / count) are computed once per channel,
    # in the loops over a block's channels, not at every element of the (n, c) loops.
    elements = re.findall(r"\n( +)for n in range\(.*\):\n((?:\1 .*\n)+)", source)
    assert len(elements) >= 8 and "h_[cc] = " in source
    for _, body in elements:
        assert "math.sqrt" not in body and " / " not in body, body
        # indexed by cc alone (row views of the block), which Numba knows is not negative:
        # no wrap-around test per access, and the loop vectorises
        assert "for cc in range(hi - lo):" in body and "[n, c]" not in body and "[c]" not in body, body


@pytest.mark.parametrize("name,k,sample", [s for s in SAMPLES if s[0] not in ("dropconnect",)],
                         ids=[f"{n}-{k}" for n, k, _ in SAMPLES if n not in ("dropconnect",)])
def test_op_sample_matches_reference(name, k, sample):
    graph, types, domain = op_graph(name, sample)
    feeds = {f"x{i}": v for i, v in enumerate(feeds_for(types, domain))}
    if "r" in graph:
        feeds["r"] = np.random.default_rng(1).standard_normal(graph["r"].type.bind({})).astype(np.float32)
    want = reference.run_outputs(graph, feeds, {})
    cg = compile_graph(graph, 1)
    got = cg.run(feeds, {})
    for key, w in want.items():
        err = relative_error(got[key], w)
        assert err <= TOL, f"{name}: {key} relative error {err:.2e}"
    fell = {n.op for p in cg.fallbacks for n in cg.kernels[p].covers()} - HOST_FALLBACKS
    assert not fell, f"{name}: {sorted(fell)} ran on the NumPy references, not as kernels"


@pytest.mark.parametrize("geometry", [dict(kernel=3, stride=2, pad=1, dilation=1, groups=1),
                                      dict(kernel=(2, 3), stride=(2, 1), pad="same", dilation=(1, 2), groups=2),
                                      dict(kernel=1, stride=1, pad=0, dilation=1, groups=4),
                                      dict(kernel=3, stride=3, pad="valid", dilation=2, groups=1)],
                         ids=["s2p1", "same-dilated-groups", "1x1-depthwise", "valid-dilated"])
def test_convolution_geometries(net, geometry):
    args = ", ".join(f"{k}={v if not isinstance(v, tuple) else list(v)}" for k, v in geometry.items())
    path = net(f"""
model m() {{
    input image : f32[N, 4, 9, 7]
    input label : i64[N]
    x = image |> conv2d(4, {args}) |> relu |> maxpool(2, stride=1, pad=1) |> avgpool(2) |> flatten
    logits = x |> linear(10)
    loss cross_entropy(logits, label)
}}""")
    model = dslc.load(path)
    check(build(model, "train_step", Optimizer("sgd", lr=0.1, momentum=0.9)), batch=3)


def test_a_residual_that_reads_the_convolutions_own_input(net, tmp_path):
    """relu(x + conv2d(x)): the convolution's epilogue reads x in its loop as well as in the
    library call before it. Its index map was "host" (the call's alone), so both generators
    found no value for x in the loop (a KeyError at compile, for any such residual)."""
    path = net("""
model m() {
    input image : f32[N, 4, 6, 6]
    input label : i64[N]
    x = image |> conv2d(4, kernel=3, pad=1) |> relu
    y = relu(x + (x |> conv2d(4, kernel=3, pad=1, bias=false) |> batchnorm))
    z = y + (y |> conv2d(4, kernel=3, pad=1))
    logits = z |> flatten |> linear(10)
    loss cross_entropy(logits, label)
}""")
    graph = build(dslc.load(path), "train_step", Optimizer("sgd", lr=0.1))  # its forward's epilogues too
    check(graph, batch=3)
    if CXX is not None:
        from dslc.passes.pipeline import optimize
        assert check_cuda_on_host(optimize(graph)[0], tmp_path)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log")  # the reference's log(1 - 1.0)
def test_a_sweep_reads_back_the_value_it_stores(net):
    """bce(sigmoid(x), t) with the sigmoid saturated: sigmoid(30) is 1.0 in float32, and the
    loss reads that 1.0 (log(1 - p) clamped at -100). The sweep computing sigmoid and 1 - p
    (a gradient term) had taken 1 - p from the double 1 - 9e-14 (log: -30), so d loss / dt
    was -10.0 where the loss computed has -100 / 3; it now reads p as stored, as the reference."""
    m = dslc.load(net("model m {\n input x : f32[N, 3]\n input t : f32[N, 3]\n loss bce(sigmoid(x), t)\n}"))
    feeds = {"x": np.array([[30.0, -30.0, 0.5]], np.float32), "t": np.array([[0.3, 0.6, 0.2]], np.float32)}
    want_loss, want = m.compile("reference").grad({}, feeds, wrt=["x", "t"])
    loss, got = m.compile("cpu").grad({}, feeds, wrt=["x", "t"])
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert want["t"][0, 0] == pytest.approx((-100.0 - 0.0) / 3, rel=1e-6)  # (log(1 - p) - log p) / count, clamped
    for name in ("x", "t"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7)


def test_a_reduce_over_broadcast_inputs_is_generated_by_both_backends():
    """sum(x * y, axis=1) with x [3, 1], y [1, 4]: no input has the loop's shape, so each
    extent is read from an input that has it (once a Numba-only fallback, now one emitter)."""
    from dslc.codegen.cuda_gpu import generate
    from dslc.ir.builder import GraphBuilder
    from dslc.ir.graph import Output
    from dslc.ir.types import TensorType
    from dslc.kernels import lower
    from dslc.passes.pipeline import optimize
    b = GraphBuilder()
    x = b.source("x", "input", TensorType("f32", (3, 1)))
    y = b.source("y", "input", TensorType("f32", (1, 4)))
    graph = b.graph("bc", [Output("output", "s", b.add("sum", [b.add("mul", [x, y])], {"axis": (1,)}))], "typed")
    assert generate(lower(optimize(graph)[0])).fallbacks == ()
    feeds = {"x": np.arange(3, dtype=np.float32).reshape(3, 1), "y": np.arange(1, 5, dtype=np.float32).reshape(1, 4)}
    cg = compile_graph(graph, 1)
    assert cg.fallbacks == ()
    np.testing.assert_allclose(cg.run(feeds, {})["output", "s"], [0.0, 10.0, 20.0])


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 5, 7)])
def test_a_value_per_row_broadcast_runs_over_rows(shape):
    """relu(x * s) with s one value per index of axis 0 ([N, 1, 1, 1], as a batchnorm's scale
    folded into a convolution's [O, C, 3, 3] weights is): the `rows` loop form (numba_loops:
    the output seen as [d0, rest], s loaded once per row), exact against NumPy."""
    from dslc.codegen.numba_cpu import generate
    from dslc.ir.builder import GraphBuilder
    from dslc.ir.graph import Output
    from dslc.ir.types import Sym, TensorType
    from dslc.kernels import lower
    from dslc.passes.pipeline import optimize
    b = GraphBuilder()
    x = b.source("x", "input", TensorType("f32", (Sym.of("N"),) + shape[1:]))
    s = b.source("s", "input", TensorType("f32", (Sym.of("N"),) + (1,) * (len(shape) - 1)))
    graph = b.graph("rows", [Output("output", "y", b.add("relu", [b.add("mul", [x, s])]))], "typed")
    src = generate(lower(optimize(graph)[0]))
    assert "x_r_[i0, i1]" in src and "s_f_[i0]" in src
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal(shape).astype(np.float32),
             "s": rng.standard_normal((shape[0],) + (1,) * (len(shape) - 1)).astype(np.float32)}
    cg = compile_graph(graph, shape[0])
    assert cg.fallbacks == ()
    np.testing.assert_array_equal(cg.run(feeds, {})["output", "y"], np.maximum(feeds["x"] * feeds["s"], 0))
