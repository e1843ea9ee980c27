"""Test-time augmentation: average a model's class probabilities over transformed copies of each image.

`dslc eval --tta flip,crops` evaluates every example as several views and averages the
predicted probabilities, as the lectures' ensembles do with models:

    flip    the image and its mirror (left-right), 2 views
    crops   the image and four copies shifted by SHIFT of its width (at least a pixel) up,
            down, left and right, the uncovered border zero, 5 views (the training
            augmentation random_crop(size, pad) draws such shifts)
    both    every crop and its mirror, 10 views

Views are made from the raw images, before normalisation, exactly as the training
augmentations make theirs. A view that the data never showed the model (mirrored digits)
can lower the accuracy; `dslc eval` prints it with and without.

    for label, view in views(("flip",), (1, 8, 8)):
        probs += evaluate(view(x))
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dslc.diagnostics import UsageError

KINDS = ("flip", "crops")
SHIFT = 1 / 8  # of the image's width: 1 pixel of an 8x8 digit, 4 of a 32x32 CIFAR image (random_crop's pad)

View = Callable[[np.ndarray], np.ndarray]


def parse(text: str) -> tuple[str, ...]:
    """`flip,crops` -> ("flip", "crops"); UsageError naming an unknown kind."""
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise UsageError(f"--tta {text!r}: expected a comma-separated list of {', '.join(KINDS)}")
    return kinds


def _shift(dy: int, dx: int) -> View:
    """The image moved by (dy, dx) pixels, the uncovered border zero."""
    def view(x: np.ndarray) -> np.ndarray:
        out = np.zeros_like(x)
        h, w = x.shape[-2:]
        out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out
    return view


def views(kinds: tuple[str, ...], example_shape: tuple[int, ...]) -> list[tuple[str, View]]:
    """(label, function) for each view of images of `example_shape` ([C, H, W]); the first is
    the image itself. UsageError for examples that are not images."""
    if len(example_shape) != 3:
        raise UsageError(f"--tta needs images [C, H, W]; the data's examples have shape {list(example_shape)}")
    base: list[tuple[str, View]] = [("image", lambda x: x)]
    if "crops" in kinds:
        s = max(1, round(example_shape[2] * SHIFT))
        base += [(f"shift {name}", _shift(dy, dx))
                 for name, dy, dx in (("up", -s, 0), ("down", s, 0), ("left", 0, -s), ("right", 0, s))]
    if "flip" in kinds:
        base += [(f"{label}, mirrored", _mirrored(f)) for label, f in list(base)]
    return base


def _mirrored(view: View) -> View:
    """`view` followed by a left-right flip."""
    return lambda x: view(x)[..., ::-1]
