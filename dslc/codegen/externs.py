"""Extern kernels on the CPU: which library kernel (dslc/runtime/cpu/) computes an op, and how to call it.

`call(node, args, shapes)` gives the Python call of a kernel graph's extern node;
`args` are the identifiers of the node's inputs followed by its output, `shapes` the
inputs' static shapes (geometry needs H and W, which are never symbolic). Convolutions
share one `workspace` [threads, slot] (im2col blocks); `workspace_slot` sizes a slot
for a bound batch. A convolution pass by Winograd also reads a table of its transformed
weights, its own (`weight_table` sizes it), which the driver fills before it. An op
missing here has no library kernel yet: the generator runs its NumPy reference instead
(it allocates), see `numba_cpu.py`.
"""
from __future__ import annotations

from typing import Callable

from dslc.kernels.geometry import conv_modules, geometry, pool_geometry, winograd_table, workspace_shape
from dslc.ops.registry import pair
from dslc.ops.shape import pad_pairs

def _geom(node, size) -> str:
    return ", ".join(str(v) for v in geometry(node.attr_dict, size)) + f", {node.attr('groups')}"


def _conv(node, size, c_in: int, c_out: int, which: int) -> str:
    """The library module of pass `which` (0 forward, 1 input gradient, 2 weight gradient) of
    a convolution: geometry.pass_modules chooses between winograd.py, strided.py (directly
    from the input's planes) and conv.py (im2col + GEMM), by measurement."""
    return conv_modules(node.attr_dict, tuple(size), c_in, c_out)[which]


def _pool(node, size, what) -> str:
    attrs = dict(node.attr_dict)
    return ", ".join(str(v) for v in pool_geometry(attrs, size, what))


def _opt(args, k: int) -> str:
    return args[k] if len(args) > k + 1 else "None"


def _along(node) -> str:
    """`axis, whole` of an op over one axis or, when its axis is none, every element."""
    axis = node.attr("axis")
    return f"{0 if axis is None else axis}, {axis is None}"


def _stack(node, args) -> str:
    """One call per input of a stack: each writes its slot of the new axis."""
    return "\n".join(f"along_axis.stack_part({x}, {args[-1]}, {node.attr('axis')}, {k})"
                      for k, x in enumerate(args[:-1]))


def _upsample(node) -> str:
    sh, sw = pair(node.attr("scale"))
    return f"{sh}, {sw}, {node.attr('mode') == 'bilinear'}"


def _lrn(node) -> str:
    return ", ".join(repr(node.attr(a)) for a in ("size", "alpha", "beta", "k"))


def _slice(node, shape) -> str:
    """`axis, first, step` of a slice of an array of `shape` (start/stop resolved as Python does)."""
    axis = node.attr("axis") % len(shape)
    first = range(*slice(node.attr("start"), node.attr("stop"), node.attr("step")).indices(shape[axis]))[0]
    return f"{axis}, {first}, {node.attr('step')}"


def _before(node, shape) -> str:
    """The padding before each axis, as a tuple literal: `(0, 4, 0, 0)`."""
    before = [str(lo) for lo, _ in pad_pairs(len(shape), node.attr("pads"))]
    return f"({', '.join(before)}{',' if len(before) == 1 else ''})"


def _groups(node, shape) -> int:
    """The groups of a groupnorm-family node on x of `shape`: layernorm 1, instancenorm C."""
    return {"layernorm": 1, "instancenorm": shape[1]}.get(node.op) or node.attr("groups")


def _norm(node, shape) -> str:
    return f"{_groups(node, shape)}, {node.attr('eps')!r}"


