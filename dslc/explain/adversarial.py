"""Adversarial examples: the fast gradient sign method (Goodfellow et al. 2015) and iterative
"fool it into class k" images (the CS231n fooling images), in pixel units.

    x_adv = fgsm(s, x, labels, eps=0.1)                  # one step up each example's loss
    x_fool, steps = fool(s, x, target=8)                 # until P(8) > 0.9 for every example
    rows = report(s, x, x_adv)                           # classes, probabilities, perturbation norms

Both differentiate log P(class) = log softmax(scores)[class], whose gradient with respect to
the scores is onehot(class) - P: a cotangent of the class scores, so any classifier works,
whatever its loss.
"""
from __future__ import annotations

import numpy as np

from dslc.explain.gradients import one_hot
from dslc.explain.subject import PIXELS


def log_prob_grad(s, x: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """(P [n, classes], d log P(classes[i]) / d x[i]) for each example."""
    p = s.probs(x)
    _, g = s.grad(x, {s.logits: one_hot(classes, p.shape[1]) - p})
    return p, g


def fgsm(s, x: np.ndarray, labels, eps: float) -> np.ndarray:
    """x + eps * sign(d loss / d x), the loss being -log P(label): each example moved eps in
    every pixel in the direction that lowers the probability of its class; clipped to 0..1."""
    _, g = log_prob_grad(s, x, labels)
    return np.clip(x - eps * np.sign(g), *PIXELS).astype(np.float32)


def fool(s, x: np.ndarray, target: int, confidence: float = 0.9, steps: int = 200,
         lr: float = 0.05) -> tuple[np.ndarray, int]:
    """Gradient ascent on log P(target) in steps of L2 norm `lr` per example until P(target) >
    `confidence` for every example (each stops when it gets there), at most `steps` steps;
    returns the images and the steps taken."""
    x = x.astype(np.float32).copy()
    targets = np.full(len(x), target)
    taken = 0
    with s.progress(steps, f"fooling into {s.class_names[target]}") as bar:
        for taken in range(steps + 1):
            p = s.probs(x)
            todo = np.flatnonzero(p[:, target] <= confidence)
            if not len(todo) or taken == steps:
                break
            _, g = log_prob_grad(s, x[todo], targets[todo])
            norm = np.sqrt((g.astype(np.float64) ** 2).sum(axis=(1, 2, 3), keepdims=True))
            x[todo] = np.clip(x[todo] + lr * g / np.maximum(norm, 1e-12), *PIXELS)
            bar.update()
    return x, taken


def report(s, x: np.ndarray, moved: np.ndarray, target: int | None = None) -> list[dict]:
    """Per example: the predicted class and its probability before and after, P(target) after,
    and the perturbation's L2 and L-infinity norms in pixel units."""
    before, after = s.probs(x), s.probs(moved)
    delta = (moved.astype(np.float64) - x).reshape(len(x), -1)
    rows = []
    for i in range(len(x)):
        a, b = int(before[i].argmax()), int(after[i].argmax())
        row = {"original": s.class_names[a], "original_probability": float(before[i, a]),
               "new": s.class_names[b], "new_probability": float(after[i, b]),
               "l2": float(np.linalg.norm(delta[i])), "linf": float(np.abs(delta[i]).max())}
        if target is not None:
            row["target_probability"] = float(after[i, target])
        rows.append(row)
    return rows
