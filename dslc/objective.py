"""What `grad(of=...)` differentiates: a weighted sum of named node values, as a graph.

    terms = parse_of("fc8[:, 3]")                     # the class-3 score of every example
    terms = parse_of({"conv3": "l2", "conv5": dL})     # 0.5 |conv3|^2 + <conv5, dL>
    g = objective_graph(graph, terms, wrt=["image"])  # Output("output", "objective"), a grad per name
    feeds.update(weight_feeds(g, terms, sizes))       # the masks and cotangents, fed per call

`of` is "loss" (the model's loss), a node name (the sum of its elements), a node name
with an index (`fc8[:, 3]`: `:` keeps an axis, an integer picks one entry; the sum of
the picked elements, so each example's gradient is its own score's), or a dict of node
names to weightings: an array broadcastable to the node's shape (a cotangent: the
objective is sum(node * w), whose gradient is the vector-Jacobian product, e.g. a style
loss's dL/dF computed on the host), "sum", or "l2" (0.5 * sum(node^2), DeepDream's).

Masks and cotangents are inputs of the graph (`weight.NODE`), fed at each call, so one
compiled graph serves every class index, every batch and every cotangent.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from collections.abc import Iterable, Mapping
from typing import Callable, Sequence

import numpy as np

from dslc.diagnostics import UsageError, did_you_mean
from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Graph, Output
from dslc.ir.types import NUMPY_DTYPE, concrete
from dslc.ops import registry
from dslc.passes.autodiff import differentiate
from dslc.passes.dce import prune
from dslc.passes.fold_batchnorm import fold_batchnorm
from dslc.reference import bind_inputs

OBJECTIVE = "objective"
_INDEXED = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*\[(.*)\]\s*$")


@dataclass(frozen=True)
class Term:
    """One node's part of the objective: its weighting kind (mask, array, l2), and for a mask
    the index (None: every element; else one entry per axis, None for `:`)."""

    node: str
    kind: str
    index: tuple[int | None, ...] | None = None
    array: np.ndarray | None = None

    @property
    def key(self) -> tuple[str, str]:
        """What the compiled graph depends on: the node and whether it reads a weight input."""
        return self.node, "l2" if self.kind == "l2" else "weighted"


def names_of(names: str | Sequence[str], what: str) -> tuple[str, ...]:
    """The node names of `wrt=` or `outputs=` (`what`): a list of them, or one name alone (a
    string is not read as a list of one-letter names). Anything else is a UsageError naming
    the argument: outputs=3 failed as "'int' object is not iterable", outputs=[3] inside the
    name lookup ("unsupported operand type(s) for +: 'int' and 'str'")."""
    if isinstance(names, str):
        return (names,)
    if isinstance(names, (Mapping, bytes)) or not isinstance(names, Iterable):
        raise UsageError(f"{what} is a node name or a list of them, not {type(names).__name__}")
    out = tuple(names)
    for name in out:
        if not isinstance(name, str):
            raise UsageError(f"{what} is a node name or a list of them; it holds {name!r} "
                             f"({type(name).__name__})")
    return out


def check_call(params, inputs, known: frozenset[str], model: str) -> None:
    """A UsageError unless `params` and `inputs` are mappings by name, as every forward, grad
    and step takes them, and each input is one of `known`, the inputs of model `model`.
    `m.params` is None for a model loaded without a checkpoint, and `forward(params, x)`
    passes one array: each failed in Python's words ('NoneType' object is not iterable,
    unhashable type: 'numpy.ndarray'). A misspelt input beside the right one ({"image": x,
    "lable": y}) was ignored, and the loss it meant to ask for silently left out."""
    if not isinstance(params, Mapping):
        raise UsageError(f"params is a dict of arrays by parameter name (m.init(seed), or m.params of a model "
                         f"loaded with checkpoint=), not {type(params).__name__}")
    if not isinstance(inputs, Mapping):
        raise UsageError(f"inputs is a dict of arrays by input name (e.g. {{'image': x}}), not "
                         f"{type(inputs).__name__}")
    if not inputs.keys() <= known:
        name = next(k for k in inputs if k not in known)
        hint = did_you_mean(name, known) if isinstance(name, str) else None
        raise UsageError(f"inputs names {name!r}, which is no input of model '{model}' (its inputs: "
                         f"{', '.join(sorted(known))})" + (f"; {hint}" if hint else ""))


def check_grad_options(rules, train) -> None:
    """A UsageError unless `rules` is None or maps op names to functions (b, node, g) -> the
    gradients of the node's inputs, and `train` is None or a bool: a name no op has ('Relu')
    was ignored, the gradient left as it was, with no word; a rule that is no function failed
    inside differentiation ('int' object is not callable); train="no" meant training."""
    if train is not None and not isinstance(train, (bool, np.bool_)):
        raise UsageError(f"grad: train is True, False or None (the default for `of`), not {train!r}")
    if rules is None:
        return
    if not isinstance(rules, Mapping):
        raise UsageError(f"grad: rules is a dict of op names to gradient rules ({{'relu': rule}}), "
                         f"not {type(rules).__name__}")
    ops = registry.all_ops()
    for name, rule in rules.items():
        if name not in ops:
            raise UsageError(f"grad: rules names {name!r}, which is no op; "
                             + (did_you_mean(str(name), ops) or "`dslc ops` lists them"))
        if not callable(rule):
            raise UsageError(f"grad: the rule for '{name}' is {type(rule).__name__}, not a function "
                             "(b, node, g) -> the gradients of the node's inputs")


def parse_of(of) -> list[Term]:
    """The terms `of` names (see the module docstring); UsageError for a malformed spec."""
    if isinstance(of, str):
        return [_parse_name(of)]
    if not isinstance(of, Mapping) or not of:
        raise UsageError(f"grad: `of` is a node name, 'NODE[i, :]', or a dict of node names to weightings; "
                         f"got {of!r}")
    terms = []
    for node, weight in of.items():
        if not isinstance(node, str):  # else a TypeError inside the name lookup
            raise UsageError(f"grad: `of` maps node names to weightings; it holds the key {node!r} "
                             f"({type(node).__name__})")
        if isinstance(weight, str):
            if weight not in ("sum", "l2"):
                raise UsageError(f"grad: the weighting of '{node}' is an array, 'sum' or 'l2', not {weight!r}")
            terms.append(Term(node, "l2") if weight == "l2" else Term(node, "mask"))
        else:  # a cotangent: real numbers (None, text or complex numbers cast to NaN, an error or their real part)
            array = np.asarray(weight)
            if array.dtype.kind not in "fiub":
                given = repr(weight) if array.ndim == 0 else f"an array of dtype {array.dtype}"
                raise UsageError(f"grad: the weighting of '{node}' is an array of numbers, 'sum' or 'l2', not {given}")
            terms.append(Term(node, "array", array=array))
    return terms


@functools.lru_cache(maxsize=256)
def _parse_name(text: str) -> Term:
    """The term a name or an indexed name spells (a frozen Term, so one is shared by every
    call that spells it: a grad in a loop parses its `of` once, 2 of its us a call)."""
    found = _INDEXED.match(text)
    if found is None:
        return Term(text.strip(), "mask")
    index: list[int | None] = []
    for part in found.group(2).split(","):
        part = part.strip()
        if part == ":":
            index.append(None)
        elif re.fullmatch(r"-?\d+", part):
            index.append(int(part))
        else:
            raise UsageError(f"grad: cannot read the index [{found.group(2)}] of {text!r}: each entry is ':' or "
                             "an integer, e.g. fc8[:, 3]")
    return Term(found.group(1), "mask", tuple(index))


def node_of(graph: Graph, name: str) -> str:
    """The graph node `name` means: a node, a declared output, loss or metric, or a label
    (`conv2: x = ... |> maxpool(2)` names its statement's value: the last node under `conv2.`)."""
    if name in graph:
        return name
    for o in graph.outputs:
        if o.name == name and o.kind in ("output", "loss", "metric"):
            return o.value
    under = [n.name for n in graph.nodes if n.name.startswith(name + ".") and n.op not in ("param", "const")]
    if under:
        return under[-1]
    names = [n.name for n in graph.nodes if n.op not in ("param", "const")] + [o.name for o in graph.outputs]
    if name == "loss":  # grad's default `of`
        shown = [o.name for o in graph.outputs if o.kind == "output"] or names
        raise UsageError(f"model '{graph.name}' declares no loss to differentiate; name what to differentiate "
                         f"with of=, e.g. of=\"{shown[0]}\" (the sum of its entries) or of=\"{shown[0]}[:, 0]\"")
    raise UsageError(f"model '{graph.name}' has no node or output '{name}'"
                     + (f"; {did_you_mean(name, names)}" if did_you_mean(name, names) else
                        "; `dslc check` lists its layers"))


def default_outputs(graph: Graph, fed) -> tuple[str, ...]:
    """What `forward` returns when no outputs are named: the declared outputs and, when the
    names `fed` include every input (the labels too), the loss and metrics."""
    needs = {n.name for n in graph.inputs}
    names = [o.name for o in graph.outputs_of("output")]
    if needs <= set(fed):
        names += [o.name for o in graph.outputs if o.kind in ("loss", "metric")]
    if not names:
        raise UsageError(f"model '{graph.name}' declares no output, and the inputs given do not include "
                         f"{', '.join(sorted(needs - set(fed)))} for its loss; name the nodes: outputs=[...]")
    return tuple(names)


def outputs_graph(graph: Graph, names: Sequence[str]) -> Graph:
    """`graph` computing only the values `names` name (node_of), each an Output("output") under
    the name given: what `forward` runs, without the nodes that read inputs it was not given."""
    outputs = [Output("output", name, node_of(graph, name)) for name in names]
    return prune(graph.replace(outputs=tuple(outputs)))


def objective_graph(graph: Graph, terms: Sequence[Term], wrt: Sequence[str],
                    rules: Mapping[str, Callable] | None = None, fold: tuple[str, ...] = ()) -> Graph:
    """`graph` with the objective sum over terms (each its node's elements times the weight input
    `weight.NODE`, or 0.5 * the squares) as output "objective" and one Output("grad") per name
    of `wrt`; only what they need is kept. `rules` replaces some ops' gradient rules (autodiff's
    `differentiate`). Batchnorm on running statistics after a layer of an op in `fold` is
    folded into it (dslc/passes/fold_batchnorm.py) before differentiating, which changes no
    value: the compiled API's graphs; the front end's oracle (Model.grad) differentiates the
    graph as written."""
    b = GraphBuilder(graph.nodes)
    total = None
    for term in terms:
        node = node_of(graph, term.node)
        t = b.type_of(node)
        if not t.is_float:
            raise UsageError(f"grad: '{term.node}' is {t.show()}, an integer value with no gradient")
        if term.kind == "l2":
            part = b.add("mul", [b.add("sum", [b.add("mul", [node, node])]), b.const(0.5, t.dtype)])
        else:
            weight = b.source(f"weight.{term.node}", "input", t)
            part = b.add("sum", [b.add("mul", [node, weight])])
        total = part if total is None else b.add("add", [total, part])
    if total is None:
        raise UsageError("grad: `of` names nothing")
    weighted = b.graph(graph.name, [Output("output", OBJECTIVE, total)], graph.stage)
    if fold:
        weighted = fold_batchnorm(weighted, fold)[0]
    return prune(differentiate(weighted, list(wrt), loss=total, rules=rules))


def weight_feeds(graph: Graph, terms: Sequence[Term], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weight inputs of an objective graph for a call with `inputs` (which fix the batch):
    masks (ones at the indexed elements) and the given arrays broadcast to their node's shape."""
    fed = tuple(n for n in graph.inputs if n.name in inputs and not n.name.startswith("weight."))
    sizes = bind_inputs(Graph(graph.name, fed, (), graph.stage), inputs)
    feeds = {}
    for term in terms:
        if term.kind == "l2":
            continue
        name = f"weight.{term.node}"
        t = graph[name].type
        shape = tuple(concrete(d, dict(sizes)) for d in t.shape)
        dtype = NUMPY_DTYPE[t.dtype]
        if term.kind == "array":
            try:
                feeds[name] = np.ascontiguousarray(np.broadcast_to(term.array, shape), dtype)
            except ValueError:
                raise UsageError(f"grad: the weighting of '{term.node}' has shape {list(term.array.shape)}; "
                                 f"'{term.node}' is {list(shape)} here") from None
            continue
        mask = np.zeros(shape, dtype) if term.index is not None else np.ones(shape, dtype)
        if term.index is not None:
            if len(term.index) != len(shape):
                raise UsageError(f"grad: {term.node}[{', '.join(':' if i is None else str(i) for i in term.index)}] "
                                 f"indexes {len(term.index)} axes; '{term.node}' has {len(shape)} ({list(shape)})")
            for axis, (i, d) in enumerate(zip(term.index, shape)):
                if i is not None and not -d <= i < d:
                    raise UsageError(f"grad: index {i} is out of range for axis {axis} of '{term.node}' "
                                     f"(size {d})")
            mask[tuple(slice(None) if i is None else i for i in term.index)] = 1
        feeds[name] = mask
    return feeds
