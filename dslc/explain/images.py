"""The pictures `dslc explain` writes: a grid of tiles, each an image or a map, with captions.

    tiles = [[Tile(pixels, "test #0: 3"), Tile(saliency, "saliency", cmap="hot")]]
    write_grid(tiles, "saliency.png", title="digits_cnn: saliency of the predicted class")

A tile is [C, H, W] pixels (C = 1 grey, C = 3 colour) or a 2-D map drawn with a colour map.
Tiny images (8x8 digits) are drawn with nearest-neighbour pixels, each tile about an inch.
Like every figure of dslc (runtime/plots.py), it is built without pyplot and written atomically.
"""
from __future__ import annotations

import io
import json
import textwrap
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dslc.files import write_atomic, write_figure

TILE_INCHES = 1.3


@dataclass
class Tile:
    """`data`: pixels [C, H, W] (shown in `vmin`..`vmax`, default 0..1) or a map [H, W] (its own
    range unless given); `cmap` for maps (None: grey)."""

    data: np.ndarray
    caption: str = ""
    cmap: str | None = None
    vmin: float | None = None
    vmax: float | None = None


def as_picture(pixels: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """[C, H, W] to what imshow draws: [H, W] grey or [H, W, 3] colour, scaled to 0..1."""
    p = (np.asarray(pixels, np.float64) - vmin) / max(vmax - vmin, 1e-12)
    p = np.clip(p, 0.0, 1.0)
    return p[0] if p.shape[0] == 1 else np.moveaxis(p[:3], 0, -1)


def stretch(a: np.ndarray) -> np.ndarray:
    """Any array scaled to 0..1 by its own range (filters, reconstructions, perturbations)."""
    a = np.asarray(a, np.float64)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.full_like(a, 0.5)


def write_grid(rows: Sequence[Sequence[Tile | None]], path, title: str = "") -> None:
    """Draw `rows` of tiles (None: an empty cell) into `path` (PNG, or the format its suffix
    names: files.write_figure)."""
    from matplotlib.figure import Figure

    columns = max(len(r) for r in rows)
    title = textwrap.fill(title, int(TILE_INCHES * columns * 13))  # about 13 characters an inch at 9 points
    top = 0.45 + 0.17 * title.count("\n") if title else 0.1  # inches above the first row's captions
    fig = Figure(figsize=(TILE_INCHES * columns, TILE_INCHES * len(rows) + top))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - top / (TILE_INCHES * len(rows) + top),
                        wspace=0.1, hspace=0.35)
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_axis_off()
            tile = row[c] if c < len(row) else None
            if tile is None:
                continue
            if tile.data.ndim == 3:
                lo = 0.0 if tile.vmin is None else tile.vmin
                hi = 1.0 if tile.vmax is None else tile.vmax
                ax.imshow(as_picture(tile.data, lo, hi), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(tile.data, cmap=tile.cmap or "gray", vmin=tile.vmin, vmax=tile.vmax,
                          interpolation="nearest")
            if tile.caption:
                ax.set_title(tile.caption, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    write_figure(fig, path, dpi=80)


def write_scatter(points: np.ndarray, labels: np.ndarray, names: Sequence[str], path, title: str = "") -> None:
    """A 2-D map of examples, one colour per class, into `path` (PNG, or the format its
    suffix names: files.write_figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5.5))
    ax = fig.add_subplot()
    for c in np.unique(labels):
        at = labels == c
        ax.scatter(points[at, 0], points[at, 1], s=9, color=f"C{int(c) % 10}", label=names[int(c)])
        centre = np.median(points[at], axis=0)
        ax.annotate(names[int(c)], centre, fontsize=11, weight="bold", ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize="small", markerscale=1.5, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    write_figure(fig, path, dpi=80)


def write_npy(path, array: np.ndarray) -> None:
    """An array as a .npy file, written atomically."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    write_atomic(path, buf.getvalue())


def to_json(report) -> str:
    """A report (NumPy numbers and arrays included) as indented JSON."""
    def plain(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        raise TypeError(f"not JSON: {type(v).__name__}")
    return json.dumps(report, indent=2, default=plain)
