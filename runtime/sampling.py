"""Points of a search space: random (the default), a grid, and a finer space around the best.

The lectures prefer random search to a grid: with the same number of trials it tries as
many values of each hyper-parameter as there are trials, where a grid tries only a few,
and the few that matter are seldom known in advance (Bergstra & Bengio 2012). Rates and
widths are sampled on a log scale. Coarse to fine: after a first round, `refine` narrows
each dimension to the region the best trials occupy and a second round samples there.

    points = sample(space, 12, np.random.default_rng([seed, 1]))   # [{"lr": 0.0031, "hidden": 64}, ...]
    finer = refine(space, [(point, metric), ...], mode="max")
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from dslc.frontend.recipe_search import Dimension

TOP = 0.25  # refine keeps the region of this share of the trials (at least TOP_MIN of them)
TOP_MIN = 3
MARGIN = 0.1  # and widens it by this share of its width on each side (in log units on a log scale)


def _draw(dim: Dimension, rng: np.random.Generator):
    if dim.kind == "choice":
        return dim.choices[int(rng.integers(len(dim.choices)))]
    lo, hi = (math.log(dim.low), math.log(dim.high)) if dim.kind.endswith("loguniform") else (dim.low, dim.high)
    if dim.integer:  # each integer equally likely on its scale: draw in [lo, hi + 1) and floor
        lo, hi = (lo, math.log(dim.high + 1)) if "log" in dim.kind else (lo, hi + 1)
        x = rng.uniform(lo, hi)
        return min(int(math.floor(math.exp(x) if "log" in dim.kind else x)), int(dim.high))
    x = float(rng.uniform(lo, hi))
    return float(f"{math.exp(x) if 'log' in dim.kind else x:.4g}")  # 4 digits: readable, still continuous


def sample(space: Sequence[Dimension], n: int, rng: np.random.Generator) -> list[dict]:
    """`n` random points, each dimension drawn independently."""
    return [{d.key: _draw(d, rng) for d in space} for _ in range(n)]


def _axis(dim: Dimension, points: int) -> list:
    if dim.kind == "choice":
        return list(dim.choices)
    if "log" in dim.kind:
        values = np.exp(np.linspace(math.log(dim.low), math.log(dim.high), points))
    else:
        values = np.linspace(dim.low, dim.high, points)
    if dim.integer:
        return sorted({int(round(v)) for v in values})
    return [float(f"{v:.4g}") for v in values]


def grid(space: Sequence[Dimension], points: int) -> list[dict]:
    """Every combination: each choice's values, `points` evenly spaced values (on the
    dimension's scale) of every other dimension."""
    axes = [_axis(d, points) for d in space]
    return [dict(zip((d.key for d in space), combo)) for combo in itertools.product(*axes)]


def refine(space: Sequence[Dimension], results: Sequence[tuple[dict, float]], mode: str) -> tuple[Dimension, ...]:
    """The space narrowed to where the best trials are: for a numeric dimension, the range of
    the top TOP of `results` (at least TOP_MIN) widened by MARGIN, inside the original bounds;
    for a choice, the values the top trials used. `results` are (point, metric) pairs."""
    ranked = sorted((r for r in results if math.isfinite(r[1])), key=lambda r: r[1], reverse=mode == "max")
    top = [point for point, _ in ranked[:max(TOP_MIN, math.ceil(TOP * len(ranked)))]]
    if not top:
        return tuple(space)
    out = []
    for d in space:
        seen = [p[d.key] for p in top if d.key in p]
        if d.kind == "choice":
            out.append(Dimension(d.key, "choice", choices=tuple(c for c in d.choices if c in seen), span=d.span))
            continue
        log = "log" in d.kind
        scale = (lambda v: math.log(v)) if log else (lambda v: float(v))
        unscale = (lambda v: math.exp(v)) if log else (lambda v: v)
        lo, hi = min(map(scale, seen)), max(map(scale, seen))
        width = (hi - lo) or (scale(d.high) - scale(d.low)) * MARGIN
        lo, hi = max(scale(d.low), lo - MARGIN * width), min(scale(d.high), hi + MARGIN * width)
        low, high = unscale(lo), unscale(hi)
        if d.integer:
            low, high = int(math.floor(low)), int(math.ceil(high))
            high = max(high, low + 1)
        out.append(Dimension(d.key, d.kind, low, high, (), d.span))
    return tuple(out)
