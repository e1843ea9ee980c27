"""Random transforms of a batch of images, vectorised over the batch with NumPy.

Each transform is a small class holding its parameters; calling it on float32 NCHW
images x in 0..1 (before normalisation) with a np.random.Generator returns new images
(the input is never modified), drawing one independent choice per image. The same
generator state gives the same result, which is what makes a resumed run identical.

`build_augment` turns a recipe's `augment = [hflip(), random_crop(32, pad=4), ...]` into
one `Augment`: the image transforms in the order given, then mixup (which also changes
the labels, see `Batch`) whatever its place in the list.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dslc.frontend.recipe_values import (INT_POS, NONNEG, NONNEG_NUM, POS, PROB, Arg, CallSpec, ListOf, Num, Range,
                                         family, when)
from dslc.runtime.data.dataset import Batch


def _images(x: np.ndarray, what: str) -> tuple[int, int, int, int]:
    if x.ndim != 4:
        raise ValueError(f"{what} needs images [N, C, H, W], got an array of shape {list(x.shape)}")
    return x.shape


@dataclass(frozen=True)
class HFlip:
    """Mirror each image left-right with probability p."""

    p: float = 0.5

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _images(x, "hflip")
        flip = rng.random(len(x)) < self.p
        return np.where(flip[:, None, None, None], x[..., ::-1], x)


@dataclass(frozen=True)
class RandomCrop:
    """Zero-pad each side by `pad` pixels, then cut a size x size window at a random place
    (the CIFAR augmentation of He et al. 2016: random_crop(32, pad=4))."""

    size: int
    pad: int = 0

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, _, h, w = _images(x, "random_crop")
        p = self.pad
        if self.size > min(h, w) + 2 * p:
            raise ValueError(f"random_crop({self.size}, pad={p}) does not fit images of {h}x{w}")
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        top = rng.integers(0, h + 2 * p - self.size + 1, n)
        left = rng.integers(0, w + 2 * p - self.size + 1, n)
        windows = sliding_window_view(padded, (self.size, self.size), axis=(2, 3))  # a view: no copy
        return windows[np.arange(n), :, top, left]  # [N, C, size, size]


@dataclass(frozen=True)
class RandomResizedCrop:
    """Crop a random box covering a share in `scale` of the image, with aspect ratio (w/h) in
    `ratio` (log-uniform), and resize it to size x size bilinearly (the Inception crop of
    Szegedy et al. 2015, drawn as torchvision does: 10 tries, then the centred largest box)."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    tries: int = 10

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, _, h, w = _images(x, "random_resized_crop")
        area = h * w * rng.uniform(*self.scale, (n, self.tries))
        aspect = np.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), (n, self.tries)))
        bw, bh = np.rint(np.sqrt(area * aspect)).astype(int), np.rint(np.sqrt(area / aspect)).astype(int)
        fits = (bw >= 1) & (bw <= w) & (bh >= 1) & (bh <= h)
        first = np.argmax(fits, axis=1)  # the first try that fits, as a loop over tries would take
        bw, bh = bw[np.arange(n), first], bh[np.arange(n), first]
        fw, fh = self._fallback(h, w)
        none = ~fits.any(axis=1)
        bw, bh = np.where(none, fw, bw), np.where(none, fh, bh)
        top = np.where(none, (h - bh) // 2, np.floor(rng.random(n) * (h - bh + 1)).astype(int))
        left = np.where(none, (w - bw) // 2, np.floor(rng.random(n) * (w - bw + 1)).astype(int))
        return resize_boxes(x, top, left, bh, bw, self.size)

    def _fallback(self, h: int, w: int) -> tuple[int, int]:
        """(width, height) of the largest centred box whose aspect ratio is within `ratio`."""
        if w / h < self.ratio[0]:
            return w, round(w / self.ratio[0])
        if w / h > self.ratio[1]:
            return round(h * self.ratio[1]), h
        return w, h


def resize_boxes(x: np.ndarray, top, left, height, width, size: int) -> np.ndarray:
    """Box i of image i (rows top..top+height-1, columns left..left+width-1) resized to
    size x size by bilinear interpolation without antialiasing, pixel centres aligned
    (PyTorch's interpolate(mode="bilinear", align_corners=False) on the box)."""
    n = len(x)

    def grid(start, length):
        # source coordinate of each output pixel, kept inside the box; [N, size] each
        s = start[:, None] + (np.arange(size) + 0.5) * (length / size)[:, None] - 0.5
        s = np.clip(s, start[:, None], (start + length - 1)[:, None])
        lo = np.floor(s).astype(int)
        return lo, np.minimum(lo + 1, (start + length - 1)[:, None]), (s - lo).astype(x.dtype)

    y0, y1, wy = grid(np.asarray(top), np.asarray(height))
    x0, x1, wx = grid(np.asarray(left), np.asarray(width))
    nhwc, rows = x.transpose(0, 2, 3, 1), np.arange(n)[:, None, None]
    wx = wx[:, None, :, None]

    def row(yi):  # interpolate along x on the source rows yi: [N, size, size, C]
        a, b = nhwc[rows, yi[:, :, None], x0[:, None, :]], nhwc[rows, yi[:, :, None], x1[:, None, :]]
        return a + (b - a) * wx

    top_rows, bottom_rows = row(y0), row(y1)
    out = top_rows + (bottom_rows - top_rows) * wy[:, :, None, None]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


@dataclass(frozen=True)
class ColorJitter:
    """Scale brightness, contrast and saturation, in that order, each by a random factor in
    [max(0, 1 - v), 1 + v] (v = 0 leaves it alone), as torchvision's ColorJitter blends:
    brightness towards black, contrast towards the image's mean grey, saturation towards
    each pixel's grey (ITU-R 601 luma for RGB); results are clipped to 0..1."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = _images(x, "color_jitter")[0]
        for amount, toward in ((self.brightness, lambda x: np.zeros_like(x[:, :1])),
                               (self.contrast, lambda x: _grey(x).mean(axis=(1, 2, 3), keepdims=True)),
                               (self.saturation, _grey)):
            if amount > 0:
                f = rng.uniform(max(0.0, 1 - amount), 1 + amount, n).astype(x.dtype)[:, None, None, None]
                x = np.clip(f * x + (1 - f) * toward(x), 0.0, 1.0)
        return x


def _grey(x: np.ndarray) -> np.ndarray:
    """Grey level [N, 1, H, W]: luma 0.299 R + 0.587 G + 0.114 B for RGB, the channel mean otherwise."""
    if x.shape[1] == 3:
        return np.tensordot(np.array([0.299, 0.587, 0.114], x.dtype), x, axes=([0], [1]))[:, None]
    return x.mean(axis=1, keepdims=True)


@dataclass(frozen=True)
class Cutout:
    """Zero a size x size square centred on a random pixel, clipped at the borders (DeVries &
    Taylor 2017, "Improved regularization of CNNs with cutout"). The square spans rows
    cy - size//2 .. cy - size//2 + size - 1 (columns likewise): centred for an odd size, one
    more row above the centre than below it for an even one, which is their code's square
    (y - size//2 to y + size//2, exclusive); theirs is a pixel short for an odd size."""

    size: int

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, _, h, w = _images(x, "cutout")
        if self.size > min(h, w):  # a square wider than the image blanked most or all of every one
            raise ValueError(f"cutout({self.size}) does not fit images of {h}x{w}: the square is wider than the "
                             "image (the paper cuts half of it: cutout(16) on 32x32)")
        cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
        top, left = cy - self.size // 2, cx - self.size // 2
        ys, xs = np.arange(h), np.arange(w)
        inside_y = (ys >= top[:, None]) & (ys < (top + self.size)[:, None])
        inside_x = (xs >= left[:, None]) & (xs < (left + self.size)[:, None])
        hole = inside_y[:, None, :, None] & inside_x[:, None, None, :]
        return np.where(hole, 0.0, x).astype(x.dtype)


@dataclass(frozen=True)
class Mixup:
    """Blend each example with another of the same batch: x = lam x + (1 - lam) x[perm], one
    lam ~ Beta(alpha, alpha) per batch (Zhang et al. 2018, "mixup: beyond empirical risk
    minimization", as in their reference code); returns (x, y, y[perm], lam)."""

    alpha: float

    def __call__(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
        lam = float(rng.beta(self.alpha, self.alpha))
        perm = rng.permutation(len(x))
        return (lam * x + (1 - lam) * x[perm]).astype(x.dtype), y, y[perm], lam


# recipe name -> transform class; each recipe argument is a field of the same name
TRANSFORMS = {"hflip": HFlip, "random_crop": RandomCrop, "random_resized_crop": RandomResizedCrop,
              "color_jitter": ColorJitter, "cutout": Cutout, "mixup": Mixup}
# The transforms whose images come out `size` x `size` whatever their input's size: the model
# reads them, so the recipe check (recipe/schema.py) holds `size` to the model input's H x W.
SIZED = ("random_crop", "random_resized_crop")

# The recipe's `augment = [...]` calls, with the defaults of the classes above (a test compares them).
SCHEMA = family(
    CallSpec("hflip", "mirror images left-right", (Arg("p", Num(range=PROB), 0.5, "probability"),)),
    CallSpec("random_crop", "pad by `pad` pixels, then crop a random size x size window",
             (Arg("size", INT_POS), Arg("pad", Num(True, NONNEG), 0))),
    CallSpec("random_resized_crop", "crop a random area share in `scale` and resize it to size x size",
             (Arg("size", INT_POS), Arg("scale", ListOf(Num(range=Range(0, 1, lo_open=True)), 2), (0.08, 1.0))),
             when(lambda a: a["scale"][0] > a["scale"][1], "E0505", "scale",
                  "scale must be [low, high] with low <= high, got {scale}")),
    CallSpec("color_jitter", "scale brightness/contrast/saturation by a random factor in [1-x, 1+x]",
             tuple(Arg(k, NONNEG_NUM, 0.0) for k in ("brightness", "contrast", "saturation"))),
    CallSpec("cutout", "zero a random size x size square", (Arg("size", INT_POS),)),
    CallSpec("mixup", "blend pairs of examples and labels with weight ~ Beta(alpha, alpha)", (Arg("alpha", POS),)))


@dataclass(frozen=True)
class Augment:
    """Image transforms applied in order, then optional mixup: (x, y, rng) -> Batch."""

    transforms: tuple = ()
    mixup: Mixup | None = None

    def __call__(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Batch:
        for t in self.transforms:
            x = t(x, rng)
        return Batch(*self.mixup(x, y, rng)) if self.mixup else Batch(x, y)


def build_augment(calls) -> Augment:
    """An Augment from recipe calls: (name, {arg: value}) pairs or the recipe's CallValues.

    >>> build_augment([("hflip", {"p": 0.5}), ("random_crop", {"size": 32, "pad": 4})]).transforms
    (HFlip(p=0.5), RandomCrop(size=32, pad=4))
    """
    transforms: list = []
    mixups: list[Mixup] = []
    for call in calls:
        name, args = (call.name, call.kwargs) if hasattr(call, "kwargs") else call
        if name not in TRANSFORMS:
            raise ValueError(f"unknown augmentation '{name}'; known: {', '.join(TRANSFORMS)}")
        if "scale" in args:
            args = {**args, "scale": tuple(args["scale"])}
        (mixups if name == "mixup" else transforms).append(TRANSFORMS[name](**args))
    if len(mixups) > 1:  # a recipe's check reports both mistakes first, located (E0503, E0508)
        raise ValueError("mixup is given more than once")
    return Augment(tuple(transforms), mixups[0] if mixups else None)
