"""`dslc import model.onnx -o model.net`: an ONNX graph as a .net model you can read and retrain.

Each ONNX node of a supported op becomes one labelled statement, the label made from the
node's name (`layer1.0.conv1` -> `layer1_0_conv1`), so the layers keep recognisable names:

    layer1_0_conv1: layer1_0_conv1 = maxpool_1 |> conv2d(64, kernel=3, pad=1, bias=false)

The weights go to a safetensors file beside the .net file, keyed as PyTorch would key them
for that model (`layer1_0_conv1.weight`; batchnorm's `weight`/`bias`/running statistics, a
linear weight as (out, in)), so `init = torch_weights("model.safetensors")` in a recipe
loads them unchanged. A classifier (one float output [N, K], a softmax or the logits) also
gets a label input, an accuracy metric and a cross-entropy loss, so it trains as it is.

The shapes come from ONNX shape inference. Before translation, what is computable at import
is computed (onnx_shapes.py: constants, and shape arithmetic such as PyTorch's
`x.view(x.size(0), -1)`), and chains of nodes that are one dslc op are found (onnx_patterns.py:
GELU spelt with Erf, Floor of a Div). Simple ops are translated by the tables below, the rest
by one reader each (onnx_readers.py). Whatever has no .net equivalent (an op dslc does not
know, an attribute value it does not support: asymmetric padding, ceil-mode pooling) is
listed, every node at once, by name and op type, as a CliError (exit status 1). The .net text
is then compiled as `dslc check` would (parse, names, shape inference), and a node whose
statement does not compile (a Relu of int64 values) is named the same way, as is one whose
weight does not fit its layer's parameter (a Gemm weight of 5 rows on 4 features: the ONNX
checker does not compare initializers with the tensors they meet).

Nothing is written until all is known to be right: `-o` that is the ONNX file, or whose
weights file would be (or that ends in .safetensors itself), is a usage error (exit status 2),
and the .net file and its weights are written together (files.write_together): a destination
that cannot be written leaves both files as they were.

    import_model("resnet.onnx", "resnet.net")   # [Path('resnet.net'), Path('resnet.safetensors')]
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dslc.diagnostics import CliError, CompileError, UsageError, printable
from dslc.files import check_memory, output_is_not, read_limited, same_file, write_together, written_into
from dslc.interop import onnx_patterns
from dslc.interop.onnx_export import MAX_BYTES, require_onnx
from dslc.interop.onnx_readers import READERS, Unsupported, number
from dslc.interop.onnx_shapes import ARITHMETIC, fold_static
from dslc.ops import registry
from dslc.ops.elementwise import SELU_ALPHA, SELU_SCALE
from dslc.reading import human_bytes

DTYPES = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64"}
KEYWORDS = {"model", "block", "input", "param", "output", "metric", "loss", "return", "repeat", "as", "train",
            "import", "true", "false"}
PASS_THROUGH = ("Identity", "Dropout")  # identities at inference
UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
         "Abs": "abs", "Softplus": "softplus"}
WITH_ALPHA = {"LeakyRelu": ("leaky_relu", 0.01), "Elu": ("elu", 1.0)}  # ONNX's defaults of alpha
BINARY = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/", "Pow": "**"}
PAIRWISE = {"Max": "maximum", "Min": "minimum"}  # of exactly two inputs


def import_model(path, output, name: str | None = None) -> list[Path]:
    """Write the .net model (and its weights beside it) translated from the ONNX file `path`."""
    onnx = require_onnx()
    path, output = Path(path), Path(output)
    weights_file = _weights_beside(output, path)
    raw = read_limited(path, MAX_BYTES, "an ONNX file")  # a regular file, within protobuf's bound
    try:
        proto = onnx.load_from_string(raw)
        # Each node as its op's schema has it (inputs, attribute types), so that the readers need
        # not check; tensors stored outside the file are found (and then loaded) beside it.
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            onnx.checker.check_model(str(path))  # each file a regular one inside path's directory
            _check_external_size(onnx, proto, path)
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        else:
            onnx.checker.check_model(proto)
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        read = len(proto.graph.node)
        proto = fold_static(onnx, proto)  # constants and shape arithmetic, computed now
    except (OSError, ValueError) as e:
        raise CliError(f"{path}: not a readable ONNX model ({e})") from None
    except Exception as e:  # onnx raises its own error types for malformed models
        if type(e).__module__.startswith(("onnx", "google")):
            raise CliError(f"{path}: not a valid ONNX model ({str(e).strip().splitlines()[0]})") from None
        raise
    writer = _Writer(onnx, proto, path, read)
    text = writer.program(name or proto.graph.name or output.stem, weights_file.name)
    writer.check(text, output)  # before anything is written
    files = [(output, text.encode())]
    if writer.weights:
        from safetensors.numpy import save

        files.insert(0, (weights_file, save({k: np.ascontiguousarray(v) for k, v in writer.weights.items()})))
    write_together(files)  # both or neither: the weights renamed into place first, the .net last
    return [output] + ([weights_file] if writer.weights else [])


def _weights_beside(output: Path, source: Path) -> Path:
    """The weights file of `-o output` (its name with .safetensors); UsageError when the two
    would be one file, or either is the ONNX file `source` (which would be lost)."""
    if output.suffix.lower() == ".safetensors":
        raise UsageError(f"-o {output}: the weights are written beside the .net file, to NAME.safetensors, so -o "
                         f"cannot end in .safetensors; give the .net file (-o {output.with_suffix('.net')})")
    try:
        weights = output.with_suffix(".safetensors")
    except ValueError:  # "/" or "..": no file name to give a suffix
        raise UsageError(f"-o {output} names no file; give the .net file to write") from None
    output_is_not(output, source)
    if written_into(output):
        # -o /dev/null made /dev/null.safetensors, and a FIFO nobody read left its weights
        # file behind (written first), though the .net file was refused
        raise CliError(f"cannot write {output}: import writes the .net file and its weights beside it ({weights}), "
                       "so -o names a file, not a device, a pipe or standard output")
    for other, what in ((source, "the file this command reads"), (output, "the .net file itself")):
        if same_file(weights, other):
            raise UsageError(f"-o {output} writes its weights to {weights}, which is {what} ({other}); "
                             "choose another output file")
    return weights


def _check_external_size(onnx, proto, path: Path) -> None:
    """Refuse, before reading any, external data that the import could not hold: ONNX reads
    each tensor's `length` bytes from its `offset` (the rest of its file when no length is
    given), the tensors must then fit one protobuf message (MAX_BYTES) for shape inference,
    and loading them took twice their size in memory. An 8 GiB file named by one tensor was
    read for a minute, up to 16.8 GB of memory, and then refused by protobuf."""
    total = 0
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        try:
            offset = int(info.get("offset") or 0)
            length = int(info["length"]) if info.get("length") else None
            size = (path.parent / info["location"]).stat().st_size
        except (KeyError, ValueError, OSError) as e:
            raise CliError(f"{path}: tensor {tensor.name!r} names its external data badly ({e})") from None
        total += length if length is not None else max(0, size - offset)
    if total > MAX_BYTES:
        raise CliError(f"{path}: its tensors stored outside it hold {human_bytes(total)}; an ONNX model is read "
                       f"whole, and dslc imports models whose weights are below {human_bytes(MAX_BYTES + 1)}")
    check_memory(2 * total, f"loading its external tensors ({human_bytes(total)})", path)


class _Writer:
    """Translates the nodes in order: `vars` maps ONNX tensor names to .net variables."""

    def __init__(self, onnx, proto, source: Path, read: int):
        self.onnx, self.graph, self.source, self.read = onnx, proto.graph, source, read
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.consts = {t.name: onnx.numpy_helper.to_array(t) for t in self.graph.initializer}
        self.types = {v.name: v.type.tensor_type for v in
                      list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output)}
        self.vars: dict[str, str] = {}
        self.squeezed: dict[str, int] = {}  # global_avgpool results standing for [N, C, 1, 1]: C
        self.lines: list[str] = []
        self.origins: list[str] = []  # what each line translates: "node 'conv1' (Conv)", "input 'x'"
        self.origin = "the model"
        self.weights: dict[str, np.ndarray] = {}
        self.weight_origins: dict[str, str] = {}  # the node each weight comes from, for messages
        self.taken = set(KEYWORDS) | set(registry.all_ops())

    # ---- the program ----------------------------------------------------------------------

    def program(self, name: str, weights_file: str) -> str:
        self.output_names = {o.name: self.fresh(o.name) for o in self.graph.output}  # outputs keep their names
        problems = []
        failed: set[str] = set()  # what untranslated inputs and nodes compute
        for i in self.graph.input:
            if i.name not in self.consts:
                self.origin = f"input '{i.name}'"
                try:
                    self.declare_input(i.name)
                except Unsupported as e:
                    problems.append(f"  {self.origin}: {e}")
                    failed.add(i.name)
        fused = onnx_patterns.find(self.graph, self.consts)
        inner = {k for chain in fused.values() for k in chain.inner}
        for k, node in enumerate(self.graph.node):
            if k in inner:
                continue  # written by the chain's last node
            reads = fused[k].inputs if k in fused else node.input  # a chain reads what its nodes read
            if not failed.isdisjoint(reads) and node.op_type in QUIET:
                failed.update(node.output)  # a readable op of what failed: the failure is reported once
                continue
            self.origin = f"node '{node.name or node.output[0]}' ({node.op_type})"
            try:
                if k in fused:
                    self.assign(node, fused[k].expr.format(*map(self.var, fused[k].inputs)))
                else:
                    self.translate(node)
            except Unsupported as e:
                problems.append(f"  {self.origin}: {e}")
                failed.update(node.output)
        if problems:
            raise CliError(f"{self.source}: {len(problems)} node(s) have no .net equivalent:\n" + "\n".join(problems)
                           + "\n  (dslc import reads Conv, Gemm, MatMul, normalisations, pooling, Resize, activations, "
                             "softmax, arithmetic, reductions and shape ops; shapes computed from static sizes)")
        self.outputs()
        # names escaped as messages show them: a byte that is not UTF-8 (a lone surrogate in
        # Python) cannot be written into a .net file, which is UTF-8 (it was a traceback)
        source, weights_file = printable(self.source.name), printable(weights_file)
        header = [f"# Imported from {source} by `dslc import` ({self.read} ONNX nodes)."]
        if self.weights:
            header += [f"# Weights: {weights_file}, keyed as PyTorch would key them; a recipe loads them with",
                       f'#     init = torch_weights("{weights_file}")']
        body = "\n".join(f"    {line}" for line in self.lines)
        self.first_line = len(header) + 3  # the body's, after a blank line and `model NAME {`
        return "\n".join(header) + f"\n\nmodel {self.fresh(name)} {{\n{body}\n}}\n"

    def outputs(self) -> None:
        outs = list(self.graph.output)
        for o in outs:
            self.origin = f"output '{o.name}'"
            self.emit(f"output {self.output_names[o.name]} = {self.var(o.name)}")
        if len(outs) == 1 and self.is_classifier(outs[0].name):
            producer = next((n for n in self.graph.node if outs[0].name in n.output), None)
            logits = self.var(producer.input[0]) if producer is not None and producer.op_type == "Softmax" \
                else self.var(outs[0].name)
            label = self.fresh("label")
            self.origin = f"the label, metric and loss added for classifier output '{outs[0].name}'"
            for line in ["# A classifier: the labels, its accuracy and the cross-entropy of its logits.",
                         f"input {label} : i64[{self.dims(outs[0].name)[0]}]", f"metric accuracy({logits}, {label})",
                         f"loss cross_entropy({logits}, {label})"]:
                self.emit(line)

    def emit(self, line: str) -> None:
        """One line of the model's body, remembered as a translation of what is being read now."""
        self.lines.append(line)
        self.origins.append(self.origin)

    def check(self, text: str, output: Path) -> None:
        """Compile `text` as `dslc check` would (parse, names, shape inference); a statement that
        does not compile (a float op of int64 values) is a CliError naming the ONNX node it translates."""
        from dslc.model import load

        try:
            model = load(output, text=text)
        except CompileError as e:
            lines = text.splitlines()
            problems = []
            for d in e.diagnostics:
                k = d.span.line - self.first_line if d.span is not None else -1
                if 0 <= k < len(self.origins):
                    statement = lines[d.span.line - 1].strip()
                    problems.append(f"  {self.origins[k]}: {d.message} ({d.code}, in `{statement}`)")
                else:
                    problems.append(f"  {d.message} ({d.code})")
            raise CliError(f"{self.source}: {len(problems)} statement(s) of its .net translation do not compile:\n"
                           + "\n".join(problems)) from None
        self.check_weights(model)

    def check_weights(self, model) -> None:
        """Each weight written has the shape its layer's parameter has in the compiled model, as
        torch_weights will require: a Gemm's weight of 5 rows on 4 features (the ONNX checker
        does not compare them) was written beside a .net file it could never initialise."""
        from dslc.runtime.torch_weights import torch_name, torch_shape

        graph, problems = model.graph, []
        for p in graph.params:
            key = torch_name(graph, p.name, {}, {})
            if key in self.weights and tuple(self.weights[key].shape) != torch_shape(graph, p.name):
                problems.append(f"  {self.weight_origins[key]}: its tensor for '{key}' is {list(self.weights[key].shape)}"
                                f", but the .net layer it becomes needs {list(torch_shape(graph, p.name))}")
        if problems:
            raise CliError(f"{self.source}: {len(problems)} tensor(s) do not fit the shapes of the graph they are "
                           "in:\n" + "\n".join(problems))

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

    def shown(self, name: str) -> str:
        """The shape of tensor `name` as the ONNX file writes it, for a message: `[N, C, 4]`
        (a size without a name is `?`)."""
        if name in self.consts or name not in self.types:
            return str(self.dims(name))
        return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else d.dim_param or "?"
                               for d in self.types[name].shape.dim) + "]"

    def dtype(self, name: str) -> str:
        return self.onnx_dtype(self.types[name].elem_type, f"'{name}' is ")

    def onnx_dtype(self, code: int, what: str = "") -> str:
        """The .net dtype of ONNX element type `code` (a tensor's, a Cast's `to`)."""
        np_type = self.onnx.helper.tensor_dtype_to_np_dtype(code)
        if str(np_type) not in DTYPES:
            raise Unsupported(f"{what}{np_type}; dslc computes in {', '.join(DTYPES)}")
        return DTYPES[str(np_type)]

    def declare_input(self, name: str) -> None:
        dims = self.dims(name)
        if any(not isinstance(d, int) for d in dims[1:]):
            raise Unsupported(f"shape {self.shown(name)}: only the batch axis (the first) may vary in a .net model")
        self.vars[name] = self.fresh(name)
        self.emit(f"input {self.vars[name]} : {self.dtype(name)}[{', '.join(str(d) for d in dims)}]")

    def var(self, name: str) -> str:
        """The .net expression of tensor `name`: a variable, a number, or a declared parameter."""
        if name in self.squeezed:  # a consumer that needs the [N, C, 1, 1] form after all
            c, four_d = self.squeezed.pop(name), self.fresh(f"{self.vars[name]}_4d")
            self.emit(f"{four_d} = {self.vars[name]} |> reshape([-1, {c}, 1, 1])")
            self.vars[name] = four_d
        if name in self.vars:
            return self.vars[name]
        if name in self.consts:
            value = self.consts[name]
            if value.size == 1 and value.ndim == 0:
                return number(value.item())
            if str(value.dtype) not in DTYPES:
                raise Unsupported(f"constant '{name}' is {value.dtype}; dslc computes in {', '.join(DTYPES)}")
            param = self.vars[name] = self.fresh(name)
            self.emit(f"param {param} : {DTYPES[str(value.dtype)]}[{', '.join(map(str, value.shape))}] "
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
        if op in PASS_THROUGH:
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
            self.assign(node, f"{self.var(node.input[0])} |> {name}(alpha={number(attrs.get('alpha', default))})")
        elif op in ("Softmax", "LogSoftmax"):
            if self.opset < 13 and len(self.dims(node.input[0])) > 2:
                raise Unsupported("before opset 13 softmax normalises over every axis from `axis` on")
            axis = attrs.get("axis", -1 if self.opset >= 13 else 1)
            self.assign(node, f"{self.var(node.input[0])} |> {'softmax' if op == 'Softmax' else 'log_softmax'}"
                              f"(axis={axis})")
        elif op in READERS:
            READERS[op](self, node, attrs)
        elif op in ("Shape", "Size"):  # what onnx_shapes could not fold
            raise Unsupported("a shape read at run time, used by more than a Reshape's target (or of a tensor "
                              "whose shape is unknown): dslc computes shapes from the batch and static sizes only")
        else:
            raise Unsupported("dslc has no such op")

    def assign(self, node, expr: str, params: dict[str, np.ndarray] | None = None) -> None:
        """`label: label = expr`: one statement per node; a layer's parameters under the label."""
        label = self.fresh(node.name or f"{node.op_type.lower()}")
        self.emit(f"{label}: {label} = {expr}")
        self.vars[node.output[0]] = label
        for slot, value in (params or {}).items():
            self.weights[f"{label}.{slot}"] = value
            self.weight_origins[f"{label}.{slot}"] = self.origin




SUPPORTED = (set(READERS) | set(PASS_THROUGH) | set(UNARY) | set(BINARY) | set(WITH_ALPHA)
             | set(PAIRWISE) | {"Neg", "Softmax", "LogSoftmax", "Selu"})
QUIET = SUPPORTED | ARITHMETIC  # not reported again when an input failed (unknown ops after one still are)
