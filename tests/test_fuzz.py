"""Fuzzing the front end: whatever the text, `dslc.load` returns a Model or raises a
CompileError whose diagnostics are located (line >= 1, col >= 1) or file-level (no span).

Four generators, 2,500 programs per run (derandomized, so CI is stable; drawing from the
grammar is the slow part of hypothesis here, about 40 ms a program, hence its smaller share):
  (a) programs drawn from grammar/net.lark itself (hypothesis.extra.lark),
  (b) token-level mutations (delete, duplicate, swap, replace) of real .net files,
  (c) well-typed MLP/CNN stacks with known shapes, which must check cleanly and
      produce the logits shape computed here independently,
  (d) every public op of the registry called with odd inputs and attribute values
      (this found gradient-only ops crashing when called from a program).
"""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from lark import Lark

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.extra.lark import from_lark  # noqa: E402

import dslc  # noqa: E402
from dslc.diagnostics import CompileError  # noqa: E402
from dslc.ops.registry import INTERNAL  # noqa: E402
from dslc.frontend.parse import grammar_text  # noqa: E402
from dslc.ops import registry  # noqa: E402
from helpers import FIXTURES, MODELS  # noqa: E402

SOURCES = sorted(MODELS.glob("*.net")) + sorted(FIXTURES.glob("*.net"))

FUZZ = settings(derandomize=True, deadline=timedelta(seconds=5), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def check_load(path: Path, text: str):
    """The property: a Model, or a CompileError made only of well-formed diagnostics."""
    try:
        return dslc.load(path, text=text)
    except CompileError as err:
        assert err.diagnostics, "a CompileError without diagnostics"
        for d in err.diagnostics:
            assert re.fullmatch(r"E0\d{3}", d.code), d
            assert d.message and "POISON" not in d.message, d
            if d.span is not None:
                assert d.span.line >= 1 and d.span.col >= 1, d
                assert (d.span.end_line, d.span.end_col) >= (d.span.line, d.span.col), d
            for span, _ in d.notes:
                assert span is None or (span.line >= 1 and span.col >= 1), d
        assert err.render()  # rendering never fails either
        return None


# ---- (a) programs generated from the grammar ---------------------------------------------------

# Names that mean something to the elaborator, so that generated programs reach past name lookup.
_NAMES = ["x", "y", "z", "N", "h", "w", "i", "relu", "linear", "conv2d", "batchnorm", "flatten", "mean", "sum",
          "cross_entropy", "accuracy", "l2", "weights", "xavier", "kaiming", "zeros", "same", "int", "float",
          "bool", "str", "f32", "i64", "out", "kernel", "bias", "axis", "b", "m"]


def _spaced(strategy):
    """from_lark puts no whitespace between tokens; each terminal brings its own."""
    return strategy.map(lambda s: f" {s} ")


def _grammar_programs():
    lark = Lark(grammar_text(), parser="lalr", maybe_placeholders=True)  # uncached: from_lark walks .grammar
    literal = {t.name: t.pattern.value for t in lark.terminals if t.pattern.type == "str"}  # "model", "{", ...
    words = set(literal.values())
    explicit = {
        **{name: st.just(f" {text} ") for name, text in literal.items()},
        "NAME": _spaced(st.one_of(st.sampled_from(_NAMES), st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True))
                        .filter(lambda s: s not in words)),
        "INT": _spaced(st.one_of(st.integers(0, 12), st.integers(0, 10**25)).map(str)),
        "FLOAT": _spaced(st.sampled_from(["0.5", "1e-3", "2.", ".25", "1E+2", "1e999"])),
        "STRING": _spaced(st.from_regex(r'"([a-z./ ]|\\["\\ntqx])*"', fullmatch=True)),
        "WS": st.sampled_from([" ", "\n", "\t"]),
        "COMMENT": st.just("# comment\n"),  # a comment must end its line, or it would swallow tokens
    }
    return from_lark(lark, explicit=explicit)


@pytest.mark.slow
@settings(FUZZ, max_examples=300)
@given(text=_grammar_programs())
def test_programs_from_the_grammar(text, workdir):
    check_load(workdir / "gen.net", text)


