"""Time the CPU library kernels against the NumPy references and PyTorch's CPU eager ops.

    python -m benchmarks.kernels [--model small_cnn|cifar_cnn] [--budget SECONDS]

Sizes are the layers of models/small_cnn.net (1x28x28, 32/64 channels, batch 64)
and models/cifar_cnn.net (3x32x32, batch 128), float32. Each row times one kernel
(or a forward+backward pair) as the best of repeated runs within a time budget:
the best run is the least disturbed by other processes on a shared machine. Ratios
above 1 mean the library kernel is faster. PyTorch runs with as many threads as
Numba (torch.set_num_threads); its column is empty when torch is not installed.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.peer import import_torch

torch = import_torch()  # before dslc.runtime.cpu sets Numba's OpenMP waiting; optional column

from dslc.ops import registry  # noqa: E402
from dslc.kernels.geometry import conv_modules  # noqa: E402
from dslc.runtime.cpu import conv, gemm, pool, softmax, strided, winograd  # noqa: E402

BATCH = {"small_cnn": 64, "cifar_cnn": 128}
# Per model: convs (C_in, C_out, H), maxpool inputs (C, H), linear (in, out), classes.
LAYERS = {
    "small_cnn": dict(convs=[(1, 32, 28), (32, 64, 14)], maps=[(32, 28), (64, 14)], linear=[(3136, 128), (128, 10)]),
    "cifar_cnn": dict(convs=[(3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16)], maps=[(32, 32), (64, 16)],
                      linear=[(4096, 256), (256, 10)]),
}


def best_ms(fn, budget: float) -> float:
    """The fastest of repeated calls of fn() (after one warm-up) within `budget` seconds, in ms."""
    fn()
    best, start = float("inf"), time.perf_counter()
    for rep in range(1000):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        if rep >= 2 and time.perf_counter() - start > budget:
            break
    return best * 1e3


def ref(op):
    return registry.get(op).reference


def conv_rows(n, c_in, c_out, h, rng):
    """conv2d 3x3 pad=same: forward, and forward + both gradients (what a training step runs)."""
    attrs = dict(kernel=3, stride=1, pad="same", dilation=1, groups=1)
    x, w = rng.standard_normal((n, c_in, h, h), np.float32), rng.standard_normal((c_out, c_in, 3, 3), np.float32)
    y, g = np.empty((n, c_out, h, h), np.float32), rng.standard_normal((n, c_out, h, h), np.float32)
    dx, dw = np.empty_like(x), np.empty_like(w)
    geo = conv.geometry(attrs, (h, h)) + (1,)
    ws = np.empty(conv.workspace_shape(x.shape, w.shape, (h, h), geo[:-1]), np.float32)
    modules = dict(conv=conv, strided=strided, winograd=winograd)  # each pass as dslc's generated code chooses
    forward, grad_input, grad_weight = (modules[m] for m in conv_modules(attrs, (h, h), c_in, c_out))

    def filters(module, flip):
        """w, and for Winograd its table, transformed at every call as a training step's driver does."""
        return (w, winograd.table(w, flip)) if module is winograd else (w,)

    def ours_fwd():
        forward.conv2d_forward(x, *filters(forward, False), None, y, *geo, ws, False)

    def ours_step():
        ours_fwd()
        grad_input.conv2d_grad_input(g, *filters(grad_input, True), dx, *geo, ws)
        grad_weight.conv2d_grad_weight(g, x, dw, *geo, ws)

    def numpy_step():
        ref("conv2d")(x, w, **attrs)
        ref("conv2d_grad_input")(g, w, size=(h, h), **attrs)
        ref("conv2d_grad_weight")(g, x, **attrs)

    torch_fwd = torch_step = None
    if torch is not None:
        tx, tw, tg = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(g)
        torch_fwd = lambda: torch.nn.functional.conv2d(tx, tw, padding=1)  # noqa: E731

        def torch_step():
            torch.nn.functional.conv2d(tx, tw, padding=1)
            torch.ops.aten.convolution_backward(tg, tx, tw, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                [True, True, False])

    name = f"conv2d {c_in}->{c_out} {h}x{h}"
    return [(f"{name} fwd", ours_fwd, lambda: ref("conv2d")(x, w, **attrs), torch_fwd),
            (f"{name} fwd+bwd", ours_step, numpy_step, torch_step)]


