"""Input standardisation measured on the training split only, stored with a run as plain JSON.

    per_channel  x' = (x - mean_c) / std_c, one mean and std per channel (axis 1: the colour
                 channel of NCHW images, the feature of [N, F] tables)
    mean_image   x' = x - mean, the mean over examples of each input position (the "mean
                 image" subtraction of AlexNet / Caffe)
    none         x' = x

The examples are in the model input's layout when they are fitted (runtime/prepare.py
brings them to it first, by runtime/layout.py's rule: grey images stored [N, H, W] become
[N, 1, H, W], one channel, not H rows). For a flat model input (an MLP) they keep the
data's layout, [N, C, H, W] images or [N, F] features ([N, H, W] again as [N, 1, H, W]),
and are flattened only when fed.

Statistics come from the training split (never validation or test data, which would leak
them); the same dict is applied at evaluation time, so a saved run reproduces its inputs.
"""
from __future__ import annotations

import numpy as np

KINDS = ("none", "mean_image", "per_channel")


def fit(x: np.ndarray, kind: str = "per_channel") -> dict:
    """The statistics `kind` needs, measured on training inputs `x` [N, C, ...], as a JSON-able dict.

    >>> fit(np.array([[0., 2.], [2., 2.]]), "per_channel")
    {'kind': 'per_channel', 'mean': [1.0, 2.0], 'std': [1.0, 1.0]}
    """
    if kind not in KINDS:
        raise ValueError(f"normalize must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "none":
        return {"kind": "none"}
    if kind == "mean_image":
        return {"kind": kind, "mean": _mean(x, (0,)).tolist()}
    axes = (0, *range(2, x.ndim))
    mean = _mean(x, axes)
    var = _mean(x, axes, center=mean.reshape((-1,) + (1,) * (x.ndim - 2)), square=True)
    std = np.sqrt(var)
    # a constant channel (e.g. an always-zero feature) is centred, not divided by zero
    return {"kind": kind, "mean": mean.tolist(), "std": np.where(std > 1e-12, std, 1.0).tolist()}


def _mean(x: np.ndarray, axes: tuple, center=0.0, square: bool = False, chunk: int = 4096) -> np.ndarray:
    """Mean over `axes` (which include axis 0) of x - center (squared), summed in float64 a
    chunk of examples at a time: exact enough for 50,000 images, without a float64 copy of them."""
    total = 0.0
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].astype(np.float64) - center
        total = total + (part * part if square else part).sum(axis=axes)
    return np.asarray(total) / np.prod([x.shape[a] for a in axes])


def apply(x: np.ndarray, stats: dict) -> np.ndarray:
    """`x` standardised with statistics from `fit`, as float32 (a new array)."""
    kind = stats["kind"]
    if kind == "none":
        return x.astype(np.float32, copy=True)
    mean = np.asarray(stats["mean"], np.float32)
    if kind == "mean_image":
        if mean.shape != x.shape[1:]:
            raise ValueError(f"mean image of shape {mean.shape} does not fit inputs of shape {x.shape[1:]}")
        return (x - mean).astype(np.float32)
    if kind != "per_channel":
        raise ValueError(f"unknown normalisation {kind!r}")
    if x.ndim < 2 or len(mean) != x.shape[1]:
        raise ValueError(f"{len(mean)} channel means do not fit inputs of shape {x.shape[1:]}")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    std = np.asarray(stats["std"], np.float32)
    return ((x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)
