"""Elementary functions for the generated loops whose libm calls would keep them scalar.

    elementary.tanh(x)      # the `tanh` op's CPU expression (dslc/ops/elementwise.py)
    elementary.exp(x)       # the `exp` op's and sigmoid's expressions

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

exp, for a float32 element, is 2^n e^r with n the integer nearest x log2(e) and
r = x - n ln 2 (|r| <= ln 2 / 2), in float64: e^r by its Taylor polynomial of degree 8
(relative error under 2.2e-10), 2^n by writing n into a float64's exponent bits (_pow2,
an LLVM bitcast, which vectorises where ldexp would be a call). x is clamped to
[-104, 88.8] first, where float32's exp is 0 and infinity already. Over 600,000 float32
elements (one thread, the EPYC) a loop of exp took 0.4 ms against 1.4 with libm's, one of
sigmoid (two exps an element, in its two branches) 0.9 against 4.3. The result rounded to
float32 is within one rounding of exp: 0.503 float32 ulps at most over every 97th float32
with |x| < 110 (tested on a sample); a float64 element keeps math.exp.

Dispatch is by the element's type: a float32 kernel's expression that a float literal has
already made float64 (`exp(x * 2.0)`) takes math's path, correct but scalar.
"""
from __future__ import annotations

import math

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

_LIMIT = 9.0
_P = (0.9999999960229161, 0.13091213042872674, 0.003111990467003776, 1.1238112822255583e-05,
      -2.056431867017513e-08, 5.4409700735193253e-11, -8.907150626661865e-14)
_Q = (1.0, 0.4642454221320538, 0.02452720330023976, 0.0002557829721473981)


def tanh(x):
    """tanh of one element (the plain-Python meaning, which NUMBA_DISABLE_JIT runs)."""
    return math.tanh(x)


@njit
def rational_tanh(x):
    """x P(x^2) / Q(x^2), +-1 past +-9 (x clamped there so that P and Q stay finite):
    float32's tanh, computed in float64."""
    c = _LIMIT if x > _LIMIT else -_LIMIT if x < -_LIMIT else float(x)
    t = c * c
    p = ((((((_P[6] * t + _P[5]) * t + _P[4]) * t + _P[3]) * t + _P[2]) * t + _P[1]) * t + _P[0])
    q = ((_Q[3] * t + _Q[2]) * t + _Q[1]) * t + _Q[0]
    return 1.0 if x > _LIMIT else -1.0 if x < -_LIMIT else c * p / q


@overload(tanh)
def _tanh(x):
    if x == types.float32:
        return lambda x: rational_tanh(x)
    return lambda x: math.tanh(x)


def exp(x):
    """exp of one element (the plain-Python meaning, which NUMBA_DISABLE_JIT runs)."""
    return math.exp(x)


_LOG2E, _LN2 = 1.4426950408889634, 0.6931471805599453
_HIGH, _LOW = 88.8, -104.0  # float32's exp is infinite above 88.73 and rounds to 0 below -103.98


@intrinsic
def _pow2(typingctx, n):
    """2.0 ** n as a float64 for an int64 -1022 <= n <= 1023: n + 1023 in the exponent bits."""
    if not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        wide = context.cast(builder, args[0], n, types.int64)
        bits = builder.shl(builder.add(wide, ir.Constant(ir.IntType(64), 1023)), ir.Constant(ir.IntType(64), 52))
        return builder.bitcast(bits, ir.DoubleType())
    return types.float64(n), codegen


@njit
def reduced_exp(x):
    """2^n e^r (the module docstring): float32's exp, computed in float64."""
    c = _HIGH if x > _HIGH else _LOW if x < _LOW else float(x)
    n = math.floor(c * _LOG2E + 0.5)
    n = 0.0 if n != n else n  # NaN: no integer; the polynomial carries the NaN
    r = c - n * _LN2
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320))))))))
    return p * _pow2(int(n))


@overload(exp)
def _exp(x):
    if x == types.float32:
        return lambda x: reduced_exp(x)
    return lambda x: math.exp(x)
