"""The CUDA backend on a GPU against the NumPy reference: models, optimizers, every op's samples.

Marked `gpu`: skipped unless CuPy imports and sees a CUDA device (run `pytest -m gpu`
on a machine with one). The cases mirror tests/test_numba_backend.py and reuse its
inputs: every output (loss, metrics, gradients, updated parameters and optimizer state)
within |got - want| <= 1e-4 * max|want| of `dslc.reference.run_outputs`, in float32.

The trainer's side: `executor_for("gpu")` gives the CUDA executor, whose steps
keep the parameters on the GPU and match the reference executor's; digits_mlp trained
with --device gpu reaches the CPU's test accuracy within a point; a checkpoint written
from GPU parameters loads and evaluates on the CPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import dslc
from dslc import reference
from dslc.cli import main
from dslc.passes.train_step import Optimizer
from dslc.stages import build
from helpers import MODELS, SAMPLES, SMALL, TOL, TOO_BIG, arrays, feeds_for, op_graph, relative_error


def _gpu_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpu_available(), reason="needs CuPy and a CUDA GPU")]


def compare(graph, batch: int, feeds, params, randoms=None):
    """Run `graph` on the GPU; every output within TOL of the reference. The GpuGraph."""
    import cupy

    from dslc.runtime.cuda.runner import compile_graph
    want = reference.run_outputs(graph, feeds, params, randoms=randoms)
    gg = compile_graph(graph, batch)
    got = gg.run(feeds, params, randoms=randoms)
    for key, w in want.items():
        g = cupy.asnumpy(got[key])
        assert g.shape == w.shape, f"{key}: shape {g.shape}, reference {w.shape}"
        err = relative_error(g, w)
        assert err <= TOL, f"{graph.name} {graph.stage} {key}: relative error {err:.2e} > {TOL}"
    return gg


def check(graph, batch: int, seed: int = 0):
    feeds, params, randoms = arrays(graph, batch, seed)
    return compare(graph, batch, feeds, params, randoms)


def _models():
    return [pytest.param(p.stem, id=p.stem, marks=[pytest.mark.skip(reason=TOO_BIG[p.stem])] if p.stem in TOO_BIG
                         else []) for p in sorted(MODELS.glob("*.net"))]


@pytest.mark.parametrize("stage", ["train_step", "infer"])
@pytest.mark.parametrize("name", _models())
def test_model_matches_reference(name, stage):
    model = dslc.load(MODELS / f"{name}.net", **SMALL.get(name, {}))
    check(build(model, stage), batch=3)


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_big_model_infers(name):
    """The two 224x224 models at batch 1, inference only (the reference takes a while)."""
    check(build(dslc.load(MODELS / f"{name}.net"), "infer"), batch=1)


@pytest.mark.parametrize("opt", [Optimizer("sgd", lr=0.1, momentum=0.9, nesterov=True),
                                 Optimizer("adam", lr=1e-3, weight_decay=0.01), Optimizer("rmsprop", lr=1e-3),
                                 Optimizer("adagrad", lr=1e-2)], ids=["nesterov", "adamw", "rmsprop", "adagrad"])
def test_every_optimizer_step_matches_reference(opt):
    check(build(dslc.load(MODELS / "two_layer.net", hidden=12), "train_step", opt), batch=5)


def test_odd_batch_sizes_and_a_large_batch():
    """Grid-stride loops and chunked convolutions at sizes that do not divide the block."""
    model = dslc.load(MODELS / "mlp_bn.net", h1=7, h2=5)
    check(build(model, "infer"), batch=1)
    check(build(model, "train_step"), batch=7)
    check(build(dslc.load(MODELS / "small_cnn.net", **SMALL["small_cnn"]), "train_step"), batch=130)


@pytest.mark.parametrize("name,k,sample", [s for s in SAMPLES if s[0] not in ("dropconnect",)],
                         ids=[f"{n}-{k}" for n, k, _ in SAMPLES if n not in ("dropconnect",)])
def test_op_sample_matches_reference(name, k, sample):
    graph, types, domain = op_graph(name, sample)
    feeds = {f"x{i}": v for i, v in enumerate(feeds_for(types, domain))}
    if "r" in graph:
        feeds["r"] = np.random.default_rng(1).standard_normal(graph["r"].type.bind({})).astype(np.float32)
    compare(graph, 1, feeds, {})


def test_norms_over_groups_larger_than_a_block():
    """groupnorm, instancenorm and layernorm whose groups hold more elements than a block has
    threads (256): every thread sums a share and the block adds them (dslc_block_sum)."""
    model = dslc.load(MODELS / "norm_cnn.net", width=40, groups=5, hidden=300)
    check(build(model, "train_step", Optimizer("sgd", lr=0.1, momentum=0.9)), batch=6)


def test_parameters_stay_on_the_gpu_across_steps():
    """Two steps in a row equal two reference steps; params() is a host copy."""
    import cupy
    graph = build(dslc.load(MODELS / "digits_mlp.net", **SMALL["digits_mlp"]), "train_step")
    feeds, params, randoms = arrays(graph, 4)
    from dslc.runtime.cuda.runner import compile_graph
    gg = compile_graph(graph, 4)
    gg.load_params(params)
    want = dict(params)
    for _ in range(2):
        gg.run(feeds, randoms=randoms)
        out = reference.run_outputs(graph, feeds, want, randoms=randoms)
        want.update({name: v for (kind, name), v in out.items() if kind in ("param", "state")})
    got = gg.params()
    assert all(isinstance(v, np.ndarray) and not isinstance(v, cupy.ndarray) for v in got.values())
    for name, w in want.items():
        assert np.max(np.abs(got[name] - w)) <= TOL * max(float(np.max(np.abs(w))), 1e-6), name


# ---- the executor and the trainer --------------------------------------------------------

def test_executor_for_gpu_is_the_cuda_executor_and_auto_still_the_cpu():
    from dslc.runtime.cuda.executor import GpuExecutor
    from dslc.runtime.executor import executor_for
    assert isinstance(executor_for("gpu"), GpuExecutor) and executor_for("auto").name == "numba"


def test_gpu_executor_steps_match_the_reference_executor():
    """Two trainer-style steps (conv, batchnorm state, adam): the parameters stay CuPy arrays
    between steps and equal the reference's (to_host copies them)."""
    import cupy

    from dslc.runtime.executor import ReferenceExecutor, executor_for
    from dslc.runtime.host import to_host
    # no dropout: the reference draws masks in float64, the runners in the graph's float32
    graph = build(dslc.load(MODELS / "small_cnn.net", **SMALL["small_cnn"]), "train_step", Optimizer("adam", lr=1e-2))
    feeds, params, _ = arrays(graph, 6)
    got, want = dict(params), dict(params)
    gpu, ref = executor_for("gpu").compile(graph), ReferenceExecutor().compile(graph)
    for step in range(2):
        out = gpu(feeds, got, np.random.default_rng(step))
        expected = ref(feeds, want, np.random.default_rng(step))
        assert abs(float(out["loss"]) - float(expected["loss"])) <= TOL * max(abs(float(expected["loss"])), 1e-6)
    assert all(isinstance(got[o.name], cupy.ndarray) for o in graph.outputs_of("param"))
    for name, w in want.items():
        g = to_host(got[name])
        assert np.max(np.abs(g - w)) <= TOL * max(float(np.max(np.abs(w))), 1e-6), name


