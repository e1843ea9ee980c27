"""Image ops that are neither convolutions nor pooling: upsampling and AlexNet's local response norm.

Both take [N, C, H, W] (lrn any [N, C, ...]) and work plane by plane or across the
channels of one position; their gradients are library kernels too, written as gathers
(each input element sums what it contributed to), so no two threads write one element.

upsample by an integer factor s, PyTorch's `nn.Upsample(scale_factor=s)` conventions:
    nearest   y[i, j] = x[i // s, j // s]
    bilinear  align_corners=False: source row (i + 0.5) / s - 0.5, clamped at 0, read
              between rows floor(src) and the next (the last row repeats)

lrn (Krizhevsky et al. 2012), PyTorch's `LocalResponseNorm` (alpha divided by size):
    y[c] = x[c] / (k + alpha / size * sum_{c' in window(c)} x[c']^2) ^ beta,
    window(c) = c - size // 2 .. c + (size - 1) // 2, clipped to the channels
"""
from __future__ import annotations

import numpy as np

from dslc.ir.types import TensorType
from dslc.ops.registry import (Attr, OpDef, Sample, ShapeError, expect_float, expect_rank, expect_static, pair,
                               register)


def _f32(*shape) -> TensorType:
    return TensorType("f32", shape)


# ---- upsample --------------------------------------------------------------------------------

def _scales(attrs) -> tuple[int, int]:
    sh, sw = pair(attrs["scale"], "upsample scale")
    if sh < 1 or sw < 1:
        raise ShapeError(f"upsample: scale must be at least 1, got {attrs['scale']}", code="E0310")
    return sh, sw


def _upsample_shape(ins, attrs):
    x = ins[0]
    expect_float(x, "upsample")
    expect_rank(x, 4, "upsample", hint="upsample takes images [N, C, H, W]")
    sh, sw = _scales(attrs)
    h, w = expect_static(x.shape[2], "upsample height"), expect_static(x.shape[3], "upsample width")
    return TensorType(x.dtype, x.shape[:2] + (h * sh, w * sw))


