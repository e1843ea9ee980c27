"""The NumPy oracle: run any graph the compiler builds, one node at a time.

Every later stage (generated CPU and GPU kernels, optimisation passes, the
trainer) is tested against this interpreter, so it is written for clarity, not
speed: one loop over the nodes in order, each dispatched to its op's `reference`
in the registry. Source nodes take their value from the caller (inputs, params),
their attribute (const) or a random generator (dropout masks); every result is
cast to its node's dtype so float32 and float64 graphs never drift.

    values = evaluate(graph, feeds={"x": x, "y": y}, params=model.init())
    out = run_outputs(graph, feeds, params)
    out["loss", "loss"], out["grad", "linear.weight"]

Shapes are checked on the way: a feed that does not fit its input's type is a
ValueError naming the input, and a reference whose result disagrees with its
node's type (a shape rule and a reference telling different stories) is a
RuntimeError naming the node.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from dslc.ir.graph import Graph, Node
from dslc.ir.types import NUMPY_DTYPE, Sym, TensorType, concrete
from dslc.ops import registry


def evaluate(graph: Graph, feeds: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
             rng: np.random.Generator | None = None,
             randoms: Mapping[str, np.ndarray] | None = None,
             known: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The value of every node of `graph`, by node name.

    feeds: one array per input node; params: one per param node; random nodes are
    taken from `randoms` by name when given there (to fix dropout masks), else drawn
    from `rng`. `known` holds values computed earlier that are reused as they are
    (gradcheck re-runs only what a perturbed tensor feeds).
    """
    sizes = bind_inputs(graph, feeds)
    randoms = randoms or {}
    known = known or {}
    values: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        if node.name in known:
            values[node.name] = known[node.name]
            continue
        if node.op == "input":
            value = feeds[node.name]
        elif node.op == "param":
            value = _given(node, params, "params", node.type.bind(sizes))
        elif node.op == "const":
            value = np.asarray(node.attr("value"))
        elif node.op == "random":
            value = (_given(node, randoms, "randoms", node.type.bind(sizes)) if node.name in randoms
                     else draw_random(node, node.type.bind(sizes), rng))
        else:
            op = registry.get(node.op)
            value = op.reference(*(values[i] for i in node.inputs), **node.attr_dict)
            _check_result(node, np.shape(value), sizes)
        values[node.name] = np.asarray(value, dtype=NUMPY_DTYPE[node.type.dtype])
    return values


def run_outputs(graph: Graph, feeds: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
                rng: np.random.Generator | None = None,
                randoms: Mapping[str, np.ndarray] | None = None) -> dict[tuple[str, str], np.ndarray]:
    """The graph's named outputs keyed by (kind, name): ("loss", "loss"), ("grad", "W1"), ..."""
    values = evaluate(graph, feeds, params, rng, randoms)
    return {(o.kind, o.name): values[o.value] for o in graph.outputs}


def bind_inputs(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Check every feed against its input's type and return the sizes of the symbols (N, ...).

    A feed of the right kind (float or integer) is later cast to the input's dtype; a
    float array for an integer input, a missing input or a shape that does not fit is
    a ValueError naming the input and both shapes.
    """
    sizes: dict[str, int] = {}
    for node in graph.inputs:
        if node.name not in feeds:
            raise ValueError(f"input {node.name!r} ({node.type.show()}) was not fed; "
                             f"feeds given: {sorted(feeds) or 'none'}")
        value = np.asarray(feeds[node.name])
        _check_kind(node.name, node.type, value.dtype, "input")
        _bind_shape(node, value.shape, sizes)
    return sizes


def draw_random(node: Node, shape: tuple[int, ...], rng: np.random.Generator | None) -> np.ndarray:
    """A bernoulli mask: `scale` with probability p (of keeping), else 0."""
    if rng is None:
        raise ValueError(f"random node {node.name!r} needs a generator: pass rng= or randoms={{{node.name!r}: ...}}")
    keep = rng.random(shape) < node.attr("p")
    return np.where(keep, node.attr("scale"), 0.0)


def _given(node: Node, arrays: Mapping[str, np.ndarray], what: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(given(node.op, node.name, node.type, arrays, what, shape))


def given(op: str, name: str, type_: TensorType, arrays: Mapping, what: str, shape: tuple[int, ...]):
    """arrays[name], checked against its node (`op` name, of type `type_`, `shape` bound
    here): a ValueError naming it when it is missing, of the wrong kind of dtype or of
    another shape. Arrays with a shape and dtype (NumPy's, CuPy's) are returned as they
    are, anything else through np.asarray; the compiled runners check their parameters
    with it too (load_params, CPU and GPU), so every device refuses what the oracle refuses."""
    if name not in arrays:
        raise ValueError(f"{op} {name!r} ({type_.show()}) is missing from {what}")
    value = arrays[name]
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        value = np.asarray(value)
    _check_kind(name, type_, value.dtype, op)
    if tuple(value.shape) != shape:
        raise ValueError(f"{op} {name!r}: expected shape {shape} ({type_.show()}), got {tuple(value.shape)}")
    return value


def _check_kind(name: str, type_: TensorType, dtype: np.dtype, what: str) -> None:
    # Casting within a kind is allowed (float64 data into an f32 input); across kinds it
    # would silently truncate labels or turn them into floats.
    want_float = type_.is_float
    if (want_float and dtype.kind not in "fiu") or (not want_float and dtype.kind not in "iu"):
        raise ValueError(f"{what} {name!r} is {type_.show()} but was given an array of dtype {dtype}")


def _bind_shape(node: Node, shape: tuple[int, ...], sizes: dict[str, int]) -> None:
    """Match an actual shape against a type, binding each symbol the first time it is seen."""
    want = node.type.shape
    mismatch = ValueError(f"input {node.name!r}: expected {node.type.show()}, got shape {tuple(shape)}"
                          + (f" (with {', '.join(f'{k}={v}' for k, v in sizes.items())})" if sizes else ""))
    if len(shape) != len(want):
        raise mismatch
    for d, actual in zip(want, shape):
        if isinstance(d, Sym):
            free = [s for s in d.syms if s not in sizes]
            if len(free) == 1:  # solve coef * (bound symbols) * free = actual
                known = concrete(Sym(d.coef, tuple(s for s in d.syms if s != free[0])), sizes)
                if actual == 0:
                    raise ValueError(f"input {node.name!r}: shape {tuple(shape)} makes {free[0]} = 0 "
                                     f"({node.type.show()}); a batch needs at least one example")
                if actual % known:
                    raise mismatch
                sizes[free[0]] = actual // known
            elif len(free) > 1:
                raise ValueError(f"input {node.name!r}: dimension {d} has several unknown symbols")
        if concrete(d, sizes) != actual:
            raise mismatch


def _check_result(node: Node, shape: tuple[int, ...], sizes: dict[str, int]) -> None:
    want = node.type.shape
    ok = len(shape) == len(want) and all(
        (isinstance(d, Sym) and any(s not in sizes for s in d.syms)) or concrete(d, sizes) == a
        for d, a in zip(want, shape))
    if not ok:
        raise RuntimeError(f"{node.op} {node.name!r}: the reference returned shape {tuple(shape)} but the shape rule "
                           f"says {node.type.show()} (a bug in the op's rules)")
