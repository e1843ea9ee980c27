"""Occlusion maps (Zeiler and Fergus 2014): the class probability as a grey patch slides over
the image.

    maps = occlusion(s, x, classes, patch=3, stride=1)    # [n, H, W], the input's spatial size

The patch holds the mean image (what the model sees as zero after normalisation: "grey"). A
pixel's value is the mean probability of the class over every patch position covering it;
positions run in `stride` steps and always include the last row and column, so every pixel
is covered. All occluded copies of an image go through the model in chunks of one batch.
"""
from __future__ import annotations

import numpy as np

from dslc.diagnostics import UsageError


def starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch positions along one axis: 0, stride, ... and the last, size - patch."""
    out = list(range(0, size - patch + 1, stride))
    return out if out[-1] == size - patch else out + [size - patch]


def occlusion(s, x: np.ndarray, classes, patch: int, stride: int) -> np.ndarray:
    """The occlusion map of each example for its class (see the module docstring), [n, H, W]."""
    height, width = x.shape[-2:]
    if patch > min(height, width):
        raise UsageError(f"--patch {patch} is larger than the {width}x{height} image")
    grey = s.blank()[0]
    rows, cols = starts(height, patch, stride), starts(width, patch, stride)
    maps = np.zeros((len(x), height, width))
    with s.progress(len(x), "occluding") as bar:
        for i, image in enumerate(x):
            batch = np.repeat(image[None], len(rows) * len(cols), axis=0)
            for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
                batch[k, :, r:r + patch, c:c + patch] = grey[:, r:r + patch, c:c + patch]
            p = s.probs(batch)[:, classes[i]]
            total, count = np.zeros((height, width)), np.zeros((height, width))
            for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
                total[r:r + patch, c:c + patch] += p[k]
                count[r:r + patch, c:c + patch] += 1
            maps[i] = total / count
            bar.update()
    return maps