# op -> (node, args, input shapes) -> call (lines, for a call per input); args = input identifiers then the output's.
CALLS: dict[str, Callable] = {
    "matmul": lambda n, a, s: f"gemm.gemm({a[0]}, {a[1]}, {a[-1]}, {n.attr('transpose_a')}, {n.attr('transpose_b')})",
    "linear": lambda n, a, s: f"gemm.linear_forward({a[0]}, {a[1]}, {_opt(a, 2)}, {a[-1]})",
    "conv2d": lambda n, a, s: (f"{_conv(n, s[0][2:], s[0][1], s[1][0], 0)}.conv2d_forward({a[0]}, {a[1]}, "
                               f"{_opt(a, 2)}, {a[-1]}, {_geom(n, s[0][2:])}, workspace)"),
    "conv2d_grad_input": lambda n, a, s: (f"{_conv(n, n.attr('size'), s[1][1] * n.attr('groups'), s[1][0], 1)}"
                                          f".conv2d_grad_input({a[0]}, {a[1]}, {a[-1]}, "
                                          f"{_geom(n, tuple(n.attr('size')))}, workspace)"),
    "conv2d_grad_weight": lambda n, a, s: (f"{_conv(n, s[1][2:], s[1][1], s[0][1], 2)}.conv2d_grad_weight({a[0]}, "
                                           f"{a[1]}, {a[-1]}, {_geom(n, s[1][2:])}, workspace)"),
    "maxpool": lambda n, a, s: f"pool.maxpool_forward({a[0]}, {a[-1]}, {_pool(n, s[0][2:], 'maxpool')})",
    "maxpool_grad": lambda n, a, s: (f"pool.maxpool_backward({a[0]}, {a[1]}, {a[-1]}, "
                                     f"{_pool(n, s[1][2:], 'maxpool')}, {n.attr('positive')})"),
    "avgpool": lambda n, a, s: f"pool.avgpool_forward({a[0]}, {a[-1]}, {_pool(n, s[0][2:], 'avgpool')})",
    "avgpool_grad": lambda n, a, s: (f"pool.avgpool_backward({a[0]}, {a[-1]}, "
                                     f"{_pool(n, tuple(n.attr('size')), 'avgpool')})"),
    "global_avgpool": lambda n, a, s: f"pool.global_avgpool_forward({a[0]}, {a[-1]})",
    "softmax": lambda n, a, s: f"softmax.softmax_forward({a[0]}, {a[-1]}, {n.attr('axis')})",
    "log_softmax": lambda n, a, s: f"softmax.log_softmax_forward({a[0]}, {a[-1]}, {n.attr('axis')})",
    "cross_entropy": lambda n, a, s: f"softmax.softmax_cross_entropy_forward({a[0]}, {a[1]}, {a[-1]})",
    "cross_entropy_grad": lambda n, a, s: (f"softmax.softmax_cross_entropy_backward({a[0]}, {a[1]}, {a[2]}, "
                                           f"{a[-1]})"),
    "accuracy": lambda n, a, s: f"softmax.accuracy({a[0]}, {a[1]}, {a[-1]})",
    # along one axis (along_axis.py), batched products, upsampling and lrn
    "max": lambda n, a, s: f"along_axis.extremum({a[0]}, {a[-1]}, {_along(n)}, False)",
    "min": lambda n, a, s: f"along_axis.extremum({a[0]}, {a[-1]}, {_along(n)}, True)",
    "extremum_grad": lambda n, a, s: (f"along_axis.extremum_grad({a[0]}, {a[1]}, {a[-1]}, {_along(n)}, "
                                      f"{n.attr('mode') == 'min'})"),
    "argmax": lambda n, a, s: f"along_axis.argmax({a[0]}, {a[-1]}, {_along(n)})",
    "gather": lambda n, a, s: f"along_axis.gather({a[0]}, {a[1]}, {a[-1]}, {n.attr('axis')})",
    "gather_grad": lambda n, a, s: f"along_axis.gather_grad({a[0]}, {a[1]}, {a[-1]}, {n.attr('axis')})",
    "one_hot": lambda n, a, s: f"along_axis.one_hot({a[0]}, {a[-1]})",
    "stack": lambda n, a, s: _stack(n, a),
    "unstack": lambda n, a, s: f"along_axis.unstack({a[0]}, {a[-1]}, {n.attr('axis')}, {n.attr('index')})",
    "nll_loss": lambda n, a, s: f"along_axis.nll_loss_forward({a[0]}, {a[1]}, {a[-1]})",
    "nll_loss_grad": lambda n, a, s: f"along_axis.nll_loss_backward({a[0]}, {a[1]}, {a[2]}, {a[-1]})",
    "r2": lambda n, a, s: f"along_axis.r2({a[0]}, {a[1]}, {a[-1]})",
    "bmm": lambda n, a, s: f"gemm.bmm({a[0]}, {a[1]}, {a[-1]}, {n.attr('transpose_a')}, {n.attr('transpose_b')})",
    "upsample": lambda n, a, s: f"resample.upsample_forward({a[0]}, {a[-1]}, {_upsample(n)})",
    "upsample_grad": lambda n, a, s: f"resample.upsample_backward({a[0]}, {a[-1]}, {_upsample(n)})",
    "lrn": lambda n, a, s: f"lrn.lrn_forward({a[0]}, {a[-1]}, {_lrn(n)})",
    "lrn_grad": lambda n, a, s: f"lrn.lrn_backward({a[0]}, {a[1]}, {a[-1]}, {_lrn(n)})",
    # A data-parallel step's collectives: plain Python around the group's MPI calls.
    "allreduce_mean": lambda n, a, s: (f"collective.allreduce_mean({a[0]}, {a[-1]}, {n.attr('bucket')}, "
                                       f"{n.attr('members')})"),
    "global_count": lambda n, a, s: f"collective.global_count({a[0]}, {a[-1]}, {n.attr('axis')!r})",
    # shape ops (slicing.py), the multiclass hinge and the groupnorm family (groupnorm.py)
    "svm": lambda n, a, s: f"softmax.svm_forward({a[0]}, {a[1]}, {a[-1]}, {n.attr('margin')!r})",
    "svm_grad": lambda n, a, s: f"softmax.svm_backward({a[0]}, {a[1]}, {a[2]}, {a[-1]}, {n.attr('margin')!r})",
    "slice": lambda n, a, s: f"slicing.slice_forward({a[0]}, {a[-1]}, {_slice(n, s[0])})",
    "slice_grad": lambda n, a, s: f"slicing.slice_backward({a[0]}, {a[-1]}, {_slice(n, s[1])})",
    "pad": lambda n, a, s: f"slicing.pad_forward({a[0]}, {a[-1]}, {_before(n, s[0])}, {float(n.attr('value'))!r})",
    **{op: (lambda n, a, s: f"groupnorm.groupnorm_forward({a[0]}, {a[1]}, {a[2]}, {a[-1]}, {_norm(n, s[0])})")
       for op in ("groupnorm", "layernorm", "instancenorm")},
    "groupnorm_grad_input": lambda n, a, s: (f"groupnorm.groupnorm_grad_input({a[0]}, {a[1]}, {a[2]}, {a[-1]}, "
                                             f"{_norm(n, s[1])})"),
    "groupnorm_grad_gamma": lambda n, a, s: (f"groupnorm.groupnorm_grad_gamma({a[0]}, {a[1]}, {a[-1]}, "
                                             f"{_norm(n, s[1])}, workspace)"),
}

