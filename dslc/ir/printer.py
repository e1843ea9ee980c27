"""One printer for every stage of the IR: text for people, JSON for tools, DOT for pictures.

Every stage is the same `Graph` type, so `dslc inspect --stage S`, `DSLC_DEBUG=3`
and tests all print through here. All three forms are deterministic (nodes in
graph order, attributes in declaration order), so two builds of one file print
identical bytes and golden diffs are possible.

    %conv.conv2d : f32[N, 16, 32, 32] = conv2d(%image, %conv.conv2d.weight, %conv.conv2d.bias) {out=16, ...}  # m.net:12

`from_json(to_json(g)) == g` holds exactly: JSON has no tuples, no Init, no
symbolic dimensions and no nodes (a fused node's body), so those are tagged
(`{"init": ...}`, `{"dim": "N"}`, `{"node": ...}`) and
arrays always read back as tuples; ints, floats and bools keep their types because
Python's json writes 1.0 as `1.0` and True as `true`.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, Sequence

from dslc.diagnostics import Span, printable
from dslc.ir.graph import Graph, Init, Node, Output
from dslc.ir.types import Sym, TensorType, dim_json, parse_dim

FORMAT, VERSION = "dslc-graph", 1
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# ---- text ------------------------------------------------------------------------

def show_value(v: Any) -> str:
    """An attribute value in .net spelling: true, none, [3, 3], kaiming(mode=fan_out), "a b"."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, Init):
        return f"{v.name}({', '.join(f'{k}={show_value(a)}' for k, a in v.args)})"
    if isinstance(v, Node):  # a fused node's body: its nodes, without their source lines
        return "{" + node_line(v, spans=False) + "}"
    if isinstance(v, tuple):
        return f"[{', '.join(show_value(x) for x in v)}]"
    if isinstance(v, str):
        return v if _IDENT.match(v) else json.dumps(v)
    return str(v) if isinstance(v, (int, Sym)) else repr(v)


def _ref(name: str) -> str:
    # `$k` is the k-th input of a fused node (see dslc/ops/fused.py), not a node name.
    return name if name.startswith("$") else "%" + name


def node_line(n: Node, spans: bool = True) -> str:
    """One node: `%name : type = op(%inputs) {attrs}  # file:line`."""
    line = f"%{n.name} : {n.type.show()} = {n.op}"
    if n.inputs:
        line += f"({', '.join(_ref(i) for i in n.inputs)})"
    if n.attrs:
        line += " {" + ", ".join(f"{k}={show_value(v)}" for k, v in n.attrs) + "}"
    if n.span and spans:  # the file escaped as messages show it: a byte not UTF-8 could not be written (-o)
        line += f"  # {printable(n.span.file)}:{n.span.line}"
    return line


def to_text(graph: Graph) -> str:
    """The whole graph, one node per line, then its outputs (`loss loss = %add`)."""
    counts = f"{len(graph)} nodes, {len(graph.inputs)} inputs, {len(graph.params)} params"
    lines = [f"graph {graph.name}  (stage {graph.stage}; {counts})"]
    lines += [node_line(n) for n in graph.nodes]
    lines += [f"{o.kind} {o.name} = %{o.value}" for o in graph.outputs]
    return "\n".join(lines) + "\n"


# ---- JSON ------------------------------------------------------------------------

def _encode(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        # JSON proper has no inf/nan; a tagged string keeps the output standard.
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, tuple):
        return [_encode(x) for x in v]
    if isinstance(v, Init):
        return {"init": v.name, "args": [[k, _encode(a)] for k, a in v.args]}
    if isinstance(v, Sym):
        return {"dim": str(v)}
    if isinstance(v, Node):
        return {"node": _node_doc(v)}
    raise TypeError(f"cannot write attribute value {v!r} ({type(v).__name__}) as JSON")


def _decode(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_decode(x) for x in v)
    if isinstance(v, dict):
        if "init" in v:
            return Init(v["init"], tuple((k, _decode(a)) for k, a in v["args"]))
        if "dim" in v:
            return parse_dim(v["dim"])
        if "float" in v:
            return float(v["float"])
        if "node" in v:
            return _read_node(v["node"])
        raise ValueError(f"unknown tagged value {v!r}")
    return v


def _node_doc(n: Node) -> dict:
    keys = [k for k, _ in n.attrs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"node {n.name!r} repeats an attribute: {keys}")
    span = n.span
    return {"name": n.name, "op": n.op, "inputs": list(n.inputs),
            "attrs": {k: _encode(v) for k, v in n.attrs},
            "type": {"dtype": n.type.dtype, "shape": [dim_json(d) for d in n.type.shape]},
            "span": [span.file, span.line, span.col, span.end_line, span.end_col] if span else None}


