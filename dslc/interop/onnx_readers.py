"""How the ONNX ops with more to translate than a name become .net statements: one reader per op.

A reader gets the translator `w` (onnx_import._Writer: `w.var(name)` is a tensor's .net
expression, `w.const(name)` a constant's value, `w.dims(name)` its static shape with the
batch as "N" (`w.shown(name)` the shape as the file writes it, for messages), `w.dtype(name)`
its .net dtype, `w.opset` the graph's opset, `w.assign(node, expr, params)` writes the
statement; `w.vars[output] = ...` makes a node an alias), the node and its attributes as
Python values. It writes the node's statement, or raises Unsupported with what the .net
language cannot say (an attribute value, a computed operand); the translator lists every
such node at once.

    READERS["Conv"](w, node, {"pads": [1, 1, 1, 1], ...})   # conv1: conv1 = x |> conv2d(64, ...)
"""
from __future__ import annotations

import numpy as np

from dslc.ops.conv import same_padding


class Unsupported(Exception):
    """A node the .net language cannot express."""


def number(v) -> str:
    """A number as .net text: an integer as one, a float (ONNX attributes are float32) in the
    shortest form that reads back to the same float32: 1e-05, not 9.999999747378752e-06."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    if not np.isfinite(v):
        raise Unsupported(f"the value {v}, which a .net file cannot write")
    text = str(np.float32(v)) if float(np.float32(v)) == float(v) else repr(float(v))
    return text if any(c in text for c in ".en") else f"{text}.0"


def _ints(values) -> str:
    values = [int(v) for v in values]
    return str(values[0]) if len(set(values)) == 1 else f"[{', '.join(map(str, values))}]"


def _window(attrs, dims, size) -> str:
    """kernel, stride, pad (and dilation) of a Conv or pooling node as .net attributes; `dims`
    gives the kernel where no kernel_shape does (a Conv's weight), `size` is the input's [H, W]."""
    kernel = attrs.get("kernel_shape", dims[2:])
    if len(kernel) != 2:
        raise Unsupported(f"a {len(kernel)}-d window; dslc convolves and pools 2-d images")
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID", "SAME_UPPER"):
        raise Unsupported(f"auto_pad={auto}; dslc pads as SAME_UPPER (pad=same) or explicitly")
    stride, dilation = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if auto == "SAME_UPPER" or pads[:2] == pads[2:]:
        pad = "same" if auto == "SAME_UPPER" else _ints(pads[:2])
    elif pads == _same_pads(size, kernel, stride, dilation):  # how dslc exports its own pad=same
        pad = "same"
    else:
        raise Unsupported(f"asymmetric pads {pads}, not pad=same's for this input; dslc pads both sides of an "
                          "axis alike, or as SAME_UPPER (pad=same)")
    text = f"kernel={_ints(kernel)}, stride={_ints(stride)}, pad={pad}"
    if any(d != 1 for d in dilation):
        text += f", dilation={_ints(dilation)}"
    return text


def _same_pads(size, kernel, stride, dilation) -> list[int] | None:
    """ONNX's pads (top, left, bottom, right) of SAME_UPPER, which are dslc's pad=same, for an
    input of spatial `size`; None when a size is not static."""
    if len(size) != 2 or not all(isinstance(n, int) for n in size):
        return None
    (top, bottom), (left, right) = (same_padding(*axis) for axis in zip(size, kernel, stride, dilation))
    return [top, left, bottom, right]


def _conv(w, node, attrs) -> None:
    weight = w.const(node.input[1])
    params = {"weight": weight}
    bias = len(node.input) > 2 and node.input[2]
    if bias:
        params["bias"] = w.const(node.input[2])
    group = attrs.get("group", 1)
    extra = (f", groups={group}" if group != 1 else "") + ("" if bias else ", bias=false")
    try:
        size = w.dims(node.input[0])[2:]  # needed only to read uneven pads as pad=same
    except Unsupported:
        size = []
    window = _window(attrs, weight.shape, size)
    w.assign(node, f"{w.var(node.input[0])} |> conv2d({weight.shape[0]}, {window}{extra})", params)


def _pool(w, node, attrs) -> None:
    if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise Unsupported("ceil_mode or dilation; dslc pools with floor mode and no dilation")
    if node.op_type == "AveragePool" and not attrs.get("count_include_pad", 0) and any(attrs.get("pads", [0])):
        raise Unsupported("padding left out of the average (count_include_pad=0); dslc counts it, as PyTorch")
    op = "maxpool" if node.op_type == "MaxPool" else "avgpool"
    dims = w.dims(node.input[0])
    w.assign(node, f"{w.var(node.input[0])} |> {op}({_window(attrs, dims, dims[2:])})")


def _global_avgpool(w, node, attrs) -> None:
    # dslc's global_avgpool gives [N, C]; ONNX's [N, C, 1, 1], almost always flattened next.
    w.assign(node, f"{w.var(node.input[0])} |> global_avgpool")
    w.squeezed[node.output[0]] = w.dims(node.input[0])[1]


def _flatten(w, node, attrs) -> None:
    x = node.input[0]
    if x in w.squeezed and attrs.get("axis", 1) == 1:
        w.vars[node.output[0]] = w.vars[x]  # already [N, C]
        del w.squeezed[x]
    elif attrs.get("axis", 1) == 1:
        w.assign(node, f"{w.var(x)} |> flatten")
    else:
        raise Unsupported(f"axis={attrs['axis']}; dslc's flatten keeps the batch axis (axis=1)")


def _reshape(w, node, attrs) -> None:
    x, out = node.input[0], w.dims(node.output[0])
    if x in w.squeezed and len(out) == 2:
        _flatten(w, node, {"axis": 1})
        return
    dims = w.dims(x)
    if len(dims) > 2 and dims[0] == out[0] == "N" and out[1] == _product(dims[1:]):
        w.assign(node, f"{w.var(x)} |> flatten")
        return
    if sum(d == "N" for d in out) > 1:
        raise Unsupported(f"a target shape {w.shown(node.output[0])} with two unknown sizes")
    w.assign(node, f"{w.var(x)} |> reshape([{', '.join('-1' if d == 'N' else str(d) for d in out)}])")


def _gemm(w, node, attrs) -> None:
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


def _matmul(w, node, attrs) -> None:
    if node.input[1] in w.consts and w.consts[node.input[1]].ndim == 2:
        weight = w.consts[node.input[1]].T
        w.assign(node, f"{w.var(node.input[0])} |> linear({weight.shape[0]}, bias=false)", {"weight": weight})
    else:
        w.assign(node, f"{w.var(node.input[0])} @ {w.var(node.input[1])}")


def _batchnorm(w, node, attrs) -> None:
    names = ("weight", "bias", "running_mean", "running_var")
    params = dict(zip(names, (w.const(i) for i in node.input[1:5])))
    w.assign(node, f"{w.var(node.input[0])} |> batchnorm(eps={number(attrs.get('epsilon', 1e-5))})", params)


def _instancenorm(w, node, attrs) -> None:
    params = {"weight": w.const(node.input[1]), "bias": w.const(node.input[2])}
    w.assign(node, f"{w.var(node.input[0])} |> instancenorm(eps={number(attrs.get('epsilon', 1e-5))})", params)


def _prelu(w, node, attrs) -> None:
    w.assign(node, f"{w.var(node.input[0])} |> prelu", {"weight": w.const(node.input[1]).reshape(-1)})


def _concat(w, node, attrs) -> None:
    w.assign(node, f"concat({', '.join(w.var(i) for i in node.input)}, axis={attrs['axis']})")


def _transpose(w, node, attrs) -> None:
    perm = attrs.get("perm", list(reversed(range(len(w.dims(node.input[0]))))))
    w.assign(node, f"{w.var(node.input[0])} |> transpose(perm=[{', '.join(map(str, perm))}])")


def _pad(w, node, attrs) -> None:
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant" or len(node.input) > 3:
        raise Unsupported("a pad mode other than constant, or an axes input")
    pads = w.const(node.input[1]).tolist()
    rank = len(pads) // 2
    value = w.const(node.input[2]).item() if len(node.input) > 2 and node.input[2] else 0.0
    pairs = [v for axis in range(rank) for v in (pads[axis], pads[rank + axis])]  # ONNX: befores, then afters
    w.assign(node, f"{w.var(node.input[0])} |> pad([{', '.join(map(str, pairs))}], value={number(value)})")


def _slice(w, node, attrs) -> None:
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


def _reduce(w, node, attrs) -> None:
    axes = _axes(w, node, attrs)
    op = "mean" if node.op_type == "ReduceMean" else "sum"
    axis = "" if not axes else f"axis=[{', '.join(map(str, axes))}], "
    w.assign(node, f"{w.var(node.input[0])} |> {op}({axis}keepdims={_bool(attrs.get('keepdims', 1))})")


def _product(dims: list):
    """The number of elements of static `dims`; None when one is symbolic."""
    return int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None


def _axes(w, node, attrs) -> list[int] | None:
    """A reduction's axes: the attribute (before opset 18) or the constant second input."""
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = w.const(node.input[1]).tolist()
    return None if axes is None else list(axes)


# ---- the second wave: ops of exported models that dslc has under another form --------------

def _clip(w, node, attrs) -> None:
    # Bounds are attributes before opset 11 (absent: the float32 extremes), constant inputs after.
    if w.opset < 11:
        bounds = [attrs.get("min"), attrs.get("max")]
    else:
        bounds = [_scalar(w, i) if i else None for i in (list(node.input[1:3]) + ["", ""])[:2]]
    big = float(np.finfo(np.float32).max)
    text = [f"{key}={number(v)}" for key, v in zip(("min", "max"), bounds) if v is not None and abs(v) < big]
    w.assign(node, f"{w.var(node.input[0])} |> clip({', '.join(text)})")


def _gelu(w, node, attrs) -> None:
    approximate = _text(attrs.get("approximate", "none"))
    if approximate != "none":
        raise Unsupported(f"approximate={approximate}; dslc's gelu is the exact one, with erf")
    w.assign(node, f"{w.var(node.input[0])} |> gelu")


def _lrn(w, node, attrs) -> None:
    size = int(_required(attrs, "size"))
    if size % 2 == 0:  # ONNX centres an even window one channel later than dslc and PyTorch
        raise Unsupported(f"size={size}: dslc's even windows start one channel earlier than ONNX's")
    w.assign(node, f"{w.var(node.input[0])} |> lrn(size={size}, alpha={number(attrs.get('alpha', 1e-4))}, "
                   f"beta={number(attrs.get('beta', 0.75))}, k={number(attrs.get('bias', 1.0))})")


def _extremum(w, node, attrs) -> None:
    """ReduceMax/ReduceMin over one axis or all of them: dslc's max/min(axis=...)."""
    x = node.input[0]
    rank, axes = len(w.dims(x)), _axes(w, node, attrs)
    if not axes and attrs.get("noop_with_empty_axes", 0):
        w.vars[node.output[0]] = w.var(x)
        return
    axes = sorted({a % rank for a in axes or range(rank)})
    if len(axes) > 1 and axes != list(range(rank)):
        raise Unsupported(f"axes {axes}; dslc's {node.op_type[6:].lower()} reduces one axis or every axis")
    axis = f"axis={axes[0]}, " if len(axes) == 1 and rank > 1 else ""
    op = "max" if node.op_type == "ReduceMax" else "min"
    w.assign(node, f"{w.var(x)} |> {op}({axis}keepdims={_bool(attrs.get('keepdims', 1))})")


def _argmax(w, node, attrs) -> None:
    if attrs.get("select_last_index", 0):
        raise Unsupported("select_last_index=1; dslc's argmax picks the first largest element")
    axis = attrs.get("axis", 0) % max(len(w.dims(node.input[0])), 1)
    w.assign(node, f"{w.var(node.input[0])} |> argmax(axis={axis}, keepdims={_bool(attrs.get('keepdims', 1))})")


def _cast(w, node, attrs) -> None:
    source, to = w.dtype(node.input[0]), w.onnx_dtype(_required(attrs, "to"))
    if source != to and not (source.startswith("f") and to.startswith("f")):
        raise Unsupported(f"a cast from {source} to {to} of a computed tensor; dslc casts only between floats "
                          "(it computes in the model's one float type)")
    w.vars[node.output[0]] = w.var(node.input[0])


def _floor(w, node, attrs) -> None:
    w.assign(node, f"{w.var(node.input[0])} // 1.0")  # dslc has floor division, not floor: floor(x / 1)


# Resize's sampling, by (coordinate_transformation_mode, nearest_mode), that is dslc's nearest
# upsample x[i // s] for an integer factor s. With i = q s + r (0 <= r < s): asymmetric maps i to
# q + r/s, floored to q; half_pixel to q + (r + 1/2)/s - 1/2, strictly between q - 1/2 and q + 1/2,
# so rounded to q either way; tf_half_pixel_for_nn to q + (r + 1/2)/s, floored to q.
NEAREST = {("asymmetric", "floor"), ("tf_half_pixel_for_nn", "floor")} | {
    (ctm, rounding) for ctm in ("half_pixel", "pytorch_half_pixel")
    for rounding in ("round_prefer_floor", "round_prefer_ceil")}
LINEAR = {"half_pixel", "pytorch_half_pixel"}  # dslc's bilinear: align_corners=False, PyTorch's default


def _resize(w, node, attrs) -> None:
    """Resize (opset 11+) by integer factors of height and width: dslc's upsample."""
    x, mode = node.input[0], _text(attrs.get("mode", "nearest"))
    if w.opset < 11:
        raise Unsupported("Resize of opset 10, which samples as Upsample did; re-export at opset 11 or later")
    dims = w.dims(x)
    if len(dims) != 4:
        raise Unsupported(f"a rank-{len(dims)} input; dslc's upsample resizes [N, C, H, W]")
    factors = _factors(w, node, attrs, dims)
    if factors[:2] != [1, 1] or any(f < 1 or not float(f).is_integer() for f in factors[2:]):
        raise Unsupported(f"scales {factors}; dslc's upsample enlarges height and width by whole factors")
    ctm = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
    rounding = _text(attrs.get("nearest_mode", "round_prefer_floor"))
    if mode == "nearest" and (ctm, rounding) in NEAREST:
        kind = "nearest"
    elif mode == "linear" and ctm in LINEAR:
        kind = "bilinear"
    else:
        raise Unsupported(f"mode={mode}, coordinate_transformation_mode={ctm}"
                          + (f", nearest_mode={rounding}" if mode == "nearest" else "")
                          + "; dslc upsamples as PyTorch's nearest (floor) or bilinear (align_corners=False)")
    w.assign(node, f"{w.var(x)} |> upsample(scale={_ints(factors[2:])}, mode={kind})")


def _factors(w, node, attrs, dims) -> list[float]:
    """Resize's factor per axis: its scales, or its sizes over the input's (for `axes` only, if given)."""
    if _text(attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise Unsupported("keep_aspect_ratio_policy other than stretch")
    scales = node.input[2] if len(node.input) > 2 else ""
    if scales and w.const(scales).size:
        given = [float(f) for f in w.const(scales).reshape(-1)]
    elif len(node.input) > 3 and node.input[3]:
        axes = attrs.get("axes", range(len(dims)))
        if any(not isinstance(dims[a], int) for a in axes):
            raise Unsupported("sizes for the batch axis; dslc's upsample keeps the batch")
        sizes = w.const(node.input[3]).reshape(-1).tolist()
        given = [size / dims[a] if dims[a] else 0.0 for a, size in zip(axes, sizes)]
    else:
        raise Unsupported("neither scales nor sizes given")
    factors = [1.0] * len(dims)
    for a, f in zip(attrs.get("axes", range(len(dims))), given):
        factors[a] = f
    return [int(f) if float(f).is_integer() else f for f in factors]


def _scalar(w, name: str) -> float:
    value = w.const(name)
    if value.size != 1:
        raise Unsupported(f"'{name}' holds {value.size} values where ONNX wants one")
    return value.reshape(-1)[0].item()


def _required(attrs, key: str):
    if key not in attrs:
        raise Unsupported(f"no `{key}` attribute, which ONNX requires")
    return attrs[key]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bool(value) -> str:
    return "true" if value else "false"


READERS = {  # the ONNX ops with more to translate than a name
    "Conv": _conv, "MaxPool": _pool, "AveragePool": _pool, "GlobalAveragePool": _global_avgpool,
    "Flatten": _flatten, "Reshape": _reshape, "Squeeze": _reshape, "Unsqueeze": _reshape,
    "Gemm": _gemm, "MatMul": _matmul,
    "BatchNormalization": _batchnorm, "InstanceNormalization": _instancenorm, "LRN": _lrn, "PRelu": _prelu,
    "Concat": _concat, "Transpose": _transpose, "Pad": _pad, "Slice": _slice,
    "ReduceMean": _reduce, "ReduceSum": _reduce, "ReduceMax": _extremum, "ReduceMin": _extremum,
    "ArgMax": _argmax, "Clip": _clip, "Gelu": _gelu, "Floor": _floor, "Cast": _cast, "Resize": _resize,
}