def test_compiled_api_on_the_gpu_matches_the_reference():
    """`m.compile("gpu")`: forward, the saliency grad of a class score, a cotangent on a
    layer and a training step, each within TOL of the NumPy reference's; results are host
    arrays."""
    m = dslc.load(MODELS / "small_cnn.net", **SMALL["small_cnn"])
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    params = m.init(0)
    gpu, ref = m.compile("gpu"), m.compile("reference")

    def close(got, want, what):
        assert isinstance(got, np.ndarray), what
        assert np.max(np.abs(got - want)) <= TOL * max(float(np.max(np.abs(want))), 1e-6), what
    close(gpu.forward(params, {"image": x})["probs"], ref.forward(params, {"image": x})["probs"], "probs")
    cot = np.random.default_rng(1).standard_normal((3, 10)).astype(np.float32)
    for of in ("out[:, 3]", {"out": cot, "fc": "l2"}):
        (v, got), (w, want) = (c.grad(params, {"image": x}, of=of, wrt=["image"]) for c in (gpu, ref))
        assert abs(v - w) <= TOL * max(abs(w), 1e-6)
        close(got["image"], want["image"], f"grad of {of}")
    y = np.array([1, 2, 3])
    p_gpu, p_ref = dict(params), dict(params)
    gpu.step(p_gpu, {"image": x, "label": y})
    ref.step(p_ref, {"image": x, "label": y})
    for name in params:
        close(p_gpu[name], p_ref[name], name)


def _train(tmp_path, device: str, epochs: int):
    from dslc.runtime.recipes import model_and_recipe
    from dslc.runtime.trainer import Options, train
    model, recipe = model_and_recipe(MODELS / "digits_mlp.net", None, {"epochs": epochs})
    return train(model, recipe, tmp_path / device, quiet=True, echo=lambda _: None, device=device,
                 options=Options(test=True))


@pytest.mark.slow
def test_digits_mlp_on_the_gpu_reaches_the_cpu_accuracy(tmp_path):
    cpu, gpu = _train(tmp_path, "cpu", 10), _train(tmp_path, "gpu", 10)
    assert cpu.test.metrics["accuracy"] > 0.9
    assert abs(gpu.test.metrics["accuracy"] - cpu.test.metrics["accuracy"]) <= 0.01


def test_a_checkpoint_of_gpu_parameters_loads_and_evaluates_on_the_cpu(tmp_path, capsys):
    from dslc.runtime.checkpoint import load_checkpoint
    run = _train(tmp_path, "gpu", 2).run
    ckpt = load_checkpoint(run / "last")
    assert ckpt.weights and all(type(v) is np.ndarray for v in {**ckpt.weights, **ckpt.optimizer}.values())
    reports = []
    for device in ("cpu", "gpu"):
        capsys.readouterr()
        assert main(["eval", str(MODELS / "digits_mlp.net"), "--checkpoint", str(run), "--json",
                     "--device", device]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    # the same predictions, but for at most one near-tie the float32 rounding may break differently
    assert abs(reports[0]["accuracy"] - reports[1]["accuracy"]) <= 1 / reports[0]["examples"]
    assert abs(reports[0]["loss"] - reports[1]["loss"]) <= TOL * max(abs(reports[0]["loss"]), 1e-6)
