"""fold-batchnorm: at inference, batchnorm after conv2d or linear becomes part of that layer.

With running statistics batchnorm is an affine map per channel, so it folds into the
preceding layer's weight and bias (as TVM's FoldBatchnormToConv2D does):

    s  = gamma / sqrt(var + eps)
    W' = W * s   (per output channel: axis 0 of a conv weight, axis 1 of a linear one)
    b' = (b - mean) * s + beta        (b = 0 for a layer without bias)

The new weight and bias depend on parameters only, so they are computed once when the
parameters are loaded, not per batch. A batchnorm is left exact (unfolded) when its
statistics are not running statistics (training mode), when the layer's output is
used elsewhere too (by another node, or as one of the graph's outputs: folding would then
compute the layer twice), or when something else stands between them (a flatten, say).

The pipeline runs it on inference graphs; the compiled Python API (runtime/compiled.py)
runs it on its forward graphs and, before differentiating, on its objective graphs, so
that a saliency map's backward pass goes through the folded layer too (one convolution
with W' instead of a convolution and a per-channel scale, both ways).
"""
from __future__ import annotations

from dslc.ir.graph import Graph
from dslc.ir.match import Pat, match
from dslc.passes.rewrite import Ctx, rewrite

_STATE = Pat("param", where=lambda n: n.attr("role") == "state")
_PARAM = Pat("param")


LAYERS = ("conv2d", "linear")


def _foldable(graph: Graph, layers: tuple[str, ...]):
    users = {name: len(nodes) for name, nodes in graph.consumers().items()}
    for o in graph.outputs:
        users[o.value] += 1
    layer = Pat(layers, inputs=(Pat(), _PARAM), name="layer",
                where=lambda n: users[n.name] == 1 and all(graph[i].op == "param" for i in n.inputs[1:]))
    return Pat("batchnorm", inputs=(layer, _PARAM, _PARAM, _STATE, _STATE), name="bn")


def fold_batchnorm(graph: Graph, layers: tuple[str, ...] = LAYERS) -> tuple[Graph, str]:
    """`graph` with each foldable batchnorm after one of `layers` (ops) folded into it."""
    pattern = _foldable(graph, layers)

    def visit(node, ctx: Ctx):
        caps = match(pattern, node, ctx.graph)
        if caps is None:
            return None
        layer, b = caps["layer"], ctx.b
        x, weight, *bias = (ctx.new(i) for i in layer.inputs)
        gamma, beta, mean, var = (ctx.new(i) for i in node.inputs[1:])
        dtype = node.type.dtype
        scale = b.mul(gamma, b.rsqrt(b.add(var, b.const(node.attr("eps"), dtype))))
        channels = ctx.graph[node.inputs[1]].type.shape[0]
        per_out = b.reshape(scale, shape=(channels, 1, 1, 1)) if layer.op == "conv2d" else scale
        new_w = b.named(f"{node.name}.folded_weight", "mul", weight, per_out)
        shifted = b.sub(bias[0], mean) if bias else b.neg(mean)
        new_b = b.named(f"{node.name}.folded_bias", "add", b.mul(shifted, scale), beta)
        attrs = tuple((k, True if k == "bias" else v) for k, v in layer.attrs)
        # The folded layer takes the batchnorm's name: it now computes what the batchnorm did.
        return ctx.b._b.append(layer.replace(name=node.name, inputs=(x, new_w, new_b), attrs=attrs, type=node.type))

    out, folded = rewrite(graph, visit)
    return out, f"folded {folded} batchnorm into conv2d/linear"