def to_json(graph: Graph) -> str:
    """The graph as JSON, one node per line (so diffs of two dumps read line by line)."""
    dump = lambda doc: json.dumps(doc, separators=(", ", ": "))
    rows = lambda docs: "".join(f"\n    {dump(d)}," for d in docs).rstrip(",")
    meta = {"format": FORMAT, "version": VERSION, "name": graph.name, "stage": graph.stage}
    head = ", ".join(f"{dump(k)}: {dump(v)}" for k, v in meta.items())
    nodes = rows(_node_doc(n) for n in graph.nodes)
    outputs = rows({"kind": o.kind, "name": o.name, "value": o.value} for o in graph.outputs)
    return f'{{{head},\n  "nodes": [{nodes}\n  ],\n  "outputs": [{outputs}\n  ]\n}}\n'


def _read_node(d: dict) -> Node:
    t = d["type"]
    return Node(d["name"], d["op"], tuple(d["inputs"]), tuple((k, _decode(v)) for k, v in d["attrs"].items()),
                TensorType(t["dtype"], tuple(parse_dim(x) for x in t["shape"])),
                Span(*d["span"]) if d["span"] is not None else None)


def from_json(text: str) -> Graph:
    """Inverse of `to_json`; raises ValueError for text that is not a graph dump."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"not a {FORMAT} version {VERSION} document")
    try:
        nodes = tuple(_read_node(d) for d in doc["nodes"])
        outputs = tuple(Output(o["kind"], o["name"], o["value"]) for o in doc["outputs"])
        return Graph(doc["name"], nodes, outputs, doc["stage"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"malformed {FORMAT} document: {type(e).__name__}: {e}") from None


# ---- DOT (Graphviz) ----------------------------------------------------------------

_STYLE = {
    "input": 'shape=ellipse, fillcolor="#d6e9ff"',
    "param": 'fillcolor="#e8e8e8"',
    "const": 'shape=box, fillcolor="#fff4c2"',
    "random": 'shape=box, fillcolor="#fff4c2"',
}


def _q(text: str) -> str:
    """A DOT quoted string; label lines are joined with DOT's own `\\n` escape."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_node(n: Node) -> str:
    label = n.name if n.name == n.op else f"{n.name}\n{n.op}"
    if n.op == "const":
        label = f"{n.name}\n= {show_value(n.attr('value'))}"
    label += f"\n{n.type.show()}"
    style = _STYLE.get(n.op, "")
    if n.op == "param" and n.attr("trainable") is False:
        style += ', style="rounded,filled,dashed"'
    return f"{_q(n.name)} [label={_q(label)}{', ' + style if style else ''}];"


def to_dot(graph: Graph, grouping: Mapping[str, Sequence[str]] | None = None) -> str:
    """Graphviz source: one box per node labelled name, op and type, one edge per input use.

    `grouping` maps a cluster label to node names (e.g. the ops one fused kernel
    computes); each group is drawn as a dashed cluster. A node may be in one group only.
    """
    grouping = grouping or {}
    owner: dict[str, int] = {}
    for k, (label, names) in enumerate(grouping.items()):
        for name in names:
            if name not in graph:
                raise ValueError(f"group {label!r} names {name!r}, which is not a node of the graph")
            if name in owner:
                raise ValueError(f"node {name!r} is in two groups")
            owner[name] = k
    out = [f"digraph {_q(graph.name)} {{",
           f'  graph [rankdir=TB, fontname="Helvetica", labelloc=t, label={_q(f"{graph.name} ({graph.stage})")}];',
           '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", fontsize=10];',
           '  edge [color="#555555", arrowsize=0.6];']
    out += [f"  {_dot_node(n)}" for n in graph.nodes if n.name not in owner]
    for k, label in enumerate(grouping):
        out.append(f"  subgraph cluster_{k} {{")
        out.append(f'    label={_q(label)}; style="dashed,rounded"; color="#3366cc";')
        out += [f"    {_dot_node(n)}" for n in graph.nodes if owner.get(n.name) == k]
        out.append("  }")
    out += [f"  {_q(i)} -> {_q(n.name)};" for n in graph.nodes for i in n.inputs]
    for o in graph.outputs:
        sink = f"{o.kind}:{o.name}"
        out.append(f"  {_q(sink)} [label={_q(f'{o.kind} {o.name}')}, shape=note, fillcolor=\"#e6f5e6\"];")
        out.append(f"  {_q(o.value)} -> {_q(sink)};")
    out.append("}")
    return "\n".join(out) + "\n"
