"""Every construct of grammar/net.lark parses into the right AST (dslc/frontend/ast.py).

Expressions are compared through `sx`, a compact S-expression view of the AST, so
precedence and associativity read at a glance: `a + b * c` -> "(add a (mul b c))".
"""
from __future__ import annotations


import pytest

from lark import Token, Tree

from dslc.diagnostics import CompileError, Span
from dslc.frontend import ast
from dslc.frontend.parse import parse, parser
from helpers import FIXTURES, MODELS

# A copy of the design sketch of the language (/work/shared/design/language-sketch.net):
# the grammar must stay able to read it.
SKETCH = FIXTURES / "language-sketch.net"


def sx(e) -> str:
    """An expression as an S-expression string."""
    if isinstance(e, ast.Num | ast.Bool):
        return repr(e.value)
    if isinstance(e, ast.Str):
        return repr(e.value)
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Neg):
        return f"(neg {sx(e.operand)})"
    if isinstance(e, ast.BinOp):
        return f"({e.op} {sx(e.left)} {sx(e.right)})"
    if isinstance(e, ast.ListLit):
        return "[" + " ".join(sx(i) for i in e.items) + "]"
    if isinstance(e, ast.Call):
        args = ([f"|>{sx(e.piped)}"] if e.piped is not None else []) + [sx(a) for a in e.args]
        args += [f"{k.name}={sx(k.value)}" for k in e.kwargs]
        return f"{e.func}(" + " ".join(args) + ")"
    raise TypeError(e)


def expr(text: str):
    """The AST of one expression, parsed as the value of an assignment."""
    (stmt,) = parse(f"model m {{\n  v = {text}\n}}").models[0].body
    return stmt.value


def body(text: str):
    return parse(f"model m {{\n{text}\n}}").models[0].body


# ---- top level -------------------------------------------------------------------------------

def test_empty_file_and_comments():
    m = parse("# nothing here\n\n   # at all\n")
    assert (m.imports, m.blocks, m.models, m.trains) == ((), (), (), ())


def test_imports():
    m = parse('import "blocks.net"\nimport "sub/dir/x.net"  # comment\n')
    assert [i.path for i in m.imports] == ["blocks.net", "sub/dir/x.net"]
    assert m.imports[1].span == Span("<string>", 2, 1, 2, 23)


def test_block_with_tensor_and_typed_formals_and_defaults():
    (b,) = parse("block conv(x, skip, channels: int, k: int = 3, act: str = relu) {\n return x\n}").blocks
    assert b.name == "conv" and b.name_span == Span("<string>", 1, 7, 1, 11)
    assert [(f.name, f.type, f.default and sx(f.default)) for f in b.formals] == [
        ("x", None, None), ("skip", None, None), ("channels", "int", None), ("k", "int", "3"), ("act", "str", "relu")]
    assert isinstance(b.body[0], ast.Return) and sx(b.body[0].value) == "x"


def test_block_without_formals():
    (b,) = parse("block b() { return 1 }").blocks
    assert b.formals == ()


@pytest.mark.parametrize("head, names", [("model m", []), ("model m()", []),
                                         ("model m(w: int = 2 * 8, lr: float = 1e-3)", ["w", "lr"])])
def test_models_with_and_without_hyper_parameters(head, names):
    (m,) = parse(head + " { }").models
    assert [f.name for f in m.formals] == names and m.body == ()


def test_hyper_parameter_default_is_an_expression():
    (m,) = parse("model m(w: int = 2 * 8) { }").models
    assert sx(m.formals[0].default) == "(mul 2 8)"


# ---- statements ----------------------------------------------------------------------------

def test_input_with_symbolic_and_expression_dims():
    (s,) = body("input x : f32[N, 3, h * 2, 28]")
    assert isinstance(s, ast.InputDecl) and s.name == "x" and s.type.dtype == "f32"
    assert [sx(d) for d in s.type.dims] == ["N", "3", "(mul h 2)", "28"]


def test_scalar_input():
    (s,) = body("input t : f32[]")
    assert s.type.dims == ()


def test_param_with_and_without_init():
    a, b, c = body("param W : f32[64, hidden] = kaiming()\nparam b : f32[hidden]\nparam c : f32[2] = zeros")
    assert isinstance(a, ast.ParamDecl) and sx(a.init) == "kaiming()"
    assert [sx(d) for d in a.type.dims] == ["64", "hidden"]
    assert b.init is None and sx(c.init) == "zeros"


def test_assign_with_and_without_label():
    a, b = body("x = relu(y)\nstem: x = x |> maxpool(2)")
    assert (a.label, a.target, sx(a.value)) == (None, "x", "relu(y)")
    assert (b.label, b.target, sx(b.value)) == ("stem", "x", "maxpool(|>x 2)")


def test_output_with_and_without_value():
    a, b = body("output probs = softmax(logits)\noutput logits")
    assert (a.name, sx(a.value)) == ("probs", "softmax(logits)")
    assert (b.name, b.value) == ("logits", None)