def map_rows(n, c, h, rng):
    """maxpool 2x2 on an activation map [n, c, h, h]. (A batchnorm is no library kernel: the
    generated code sweeps it, fused with its neighbours; benchmarks/train_step.py times that.)"""
    x = rng.standard_normal((n, c, h, h), np.float32)
    dx = np.empty_like(x)
    p, gp = np.empty((n, c, h // 2, h // 2), np.float32), rng.standard_normal((n, c, h // 2, h // 2), np.float32)

    def pool_ours():
        pool.maxpool_forward(x, p, 2, 2, 2, 2, 0, 0)
        pool.maxpool_backward(gp, x, dx, 2, 2, 2, 2, 0, 0, False)

    def pool_numpy():
        ref("maxpool")(x, kernel=2, stride=None, pad=0)
        ref("maxpool_grad")(gp, x, kernel=2, stride=None, pad=0)

    pool_torch = None
    if torch is not None:
        tx, tgp = torch.from_numpy(x).requires_grad_(), torch.from_numpy(gp)
        pool_torch = lambda: torch.nn.functional.max_pool2d(tx, 2).backward(tgp)  # noqa: E731
    return [(f"maxpool2 {c}x{h}x{h} fwd+bwd", pool_ours, pool_numpy, pool_torch)]


def linear_rows(n, d_in, d_out, rng):
    """linear (+ relu epilogue) forward and backward: the backward as a step runs it, gemm's two
    products (the bias's sum, a generated kernel in a step, is NumPy's here)."""
    x, w, b = (rng.standard_normal(s, np.float32) for s in ((n, d_in), (d_in, d_out), (d_out,)))
    g, y, dx, dw, db = rng.standard_normal((n, d_out), np.float32), np.empty((n, d_out), np.float32), \
        np.empty_like(x), np.empty_like(w), np.empty_like(b)

    def ours():
        gemm.linear_forward(x, w, b, y, True)
        gemm.gemm(g, w, dx, False, True)
        gemm.gemm(x, g, dw, True, False)
        g.sum(axis=0, out=db)

    def numpy():
        np.maximum(ref("linear")(x, w, b), 0)
        g @ w.T, x.T @ g, g.sum(axis=0)

    fn_torch = None
    if torch is not None:
        tx, tw, tb, tg = (torch.from_numpy(a).requires_grad_() for a in (x, w, b, g))
        fn_torch = lambda: torch.relu(torch.addmm(tb, tx, tw)).backward(tg)  # noqa: E731
    return [(f"linear {d_in}->{d_out} +relu fwd+bwd", ours, numpy, fn_torch)]


def loss_rows(n, k, rng):
    logits, labels = rng.standard_normal((n, k), np.float32), rng.integers(0, k, n)
    loss, g, d = np.empty((), np.float32), np.asarray(1.0, np.float32), np.empty((n, k), np.float32)

    def ours():
        softmax.softmax_cross_entropy_forward(logits, labels, loss)
        softmax.softmax_cross_entropy_backward(logits, labels, g, d)

    def numpy():
        ref("cross_entropy")(logits, labels)
        ref("cross_entropy_grad")(logits, labels, g)

    fn_torch = None
    if torch is not None:
        tz, ty = torch.from_numpy(logits).requires_grad_(), torch.from_numpy(labels)
        fn_torch = lambda: torch.nn.functional.cross_entropy(tz, ty).backward()  # noqa: E731
    return [(f"softmax-xent {n}x{k} fwd+bwd", ours, numpy, fn_torch)]


def rows(model: str):
    rng, n, layers = np.random.default_rng(0), BATCH[model], LAYERS[model]
    out = [r for c_in, c_out, h in layers["convs"] for r in conv_rows(n, c_in, c_out, h, rng)]
    out += [r for c, h in layers["maps"] for r in map_rows(n, c, h, rng)]
    out += [r for d_in, d_out in layers["linear"] for r in linear_rows(n, d_in, d_out, rng)]
    return out + loss_rows(n, layers["linear"][-1][1], rng)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(BATCH), action="append")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per kernel and contender")
    args = parser.parse_args(argv)
    import numba
    if torch is not None:
        torch.set_num_threads(numba.get_num_threads())
    print(f"threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads() if torch else '-'}")
    head = f"{'kernel':<40} {'ours ms':>9} {'numpy ms':>9} {'torch ms':>9} {'numpy/ours':>10} {'torch/ours':>10}"
    for model in args.model or sorted(BATCH, reverse=True):
        print(f"\n{model} (batch {BATCH[model]}, float32)\n{head}")
        totals = np.zeros(3)
        for name, ours, ref_fn, torch_fn in rows(model):
            t = [best_ms(ours, args.budget), best_ms(ref_fn, args.budget),
                 best_ms(torch_fn, args.budget) if torch_fn else float("nan")]
            if "fwd+bwd" in name and name.startswith("conv2d"):
                totals += t
            print(f"{name:<40} {t[0]:9.3f} {t[1]:9.3f} {t[2]:9.3f} {t[1] / t[0]:10.2f} {t[2] / t[0]:10.2f}")
        print(f"{'all conv2d fwd+bwd':<40} {totals[0]:9.3f} {totals[1]:9.3f} {totals[2]:9.3f} "
              f"{totals[1] / totals[0]:10.2f} {totals[2] / totals[0]:10.2f}")


if __name__ == "__main__":
    main()
