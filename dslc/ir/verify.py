"""The IR verifier: the invariants every stage of the graph must keep.

Like autodidax's `typecheck_jaxpr`, it re-derives each node's type from its op's
shape rule instead of trusting the stored one, so a pass that rewires inputs or
edits attributes without fixing types is caught at the pass that did it:

- SSA: node names are unique;
- topological order: every input names a node defined earlier;
- outputs name existing nodes (and no output name repeats within its kind);
- every op is registered; source ops (input, param, ...) have no inputs;
- attributes are exactly the op's declared ones, all present;
- the number of inputs is the op's tensor inputs plus the parameters it creates;
- a non-source node's type equals `registry.get(op).shape(input types, attrs)`.

Tests call `check(graph)`; pipelines call `maybe_check(graph, where)`, which does
the work only under DSLC_VERIFY=1.
"""
from __future__ import annotations

from dslc import debug
from dslc.ir.graph import Graph, Node
from dslc.ir.types import DTYPES, TensorType
from dslc.ops import registry
from dslc.ops.registry import ParamSlot, ShapeError

_ALWAYS_PRESENT = ParamSlot.__dataclass_fields__["present"].default


def _arity(opdef: registry.OpDef, attrs: dict) -> tuple[int, bool]:
    """(expected number of inputs, whether more are allowed) for a node of `opdef`."""
    params = sum(1 for p in opdef.params if p.present is _ALWAYS_PRESENT or p.present(attrs))
    fixed = len(opdef.inputs) - opdef.variadic
    return fixed + params, opdef.variadic


def _check_node(n: Node, defined: dict[str, TensorType]) -> list[str]:
    where = f"node %{n.name} ({n.op})"
    if n.type.dtype not in DTYPES:
        return [f"{where}: unknown dtype {n.type.dtype!r}"]
    try:
        opdef = registry.get(n.op)
    except KeyError:
        return [f"{where}: unknown op {n.op!r}"]
    problems = [f"{where}: input %{i} is not defined before use" for i in n.inputs if i not in defined]
    declared = [a.name for a in opdef.attrs]
    keys = [k for k, _ in n.attrs]
    if set(keys) != set(declared) or len(keys) != len(set(keys)):
        problems.append(f"{where}: attributes {keys} do not match the declared {declared}")
    if opdef.category == "source":
        return problems + ([f"{where}: a source node has inputs {list(n.inputs)}"] if n.inputs else [])
    if problems:
        return problems  # the checks below need well-formed inputs and attributes
    attrs = n.attr_dict
    want, more = _arity(opdef, attrs)
    if len(n.inputs) < want or (len(n.inputs) > want and not more):
        return [f"{where}: has {len(n.inputs)} inputs, the op takes {want}{' or more' if more else ''}"]
    try:
        expected = opdef.shape([defined[i] for i in n.inputs], attrs)
    except ShapeError as e:
        return [f"{where}: shape rule rejects its inputs: {e.message}"]
    except Exception as e:  # a rule crashing on a corrupt node is still a finding, not a crash
        return [f"{where}: shape rule failed: {type(e).__name__}: {e}"]
    if expected != n.type:
        return [f"{where}: type is {n.type.show()} but the shape rule gives {expected.show()}"]
    return []


def verify(graph: Graph) -> list[str]:
    """Every invariant `graph` breaks, as readable lines; [] for a well-formed graph.

        >>> verify(dslc.load("models/lenet5.net").graph)
        []
    """
    problems: list[str] = []
    defined: dict[str, TensorType] = {}
    for n in graph.nodes:
        if n.name in defined:
            problems.append(f"node %{n.name} is defined twice (names must be unique)")
        # Consumers are checked against the stored type, as GraphBuilder typed them, so a
        # node whose attributes changed without retyping is one problem, not a cascade.
        problems += _check_node(n, defined)
        defined[n.name] = n.type
    seen: set[tuple[str, str]] = set()
    for o in graph.outputs:
        if o.value not in defined:
            problems.append(f"{o.kind} {o.name!r} refers to %{o.value}, which is not a node")
        if (o.kind, o.name) in seen:
            problems.append(f"{o.kind} {o.name!r} is listed twice")
        seen.add((o.kind, o.name))
    return problems


def check(graph: Graph, where: str = "") -> None:
    """Raise AssertionError listing every problem `verify` finds (a compiler bug, never a user's)."""
    problems = verify(graph)
    if problems:
        context = f" after {where}" if where else ""
        raise AssertionError(f"invalid IR for graph {graph.name!r} (stage {graph.stage}){context}:\n  "
                             + "\n  ".join(problems))


def maybe_check(graph: Graph, where: str = "") -> Graph:
    """`check(graph)` when DSLC_VERIFY=1; returns the graph so a pipeline can chain it."""
    if debug.verify_enabled():
        check(graph, where)
    return graph
