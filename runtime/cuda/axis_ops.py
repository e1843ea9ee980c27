"""Extern ops on the GPU along one axis and over images, and batched products: the part of
ops.Library that binds max/min/argmax, gather, one_hot, stack, the nll loss, r2, upsample,
lrn (kernels in dslc/codegen/cuda_library_axis.py) and bmm (cuBLAS through cupy.matmul).

Each `_op(node, ins, out, attrs)` reads its geometry once, when bound, and returns the
function of no arguments that launches it; tensors along an axis go as [A, K, B]
(dslc/ops/reduce.axis_view).
"""
from __future__ import annotations

from typing import Any, Callable

from dslc.ops.reduce import axis_view
from dslc.ops.registry import pair


class AxisOps:
    """The mixin of ops.Library binding these ops (it supplies np, cp and _launch)."""

    np: Any
    cp: Any
    _launch: Callable[..., None]

    def _akb(self, shape, axis) -> tuple:
        return tuple(self.np.int64(v) for v in axis_view(tuple(shape), axis))

    def _max(self, node, ins, out, attrs, smallest: bool = False):
        x = ins[0]
        a, k, b = self._akb(x.shape, attrs["axis"])
        return lambda: self._launch("extremum", x, a * b, (x, out, a, k, b, self.np.int32(smallest)))

    def _min(self, node, ins, out, attrs):
        return self._max(node, ins, out, attrs, smallest=True)

    def _argmax(self, node, ins, out, attrs):
        x = ins[0]
        a, k, b = self._akb(x.shape, attrs["axis"])
        return lambda: self._launch("argmax", x, a * b, (x, out, a, k, b))

    def _extremum_grad(self, node, ins, out, attrs):
        x, g = ins
        a, k, b = self._akb(x.shape, attrs["axis"])
        args = (x, g, out, a, k, b, self.np.int32(attrs["mode"] == "min"))
        return lambda: self._launch("extremum_grad", x, a * b, args)

    def _gather(self, node, ins, out, attrs):
        x, index = ins
        a, k, b = self._akb(x.shape, attrs["axis"])
        return lambda: self._launch("gather", x, a * b, (x, index, out, a, k, b), label=index)

    def _gather_grad(self, node, ins, out, attrs):
        g, index = ins[0], ins[1]
        a, k, b = self._akb(out.shape, attrs["axis"])
        return lambda: self._launch("gather_grad", g, out.size, (g, index, out, a, k, b), label=index)

    def _one_hot(self, node, ins, out, attrs):
        index = ins[0]
        n, k = self.np.int64(index.size), self.np.int64(out.shape[-1])
        return lambda: self._launch("one_hot", out, out.size, (index, out, n, k), label=index)

    def _stack(self, node, ins, out, attrs):
        a, k, b = self._akb(out.shape, attrs["axis"])
        runs = [(x, (x, out, a, k, b, self.np.int64(slot))) for slot, x in enumerate(ins)]
        return lambda: [self._launch("stack_part", x, a * b, args) for x, args in runs]

    def _unstack(self, node, ins, out, attrs):
        g = ins[0]
        a, k, b = self._akb(g.shape, attrs["axis"])
        return lambda: self._launch("unstack", g, a * b, (g, out, a, k, b, self.np.int64(attrs["index"])))

    def _nll_loss(self, node, ins, out, attrs):
        logp, labels = ins
        n, k = self.np.int64(logp.shape[0]), self.np.int64(logp.shape[1])
        return lambda: self._launch("nll_loss_forward", logp, n, (logp, labels, out, n, k), label=labels)

    def _nll_loss_grad(self, node, ins, out, attrs):
        logp, labels, g = ins
        n, k = self.np.int64(logp.shape[0]), self.np.int64(logp.shape[1])
        return lambda: self._launch("nll_loss_backward", logp, out.size, (logp, labels, g, out, n, k), label=labels)

    def _r2(self, node, ins, out, attrs):
        pred, target = ins
        return lambda: self._launch("r2", pred, pred.size, (pred, target, out, self.np.int64(pred.size)))

    def _bmm(self, node, ins, out, attrs):
        a = ins[0].transpose(0, 2, 1) if attrs["transpose_a"] else ins[0]
        b = ins[1].transpose(0, 2, 1) if attrs["transpose_b"] else ins[1]
        return lambda: self.cp.matmul(a, b, out=out)

    def _upsample_args(self, image, attrs) -> tuple:
        sh, sw = pair(attrs["scale"])
        n, c, h, w = image.shape
        i32, i64 = self.np.int32, self.np.int64
        return i64(n * c), i64(h), i64(w), i32(sh), i32(sw), i32(attrs["mode"] == "bilinear")

    def _upsample(self, node, ins, out, attrs):
        x = ins[0]
        args = (x, out) + self._upsample_args(x, attrs)
        return lambda: self._launch("upsample_forward", x, out.size, args)

    def _upsample_grad(self, node, ins, out, attrs):
        g = ins[0]
        args = (g, out) + self._upsample_args(out, attrs)
        return lambda: self._launch("upsample_backward", g, out.size, args)

    def _lrn_args(self, x, attrs) -> tuple:
        n, c = x.shape[:2]
        f64 = self.np.float64
        return (self.np.int64(n), self.np.int64(c), self.np.int64(x.size // max(n * c, 1)), self.np.int32(attrs["size"]),
                f64(attrs["alpha"]), f64(attrs["beta"]), f64(attrs["k"]))

    def _lrn(self, node, ins, out, attrs):
        x = ins[0]
        args = (x, out) + self._lrn_args(x, attrs)
        return lambda: self._launch("lrn_forward", x, x.size, args)

    def _lrn_grad(self, node, ins, out, attrs):
        x, g = ins
        args = (x, g, out) + self._lrn_args(x, attrs)
        return lambda: self._launch("lrn_backward", x, x.size, args)
