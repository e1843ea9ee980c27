"""How each op of the registry is written in ONNX (opset OPSET), or why it cannot be.

ONNX is a fixed operator set, so export is a per-op translation: one lowering per op,
keyed by the op's registry name (as a backend registers per op), each a few lines that
emit ONNX nodes through a `Site`. An op without a lowering is refused with the reason its
category gives (REFUSED): losses, metrics and regularisers are training objectives, the
compiler's own derivative and optimizer ops exist only in training graphs. A test walks
the registry: every op has a lowering or a refusal, and every lowering is checked in
onnxruntime against the op's NumPy reference on the op's own Samples.

    lowering("relu")(site)       # emits Relu(x) named after the dslc node
    refusal("cross_entropy")     # 'a loss: ...'

The conventions that differ between the two sides are written where they meet:
dslc's linear weight is (in, out), so linear is Gemm(x, W, b) without transB; dslc's
`pads` list pairs (before, after) per axis where ONNX lists all befores then all afters.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dslc.ir.graph import Node
from dslc.ir.types import NUMPY_DTYPE, TensorType
from dslc.ops import registry
from dslc.ops.conv import window
from dslc.ops.elementwise import SELU_ALPHA, SELU_SCALE
from dslc.ops.shape import pad_pairs

OPSET = 17  # ONNX 1.12 (2022): onnxruntime >= 1.12, TensorRT 8.6, OpenVINO and Netron all read it
INT64_MAX = np.iinfo(np.int64).max


class Refused(Exception):
    """An op (or one use of it) that ONNX at OPSET cannot express; the exporter locates it."""


class Site:
    """One dslc node being written: the ONNX names and dslc types of its inputs, and `emit`.

    `sink` is the exporter's graph under construction (`add_node`, `add_initializer`,
    `fresh`). The node's own result is the tensor `out`; intermediate tensors are named
    `NODE/OpType` so a reader of the ONNX graph sees which layer each piece belongs to.
    """

    def __init__(self, node: Node, xs: list[str], types: list[TensorType], out: str, sink):
        self.node, self.xs, self.types, self.out, self._sink = node, xs, types, out, sink

    def attr(self, key: str):
        return self.node.attr(key)

    @property
    def where(self) -> str:
        """The node's place in the .net source (FILE:LINE:COL), the doc string of its ONNX nodes."""
        return str(self.node.span) if self.node.span else ""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(NUMPY_DTYPE[self.node.type.dtype])

    @property
    def onnx_dtype(self) -> int:
        """The ONNX element type of the node's value (for Cast)."""
        return self._sink.onnx_dtype(self.dtype)

    def emit(self, op_type: str, inputs: list[str], **attrs) -> str:
        """An intermediate ONNX node; returns its output's name."""
        out = self._sink.fresh(f"{self.node.name}/{op_type}")
        self._sink.add_node(op_type, inputs, out, out, attrs, self.where)
        return out

    def result(self, op_type: str, inputs: list[str], **attrs) -> str:
        """The ONNX node that computes the dslc node's value: it takes the dslc node's name."""
        self._sink.add_node(op_type, inputs, self.out, self.node.name, attrs, self.where)
        return self.out

    def const(self, value, suffix: str, dtype=None) -> str:
        """An initializer holding `value` (int64 for shapes and indices unless `dtype` says)."""
        array = np.asarray(value, dtype=dtype if dtype is not None else np.int64)
        name = self._sink.fresh(f"{self.node.name}/{suffix}")
        self._sink.add_initializer(name, array)
        return name

    def scalar(self, value: float, suffix: str) -> str:
        """A 0-d initializer of the node's dtype (ONNX arithmetic does not mix types)."""
        return self.const(value, suffix, self.dtype)

    def static_dims(self, t: TensorType) -> list[int]:
        """`t`'s shape for a Reshape target: the batch axis as 0 (copied from the input at run
        time), every other axis a fixed size; a second symbolic axis cannot be written so."""
        if any(not isinstance(d, int) for d in t.shape[1:]):
            raise Refused(f"{self.node.op} on {t.show()}: only the first axis may be symbolic in ONNX export")
        return [0 if not isinstance(t.shape[0], int) else t.shape[0]] + [d for d in t.shape[1:] if isinstance(d, int)]


