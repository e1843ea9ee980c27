"""`dslc import model.onnx -o model.net`: an ONNX graph as a .net model you can read and retrain.

Each ONNX node of a supported op becomes one labelled statement, the label made from the
node's name (`layer1.0.conv1` -> `layer1_0_conv1`), so the layers keep recognisable names:

    layer1_0_conv1: layer1_0_conv1 = maxpool_1 |> conv2d(64, kernel=3, pad=1, bias=false)

The weights go to a safetensors file beside the .net file, keyed as PyTorch would key them
for that model (`layer1_0_conv1.weight`; batchnorm's `weight`/`bias`/running statistics, a
linear weight as (out, in)), so `init = torch_weights("model.safetensors")` in a recipe
loads them unchanged. A classifier (one float output [N, K], a softmax or the logits) also
gets a label input, an accuracy metric and a cross-entropy loss, so it trains as it is.

The shapes come from ONNX shape inference. Whatever has no .net equivalent (an op dslc does
not know, an attribute value it does not support: asymmetric padding, ceil-mode pooling) is
listed, every node at once, by name and op type, as a CliError (exit status 1).

    import_model("resnet.onnx", "resnet.net")   # [Path('resnet.net'), Path('resnet.safetensors')]
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dslc.diagnostics import CliError
from dslc.files import write_atomic
from dslc.interop.onnx_export import require_onnx
from dslc.ops import registry
from dslc.ops.elementwise import SELU_ALPHA, SELU_SCALE

DTYPES = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64"}
KEYWORDS = {"model", "block", "input", "param", "output", "metric", "loss", "return", "repeat", "as", "train",
            "import", "true", "false"}
PASS_THROUGH = ("Identity", "Dropout")  # identities at inference
UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
         "Abs": "abs", "Softplus": "softplus"}
WITH_ALPHA = {"LeakyRelu": ("leaky_relu", 0.01), "Elu": ("elu", 1.0)}  # ONNX's defaults of alpha
BINARY = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/", "Pow": "**"}
PAIRWISE = {"Max": "maximum", "Min": "minimum"}  # of exactly two inputs


class Unsupported(Exception):
    """A node the .net language cannot express."""


def import_model(path, output, name: str | None = None) -> list[Path]:
    """Write the .net model (and its weights beside it) translated from the ONNX file `path`."""
    onnx = require_onnx()
    path, output = Path(path), Path(output)
    try:
        proto = onnx.load(path)
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except (OSError, ValueError) as e:
        raise CliError(f"{path}: not a readable ONNX model ({e})") from None
    except Exception as e:  # onnx raises its own error types for malformed models
        if type(e).__module__.startswith(("onnx", "google")):
            raise CliError(f"{path}: not a valid ONNX model ({str(e).strip().splitlines()[0]})") from None
        raise
    writer = _Writer(onnx, proto, path)
    text = writer.program(name or proto.graph.name or output.stem, output.with_suffix(".safetensors").name)
    written = [output]
    if writer.weights:
        from safetensors.numpy import save

        weights = output.with_suffix(".safetensors")
        write_atomic(weights, save({k: np.ascontiguousarray(v) for k, v in writer.weights.items()}))
        written.append(weights)
    write_atomic(output, text.encode())
    return written


class _Writer:
    """Translates the nodes in order: `vars` maps ONNX tensor names to .net variables."""

    def __init__(self, onnx, proto, source: Path):
        self.onnx, self.graph, self.source = onnx, proto.graph, source
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.consts = {t.name: onnx.numpy_helper.to_array(t) for t in self.graph.initializer}
        self.types = {v.name: v.type.tensor_type for v in
                      list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output)}
        self.vars: dict[str, str] = {}
        self.squeezed: dict[str, int] = {}  # global_avgpool results standing for [N, C, 1, 1]: C
        self.lines: list[str] = []
        self.weights: dict[str, np.ndarray] = {}
        self.taken = set(KEYWORDS) | set(registry.all_ops())

    # ---- the program ----------------------------------------------------------------------

    def program(self, name: str, weights_file: str) -> str:
        self.output_names = {o.name: self.fresh(o.name) for o in self.graph.output}  # outputs keep their names
        problems = []
        for i in self.graph.input:
            if i.name not in self.consts:
                try:
                    self.declare_input(i.name)
                except Unsupported as e:
                    problems.append(f"  input '{i.name}': {e}")
        failed: set[str] = set()  # what untranslated nodes compute: their users are not reported again
        for node in self.graph.node:
            try:
                if node.input and all(i in self.consts for i in node.input if i):
                    self.fold(node)  # weights reshaped for broadcasting, shapes computed from constants
                    continue
                if failed.isdisjoint(node.input) or node.op_type not in SUPPORTED:
                    self.translate(node)
                    continue
            except Unsupported as e:
                problems.append(f"  node '{node.name or node.output[0]}' ({node.op_type}): {e}")
            failed.update(node.output)
        if problems:
            raise CliError(f"{self.source}: {len(problems)} node(s) have no .net equivalent:\n" + "\n".join(problems)
                           + "\n  (dslc import reads Conv, Gemm, MatMul, BatchNormalization, InstanceNormalization, "
                             "pooling, activations, softmax, arithmetic and shape ops)")
        self.lines += self.outputs()
        header = [f"# Imported from {self.source.name} by `dslc import` ({len(self.graph.node)} ONNX nodes)."]
        if self.weights:
            header += [f"# Weights: {weights_file}, keyed as PyTorch would key them; a recipe loads them with",
                       f'#     init = torch_weights("{weights_file}")']
        body = "\n".join(f"    {line}" for line in self.lines)
        return "\n".join(header) + f"\n\nmodel {self.fresh(name)} {{\n{body}\n}}\n"

    def outputs(self) -> list[str]:
        lines, outs = [], list(self.graph.output)
        for o in outs:
            lines.append(f"output {self.output_names[o.name]} = {self.var(o.name)}")
        if len(outs) == 1 and self.is_classifier(outs[0].name):
            producer = next((n for n in self.graph.node if outs[0].name in n.output), None)
            logits = self.var(producer.input[0]) if producer is not None and producer.op_type == "Softmax" \
                else self.var(outs[0].name)
            label = self.fresh("label")
            lines += ["# A classifier: the labels, its accuracy and the cross-entropy of its logits.",
                      f"input {label} : i64[{self.dims(outs[0].name)[0]}]", f"metric accuracy({logits}, {label})",
                      f"loss cross_entropy({logits}, {label})"]
        return lines

    def is_classifier(self, name: str) -> bool:
        dims = self.dims(name)
        return len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 1 and self.dtype(name).startswith("f")

    # ---- names, types and values --------------------------------------------------------------

    def fresh(self, name: str) -> str:
        """A .net identifier from an ONNX name, unique and no keyword or op name."""
        base = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", name)).strip("_") or "x"
        base = base if not base[0].isdigit() else f"x{base}"
        out, k = base, 1
        while out in self.taken:
            out, k = f"{base}_{k}", k + 1
        self.taken.add(out)
        return out

    def dims(self, name: str) -> list:
        if name in self.consts:
            return list(self.consts[name].shape)
        if name not in self.types or not self.types[name].HasField("shape"):
            raise Unsupported(f"the shape of '{name}' is unknown (ONNX shape inference could not find it)")
        return [d.dim_value if d.HasField("dim_value") else "N" for d in self.types[name].shape.dim]

    def dtype(self, name: str) -> str:
        np_type = self.onnx.helper.tensor_dtype_to_np_dtype(self.types[name].elem_type)
        if str(np_type) not in DTYPES:
            raise Unsupported(f"'{name}' is {np_type}; dslc computes in {', '.join(DTYPES)}")
        return DTYPES[str(np_type)]

    def declare_input(self, name: str) -> None:
        dims = self.dims(name)
        if any(not isinstance(d, int) for d in dims[1:]):
            raise Unsupported(f"shape {dims}: only the batch axis (the first) may vary in a .net model")
        self.vars[name] = self.fresh(name)
        self.lines.append(f"input {self.vars[name]} : {self.dtype(name)}[{', '.join(str(d) for d in dims)}]")

    def var(self, name: str) -> str:
        """The .net expression of tensor `name`: a variable, a number, or a declared parameter."""
        if name in self.squeezed:  # a consumer that needs the [N, C, 1, 1] form after all
            c, four_d = self.squeezed.pop(name), self.fresh(f"{self.vars[name]}_4d")
            self.lines.append(f"{four_d} = {self.vars[name]} |> reshape([-1, {c}, 1, 1])")
            self.vars[name] = four_d
        if name in self.vars:
            return self.vars[name]
        if name in self.consts:
            value = self.consts[name]
            if value.size == 1 and value.ndim == 0:
                return _number(value.item())
            if str(value.dtype) not in DTYPES:
                raise Unsupported(f"constant '{name}' is {value.dtype}; dslc computes in {', '.join(DTYPES)}")
            param = self.vars[name] = self.fresh(name)
            self.lines.append(f"param {param} : {DTYPES[str(value.dtype)]}[{', '.join(map(str, value.shape))}] "
                              "= zeros()")
            self.weights[param] = value
            return param
        raise Unsupported(f"input '{name}' is computed by nothing dslc imported")

    def const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            raise Unsupported(f"'{name}' must be a constant (an initializer), not computed")
        return self.consts[name]

    # ---- nodes ----------------------------------------------------------------------------

    def translate(self, node) -> None:
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        if op == "Constant":
            self.consts[node.output[0]] = self.onnx.numpy_helper.to_array(attrs["value"])
        elif op in PASS_THROUGH:
            self.vars[node.output[0]] = self.var(node.input[0])
        elif op in UNARY:
            self.assign(node, f"{self.var(node.input[0])} |> {UNARY[op]}")
        elif op in BINARY:
            self.assign(node, f"{self.var(node.input[0])} {BINARY[op]} {self.var(node.input[1])}")
        elif op in PAIRWISE and len(node.input) == 2:
            self.assign(node, f"{PAIRWISE[op]}({self.var(node.input[0])}, {self.var(node.input[1])})")
        elif op == "Selu":
            if abs(attrs.get("alpha", SELU_ALPHA) - SELU_ALPHA) > 1e-6 or abs(attrs.get("gamma", SELU_SCALE) - SELU_SCALE) > 1e-6:
                raise Unsupported("selu with other constants than the paper's; dslc's selu fixes them")
            self.assign(node, f"{self.var(node.input[0])} |> selu")
        elif op == "Neg":
            self.assign(node, f"-{self.var(node.input[0])}")
        elif op in WITH_ALPHA:
            name, default = WITH_ALPHA[op]
            self.assign(node, f"{self.var(node.input[0])} |> {name}(alpha={_number(attrs.get('alpha', default))})")
        elif op in ("Softmax", "LogSoftmax"):
            if self.opset < 13 and len(self.dims(node.input[0])) > 2:
                raise Unsupported("before opset 13 softmax normalises over every axis from `axis` on")
            axis = attrs.get("axis", -1 if self.opset >= 13 else 1)
            self.assign(node, f"{self.var(node.input[0])} |> {'softmax' if op == 'Softmax' else 'log_softmax'}"
                              f"(axis={axis})")
        elif op in _LAYERS:
            _LAYERS[op](self, node, attrs)
        else:
            raise Unsupported("dslc has no such op")

    def fold(self, node) -> None:
        """A node of constants only is computed here, by onnx's own reference implementation."""
        from onnx.reference import ReferenceEvaluator

        results = ReferenceEvaluator(node).run(None, {i: self.consts[i] for i in node.input if i})
        self.consts.update(zip(node.output, (np.asarray(r) for r in results)))

    def assign(self, node, expr: str, params: dict[str, np.ndarray] | None = None) -> None:
        """`label: label = expr`: one statement per node; a layer's parameters under the label."""
        label = self.fresh(node.name or f"{node.op_type.lower()}")
        self.lines.append(f"{label}: {label} = {expr}")
        self.vars[node.output[0]] = label
        for slot, value in (params or {}).items():
            self.weights[f"{label}.{slot}"] = value


