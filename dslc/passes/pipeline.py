"""The optimisation pipeline: one explicit, ordered list of named passes.

Each pass is a plain function `Graph -> (Graph, report)`; `-O`, `--disable-pass` and
`--after` read this list and nothing else. Levels: -O0 runs nothing, -O1 the cheap
clean-ups, -O2 (the default) everything. A pass that only applies to one kind of graph
says so in `stages` (folding batchnorm is only exact with running statistics).

The first rungs of the DSLC_DEBUG ladder are printed here, to standard error, since every
optimised graph passes through: 1 each pass's report with the node count after it
(`dslc: pipeline small_cnn (infer) fuse: 18 ops into 7 fused kernels [31 nodes]`), 3 also
the graph's text before the first pass and after each pass that ran.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from dslc.debug import debug_level
from dslc.diagnostics import UsageError, did_you_mean
from dslc.ir.graph import Graph
from dslc.ir.printer import to_text
from dslc.passes.cse import cse
from dslc.passes.dce import dce
from dslc.passes.fold_batchnorm import fold_batchnorm
from dslc.passes.pool_relu import pool_relu
from dslc.passes.fuse import fuse
from dslc.passes.simplify import simplify


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Graph], tuple[Graph, str]]
    level: int
    stages: tuple[str, ...] = ()  # empty: every stage

    def applies(self, graph: Graph, level: int, disabled) -> bool:
        return level >= self.level and self.name not in disabled and (not self.stages or graph.stage in self.stages)


PIPELINE: tuple[Pass, ...] = (
    Pass("fold-batchnorm", fold_batchnorm, 2, stages=("infer",)),
    Pass("const-fold", simplify, 1),
    Pass("cse", cse, 1),
    Pass("pool-relu", pool_relu, 2),
    Pass("dce", dce, 1),
    Pass("fuse", fuse, 2),
)
PASS_NAMES = tuple(p.name for p in PIPELINE)


@dataclass(frozen=True)
class PassResult:
    name: str
    report: str
    graph: Graph
    ran: bool


def check_pass_names(names) -> None:
    """Reject unknown pass names (a usage error: exit status 2)."""
    for name in names:
        if name not in PASS_NAMES:
            hint = did_you_mean(name, PASS_NAMES) or f"passes: {', '.join(PASS_NAMES)}"
            raise UsageError(f"unknown pass '{name}'; {hint}")


def optimize(graph: Graph, level: int = 2, disable=(), after: str | None = None,
             check: Callable[[str, Graph, Graph], object] | None = None) -> tuple[Graph, list[PassResult]]:
    """Run the pipeline; stop after pass `after` if given. `check(name, before, after)` runs between passes."""
    check_pass_names(list(disable) + ([after] if after else []))
    debug = debug_level()
    if debug >= 3:
        _show(graph, "before the pipeline")
    results: list[PassResult] = []
    for p in PIPELINE:
        if p.applies(graph, level, disable):
            new, report = p.run(graph)
            if check is not None:
                check(p.name, graph, new)
            graph = new
            results.append(PassResult(p.name, f"{p.name}: {report}", graph, True))
            if debug >= 3:
                _show(graph, f"after {p.name}")
        else:
            results.append(PassResult(p.name, f"{p.name}: skipped", graph, False))
        if debug >= 1:
            print(f"dslc: pipeline {graph.name} ({graph.stage}) {results[-1].report} [{len(graph)} nodes]",
                  file=sys.stderr)
        if p.name == after:
            break
    return graph, results


def _show(graph: Graph, when: str) -> None:
    """DSLC_DEBUG=3: the graph as `dslc inspect` prints it, under a header saying when."""
    print(f"dslc: ---- {graph.name} ({graph.stage}) {when} ----\n{to_text(graph).rstrip()}", file=sys.stderr)
