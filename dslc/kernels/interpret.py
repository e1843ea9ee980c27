"""Run a kernel graph in one planned arena with the NumPy reference ops.

    outputs = execute(kg, plan(kg, 8), feeds, params, randoms=masks)
    outputs["loss", "loss"], outputs["param", "fc.weight"]

This is the meaning every backend must reproduce, and the check that a memory plan is
safe: each buffer is a view into one byte array at its planned offset, each kernel
evaluates its nodes one after another with their op's reference (a fused node through
the `fused` op, which interprets its body), and writes into the planned bytes. Before a
kernel runs, the buffers it writes are filled with NaN (or a huge integer), so a kernel
whose output overlaps a value it still reads, or a plan that reuses a value's bytes
while the value is live, gives wrong numbers instead of passing by luck. Only the
kernel graph, the plan and the caller's arrays are used: no Graph, which shows the
kernel graph is a complete description of the step.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from dslc.ir.graph import Node
from dslc.ir.types import NUMPY_DTYPE
from dslc.kernels.graph import KernelGraph
from dslc.ops import registry
from dslc.kernels.memory_plan import MemoryPlan
from dslc.reference import draw_random


def execute(kg: KernelGraph, plan: MemoryPlan, feeds: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
            randoms: Mapping[str, np.ndarray] | None = None,
            rng: np.random.Generator | None = None) -> dict[tuple[str, str], np.ndarray]:
    """The graph's outputs keyed by (kind, name), as `dslc.reference.run_outputs` gives them."""
    arena = np.zeros(plan.arena_bytes, np.uint8)

    def view(name: str) -> np.ndarray:
        b = kg.buffer(name)
        start = plan.offsets[name]
        raw = arena[start:start + b.nbytes(plan.batch)]
        return raw.view(NUMPY_DTYPE[b.dtype]).reshape(b.type.bind(plan.batch))

    randoms = randoms or {}
    for b in kg.buffers:  # what the runtime puts in the arena before the step
        if b.role == "input":
            view(b.name)[...] = feeds[b.name]
        elif b.role in ("param", "state"):
            view(b.name)[...] = params[b.name]
        elif b.role == "const":
            view(b.name)[...] = dict(b.attrs)["value"]
        elif b.role == "random":
            shape = b.type.bind(plan.batch)
            view(b.name)[...] = randoms[b.name] if b.name in randoms else draw_random(Node(b.name, "random", (), b.attrs, b.type), shape, rng)
    in_place = set(plan.in_place)
    for k in kg.kernels:
        if k.kind == "view":  # the output is the input's memory under another shape
            continue
        for name in k.outputs + k.scratch:
            if name not in in_place:
                _poison(view(name))
        for node in k.nodes:
            value = registry.get(node.op).reference(*(view(i) for i in node.inputs), **node.attr_dict)
            view(node.name)[...] = value
    for value, target in plan.writebacks:
        view(target)[...] = view(value)
    return {(o.kind, o.name): view(o.value).copy() for o in kg.outputs}


def _poison(a: np.ndarray) -> None:
    a[...] = np.nan if a.dtype.kind == "f" else np.iinfo(a.dtype).max