Lowering = Callable[[Site], str]


# ---- elementwise ------------------------------------------------------------------------

def _same(op_type: str, **fixed) -> Lowering:
    """An op ONNX has under another name, with the same inputs (and NumPy broadcasting)."""
    return lambda s: s.result(op_type, s.xs, **fixed)


def _with_alpha(op_type: str) -> Lowering:
    return lambda s: s.result(op_type, s.xs, alpha=float(s.attr("alpha")))


def _gelu(s: Site) -> str:
    # Gelu is an ONNX op only from opset 20: x * 0.5 * (1 + erf(x / sqrt 2)), the exact form.
    x = s.xs[0]
    erf = s.emit("Erf", [s.emit("Div", [x, s.scalar(np.sqrt(2.0), "sqrt2")])])
    half = s.emit("Mul", [s.emit("Add", [erf, s.scalar(1.0, "one")]), s.scalar(0.5, "half")])
    return s.result("Mul", [x, half])


def _per_channel(s: Site, name: str, rank: int) -> str:
    """A per-channel vector [C] shaped [C, 1, ...] so that it broadcasts along axis 1 of a rank-`rank` tensor."""
    if rank <= 2:
        return name
    return s.emit("Unsqueeze", [name, s.const(list(range(1, rank - 1)), "axes")])


def _prelu(s: Site) -> str:
    x, alpha = s.xs
    return s.result("PRelu", [x, _per_channel(s, alpha, s.types[0].rank)])


def _softmax(op_type: str) -> Lowering:
    return lambda s: s.result(op_type, s.xs, axis=int(s.attr("axis")))


