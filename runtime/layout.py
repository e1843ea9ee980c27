"""How examples meet a model: which input reads them and in what shape, which reads the
labels (or the float targets of a regression), and the mistakes where they do not fit.

    fit = layout(model, data.train)                # which input reads images, which reads labels
    feeds = fit.feeds(data.transform(x), y)        # {"image": x [N, 64], "label": y}

A classifier reads integer labels; a regression model (its target input float, read by
its loss as the target: `mse(pred, y)`) reads float targets of any shape per example.

Examples are brought to the model input's shape (`example_shape`, by `conform`) before
the statistics are fitted and before augmentation (runtime/prepare.py), so both see the
model's layout: grey images stored [H, W] become [1, H, W]; channels-last [H, W, C]
images are refused, not reshaped (E0513).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Protocol

import numpy as np

from dslc.diagnostics import CompileError
from dslc.ops import registry
from dslc.passes.dce import ancestors
from dslc.passes.infer import first_loss_input
from dslc.runtime.data import DataError

SHAPE_CODE = "E0513"  # data that does not fit the model's inputs


@dataclass(frozen=True)
class Layout:
    """How examples feed a model: input `x` reads them reshaped to `shape`, input `y` the labels
    (or, for regression, the targets reshaped to `target_shape`; classes is then 0)."""

    x: str
    y: str
    shape: tuple[int, ...]
    classes: int
    target_shape: tuple[int, ...] | None = None

    @property
    def regression(self) -> bool:
        return self.target_shape is not None

    def feeds(self, x: np.ndarray, y: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if x.size != len(x) * prod(self.shape):  # the recipe check cannot see a crop's size for a flat input
            raise DataError(f"examples of shape {list(x.shape[1:])} do not fit input '{self.x}' of shape "
                            f"{list(self.shape)}; a crop in the recipe's augment must keep the images' size")
        out = {self.x: x.reshape((len(x),) + self.shape)}
        if y is not None:
            out[self.y] = y if self.target_shape is None else y.reshape((len(y),) + self.target_shape)
        return out


class Shaped(Protocol):
    """What `layout` reads of a dataset (predict has only the checkpoint's record of one)."""

    @property
    def classes(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def target_shape(self) -> tuple[int, ...]: ...


def reads_labels(model) -> bool:
    """Whether the model reads class labels (an integer input), not float targets (regression)."""
    return any(not n.type.is_float for n in model.graph.inputs)


def _target_input(graph):
    """The float input the first loss op reads as its target (mse(pred, y) -> y), or None."""
    needed = ancestors(graph, [graph.loss]) if graph.loss is not None else set()
    for node in graph.nodes:
        if node.name in needed and registry.get(node.op).category == "loss" and len(node.inputs) > 1:
            target = graph[node.inputs[1]]
            return target if target.op == "input" and target.type.is_float else None
    return None


def _inputs(model):
    """(examples input, labels or targets input) of a model the trainer can feed, else a located error."""
    graph = model.graph
    floats = [n for n in graph.inputs if n.type.is_float]
    ints = [n for n in graph.inputs if not n.type.is_float]
    if len(floats) == 1 and len(ints) == 1:
        return floats[0], ints[0]
    target = _target_input(graph)
    if len(floats) == 2 and not ints and target is not None:
        return next(n for n in floats if n is not target), target
    raise _error(model, f"the trainer feeds two inputs: the examples (float) and either class labels (an "
                 f"integer input) or regression targets (a float input the loss reads as its target, "
                 f"e.g. mse(pred, y)); model '{graph.name}' has inputs "
                 f"{', '.join(f'{n.name} {n.type.show()}' for n in graph.inputs)}", (floats or ints or [None])[0])


def layout_target(model) -> str:
    """The name of the input holding a model's labels or targets."""
    return _inputs(model)[1].name


def flat_input(model) -> bool:
    """Whether the model reads its examples flattened, [N, D] (an MLP): then any example of D
    numbers fits it (`example_shape`)."""
    return len(_inputs(model)[0].type.shape) == 2


def example_shape(want: tuple, have: tuple) -> tuple[int, ...] | None:
    """The shape examples of shape `have` take, before normalisation and augmentation, for a
    model input whose examples are `want`; None when they do not fit it:

        want             have            the examples become
        [C, H, W]        [C, H, W]       themselves
        [1, H, W]        [H, W]          [1, H, W]: grey images stored without a channel axis
        [D] (an MLP)     D numbers       themselves, [H, W] as [1, H, W]; flattened when fed
        anything else                    None (E0513): [H, W, C] for [C, H, W] is channels-last

    >>> example_shape((1, 8, 8), (8, 8)), example_shape((64,), (1, 8, 8)), example_shape((3, 4, 4), (4, 4, 3))
    ((1, 8, 8), (1, 8, 8), None)
    """
    want, have = tuple(want), tuple(have)
    if have == want or want == (1, *have):
        return want
    if len(want) == 1 and prod(have) == want[0]:
        return (1, *have) if len(have) == 2 else have
    return None


def shape_hint(want: tuple, have: tuple, training: bool = True) -> str | None:
    """The fix for examples of shape `have` that `example_shape` refuses for `want`, when they
    look like a known other layout (channels-last images, or images short of channels);
    `training` adds the model declaration that would fit, which a trained model cannot change."""
    want, have = tuple(want), tuple(have)
    if len(want) == 3 and have == (*want[1:], want[0]):
        return ("the examples are channels-last [H, W, C] images; the model reads [C, H, W]: save "
                "`np.transpose(x, (0, 3, 1, 2))` of a batch x [N, H, W, C] ((2, 0, 1) of one image)")
    if len(want) == 3 and have == want[1:]:
        return (f"the examples are grey images [H, W]; the model reads {want[0]} channels"
                + (f": declare f32[N, 1, {want[1]}, {want[2]}], or give the data {want[0]} channels" if training
                   else ""))
    if prod(have) == prod(want) and len(want) > 1:
        return (f"reshape the examples to [N, {', '.join(map(str, want))}] before saving them, if that is "
                "their layout (dslc does not guess one)")
    return None


def conform(model, dataset: Shaped) -> tuple[int, ...]:
    """The shape `dataset`'s examples take for `model`'s examples input (`example_shape`), or
    the located E0513 error saying how they do not fit it."""
    x = _inputs(model)[0]
    want = x.type.shape[1:]
    static = all(isinstance(d, int) for d in want)
    fitted = example_shape(want, dataset.shape) if static else None
    if fitted is None:
        have = tuple(dataset.shape)
        hint = shape_hint(want, have) if static else None
        raise _error(model, f"data {dataset.name} has examples of shape {list(have)} but input "
                     f"'{x.name}' is {x.type.show()}", x,
                     hint or f"declare `input {x.name} : {x.type.dtype}[N, {', '.join(map(str, have))}]`"
                     + (f" or f32[N, {prod(have)}]" if len(have) > 1 else ""))
    return fitted


def layout(model, dataset: Shaped) -> Layout:
    """Match a dataset to the model's inputs: one float input for the examples (which must fit
    it by `example_shape`) and one integer input for the labels, with at least as many logits
    as classes, or a float input for the targets, holding as many numbers per example as the
    data's targets. A mistake is located at the input (or loss) it concerns, before any
    training starts."""
    graph = model.graph
    x, y = _inputs(model)
    conform(model, dataset)
    want = x.type.shape[1:]
    if y.type.is_float:
        return Layout(x.name, y.name, tuple(want), 0, _target_shape(model, y, dataset))
    if y.type.shape[1:]:
        raise _error(model, f"labels are one class number per example; input '{y.name}' is {y.type.show()}", y)
    logits = first_loss_input(graph) if graph.loss is not None else None
    width = graph[logits].type.shape[-1] if logits else None
    if isinstance(width, int) and width < dataset.classes:
        raise _error(model, f"data {dataset.name} has {dataset.classes} classes but the loss reads "
                     f"{graph[logits].type.show()} scores: {width} classes", graph[logits],
                     "set the model's class count, e.g. --set classes=...")
    return Layout(x.name, y.name, tuple(want), dataset.classes)


def _target_shape(model, y, dataset) -> tuple[int, ...]:
    """The per-example shape of target input `y`, which must hold as many numbers as the data's targets."""
    want = y.type.shape[1:]
    have = tuple(dataset.target_shape)
    if not all(isinstance(d, int) for d in want) or prod(want) != prod(have):
        raise _error(model, f"data {dataset.name} has targets of shape {list(have)} per example but input "
                     f"'{y.name}' is {y.type.show()}", y,
                     f"declare `input {y.name} : {y.type.dtype}[N{''.join(f', {d}' for d in have)}]`")
    return tuple(want)


def _error(model, message: str, node, hint: str | None = None) -> CompileError:
    span = node.span if node is not None and node.span else model.program.models[model.name].name_span
    err = CompileError.single(SHAPE_CODE, message, span, hint)
    err.sources = model.program.sources
    return err
