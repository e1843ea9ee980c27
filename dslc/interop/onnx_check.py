"""`dslc export --check`: run the exported model in onnxruntime and compare with dslc.

Both sides get the same random inputs (standard normal floats; integers in [0, 2)) at a
chosen batch size. dslc's side is its own inference graph, unoptimised, evaluated by
the NumPy reference (the oracle every dslc backend is tested against), so the check
covers the export and the passes that ran before it (batchnorm folding at -O2).

The difference of an output is max |onnx - dslc| / max(1, max |dslc|): absolute for
values of order one (probabilities, logits), relative for large ones.

    rows = check(model, weights, proto, batch=2)
    print(format_rows(rows, tolerance=1e-4))
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dslc.model import Model
from dslc import reference
from dslc.diagnostics import CliError
from dslc.ir.graph import Graph
from dslc.ir.types import NUMPY_DTYPE
from dslc.memory import require
from dslc.stages import build


@dataclass(frozen=True)
class Difference:
    output: str
    shape: tuple[int, ...]
    max_abs: float  # max |onnx - dslc|
    scale: float  # max(1, max |dslc|)

    @property
    def error(self) -> float:
        return self.max_abs / self.scale


def random_feeds(graph: Graph, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One random array per input of `graph`, every symbolic dimension bound to `batch`.
    Their memory is asked for first (`--batch` is anyone's number): NumPy would fail on a
    batch beyond its largest dimension with a traceback, and on a large one after trying."""
    rng = np.random.default_rng(seed)
    shapes = {node.name: tuple(d if isinstance(d, int) else batch * d.coef for d in node.type.shape)
              for node in graph.inputs}
    # float64 first: the normal draws are made in double precision, then cast
    require(sum(8 * math.prod(shape) for shape in shapes.values()), f"a random batch of {batch:,} for '{graph.name}'")
    feeds = {}
    for node in graph.inputs:
        shape, dtype = shapes[node.name], NUMPY_DTYPE[node.type.dtype]
        feeds[node.name] = (rng.standard_normal(shape) if node.type.is_float else rng.integers(0, 2, shape)).astype(dtype)
    return feeds


def run_onnx(proto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of `proto` (a ModelProto) on `feeds`, by name, computed by onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CliError("--check needs onnxruntime: pip install -e '.[onnx]' (or pip install onnxruntime)") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its optimiser's notes are not the user's business
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def check(model: Model, weights, proto, batch: int = 2, seed: int = 0) -> list[Difference]:
    """Each output of the exported `proto` against dslc's inference of `model` with `weights`."""
    graph = build(model, "infer")
    feeds = random_feeds(graph, batch, seed)
    ours = {name: v for (_, name), v in reference.run_outputs(graph, feeds, weights).items()}
    theirs = run_onnx(proto, feeds)
    rows = []
    for name, want in ours.items():
        got = theirs[name]
        if got.shape != want.shape:
            raise AssertionError(f"onnxruntime gives {name} of shape {got.shape}, dslc {want.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
        rows.append(Difference(name, want.shape, diff, max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)))
    return rows


def format_rows(rows: list[Difference], tolerance: float) -> str:
    lines = [f"  {r.output} {list(r.shape)}: max |difference| {r.max_abs:.2e}"
             + (f" (relative {r.error:.2e})" if r.scale > 1 else "")
             + ("" if r.error <= tolerance else f"  > {tolerance:g}") for r in rows]
    return "\n".join(lines)