# ---- (b) token-level mutations of real files --------------------------------------------------------

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[A-Za-z_]\w*|\d+\.?\d*(?:[eE][+-]?\d+)?|\|>|#[^\n]*|\S')
_REPLACEMENTS = ["{", "}", "(", ")", "[", "]", ",", ":", "=", "|>", "+", "-", "*", "/", "@", "0", "-1", "1e999",
                 "99999999999999999999", '"', '"\\q"', "$", "x", "N", "return", "input", "block", "model", "repeat",
                 "as", "import", "true", "weights", "relu", "linear", "conv2d", "f32", "i64", "int"]


def _tokens(text: str) -> list[tuple[str, str]]:
    """(whitespace before, token) pairs; joining them gives the text back (less trailing space)."""
    out, pos = [], 0
    for m in _TOKEN.finditer(text):
        out.append((text[pos:m.start()], m.group()))
        pos = m.end()
    return out


@st.composite
def _mutants(draw):
    path = draw(st.sampled_from(SOURCES))
    toks = _tokens(path.read_text())
    for _ in range(draw(st.integers(1, 3))):
        if not toks:
            break
        i = draw(st.integers(0, len(toks) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "replace"]))
        if kind == "delete":
            del toks[i]
        elif kind == "duplicate":
            toks.insert(i, toks[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(toks) - 1))
            toks[i], toks[j] = (toks[i][0], toks[j][1]), (toks[j][0], toks[i][1])
        else:
            toks[i] = (toks[i][0], draw(st.sampled_from(_REPLACEMENTS)))
    return path, "".join(a + b for a, b in toks) + "\n"


def test_mutation_sources_exist():
    assert SOURCES, "no .net files to mutate"
    for path in SOURCES:  # the tokenizer loses nothing
        text = path.read_text()
        assert "".join(a + b for a, b in _tokens(text)) == text.rstrip()


@pytest.mark.slow
@settings(FUZZ, max_examples=1200)
@given(case=_mutants())
def test_mutated_files(case):
    path, text = case
    check_load(path, text)


# ---- (c) well-typed models with known shapes --------------------------------------------------------

@st.composite
def _cnn_or_mlp(draw):
    """A model text and the logits shape it must have (computed here, not by dslc)."""
    classes = draw(st.integers(2, 12))
    lines, blocks = [], []
    image = draw(st.booleans())
    if image:
        c, h, w = draw(st.integers(1, 4)), draw(st.integers(4, 16)), draw(st.integers(4, 16))
        lines.append(f"input x : f32[N, {c}, {h}, {w}]")
        for _ in range(draw(st.integers(0, 3))):
            k = draw(st.integers(1, min(h, w, 5)))
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, (k - 1) // 2 + 1))
            g = draw(st.sampled_from([d for d in (1, 2) if c % d == 0]))
            out = g * draw(st.integers(1, 4))
            lines.append(f"x = x |> conv2d({out}, kernel={k}, stride={s}, pad={p}, groups={g})")
            c, h, w = out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            lines += draw(st.lists(st.sampled_from(["x = x |> batchnorm", "x = relu(x)", "x = x |> tanh",
                                                    "x = x + x", "x = x * 0.5"]), max_size=2))
        lines.append("x = x |> flatten")
        features = c * h * w
    else:
        features = draw(st.integers(1, 32))
        lines.append(f"input x : f32[N, {features}]")
    if draw(st.booleans()):  # a block with a hyper-parameter, repeated
        blocks.append("block dense(v, width: int = 8) {\n    return v |> linear(width) |> relu\n}")
        width, times = draw(st.integers(1, 16)), draw(st.integers(0, 3))
        lines.append(f"repeat {times} as i {{\n    x = dense(x, width={width})\n}}" if times else "")
        features = width if times else features
    for _ in range(draw(st.integers(0, 2))):
        width = draw(st.integers(1, 24))
        act = draw(st.sampled_from(["relu", "sigmoid", "gelu", "leaky_relu(alpha=0.1)"]))
        lines.append(f"x = x |> linear({width}, bias={draw(st.sampled_from(['true', 'false']))}) |> {act}")
        features = width
    lines += ["head: logits = x |> linear(classes, init=xavier)", "input label : i64[N]", "output logits",
              "metric accuracy(logits, label)",
              f"loss cross_entropy(logits, label) + {draw(st.sampled_from(['0', '1e-4']))} * l2(weights)"]
    body = "\n".join(f"    {line}" for line in lines if line)
    text = "\n\n".join(blocks + [f"model gen(classes: int = {classes}) {{\n{body}\n}}"]) + "\n"
    return text, classes


