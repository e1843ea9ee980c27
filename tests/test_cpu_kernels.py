"""The CPU library kernels (dslc.runtime.cpu) against the op references of the registry.

Oracle: each op's NumPy `reference` from dslc/ops/*.py, evaluated in float64 on the
same input values. Tolerance: |got - ref| <= tol * (|ref| + max|ref|), tol = 1e-4
for float32 kernels and 1e-10 for float64 (relative to the result's scale, so a
sum that cancels to near zero is judged against the size of its terms).

Shapes cover the edge cases a model produces: batch 1, odd sizes, stride, padding
(symmetric, asymmetric `same`, valid), dilation, groups (incl. depthwise), 1x1
convolutions, im2col in blocks of output rows, and one workspace slot as well as several.
The first run compiles every kernel (about a minute); later runs load Numba's cache.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import numba
from numba import njit

from dslc.kernels import geometry
from dslc.ops import registry
from dslc.runtime.cpu import conv, elementary, few_rows, gemm, lanes, pool, softmax, strided, winograd
from dslc.runtime.cpu.blas import gemm_block
from dslc.runtime.cpu.taps import OUTS

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-4, np.float64: 1e-10}


def ref(op: str, *arrays, **attrs):
    """The registry reference of `op`, computed in float64."""
    return registry.get(op).reference(*(a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays),
                                      **attrs)


def close(got, want, dtype):
    want = np.asarray(want, np.float64)
    tol = TOL[dtype]
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(np.abs(want).max(initial=0.0), 1e-30))


@contextlib.contextmanager
def numba_threads(n: int):
    """Numba's parallel loops on n threads inside the block."""
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ---- gemm and linear ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm(dtype, ta, tb):
    rng = np.random.default_rng(0)
    a = randn(rng, (7, 3) if ta else (3, 7), dtype)
    b = randn(rng, (5, 7) if tb else (7, 5), dtype)
    out = np.empty((3, 5), dtype)
    gemm.gemm(a, b, out, ta, tb)
    close(out, ref("matmul", a, b, transpose_a=ta, transpose_b=tb), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tb", [False, True])
def test_few_row_products_read_b_in_place(dtype, tb):
    """Up to FEW_ROWS rows times op(b) go to few_rows.py's loops (but one row times b, a BLAS
    GEMV), one row more to BLAS's GEMM: every product, from a band of a wider b (its leading dimension) into a band of columns of a
    wider output, through gemm's split of the columns over threads (rows x 4096 x 300: bands
    apart by whole cache lines; 8 or 9 x 4096 x 20: too few columns for that) or, op(b)
    taller than wide, of its depth (gemm.DEPTH_PARTS partial products: the same bits on one
    thread), with k and n not multiples of the loops' 4."""
    rng = np.random.default_rng(3)
    for m in (1, 2, 3, 5, few_rows.FEW_ROWS, few_rows.FEW_ROWS + 1):
        for k, n in [(1, 1), (6, 7), (301, 40), (4096, 300), (4096, 20)]:
            a = randn(rng, (m, k), dtype)
            wide = randn(rng, (2 * n, k + 3) if tb else (k + 3, 2 * n), dtype)
            b = wide[n:, 1:k + 1] if tb else wide[1:k + 1, n:]
            out = np.full((m, 2 * n + 2), 7.0, dtype)
            gemm.gemm(a, b, out[:, 1:n + 1], False, tb)
            close(out[:, 1:n + 1], ref("matmul", a, np.ascontiguousarray(b), transpose_a=False, transpose_b=tb),
                  dtype)
            assert (out[:, 0] == 7).all() and (out[:, n + 1:] == 7).all()
            if m <= few_rows.FEW_ROWS and not tb and k > n:  # a depth split: the same bits on one thread
                alone = np.empty_like(out)  # a band too: gemm as compiled for the call above
                with numba_threads(1):
                    gemm.gemm(a, b, alone[:, 1:n + 1], False, tb)
                np.testing.assert_array_equal(alone[:, 1:n + 1], out[:, 1:n + 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tb", [False, True])
def test_few_row_products_accumulate(dtype, tb):
    """gemm_block's c += op(a) @ op(b) (convolutions' sums over groups and blocks) on few_rows'
    path: the product is added to what c holds, every column of it, tails included."""
    rng = np.random.default_rng(4)
    for m, k, n in [(1, 9, 5), (4, 10, 13), (7, 33, 18)]:
        a, c = randn(rng, (m, k), dtype), randn(rng, (m, n), dtype)
        b = randn(rng, (n, k) if tb else (k, n), dtype)
        want = c.astype(np.float64) + ref("matmul", a, b, transpose_a=False, transpose_b=tb)
        _accumulate(a, b, c, tb)
        close(c, want, dtype)


@njit(cache=True)
def _accumulate(a, b, c, tb):
    gemm_block(a, b, c, False, tb, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, d_in, d_out", [(1, 3, 2), (5, 7, 4), (64, 33, 10)])
@pytest.mark.parametrize("bias, relu", [(True, False), (False, False), (True, True), (False, True)])
def test_linear(dtype, n, d_in, d_out, bias, relu):
    """The forward with its fused bias and relu, and the backward's products as the graph has
    them (dx = g @ W^T, dW = x^T @ g: gemm with transpose flags)."""
    rng = np.random.default_rng(1)
    x, w, g = randn(rng, (n, d_in), dtype), randn(rng, (d_in, d_out), dtype), randn(rng, (n, d_out), dtype)
    b = randn(rng, (d_out,), dtype) if bias else None
    y = np.empty((n, d_out), dtype)
    gemm.linear_forward(x, w, b, y, relu)
    want = ref("linear", x, w, *([b] if bias else []), out=d_out, bias=bias)
    close(y, ref("relu", want) if relu else want, dtype)

    dx, dw = np.empty_like(x), np.empty_like(w)
    gemm.gemm(g, w, dx, False, True)
    close(dx, ref("matmul", g, w, transpose_a=False, transpose_b=True), dtype)
    gemm.gemm(x, g, dw, True, False)
    close(dw, ref("matmul", x, g, transpose_a=True, transpose_b=False), dtype)


# ---- conv2d ---------------------------------------------------------------------------

# (N, C, H, W, out, kernel, stride, pad, dilation, groups, bias)
CONV_CASES = [
    (1, 1, 5, 5, 2, 3, 1, 0, 1, 1, True),              # batch 1, valid
    (3, 3, 7, 9, 5, (3, 2), (2, 1), 1, 1, 1, True),    # odd sizes, rectangular kernel and stride
    (2, 4, 7, 6, 6, (2, 3), 2, "same", (1, 2), 2, False),  # asymmetric same padding, dilation, groups
    (2, 8, 5, 5, 4, 1, 1, 0, 1, 1, True),              # 1x1
    (3, 8, 5, 6, 4, 1, 2, 0, 1, 1, False),             # 1x1 strided
    (2, 3, 9, 8, 4, 3, 1, 2, 2, 1, True),              # dilation 2, pad 2
    (2, 4, 6, 6, 4, 3, 1, "same", 1, 4, True),         # depthwise
    (2, 2, 10, 11, 3, 3, 3, "valid", 1, 1, True),      # stride 3, windows not covering the edge
    (2, 3, 6, 5, 4, 3, 1, (2, 0), 1, 1, False),        # padding rows only
    (2, 16, 32, 32, 4, 3, 1, "same", 1, 1, True),      # im2col in 2 blocks of rows (> COL_BLOCK)
    (1, 64, 30, 31, 2, 3, 1, 1, 2, 1, False),          # 4 blocks, dilation 2
    # fewer images than parts: the input gradient's sum over channels split (conv._channel_share)
    (1, 4, 9, 9, 8, 3, 1, 2, 2, 1, False),             # 36 rows of col: sgemm
    (2, 1, 12, 12, 9, 3, 1, 2, 2, 1, True),            # 9 rows: few_rows in blocks of 4 and 5, runs of 3 channels
]
# 3x3 stride 1 with at least geometry.WINOGRAD_MIN_CHANNELS in and out: Winograd F(2x2, 3x3)
WINOGRAD_CASES = [
    (3, 16, 7, 9, 17, 3, 1, 1, 1, 1, True),            # odd sizes: a half-empty last row and column of tiles
    (2, 16, 5, 6, 16, 3, 1, 0, 1, 1, False),           # valid: grad-input padded 2
    (3, 17, 6, 7, 16, 3, 1, 2, 1, 1, True),            # pad 2: grad-input unpadded
    (2, 16, 9, 8, 18, 3, 1, (2, 0), 1, 1, False),      # padding rows only
    (5, 16, 3, 3, 16, 3, 1, 0, 1, 1, True),            # one output pixel
    (5, 16, 20, 20, 16, 3, 1, "same", 1, 1, True),     # several images per block, a remainder block
    (2, 16, 17, 19, 16, 3, 1, 1, 1, 1, True),          # wide (a column of padding tiles), odd sizes
    (2, 16, 18, 17, 16, 3, 1, 0, 1, 1, False),         # wide, valid: grad-input padded 2
    (1, 17, 9, 8, 24, 3, 1, 1, 1, 1, True),            # one image: its channels split among the threads
]
CONV_CASES += WINOGRAD_CASES
# strided, undilated: directly from the input's phase planes (geometry.phased), the input
# gradient with enough input channels
PHASED_CASES = [
    (2, 8, 8, 8, 4, 3, 2, 0, 1, 1, True),              # unpadded: outputs narrower than a plane
    (2, 2, 12, 12, 3, 11, 4, 0, 1, 1, False),          # AlexNet's 11x11 stride 4, unpadded
    (2, 3, 27, 27, 4, 11, 4, 0, 1, 1, True),           # on sides no multiple of 4 (AlexNet's 227)
    (3, 16, 15, 15, 8, 3, 2, 1, 1, 1, True),           # odd sides: the last phases a row and column short
    (2, 4, 7, 7, 5, 1, 2, 0, 1, 1, False),             # 1x1 stride 2 on odd sides: the last column read
    (2, 3, 8, 8, 4, 3, 2, 3, 1, 1, True),              # padded 3: outputs wider than a plane
    (2, 3, 8, 8, 4, 3, 2, 1, 1, 1, True),              # 3x3 stride 2 pad 1 (resnet's downsampling)
    (3, 4, 8, 10, 3, 1, 2, 0, 1, 1, False),            # 1x1 stride 2 (its shortcut)
    (1, 2, 12, 12, 3, 7, 2, 3, 1, 1, True),            # 7x7 stride 2 pad 3 (a ResNet stem): shifts of -2..+1
    (2, 2, 6, 9, 3, 3, 3, 1, 1, 1, True),              # stride 3
    (2, 4, 8, 6, 4, 3, (2, 1), (1, 1), 1, 2, False),   # stride 2 rows only, groups
    (2, 3, 8, 8, 2, 3, 2, (2, 1), 1, 1, True),         # rows padded 2: a row of output more than a plane has
    (1, 64, 40, 40, 2, 3, 2, 1, 1, 1, False),          # im2col in 2 blocks of rows (> COL_BLOCK)
]
CONV_CASES += PHASED_CASES
# stride 1, any padding: the forward directly from the zero-padded image (strided.py with
# one plane), the gradients too with enough channels or taps (geometry.pass_modules)
DIRECT_CASES = [
    (2, 6, 14, 14, 16, 5, 1, 0, 1, 1, True),         # LeNet-5's C3, unpadded: all three directly
    (2, 8, 8, 7, 6, 3, 1, 2, 1, 1, False),           # padded 2: outputs wider than the image
    (1, 3, 9, 8, 4, (3, 5), 1, (1, 0), 1, 1, True),  # one-sided padding, fewer outputs than a block
    (2, 1, 7, 9, 8, 3, 1, "same", 1, 1, True),         # a first layer's one channel: input gradient by im2col
    (2, 8, 6, 7, 8, 5, 1, "same", 1, 1, False),        # 5x5: both directly
    (3, 8, 5, 6, 16, 1, 1, 0, 1, 1, True),             # 1x1
    (2, 3, 6, 6, 16, (3, 5), 1, "same", 1, 1, True),   # rectangular kernel
    (1, 16, 9, 9, 8, 3, 1, "same", 1, 1, True),        # 3x3 with too few outputs for Winograd
    (2, 16, 6, 5, 16, 4, 1, "same", 1, 2, False),      # even kernel (padded one more after), groups
    (1, 1, 9, 10, 20, 3, 1, "same", 1, 1, True),       # one image: its output channels split (taps.shares)
]
CONV_CASES += DIRECT_CASES


def _conv_args(case):
    n, c, h, w, o, kernel, stride, pad, dilation, groups, bias = case
    attrs = dict(kernel=kernel, stride=stride, pad=pad, dilation=dilation, groups=groups)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return (n, c, h, w), (o, c // groups, kh, kw), attrs, bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parts", [1, 3])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case, parts, dtype):
    x_shape, w_shape, attrs, bias = _conv_args(case)
    rng = np.random.default_rng(2)
    x, w = randn(rng, x_shape, dtype), randn(rng, w_shape, dtype)
    b = randn(rng, w_shape[:1], dtype) if bias else None
    geo = conv.geometry(attrs, x_shape[2:])
    want = ref("conv2d", x, w, *([b] if bias else []), out=w_shape[0], bias=bias, **attrs)
    ws = np.full(conv.workspace_shape(x_shape, w_shape, want.shape[2:], geo, parts), np.nan, dtype)  # none read
    modules = dict(conv=conv, strided=strided, winograd=winograd)  # each pass as the generated code chooses
    forward, grad_input, grad_weight = (modules[m] for m in geometry.conv_modules(attrs, x_shape[2:], x_shape[1],
                                                                                  w_shape[0]))

    y = np.empty(want.shape, dtype)
    forward.conv2d_forward(x, *filters(forward, w), b, y, *geo, attrs["groups"], ws, False)
    close(y, want, dtype)
    forward.conv2d_forward(x, *filters(forward, w), b, y, *geo, attrs["groups"], ws, True)  # a fused relu epilogue
    close(y, np.maximum(want, 0), dtype)

    g = randn(rng, want.shape, dtype)
    dx = np.full(x_shape, np.nan, dtype)  # every element must be written
    grad_input.conv2d_grad_input(g, *filters(grad_input, w, flip=True), dx, *geo, attrs["groups"], ws)
    close(dx, ref("conv2d_grad_input", g, w, size=x_shape[2:], **attrs), dtype)

    dw = np.full(w_shape, np.nan, dtype)
    grad_weight.conv2d_grad_weight(g, x, dw, *geo, attrs["groups"], ws)
    close(dw, ref("conv2d_grad_weight", g, x, **attrs), dtype)


@pytest.mark.parametrize("module,c", [(conv, 2), (strided, 2), (winograd, 16)], ids=["im2col", "direct", "winograd"])
def test_a_fused_relu_keeps_nan_as_np_maximum_does(module, c):
    """The forward's relu (an epilogue fused into the library call, conv.rectify) replaces only
    values below zero, as the generated relu and the reference (np.maximum) do: where the
    convolution gives NaN (a NaN input pixel) the relu'd output is NaN too, elsewhere exactly
    max(y, 0) of the same kernel's output."""
    attrs = dict(kernel=3, stride=1, pad="same", dilation=1, groups=1)
    rng = np.random.default_rng(4)
    x, w = randn(rng, (2, c, 6, 6), np.float32), randn(rng, (16, c, 3, 3), np.float32)
    x[1, 0, 2, 3] = np.nan
    geo = conv.geometry(attrs, (6, 6))
    if module is not conv:  # conv.py computes every geometry; the others only what they are chosen for
        assert module.__name__.endswith(geometry.conv_modules(attrs, (6, 6), c, 16)[0])
    ws = np.zeros(conv.workspace_shape(x.shape, w.shape, (6, 6), geo, 2), np.float32)
    plain, rectified = np.empty((2, 16, 6, 6), np.float32), np.empty((2, 16, 6, 6), np.float32)
    module.conv2d_forward(x, *filters(module, w), None, plain, *geo, 1, ws, False)
    module.conv2d_forward(x, *filters(module, w), None, rectified, *geo, 1, ws, True)
    assert np.isnan(plain).any() and (plain < 0).any()
    np.testing.assert_array_equal(rectified, np.maximum(plain, 0))  # NaN where plain is NaN


@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_winograd_cases_run_by_winograd(case):
    x_shape, w_shape, attrs, _ = _conv_args(case)
    assert geometry.uses_winograd(attrs, x_shape[2:], x_shape[1], w_shape[0])


@pytest.mark.parametrize("case", PHASED_CASES)
def test_phased_cases_read_phase_planes(case):
    x_shape, w_shape, attrs, _ = _conv_args(case)
    direct = lambda yes: "strided" if yes else "conv"
    grad_input = direct(4 * (x_shape[1] // attrs["groups"]) >= 3 * geometry.TAP_OUTS)
    grad_weight = direct(w_shape[2] * w_shape[3] > 1 or w_shape[0] // attrs["groups"] <= geometry.TAP_OUTS)
    assert geometry.conv_modules(attrs, x_shape[2:], x_shape[1], w_shape[0]) == ("strided", grad_input, grad_weight)


@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_cases_run_their_forward_from_the_padded_image(case):
    x_shape, w_shape, attrs, _ = _conv_args(case)
    assert geometry.conv_modules(attrs, x_shape[2:], x_shape[1], w_shape[0])[0] == "strided"


@pytest.mark.parametrize("kernel,pad", [(1, 0), (3, (0, 1))], ids=["1x1-odd-columns", "3x3-last-row"])
def test_strided_weight_gradient_ignores_pixels_no_window_reads(kernel, pad):
    """strided.py sums the weight gradient over whole runs of its planes, where the output
    gradient is zero at the dropped columns and the run's tail; a pixel no window reads (a
    1x1 stride-2 kernel's odd rows and columns, the last row of an 8-row input whose
    windows stop at row 6) is cleared first, so an inf there gives a finite gradient, as in
    the reference."""
    attrs = dict(kernel=kernel, stride=2, pad=pad, dilation=1, groups=1)
    x_shape, w_shape = (2, 3, 8, 8), (4, 3, kernel, kernel)
    geo = conv.geometry(attrs, x_shape[2:])
    rng = np.random.default_rng(5)
    x = randn(rng, x_shape, np.float64)
    g = randn(rng, ref("conv2d", x, randn(rng, w_shape, np.float64), out=4, bias=False, **attrs).shape, np.float64)
    read = np.zeros((8 + geo[2] + geo[3], 8 + geo[4] + geo[5]), bool)
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            read[2 * i:2 * i + kernel, 2 * j:2 * j + kernel] = True
    unread = ~read[geo[2]:geo[2] + 8, geo[4]:geo[4] + 8]
    assert unread.any() and geometry.conv_modules(attrs, x_shape[2:], 3, 4)[2] == "strided"
    want = ref("conv2d_grad_weight", g, x, **attrs)
    x[:, :, unread] = np.inf
    dw = np.full(w_shape, np.nan)
    strided.conv2d_grad_weight(g, x, dw, *geo, 1, np.full(conv.workspace_shape(x_shape, w_shape, g.shape[2:], geo, 2),
                                                          np.nan))
    close(dw, want, np.float64)


def test_strided_kernels_refuse_what_they_do_not_compute():
    x, w = np.zeros((2, 3, 7, 7)), np.zeros((4, 3, 3, 3))  # dilated: no phase planes
    y = np.zeros((2, 4, 7, 7))
    ws = np.zeros(conv.workspace_shape(x.shape, w.shape, (7, 7), (1, 1, 2, 2, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match="not a phased"):
        strided.conv2d_forward(x, w, None, y, 1, 1, 2, 2, 2, 2, 2, 2, 1, ws, False)
    conv.conv2d_forward(x, w, None, y, 1, 1, 2, 2, 2, 2, 2, 2, 1, ws, False)  # conv.py's kernels do


@pytest.mark.parametrize("c_in, c_out, modules", [(1, 8, ("strided", "conv", "strided")),
                                                   (16, 16, ("winograd",) * 3)], ids=["direct", "winograd"])
def test_the_kernel_benchmark_calls_the_kernels_as_they_are(c_in, c_out, modules):
    """Every row of benchmarks/kernels.py runs, small, against the library's signatures: its
    convolution rows called Winograd without the table of transformed filters (one argument
    short) from when the table was added until 2026-12-08, unnoticed outside the suite."""
    from benchmarks import kernels
    attrs = dict(kernel=3, stride=1, pad="same", dilation=1, groups=1)
    assert geometry.conv_modules(attrs, (8, 8), c_in, c_out) == modules
    rng = np.random.default_rng(0)
    rows = (kernels.conv_rows(2, c_in, c_out, 8, rng) + kernels.map_rows(2, 4, 8, rng)
            + kernels.linear_rows(2, 6, 3, rng) + kernels.loss_rows(2, 3, rng))
    for _, ours, numpy_step, _ in rows:
        ours()
        numpy_step()


def test_winograd_refuses_what_it_does_not_compute():
    x, w, y = np.zeros((2, 16, 6, 6)), np.zeros((16, 16, 3, 3)), np.zeros((2, 16, 3, 3))
    ws = np.zeros(conv.workspace_shape(x.shape, w.shape, (6, 6), (1, 1, 1, 1, 1, 1, 1, 1)))
    w, u = filters(winograd, w)
    with pytest.raises(ValueError, match="not a Winograd"):  # stride 2
        winograd.conv2d_forward(x, w, u, None, y, 2, 2, 1, 1, 1, 1, 1, 1, 1, ws, False)
    with pytest.raises(ValueError, match="output shape"):
        winograd.conv2d_forward(x, w, u, None, y, 1, 1, 1, 1, 1, 1, 1, 1, 1, ws, False)
    with pytest.raises(ValueError, match="workspace"):
        winograd.conv2d_forward(x, w, u, None, np.zeros((2, 16, 6, 6)), 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                 np.zeros((2, 100)), False)
    with pytest.raises(ValueError, match="table is too small"):
        winograd.conv2d_forward(x, w, u[:-1], None, np.zeros((2, 16, 6, 6)), 1, 1, 1, 1, 1, 1, 1, 1, 1, ws, False)
    with pytest.raises(ValueError, match="table is too small"):
        winograd.transform_weights(np.zeros((16, 17, 3, 3)), u, True)


def filters(module, w, flip: bool = False) -> tuple:
    """The filters as `module`'s forward (or with flip its input gradient) takes them: w, and for
    Winograd its table of transformed filters after them (winograd.table)."""
    return (w, winograd.table(w, flip)) if module is winograd else (w,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("o, c", [(64, 32), (13, 40), (8, 3)])
@pytest.mark.parametrize("flip", [False, True], ids=["forward", "grad-input"])
def test_winograd_weights_are_g_w_gt_in_double_packed_for_tap_sums(dtype, o, c, flip):
    """_weights' U against the same double arithmetic in NumPy (G times the columns, then
    the rows; each row of G as h = (x0 + x2) / 2, h +- x1 / 2), rounded once: equal to the
    bit. Unpacked from tap_sums' layout [P / OUTS, Q, OUTS]; a block's lanes past P are
    zeros; nothing past U is written. Sizes: not a whole block of outputs, Q over two runs
    (_RUN) and a part run, and fewer Q than a run."""
    rng = np.random.default_rng(5)
    w = randn(rng, (o, c, 3, 3), dtype)
    taps = np.flip(w, (2, 3)).transpose(1, 0, 2, 3) if flip else w  # [P, Q, 3, 3]
    p, q = taps.shape[:2]

    def g(x0, x1, x2):  # the rows of G, as _g3
        h = 0.5 * (x0 + x2)
        return [x0, h + 0.5 * x1, h - 0.5 * x1, x2]

    t = taps.astype(np.float64)
    cols = [g(t[:, :, 0, b], t[:, :, 1, b], t[:, :, 2, b]) for b in range(3)]  # cols[b][a]: (G w)[a, b]
    want = np.stack([v for a in range(4) for v in g(cols[0][a], cols[1][a], cols[2][a])]).astype(dtype)
    blocks = -(-p // OUTS)
    u = np.full(16 * blocks * OUTS * q + 5, np.nan, dtype)
    winograd._weights(w, u, flip, 0, p)
    packed = u[:-5].reshape(16, blocks, q, OUTS).transpose(0, 1, 3, 2).reshape(16, blocks * OUTS, q)
    np.testing.assert_array_equal(packed[:, :p], want)
    assert (packed[:, p:] == 0).all() and np.isnan(u[-5:]).all()
    if p > OUTS:  # the filters of one part of a split (taps.shares), packed from its first
        u = np.full(16 * (blocks - 1) * OUTS * q + 5, np.nan, dtype)
        winograd._weights(w, u, flip, OUTS, p)
        packed = u[:-5].reshape(16, blocks - 1, q, OUTS).transpose(0, 1, 3, 2).reshape(16, (blocks - 1) * OUTS, q)
        np.testing.assert_array_equal(packed[:, :p - OUTS], want[:, OUTS:])
        assert (packed[:, p - OUTS:] == 0).all() and np.isnan(u[-5:]).all()


def test_conv2d_rejects_a_wrong_geometry_or_workspace():
    x, w = np.zeros((2, 3, 6, 6)), np.zeros((4, 3, 3, 3))
    ws = np.zeros(conv.workspace_shape(x.shape, w.shape, (6, 6), (1, 1, 1, 1, 1, 1, 1, 1)))
    with pytest.raises(ValueError, match="output shape"):
        conv.conv2d_forward(x, w, None, np.zeros((2, 4, 4, 4)), 1, 1, 1, 1, 1, 1, 1, 1, 1, ws, False)
    with pytest.raises(ValueError, match="groups"):
        conv.conv2d_forward(x, w, None, np.zeros((2, 4, 6, 6)), 1, 1, 1, 1, 1, 1, 1, 1, 2, ws, False)
    with pytest.raises(ValueError, match="workspace"):
        conv.conv2d_forward(x, w, None, np.zeros((2, 4, 6, 6)), 1, 1, 1, 1, 1, 1, 1, 1, 1, np.zeros((2, 100)), False)


# ---- pooling --------------------------------------------------------------------------

# (N, C, H, W, kernel, stride, pad)
POOL_CASES = [
    (2, 3, 4, 4, 2, None, 0),                  # the 2x2 stride-2 fast path
    (2, 3, 5, 7, 2, 2, 0),                     # ... with an odd last row and column in no window
    (1, 2, 29, 35, 2, 2, 0),                   # ... rows of 17 windows: a whole vector of them and a masked run
    (1, 2, 5, 7, 3, 2, 1),
    (2, 2, 7, 6, (2, 3), (1, 2), (1, 0)),
    (1, 3, 7, 5, 3, 2, "same"),
    (3, 1, 6, 6, 3, 3, "valid"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
def test_pool(kind, case, dtype):
    n, c, h, w, kernel, stride, pad = case
    attrs = dict(kernel=kernel, stride=stride, pad=pad)
    rng = np.random.default_rng(3)
    # Small integers make ties common: maxpool must route g to the first maximum, row-major.
    x = rng.integers(-2, 3, (n, c, h, w)).astype(dtype) if kind == "maxpool" else randn(rng, (n, c, h, w), dtype)
    geo = pool.pool_geometry(attrs, (h, w), kind)
    want = ref(kind, x, **attrs)
    y = np.empty(want.shape, dtype)
    getattr(pool, f"{kind}_forward")(x, y, *geo)
    close(y, want, dtype)

    g = randn(rng, want.shape, dtype)
    dx = np.full(x.shape, np.nan, dtype)
    if kind == "maxpool":
        for positive in (False, True):  # True: a relu's gradient folded in (only where x > 0)
            pool.maxpool_backward(g, x, dx, *geo, positive)
            close(dx, ref("maxpool_grad", g, x, positive=positive, **attrs), dtype)
    else:
        pool.avgpool_backward(g, dx, *geo)
        close(dx, ref("avgpool_grad", g, size=(h, w), **attrs), dtype)


def test_maxpool_nan_is_the_maximum():
    x = np.array([[[[1.0, np.nan], [np.nan, 5.0]]]])
    y, dx = np.empty((1, 1, 1, 1)), np.empty_like(x)
    pool.maxpool_forward(x, y, 2, 2, 2, 2, 0, 0)
    pool.maxpool_backward(np.ones((1, 1, 1, 1)), x, dx, 2, 2, 2, 2, 0, 0, False)
    assert np.isnan(y[0, 0, 0, 0])
    np.testing.assert_array_equal(dx, ref("maxpool_grad", np.ones((1, 1, 1, 1)), x, kernel=2, stride=None, pad=0))



@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_2x2_backward_routes_exactly_like_the_reference(dtype):
    """The 2x2 kernel's own loops (a winner per window, then the four cells): ties to the
    first maximum, a NaN at each position of a window, infinities, odd sizes whose last
    row and column get zeros; an inf gradient stays inf at its winner and 0 elsewhere."""
    rng = np.random.default_rng(7)
    x = randn(rng, (2, 3, 7, 9), dtype)
    x[0, 0, :2, :2] = 1.0  # a four-way tie
    for k, (r, c) in enumerate([(0, 2), (0, 5), (1, 6), (3, 7)]):  # NaN at each window position
        x[0, 1, r, c] = np.nan
        x[0, 1, (r // 2) * 2 + 1 - r % 2, c] = np.nan if k % 2 else np.inf
    x[1, 2, 2, 2], x[1, 2, 3, 3] = np.inf, -np.inf
    g = randn(rng, (2, 3, 3, 4), dtype)
    dx = np.full(x.shape, 7.0, dtype)
    pool.maxpool_backward(g, x, dx, 2, 2, 2, 2, 0, 0, False)
    np.testing.assert_array_equal(dx, ref("maxpool_grad", g, x, kernel=2, stride=None, pad=0))
    g[0, 0, 0, 0] = np.inf  # the reference's 0/1 mask would make its window's other cells NaN
    pool.maxpool_backward(g, x, dx, 2, 2, 2, 2, 0, 0, False)
    assert dx[0, 0, 0, 0] == np.inf and not np.isnan(dx).any()
    x[0, 0, :2, :2] = -1.0  # positive (a relu's gradient folded in): 0 at a maximum <= 0, not inf * 0
    pool.maxpool_backward(g, x, dx, 2, 2, 2, 2, 0, 0, True)
    assert not dx[0, 0, :2, :2].any() and not np.isnan(dx).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_2x2_every_row_length_matches_the_reference(dtype):
    """Rows of 1 to 35 windows go in runs of 16 (8 for float64), then one masked run of 16,
    8, 4, 2 or 1 lanes (pool_lanes): every length of the last run, with ties (small integers), a NaN at each
    window position and after an infinity, infinities, and odd last rows and columns; the
    backward also with a relu's gradient folded in (positive)."""
    rng = np.random.default_rng(8)
    for wo in range(1, 36):
        for odd_h, odd_w in ((0, 0), (1, 1)):
            x = rng.integers(-2, 3, (2, 3, 6 + odd_h, 2 * wo + odd_w)).astype(dtype)
            for k in range(4):  # a NaN at window position k somewhere in the batch
                plane = x[k // 3 % 2, k % 3]
                r, c = 2 * (k % 3) + k // 2, 2 * rng.integers(wo) + k % 2
                plane[r, c] = np.nan
                plane[r - r % 2 + (1 - r % 2), c] = np.inf if k % 2 else -np.inf
            x[1, 2, 4, -1 - odd_w] = np.inf
            want = ref("maxpool", x, kernel=2, stride=None, pad=0)
            y = np.full(want.shape, 7.0, dtype)
            pool.maxpool_forward(x, y, 2, 2, 2, 2, 0, 0)
            np.testing.assert_array_equal(y, want)
            g = randn(rng, want.shape, dtype)
            dx = np.full(x.shape, 7.0, dtype)
            for positive in (False, True):
                pool.maxpool_backward(g, x, dx, 2, 2, 2, 2, 0, 0, positive)
                want = ref("maxpool_grad", g, x, kernel=2, stride=None, pad=0, positive=positive)
                np.testing.assert_array_equal(dx, want, err_msg=f"{wo} windows, positive={positive}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (2, 3, 1, 1), (2, 3, 5)])
def test_global_avgpool(shape, dtype):
    rng = np.random.default_rng(4)
    x = randn(rng, shape, dtype)
    y = np.empty(shape[:2], dtype)
    pool.global_avgpool_forward(x, y)
    close(y, ref("global_avgpool", x), dtype)


# ---- softmax and cross-entropy --------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", [((4, 5), -1), ((1, 1), -1), ((2, 3, 4), 1), ((3, 4), 0)])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax(op, shape, axis, dtype):
    x = (randn(np.random.default_rng(7), shape, np.float64) * 5).astype(dtype)
    y = np.empty(shape, dtype)
    getattr(softmax, f"{op}_forward")(x, y, axis)
    close(y, ref(op, x, axis=axis), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("n, k", [(1, 3), (7, 10), (64, 10)])
def test_softmax_cross_entropy(n, k, label_dtype, dtype):
    rng = np.random.default_rng(8)
    logits = (randn(rng, (n, k), np.float64) * 4).astype(dtype)
    labels = rng.integers(0, k, n).astype(label_dtype)
    loss = np.empty((), dtype)
    softmax.softmax_cross_entropy_forward(logits, labels, loss)
    close(loss, ref("cross_entropy", logits, labels), dtype)
    g, d = np.asarray(1.5, dtype), np.empty((n, k), dtype)
    softmax.softmax_cross_entropy_backward(logits, labels, g, d)
    close(d, ref("cross_entropy_grad", logits, labels, g), dtype)


_PLUS_MINUS = lanes.signed_sums(np.array([[1, -1, 0], [0, 1, 1]]))


@njit(cache=True)
def _plus_minus(f, n, a, b, c, p, q):
    _PLUS_MINUS(f, n, (lanes.u64(a), lanes.u64(b), lanes.u64(c)), (lanes.u64(p), lanes.u64(q)))


@njit(cache=True)
def _split_rows(src, step, f, rows):
    pairs = (step - 5) // 2
    lanes.deinterleave(src, lanes.u64(0), lanes.u64(step), f, lanes.u64(0), lanes.u64(rows * 40), lanes.u64(40),
                       pairs, rows)


@njit(cache=True)
def _merge_rows(y, step, f, rows, add):
    pairs = (step - 5) // 2
    lanes.interleave(y, lanes.u64(0), lanes.u64(step), f, lanes.u64(0), lanes.u64(rows * 40), lanes.u64(40),
                     pairs, rows, add)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lane_passes_cover_every_tail_and_write_nothing_past_it(dtype):
    """lanes.py's vector passes end a run (signed_sums) or a row (deinterleave, interleave) with
    one masked vector: for every length up to past two vectors, each output equals its scalar
    formula and every value past the last one keeps the NaN it had."""
    rng = np.random.default_rng(11)
    for n in range(40):
        f = np.full(6 * 64, np.nan, dtype)
        f[:3 * 64] = randn(rng, 3 * 64, dtype)
        _plus_minus(f, n, 0, 64, 128, 192, 256)
        np.testing.assert_array_equal(f[192:192 + n], f[:n] - f[64:64 + n])
        np.testing.assert_array_equal(f[256:256 + n], f[64:64 + n] + f[128:128 + n])
        assert np.isnan(f[192 + n:256]).all() and np.isnan(f[256 + n:]).all(), n
    for pairs in range(1, 36):
        rows, step = 3, 2 * pairs + 5
        src = randn(rng, rows * step, dtype)
        f = np.full(2 * rows * 40, np.nan, dtype)
        _split_rows(src, step, f, rows)
        for r in range(rows):
            pair_row = src[r * step:r * step + 2 * pairs]
            np.testing.assert_array_equal(f[r * 40:r * 40 + pairs], pair_row[0::2])
            np.testing.assert_array_equal(f[(rows + r) * 40:(rows + r) * 40 + pairs], pair_row[1::2])
            assert np.isnan(f[r * 40 + pairs:(r + 1) * 40]).all(), pairs
        y = np.full(rows * step, np.nan, dtype)
        _merge_rows(y, step, f, rows, dtype(0.5))
        for r in range(rows):
            np.testing.assert_array_equal(y[r * step:r * step + 2 * pairs], src[r * step:r * step + 2 * pairs] + dtype(0.5))
            assert np.isnan(y[r * step + 2 * pairs:(r + 1) * step]).all(), pairs


def _elementwise(name):
    """A jitted loop applying elementary.`name` to each element, as a generated kernel does."""
    fn = getattr(elementary, name)

    @njit
    def each(a):
        out = np.empty_like(a)
        for i in range(a.size):
            out[i] = fn(a[i])
        return out
    return each


def test_elementary_tanh_is_float32s_tanh_within_one_rounding():
    """elementary.tanh, the generated loops' tanh: for float32, a rational function within one
    float32 rounding of tanh (here every 37th float32 from 0 to 9.5, and their negatives),
    +-1 past 9, NaN for NaN; for float64, math.tanh itself."""
    each = _elementwise("tanh")
    x = np.arange(0, 0x41180000, 37, dtype=np.uint32).view(np.float32)
    want = np.tanh(x.astype(np.float64))
    ulps = np.abs(each(x) - want) / np.spacing(want.astype(np.float32))
    assert ulps.max() < 1
    np.testing.assert_array_equal(each(-x), -each(x))
    special = np.array([np.nan, np.inf, -np.inf, 9.5, -30.0, 0.0], np.float32)
    np.testing.assert_array_equal(each(special), [np.nan, 1, -1, 1, -1, 0])
    doubles = np.linspace(-10, 10, 1001)
    np.testing.assert_array_equal(each(doubles), np.vectorize(math.tanh)(doubles))


def test_elementary_exp_is_float32s_exp_within_one_rounding():
    """elementary.exp, the generated loops' exp: for float32, 2^n e^r in float64, within one
    float32 rounding of exp over a sample of every float32 with |x| < 110 (infinite above
    88.73, 0 or subnormal below -87.3), and exp's values at the edges; for float64, math.exp."""
    each = _elementwise("exp")
    bits = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = bits[np.abs(bits) < 110]
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64))
        rounded = want.astype(np.float32)
    finite = np.isfinite(rounded)
    step = np.where(rounded == 0, np.float32(2.0 ** -149), np.spacing(np.abs(rounded)))
    got = each(x)
    assert (np.abs(got - want)[finite] / step[finite]).max() < 1
    np.testing.assert_array_equal(got[~finite], rounded[~finite])
    special = np.array([np.nan, np.inf, -np.inf, 0.0, 88.8, -103.0, -200.0], np.float32)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(each(special), np.exp(special))
    doubles = np.linspace(-700, 700, 1001)
    np.testing.assert_array_equal(each(doubles), np.vectorize(math.exp)(doubles))
