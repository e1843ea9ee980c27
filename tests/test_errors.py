"""The error catalogue: broken .net programs and the exact diagnostics they must produce.

Each case states FILE:LINE:COL, the code and the message of every diagnostic (and
for some the hint and the notes). All cases go through `dslc.load`; a subset also
through `dslc check` in a subprocess (exit status 1, no traceback). A last test
keeps docs/errors.md and the codes used in the source in step.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

import dslc
from dslc.diagnostics import CompileError, UsageError, render_all
from helpers import ROOT


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    expected: list  # [("LINE:COL", code, message)] in the order reported
    hint: str | None = None  # of the first diagnostic
    notes: tuple = ()  # of the first diagnostic: [("LINE:COL", text)]


CASES = [
    Case("eof_missing_brace", """\
model m {
    input x : f32[N, 4]
    output y = relu(x)
""",
         [("3:23", 'E0102', 'unexpected end of file')],
         hint="a '}' or ')' may be missing"),
    Case("stray_paren", """\
model m {
    input x : f32[N, 4]
    output y = relu(x))
}
""",
         [("3:23", 'E0103', "unexpected ')'")]),
    Case("bad_character", """\
model m {
    input x : f32[N, 4]
    output y = x $ 2
}
""",
         [("3:18", 'E0101', "unexpected character '$'")]),
    Case("unterminated_string", """\
import "blocks.net
model m { }
""",
         [("1:8", 'E0104', 'unterminated string')]),
    Case("unknown_escape", """\
import "blocks\\q.net"
""",
         [("1:15", 'E0105', "unknown escape '\\q' in a string")]),
    Case("int_too_large", """\
model m(k: int = 99999999999999999999) {
    input x : f32[N, 4]
    output y = x
}
""",
         [("1:18", 'E0106', 'the integer 99999999999999999999 is too large')]),
    Case("pipe_then_plus", """\
model m {
    input x : f32[N, 4]
    output y = x |> relu + 1
}
""",
         [("3:26", 'E0103', "unexpected '+'")],
         hint='a pipeline ends the expression; use parentheses: (x |> f) + y'),
    Case("lone_comma", """\
model m {
    input x : f32[N, 4]
    output y = relu(,)
}
""",
         [("3:21", 'E0103', "unexpected ','")]),
    Case("unknown_op", """\
model m {
    input x : f32[N, 4]
    output y = x |> lineer(3)
}
""",
         [("3:21", 'E0202', "unknown op or block 'lineer'")],
         hint="did you mean 'linear'?"),
    Case("unknown_op_named_as_pytorch_names_it", """\
model m {
    input p : f32[N, 4]
    input y : f32[N, 4]
    loss mse_loss(p, y)
}
""",
         [("4:10", 'E0202', "unknown op or block 'mse_loss'")],
         hint="did you mean 'mse'?"),
    Case("unknown_attribute", """\
model m {
    input x : f32[N, 4]
    output y = x |> linear(3, biass=false)
}
""",
         [("3:31", 'E0210', "linear has no attribute 'biass'")],
         hint="did you mean 'bias'?"),
    Case("wrong_attribute_type", """\
model m {
    input x : f32[N, 4]
    output y = x |> linear(3, bias=3)
}
""",
         [("3:36", 'E0212', "linear attribute 'bias': expected true or false, got 3")]),
    Case("missing_attribute", """\
model m {
    input x : f32[N, 4]
    output y = x |> linear
}
""",
         [("3:21", 'E0215', "linear needs attribute 'out'")]),
    Case("too_many_positional", """\
model m {
    input x : f32[N, 4]
    output y = x |> relu(2)
}
""",
         [("3:26", 'E0211', 'relu takes 1 tensor input(s) and 0 attribute(s); got 1 extra positional argument(s)')]),
    Case("unknown_name", """\
model m {
    input image : f32[N, 4]
    output y = relu(imgae)
}
""",
         [("3:21", 'E0201', "unknown name 'imgae'")],
         hint="did you mean 'image'?"),
    # A bare name among a variadic op's inputs is a misspelt tensor, not its first attribute.
    Case("unknown_name_first_of_a_penalty", """\
model m {
    input x : f32[N, 4]
    loss sum(x |> linear(2)) + l2(weightz)
}
""",
         [("3:35", 'E0201', "unknown name 'weightz'")],
         hint="did you mean 'weights'?"),
    Case("unknown_name_after_a_penalty_input", """\
model m {
    input x : f32[N, 4]
    fc: h = x |> linear(2)
    loss sum(h) + l2(h, weightz)
}
""",
         [("4:25", 'E0201', "unknown name 'weightz'")],
         hint="did you mean 'weights'?"),
    Case("unknown_name_before_a_stacked_tensor", """\
model m {
    input x : f32[N, 4]
    output y = stack(xx, x)
}
""",
         [("3:22", 'E0201', "unknown name 'xx'")],
         hint="did you mean 'x'?"),
    Case("unknown_name_concat", """\
