"""const-fold: constant folding and algebraic simplification.

Rewrites, each applied only where the result type is unchanged:
    c1 op c2 -> c                 (scalar constants, rounded to the node's dtype)
    x * 1, 1 * x, x / 1 -> x      x + 0, 0 + x, x - 0 -> x      -(-x) -> x
    x * expand(1), expand(1) * x -> x   (ones broadcast to x's shape: a gradient's seed times a
                                  weighting, the masks of `grad(of="fc8[:, 3]")`: two kernels)
    reshape(reshape(x)) -> reshape(x)       reshape(x) of x's own shape -> x
    transpose(transpose(x)) -> transpose(x, composed)  (-> x when the composition is the identity)
x * 0 is deliberately not folded to 0: it would turn NaN and Inf into 0.
"""
from __future__ import annotations

import numpy as np

from dslc.ir.graph import Graph, Node
from dslc.ir.match import Pat, is_const, match
from dslc.ir.types import NUMPY_DTYPE
from dslc.passes.rewrite import Ctx, rewrite

_ARITH = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}
X = Pat(name="x")
_IDENTITIES = (
    Pat("div", (X, is_const(1.0))),
    Pat("add", (X, is_const(0.0))), Pat("add", (is_const(0.0), X)), Pat("sub", (X, is_const(0.0))),
    Pat("neg", (Pat("neg", (X,)),)),
)


def _fold_consts(node: Node, ctx: Ctx) -> str | None:
    ins = [ctx.graph[i] for i in node.inputs]
    if not ins or any(i.op != "const" for i in ins) or node.op not in (*_ARITH, "neg"):
        return None
    dtype = np.dtype(NUMPY_DTYPE[node.type.dtype]).type
    vals = [dtype(i.attr("value")) for i in ins]
    with np.errstate(all="ignore"):
        value = -vals[0] if node.op == "neg" else _ARITH[node.op](*vals)
    return ctx.b._b.const(float(dtype(value)), node.type.dtype, node.span)


def _fold(node: Node, ctx: Ctx) -> str | None:
    folded = _fold_consts(node, ctx)
    if folded:
        return folded
    for pat in _IDENTITIES:
        caps = match(pat, node, ctx.graph)
        if caps and caps["x"].type == node.type:
            return ctx.new(caps["x"].name)
    if node.op == "mul":
        a, b = node.inputs
        for one, x in ((b, a), (a, b)):
            if _ones(ctx.graph[one], ctx.graph) and ctx.graph[x].type == node.type:
                return ctx.new(x)
    if node.op == "reshape":
        inner = ctx.graph[node.inputs[0]]
        if inner.type == node.type:
            return ctx.new(inner.name)
        if inner.op == "reshape":
            return ctx.copy(node, inputs=inner.inputs)
    if node.op == "transpose":
        inner = ctx.graph[node.inputs[0]]
        if inner.op == "transpose":
            outer, first = _perm(node), _perm(inner)
            composed = tuple(first[p] for p in outer)
            if composed == tuple(range(len(composed))):
                return ctx.new(inner.inputs[0])
            return ctx.copy(node, inputs=inner.inputs, attrs=(("perm", composed),))
    return None


def _ones(node: Node, graph: Graph) -> bool:
    """Whether `node` is all ones: the scalar constant 1, or it broadcast by expand (not a
    mean's, which divides it by the count)."""
    if node.op == "expand" and not node.attr("mean"):
        node = graph[node.inputs[0]]
    return node.op == "const" and node.attr("value") == 1.0


def simplify(graph: Graph) -> tuple[Graph, str]:
    out, changed = rewrite(graph, _fold)
    return out, f"simplified {changed} node{'s' * (changed != 1)}"


def _perm(node: Node) -> tuple[int, ...]:
    perm = node.attr("perm")
    return tuple(perm) if perm is not None else tuple(reversed(range(node.type.rank)))