def source_weights(out: int, size: int, scale: int, mode: str) -> np.ndarray:
    """W [out, size]: output row i reads input rows with these weights (one 1 for nearest,
    two for bilinear). The reference is y = Wh x Ww^T plane by plane, and its gradient the
    transposes, so the kernels' gathers are checked against plain matrix products."""
    weights = np.zeros((out, size))
    for i in range(out):
        if mode == "nearest":
            weights[i, i // scale] = 1.0
            continue
        src = max((i + 0.5) / scale - 0.5, 0.0)
        lo = int(src)
        hi = min(lo + 1, size - 1)
        weights[i, lo] += 1.0 - (src - lo)
        weights[i, hi] += src - lo
    return weights


def _upsample_ref(x, scale, mode):
    sh, sw = _scales({"scale": scale})
    h, w = x.shape[2:]
    wh, ww = source_weights(h * sh, h, sh, mode), source_weights(w * sw, w, sw, mode)
    return np.einsum("ih,nchw,jw->ncij", wh, x, ww).astype(x.dtype)


def _upsample_grad_ref(g, like, scale, mode):
    sh, sw = _scales({"scale": scale})
    h, w = like.shape[2:]
    wh, ww = source_weights(h * sh, h, sh, mode), source_weights(w * sw, w, sw, mode)
    return np.einsum("ih,ncij,jw->nchw", wh, g, ww).astype(g.dtype)


_UPSAMPLE = (Attr("scale", "ints", 2, doc="integer factor, or [height, width] factors"),
             Attr("mode", "enum", "nearest", ("nearest", "bilinear")))

register(OpDef(
    "upsample", "pool", ("x",), _UPSAMPLE, shape=_upsample_shape,
    formula="nearest: y[i, j] = x[i // s, j // s]; bilinear: between the 4 nearest, align_corners=False",
    flops=lambda ins, out, a: (1 if a["mode"] == "nearest" else 8) * out.numel(), reference=_upsample_ref,
    grad=lambda b, n, g: (b.upsample_grad(g, n.inputs[0], scale=n.attr("scale"), mode=n.attr("mode")),),
    doc="[N, C, H, W] -> [N, C, H*s, W*s], as PyTorch's nn.Upsample(scale_factor=s, mode=...); the decoder "
        "half of a U-Net or an FCN.",
    samples=(Sample((_f32(2, 3, 3, 4),)), Sample((_f32(1, 2, 3, 2),), {"mode": "bilinear"}),
             Sample((_f32(1, 2, 4, 3),), {"scale": (3, 2), "mode": "bilinear"}))))
register(OpDef(
    "upsample_grad", "derivative", ("g", "like"), _UPSAMPLE, shape=lambda ins, attrs: ins[1],
    formula="dx[r, c] = sum over the outputs that read (r, c) of g times their weight",
    flops=lambda ins, out, a: 9 * ins[0].numel(), reference=_upsample_grad_ref,
    samples=(Sample((_f32(1, 2, 6, 4), _f32(1, 2, 3, 2)), {"mode": "bilinear"}),)))


# ---- lrn ---------------------------------------------------------------------------------------

def _lrn_shape(ins, attrs):
    x = ins[0]
    expect_float(x, "lrn")
    expect_rank(x, (2, 3, 4, 5), "lrn", hint="lrn normalises across the channels (axis 1) of [N, C, ...]")
    expect_static(x.shape[1], "lrn channels")
    if attrs["size"] < 1:
        raise ShapeError(f"lrn: size must be at least 1, got {attrs['size']}", code="E0310")
    return x


def _window_sums(x, size):
    """sum of x[c']^2 over window(c), for every c (axis 1), by a cumulative sum over channels."""
    sq = np.concatenate([np.zeros_like(x[:, :1]), np.cumsum(x.astype(np.float64) ** 2, axis=1)], axis=1)
    c = x.shape[1]
    lo = np.clip(np.arange(c) - size // 2, 0, c)
    hi = np.clip(np.arange(c) + (size - 1) // 2 + 1, 0, c)
    return sq[:, hi] - sq[:, lo]


def _lrn_ref(x, size, alpha, beta, k):
    scale = k + alpha / size * _window_sums(x, size)
    return (x / scale ** beta).astype(x.dtype)


def _lrn_grad_ref(x, g, size, alpha, beta, k):
    scale = k + alpha / size * _window_sums(x, size)
    # dx_j = g_j S_j^-beta - 2 alpha beta / size * x_j * sum_{c: j in window(c)} g_c x_c S_c^(-beta-1)
    t = g * x * scale ** (-beta - 1)
    c = x.shape[1]
    cum = np.concatenate([np.zeros_like(t[:, :1]), np.cumsum(t, axis=1)], axis=1)
    lo = np.clip(np.arange(c) - (size - 1) // 2, 0, c)  # the c whose window holds j: j - (size-1)//2 .. j + size//2
    hi = np.clip(np.arange(c) + size // 2 + 1, 0, c)
    return (g * scale ** -beta - 2 * alpha * beta / size * x * (cum[:, hi] - cum[:, lo])).astype(x.dtype)


_LRN = (Attr("size", "int", 5, doc="channels in the window"), Attr("alpha", "float", 1e-4),
        Attr("beta", "float", 0.75), Attr("k", "float", 1.0))
_LRN_SAMPLES = (Sample((_f32(2, 6, 3, 2),), {"size": 3, "alpha": 0.5, "k": 2.0}),
                Sample((_f32(3, 4),), {"size": 2, "alpha": 1.0, "beta": 0.5}))

register(OpDef(
    "lrn", "norm", ("x",), _LRN, shape=_lrn_shape,
    formula="y[c] = x[c] / (k + alpha / size * sum_{c' near c} x[c']^2)^beta  (across channels, axis 1)",
    flops=lambda ins, out, a: (a["size"] + 6) * out.numel(), reference=_lrn_ref,
    grad=lambda b, n, g: (b.lrn_grad(n.inputs[0], g, **n.attr_dict),),
    doc="Local response normalisation, as PyTorch's nn.LocalResponseNorm(size, alpha, beta, k) (alpha is "
        "divided by size). The AlexNet paper's layer (n=5, alpha=1e-4, beta=0.75, k=2, alpha not divided) is "
        "lrn(5, alpha=5e-4, k=2).",
    samples=_LRN_SAMPLES))
register(OpDef(
    "lrn_grad", "derivative", ("x", "g"), _LRN, shape=lambda ins, attrs: ins[0],
    formula="g S^-beta - 2 alpha beta / size * x * sum over the windows holding the channel of g x S^(-beta-1)",
    flops=lambda ins, out, a: (2 * a["size"] + 10) * out.numel(), reference=_lrn_grad_ref,
    samples=(Sample((_f32(2, 6, 3, 2), _f32(2, 6, 3, 2)), {"size": 3, "alpha": 0.5, "k": 2.0}),)))