model m {
    input x : f32[N, 4]
    output y = concat(xx, axis=1)
}
""",
         [("3:23", 'E0201', "unknown name 'xx'")],
         hint="did you mean 'x'?"),
    Case("attribute_twice", """\
model m {
    input x : f32[N, 4]
    output y = x |> linear(3, out=4)
}
""",
         [("3:31", 'E0214', "attribute 'out' given twice")]),
    Case("tensor_attribute", """\
model m {
    input x : f32[N, 4]
    output y = x |> linear(x)
}
""",
         [("3:28", 'E0216', "linear attribute 'out' must be a compile-time value, got a tensor")]),
    Case("missing_input", """\
model m {
    input logits : f32[N, 10]
    loss cross_entropy(logits)
}
""",
         [("3:10", 'E0213', 'cross_entropy expects 2 tensor inputs (logits, label); missing label')]),
    Case("pad_did_you_mean", """\
model m {
    input x : f32[N, 3, 8, 8]
    output y = x |> conv2d(4, pad=sme)
}
""",
         [("3:35", 'E0212', "conv2d attribute 'pad': expected an int, a pair, same or valid, got the name 'sme'")],
         hint="did you mean 'same'?"),
    Case("linear_rank4", """\
model m {
    input image : f32[N, 1, 28, 28]
    logits = image |> linear(10)
    output logits
}
""",
         [("3:23", 'E0301', 'linear expects rank 2, got f32[N, 1, 28, 28]')],
         hint='insert flatten'),
    Case("add_broadcast", """\
model m {
    input a : f32[N, 3]
    input b : f32[N, 4]
    output y = a + b
}
""",
         [("4:16", 'E0306', 'add: shapes f32[N, 3] and f32[N, 4] do not broadcast (dimension 1: 3 vs 4)')]),
    Case("matmul_inner", """\
model m {
    input a : f32[N, 3]
    param W : f32[4, 10] = xavier()
    output y = a @ W
}
""",
         [("4:16", 'E0307', 'matmul: inner dimensions differ, f32[N, 3] @ f32[4, 10] (3 vs 4)')]),
    Case("conv_groups", """\
model m {
    input x : f32[N, 3, 8, 8]
    output y = x |> conv2d(4, groups=2)
}
""",
         [("3:21", 'E0312', 'conv2d: groups=2 must divide both input channels (3) and out (4)')]),
    Case("kernel_too_large", """\
model m {
    input x : f32[N, 3, 2, 2]
    output y = x |> conv2d(8, kernel=5)
}
""",
         [("3:21", 'E0311', 'conv2d: the window (5 wide after dilation) is larger than the padded input (2 + 0)')]),
    Case("loss_not_scalar", """\
model m {
    input x : f32[N, 4]
    loss x * x
}
""",
         [("3:10", 'E0320', 'the loss must be a scalar, got f32[N, 4]')],
         hint='reduce it with mean(...) or sum(...)'),
    Case("loss_integer", """\
model m {
    input y : i64[]
    loss y
}
""",
         [("3:10", 'E0302', 'the loss must be floating-point, got i64[]')]),
    Case("loss_integer_sum", """\
model m {
    input y : i64[N]
    loss sum(y)
}
""",
         [("3:10", 'E0302', 'sum expects a floating-point tensor, got i64[N]')]),
    Case("two_losses", """\
model m {
    input x : f32[N, 4]
    loss mean(x)
    loss sum(x)
}
""",
         [("4:5", 'E0253', 'a model has one loss; this is the second')],
         hint='add the terms together: loss a + b'),
    Case("metric_not_scalar", """\
model m {
    input x : f32[N, 4]
    metric err = x
    output x
}
""",
         [("3:18", 'E0321', "metric 'err' must be a scalar, got f32[N, 4]")]),
    Case("metric_unnamed", """\
model m {
    input x : f32[N, 4]
    metric 1 - mean(x)
    output x
}
""",
         [("3:5", 'E0252', 'cannot name this metric')]),
    Case("error_in_block", """\
block head(x, classes: int) {
    y = x |> linear(classes)
    return y
}

model m {
    input image : f32[N, 1, 8, 8]
    output logits = image |> head(10)
}
""",
         [("2:14", 'E0301', 'linear expects rank 2, got f32[N, 1, 8, 8]')],
         notes=[('8:30', "in block 'head' called here")]),
    Case("nested_blocks", """\
block inner(x, c: int) {
    return x |> conv2d(c)
}

block outer(x) {
    y = inner(x, 4)
    return y
}

model m {
    input x : f32[N, 16]
    output y = outer(x)
}
""",
         [("2:17", 'E0301', 'conv2d expects rank 4, got f32[N, 16]')],
         notes=[('6:9', "in block 'inner' called here"), ('12:16', "in block 'outer' called here")]),
    Case("recursive_block", """\
block b(x) {
    return b(x)
}

