"""Elementary functions for the generated loops whose libm calls would keep them scalar.

    elementary.tanh(x)      # the `tanh` op's CPU expression (dslc/ops/elementwise.py)

Numba lowers `math.tanh` to a call of the C library's tanh for every element, which LLVM
cannot vectorise (llvmlite's LLVM has no vector math library): LeNet-5's training step at
batch 128 spent 8.8 of its 25.8 ms in its tanh loops, 8 ns an element, and took 1.6 times
as long as PyTorch's. Here a float32 element's tanh is a rational function, multiplies,
adds, one division and two selects, which the loop vectorises; a float64 one (gradient
checks, float64 models) keeps math.tanh, correctly rounded.

The rational function: tanh(x) = x P(x^2) / Q(x^2) on |x| <= 9 (P of degree 6, Q of
degree 3), and +-1 beyond (from 9.01 on float32's tanh rounds to 1). Its coefficients
were fitted in float64 by Sanathanan-Koerner iteration (linear least squares of P - f Q,
reweighted by the last Q, on 20,000 points, x^2 scaled to [0, 1] for conditioning) to a
relative error of 2.1e-8; evaluated in float64 and rounded once to float32 it is within
one float32 rounding of tanh (tests/test_cpu_kernels.py checks every 37th float32 from 0
to 9.5 against NumPy's float64 tanh). NaN stays NaN (the clamp's comparisons are false).
"""
from __future__ import annotations

import math

from numba import njit, types
from numba.extending import overload

_LIMIT = 9.0
_P = (0.9999999960229161, 0.13091213042872674, 0.003111990467003776, 1.1238112822255583e-05,
      -2.056431867017513e-08, 5.4409700735193253e-11, -8.907150626661865e-14)
_Q = (1.0, 0.4642454221320538, 0.02452720330023976, 0.0002557829721473981)


def tanh(x):
    """tanh of one element (the plain-Python meaning, which NUMBA_DISABLE_JIT runs)."""
    return math.tanh(x)


@njit(inline="always")
def rational_tanh(x):
    """x P(x^2) / Q(x^2), +-1 past +-9 (x clamped there so that P and Q stay finite):
    float32's tanh, computed in float64."""
    c = _LIMIT if x > _LIMIT else -_LIMIT if x < -_LIMIT else float(x)
    t = c * c
    p = ((((((_P[6] * t + _P[5]) * t + _P[4]) * t + _P[3]) * t + _P[2]) * t + _P[1]) * t + _P[0])
    q = ((_Q[3] * t + _Q[2]) * t + _Q[1]) * t + _Q[0]
    return 1.0 if x > _LIMIT else -1.0 if x < -_LIMIT else c * p / q


@overload(tanh, inline="always")
def _tanh(x):
    if x == types.float32:
        return lambda x: rational_tanh(x)
    return lambda x: math.tanh(x)
