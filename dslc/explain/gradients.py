"""Saliency maps (Simonyan et al. 2014) and guided backpropagation (Springenberg et al. 2015).

    g = class_gradient(s, x, classes)                 # d score[i, classes[i]] / d x[i], [n, C, H, W]
    m = saliency(s, x, classes)                       # max over channels of |g|, [n, H, W]
    m = saliency(s, x, classes, guided=True)          # ReLUs pass only positive gradients

Each example's map is its own class score's: the objective is the sum over examples of
score[i, classes[i]], given to the executor as a one-hot cotangent of the class scores.
"""
from __future__ import annotations

import numpy as np


def _guided_relu(b, n, g):
    # Guided backpropagation: the gradient passes a ReLU where its input was positive (the
    # forward sign, as backpropagation) and where the gradient arriving is positive (the
    # backward sign, as the "deconvnet"); relu(g) * step(x).
    return (b.mul(b.relu(g), b.step(n.inputs[0])),)


GUIDED = {"relu": _guided_relu}


def one_hot(classes, count: int) -> np.ndarray:
    out = np.zeros((len(classes), count), np.float32)
    out[np.arange(len(classes)), np.asarray(classes, np.int64)] = 1.0
    return out


def class_gradient(s, x: np.ndarray, classes, guided: bool = False) -> np.ndarray:
    """The gradient of each example's class score with respect to its pixels (guided: with
    guided backpropagation's ReLU rule)."""
    count = s.model.graph[s.logits].type.shape[1]
    _, g = s.grad(x, {s.logits: one_hot(classes, count)}, rules=GUIDED if guided else None)
    return g


def saliency(s, x: np.ndarray, classes, guided: bool = False) -> np.ndarray:
    """The saliency map of each example: max over channels of |d score / d pixel|, [n, H, W]."""
    return np.abs(class_gradient(s, x, classes, guided)).max(axis=1)


def ink_share(pixels: np.ndarray, maps: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per example, the share of the map's mass on pixels brighter than `threshold` (the strokes
    of a digit): how much of the saliency falls on the ink."""
    ink = pixels.max(axis=1) > threshold
    return (maps * ink).sum(axis=(1, 2)) / np.maximum(maps.sum(axis=(1, 2)), 1e-30)