model m {
    input x : f32[N, 4]
    output y = b(x)
}
""",
         [("2:12", 'E0255', "block 'b' calls itself without end")],
         notes=[('2:12', "in block 'b' called here (63 times, recursively)"), ('7:16', "in block 'b' called here")]),
    Case("block_returns_nothing", """\
block b(x) {
    y = relu(x)
}

model m {
    input x : f32[N, 4]
    output y = b(x)
}
""",
         [("1:7", 'E0256', "block 'b' returns nothing")],
         notes=[('7:16', "in block 'b' called here")]),
    Case("block_missing_argument", """\
block head(x, classes: int) {
    return x |> linear(classes)
}

model m {
    input x : f32[N, 4]
    output y = head(x)
}
""",
         [("7:16", 'E0217', "block 'head' needs argument 'classes'")]),
    Case("block_argument_type", """\
block head(x, classes: int) {
    return x |> linear(classes)
}

model m {
    input x : f32[N, 4]
    output y = head(x, 2.5)
}
""",
         [("7:24", 'E0233', "block 'head' parameter 'classes' is int, got the float 2.5")]),
    Case("duplicate_definition", """\
block head(x) {
    return x
}

block head(x) {
    return relu(x)
}

model m {
    input x : f32[N, 4]
    output y = head(x)
}
""",
         [("5:7", 'E0203', "'head' is defined twice")],
         notes=[('1:7', 'first defined here')]),
    Case("duplicate_formal", """\
model m(w: int = 2, w: int = 3) {
    input x : f32[N, 4]
    output y = x
}
""",
         [("1:21", 'E0204', "parameter 'w' is declared twice")]),
    Case("unknown_dtype", """\
model m {
    input x : f33[N, 4]
    output y = x
}
""",
         [("2:15", 'E0260', "unknown dtype 'f33'")],
         hint="did you mean 'f32'?"),
    Case("param_without_init", """\
model m {
    input x : f32[N, 4]
    param W : f32[4, 4]
    output y = x @ W
}
""",
         [("3:5", 'E0220', "parameter 'W' needs an initialiser")]),
    Case("bad_init_call", """\
model m {
    input x : f32[N, 4]
    param W : f32[4, 4] = kaimng()
    output y = x @ W
}
""",
         [("3:27", 'E0221', "unknown initialiser 'kaimng'")],
         hint="did you mean 'kaiming'?"),
    Case("bad_init_name", """\
model m {
    input x : f32[N, 4]
    param W : f32[4, 4] = xaviar
    output y = x @ W
}
""",
         [("3:27", 'E0221', 'expected an initialiser, got xaviar')],
         hint="did you mean 'xavier'?"),
    Case("symbolic_param", """\
model m {
    input x : f32[N, 4]
    param W : f32[4, M] = xavier()
    output y = x @ W
}
""",
         [("3:22", 'E0261', "parameter shapes must be fixed; 'M' is not a hyper-parameter")]),
    Case("repeat_negative", """\
model m {
    input x : f32[N, 4]
    repeat -1 {
        x = relu(x)
    }
    output y = x
}
""",
         [("3:12", 'E0248', 'repeat count must be a non-negative int, got the int -1')]),
    Case("repeat_float", """\
model m(depth: int = 5) {
    input x : f32[N, 4]
    repeat depth / 2 {
        x = relu(x)
    }
    output y = x
}
""",
         [("3:12", 'E0248', 'repeat count must be a non-negative int, got the float 2.5')]),
    Case("repeat_too_large", """\
model m {
    input x : f32[N, 4]
    repeat 1000000 {
        x = relu(x)
    }
    output y = x
}
""",
         [("3:12", 'E0248', 'repeat count 1000000 is too large (at most 10000)')]),
    Case("return_outside_block", """\
model m {
    input x : f32[N, 4]
    return x
}
""",
         [("3:5", 'E0247', "'return' outside a block")]),
    Case("input_inside_block", """\
block b(x) {
    input z : f32[N, 4]
    return x + z
}

model m {
    input x : f32[N, 4]
    output y = b(x)
}
""",
         [("2:5", 'E0246', "'input' is not allowed inside block 'b'")],
         notes=[('8:16', "in block 'b' called here")]),
    Case("statement_after_return", """\
block b(x) {
    return x
    y = relu(x)
}

model m {
    input x : f32[N, 4]
    output y = b(x)
}
""",
         [("3:5", 'E0245', 'statement after return')],
         notes=[('8:16', "in block 'b' called here")]),
    Case("hyper_default_type", """\
model m(width: int = 2.5) {
    input x : f32[N, 4]
    output y = x
}
""",
         [("1:22", 'E0233', "hyper-parameter 'width' is int, got the float 2.5")]),
    Case("hyper_unknown_type", """\
model m(width: integer = 2) {
    input x : f32[N, 4]
    output y = x
}
""",
         [("1:9", 'E0231', "unknown hyper-parameter type 'integer'")],
         hint="did you mean 'int'?"),
    Case("hyper_no_type", """\
