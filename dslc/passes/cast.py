"""cast: rebuild a graph in another floating-point precision.

Every floating-point type T[shape] becomes dtype[shape]; integer values (labels,
indices) keep their type. Gradient checking uses it to run a model in float64,
where central differences are accurate to ~1e-10 instead of ~1e-3.

    g64 = cast(model.graph, "f64")
    g64["linear"].type  # f64[N, 10]

The result is re-typed node by node through each op's shape rule, so a rule that
hard-codes a dtype is caught here rather than producing a mixed-precision graph.
"""
from __future__ import annotations

from dslc.ir.graph import Graph, Node
from dslc.ir.types import FLOAT_DTYPES, TensorType
from dslc.ops import registry


def cast(graph: Graph, dtype: str) -> Graph:
    """`graph` with every float type changed to `dtype` (f32 or f64)."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"cast: {dtype!r} is not a floating-point dtype ({', '.join(FLOAT_DTYPES)})")
    types: dict[str, TensorType] = {}
    nodes: list[Node] = []
    for n in graph.nodes:
        op = registry.get(n.op)
        if op.category == "source":
            t = n.type.with_dtype(dtype) if n.type.is_float else n.type
        else:
            if n.attr_dict.get("dtype") in FLOAT_DTYPES:  # an op told which float type to make (one_hot)
                n = n.replace(attrs=tuple((k, dtype if k == "dtype" else v) for k, v in n.attrs))
            t = op.shape([types[i] for i in n.inputs], n.attr_dict)
        types[n.name] = t
        nodes.append(n.replace(type=t))
    return graph.replace(nodes=nodes)
