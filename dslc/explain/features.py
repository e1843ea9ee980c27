"""What a layer holds: first-layer filters, feature maps, nearest neighbours in feature space
and 2-D maps of the feature space (the lecture's "visualizing and understanding").

    w, tiles = filters(s)                       # the first conv (or linear) layer's kernels
    feats = activations(s, x, "conv2")          # [n, C, H, W] feature maps of one layer
    found = neighbors(s, x, train_x, "conv3", k=5)   # nearest training images: features vs pixels
    points = embed(features, "tsne")            # [n, 2] with scikit-learn's t-SNE or PCA
"""
from __future__ import annotations

from math import prod

import numpy as np

from dslc.diagnostics import CliError, UsageError
from dslc.explain.images import Tile, stretch

MAX_CHANNELS = 8  # input channels shown per filter of a deeper layer


def weight_layer(s, layer: str | None = None):
    """The first conv2d or linear node (under `layer`, when given) whose weight reads the image
    directly or is a conv, and its weight parameter's name."""
    graph = s.model.graph
    under = None if layer is None else s.layer(layer)
    for node in graph.nodes:
        if node.op not in ("conv2d", "linear"):
            continue
        if under is not None and not (node.name == under or node.name.startswith(f"{layer}.")):
            continue
        if node.op == "linear" and graph[node.inputs[1]].type.shape[0] != prod(s.shape):
            continue  # a hidden dense layer: its rows are not images
        return node, node.inputs[1]
    raise CliError(f"{s.file}: model '{s.model.name}' has no convolution"
                   + (f" under '{layer}'" if layer else "") + " and no linear layer reading the image: no filters to show")


def filters(s, layer: str | None = None) -> tuple[np.ndarray, list[list[Tile]]]:
    """The kernels [O, C, kh, kw] of the first convolution, or a linear first layer's weight
    columns as images [units, C, H, W] (templates); and tiles, each stretched to its own range."""
    node, weight = weight_layer(s, layer)
    w = np.asarray(s.model.params[weight], np.float64)
    if node.op == "linear":
        w = w.T.reshape((w.shape[1], *s.shape))
    if w.shape[1] in (1, 3):  # grey or colour kernels, one tile each
        tiles = [Tile(stretch(kernel), f"{k}") for k, kernel in enumerate(w)]
        per_row = max(8, min(16, int(np.ceil(np.sqrt(len(tiles))))))
        return w, [tiles[i:i + per_row] for i in range(0, len(tiles), per_row)]
    # a deeper layer: one row per filter, its first input channels across
    return w, [[Tile(stretch(kernel[c:c + 1]), f"{k}.{c}") for c in range(min(MAX_CHANNELS, len(kernel)))]
               for k, kernel in enumerate(w)]


def activations(s, x: np.ndarray, layer: str) -> np.ndarray:
    """The values of node `layer` for each example: feature maps [n, C, H, W], or [n, ...]."""
    node = s.layer(layer)
    return s.forward(x, [node])[node]


def as_maps(values: np.ndarray) -> np.ndarray:
    """One example's layer values as 2-D maps [C, H, W]: a dense vector becomes one near-square map."""
    if values.ndim == 3:
        return values
    flat = values.reshape(-1)
    side = int(np.ceil(np.sqrt(flat.size)))
    out = np.full(side * side, np.nan)
    out[:flat.size] = flat
    return out.reshape(1, side, side)


def features_of(s, x: np.ndarray, layer: str) -> np.ndarray:
    """[n, features] of node `layer` (flattened)."""
    return activations(s, x, layer).reshape(len(x), -1).astype(np.float64)


def nearest(queries: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """Indices [q, k] of the `k` rows of `pool` nearest to each query (Euclidean), nearest first."""
    d = (queries ** 2).sum(1)[:, None] - 2 * queries @ pool.T + (pool ** 2).sum(1)[None]
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def neighbors(s, x: np.ndarray, pool: np.ndarray, layer: str, k: int) -> dict[str, np.ndarray]:
    """For each example of `x`, the `k` nearest images of `pool` in node `layer`'s feature space
    and in pixel space: {"features": [n, k], "pixels": [n, k]} indices into `pool`."""
    if k > len(pool):
        raise UsageError(f"-k {k}: the training images searched are only {len(pool):,}")
    near = nearest(features_of(s, x, layer), features_of(s, pool, layer), k)
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64)  # noqa: E731
    return {"features": near, "pixels": nearest(flat(x), flat(pool), k)}


def embed(features: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """A 2-D map [n, 2] of feature vectors by scikit-learn's t-SNE (perplexity 30, or a quarter of
    the examples when fewer; PCA initialisation) or PCA. UsageError, saying how to install it,
    when scikit-learn is absent."""
    try:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
    except ImportError:
        raise UsageError("`dslc explain embed` uses scikit-learn, which is not installed: "
                         "pip install 'dslc[explain]' (or pip install scikit-learn)") from None
    if len(features) < 3:
        raise UsageError(f"embed needs at least 3 examples, got {len(features)}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    perplexity = min(30.0, (len(features) - 1) / 4)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