model m(width) {
    input x : f32[N, 4]
    output y = x
}
""",
         [("1:9", 'E0230', "model parameter 'width' needs a type (int, float, bool or str)")]),
    Case("hyper_no_default", """\
model m(width: int) {
    input x : f32[N, width]
    output y = x
}
""",
         [("1:9", 'E0232', "hyper-parameter 'width' has no default; give one with dslc.load(..., width=VALUE)")]),
    Case("input_clashes_layer", """\
model m {
    input x : f32[N, 4]
    y = relu(x)
    input relu : f32[N, 4]
    output y
}
""",
         [("4:5", 'E0249', "'relu' is already the name of a layer")]),
    Case("label_reused", """\
model m {
    input x : f32[N, 4]
    fc: x = x |> linear(8)
    fc: x = x |> linear(3)
    output x
}
""",
         [("4:5", 'E0250', "layer name 'fc' is already used")]),
    Case("output_twice", """\
model m {
    input x : f32[N, 4]
    output y = relu(x)
    output y = x
}
""",
         [("4:5", 'E0251', "output 'y' is declared twice")]),
    Case("division_by_zero", """\
model m(k: int = 0) {
    input x : f32[N, 4]
    output y = x |> linear(8 / k)
}
""",
         [("3:28", 'E0272', 'division by zero')]),
    Case("overflow", """\
model m(k: int = 3000000000 * 3000000000 * 3000000000) {
    input x : f32[N, 4]
    output y = x
}
""",
         [("1:18", 'E0273', 'compile-time arithmetic overflows: 9000000000000000000 * 3000000000')]),
    Case("unknown_role", """\
model m {
    input x : f32[N, 4]
    param b : f32[3, 4] = zeros() as biass
    output y = x + b
}
""",
         [("3:38", 'E0223', "unknown parameter role 'biass'")]),
    Case("floor_division_by_zero", """\
