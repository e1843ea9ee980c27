"""The `fused` op: several nodes evaluated as one kernel, made only by the fuse pass.

A fused node keeps its body as attribute `body`: the original nodes, in order, whose
inputs name either an earlier body node or `$k`, the k-th input of the fused node.
The last body node is the result. `kind` says which loop nest a backend emits:
elementwise (one pass over the output), reduce (elementwise producers feeding one
reduction at the root) or epilogue (a matmul/conv2d/linear followed by elementwise ops
on its output: bias and activation done while the result is hot).

Its shape rule re-checks the body with each op's own rule, its reference interprets the
body with each op's reference, so the verifier and the NumPy oracle see through fusion.
"""
from __future__ import annotations

import numpy as np

from dslc.ir.types import NUMPY_DTYPE
from dslc.ops.registry import OPS, Attr, OpDef, register


def _operand(name: str, ext: list, inner: dict):
    return ext[int(name[1:])] if name.startswith("$") else inner[name]


def _shape(ins, attrs):
    types: dict = {}
    body = attrs["body"]
    for node in body:
        if node.op != "const":
            got = OPS[node.op].shape([_operand(i, ins, types) for i in node.inputs], node.attr_dict)
            if got != node.type:
                raise AssertionError(f"fused body node {node.name}: type {node.type} but rule gives {got}")
        types[node.name] = node.type
    return body[-1].type


def _reference(*ext, body, kind):
    values: dict = {}
    for node in body:
        if node.op == "const":
            out = np.asarray(node.attr("value"))
        else:
            out = OPS[node.op].reference(*(_operand(i, ext, values) for i in node.inputs), **node.attr_dict)
        values[node.name] = np.asarray(out, dtype=NUMPY_DTYPE[node.type.dtype])
    return values[body[-1].name]


def _flops(ins, out, attrs):
    types: dict = {}
    total = 0
    for node in attrs["body"]:
        op = OPS[node.op]
        if node.op != "const" and op.flops:
            total += op.flops([_operand(i, ins, types) for i in node.inputs], node.type, node.attr_dict)
        types[node.name] = node.type
    return total


register(OpDef(
    "fused", "kernel", ("*xs",), (Attr("kind", "enum", "elementwise", ("elementwise", "reduce", "epilogue")),
                                  Attr("body", "body", ())),
    shape=_shape, formula="the body's ops, evaluated in one kernel", flops=_flops, reference=_reference))
