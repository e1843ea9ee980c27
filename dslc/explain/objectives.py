"""What classviz, invert, dream and style minimise: each a function of pixels [n, C, H, W] giving
(value, gradient), the gradient from the compiled executor plus host-side terms.

    loss = classviz_loss(s, [3, 5], l2=1e-3)          # -score[i, targets[i]] + l2 |x - mean image|^2
    loss = inversion_loss(s, "conv2", features, tv=1e-2)
    loss = dream_loss(s, "conv3")                     # -0.5 |conv3|^2 / its size
    loss = StyleLoss(s, content_features, "conv3", grams, ["conv1", "conv2"], ...)

They are the verbs' whole gradient paths: tests/test_explain_gradients.py checks each against
finite differences on a float64 model.
"""
from __future__ import annotations

from math import prod
from typing import Sequence

import numpy as np

from dslc.explain.gradients import one_hot
from dslc.explain.optimise import squared_distance, total_variation


def classviz_loss(s, targets: Sequence[int], l2: float):
    """Class visualisation (Simonyan et al. 2014): minus the score of class targets[i] of image
    i, plus `l2` times its squared distance from the mean image (the blank start)."""
    weights = one_hot(targets, s.model.graph[s.logits].type.shape[1])
    centre = s.blank().astype(np.float64)

    def loss(x):
        score, g = s.grad(x, {s.logits: weights})
        r, gr = squared_distance(x, centre)
        return -score + l2 * r, -g + l2 * gr
    return loss


def inversion_loss(s, layer: str, features: np.ndarray, tv: float, l2: float = 0.0):
    """Feature inversion (Mahendran and Vedaldi 2015): |phi(x) - features|^2 / |features|^2 at
    node `layer`, plus `tv` times the total variation and `l2` times |x - mean image|^2."""
    scale = 1.0 / max(float((np.asarray(features, np.float64) ** 2).sum()), 1e-12)
    centre = s.blank().astype(np.float64)

    def loss(x):
        phi = s.forward(x, [layer])[layer].astype(np.float64)
        diff = phi - features
        _, g = s.grad(x, {layer: 2 * scale * diff})
        t, gt = total_variation(x)
        r, gr = squared_distance(x, centre)
        return scale * float((diff ** 2).sum()) + tv * t + l2 * r, g + tv * gt + l2 * gr
    return loss


def dream_loss(s, layer: str):
    """DeepDream (Mordvintsev et al. 2015): minus half the squared activations of node `layer`
    per element, so that gradient descent amplifies whatever the layer already sees."""
    size = prod(s.model.graph[layer].type.shape[1:])

    def loss(x):
        value, g = s.grad(x, {layer: "l2"})
        return -value / size, -g / size
    return loss


def gram(features: np.ndarray) -> np.ndarray:
    """Gram matrices [n, C, C] of feature maps [n, C, H, W] (or [n, C, L]), divided by C*H*W."""
    f = np.asarray(features, np.float64).reshape(len(features), features.shape[1], -1)
    return f @ f.transpose(0, 2, 1) / (f.shape[1] * f.shape[2])


class StyleLoss:
    """Neural style transfer (Gatys et al. 2016): `content_weight` |phi_c(x) - content|^2 / its
    size at `content_layer`, plus for each style layer its weight times |G(x) - G(style)|^2
    (Gram matrices), plus `tv` times the total variation. `style_value(x)` is the Gram part alone."""

    def __init__(self, s, content_layer: str, content: np.ndarray, style_layers: Sequence[str],
                 grams: Sequence[np.ndarray], style_weights: Sequence[float], content_weight: float, tv: float):
        self.s, self.content_layer, self.content = s, content_layer, np.asarray(content, np.float64)
        self.style_layers, self.grams, self.weights = list(style_layers), list(grams), list(style_weights)
        self.content_weight, self.tv = content_weight, tv

    def _style(self, feats: dict) -> tuple[float, dict[str, np.ndarray]]:
        total, cot = 0.0, {}  # type: float, dict[str, np.ndarray]
        for layer, target, w in zip(self.style_layers, self.grams, self.weights):
            f = feats[layer].astype(np.float64)
            n, c = f.shape[:2]
            flat = f.reshape(n, c, -1)
            diff = gram(f) - target
            total += w * float((diff ** 2).sum())
            # L = w |G - A|^2, G = F F^T / k: dL/dF = 2w (D + D^T) F / k = 4w D F / k (D symmetric)
            dfeat = 4 * w * (diff @ flat) / (c * flat.shape[2])
            cot[layer] = cot.get(layer, 0) + dfeat.reshape(f.shape)
        return total, cot

    def style_value(self, x: np.ndarray) -> float:
        return self._style(self.s.forward(x, self.style_layers))[0]

    def __call__(self, x: np.ndarray):
        layers = list(dict.fromkeys([*self.style_layers, self.content_layer]))
        feats = self.s.forward(x, layers)
        value, cot = self._style(feats)
        diff = feats[self.content_layer].astype(np.float64) - self.content
        size = diff.size
        value += self.content_weight * float((diff ** 2).sum()) / size
        cot[self.content_layer] = cot.get(self.content_layer, 0) + 2 * self.content_weight * diff / size
        _, g = self.s.grad(x, cot)
        t, gt = total_variation(x)
        return value + self.tv * t, g + self.tv * gt