model m(k: int = 0) {
    input x : f32[N, 4]
    output y = x |> linear(8 // k)
}
""",
         [("3:28", 'E0272', 'division by zero')]),
    Case("power_overflow", """\
model m(k: int = 10 ** 100) {
    input x : f32[N, 4]
    output y = x
}
""",
         [("1:18", 'E0273', 'compile-time arithmetic overflows: 10 ** 100')]),
    Case("power_not_real", """\
model m(b: float = -8.0) {
    input x : f32[N, 4]
    output y = x * b ** 0.5
}
""",
         [("3:20", 'E0274', '-8.0 ** 0.5 is not a real number')]),
    Case("fraction_meets_an_integer_tensor", """\
model m(k: float = 0.5) {
    input i : i64[N]
    output y = i * 2.5
    output z = maximum(i, k)
    output w = i + 1e300
}
""",
         [("3:20", 'E0275', '2.5 is not a whole number, and meets an i64 tensor (it would be truncated)'),
          ("4:27", 'E0275', '0.5 is not a whole number, and meets an i64 tensor (it would be truncated)'),
          ("5:20", 'E0275', '1e+300 is too large for a constant of an i64 tensor '
                            '(at most 9007199254740991 in magnitude, held exactly)')],
         hint="dslc has no cast from integers to floats: only a tensor declared as floats (f32, f64) computes in "
              "floating point"),
    Case("true_division_of_integers", """\
model m {
    input i : i64[N]
    output y = i / 2
}
""",
         [("3:16", 'E0302', "'/' divides floating-point tensors, got i64[N] and i64[]")],
         hint="// is the floor division of integers (-7 // 2 is -4); dslc has no cast from integers to floats: "
              "only a tensor declared as floats (f32, f64) divides"),
    Case("integer_power", """\
model m {
    input i : i32[N]
    output y = i ** -1
    output z = pow(i, i)
    output w = i ** 2 + i * 2.0
}
""",
         [("3:21", 'E0276', 'the exponent of an integer power must be >= 0, got -1'),
          ("4:16", 'E0276', "the exponent of an integer power must be a number, not the tensor 'i'")]),
    Case("attribute_that_breaks_the_formula", """\
model m {
    input p : f32[N, 3]
    input t : f32[N, 3]
    output s = softplus(p, beta=0)
    loss huber(p, t, delta=-1)
}
""",
         [("4:16", 'E0310', 'softplus: beta must be positive, got 0'),
          ("5:10", 'E0310', 'huber: delta must be positive, got -1')]),
    Case("tensor_beyond_any_memory", """\
model m {
    input x : f32[N, 1, 8, 8]
    input i : i64[N]
    a = x |> conv2d(4, pad=9223372036854775807)
    b = x |> upsample(scale=134217728)
    output c = one_hot(i, 9223372036854775807)
    output d = x |> upsample(scale=67108864)
}
""",
         [("4:14", 'E0315', 'conv2d: its result f32[N, 4, 18446744073709551620, 18446744073709551620] would hold '
           '1,361,129,467,683,753,854,443,794,240,085,778,497,600 elements per example, more than a 64-bit machine '
           'can address (at most 1,152,921,504,606,846,975)'),
          ("5:14", 'E0315', 'upsample: its result f32[N, 1, 1073741824, 1073741824] would hold '
           '1,152,921,504,606,846,976 elements per example, more than a 64-bit machine can address '
           '(at most 1,152,921,504,606,846,975)'),
          ("6:16", 'E0315', 'one_hot: its result f32[N, 9223372036854775807] would hold 9,223,372,036,854,775,807 '
           'elements per example, more than a 64-bit machine can address (at most 1,152,921,504,606,846,975)')]),
    Case("no_output", """\
model m {
    input x : f32[N, 4]
    y = relu(x)
}
""",
         [("1:7", 'E0240', "model 'm' has no output and no loss")]),
    Case("bad_dimension", """\
model m {
    input x : f32[N, 0]
    output y = x
}
""",
         [("2:22", 'E0262', 'a dimension must be a positive int or a symbol, got the int 0')]),
    Case("several_errors", """\
model m {
    input x : f32[N, 4]
    a = x |> lineer(3)
    b = x |> linear(3, biass=true)
    c = relu(xx)
    d = a + b + c
    output d
    loss x
}
""",
         [("3:14", 'E0202', "unknown op or block 'lineer'"), ("4:24", 'E0210', "linear has no attribute 'biass'"), ("5:14", 'E0201', "unknown name 'xx'"), ("8:10", 'E0320', 'the loss must be a scalar, got f32[N, 4]')]),
    Case("internal_op", """\
model m {
    input x : f32[N, 4]
    output y = x |> conv2d_grad_weight(x)
}
""",
         [("3:21", 'E0205', "'conv2d_grad_weight' is an op the compiler emits itself (derivative); a program "
                            "cannot call it")]),
    Case("source_op", """\
model m {
    input x : f32[N, 4]
    output y = x |> input
}
""",
         [("3:21", 'E0205', "'input' is an op the compiler emits itself (source); a program cannot call it")],
         hint="declare inputs and parameters with `input` and `param`"),
    Case("symbolic_features", """\
model m {
    input x : f32[N, M]
    output y = x |> linear(3)
}
""",
         [("3:21", 'E0303', 'linear needs a fixed number of input features, got f32[N, M]')]),
    Case("output_not_tensor", """\
model m(k: int = 3) {
    input x : f32[N, 4]
    output y = k * 2
}
""",
         [("3:16", 'E0270', "output 'y' must be a tensor, got the int 6")]),
    Case("arithmetic_on_string", """\
model m {
    input x : f32[N, 4]
    output y = x + "a"
}
""",
         [("3:20", 'E0271', "cannot use the string 'a' in arithmetic")]),
    Case("init_as_layer", """\
model m {
    input x : f32[N, 4]
    output y = x |> xavier
}
""",
         [("3:21", 'E0222', "'xavier' is an initialiser, not a layer")]),
    Case("unroll_budget", """\
model m {
    input x : f32[N, 4]
    repeat 400 {
        repeat 400 {
            x = x
        }
    }
    output y = x
}
""",
         [("5:13", 'E0259', 'the model unrolls to more than 100000 statements')]),
]

# A subset run through the command line as well (a subprocess each, so kept small).
CLI_CASES = ["eof_missing_brace", "unknown_escape", "nested_blocks", "several_errors"]


def _diagnostics(tmp_path, monkeypatch, source: str, **overrides):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.net").write_text(source)
    with pytest.raises(CompileError) as info:
        dslc.load("test.net", **overrides)
    return info.value


def _where(span) -> str | None:
    return f"{span.line}:{span.col}" if span else None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_load_reports(case, tmp_path, monkeypatch):
    err = _diagnostics(tmp_path, monkeypatch, case.source)
    got = [(_where(d.span), d.code, d.message) for d in err.diagnostics]
    assert got == case.expected
    assert all(d.span.file == "test.net" for d in err.diagnostics if d.span)
    first = err.diagnostics[0]
    if case.hint is not None:
        assert first.hint == case.hint
    assert [(_where(s), text) for s, text in first.notes] == list(case.notes)


def test_catalogue_is_large_and_distinct():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    assert len({c.source for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """`dslc check` on each CLI case, all subprocesses started at once to share the start-up cost."""
    procs = {}
    for case in CASES:
        if case.name in CLI_CASES:
            folder = tmp_path_factory.mktemp(case.name)
            (folder / "test.net").write_text(case.source)
            procs[case.name] = subprocess.Popen(
                [sys.executable, "-m", "dslc.cli", "check", "test.net"], cwd=folder, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_WAIT_POLICY": "passive"})
    return {name: (p.wait(timeout=120), *p.communicate()) for name, p in procs.items()}


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_reports(name, cli_runs):
    case = next(c for c in CASES if c.name == name)
    status, stdout, stderr = cli_runs[name]
    assert status == 1, stderr
    assert "Traceback" not in stderr
    for where, code, message in case.expected:
        assert f"test.net:{where}: error[{code}]: {message}" in stderr
    if len(case.expected) > 1:
        assert stderr.rstrip().endswith(f"{len(case.expected)} errors")


# ---- rendering: the quoted line and the caret ------------------------------------------------

def test_caret_under_the_call(tmp_path, monkeypatch):
    case = next(c for c in CASES if c.name == "linear_rank4")
    text = _diagnostics(tmp_path, monkeypatch, case.source).render()
    assert text.splitlines()[:4] == [
        "test.net:3:23: error[E0301]: linear expects rank 2, got f32[N, 1, 28, 28]",
        "        logits = image |> linear(10)",
        "                          ^^^^^^^^^^",
        "  hint: insert flatten",
    ]


def test_caret_at_end_of_file(tmp_path, monkeypatch):
    case = next(c for c in CASES if c.name == "eof_missing_brace")
    text = _diagnostics(tmp_path, monkeypatch, case.source).render()
    assert text.splitlines()[1:3] == ["        output y = relu(x)", "                          ^"]


def test_caret_with_notes_of_nested_blocks(tmp_path, monkeypatch):
    case = next(c for c in CASES if c.name == "nested_blocks")
    lines = _diagnostics(tmp_path, monkeypatch, case.source).render().splitlines()
    assert lines[1:3] == ["        return x |> conv2d(c)", "                    ^^^^^^^^^"]
    assert lines[-2:] == ["  note: test.net:6:9: in block 'inner' called here",
                          "  note: test.net:12:16: in block 'outer' called here"]


def test_render_uses_the_text_given_to_load(tmp_path, monkeypatch):
    """`dslc.load(path, text=...)` must quote that text, not whatever is on disk."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.net").write_text("# stale\n")
    with pytest.raises(CompileError) as info:
        dslc.load("m.net", text="model m {\n    output y = zz\n}\n")
    assert "        output y = zz" in info.value.render()