def test_metric_with_and_without_name():
    a, b = body("metric accuracy(logits, y)\nmetric err = 1 - accuracy(logits, y)")
    assert (a.name, sx(a.value)) == (None, "accuracy(logits y)")
    assert (b.name, sx(b.value)) == ("err", "(sub 1 accuracy(logits y))")


def test_loss():
    (s,) = body("loss cross_entropy(logits, y) + 5e-4 * l2(weights)")
    assert sx(s.value) == "(add cross_entropy(logits y) (mul 0.0005 l2(weights)))"


def test_return():
    (b,) = parse("block b(x) { return relu(x + x) }").blocks
    assert isinstance(b.body[0], ast.Return) and sx(b.body[0].value) == "relu((add x x))"


def test_repeat_with_and_without_index():
    a, b = body("repeat 2 { x = f(x) }\nrepeat depth - 1 as i { x = g(x, i) }")
    assert (sx(a.count), a.index, len(a.body)) == ("2", None, 1)
    assert (sx(b.count), b.index, sx(b.body[0].value)) == ("(sub depth 1)", "i", "g(x i)")


def test_nested_repeat_and_empty_body():
    (r,) = body("repeat 2 { repeat 3 { } }")
    assert isinstance(r.body[0], ast.Repeat) and r.body[0].body == ()


def test_statements_may_share_a_line_or_span_lines():
    stmts = body("input x : f32[N, 4] y = x |> relu output y\nz = x\n  +\n  y")
    assert [type(s).__name__ for s in stmts] == ["InputDecl", "Assign", "OutputDecl", "Assign"]
    assert sx(stmts[3].value) == "(add x y)" and stmts[3].span.end_line == stmts[3].span.line + 2


# ---- training recipes ----------------------------------------------------------------------------

def test_train_with_alias_and_every_value_kind():
    (t,) = parse('''
train resnet as finetune {
    lr = 1e-3
    epochs = 10
    momentum = 0.9
    frac = .5
    big = 2E+3
    path = "data/\\"q\\"\\\\x\\n\\t"
    flag = true
    off = false
    mode = per_channel
    augment = [hflip(0.5), random_crop(32, pad=4),]
    optimizer = sgd(lr=0.1, schedule=cosine(warmup=2), nesterov=true,)
    empty = []
    neg = -1
}''').trains
    assert (t.model, t.alias) == ("resnet", "finetune")
    values = {e.key: e.value for e in t.entries}
    assert [values[k].value for k in ("lr", "epochs", "momentum", "frac", "big")] == [1e-3, 10, 0.9, 0.5, 2000.0]
    assert isinstance(values["epochs"].value, int) and isinstance(values["lr"].value, float)
    assert values["path"].value == 'data/"q"\\x\n\t'
    assert (values["flag"].value, values["off"].value) == (True, False)
    assert isinstance(values["flag"], ast.Bool) and sx(values["mode"]) == "per_channel"
    assert sx(values["augment"]) == "[hflip(0.5) random_crop(32 pad=4)]"
    assert sx(values["optimizer"]) == "sgd(lr=0.1 schedule=cosine(warmup=2) nesterov=True)"
    assert sx(values["empty"]) == "[]" and sx(values["neg"]) == "(neg 1)"
    assert t.entries[0].key_span == Span("<string>", 3, 5, 3, 7)


def test_train_without_alias():
    (t,) = parse("train m { }").trains
    assert (t.model, t.alias, t.entries) == ("m", None, ())


# ---- expressions: precedence, associativity, pipes ------------------------------------------------

@pytest.mark.parametrize("text, tree", [
    ("a + b * c @ d", "(add a (matmul (mul b c) d))"),       # * / @ bind tighter than + -, left to right
    ("a - b - c", "(sub (sub a b) c)"),
    ("a / b * c", "(mul (div a b) c)"),
    ("a @ b @ c", "(matmul (matmul a b) c)"),
    ("-a * b", "(mul (neg a) b)"),                          # unary minus binds tightest
    ("a - -b", "(sub a (neg b))"),
    ("--a", "(neg (neg a))"),
    ("(a + b) * c", "(mul (add a b) c)"),
    ("-(a @ b)", "(neg (matmul a b))"),
    ("x |> f", "f(|>x)"),
    ("x |> f(1, k=2)", "f(|>x 1 k=2)"),
    ("x |> f |> g(3)", "g(|>f(|>x) 3)"),                     # pipes chain left to right
    ("a + b |> f", "f(|>(add a b))"),                        # the whole arithmetic is piped
    ("-x |> f", "f(|>(neg x))"),
    ("(x |> f) + 1", "(add f(|>x) 1)"),
    ("f(x |> g, y)", "f(g(|>x) y)"),
    ("[1, 2.5, \"s\", true, n]", "[1 2.5 's' True n]"),
    ("[[1, 2], []]", "[[1 2] []]"),
    ("f()", "f()"),
    ("f(1,)", "f(1)"),
    ("f(k=1)", "f(k=1)"),
    ("f(g(h(1)), k=[a, b])", "f(g(h(1)) k=[a b])"),
])
def test_expression_trees(text, tree):
    assert sx(expr(text)) == tree


