"""Elementwise math: exp, log, sqrt, abs, pow (`**`), floor_div (`//`), clip, maximum, minimum.

Each is one scalar expression per element, so both generators write it into their fused
loops (no library kernel). Binary ones broadcast as NumPy does, and a number in a tensor
slot is a scalar constant: `maximum(x, 0)`, `pow(x, 2)`, `x ** 0.5`. Gradient rules
return cotangents in the broadcast shape (autodiff un-broadcasts), and each states its
convention at a kink or a tie.
"""
from __future__ import annotations

import numpy as np

from dslc.ir.types import TensorType
from dslc.ops.elementwise import broadcast
from dslc.ops.registry import Attr, OpDef, Sample, Scalar, ShapeError, expect_float, register


def _f32(*shape) -> TensorType:
    return TensorType("f32", shape)


def _numel(k: int):
    return lambda ins, out, attrs: k * out.numel()


def _same(what: str):
    def rule(ins, attrs):
        expect_float(ins[0], what)
        return ins[0]
    return rule


def _unary(name, formula, reference, grad, scalar: Scalar, flops=1, domain="any", attrs=(), shape=None, doc="",
           samples=None):
    return register(OpDef(name, "math", ("x",), attrs, shape=shape or _same(name), formula=formula,
                          flops=_numel(flops), reference=reference, grad=grad, scalar=scalar,
                          samples=samples or (Sample((_f32(3, 5),), domain=domain),), elementwise="broadcast",
                          doc=doc))


def _two(b, dtype: str, value: float) -> str:
    return b.const(value, dtype)


_unary("exp", "e^x", np.exp, lambda b, n, g: (b.mul(g, n.name),), Scalar("elementary.exp({0})", "exp({0})"), flops=4)
# log and sqrt of a negative number are NaN, as in NumPy; their samples stay positive.
_unary("log", "ln x  (natural logarithm; NaN below 0, -inf at 0)", np.log,
       lambda b, n, g: (b.div(g, n.inputs[0]),), Scalar("math.log({0})", "log({0})"), flops=4, domain="positive")
_unary("sqrt", "x^(1/2)  (NaN below 0)", np.sqrt,
       lambda b, n, g: (b.div(g, b.mul(n.name, _two(b, n.type.dtype, 2.0))),),
       Scalar("math.sqrt({0})", "sqrt({0})"), flops=2, domain="positive")
# |x| has a kink at 0: sign(0) = 0, the subgradient of minimum norm (as l1 and PyTorch).
_unary("abs", "|x|  (gradient sign(x), 0 at 0)", np.abs, lambda b, n, g: (b.mul(g, b.sign(n.inputs[0])),),
       Scalar("abs({0})", "fabs({0})"), domain="kinks")


# ---- clip: min(max(x, min), max), either bound optional ----------------------------------

def _clip_shape(ins, attrs):
    lo, hi = attrs["min"], attrs["max"]
    if lo is not None and hi is not None and lo > hi:
        raise ShapeError(f"clip: min {lo:g} is above max {hi:g}", code="E0310")
    return _same("clip")(ins, attrs)


def _clip_ref(x, min, max):  # noqa: A002  (the attributes are named as in torch.clamp)
    return np.clip(x, -np.inf if min is None else min, np.inf if max is None else max).astype(x.dtype)


def _clip_template(cuda: bool):
    """NaN stays NaN (as np.clip): comparisons, never fmax/fmin, which would drop it."""
    def template(attrs) -> str:
        out = "{0}"
        if attrs["max"] is not None:
            out = "({0} > {max} ? {max} : {0})" if cuda else "({max} if {0} > {max} else {0})"
        if attrs["min"] is not None:
            out = f"({{0}} < {{min}} ? {{min}} : {out})" if cuda else f"({{min}} if {{0}} < {{min}} else {out})"
        return out
    return template


_CLIP_SAMPLES = (Sample((_f32(3, 5),), {"min": -0.5, "max": 0.8}, "kinks"), Sample((_f32(4,),), {"min": 0.3}, "kinks"),
                 Sample((_f32(2, 3),), {"max": -0.3}, "kinks"))