def test_tabs_expand_in_the_quote(tmp_path, monkeypatch):
    err = _diagnostics(tmp_path, monkeypatch, "model m {\n\tinput x : f32[N, 4]\n\toutput y = xx\n}\n")
    assert _where(err.diagnostics[0].span) == "3:13"
    assert err.render().splitlines()[1:3] == ["        output y = xx", "                   ^^"]


# ---- programs deep or long beyond the bounds ------------------------------------------------

def _deep_model(expr: str) -> str:
    return f"model m {{\n    input x : f32[N, 4]\n    output y = {expr}\n}}\n"


def test_long_pipeline_and_sum_need_no_recursion(tmp_path, monkeypatch):
    """A 2,000-stage pipeline and a 2,000-term sum nest no brackets: they elaborate."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.net").write_text(_deep_model("(x" + " |> relu" * 2000 + ")" + " + x" * 2000))
    model = dslc.load("test.net")
    assert sum(n.op == "relu" for n in model.graph) == 2000 and sum(n.op == "add" for n in model.graph) == 2000


def test_brackets_nested_beyond_the_bound(tmp_path, monkeypatch):
    from dslc.frontend.parse import MAX_NESTING
    n = MAX_NESTING + 1
    (d,) = _diagnostics(tmp_path, monkeypatch, _deep_model("relu(" * n + "x" + ")" * n)).diagnostics
    # the model's `{` is the first bracket open, so the limit is crossed at relu number MAX_NESTING
    assert (d.code, _where(d.span)) == ("E0108", f"3:{20 + 5 * (MAX_NESTING - 1)}")


def test_file_with_too_many_tokens(tmp_path, monkeypatch):
    from dslc.frontend.parse import MAX_TOKENS
    source = _deep_model("x" + " |> relu" * (MAX_TOKENS // 2))
    (d,) = _diagnostics(tmp_path, monkeypatch, source).diagnostics
    assert d.code == "E0107" and d.span.line == 3 and "more than 100,000 tokens" in d.message


def test_nesting_counted_through_block_calls(tmp_path, monkeypatch):
    """Each block nests 900 deep and calls the next: the elaborator's bound is reached in block k5."""
    blocks = [f"block k{i}(x) {{\n    return {'relu(' * 900}{f'k{i + 1}(x)' if i < 9 else 'x'}{')' * 900}\n}}"
              for i in range(10)]
    err = _diagnostics(tmp_path, monkeypatch, "\n".join(blocks) + "\n" + _deep_model("k0(x)"))
    (d,) = err.diagnostics
    assert (d.code, d.span.line) == ("E0257", 17)
    assert [s.line for s, _ in d.notes] == [14, 11, 8, 5, 2, 33]


# ---- blocks no model calls are checked without arguments ------------------------------------

