"""A model's inference graph as ONNX: what `dslc export` writes.

The graph written is the one a deployed model runs (stages.build(model, "infer")),
optimised at the requested level but never fused (fusion makes kernels for dslc's own
backends; an ONNX runtime fuses for itself): at -O2 batchnorm is folded into the
convolution or linear layer before it, at -O0 it is written as BatchNormalization.

Everything that depends only on the weights (the weights themselves, a folded weight
W * gamma / sqrt(var + eps), a constant) is computed once here with the NumPy reference
and written as an initializer, so the ONNX graph holds only what runs per batch. Each
ONNX node is named after the dslc layer it computes (`stage1.stack.basic.conv_bn.batchnorm`)
and says where in the .net source it comes from; the batch dimension stays symbolic
(`N`); the opset is stated (onnx_ops.OPSET). The model records its name, source file,
hyper-parameters, the sha256 of its .net sources and dslc's version as metadata.

The `onnx` package builds the model and checks it (onnx.checker, then strict shape
inference, whose inferred types are kept for viewers such as Netron). An op ONNX cannot
express is refused with a located message naming it (E0601), all such ops at once.

    proto = export(model, weights)          # weights: {param name: array}
    save(proto, "model.onnx")
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from dslc.model import Model
from dslc.version import __version__
from dslc import reference
from dslc.diagnostics import CliError, CompileError, Diagnostic, printable
from dslc.files import write_atomic
from dslc.interop.onnx_ops import OPSET, Refused, Site, lowering
from dslc.ir.graph import Graph, Node
from dslc.ir.types import NUMPY_DTYPE, TensorType
from dslc.passes.pipeline import optimize
from dslc.stages import build, located_at_model

MAX_BYTES = 2**31 - 1  # a protobuf message, hence an ONNX file without external data, is below 2 GiB
LIGHT = 1024  # elements: shapes, indices and scalars stay data when checking (shape inference reads them)


def require_onnx():
    """The onnx module, or a CliError that says how to install the optional extra."""
    try:
        import onnx
    except ImportError:
        raise CliError("ONNX export needs the `onnx` package: pip install -e '.[onnx]' "
                       "(or pip install onnx onnxruntime)") from None
    return onnx


def inference_graph(model: Model, level: int = 2) -> Graph:
    """The graph export writes: the inference graph, optimised at `level` without fusion."""
    return optimize(build(model, "infer"), level, disable=("fuse",))[0]


def export(model: Model, weights, level: int = 2, checkpoint: str | None = None):
    """The ONNX ModelProto of `model`'s inference graph with `weights` (every parameter by name),
    checked by onnx.checker and carrying its inferred shapes. CompileError (E0601) lists every
    op that cannot be exported, located in the .net source."""
    graph = located_at_model(model, lambda: inference_graph(model, level))
    try:
        return to_onnx(graph, weights, metadata(model, level, checkpoint),
                       f"{model.name} from {printable(str(model.program.root))}, inference graph at -O{level}")
    except CompileError as err:
        err.sources = model.program.sources
        raise


def to_onnx(graph: Graph, weights, props: dict[str, str] | None = None, doc: str = ""):
    """`graph` (an inference graph) with `weights` as a checked ONNX ModelProto named after it."""
    onnx = require_onnx()
    out = _OnnxGraph(onnx)
    names = _tensor_names(graph)
    fixed = _weight_values(graph, weights)
    kept = {o.value for o in graph.outputs} | {i for n in graph.nodes if n.name not in fixed for i in n.inputs}
    errors: list[Diagnostic] = []
    for node in graph.nodes:
        if node.op == "input":
            out.inputs.append(_value_info(onnx, names[node.name], node.type))
        elif node.name in fixed:
            if node.name in kept:  # what only feeds other weight values is folded away
                out.add_initializer(names[node.name], fixed[node.name])
        else:
            site = Site(node, [names[i] for i in node.inputs], [graph[i].type for i in node.inputs],
                        names[node.name], out)
            try:
                lowering(node.op)(site)
            except Refused as e:
                errors.append(Diagnostic("E0601", f"cannot export {node.op} ('{node.name}') to ONNX: {e}",
                                         node.span))
    if errors:
        raise CompileError(errors)
    for o in graph.outputs:
        if names[o.value] != o.name:  # a second output of the same value
            out.add_node("Identity", [names[o.value]], o.name, o.name, {})
        out.outputs.append(_value_info(onnx, o.name, graph[o.value].type))
    if out.bytes > MAX_BYTES:
        raise CliError(f"model '{graph.name}' has {out.bytes / 2**30:.1f} GiB of weights; an ONNX file holds "
                       "less than 2 GiB, and dslc does not write ONNX external data")
    # The checker and strict shape inference run on a copy whose large weights are typed graph
    # inputs instead of data (serialising 500 MB twice would take seconds); the inferred types
    # are then kept in the model that is written.
    light = out.model(graph.name, props or {}, doc, light=True)
    onnx.checker.check_model(light, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
    proto = out.model(graph.name, props or {}, doc, light=False)
    proto.graph.value_info.extend(inferred.graph.value_info)
    return proto


def save(proto, path) -> int:
    """Write `proto` to `path` atomically; returns the number of bytes written."""
    data = proto.SerializeToString()
    write_atomic(path, data)
    return len(data)


def metadata(model: Model, level: int, checkpoint: str | None) -> dict[str, str]:
    """What a reader of the ONNX file needs to trace it back: model, source, settings, weights."""
    # paths escaped as messages show them: protobuf's strings are UTF-8, and a name with a
    # byte that is not (Python's lone surrogate, 'm\\udcff.net') was a traceback
    props = {"dslc.model": model.name, "dslc.source": printable(str(model.program.root)),
             "dslc.source_sha256": source_digest(model), "dslc.hyperparameters": json.dumps(hyperparameters(model)),
             "dslc.opt_level": str(level), "dslc.version": __version__}
    if checkpoint is not None:
        props["dslc.checkpoint"] = printable(str(checkpoint))
    return props


def source_digest(model: Model) -> str:
    """sha256 of the .net files the model was read from (the root and its imports, by path)."""
    h = hashlib.sha256()
    for path in sorted(model.program.modules):
        h.update(os.fsencode(path) + b"\0")  # the name's bytes, UTF-8 or not
        try:
            h.update(Path(path).read_bytes())
        except OSError:  # a model given as text (dslc.load(text=...)) has no file to read
            pass
        h.update(b"\0")
    return h.hexdigest()


def hyperparameters(model: Model) -> dict:
    """The model's hyper-parameters: --set values, else the defaults as written in the source."""
    mdef = model.program.models[model.name]
    out = {}
    for f in mdef.formals:
        if f.type is None:
            continue
        if f.name in model.overrides:
            out[f.name] = model.overrides[f.name]
        elif hasattr(f.default, "value"):  # a literal: 10, 0.5, "same", true
            out[f.name] = f.default.value
        elif f.default is not None:  # an expression: its text
            line = model.program.sources.line(f.default.span.file, f.default.span.line) or ""
            out[f.name] = line[f.default.span.col - 1:f.default.span.end_col - 1]
    return out


