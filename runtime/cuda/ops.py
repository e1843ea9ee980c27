"""Extern ops on the GPU: cuBLAS GEMMs (cupy.matmul) and the library kernels around them.

`Library(cp, module, workspace).bind(node, ins, out)` returns a function of no
arguments that runs the op on arena views (`ins` the inputs' CuPy arrays, `out` the
output's). Geometry is read from the node's attributes and the views' shapes when the
op is bound, so a step only launches.

Convolutions are im2col + GEMM, a chunk of `nb` images at a time, with the layouts of
library.py (the CPU's, dslc/runtime/cpu/conv.py):

    forward      col = im2col(x chunk);  mat_g = W_g @ col_g;     y chunk = scatter(mat) + b
    grad-input   mat = gather(g chunk);  col_g = W_g^T @ mat_g;   dx chunk = col2im(col)
    grad-weight  col = im2col(x chunk);  mat = gather(g chunk);   dW_g += mat_g @ col_g^T

Groups are one batched matmul ([G, O/G, K/G] @ [G, K/G, pixels]). The workspace holds
[col | mat | dW partial]; `workspace_size` sizes it so a GEMM is at least
TARGET_COLUMNS pixels wide (enough to fill a GPU), which bounds col at a few hundred MB
for the largest models here; groupnorm's scale gradient keeps its per-group statistics there
(`workspace_elements`). slice and pad see their arrays as [A, D, B] around the axis and as
6-D (`pad_axes`). Only this module and runner.py import CuPy: `cp` may be any module with
CuPy's `matmul` and `add` (NumPy, in tests/test_cuda_on_host.py).
"""
from __future__ import annotations

from dslc.codegen.cuda_gpu import BLOCK, MAX_BLOCKS
from dslc.ops.conv import window
from dslc.codegen.cuda_library import PER_BLOCK, SINGLE_BLOCK, function_name
from dslc.ops.shape import pad_pairs
from dslc.runtime.cuda import nccl
from dslc.runtime.cuda.axis_ops import AxisOps

TARGET_COLUMNS = 1 << 16


def geometry(attrs, size, what: str = "conv2d") -> tuple[int, ...]:
    """(sh, sw, pt, pl, dh, dw, kh, kw) of a conv2d/pool node for an input of spatial `size`."""
    win = window(attrs, tuple(size), what)
    return win.stride + (win.pads[0][0], win.pads[1][0]) + win.dilation + win.kernel


