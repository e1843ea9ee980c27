"""Shared test helpers: paths of the repository and a writer of temporary .net files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dslc.ir.types import NUMPY_DTYPE, TensorType

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"

os.environ.setdefault("OMP_WAIT_POLICY", "passive")


@pytest.fixture
def net(tmp_path):
    """net("model m { ... }", name="x.net") writes a file in a temp dir and returns its path."""
    def write(text: str, name: str = "test.net") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path
    return write


# ---- inputs for the tests generated from the op registry (its Samples) ------------------------

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
