"""Source ops: values with no inputs. Their type is given, not inferred.

input   a model input (batch data, labels)
param   a parameter: attrs init (Init), trainable, role (weight|bias|scale|shift|state)
const   a scalar constant: attrs value
random  a random tensor drawn fresh each training step (dropout masks): attrs dist, p
"""
from __future__ import annotations

from dslc.ir.graph import Init
from dslc.ops.registry import Attr, OpDef, register


def _given(ins, attrs):
    raise AssertionError("source nodes carry their type; GraphBuilder.source sets it")


register(OpDef("input", "source", (), (), _given, "a value supplied by the caller"))
register(OpDef("param", "source", (), (
    Attr("init", "init", Init("zeros")),
    Attr("trainable", "bool", True),
    Attr("role", "enum", "weight", ("weight", "bias", "scale", "shift", "state")),
), _given, "a learned tensor, initialised by `init`"))
register(OpDef("const", "source", (), (Attr("value", "float"),), _given, "a scalar constant"))
register(OpDef("random", "source", (), (
    Attr("dist", "enum", "bernoulli", ("bernoulli",)),
    Attr("p", "float", 0.5, doc="probability of keeping an element (bernoulli)"),
    Attr("scale", "float", 1.0, doc="value of a kept element"),
), _given, "mask[i] = scale with probability p, else 0; drawn fresh every training step"))