# The gradient passes where min <= x <= max, bounds included, as PyTorch's clamp does.
_unary("clip", "min(max(x, min), max)  (either bound may be none)", _clip_ref,
       lambda b, n, g: (b.mul(g, b.clip_mask(n.inputs[0], min=n.attr("min"), max=n.attr("max"))),),
       Scalar(_clip_template(False), _clip_template(True)), samples=_CLIP_SAMPLES, shape=_clip_shape,
       attrs=(Attr("min", "optional_float", None, doc="lower bound; none = unbounded"),
              Attr("max", "optional_float", None, doc="upper bound; none = unbounded")),
       doc="clip(x, 0, 6) is relu6; clip(x, min=-1) bounds one side only.")
def _mask_template(cuda: bool):
    """1.0 where x is within the bounds given (NaN is not), else 0.0."""
    def template(attrs) -> str:
        tests = ["{0} == {0}"] + ["{0} >= {min}"] * (attrs["min"] is not None) + ["{0} <= {max}"] * (
            attrs["max"] is not None)
        return f"(({' && '.join(tests)}) ? 1.0 : 0.0)" if cuda else f"1.0 if ({' and '.join(tests)}) else 0.0"
    return template


def _mask_ref(x, min, max):  # noqa: A002
    return ((x >= (-np.inf if min is None else min)) & (x <= (np.inf if max is None else max))).astype(x.dtype)


register(OpDef(
    "clip_mask", "derivative", ("x",), (Attr("min", "optional_float", None), Attr("max", "optional_float", None)),
    shape=_same("clip_mask"), formula="1 where min <= x <= max, else 0", flops=_numel(2), reference=_mask_ref,
    samples=_CLIP_SAMPLES, elementwise="broadcast", scalar=Scalar(_mask_template(False), _mask_template(True))))


# ---- binary: pow, floor_div, maximum, minimum --------------------------------------------

# Broadcasting both ways: a row vector against a matrix, and [2, 1, 3] against [4, 1].
_BROADCAST = ((_f32(3, 4), _f32(4)), (_f32(2, 1, 3), _f32(4, 1)))


def _binary(name, formula, reference, grad, scalar: Scalar, flops=1, domain="any", category="math", doc=""):
    return register(OpDef(name, category, ("x", "y"), (), shape=lambda ins, attrs: broadcast(ins[0], ins[1], name),
                          formula=formula, flops=_numel(flops), reference=reference, grad=grad, scalar=scalar,
                          samples=tuple(Sample(s, domain=domain) for s in _BROADCAST), elementwise="broadcast",
                          doc=doc))


def _pow_grad(b, n, g):
    # d/dx x^y = y x^(y-1), 0 where y = 0 (also at x = 0, where 0 * 0^-1 would be NaN);
    # d/dy x^y = x^y ln x, 0 at x = 0 with y >= 0 (0 * -inf), as PyTorch's pow_backward rules
    return b.mul(g, b.pow_deriv_base(*n.inputs)), b.mul(g, b.pow_deriv_exponent(*n.inputs))


