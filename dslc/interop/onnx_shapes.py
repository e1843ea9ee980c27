"""What an ONNX graph computes at import time: constants, and the shape arithmetic of exporters.

Exporters write shapes as computations. PyTorch's `x.view(x.size(0), -1)` becomes

    Shape(x) -> Gather(0) -> Unsqueeze -> Concat([that, [-1]]) -> Reshape(x, ...)

and dslc's own groupnorm reshapes back with `Reshape(y, Shape(x))`. A .net model states
its shapes, so these subgraphs are folded here, before translation: a node of constants
only is computed once (onnx's reference implementation runs it), and the shape arithmetic
(ARITHMETIC, on small integer tensors) is computed from the static shapes ONNX shape
inference found.

The batch axis is the one symbolic size a .net model has, so a shape value is computed
twice, with the batch at two sizes (BATCHES): what agrees is a constant (it becomes an
initializer); what differs depends on the batch. Such a value is used only as a Reshape's
target, which is rewritten as a constant (the output's fixed sizes as they are, the batch
as 0, ONNX's "copy this axis", where it stays on its axis, else -1), or as a Resize's
sizes, rewritten as its scales. Shape inference then runs again, since the shapes
after those nodes are known only now. Anything else computed from the batch size (or from
data) stays in the graph, and the translator refuses it.

    proto = fold_static(onnx, proto)   # proto: shape-inferred; returns a shape-inferred copy
"""
from __future__ import annotations

import numpy as np

# Large, distinct primes: a shape expression that gives the same at both (N // 8, N - N) is one
# that does not depend on the batch, short of a divisor larger than a million.
BATCHES = (65537, 1000003)
ARITHMETIC = {"Shape", "Size", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "Identity",
              "Reshape", "Add", "Sub", "Mul", "Div", "ReduceProd"}
RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
LIGHT = 1024  # elements: a shape is a handful of integers; a bigger tensor is data, never computed twice


def fold_static(onnx, proto):
    """`proto` with everything computable at import folded into initializers (see the module)."""
    for _ in range(len(proto.graph.node) + 1):  # each round with a change removes a node or a dynamic target
        if not _Round(onnx, proto).run():
            return proto
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    return proto


def sizes_at(onnx, proto, batch: int) -> dict[str, list[int]]:
    """The shape of every tensor whose shape ONNX shape inference can find when the batch axis
    of the graph's inputs (a symbolic first axis) is `batch`. Symbols do not always survive
    inference (Resize names its output's batch anew), numbers do. The graph is inferred
    without its weights' values, which shapes do not need (small constants stay: a Reshape's
    target is one)."""
    fixed = onnx.ModelProto()
    fixed.ir_version, fixed.graph.name = proto.ir_version, proto.graph.name
    fixed.opset_import.extend(proto.opset_import)
    fixed.graph.node.extend(proto.graph.node)
    fixed.graph.output.extend(proto.graph.output)
    fixed.graph.input.extend(proto.graph.input)
    for i in fixed.graph.input:
        dims = i.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    inputs = {i.name for i in proto.graph.input}
    for t in proto.graph.initializer:
        if int(np.prod(t.dims)) <= LIGHT:
            fixed.graph.initializer.append(t)
        elif t.name not in inputs:  # its type alone, as an input
            fixed.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        fixed = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # onnx's own errors: the batch's shapes stay unknown, and so nothing folds
        return {}
    values = list(fixed.graph.value_info) + list(fixed.graph.input) + list(fixed.graph.output)
    shapes = {v.name: _numbers(v.type.tensor_type) for v in values}
    return {name: dims for name, dims in shapes.items() if dims is not None}


def _numbers(t) -> list[int] | None:
    """The sizes of tensor type `t`, if every one is a number."""
    if not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim):
        return None
    return [d.dim_value for d in t.shape.dim]


