"""Imports: relative paths, diamonds read once, missing files, cycles, and errors located
in the imported file (with the call chain back to the importing one)."""
from __future__ import annotations

import pytest

import dslc
from dslc.diagnostics import CompileError
from dslc.frontend import program as program_module
from dslc.frontend.program import load_program

MODEL = """\
model m {
    input x : f32[N, 8]
    output y = x |> %s
}
"""


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """tree({"a.net": text, "sub/b.net": text}) writes the files and makes tmp_path the working directory."""
    monkeypatch.chdir(tmp_path)

    def write(files: dict[str, str]):
        for name, text in files.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return write


def _errors(path: str) -> list:
    with pytest.raises(CompileError) as info:
        dslc.load(path)
    return info.value.diagnostics


def _at(d) -> str:
    return f"{d.span.file}:{d.span.line}:{d.span.col}"


def test_relative_imports_through_subdirectories(tree):
    tree({
        "main.net": 'import "sub/lib.net"\n' + MODEL % "head(3)",
        "sub/lib.net": 'import "../common.net"\nblock head(x, c: int) {\n    return x |> dense(c)\n}\n',
        "common.net": "block dense(x, c: int) {\n    return x |> linear(c) |> relu\n}\n",
    })
    model = dslc.load("main.net")
    assert [n.name for n in model.graph if n.op not in ("input", "param")] == \
        ["head.dense.linear", "head.dense.relu"]
    assert sorted(model.program.modules) == ["common.net", "main.net", "sub/lib.net"]


def test_diamond_is_read_once(tree, monkeypatch):
    tree({
        "main.net": 'import "left.net"\nimport "right.net"\n' + MODEL % "a |> b",
        "left.net": 'import "shared.net"\nblock a(x) {\n    return base(x)\n}\n',
        "right.net": 'import "./shared.net"\nblock b(x) {\n    return base(x)\n}\n',
        "shared.net": "block base(x) {\n    return relu(x)\n}\n",
    })
    parsed = []
    real = program_module.parse
    monkeypatch.setattr(program_module, "parse", lambda text, name: parsed.append(name) or real(text, name))
    model = dslc.load("main.net")  # no "defined twice" for base: shared.net is one file
    assert sorted(parsed) == ["left.net", "main.net", "right.net", "shared.net"]
    assert [n.name for n in model.graph if n.op == "relu"] == ["a.base.relu", "b.base.relu"]


def test_broken_file_in_a_diamond_is_reported_once(tree):
    tree({
        "main.net": 'import "left.net"\nimport "right.net"\n' + MODEL % "relu",
        "left.net": 'import "shared.net"\n',
        "right.net": 'import "shared.net"\n',
        "shared.net": "block base(x) {\n    return relu(x\n}\n",
    })
    (d,) = _errors("main.net")
    assert (_at(d), d.code, d.message) == ("shared.net:3:1", "E0103", "unexpected '}'")


def test_missing_import(tree):
    tree({"main.net": 'import "sub/lib.net"\n' + MODEL % "relu", "sub/lib.net": '\n\nimport "nothere.net"\n'})
    (d,) = _errors("main.net")
    assert (_at(d), d.code) == ("sub/lib.net:3:1", "E0002")
    assert d.message == "cannot import 'nothere.net': sub/nothere.net: no such file"
    assert d.hint == "import paths are relative to the importing file"


def test_import_of_a_directory(tree):
    tree({"main.net": 'import "sub"\n' + MODEL % "relu", "sub/x.net": ""})
    (d,) = _errors("main.net")
    assert d.message == "cannot import 'sub': sub: it is a directory"


def test_two_missing_imports_are_both_reported(tree):
    tree({"main.net": 'import "a.net"\nimport "b.net"\n' + MODEL % "relu"})
    errors = _errors("main.net")
    assert [(_at(d), d.code) for d in errors] == [("main.net:1:1", "E0002"), ("main.net:2:1", "E0002")]


def test_cycle_a_b_a(tree):
    tree({"a.net": 'import "b.net"\n' + MODEL % "relu", "b.net": '# b\nimport "a.net"\n'})
    (d,) = _errors("a.net")
    assert (_at(d), d.code, d.message) == ("b.net:2:1", "E0003", "import cycle: a.net -> b.net -> a.net")


def test_cycle_through_relative_paths(tree):
    tree({"a.net": 'import "sub/b.net"\n' + MODEL % "relu", "sub/b.net": 'import "../sub/../a.net"\n'})
    (d,) = _errors("a.net")
    assert (_at(d), d.message) == ("sub/b.net:1:1", "import cycle: a.net -> sub/b.net -> a.net")


def test_longer_cycle_shows_the_chain_from_where_it_closes(tree):
    tree({"main.net": 'import "a.net"\n' + MODEL % "relu", "a.net": 'import "b.net"\n',
          "b.net": 'import "c.net"\n', "c.net": 'import "a.net"\n'})
    (d,) = _errors("main.net")
    assert d.message == "import cycle: a.net -> b.net -> c.net -> a.net"


def test_self_import(tree):
    tree({"self.net": 'import "self.net"\n' + MODEL % "relu"})
    (d,) = _errors("self.net")
    assert (_at(d), d.code, d.message) == ("self.net:1:1", "E0003", "import cycle: self.net -> self.net")


def test_error_in_imported_block_points_into_that_file(tree):
    tree({
        "main.net": 'import "sub/lib.net"\n' + MODEL % "head(3)",
        "sub/lib.net": 'import "../common.net"\nblock head(x, c: int) {\n    return x |> inner(c)\n}\n',
        "common.net": "block inner(x, c: int) {\n    return x |> linear(c) |> conv2d(3)\n}\n",
    })
    (d,) = _errors("main.net")
    assert (_at(d), d.code) == ("common.net:2:30", "E0301")
    assert [(f"{s.file}:{s.line}:{s.col}", text) for s, text in d.notes] == [
        ("sub/lib.net:3:17", "in block 'inner' called here"),
        ("main.net:4:21", "in block 'head' called here"),
    ]


def test_syntax_error_in_imported_file(tree):
    tree({"main.net": 'import "lib.net"\n' + MODEL % "relu", "lib.net": "block b(x) {\n    return x $ 1\n}\n"})
    (d,) = _errors("main.net")
    assert (_at(d), d.code) == ("lib.net:2:14", "E0101")


def test_definition_twice_across_files(tree):
    tree({"main.net": 'import "lib.net"\nblock head(x) {\n    return x\n}\n' + MODEL % "head",
          "lib.net": "\nblock head(x) {\n    return relu(x)\n}\n"})
    (d,) = _errors("main.net")
    assert (_at(d), d.code, d.message) == ("lib.net:2:7", "E0203", "'head' is defined twice")
    assert [(f"{s.file}:{s.line}:{s.col}", t) for s, t in d.notes] == [("main.net:2:7", "first defined here")]


def test_the_root_file_model_is_the_default(tree):
    tree({"main.net": 'import "lib.net"\n' + (MODEL % "relu").replace("model m", "model mine"),
          "lib.net": (MODEL % "relu").replace("model m", "model theirs")})
    assert dslc.load("main.net").name == "mine"
    assert dslc.load("main.net", model="theirs").name == "theirs"


def test_load_program_with_text_reads_imports_relative_to_the_path(tree):
    tree({"sub/lib.net": "block b(x) {\n    return relu(x)\n}\n"})
    prog = load_program("sub/virtual.net", text='import "lib.net"\n' + MODEL % "b")
    assert set(prog.blocks) == {"b"} and set(prog.models) == {"m"}