def _maxout(s: Site) -> str:
    # [N, C, *S] -> [N, C/k, k, *S], then the maximum over the k axis.
    k, dims = s.attr("k"), s.static_dims(s.types[0])
    grouped = s.emit("Reshape", [s.xs[0], s.const([dims[0], dims[1] // k, k] + dims[2:], "shape")])
    return s.result("ReduceMax", [grouped], axes=[2], keepdims=0)


# ---- layers -----------------------------------------------------------------------------

def _matmul(s: Site) -> str:
    return s.result("Gemm", s.xs, transA=int(s.attr("transpose_a")), transB=int(s.attr("transpose_b")))


def _linear(s: Site) -> str:
    return s.result("Gemm", s.xs)  # y = x @ W + b with W (in, out): no transB, unlike PyTorch's layout


def _window_attrs(s: Site) -> dict:
    """Kernel, strides and pads (ONNX order: top, left, bottom, right) of a conv2d or a pooling op."""
    win = window(s.node.attr_dict, s.types[0].shape[2:], s.node.op)
    (top, bottom), (left, right) = win.pads
    attrs = {"kernel_shape": list(win.kernel), "strides": list(win.stride), "pads": [top, left, bottom, right]}
    return attrs | ({"dilations": list(win.dilation)} if s.node.op == "conv2d" else {})


def _conv2d(s: Site) -> str:
    return s.result("Conv", s.xs, group=int(s.attr("groups")), **_window_attrs(s))


def _pool(op_type: str, **fixed) -> Lowering:
    return lambda s: s.result(op_type, s.xs, **_window_attrs(s), **fixed)


def _global_avgpool(s: Site) -> str:
    return s.result("Flatten", [s.emit("GlobalAveragePool", s.xs)], axis=1)  # [N, C, 1, 1] -> [N, C]


def _identity(s: Site) -> str:
    return s.result("Identity", s.xs[:1])


# ---- normalisation ----------------------------------------------------------------------

def _batchnorm(s: Site) -> str:
    return s.result("BatchNormalization", s.xs, epsilon=float(s.attr("eps")))


def _grouped_norm(groups_of: Callable[[Site], int]) -> Lowering:
    """groupnorm, layernorm (1 group): statistics per example and group over [N, G, -1], then
    the per-channel affine map. ONNX's LayerNormalization scales by the whole normalised
    shape, not per channel, and GroupNormalization-18 by group, so both are spelt out."""
    def lower(s: Site) -> str:
        x, gamma, beta = s.xs
        rank = s.types[0].rank
        grouped = s.emit("Reshape", [x, s.const([0, groups_of(s), -1], "groups")])
        centred = s.emit("Sub", [grouped, s.emit("ReduceMean", [grouped], axes=[2], keepdims=1)])
        var = s.emit("ReduceMean", [s.emit("Mul", [centred, centred])], axes=[2], keepdims=1)
        normed = s.emit("Div", [centred, s.emit("Sqrt", [s.emit("Add", [var, s.scalar(s.attr("eps"), "eps")])])])
        back = s.emit("Reshape", [normed, s.emit("Shape", [x])])
        scaled = s.emit("Mul", [back, _per_channel(s, gamma, rank)])
        return s.result("Add", [scaled, _per_channel(s, beta, rank)])
    return lower


def _instancenorm(s: Site) -> str:
    return s.result("InstanceNormalization", s.xs, epsilon=float(s.attr("eps")))


# ---- shapes -----------------------------------------------------------------------------

def _flatten(s: Site) -> str:
    # Reshape, not Flatten: ONNX's Flatten always makes a matrix, dslc's keeps the axes before `start`.
    return s.result("Reshape", [s.xs[0], s.const([0] * s.attr("start") + [-1], "shape")])


def _reshape(s: Site) -> str:
    return s.result("Reshape", [s.xs[0], s.const(list(s.attr("shape")), "shape")])


def _transpose(s: Site) -> str:
    rank, perm = s.types[0].rank, s.attr("perm")
    return s.result("Transpose", s.xs, perm=[p % rank for p in perm] if perm is not None else
                    list(reversed(range(rank))))


def _concat(s: Site) -> str:
    return s.result("Concat", s.xs, axis=int(s.attr("axis")))


def _pad(s: Site) -> str:
    pairs = pad_pairs(s.types[0].rank, s.attr("pads"))
    pads = [lo for lo, _ in pairs] + [hi for _, hi in pairs]  # ONNX: every "before", then every "after"
    return s.result("Pad", [s.xs[0], s.const(pads, "pads"), s.scalar(s.attr("value"), "value")], mode="constant")


def _slice(s: Site) -> str:
    stop = s.attr("stop")
    args = [[s.attr("start")], [INT64_MAX if stop is None else stop], [s.attr("axis")], [s.attr("step")]]
    return s.result("Slice", [s.xs[0]] + [s.const(v, k) for v, k in zip(args, ("starts", "ends", "axes", "steps"))])


# ---- reductions -------------------------------------------------------------------------

def _axes(s: Site) -> list[int]:
    axis, rank = s.attr("axis"), s.types[0].rank
    return list(range(rank)) if axis is None else sorted(a % rank for a in axis)


def _sum(s: Site) -> str:  # ReduceSum takes its axes as an input since opset 13
    return s.result("ReduceSum", [s.xs[0], s.const(_axes(s), "axes")], keepdims=int(s.attr("keepdims")))


def _mean(s: Site) -> str:
    return s.result("ReduceMean", s.xs, axes=_axes(s), keepdims=int(s.attr("keepdims")))


def _var(s: Site) -> str:
    x, axes = s.xs[0], _axes(s)
    mean = s.emit("ReduceMean", [x], axes=axes, keepdims=1)
    centred = s.emit("Sub", [x, mean])
    squares = s.emit("Mul", [centred, centred])
    if not s.attr("unbiased"):
        return s.result("ReduceMean", [squares], axes=axes, keepdims=int(s.attr("keepdims")))
    # n / (n - 1) with n counted at run time (the batch may be reduced): size(x) / size(mean).
    var = s.emit("ReduceMean", [squares], axes=axes, keepdims=int(s.attr("keepdims")))
    to = s.onnx_dtype
    n = s.emit("Div", [s.emit("Cast", [s.emit("Size", [x])], to=to), s.emit("Cast", [s.emit("Size", [mean])], to=to)])
    return s.result("Mul", [var, s.emit("Div", [n, s.emit("Sub", [n, s.scalar(1.0, "one")])])])


# ---- math, reductions along an axis, indexing (the language's second wave of ops) -------------

def _clip(s: Site) -> str:
    low, high = s.attr("min"), s.attr("max")  # a bound that is none is an omitted input
    bounds = [s.scalar(low, "min") if low is not None else "", s.scalar(high, "max") if high is not None else ""]
    return s.result("Clip", [s.xs[0], *bounds])


def _floor_div(s: Site) -> str:
    if s.dtype.kind != "f":
        raise Refused("floor_div of integers: ONNX's Div truncates toward zero; cast to a float first")
    return s.result("Floor", [s.emit("Div", s.xs)])


def _selu(s: Site) -> str:
    return s.result("Selu", s.xs, alpha=SELU_ALPHA, gamma=SELU_SCALE)


def _softplus(s: Site) -> str:
    beta = float(s.attr("beta"))
    if beta == 1.0:
        return s.result("Softplus", s.xs)
    b = s.scalar(beta, "beta")
    return s.result("Div", [s.emit("Softplus", [s.emit("Mul", [s.xs[0], b])]), b])


def _extremum(op_type: str) -> Lowering:
    """max/min along `axis` (every axis when none): ReduceMax/ReduceMin, axes an attribute at opset 17."""
    def lower(s: Site) -> str:
        axis, keep = s.attr("axis"), int(s.attr("keepdims"))
        return s.result(op_type, s.xs, keepdims=keep, **({} if axis is None else {"axes": [axis]}))
    return lower


def _argmax(s: Site) -> str:
    axis, keep = s.attr("axis"), int(s.attr("keepdims"))
    if axis is not None:
        return s.result("ArgMax", s.xs, axis=axis, keepdims=keep)
    # over the flattened x: a scalar, or (keepdims) ones of x's rank
    flat = s.emit("Reshape", [s.xs[0], s.const([-1], "flat")])
    if not keep:
        return s.result("ArgMax", [flat], axis=0, keepdims=0)
    index = s.emit("ArgMax", [flat], axis=0, keepdims=1)
    return s.result("Reshape", [index, s.const([1] * s.types[0].rank, "ones")])


def _gather(s: Site) -> str:
    axis = s.attr("axis")
    axes = s.const([axis], "axis")
    index = s.emit("Unsqueeze", [s.xs[1], axes])
    return s.result("Squeeze", [s.emit("GatherElements", [s.xs[0], index], axis=axis), axes])


def _one_hot(s: Site) -> str:
    values = s.const([0, 1], "values", s.dtype)
    return s.result("OneHot", [s.xs[0], s.const(s.attr("classes"), "depth"), values], axis=-1)


def _stack(s: Site) -> str:
    axis = s.attr("axis")
    axes = s.const([axis], "axis")
    parts = [s.emit("Unsqueeze", [x, axes]) for x in s.xs]
    return s.result("Concat", parts, axis=axis)


def _bmm(s: Site) -> str:
    a, b = s.xs
    if s.attr("transpose_a"):
        a = s.emit("Transpose", [a], perm=[0, 2, 1])
    if s.attr("transpose_b"):
        b = s.emit("Transpose", [b], perm=[0, 2, 1])
    return s.result("MatMul", [a, b])


def _upsample(s: Site) -> str:
    sh, sw = registry.pair(s.attr("scale"))
    scales = s.const([1.0, 1.0, float(sh), float(sw)], "scales", np.float32)
    if s.attr("mode") == "nearest":  # y[i] = x[i // s]
        return s.result("Resize", [s.xs[0], "", scales], mode="nearest",
                        coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return s.result("Resize", [s.xs[0], "", scales], mode="linear", coordinate_transformation_mode="half_pixel")


def _lrn(s: Site) -> str:
    size, alpha, beta, k = int(s.attr("size")), float(s.attr("alpha")), float(s.attr("beta")), float(s.attr("k"))
    if size % 2:  # ONNX's window, c - (size-1)/2 .. c + (size-1)/2, is dslc's (and PyTorch's) for odd sizes
        return s.result("LRN", s.xs, size=size, alpha=alpha, beta=beta, bias=k)
    # An even window is c - size/2 .. c + size/2 - 1 here, one channel earlier than ONNX's LRN
    # (which onnxruntime refuses anyway): the sums of squares as a convolution over channels.
    x, channels = s.xs[0], s.types[0].shape[1]
    if not isinstance(channels, int):
        raise Refused("lrn with an even size over a symbolic number of channels")
    planes = s.emit("Reshape", [s.emit("Mul", [x, x]), s.const([0, 1, channels, -1], "planes")])
    ones = s.const(np.ones((1, 1, size, 1)), "window", s.dtype)
    sums = s.emit("Conv", [planes, ones], pads=[size // 2, 0, (size - 1) // 2, 0])
    sums = s.emit("Reshape", [sums, s.emit("Shape", [x])])
    scale = s.emit("Add", [s.scalar(k, "k"), s.emit("Mul", [sums, s.scalar(alpha / size, "alpha")])])
    return s.result("Div", [x, s.emit("Pow", [scale, s.scalar(beta, "beta")])])


LOWERINGS: dict[str, Lowering] = {
    "add": _same("Add"), "sub": _same("Sub"), "mul": _same("Mul"), "div": _same("Div"), "neg": _same("Neg"),
    "relu": _same("Relu"), "sigmoid": _same("Sigmoid"), "tanh": _same("Tanh"),
    "leaky_relu": _with_alpha("LeakyRelu"), "elu": _with_alpha("Elu"), "gelu": _gelu, "prelu": _prelu,
    "softmax": _softmax("Softmax"), "log_softmax": _softmax("LogSoftmax"), "maxout": _maxout,
    "matmul": _matmul, "linear": _linear, "dropconnect": _linear,  # dropconnect infers as linear
    "conv2d": _conv2d, "maxpool": _pool("MaxPool"), "avgpool": _pool("AveragePool", count_include_pad=1),
    "global_avgpool": _global_avgpool,
    "dropout": _identity, "stochastic_depth": _identity,  # identities at inference
    "batchnorm": _batchnorm, "groupnorm": _grouped_norm(lambda s: s.attr("groups")),
    "layernorm": _grouped_norm(lambda s: 1), "instancenorm": _instancenorm,
    "flatten": _flatten, "reshape": _reshape, "transpose": _transpose, "concat": _concat, "pad": _pad,
    "slice": _slice, "sum": _sum, "mean": _mean, "var": _var,
    "exp": _same("Exp"), "log": _same("Log"), "sqrt": _same("Sqrt"), "abs": _same("Abs"), "pow": _same("Pow"),
    "maximum": _same("Max"), "minimum": _same("Min"), "clip": _clip, "floor_div": _floor_div,
    "selu": _selu, "softplus": _softplus, "max": _extremum("ReduceMax"), "min": _extremum("ReduceMin"),
    "argmax": _argmax, "gather": _gather, "one_hot": _one_hot, "stack": _stack, "bmm": _bmm,
    "upsample": _upsample, "lrn": _lrn,
}

# Why the ops of a category have no ONNX form. Graph sources (input, param, const) are written
# by the exporter itself (inputs and initializers); every other op has a lowering above or its
# category is here.
REFUSED = {
    "loss": "a loss is a training objective; export writes the inference graph (declare an `output`)",
    "metric": "a metric needs labels; export writes the inference graph (declare an `output`)",
    "regulariser": "a regulariser is part of the training loss, not of inference",
    "derivative": "an op the compiler makes for gradients; it is never part of an inference graph",
    "optimizer": "an optimizer update belongs to the training step",
    "kernel": "fused kernels are made for dslc's own backends after the passes export runs",
    "source": "random draws (dropout masks) exist only in training graphs",
    "collective": "a data-parallel reduction over ranks exists only in a training step",
    "rewrite": "an op the passes make (a folded batchnorm's scale): export computes what it feeds from the weights",
}


def lowering(op: str) -> Lowering:
    """The lowering of `op`; Refused (with the reason) when ONNX export does not write it."""
    if op in LOWERINGS:
        return LOWERINGS[op]
    raise Refused(refusal(op))


def refusal(op: str) -> str:
    """Why `op` is not exported (the reason of its category)."""
    return REFUSED[registry.get(op).category]
