"""Imports flow one way: every module of dslc sits in a layer, and imports only its own
layer or those below it. Read from the folder names, bottom to top:

    leaves      dslc/diagnostics.py, debug.py, files.py, reading.py, deep.py, version.py, collective.py,
                grammar/
    core        dslc/ir/, dslc/ops/: the IR's types and graphs, and the op registry whose
                rules are written over them (ir/builder.py and ir/verify.py apply those rules)
    oracle      dslc/reference.py, summary.py, catalog.py, memory.py: read graphs with the ops' rules
    frontend    dslc/frontend/: .net text to graphs, and the recipe's vocabulary (recipe_values.py)
    passes      dslc/passes/: graph to graph
    components  runtime/data/, runtime/schedules.py: what a recipe names (datasets, augmentations,
                schedules), each declaring the recipe calls it accepts beside its code
    recipe      dslc/recipe/: the recipe schema gathered from those declarations (and the
                optimizers' in passes/train_step.py), and the --set overrides
    model       dslc/model.py, gradcheck.py, objective.py: models as loaded, and what grad differentiates
    stages      dslc/stages.py
    kernels     dslc/kernels/: the kernel graph, its memory plan and window geometry
    codegen     dslc/codegen/: kernel graph to Numba and CUDA source
    runtime     runtime/ (installed as dslc.runtime): executors, trainer, data, checkpoints
    interop     dslc/interop/: ONNX export, PyTorch weights
    api         dslc/api.py and the package itself (dslc/__init__.py): `dslc.load` with checkpoints
                and compiled callables
    explain     dslc/explain/: what a trained model learned (saliency, adversarial, style ...), over the API
    cli         dslc/cli/

The test walks every import statement of every module (those inside functions too, since
a deferred import is still a dependency) and fails on an import of a higher layer, and on
a cycle among modules that import each other when they load. A new package is placed by
adding its name to LAYERS.
"""
from __future__ import annotations

import ast
from pathlib import Path

import dslc
import dslc.grammar
import dslc.runtime

# Bottom to top; a module belongs to the entry with the longest matching prefix.
LAYERS = (
    ("leaves", ("dslc.diagnostics", "dslc.debug", "dslc.files", "dslc.reading", "dslc.deep", "dslc.version",
                "dslc.collective", "dslc.grammar")),
    ("core", ("dslc.ir", "dslc.ops")),
    ("oracle", ("dslc.reference", "dslc.summary", "dslc.catalog", "dslc.memory")),
    ("frontend", ("dslc.frontend",)),
    ("passes", ("dslc.passes",)),
    ("components", ("dslc.runtime.data", "dslc.runtime.schedules")),
    ("recipe", ("dslc.recipe",)),
    ("model", ("dslc.model", "dslc.gradcheck", "dslc.objective")),
    ("stages", ("dslc.stages",)),
    ("kernels", ("dslc.kernels",)),
    ("codegen", ("dslc.codegen",)),
    ("runtime", ("dslc.runtime",)),
    ("interop", ("dslc.interop",)),
    ("api", ("dslc.api", "dslc")),
    ("explain", ("dslc.explain",)),
    ("cli", ("dslc.cli",)),
)


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name (runtime/ and grammar/ are
    installed as dslc.runtime and dslc.grammar, wherever they live)."""
    out = {}
    roots = [(Path(dslc.__file__).parent, "dslc"), (Path(dslc.runtime.__file__).parent, "dslc.runtime"),
             (Path(dslc.grammar.__file__).parent, "dslc.grammar")]
    for root, package in roots:
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            out.setdefault(name, path)  # dslc/runtime may also be found under dslc/ in a normal install
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module imported, line, at load time) for every dslc import in the file; `from a import b`
    names a.b where that is a module, else a."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body} | {id(n) for stmt in tree.body if isinstance(stmt, (ast.If, ast.Try))
                                         for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        out += [(n, node.lineno, id(node) in top) for n in dict.fromkeys(names) if n == "dslc" or n.startswith("dslc.")]
    return out


def layer(module: str) -> int:
    best, at = -1, None
    for k, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, at = len(p), k
    assert at is not None, f"{module} is in no layer: add its package to LAYERS in tests/test_layering.py"
    return at


def test_every_module_is_in_a_layer():
    for name in MODULES:
        layer(name)


def test_imports_go_down_the_layers():
    wrong = []
    for name, path in MODULES.items():
        for target, line, _ in _imports(path):
            if layer(target) > layer(name):
                wrong.append(f"{path}:{line}: {name} ({LAYERS[layer(name)][0]}) imports {target} "
                             f"({LAYERS[layer(target)][0]})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_module_imports_itself_back_when_loading():
    graph = {name: sorted({t for t, _, loading in _imports(path) if loading and t in MODULES and t != name})
             for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_layering_test_sees_a_violation(tmp_path):
    """The walk finds an import of a higher layer, deferred inside a function too."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from dslc.cli import main\n")
    assert [(t, line) for t, line, _ in _imports(bad)] == [("dslc.cli", 2)]
    assert layer("dslc.cli") > layer("dslc.kernels.graph")
