"""The Python face of dslc: `dslc.load(path)` returns a `Model`.

    m = dslc.load("models/lenet5.net")
    print(m.summary().text())
    m.graph            # the typed graph IR
    m.param_specs      # {name: (shape, dtype, init, trainable, role)}
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dslc.diagnostics import CompileError
from dslc.frontend.program import Program, load_program
from dslc.frontend.resolve import elaborate
from dslc.ir.graph import Graph, Init
from dslc.summary import Summary, summarize


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

    @property
    def param_specs(self) -> dict[str, ParamSpec]:
        return {p.name: ParamSpec(p.name, tuple(p.type.shape), p.type.dtype, p.attr("init"), p.attr("trainable"),
                                  p.attr("role")) for p in self.graph.params}

    def summary(self) -> Summary:
        return summarize(self.graph)

    def __repr__(self) -> str:
        return f"<Model {self.name} from {self.program.root}: {len(self.graph)} nodes>"


def load(path: str | os.PathLike, model: str | None = None, text: str | None = None, **overrides) -> Model:
    """Parse, resolve and shape-check a model; raises CompileError for a user mistake."""
    program = load_program(path, text)
    name = model or program.default_model()
    if name is None:
        raise CompileError.single("E0241", f"{program.root} defines no model")
    if name not in program.models:
        from dslc.diagnostics import did_you_mean
        raise CompileError.single("E0242", f"{program.root} has no model '{name}'",
                                  hint=did_you_mean(name, program.models) or
                                  f"it defines: {', '.join(program.models)}")
    return Model(program, name, elaborate(program, name, overrides), overrides)