def _pow_deriv_base_ref(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(y == 0, 0.0, y * np.power(x, y - 1)).astype(np.result_type(x, y))


def _pow_deriv_exponent_ref(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((x == 0) & (y >= 0), 0.0, np.power(x, y) * np.log(x)).astype(np.result_type(x, y))


_binary("pow", "x^y  (written x ** y; NaN for x < 0 and a fractional y)", np.power, _pow_grad,
        Scalar("{0} ** {1}", "pow({0}, {1})"), flops=8, domain="positive",
        doc="`x ** 2`, `pow(x, 0.5)`; ** binds tighter than unary minus (-x ** 2 is -(x ** 2)). An integer "
            "tensor's exponent is a whole number >= 0 written in the program: the power is exact.")
_binary("pow_deriv_base", "y x^(y-1), 0 where y = 0", _pow_deriv_base_ref, None,
        Scalar("0.0 if {1} == 0.0 else {1} * math.pow({0}, {1} - 1.0)", "({1} == 0.0 ? 0.0 : {1} * pow({0}, {1} - 1.0))"),
        flops=9, domain="positive", category="derivative")
_binary("pow_deriv_exponent", "x^y ln x, 0 where x = 0 and y >= 0", _pow_deriv_exponent_ref, None,
        Scalar("0.0 if ({0} == 0.0 and {1} >= 0.0) else math.pow({0}, {1}) * math.log({0})",
               "(({0} == 0.0 && {1} >= 0.0) ? 0.0 : pow({0}, {1}) * log({0}))"),
        flops=12, domain="positive", category="derivative")


def _floor_div_ref(x, y):
    # NumPy's //: exact for integers, whose x // 0 is 0 and -2^63 // -1 wraps to -2^63 (NumPy's
    # values; its warnings are not wanted)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.floor_divide(x, y).astype(np.result_type(x, y))


# Python's (NumPy's, PyTorch's) floor division of doubles, as CPython's float_floor_div: fmod is
# exact, d = (x - fmod(x, y)) / y is within rounding of the quotient's floor (less 1 where the
# remainder's sign is not y's), and d's nearest integer, a tie going down, is the result.
# floor(x / y) is not: 7.0 // 0.1 is 69, floor(7.0 / 0.1) is floor(70.0).
_D = "(({0} - fmod({0}, {1})) / {1} - ((fmod({0}, {1}) != 0.0 && ({1} < 0.0) != (fmod({0}, {1}) < 0.0)) ? 1.0 : 0.0))"
_FLOOR_DIV_CUDA = f"({{1}} == 0.0 ? {{0}} / {{1}} : floor({_D}) + ({_D} - floor({_D}) > 0.5 ? 1.0 : 0.0))"

# Piecewise constant: its derivative is 0 wherever it exists, so no gradient flows through it.
# On the CPU x // -1 is -x // 1: the most negative integer's quotient by -1 does not fit, and
# NumPy's wraps to that integer, where Numba's // gave 0; for floats -x // 1 is x // -1 bit
# for bit (x / -1 is -x exactly; a signed zero, NaN and infinity come out alike).
_binary("floor_div", "floor(x / y)  (written x // y)", _floor_div_ref, lambda b, n, g: (None, None),
        Scalar("((-({0})) // 1 if {1} == -1 else {0} // {1})", _FLOOR_DIV_CUDA), flops=2, domain="positive",
        doc="Rounds towards minus infinity, as Python's //: -7.0 // 2 is -4. Exact for integer tensors, where "
            "x // 0 is 0 and the most negative integer // -1 is itself (as NumPy's, wrapping). No gradient "
            "flows through it.")


# d max(x, y)/dx: 1 where x wins, 0.5 at a tie (the gradient split evenly, as PyTorch does).
register(OpDef(
    "greater_share", "derivative", ("x", "y"), (), shape=lambda ins, attrs: broadcast(ins[0], ins[1], "greater_share"),
    formula="1 where x > y, 0.5 where x == y, else 0", flops=_numel(2),
    reference=lambda x, y: np.where(x > y, 1.0, np.where(x == y, 0.5, 0.0)).astype(np.result_type(x, y)),
    samples=tuple(Sample(s) for s in _BROADCAST), elementwise="broadcast",
    scalar=Scalar("1.0 if {0} > {1} else (0.5 if {0} == {1} else 0.0)", "({0} > {1} ? 1.0 : ({0} == {1} ? 0.5 : 0.0))")))

# NaN wins, as in np.maximum / torch.maximum: the comparisons are written so that it does.
_binary("maximum", "max(x, y) elementwise  (NaN if either is; a tie splits the gradient)", np.maximum,
        lambda b, n, g: (b.mul(g, b.greater_share(*n.inputs)), b.mul(g, b.greater_share(*reversed(n.inputs)))),
        Scalar("{0} if ({0} > {1} or {0} != {0}) else {1}", "(({0} > {1} || {0} != {0}) ? {0} : {1})"),
        doc="maximum(x, 0) is relu; compare `max`, the largest element along an axis.")
_binary("minimum", "min(x, y) elementwise  (NaN if either is; a tie splits the gradient)", np.minimum,
        lambda b, n, g: (b.mul(g, b.greater_share(*reversed(n.inputs))), b.mul(g, b.greater_share(*n.inputs))),
        Scalar("{0} if ({0} < {1} or {0} != {0}) else {1}", "(({0} < {1} || {0} != {0}) ? {0} : {1})"),
        doc="minimum(x, 6) caps at 6; compare `min`, the smallest element along an axis.")