def workspace_size(x_shape, w_shape, out_hw) -> int:
    """Elements of [col | mat | dW partial] for one convolution at these bound shapes."""
    n, c = x_shape[:2]
    o, cg, kh, kw = w_shape
    hw = out_hw[0] * out_hw[1]
    nb = min(n, -(-TARGET_COLUMNS // hw))
    return (c * kh * kw + o) * nb * hw + o * cg * kh * kw


def workspace_elements(node, in_shapes, out_shape) -> int:
    """What `node` needs of the shared workspace: a convolution's [col | mat | dW partial],
    groupnorm's scale gradient a mean and 1/sigma per (example, group); 0 for any other op."""
    if node.op == "groupnorm_grad_gamma":
        return 2 * in_shapes[1][0] * node.attr("groups")
    if node.op == "conv2d":
        return workspace_size(in_shapes[0], in_shapes[1], out_shape[2:])
    if node.op == "conv2d_grad_input":  # g [N, O, Ho, Wo], w; out dx [N, C, H, W]
        return workspace_size(out_shape, in_shapes[1], in_shapes[0][2:])
    if node.op == "conv2d_grad_weight":  # g [N, O, Ho, Wo], x [N, C, H, W]; out dw
        return workspace_size(in_shapes[1], out_shape, in_shapes[0][2:])
    return 0


class Library(AxisOps):
    """The library kernels of one generated module, and the host side of each extern op."""

    def __init__(self, cp, module, workspace):
        self.cp, self.module, self.ws = cp, module, workspace
        self.np = __import__("numpy")

    def _launch(self, kernel: str, x, count: int, args, label=None):
        fn = self.module.get_function(function_name(kernel, _dtype(x), None if label is None else _dtype(label)))
        per_block = count if kernel in PER_BLOCK else -(-count // BLOCK)
        blocks = 1 if kernel in SINGLE_BLOCK else max(1, min(per_block, MAX_BLOCKS))
        fn((blocks,), (BLOCK,), args)

    def bind(self, node, ins, out):
        """A no-argument function running `node` from views `ins` into view `out`."""
        return getattr(self, "_" + node.op)(node, ins, out, node.attr_dict)

    # ---- GEMMs ----------------------------------------------------------------------
    def _matmul(self, node, ins, out, attrs):
        a = ins[0].T if attrs["transpose_a"] else ins[0]
        b = ins[1].T if attrs["transpose_b"] else ins[1]
        return lambda: self.cp.matmul(a, b, out=out)

    def _linear(self, node, ins, out, attrs):
        x, w = ins[0], ins[1]
        rows, cols = self.np.int64(out.shape[0]), self.np.int64(out.shape[1])

        def run():
            self.cp.matmul(x, w, out=out)
            if len(ins) > 2:
                self._launch("bias_rows", out, out.size, (out, ins[2], rows, cols))
        return run

    # ---- convolutions ----------------------------------------------------------------
    def _chunk(self, n: int, rows: int, hw: int, reserved: int) -> int:
        nb = min(n, (self.ws.size - reserved) // (rows * hw))
        if nb < 1:
            raise ValueError("conv2d: workspace too small; size it with workspace_elements")
        return nb

    def _im2col_args(self, x, n0, m, geom, ho, wo):
        i32, i64 = self.np.int32, self.np.int64
        sh, sw, pt, pl, dh, dw, kh, kw = geom
        c, h, w = x.shape[1:]
        return (i64(n0), i64(m), i32(c), i32(h), i32(w), i32(kh), i32(kw), i32(sh), i32(sw), i32(pt), i32(pl),
                i32(dh), i32(dw), i32(ho), i32(wo))

    def _conv2d(self, node, ins, out, attrs):
        x, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else out
        geom = geometry(attrs, x.shape[2:])
        n, c = x.shape[:2]
        o, groups = w.shape[0], attrs["groups"]
        ho, wo = out.shape[2:]
        hw, k = ho * wo, c * geom[6] * geom[7]
        wm = w.reshape(groups, o // groups, k // groups)
        nb = self._chunk(n, k + o, hw, 0)
        i32, i64 = self.np.int32, self.np.int64

        def run():
            for n0 in range(0, n, nb):
                m = min(nb, n - n0)
                col = self.ws[:k * m * hw].reshape(groups, k // groups, m * hw)
                mat = self.ws[k * m * hw:(k + o) * m * hw].reshape(groups, o // groups, m * hw)
                self._launch("im2col", x, col.size, (x, col) + self._im2col_args(x, n0, m, geom, ho, wo))
                self.cp.matmul(wm, col, out=mat)
                self._launch("conv_scatter", x, mat.size, (mat, out, bias, i32(len(ins) > 2), i64(n0), i64(m),
                                                           i32(o), i64(hw)))
        return run

    def _conv2d_grad_input(self, node, ins, out, attrs):
        g, w = ins[0], ins[1]
        geom = geometry(attrs, tuple(attrs["size"]))
        n, c = out.shape[:2]
        o, groups = w.shape[0], attrs["groups"]
        ho, wo = g.shape[2:]
        hw, k = ho * wo, c * geom[6] * geom[7]
        wt = w.reshape(groups, o // groups, k // groups).transpose(0, 2, 1)
        nb = self._chunk(n, k + o, hw, 0)
        i32, i64 = self.np.int32, self.np.int64

        def run():
            for n0 in range(0, n, nb):
                m = min(nb, n - n0)
                col = self.ws[:k * m * hw].reshape(groups, k // groups, m * hw)
                mat = self.ws[k * m * hw:(k + o) * m * hw].reshape(groups, o // groups, m * hw)
                self._launch("conv_gather", g, mat.size, (g, mat, i64(n0), i64(m), i32(o), i64(hw)))
                self.cp.matmul(wt, mat, out=col)
                self._launch("col2im", g, m * out[0].size, (col, out) + self._im2col_args(out, n0, m, geom, ho, wo))
        return run

    def _conv2d_grad_weight(self, node, ins, out, attrs):
        g, x = ins[0], ins[1]
        geom = geometry(attrs, x.shape[2:])
        n, c = x.shape[:2]
        o, groups = out.shape[0], attrs["groups"]
        ho, wo = g.shape[2:]
        hw, k = ho * wo, c * geom[6] * geom[7]
        dw = out.reshape(groups, o // groups, k // groups)
        nb = self._chunk(n, k + o, hw, out.size)
        i32, i64 = self.np.int32, self.np.int64

        def run():
            for n0 in range(0, n, nb):
                m = min(nb, n - n0)
                col = self.ws[:k * m * hw].reshape(groups, k // groups, m * hw)
                mat = self.ws[k * m * hw:(k + o) * m * hw].reshape(groups, o // groups, m * hw)
                self._launch("im2col", x, col.size, (x, col) + self._im2col_args(x, n0, m, geom, ho, wo))
                self._launch("conv_gather", g, mat.size, (g, mat, i64(n0), i64(m), i32(o), i64(hw)))
                if n0 == 0:
                    self.cp.matmul(mat, col.transpose(0, 2, 1), out=dw)
                else:  # later chunks: a partial product, then added
                    part = self.ws[(k + o) * m * hw:(k + o) * m * hw + out.size].reshape(dw.shape)
                    self.cp.matmul(mat, col.transpose(0, 2, 1), out=part)
                    self.cp.add(dw, part, out=dw)
        return run

    # ---- pooling ---------------------------------------------------------------------
    def _pool_call(self, kernel, what, x_shape, out_hw, attrs, arrays, count, flags=()):
        sh, sw, pt, pl, _, _, kh, kw = geometry(attrs, x_shape[2:], what)
        i32 = self.np.int32
        args = tuple(arrays) + (self.np.int64(x_shape[0] * x_shape[1]),) + tuple(
            i32(v) for v in (x_shape[2], x_shape[3], out_hw[0], out_hw[1], kh, kw, sh, sw, pt, pl, *flags))
        return lambda: self._launch(kernel, arrays[0], count, args)

    def _maxpool(self, node, ins, out, attrs):
        return self._pool_call("maxpool_forward", "maxpool", ins[0].shape, out.shape[2:], attrs, (ins[0], out),
                               out.size)

    def _maxpool_grad(self, node, ins, out, attrs):
        g, x = ins
        return self._pool_call("maxpool_backward", "maxpool", x.shape, g.shape[2:], attrs, (g, x, out), out.size,
                               (attrs["positive"],))

    def _avgpool(self, node, ins, out, attrs):
        return self._pool_call("avgpool_forward", "avgpool", ins[0].shape, out.shape[2:], attrs, (ins[0], out),
                               out.size)

    def _avgpool_grad(self, node, ins, out, attrs):
        return self._pool_call("avgpool_backward", "avgpool", out.shape, ins[0].shape[2:], attrs, (ins[0], out),
                               out.size)

    def _global_avgpool(self, node, ins, out, attrs):
        x = ins[0]
        planes, size = self.np.int64(out.size), self.np.int64(x.size // max(out.size, 1))
        return lambda: self._launch("global_avgpool_forward", x, out.size, (x, out, planes, size))

    # ---- softmax and the classification losses -------------------------------------------
    def _softmax(self, node, ins, out, attrs, log: bool = False):
        x = ins[0]
        axis = attrs["axis"] % x.ndim
        a = int(self.np.prod(x.shape[:axis], dtype=self.np.int64))
        b = int(self.np.prod(x.shape[axis + 1:], dtype=self.np.int64))
        i64 = self.np.int64
        args = (x, out, i64(a), i64(x.shape[axis]), i64(b), self.np.int32(log))
        return lambda: self._launch("softmax_forward", x, a * b, args)

    def _log_softmax(self, node, ins, out, attrs):
        return self._softmax(node, ins, out, attrs, log=True)

    def _labelled(self, kernel, ins, out, extra=()):
        logits, labels = ins[0], ins[1]
        n, k = self.np.int64(logits.shape[0]), self.np.int64(logits.shape[1])
        args = (logits, labels) + tuple(extra) + (out, n, k)
        return lambda: self._launch(kernel, logits, logits.shape[0], args, label=labels)

    def _cross_entropy(self, node, ins, out, attrs):
        return self._labelled("cross_entropy_forward", ins, out)

    def _cross_entropy_grad(self, node, ins, out, attrs):
        return self._labelled("cross_entropy_backward", ins, out, extra=(ins[2],))

    def _accuracy(self, node, ins, out, attrs):
        return self._labelled("accuracy", ins, out)

    # ---- a data-parallel step's collectives (NCCL) -------------------------------------
    def _allreduce_mean(self, node, ins, out, attrs):
        return lambda: nccl.allreduce_mean(self.cp, ins[0], out)

    def _global_count(self, node, ins, out, attrs):
        return lambda: nccl.global_count(self.cp, ins[0], out, attrs["axis"])
    def _svm(self, node, ins, out, attrs):
        scores, labels = ins[0], ins[1]
        i64 = self.np.int64
        args = (scores, labels, out, i64(scores.shape[0]), i64(scores.shape[1]), self.np.float64(attrs["margin"]))
        return lambda: self._launch("svm_forward", scores, 1, args, label=labels)

    def _svm_grad(self, node, ins, out, attrs):
        scores, labels, g = ins
        i64 = self.np.int64
        args = (scores, labels, g, out, i64(scores.shape[0]), i64(scores.shape[1]), self.np.float64(attrs["margin"]))
        return lambda: self._launch("svm_backward", scores, scores.shape[0], args, label=labels)

    # ---- shape ops ---------------------------------------------------------------------
    def _slice_call(self, kernel, small, big, attrs, arrays, count):
        """A slice (or its adjoint) of `big` along the axis, `small` its part: both seen as [A, D, B]."""
        axis = attrs["axis"] % big.ndim
        first = range(*slice(attrs["start"], attrs["stop"], attrs["step"]).indices(big.shape[axis]))[0]
        a, b = _product(big.shape[:axis]), _product(big.shape[axis + 1:])
        i64 = self.np.int64
        args = tuple(arrays) + tuple(i64(v) for v in (a, big.shape[axis], small.shape[axis], b, first, attrs["step"]))
        return lambda: self._launch(kernel, big, count, args)

    def _slice(self, node, ins, out, attrs):
        return self._slice_call("slice_forward", out, ins[0], attrs, (ins[0], out), out.size)

    def _slice_grad(self, node, ins, out, attrs):
        return self._slice_call("slice_backward", ins[0], out, attrs, (ins[0], out), out.size)

    def _pad(self, node, ins, out, attrs):
        x = ins[0]
        xs, os, lo = pad_axes(x.shape, pad_pairs(x.ndim, attrs["pads"]))
        i64 = self.np.int64
        args = (x, out) + tuple(i64(v) for v in xs + os + lo) + (self.np.float64(attrs["value"]),)
        return lambda: self._launch("pad_forward", x, out.size, args)

    # ---- groupnorm, layernorm, instancenorm ---------------------------------------------------
    def _group_args(self, x, groups: int, eps: float) -> tuple:
        """(groups in all, G, elements per group, elements per channel, eps) of x [N, C, ...]."""
        n, c = x.shape[:2]
        size = x.size // max(n * c, 1)
        i64 = self.np.int64
        return i64(n * groups), i64(groups), i64(c // groups * size), i64(size), self.np.float64(eps)

    def _groupnorm(self, node, ins, out, attrs, groups=None):
        x, gamma, beta = ins
        groups = groups or attrs["groups"]
        args = (x, gamma, beta, out) + self._group_args(x, groups, attrs["eps"])
        return lambda: self._launch("groupnorm_forward", x, x.shape[0] * groups, args)

    def _layernorm(self, node, ins, out, attrs):
        return self._groupnorm(node, ins, out, attrs, groups=1)

    def _instancenorm(self, node, ins, out, attrs):
        return self._groupnorm(node, ins, out, attrs, groups=ins[0].shape[1])

    def _groupnorm_grad_input(self, node, ins, out, attrs):
        g, x, gamma = ins
        args = (g, x, gamma, out) + self._group_args(x, attrs["groups"], attrs["eps"])
        return lambda: self._launch("groupnorm_grad_input", x, x.shape[0] * attrs["groups"], args)

    def _groupnorm_grad_gamma(self, node, ins, out, attrs):
        g, x = ins
        n, c, groups = x.shape[0], x.shape[1], attrs["groups"]
        total, _, m, size, eps = self._group_args(x, groups, attrs["eps"])
        if self.ws.size < 2 * n * groups:
            raise ValueError("groupnorm_grad_gamma: workspace too small; size it with workspace_elements")
        stats = self.ws[:2 * n * groups]
        i64 = self.np.int64

        def run():
            self._launch("groupnorm_stats", x, n * groups, (x, stats, total, m, eps))
            self._launch("groupnorm_grad_gamma", x, c, (g, x, stats, out, i64(n), i64(c), i64(groups), size))
        return run


def _product(sizes) -> int:
    out = 1
    for d in sizes:
        out *= int(d)
    return out


def pad_axes(shape, pads) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(x sizes, out sizes, offsets) of a pad seen as 6-D, for the library's pad kernel:
    an unpadded axis merges into the axis before it (row-major, the same memory), and axes
    of size 1 are put in front.
    >>> pad_axes((8, 16, 4, 4), ((0, 0), (8, 8), (0, 0), (0, 0)))
    ((1, 1, 1, 1, 8, 256), (1, 1, 1, 1, 8, 512), (0, 0, 0, 0, 0, 128))
    """
    xs: list[int] = []
    os: list[int] = []
    lo: list[int] = []
    for d, (before, after) in zip(shape, pads):
        if xs and not before and not after:  # merge into the axis before
            xs[-1], os[-1], lo[-1] = xs[-1] * d, os[-1] * d, lo[-1] * d
        else:
            xs.append(int(d))
            os.append(int(d) + before + after)
            lo.append(before)
    if len(xs) > 6:
        raise ValueError(f"pad: {len(xs)} padded axes; the GPU kernel takes at most 6")
    front = [1] * (6 - len(xs))
    return tuple(front + xs), tuple(front + os), tuple([0] * len(front) + lo)


def _dtype(array) -> str:
    return {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64"}[str(array.dtype)]
