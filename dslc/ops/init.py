"""Initialisers: how `param W : f32[64, 100] = kaiming()` and `linear(10, init=xavier)` fill weights.

Fans follow the usual layout conventions: a rank-2 weight is (fan_in, fan_out)
(as in `x @ W`); a convolution weight is (C_out, C_in/groups, kh, kw), with
fan_in = C_in/groups*kh*kw and fan_out = C_out*kh*kw; a vector has fan_in = fan_out = its length.

    >>> sample(Init("kaiming"), (64, 100), np.random.default_rng(0)).std()  # ~ sqrt(2/64)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dslc.ir.graph import Init


@dataclass(frozen=True)
class InitDef:
    name: str
    args: tuple[tuple[str, object, tuple], ...]  # (name, default, allowed choices or ())
    formula: str
    draw: Callable[[np.random.Generator, tuple, int, int, dict], np.ndarray]


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _xavier(rng, shape, fan_in, fan_out, a):
    gain = a["gain"]
    if a["dist"] == "uniform":
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, shape)
    return rng.normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), shape)


def _kaiming(rng, shape, fan_in, fan_out, a):
    fan = fan_in if a["mode"] == "fan_in" else fan_out
    gain = math.sqrt(2.0 / (1.0 + a["slope"] ** 2))
    if a["dist"] == "uniform":
        bound = gain * math.sqrt(3.0 / fan)
        return rng.uniform(-bound, bound, shape)
    return rng.normal(0.0, gain / math.sqrt(fan), shape)


_XAVIER_ARGS = (("dist", "normal", ("normal", "uniform")), ("gain", 1.0, ()))
_KAIMING_ARGS = (("mode", "fan_in", ("fan_in", "fan_out")), ("dist", "normal", ("normal", "uniform")),
                 ("slope", 0.0, ()))
_XAVIER_FORMULA = ("Glorot & Bengio 2010: normal std = gain*sqrt(2/(fan_in+fan_out)); "
                   "uniform bound = gain*sqrt(6/(fan_in+fan_out))")
_KAIMING_FORMULA = ("He et al. 2015: normal std = sqrt(2/(1+slope^2))/sqrt(fan); "
                    "uniform bound = sqrt(2/(1+slope^2))*sqrt(3/fan); fan = fan_in or fan_out")

INITS: dict[str, InitDef] = {d.name: d for d in (
    InitDef("zeros", (), "0", lambda rng, s, fi, fo, a: np.zeros(s)),
    InitDef("ones", (), "1", lambda rng, s, fi, fo, a: np.ones(s)),
    InitDef("constant", (("value", 0.0, ()),), "value", lambda rng, s, fi, fo, a: np.full(s, a["value"])),
    InitDef("normal", (("std", 0.01, ()), ("mean", 0.0, ())), "N(mean, std^2)",
            lambda rng, s, fi, fo, a: rng.normal(a["mean"], a["std"], s)),
    InitDef("uniform", (("a", 0.05, ()),), "U(-a, a)", lambda rng, s, fi, fo, a: rng.uniform(-a["a"], a["a"], s)),
    InitDef("xavier", _XAVIER_ARGS, _XAVIER_FORMULA, _xavier),
    InitDef("glorot", _XAVIER_ARGS, _XAVIER_FORMULA + " (same as xavier)", _xavier),
    InitDef("kaiming", _KAIMING_ARGS, _KAIMING_FORMULA, _kaiming),
    InitDef("he", _KAIMING_ARGS, _KAIMING_FORMULA + " (same as kaiming)", _kaiming),
)}


def defaults(name: str) -> dict:
    return {k: d for k, d, _ in INITS[name].args}


def sample(init: Init, shape: tuple[int, ...], rng: np.random.Generator, dtype="float32") -> np.ndarray:
    """Draw one parameter tensor; `init` must have been validated by the front end."""
    d = INITS[init.name]
    args = defaults(init.name) | dict(init.args)
    fan_in, fan_out = fans(tuple(shape))
    return np.asarray(d.draw(rng, tuple(shape), fan_in, fan_out, args), dtype=dtype)