def test_pipe_across_lines():
    v = expr("x |> conv2d(8, kernel=3, pad=same)\n      |> batchnorm  # a comment\n      |> relu")
    assert sx(v) == "relu(|>batchnorm(|>conv2d(|>x 8 kernel=3 pad=same)))"


def test_pipe_then_arithmetic_is_an_error_with_a_hint():
    """`x |> f + 1` has no sane reading ((x |> f) + 1 or x |> (f + 1)), so it is rejected."""
    with pytest.raises(CompileError) as info:
        expr("x |> f + 1")
    (d,) = info.value.diagnostics
    assert (d.code, d.message) == ("E0103", "unexpected '+'")
    assert "(x |> f) + y" in d.hint


@pytest.mark.parametrize("text", ["f(,)", "[,]", "f(1,,)", "[1,,]", "f(k=)", "a +", "a b", "(a", "x |>"])
def test_malformed_expressions(text):
    with pytest.raises(CompileError) as info:
        expr(text)
    assert info.value.diagnostics[0].code in ("E0102", "E0103")


def test_numbers():
    assert [expr(t).value for t in ("0", "007", "1.", ".25", "1e3", "1E-3", "2.5e+2")] == \
        [0, 7, 1.0, 0.25, 1000.0, 0.001, 250.0]
    assert type(expr("1e3").value) is float and type(expr("10").value) is int


def test_string_escapes():
    assert expr(r'"a\"b\\c\nd\te\rf"').value == 'a"b\\c\nd\te\rf'


def test_spans_of_an_expression():
    call = expr("x |> linear(10)")
    assert call.span == Span("<string>", 2, 12, 2, 22) and call.func_span == Span("<string>", 2, 12, 2, 18)
    assert call.piped.span == Span("<string>", 2, 7, 2, 8)


def test_keywords_are_names_where_a_name_is_expected():
    """The contextual lexer lets `output loss = ...` and an input named `model` through."""
    a, b = body("input model : f32[N]\noutput loss = model")
    assert (a.name, b.name, sx(b.value)) == ("model", "loss", "model")


# ---- the grammar itself ---------------------------------------------------------------------------

def test_grammar_is_lalr():
    assert parser().options.parser == "lalr"


def test_language_sketch_parses():
    m = parse(SKETCH.read_text(), str(SKETCH))
    assert [i.path for i in m.imports] == ["blocks.net"]
    assert [b.name for b in m.blocks] == ["conv_bn_relu", "residual"]
    assert [x.name for x in m.models] == ["resnet_tiny", "two_layer"]
    assert [(t.model, t.alias) for t in m.trains] == [("resnet_tiny", None), ("resnet_tiny", "finetune")]
    resnet = m.models[0]
    assert [type(s).__name__ for s in resnet.body] == [
        "InputDecl", "InputDecl", "Assign", "Repeat", "Assign", "Assign", "Assign", "OutputDecl", "MetricDecl",
        "LossDecl"]
    assert resnet.body[4].label == "stem"
    assert sx(resnet.body[-1].value) == "(add cross_entropy(logits label) (mul 0.0005 l2(weights)))"


@pytest.mark.parametrize("text, where", [("model m {\n\n\n", (1, 10)), ("", None), ("model", (1, 6)),
                                         ("block b(x) {\n  return x\n  # }\n", (3, 6))])
def test_end_of_file_is_located_after_the_last_text(text, where):
    """Lark reports line/column -1 at the end of input; parse.py points after the last text."""
    if where is None:
        assert parse(text).models == ()
        return
    with pytest.raises(CompileError) as info:
        parse(text)
    (d,) = info.value.diagnostics
    assert (d.code, d.span.line, d.span.col) == ("E0102", *where)


def _no_lark_objects(node) -> bool:
    """True if the AST holds only our dataclasses and plain values (no Lark Tree or Token left)."""
    if isinstance(node, (Tree, Token)):
        return False
    if isinstance(node, tuple):
        return all(_no_lark_objects(i) for i in node)
    if hasattr(node, "__dataclass_fields__") and not isinstance(node, Span):
        return all(_no_lark_objects(getattr(node, f)) for f in node.__dataclass_fields__)
    return isinstance(node, (str, int, float, bool, type(None), Span))


def test_every_rule_becomes_an_ast_node():
    assert _no_lark_objects(parse(SKETCH.read_text()))


def test_models_directory_parses():
    root = MODELS
    files = sorted(root.glob("*.net"))
    for path in files:
        assert _no_lark_objects(parse(path.read_text(), str(path)))