@pytest.mark.slow
@settings(FUZZ, max_examples=600)
@given(case=_cnn_or_mlp())
def test_well_typed_models_check_cleanly(case, workdir):
    text, classes = case
    model = check_load(workdir / "typed.net", text)
    assert model is not None, text
    logits = model.graph["head"]
    assert [str(d) for d in logits.type.shape] == ["N", str(classes)]
    assert logits.type.dtype == "f32"
    assert {o.kind for o in model.graph.outputs} == {"output", "metric", "loss"}


# ---- (d) every op the language offers, called with odd inputs and attributes ----------------------

_DTYPES = ["f32", "f32", "i64"]
_SHAPES = ["[]", "[N]", "[N, 4]", "[N, 3, 8, 8]", "[N, 4, 6]", "[2, 3]", "[N, 1, 1, 1]", "[1, 2, 1, 9]"]
_VALUES = ["0", "-1", "1", "3", "2.5", "true", "[]", "[1, 2, 3]", "[0, 0]", "same", "foo", '"s"', "none",
           "[-1, 4]", "100", "xavier", "kaiming(mode=fan_out)", "weights"]


@st.composite
def _op_calls(draw):
    """`y = op(inputs, attrs)` for a public op (the list grows as ops are added to the registry)."""
    ops = {n: o for n, o in registry.all_ops().items() if o.category not in INTERNAL}
    op = ops[draw(st.sampled_from(sorted(ops)))]
    n_in = max(1, sum(not s.startswith("*") for s in op.inputs)) + draw(st.integers(-1, 1))
    lines = [f"input x{i} : {draw(st.sampled_from(_DTYPES))}{draw(st.sampled_from(_SHAPES))}" for i in range(n_in)]
    args = [f"x{i}" for i in range(n_in)] + draw(st.lists(st.sampled_from(_VALUES), max_size=2))
    args += [f"{a.name}={draw(st.sampled_from(_VALUES))}" for a in op.attrs if draw(st.booleans())]
    body = "\n".join(f"    {line}" for line in lines + [f"output y = {op.name}({', '.join(args)})"])
    return f"model m {{\n{body}\n}}\n"


@pytest.mark.slow
@settings(FUZZ, max_examples=400)
@given(text=_op_calls())
def test_op_calls(text, workdir):
    check_load(workdir / "op.net", text)


# ---- regressions found by the fuzzers and by hand ------------------------------------------------

@pytest.mark.parametrize("text", [
    'model m { x = "\\x" }',                                      # Python escapes once crashed the Transformer
    'import "\\N"',
    "model m { x = " + "9" * 5000 + " }",                          # int() refuses > 4300 digits
    "model m(k: int = 3000000000 * 3000000000 * 3000000000) { input x : f32[N, 3] output x }",
    "model m(k: float = 1e300 * 1e300) { input x : f32[N, 3] output x }",
    "model m { input x : f32[N, 3] y = relu(x) input relu : f32[N, 3] output y }",  # a node name taken twice
    "block b(x) { y = b(x) z = b(x) return y } model m { input x : f32[N, 3] output y = b(x) }",  # 2^64 calls
    "model m { input x : f32[N, 3] repeat 100000000 { x = x } output y = x }",
    "model m { input x : f32[N, 3] y = x |> conv2d(3, kernel=[x, 3]) output y }",
    "model m(w: int = 2, w: int = 3) { input x : f32[N, 3] output y = x }",
    "model m { input a : f32[N, 1, 1, 1] input b : i64[] output y = conv2d_grad_weight(a, b, pad=1) }",
    "model m { input x : f32[N, 1, 1, 1] output y = fused(x, body=true) }",
])
def test_regressions(text, workdir):
    assert check_load(workdir / "reg.net", text) is None
