"""The image-optimisation loop classviz, invert, dream and style share, and its regularisers.

    loss = lambda x: (value, gradient)               # a quantity to minimise, for pixels [n, C, H, W]
    x = descend(s, loss, x0, Settings(steps=200, lr=0.05, jitter=1, blur_every=10))

Each step: shift the image by a random jitter (np.roll, undone on the gradient), take the
gradient, restrict it to the current octave's grid, take an Adam step (its steps are about `lr`
pixels whatever the gradient's scale, so one learning rate suits every objective), clip to
the pixel range and, every `blur_every` steps, blur lightly: the lecture's recipe for images
a person can read (Yosinski et al. 2015).

Octaves: the model's input size is fixed (declared in its .net file), so DeepDream's octaves
are bands of detail rather than resized inputs: in octave k of K the update is averaged down
to a grid `scale`^(K-1-k) times coarser and interpolated back, so the coarse octaves shape
large structures first and the last adds detail at full resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dslc.explain.subject import PIXELS


@dataclass(frozen=True)
class Settings:
    steps: int = 200
    lr: float = 0.05
    jitter: int = 1  # pixels
    blur_every: int = 0  # steps; 0: never
    blur_sigma: float = 0.5  # pixels
    octaves: int = 1
    octave_scale: float = 1.4
    seed: int = 0


def total_variation(x: np.ndarray) -> tuple[float, np.ndarray]:
    """Sum of squared differences of vertically and horizontally neighbouring pixels, and its
    gradient (the smoothness term of feature inversion and style transfer)."""
    x = np.asarray(x, np.float64)
    dh, dw = x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]
    g = np.zeros_like(x)
    g[..., 1:, :] += 2 * dh
    g[..., :-1, :] -= 2 * dh
    g[..., :, 1:] += 2 * dw
    g[..., :, :-1] -= 2 * dw
    return float((dh ** 2).sum() + (dw ** 2).sum()), g


def squared_distance(x: np.ndarray, centre: np.ndarray) -> tuple[float, np.ndarray]:
    """|x - centre|^2 and its gradient (L2 regularisation towards the mean image)."""
    d = np.asarray(x, np.float64) - centre
    return float((d ** 2).sum()), 2 * d


def resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[n, C, H, W] to [n, C, *size], linear interpolation."""
    from scipy.ndimage import zoom

    h, w = a.shape[-2:]
    return zoom(a, (1, 1, size[0] / h, size[1] / w), order=1, grid_mode=True, mode="nearest")


def octave_sizes(shape: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    """Grid sizes from the coarsest octave to the image's own, at least 2 pixels a side."""
    return [(max(2, round(shape[0] / scale ** k)), max(2, round(shape[1] / scale ** k)))
            for k in reversed(range(octaves))]


def descend(s, loss, x0: np.ndarray, settings: Settings, what: str = "optimising") -> tuple[np.ndarray, list[float]]:
    """Minimise `loss` over pixels from `x0` (see the module docstring); the final images and
    the loss at every step."""
    rng = np.random.default_rng(settings.seed)
    x = np.asarray(x0, np.float64).copy()
    sizes = octave_sizes(x.shape[-2:], settings.octaves, settings.octave_scale)
    per_octave = [settings.steps // len(sizes) + (k < settings.steps % len(sizes)) for k in range(len(sizes))]
    history: list[float] = []
    with s.progress(settings.steps, what) as bar:
        for size, steps in zip(sizes, per_octave):
            m, v = np.zeros_like(x), np.zeros_like(x)  # Adam's moments, fresh for each octave
            for t in range(1, steps + 1):
                dy, dx = rng.integers(-settings.jitter, settings.jitter + 1, 2) if settings.jitter else (0, 0)
                value, g = loss(np.roll(x, (dy, dx), axis=(-2, -1)).astype(np.float32))
                g = np.roll(np.asarray(g, np.float64), (-dy, -dx), axis=(-2, -1))
                if size != x.shape[-2:]:
                    g = resize(resize(g, size), x.shape[-2:])
                m = 0.9 * m + 0.1 * g
                v = 0.999 * v + 0.001 * g * g
                x -= settings.lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
                x = np.clip(x, *PIXELS)
                if settings.blur_every and len(history) % settings.blur_every == settings.blur_every - 1:
                    from scipy.ndimage import gaussian_filter
                    x = gaussian_filter(x, (0, 0, settings.blur_sigma, settings.blur_sigma))
                history.append(float(value))
                bar.update()
    return x.astype(np.float32), history