# ---- building the ONNX graph ---------------------------------------------------------------

class _OnnxGraph:
    """The ONNX graph under construction: nodes, initializers and the names already used."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self.used: set[str] = set()
        self.bytes = 0

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def add_node(self, op_type: str, inputs: list[str], output: str, name: str, attrs: dict, doc: str = "") -> None:
        self.used.update((output, name))
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=name, doc_string=doc or None,
                                                     **attrs))

    def add_initializer(self, name: str, array: np.ndarray) -> None:
        self.used.add(name)
        self.bytes += array.nbytes
        self.initializers.append((name, array))

    def model(self, name: str, props: dict[str, str], doc: str, light: bool):
        """The ModelProto; `light`: initializers above LIGHT elements become typed inputs instead."""
        helper, inputs, data = self.onnx.helper, list(self.inputs), []
        for key, array in self.initializers:
            if light and array.size > LIGHT:
                inputs.append(helper.make_tensor_value_info(key, self.onnx_dtype(array.dtype), array.shape))
            else:
                data.append((key, array))
        proto = helper.make_model(helper.make_graph(self.nodes, name, inputs, self.outputs),
                                  opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dslc",
                                  producer_version=__version__, doc_string=doc)
        helper.set_model_props(proto, props)
        # Added last: make_graph and make_model would each copy hundreds of megabytes of weights.
        proto.graph.initializer.extend(self.onnx.numpy_helper.from_array(np.ascontiguousarray(a), key)
                                       for key, a in data)
        return proto

    def onnx_dtype(self, dtype: np.dtype) -> int:
        return self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _value_info(onnx, name: str, t: TensorType):
    dims = [d if isinstance(d, int) else str(d) for d in t.shape]  # a symbolic dimension keeps its name: N
    return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(
        np.dtype(NUMPY_DTYPE[t.dtype])), dims)


def _tensor_names(graph: Graph) -> dict[str, str]:
    """The ONNX tensor holding each node's value: the node's name, or the name of the graph
    output it is (`probs` rather than `softmax`), so a runtime's outputs are called as in .net."""
    names = {n.name: n.name for n in graph.nodes}
    taken = set(names)
    for o in graph.outputs:
        if names[o.value] == o.value and (o.name == o.value or o.name not in taken):
            names[o.value] = o.name
            taken.add(o.name)
    return names


def _weight_values(graph: Graph, weights) -> dict[str, np.ndarray]:
    """Every value computable from the weights alone (parameters, constants and what only they
    feed, such as a folded batchnorm's weight), computed by the NumPy reference."""
    fixed: list[Node] = []
    names: set[str] = set()
    for node in graph.nodes:
        if node.op in ("param", "const") or (node.op not in ("input", "random") and node.inputs
                                              and all(i in names for i in node.inputs)):
            fixed.append(node)
            names.add(node.name)
    return reference.evaluate(Graph(graph.name, tuple(fixed), ()), {}, weights)