def _number(v) -> str:
    """A number as .net text: an integer as one, a float (ONNX attributes are float32) in the
    shortest form that reads back to the same float32: 1e-05, not 9.999999747378752e-06."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    text = str(np.float32(v)) if float(np.float32(v)) == float(v) else repr(float(v))
    return text if any(c in text for c in ".en") else f"{text}.0"


def _ints(values) -> str:
    values = [int(v) for v in values]
    return str(values[0]) if len(set(values)) == 1 else f"[{', '.join(map(str, values))}]"


def _window(attrs, dims) -> str:
    """kernel, stride, pad (and dilation) of a Conv or pooling node as .net attributes."""
    kernel = attrs.get("kernel_shape", dims[2:])
    if len(kernel) != 2:
        raise Unsupported(f"a {len(kernel)}-d window; dslc convolves and pools 2-d images")
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID", "SAME_UPPER"):
        raise Unsupported(f"auto_pad={auto}; dslc pads as SAME_UPPER (pad=same) or explicitly")
    pads = attrs.get("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:]:
        raise Unsupported(f"asymmetric pads {list(pads)}; dslc pads both sides of an axis alike")
    pad = "same" if auto == "SAME_UPPER" else _ints(pads[:2])
    text = f"kernel={_ints(kernel)}, stride={_ints(attrs.get('strides', [1, 1]))}, pad={pad}"
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        text += f", dilation={_ints(attrs['dilations'])}"
    return text


def _conv(w: _Writer, node, attrs) -> None:
    weight = w.const(node.input[1])
    params = {"weight": weight}
    bias = len(node.input) > 2 and node.input[2]
    if bias:
        params["bias"] = w.const(node.input[2])
    group = attrs.get("group", 1)
    extra = (f", groups={group}" if group != 1 else "") + ("" if bias else ", bias=false")
    w.assign(node, f"{w.var(node.input[0])} |> conv2d({weight.shape[0]}, {_window(attrs, weight.shape)}{extra})",
             params)


def _pool(w: _Writer, node, attrs) -> None:
    if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise Unsupported("ceil_mode or dilation; dslc pools with floor mode and no dilation")
    if node.op_type == "AveragePool" and not attrs.get("count_include_pad", 0) and any(attrs.get("pads", [0])):
        raise Unsupported("padding left out of the average (count_include_pad=0); dslc counts it, as PyTorch")
    op = "maxpool" if node.op_type == "MaxPool" else "avgpool"
    w.assign(node, f"{w.var(node.input[0])} |> {op}({_window(attrs, w.dims(node.input[0]))})")


def _global_avgpool(w: _Writer, node, attrs) -> None:
    # dslc's global_avgpool gives [N, C]; ONNX's [N, C, 1, 1], almost always flattened next.
    w.assign(node, f"{w.var(node.input[0])} |> global_avgpool")
    w.squeezed[node.output[0]] = w.dims(node.input[0])[1]


def _flatten(w: _Writer, node, attrs) -> None:
    x = node.input[0]
    if x in w.squeezed and attrs.get("axis", 1) == 1:
        w.vars[node.output[0]] = w.vars[x]  # already [N, C]
        del w.squeezed[x]
    elif attrs.get("axis", 1) == 1:
        w.assign(node, f"{w.var(x)} |> flatten")
    else:
        raise Unsupported(f"axis={attrs['axis']}; dslc's flatten keeps the batch axis (axis=1)")


def _reshape(w: _Writer, node, attrs) -> None:
    x, out = node.input[0], w.dims(node.output[0])
    if x in w.squeezed and len(out) == 2:
        _flatten(w, node, {"axis": 1})
        return
    if out[0] == "N" and len(out) == 2 and len(w.dims(x)) > 2:
        w.assign(node, f"{w.var(x)} |> flatten")
        return
    if sum(d == "N" for d in out) > 1:
        raise Unsupported(f"a target shape {out} with two unknown sizes")
    w.assign(node, f"{w.var(x)} |> reshape([{', '.join('-1' if d == 'N' else str(d) for d in out)}])")


def _gemm(w: _Writer, node, attrs) -> None:
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise Unsupported("alpha or beta other than 1; dslc multiplies plainly")
    a, b, c = node.input[0], node.input[1], node.input[2] if len(node.input) > 2 and node.input[2] else None
    if b not in w.consts or attrs.get("transA", 0):  # a product of two tensors, as dslc exports matmul
        flags = ", ".join(f"transpose_{k}={'true' if attrs.get(f'trans{k.upper()}', 0) else 'false'}" for k in "ab")
        w.assign(node, f"matmul({w.var(a)}, {w.var(b)}, {flags})" + (f" + {w.var(c)}" if c else ""))
        return
    weight = w.consts[b] if attrs.get("transB", 0) else w.consts[b].T  # PyTorch's (out, in), as torch_weights reads it
    params = {"weight": weight}
    if c:
        bias = w.const(c)
        if bias.shape != (weight.shape[0],):
            raise Unsupported(f"a bias of shape {list(bias.shape)}; dslc's linear adds one per output")
        params["bias"] = bias
    w.assign(node, f"{w.var(a)} |> linear({weight.shape[0]}{'' if c else ', bias=false'})", params)


def _matmul(w: _Writer, node, attrs) -> None:
    if node.input[1] in w.consts and w.consts[node.input[1]].ndim == 2:
        weight = w.consts[node.input[1]].T
        w.assign(node, f"{w.var(node.input[0])} |> linear({weight.shape[0]}, bias=false)", {"weight": weight})
    else:
        w.assign(node, f"{w.var(node.input[0])} @ {w.var(node.input[1])}")


def _batchnorm(w: _Writer, node, attrs) -> None:
    names = ("weight", "bias", "running_mean", "running_var")
    params = dict(zip(names, (w.const(i) for i in node.input[1:5])))
    w.assign(node, f"{w.var(node.input[0])} |> batchnorm(eps={_number(attrs.get('epsilon', 1e-5))})", params)


def _instancenorm(w: _Writer, node, attrs) -> None:
    params = {"weight": w.const(node.input[1]), "bias": w.const(node.input[2])}
    w.assign(node, f"{w.var(node.input[0])} |> instancenorm(eps={_number(attrs.get('epsilon', 1e-5))})", params)


def _prelu(w: _Writer, node, attrs) -> None:
    w.assign(node, f"{w.var(node.input[0])} |> prelu", {"weight": w.const(node.input[1]).reshape(-1)})


def _concat(w: _Writer, node, attrs) -> None:
    w.assign(node, f"concat({', '.join(w.var(i) for i in node.input)}, axis={attrs['axis']})")


def _transpose(w: _Writer, node, attrs) -> None:
    perm = attrs.get("perm", list(reversed(range(len(w.dims(node.input[0]))))))
    w.assign(node, f"{w.var(node.input[0])} |> transpose(perm=[{', '.join(map(str, perm))}])")


def _pad(w: _Writer, node, attrs) -> None:
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant" or len(node.input) > 3:
        raise Unsupported("a pad mode other than constant, or an axes input")
    pads = w.const(node.input[1]).tolist()
    rank = len(pads) // 2
    value = w.const(node.input[2]).item() if len(node.input) > 2 and node.input[2] else 0.0
    pairs = [v for axis in range(rank) for v in (pads[axis], pads[rank + axis])]  # ONNX: befores, then afters
    w.assign(node, f"{w.var(node.input[0])} |> pad([{', '.join(map(str, pairs))}], value={_number(value)})")


def _slice(w: _Writer, node, attrs) -> None:
    starts, ends = w.const(node.input[1]).tolist(), w.const(node.input[2]).tolist()
    rank = len(w.dims(node.input[0]))
    axes = w.const(node.input[3]).tolist() if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
    steps = w.const(node.input[4]).tolist() if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    expr = w.var(node.input[0])
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step <= 0:
            raise Unsupported("a negative step; dslc slices forwards")
        stop = "" if end >= 2**31 else f", stop={end}"
        expr += f" |> slice(axis={axis % rank}, start={start}{stop}, step={step})"
    w.assign(node, expr)


def _reduce(w: _Writer, node, attrs) -> None:
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = w.const(node.input[1]).tolist()
    op = "mean" if node.op_type == "ReduceMean" else "sum"
    axis = "" if not axes else f"axis=[{', '.join(map(str, axes))}], "
    w.assign(node, f"{w.var(node.input[0])} |> {op}({axis}keepdims={'true' if attrs.get('keepdims', 1) else 'false'})")


_LAYERS = {  # the ONNX ops with more to translate than a name
    "Conv": _conv, "MaxPool": _pool, "AveragePool": _pool, "GlobalAveragePool": _global_avgpool,
    "Flatten": _flatten, "Reshape": _reshape, "Gemm": _gemm, "MatMul": _matmul,
    "BatchNormalization": _batchnorm, "InstanceNormalization": _instancenorm, "PRelu": _prelu,
    "Concat": _concat, "Transpose": _transpose, "Pad": _pad, "Slice": _slice,
    "ReduceMean": _reduce, "ReduceSum": _reduce,
}
SUPPORTED = (set(_LAYERS) | set(PASS_THROUGH) | set(UNARY) | set(BINARY) | set(WITH_ALPHA)
             | set(PAIRWISE) | {"Constant", "Neg", "Softmax", "LogSoftmax", "Selu"})
