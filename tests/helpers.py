"""What several test modules share: the repository's paths, op-registry samples, random arrays.

Imported as `helpers` (tests/ is on sys.path under both `pytest` and `python -m pytest`);
a test module imports from here, never from another test module or from conftest.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

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
    """loss = sum(op(x...) * r) in float32, stage backward: the op, its gradient, fused around it."""
    op = OPS[name]
    types = typed(sample, "f32")
    attrs = dict(complete_attrs(op, sample.attrs))
    b = GraphBuilder()
    xs = [b.source(f"x{k}", "input", t) for k, t in enumerate(types)]
    out = b.add(name, xs, attrs)
    loss = out
    if b.type_of(out).rank:
        loss = b.add("sum", [b.add("mul", [out, b.source("r", "input", b.type_of(out))])])
    graph = b.graph(f"op_{name}", [Output("loss", "loss", loss)], "typed")
    wrt = [x for k, x in enumerate(xs) if k not in op.integer_inputs and types[k].is_float]
    return (differentiate(graph, wrt) if op.grad and wrt else graph), types, sample.domain


# ---- compiled backends against the reference (test_numba_backend, test_gpu, test_no_alloc) ----

TOL = 1e-4
SMALL = {"small_cnn": {"width": 4, "hidden": 16}, "cifar_cnn": {"width": 4, "hidden": 16},
         "resnet20": {"n": 1, "width": 4}, "mlp_bn": {"h1": 24, "h2": 12}, "digits_cnn": {"width": 4},
         "digits_mlp": {"hidden": 16}, "two_layer": {"hidden": 12}}
TOO_BIG = {"alexnet": "227x227 inputs with fixed widths: minutes per step in the reference",
           "vgg16": "224x224 inputs with fixed widths: minutes per step in the reference",
           "resnet18": "224x224 inputs with fixed widths: minutes per step in the reference"}


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