class _Round:
    """One walk over the nodes in order: `values` holds each known tensor at the two batch sizes,
    `sizes` each tensor's shape at them."""

    def __init__(self, onnx, proto):
        self.onnx, self.graph = onnx, proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.sizes = [sizes_at(onnx, proto, b) for b in BATCHES]
        self.values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for t in self.graph.initializer:
            value = onnx.numpy_helper.to_array(t)
            self.values[t.name] = (value, value)

    def run(self) -> bool:
        """Fold what this round can; True if the graph changed."""
        folded, kept, rewritten = [], [], False
        rewrite = {"Reshape": self.static_target, "Resize": self.static_scales}  # shape inputs made constant
        for k, node in enumerate(self.graph.node):
            if self.fold(node):
                folded.append(k)
                continue
            rewritten |= node.op_type in rewrite and rewrite[node.op_type](node)
            kept.append(k)
        nodes = self.graph.node
        constants = {o for k in folded for o in nodes[k].output if o and self.constant(o)}
        dynamic = {k for k in folded if not constants.issuperset(o for o in nodes[k].output if o)}
        kept = self.live(sorted(set(kept) | dynamic), dynamic)
        if not rewritten and len(kept) == len(nodes):
            return False
        used = {i for k in kept for i in nodes[k].input} | {o.name for o in self.graph.output}
        for name in sorted(constants & used):
            self.graph.initializer.append(self.onnx.numpy_helper.from_array(self.values[name][0], name))
        for k in sorted(set(range(len(nodes))) - set(kept), reverse=True):
            del nodes[k]
        return True

    def constant(self, name: str) -> bool:
        one, other = self.values[name]
        return one.dtype == other.dtype and one.shape == other.shape and bool(np.array_equal(one, other))

    def live(self, kept: list[int], dynamic: set[int]) -> list[int]:
        """The indices `kept` less the `dynamic` ones (shape values computed from the batch) whose
        results nothing uses any more: the chain of a Reshape target just rewritten."""
        needed, alive = {o.name for o in self.graph.output}, []
        for k in reversed(kept):
            node = self.graph.node[k]
            if k not in dynamic or needed.intersection(node.output):
                alive.append(k)
                needed.update(node.input)
        return alive[::-1]

    # ---- evaluation -----------------------------------------------------------------------

    def fold(self, node) -> bool:
        """Compute `node` into `values` if it is a constant or shape arithmetic; True if so."""
        ins = [i for i in node.input if i]
        if node.op_type in RANDOM or (not ins and node.op_type != "Constant"):
            return False
        if all(i in self.values and self.constant(i) for i in ins):  # once: the batch plays no part
            value = self.evaluate(node, [self.values[i][0] for i in ins])
            return value is not None and self.store(node, value, value)
        if node.op_type not in ARITHMETIC:
            return False
        if node.op_type in ("Shape", "Size"):
            if any(ins[0] not in sizes for sizes in self.sizes):
                return False
            pair = [[np.broadcast_to(np.zeros((), np.float32), sizes[ins[0]])] for sizes in self.sizes]  # no memory
        elif all(i in self.values and self.values[i][0].size <= LIGHT for i in ins):
            pair = [[self.values[i][k] for i in ins] for k in (0, 1)]
        else:
            return False
        one, other = self.evaluate(node, pair[0]), self.evaluate(node, pair[1])
        return one is not None and other is not None and self.store(node, one, other)

    def evaluate(self, node, inputs: list) -> list[np.ndarray] | None:
        """`node`'s outputs computed by onnx's reference implementation; None if it cannot run
        them (a malformed node, an op it lacks): the node stays, and the translator names it."""
        from onnx.reference import ReferenceEvaluator

        feeds = dict(zip([i for i in node.input if i], inputs))
        try:
            return [np.asarray(r) for r in ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)]
        except Exception:  # the reference raises whatever its kernels do (ValueError, IndexError, ...)
            return None

    def store(self, node, one: list, other: list) -> bool:
        for name, a, b in zip(node.output, one, other):
            self.values[name] = (a, b)
        return True

    # ---- Reshape targets computed from the batch --------------------------------------------

    def dynamic(self, node, slot: int) -> bool:
        """Whether input `slot` of `node` is a value computed from the batch size."""
        return len(node.input) > slot and node.input[slot] in self.values and not self.constant(node.input[slot])

    def static_target(self, node) -> bool:
        """Rewrite a Reshape whose target depends on the batch to a constant target (0 or -1 for
        the batch); True if rewritten."""
        if not self.dynamic(node, 1):
            return False
        x = node.input[0]
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if allowzero or any(x not in sizes for sizes in self.sizes):
            return False
        ins = [sizes[x] for sizes in self.sizes]
        outs = [_reshaped(dims, self.values[node.input[1]][k].tolist()) for k, dims in enumerate(ins)]
        if outs[0] is None or outs[1] is None:
            return False
        target = []
        for axis, (one, other) in enumerate(zip(*outs)):
            if one == other:
                target.append(one)
            elif axis < len(ins[0]) and (ins[0][axis], ins[1][axis]) == (one, other):
                target.append(0)  # the input's size on this axis, copied: shape inference keeps its symbol
            else:
                target.append(-1)
        if target.count(-1) > 1 or 0 in outs[0]:
            return False  # two sizes that vary; a size 0 (an empty tensor) would read as "copy"
        node.input[1] = self.initializer(f"{node.output[0]}/static_shape", np.array(target, np.int64))
        return True

    def static_scales(self, node) -> bool:
        """Rewrite a Resize to sizes that depend on the batch (`interpolate(x, size=(h, w))` copies
        the batch and channels from Shape(x)) as one by the scales out / in, when each is the same
        whole number at both batch sizes: there sizes and scales sample alike. True if rewritten."""
        x = node.input[0]
        if not self.dynamic(node, 3) or any(x not in sizes for sizes in self.sizes):
            return False
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), range(len(self.sizes[0][x])))
        ratios = [[size / sizes[x][a] if sizes[x][a] else 0.0 for a, size in zip(axes, self.values[node.input[3]][k])]
                  for k, sizes in enumerate(self.sizes)]
        if ratios[0] != ratios[1] or not all(r > 0 and r.is_integer() for r in ratios[0]):
            return False
        scales = self.initializer(f"{node.output[0]}/static_scales", np.array(ratios[0], np.float32))
        node.input[2] = scales
        del node.input[3]
        return True

    def initializer(self, name: str, value: np.ndarray) -> str:
        self.graph.initializer.append(self.onnx.numpy_helper.from_array(value, name))
        return name


def _reshaped(dims: list[int], target: list[int]) -> list[int] | None:
    """ONNX Reshape's output shape (0 copies the input's size, one -1 is inferred), or None."""
    out = [dims[k] if t == 0 and k < len(dims) else t for k, t in enumerate(target)]
    known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
    total = int(np.prod(dims, dtype=np.int64))
    if out.count(-1) > 1 or any(d < -1 for d in out):
        return None
    if -1 in out:
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return out if int(np.prod(out, dtype=np.int64)) == total else None
