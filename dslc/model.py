"""A model as the front end loads it: its graph, recipe, parameters' specs and initial values,
and forward and grad on the NumPy reference.

    m = dslc.load("models/lenet5.net")
    print(m.summary().text())
    m.graph            # the typed graph IR
    m.param_specs      # {name: (shape, dtype, init, trainable, role)}
    params = m.init(seed=0)
    m.forward(params, {"image": x, "label": y})        # {"probs": ..., "loss": ..., "accuracy": ...}
    m.forward(params, {"image": x}, outputs=["fc1"])   # any node by name; no labels needed
    loss, grads = m.grad(params, {"image": x, "label": y})
    score, g = m.grad(params, {"image": x}, of="fc8[:, 3]", wrt=["image"])   # dslc/objective.py

forward and grad here run the NumPy reference executor (dslc/reference.py): they are
the oracle the compiled kernels are tested against, not the fast path. `dslc.load`
returns the subclass of dslc/api.py, whose `compile(device)` gives the same calls on
the generated kernels, and which reads a run's checkpoint.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dslc import reference
from dslc.diagnostics import CompileError, UsageError, did_you_mean
from dslc.recipe import schema as recipe
from dslc.frontend.program import Program, load_program
from dslc.frontend.resolve import elaborate
from dslc.ir.graph import Graph, Init
from dslc.ir.types import NUMPY_DTYPE
from dslc.memory import array_bytes, require
from dslc.objective import (OBJECTIVE, check_call, check_grad_options, default_outputs, names_of, objective_graph,
                            outputs_graph, parse_of, weight_feeds)
from dslc.ops.init import sample
from dslc.passes import train_mode
from dslc.passes.autodiff import differentiate, trainable_params
from dslc.passes.cast import cast
from dslc.summary import Summary, summarize

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    init: Init
    trainable: bool
    role: str


class Model:
    def __init__(self, program: Program, name: str, graph: Graph, overrides: dict[str, Any]):
        self.program, self.name, self.graph, self.overrides = program, name, graph, overrides
        self.warnings: list = []  # diagnostics of severity "warning" found while loading

    @functools.cached_property
    def input_names(self) -> frozenset[str]:
        """The names of the model's inputs: all a call's `inputs` may name (objective.check_call)."""
        return frozenset(n.name for n in self.graph.inputs)

    @property
    def param_specs(self) -> dict[str, ParamSpec]:
        return {p.name: ParamSpec(p.name, p.type.bind({}), p.type.dtype, p.attr("init"), p.attr("trainable"),
                                  p.attr("role")) for p in self.graph.params}

    def recipe(self) -> recipe.Recipe | None:
        """The validated settings of the recipe that trains this model (the one named after it
        first), or None when no recipe does; a broken recipe is a CompileError."""
        trains = sorted((t for t in self.program.trains if t.model == self.name), key=lambda t: t.alias is not None)
        if not trains:
            return None
        settings, errors = recipe.validate(trains[0], self.graph)
        errors = [e for e in errors if e.severity == "error"]
        if errors:
            raise CompileError(errors)
        return settings

    def summary(self) -> Summary:
        """The layer table; parameters the training recipe freezes are marked not trainable."""
        settings = self.recipe()
        frozen = recipe.select_params(self.graph, settings["freeze"]) if settings else []
        return summarize(self.graph, frozen=set(frozen))

    def with_dtype(self, dtype: str) -> "Model":
        """The same model computing in `dtype` ("f64" for gradient checking): every float type is cast."""
        return Model(self.program, self.name, cast(self.graph, dtype), self.overrides)

    def init(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Fresh parameters (and running statistics) from their initialisers, drawn in graph order;
        memory.OutOfMemory, before allocating anything, when they cannot fit. The seed is a
        whole number >= 0, as NumPy's generators take it (a UsageError here, not their TypeError)."""
        _check_seed(seed, "init")
        count = sum(math.prod(p.type.bind({})) for p in self.graph.params)
        require(array_bytes([p.type for p in self.graph.params], {}),
                f"model '{self.name}' ({self.program.root}) has {count:,} parameters, which")
        rng = np.random.default_rng(seed)
        return {p.name: sample(p.attr("init"), p.type.bind({}), rng, NUMPY_DTYPE[p.type.dtype])
                for p in self.graph.params}

    def forward(self, params: Arrays, inputs: Arrays, outputs: Sequence[str] | str | None = None,
                train: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
        """The values of `outputs` (node or output names, or one name) by name; by default the
        declared outputs and, when `inputs` hold the labels too, the loss and metrics (as the
        compiled forward: objective.default_outputs). train=True runs the training-mode graph:
        dropout masks drawn from `seed`, batchnorm on batch statistics (running statistics
        untouched)."""
        check_call(params, inputs, self.input_names, self.name)
        _check_seed(seed, "forward")
        graph = train_mode.lower(self.graph) if train else self.graph
        names = names_of(outputs, "forward: outputs") if outputs is not None else default_outputs(graph, inputs)
        out = reference.run_outputs(outputs_graph(graph, names), inputs, params, rng=np.random.default_rng(seed))
        return {name: v for (_, name), v in out.items()}

    def grad(self, params: Arrays, inputs: Arrays, wrt: Sequence[str] | None = None, train: bool | None = None,
             seed: int = 0, of="loss", rules: Mapping[str, Callable] | None = None
             ) -> tuple[float, dict[str, np.ndarray]]:
        """(value, gradients) of the loss, or of the objective `of` names (dslc/objective.py:
        `of="fc8[:, 3]"`, `of={"conv3": "l2"}`, cotangents), w.r.t. every trainable parameter
        or the parameters and float inputs named in `wrt` (saliency: wrt=["image"]). `train`:
        training-mode semantics, by default for the loss only. `rules` replaces some ops'
        gradient rules ({"relu": rule}: guided backpropagation), as the compiled grad's do."""
        check_call(params, inputs, self.input_names, self.name)
        check_grad_options(rules, train)
        _check_seed(seed, "grad")
        train = (of == "loss") if train is None else train
        if of == "loss" and train and not rules:
            out = reference.run_outputs(self.grad_graph(wrt, True), inputs, params, rng=np.random.default_rng(seed))
            loss = next(v for (kind, _), v in out.items() if kind == "loss")
            return float(loss), {name: v for (kind, name), v in out.items() if kind == "grad"}
        terms = parse_of(of)
        names = list(names_of(wrt, "grad: wrt")) if wrt is not None else [p.name for p in trainable_params(self.graph)]
        for name in names:
            self.check_wrt(name)
        graph = objective_graph(train_mode.lower(self.graph) if train else self.graph, terms, names, rules)
        feeds = dict(inputs)
        feeds.update(weight_feeds(graph, terms, inputs))
        out = reference.run_outputs(graph, feeds, params, rng=np.random.default_rng(seed))
        return float(out["output", OBJECTIVE]), {name: v for (kind, name), v in out.items() if kind == "grad"}

    def grad_graph(self, wrt: Sequence[str] | None = None, train: bool = True) -> Graph:
        """The (training-mode) graph with an Output("grad", name, ...) per name of `wrt`."""
        if self.graph.loss is None:
            raise self._error("E0401", f"model '{self.name}' has no loss to differentiate",
                              "declare one, e.g. `loss cross_entropy(logits, label)`")
        names = [p.name for p in trainable_params(self.graph)] if wrt is None else list(names_of(wrt, "grad: wrt"))
        for name in names:
            self.check_wrt(name)
        return differentiate(train_mode.lower(self.graph) if train else self.graph, names)

    def check_wrt(self, name: str) -> None:
        """A CompileError unless `name` is an input or parameter with a float type."""
        sources = [n.name for n in self.graph.nodes if n.op in ("input", "param")]
        if name not in sources:
            inputs = ", ".join(n.name for n in self.graph.inputs)
            raise self._error("E0404", f"model '{self.name}' has no input or parameter '{name}' to differentiate "
                                       f"with respect to", did_you_mean(name, sources) or
                              f"its inputs are {inputs}; `dslc check` lists its parameters")
        if not self.graph[name].type.is_float:
            raise self._error("E0403", f"cannot differentiate with respect to '{name}': it is "
                                       f"{self.graph[name].type.show()}, an integer input (labels have no gradient)")

    def _error(self, code: str, message: str, hint: str | None = None) -> CompileError:
        """A diagnostic located at the model's name in its source file."""
        err = CompileError.single(code, message, self.program.models[self.name].name_span, hint)
        err.sources = self.program.sources
        return err

    def __repr__(self) -> str:
        return f"<Model {self.name} from {self.program.root}: {len(self.graph)} nodes>"


def _check_seed(seed, call: str) -> None:
    """A UsageError unless `seed` is a whole number >= 0, as NumPy's generators take it: their
    TypeError ("SeedSequence expects int or sequence of ints") named neither the call nor the value."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"{call}: the seed is a whole number >= 0, not {seed!r}")


def load(path: str | os.PathLike, model: str | None = None, text: str | None = None, **overrides) -> Model:
    """Parse, resolve and shape-check a model; raises CompileError for a user mistake."""
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"load: the path of a .net file, not {type(path).__name__}")
    # model=3 was an AttributeError inside did_you_mean, text=b"..." a TypeError inside the lexer
    if model is not None and not isinstance(model, str):
        raise UsageError(f"load: model is the name of a model in the file, not {type(model).__name__}")
    if text is not None and not isinstance(text, str):
        raise UsageError(f"load: text is the .net source as a str, not {type(text).__name__}")
    # a NumPy scalar (hidden=np.int64(4), from an array or a sweep) is its Python value, as
    # PyTorch takes one for a size: it was refused as "hyper-parameter 'hidden' is int"
    overrides = {k: v.item() if isinstance(v, np.generic) else v for k, v in overrides.items()}
    program = load_program(path, text)
    name = program.default_model() if model is None else model  # '' names no model (E0242), not the first
    if name is None:
        raise CompileError.single("E0241", f"{program.root} defines no model")
    if name not in program.models:
        raise CompileError.single("E0242", f"{program.root} has no model '{name}'",
                                  hint=did_you_mean(name, program.models) or
                                  f"it defines: {', '.join(program.models)}")
    graph = elaborate(program, name, overrides)
    # The file's training recipes are checked too: a mistake there is a mistake in the file.
    found = recipe.validate_program(program, lambda m: graph if m == name else elaborate(program, m))
    errors = [d for d in found if d.severity == "error"]
    if errors:
        raise CompileError(errors)
    loaded = Model(program, name, graph, overrides)
    loaded.warnings = [d for d in found if d.severity != "error"]
    return loaded