UNCALLED = """\
block used(x) {
    return relu(x)
}
block unused(x, c: int) {
    y = x |> conv2d(c, kernal=3) |> relux
    z = y + undefined
    return z
}
block empty(x) {
    y = relu(x)
}
model m {
    input x : f32[N, 4]
    output y = used(x)
}
"""


def test_uncalled_blocks_are_checked(tmp_path, monkeypatch):
    err = _diagnostics(tmp_path, monkeypatch, UNCALLED)
    assert [(d.code, _where(d.span)) for d in err.diagnostics] == [
        ("E0210", "5:24"), ("E0202", "5:37"), ("E0201", "6:13"), ("E0256", "9:7")]
    assert err.diagnostics[0].notes[0][1] == "in block 'unused', checked without arguments since model 'm' " \
                                             "does not call it"


def test_uncalled_block_without_mistakes_is_fine(tmp_path, monkeypatch):
    """Symbols such as `same` and defaults the caller would give are no mistakes without a call."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.net").write_text(
        "block conv(x, c: int = 8) {\n    y = x |> conv2d(c, 3, pad=same, init=kaiming(mode=fan_out))\n"
        "    repeat 2 as i {\n        y = y + i * y\n    }\n    return y |> maxpool(2)\n}\n"
        "model m {\n    input x : f32[N, 4]\n    output y = relu(x)\n}\n")
    assert dslc.load("test.net").name == "m"


# ---- hyper-parameters given from outside (--set / keyword arguments of dslc.load) ----------

HYPER = """\
model m(width: int = 3, rate: float = 0.5) {
    input x : f32[N, 4]
    output y = x |> linear(width)
}
"""


@pytest.mark.parametrize("overrides, message", [
    ({"widht": 8}, "dslc.load: keyword widht: model 'm' has no hyper-parameter 'widht'; did you mean 'width'?"),
    ({"width": "abc"}, "dslc.load: keyword width: hyper-parameter 'width' is int, got the string 'abc'"),
    ({"width": 2**63}, "dslc.load: keyword width: hyper-parameter 'width' is int, got the int 9223372036854775808"),
    ({"rate": float("nan")}, "dslc.load: keyword rate: hyper-parameter 'rate' is float, got the float nan"),
])
def test_set_mistakes_are_usage_errors(tmp_path, monkeypatch, overrides, message):
    """A wrong override is the caller's mistake, not the file's: a UsageError (exit status 2),
    naming the keyword of dslc.load that gave it (the command line's name its --set flag)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.net").write_text(HYPER)
    with pytest.raises(UsageError) as info:
        dslc.load("test.net", **overrides)
    assert str(info.value) == message


def test_set_int_for_float_is_fine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.net").write_text(HYPER)
    model = dslc.load("test.net", rate=1, width=5)
    assert model.graph["linear"].type.shape[-1] == 5


def _cli(tmp_path, *args):
    (tmp_path / "test.net").write_text(HYPER)
    return subprocess.run([sys.executable, "-m", "dslc.cli", "check", "test.net", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_cli_set_errors(tmp_path):
    run = _cli(tmp_path, "--set", "widht=8", "--set", "rate=fast")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        "dslc: error: --set widht: model 'm' has no hyper-parameter 'widht'; did you mean 'width'?",
        "--set rate: hyper-parameter 'rate' is float, got the string 'fast'"]


def test_a_hyper_parameter_without_default_is_asked_for_as_the_caller_gives_it(tmp_path, monkeypatch, capsys):
    """E0232 says how to give the missing value: dslc.load's keyword from Python, --set from
    the command line (whose setting ends with the command: a load after it says keyword)."""
    from dslc.cli import main
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.net").write_text("model m(width: int) {\n    input x : f32[N, width]\n    output y = x\n}\n")
    assert main(["check", "test.net"]) == 1
    assert "give one with --set width=VALUE" in capsys.readouterr().err
    with pytest.raises(CompileError) as info:
        dslc.load("test.net")
    assert "give one with dslc.load(..., width=VALUE)" in str(info.value.diagnostics[0].message)


# ---- model selection and files -------------------------------------------------------------

def test_no_such_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompileError) as info:
        dslc.load("missing.net")
    (d,) = info.value.diagnostics
    assert (d.code, d.message, d.span) == ("E0001", "cannot read missing.net: no such file", None)


def test_not_utf8(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin.net").write_bytes(b"model \xff\xfe")
    with pytest.raises(CompileError) as info:
        dslc.load("bin.net")
    assert info.value.diagnostics[0].message == "cannot read bin.net: not UTF-8 text (byte 6)"


def test_a_byte_order_mark_is_read_past(tmp_path, monkeypatch):
    """Windows' Notepad opens a UTF-8 file with a byte-order mark: it was E0101 "unexpected
    character '\\ufeff'" at 1:1. Spans are as without it, and a mark later in the file is
    still a character the language has not."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bom.net").write_bytes("\ufeff".encode() + HYPER.encode())
    assert dslc.load("bom.net").name == dslc.load("bom.net", text=HYPER).name
    (tmp_path / "late.net").write_bytes(HYPER.encode() + "\ufeff".encode())
    with pytest.raises(CompileError, match="unexpected character"):
        dslc.load("late.net")
    err = _diagnostics(tmp_path, monkeypatch, "model m {\n    input x : f32[N, 4]\n    output y = x |> nope\n}\n")
    (tmp_path / "bom2.net").write_bytes("\ufeff".encode() + (tmp_path / "test.net").read_bytes())
    with pytest.raises(CompileError) as info:
        dslc.load("bom2.net")
    assert [_where(d.span) for d in info.value.diagnostics] == [_where(d.span) for d in err.diagnostics]


def test_no_model_and_unknown_model(tmp_path, monkeypatch):
    err = _diagnostics(tmp_path, monkeypatch, "block b(x) { return x }\n")
    assert [d.code for d in err.diagnostics] == ["E0241"]
    err = _diagnostics(tmp_path, monkeypatch, HYPER, model="mm")
    assert [(d.code, d.message) for d in err.diagnostics] == [("E0242", "test.net has no model 'mm'")]
    err = _diagnostics(tmp_path, monkeypatch, HYPER, model="")  # not the first model: no model's name
    assert [(d.code, d.message) for d in err.diagnostics] == [("E0242", "test.net has no model ''")]


def test_block_errors_are_reported_once(tmp_path, monkeypatch):
    """A block with a mistake, called three times, gives one diagnostic (with the first call site)."""
    source = ("block b(x) {\n    return x |> conv2d(4)\n}\n"
              "model m {\n    input x : f32[N, 4]\n    y = b(x)\n    z = b(x)\n    output w = b(x)\n}\n")
    (d,) = _diagnostics(tmp_path, monkeypatch, source).diagnostics
    assert (_where(d.span), d.code) == ("2:17", "E0301")
    assert [_where(s) for s, _ in d.notes] == ["6:9"]


@pytest.mark.parametrize("word,candidates,hint", [
    ("mse_loss", ["l1_loss", "mse"], "mse"), ("nll", ["nll_loss", "l1"], "nll_loss"),
    ("L1Loss", ["l1", "l1_loss"], "l1_loss"), ("l1loss", ["l1", "l1_loss"], "l1_loss"),
    ("MAX", ["max", "maximum"], "max"), ("cross", ["cross_entropy", "zeros"], "cross_entropy"),
    ("lineer", ["linear", "Lineage"], "linear"), ("Widht", ["width"], "width"),
    ("so", ["softmax"], None), ("soft", ["softmax", "softplus"], "softmax"), ("qq", ["linear"], None)])
def test_did_you_mean_matches_case_a_loss_suffix_and_a_prefix(word, candidates, hint):
    from dslc.diagnostics import did_you_mean
    assert did_you_mean(word, candidates) == (f"did you mean '{hint}'?" if hint else None)


def test_render_all_counts_errors():
    from dslc.diagnostics import Diagnostic
    text = render_all([Diagnostic("E0201", "a"), Diagnostic("E0202", "b")])
    assert text == "error[E0201]: a\nerror[E0202]: b\n2 errors"


# ---- docs/errors.md lists exactly the codes in use -----------------------------------------

def _codes_in_source() -> set[str]:
    codes = set()
    for folder in ("dslc", "runtime"):
        for path in (ROOT / folder).rglob("*.py"):
            codes |= set(re.findall(r"[\"'](E0\d{3})[\"']", path.read_text(encoding="utf-8")))
    return codes


def _codes_in_docs() -> list[str]:
    return re.findall(r"^### (E0\d{3})\b", (ROOT / "docs" / "errors.md").read_text(encoding="utf-8"), re.M)


def test_every_code_is_documented():
    missing = _codes_in_source() - set(_codes_in_docs())
    assert not missing, f"add these codes to docs/errors.md: {sorted(missing)}"


def test_every_documented_code_is_used():
    unused = set(_codes_in_docs()) - _codes_in_source()
    assert not unused, f"docs/errors.md lists codes nothing raises: {sorted(unused)}"


def test_docs_list_each_code_once_in_order():
    documented = _codes_in_docs()
    assert documented == sorted(set(documented))


def test_catalogue_covers_the_front_end_codes():
    """Every code the front end raises on its own appears in some test of this file or test_imports.py."""
    here = (ROOT / "tests" / "test_errors.py").read_text() + (ROOT / "tests" / "test_imports.py").read_text()
    front = set()
    for path in (ROOT / "dslc" / "frontend").glob("*.py"):
        if not path.name.startswith("recipe"):  # recipes have their own tests (test_recipe.py)
            front |= set(re.findall(r"\"(E0\d{3})\"", path.read_text(encoding="utf-8")))
    assert front - set(re.findall(r"E0\d{3}", here)) == set()
