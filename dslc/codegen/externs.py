"""Extern kernels on the CPU: which library kernel (dslc/runtime/cpu/) computes an op, and how to call it.

`call(node, args, shapes)` gives the Python call of a kernel graph's extern node;
`args` are the identifiers of the node's inputs followed by its output, `shapes` the
inputs' static shapes (geometry needs H and W, which are never symbolic). Convolutions
share one `workspace` [threads, slot] (im2col blocks); `workspace_slot` sizes a slot
for a bound batch. An op missing here has no library kernel yet: the generator runs its NumPy
reference instead (it allocates), see `numba_cpu.py`.
"""
from __future__ import annotations

from typing import Callable

from dslc.kernels.geometry import geometry, pool_geometry, workspace_shape
from dslc.ops.registry import pair

def _geom(node, size) -> str:
    return ", ".join(str(v) for v in geometry(node.attr_dict, size)) + f", {node.attr('groups')}"


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


# op -> (node, args, input shapes) -> call (lines, for a call per input); args = input identifiers then the output's.
CALLS: dict[str, Callable] = {
    "matmul": lambda n, a, s: f"gemm.gemm({a[0]}, {a[1]}, {a[-1]}, {n.attr('transpose_a')}, {n.attr('transpose_b')})",
    "linear": lambda n, a, s: f"gemm.linear_forward({a[0]}, {a[1]}, {_opt(a, 2)}, {a[-1]}, False)",
    "conv2d": lambda n, a, s: (f"conv.conv2d_forward({a[0]}, {a[1]}, {_opt(a, 2)}, {a[-1]}, "
                               f"{_geom(n, s[0][2:])}, workspace)"),
    "conv2d_grad_input": lambda n, a, s: (f"conv.conv2d_grad_input({a[0]}, {a[1]}, {a[-1]}, "
                                          f"{_geom(n, tuple(n.attr('size')))}, workspace)"),
    "conv2d_grad_weight": lambda n, a, s: (f"conv.conv2d_grad_weight({a[0]}, {a[1]}, {a[-1]}, None, "
                                           f"{_geom(n, s[1][2:])}, workspace)"),
    "maxpool": lambda n, a, s: f"pool.maxpool_forward({a[0]}, {a[-1]}, {_pool(n, s[0][2:], 'maxpool')})",
    "maxpool_grad": lambda n, a, s: (f"pool.maxpool_backward({a[0]}, {a[1]}, {a[-1]}, "
                                     f"{_pool(n, s[1][2:], 'maxpool')})"),
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
}

# Library modules the calls above name, imported by every generated module.
IMPORTS = "from dslc.runtime.cpu import along_axis, collective, conv, gemm, lrn, pool, resample, softmax"
# Those of them that are plain Python, not Numba kernels: nothing to compile ahead of a step.
HOST_MODULES = ("collective",)

def has_library(op: str) -> bool:
    return op in CALLS


def call(node, args: list[str], shapes: list[tuple[int, ...]]) -> list[str]:
    """The driver's lines running extern `node`: one call, or one per input (stack)."""
    return CALLS[node.op](node, args, shapes).split("\n")


# op -> (input shapes, output shape) -> elements of one thread's workspace slot: the
# convolutions' im2col blocks (x [N, C, H, W], w [O, C/G, kh, kw], g [N, O, Ho, Wo]).
WORKSPACE: dict[str, Callable] = {
    "conv2d": lambda s, out: workspace_shape(s[0], s[1], out[2:])[1],
    "conv2d_grad_input": lambda s, out: workspace_shape(out, s[1], s[0][2:])[1],  # out: dx
    "conv2d_grad_weight": lambda s, out: workspace_shape(s[1], out, s[0][2:])[1],  # out: dw
}


def workspace_slot(node, shapes: list[tuple[int, ...]], out_shape: tuple[int, ...]) -> int:
    """Elements of one thread's slot of the shared workspace [threads, slot] that `node`
    needs at these bound shapes (0: none)."""
    rule = WORKSPACE.get(node.op)
    return rule(shapes, out_shape) if rule else 0