# Library modules the calls above name, imported by every generated module.
IMPORTS = ("from dslc.runtime.cpu import along_axis, collective, conv, gemm, groupnorm, lrn, pool, resample, "
           "slicing, softmax, strided, winograd")
# Those of them that are plain Python, not Numba kernels: nothing to compile ahead of a step.
HOST_MODULES = ("collective",)

# Library kernels whose last argument says whether to apply a relu to what they write: an
# epilogue whose whole tail is that relu is the library call alone (numba_loops.elementwise),
# no pass over the output from memory (small_cnn's saliency gradient at batch 32: 0.10 of 3.6 ms).
RELU_LAST = frozenset({"conv2d", "linear"})


def call(node, args: list[str], shapes: list[tuple[int, ...]], relu: bool = False,
         table: str | None = None) -> list[str]:
    """The driver's lines running extern `node`: one call, or one per input (stack); for an op
    of RELU_LAST, with `relu` as its last argument; for a Winograd pass, with its `table` of
    transformed weights right after the weights (weight_table)."""
    if table is not None:
        args = [args[0], f"{args[1]}, {table}", *args[2:]]
    lines = CALLS[node.op](node, args, shapes).split("\n")
    if node.op in RELU_LAST:
        lines[0] = f"{lines[0][:-1]}, {relu})"
    elif relu:
        raise ValueError(f"the library kernel of {node.op} applies no relu")
    return lines


def weight_table(node, shapes: list[tuple[int, ...]]) -> tuple[bool, int] | None:
    """(flip, elements) of the table of transformed weights that `node` reads when it is a
    convolution's forward or input gradient by Winograd (runtime/cpu/winograd.py: flip for the
    input gradient's), else None. The driver fills it with winograd.transform_weights."""
    if node.op == "conv2d" and _conv(node, shapes[0][2:], shapes[0][1], shapes[1][0], 0) == "winograd":
        return False, winograd_table(shapes[1][0], shapes[1][1])
    if node.op == "conv2d_grad_input" and \
            _conv(node, node.attr("size"), shapes[1][1] * node.attr("groups"), shapes[1][0], 1) == "winograd":
        return True, winograd_table(shapes[1][1], shapes[1][0])
    return None


# op -> (node, input shapes, output shape) -> elements of one thread's workspace slot: the
# convolutions' im2col blocks (x [N, C, H, W], w [O, C/G, kh, kw], g [N, O, Ho, Wo]), and
# groupnorm's per-(example, group) statistics, in the first slot (runtime/cpu/groupnorm.py).
WORKSPACE: dict[str, Callable] = {
    "conv2d": lambda n, s, out: workspace_shape(s[0], s[1], out[2:], geometry(n.attr_dict, s[0][2:]))[1],
    "conv2d_grad_input": lambda n, s, out: workspace_shape(out, s[1], s[0][2:],  # out: dx
                                                           geometry(n.attr_dict, out[2:]))[1],
    "conv2d_grad_weight": lambda n, s, out: workspace_shape(s[1], out, s[0][2:],  # out: dw
                                                            geometry(n.attr_dict, s[1][2:]))[1],
    "groupnorm_grad_gamma": lambda n, s, out: 2 * s[1][0] * n.attr("groups"),
}


def workspace_slot(node, shapes: list[tuple[int, ...]], out_shape: tuple[int, ...]) -> int:
    """Elements of one thread's slot of the shared workspace [threads, slot] that `node`
    needs at these bound shapes (0: none)."""
    rule = WORKSPACE.get(node.op)
    return rule(node, shapes, out_shape) if rule else 0
