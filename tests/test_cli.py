"""The command line: exit status 0/1/2, located messages and never a traceback.

A few runs go through a real subprocess (the installed entry point's behaviour,
byte-identical output across processes); the rest call `main` in-process to stay fast.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import dslc
from dslc import cli
from dslc.cli import inspect_verbs
from dslc.ir.printer import from_json, to_json
from dslc.ops import registry
from dslc.stages import STAGES

from helpers import MODELS

GOOD = """
model tiny(width: int = 8) {
    input x : f32[N, 4]
    input y : i64[N]
    logits = x |> linear(width) |> relu |> linear(3)
    output logits
    loss cross_entropy(logits, y)
}
"""

# linear on an image: a located shape error on line 4.
BAD = """
model broken {
    input image : f32[N, 1, 4, 4]
    logits = image |> linear(3)
    output logits
}
"""


def dslc_run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "dslc.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def good(net):
    return net(GOOD, "good.net")


# ---- through a real process --------------------------------------------------------

def test_inspect_succeeds(good):
    done = dslc_run("inspect", good, "--set", "width=5")
    assert done.returncode == 0
    assert "%linear : f32[N, 5] = linear(%x, %linear.weight, %linear.bias)" in done.stdout


def test_json_is_byte_identical_across_processes(good):
    first = dslc_run("inspect", good, "--format", "json", "--stage", "train_step", cwd=good.parent)
    second = dslc_run("inspect", good, "--format", "json", "--stage", "train_step", cwd=good.parent)
    assert first.returncode == 0 and first.stdout == second.stdout
    g = from_json(first.stdout)
    assert g.stage == "train_step" and to_json(g) == first.stdout


def test_user_mistake_is_located_and_exits_1(net):
    done = dslc_run("inspect", net(BAD, "bad.net"))
    assert done.returncode == 1
    assert "bad.net:4:" in done.stderr and "linear expects rank 2" in done.stderr and "^" in done.stderr


def test_unknown_stage_exits_2(good):
    done = dslc_run("inspect", good, "--stage", "backwards")
    assert done.returncode == 2
    assert all(s in done.stderr for s in STAGES) and "did you mean 'backward'" in done.stderr


def test_unknown_op_exits_1():
    done = dslc_run("ops", "conv3d")
    assert done.returncode == 1 and "did you mean 'conv2d'?" in done.stderr


@pytest.mark.parametrize("name,hint", [("mse_loss", "mse"), ("MSELoss", "mse"), ("nll", "nll_loss"),
                                       ("MAX", "max"), ("cross", "cross_entropy"), ("max_pool", "maxpool")])
def test_unknown_op_suggests_the_op_under_another_spelling(name, hint, capsys):
    assert cli.main(["ops", name]) == 1
    assert capsys.readouterr().err.strip() == f"dslc: error: unknown op '{name}'; did you mean '{hint}'?"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_inspect_draws_svg(good, tmp_path):
    out = tmp_path / "g.svg"
    done = dslc_run("inspect", good, "--stage", "backward", "-o", out)
    assert done.returncode == 0 and done.stdout == ""
    svg = out.read_text()
    assert "<svg" in svg and "linear.weight" in svg
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))  # no temporary file left


# ---- in-process --------------------------------------------------------------------

def test_check_version_and_bad_command_lines(capsys, good):
    code, out, _ = run(capsys, "check", good)
    assert code == 0 and 'Model "tiny"' in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"dslc {dslc.__version__}"
    assert run(capsys, "inspect", good, "--format", "yaml")[0] == 2
    assert run(capsys, "frobnicate")[0] == 2


@pytest.mark.parametrize("suffix, fmt", [(".json", "json"), (".txt", "text"), (".dot", "dot"), (".gv", "dot")])
def test_output_format_follows_suffix(capsys, good, tmp_path, suffix, fmt):
    out = tmp_path / f"graph{suffix}"
    code, stdout, _ = run(capsys, "inspect", good, "-o", out)
    assert code == 0 and stdout == ""
    text = out.read_text()
    graph = dslc.load(good).graph
    if fmt == "json":
        assert from_json(text) == graph
    elif fmt == "text":
        assert text.startswith("graph tiny  (stage typed;")
    else:
        assert text.startswith('digraph "tiny" {')


def test_explicit_format_wins_for_text_files(capsys, good, tmp_path):
    out = tmp_path / "graph.txt"
    assert run(capsys, "inspect", good, "--format", "json", "-o", out)[0] == 0
    assert json.loads(out.read_text())["name"] == "tiny"


@pytest.mark.parametrize("args, message", [
    (["--format", "json", "-o", "x.png"], "cannot be drawn"),
    (["-o", "graph.yaml"], "cannot tell the format"),
    (["--set", "width"], "--set expects KEY=VALUE"),
])
def test_output_usage_errors(capsys, good, tmp_path, args, message):
    code, _, err = run(capsys, "inspect", good, *args)
    assert code == 2 and message in err


def test_unwritable_output_exits_1(capsys, good, tmp_path):
    code, _, err = run(capsys, "inspect", good, "-o", tmp_path / "no" / "such" / "dir.json")
    assert code == 1 and "cannot write" in err and "dir.json" in err


def test_missing_graphviz_is_a_clear_error(capsys, good, tmp_path, monkeypatch):
    monkeypatch.setattr(inspect_verbs.shutil, "which", lambda name: None)
    code, _, err = run(capsys, "inspect", good, "-o", tmp_path / "g.png")
    assert code == 1 and "Graphviz" in err and "g.png" in err
    assert not (tmp_path / "g.png").exists()


def test_unreadable_model_file_exits_1(capsys, tmp_path):
    code, _, err = run(capsys, "inspect", tmp_path / "missing.net")
    assert code == 1 and "missing.net" in err
    code, _, err = run(capsys, "check", tmp_path)  # a directory
    assert code == 1 and "cannot read" in err


def test_stage_without_loss_is_a_user_error(capsys, net):
    code, _, err = run(capsys, "inspect", net("model f {\n input x : f32[N, 2]\n output y = x |> relu\n}\n"),
                       "--stage", "backward")
    assert code == 1 and "no loss" in err


def test_malformed_dslc_verify_is_a_usage_error(capsys, good, monkeypatch):
    monkeypatch.setenv("DSLC_VERIFY", "maybe")
    code, _, err = run(capsys, "inspect", good)
    assert code == 2 and "DSLC_VERIFY" in err


@pytest.mark.parametrize("verb", ["check", "inspect", "ops"])
def test_every_verb_has_help_with_an_example(capsys, verb):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"dslc {verb}" in out.split("examples:")[1]


def test_help_loads_neither_the_explain_methods_nor_the_runtime():
    """`dslc --help` builds every verb's parser, in a fresh process: the explain methods (and
    through them the op registry) and the runtime's data, checkpoint and run modules are
    imported by the commands that run them, not to declare flags (0.41 -> 0.19 s). The test
    after this one checks that an error class named only where imported still exits 1."""
    code = ("import sys\nfrom dslc.cli import main\nassert main(['--help']) == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith(('dslc.explain', 'dslc.cli.explain_run', "
            "'dslc.ops', 'dslc.runtime.data', 'dslc.runtime.checkpoint', 'dslc.runtime.runs'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_data_error_raised_by_a_command_exits_1(capsys, monkeypatch):
    from dslc.runtime.data import DataError

    def fails(args):
        raise DataError("data/x.csv: line 3: not a number")
    monkeypatch.setattr(inspect_verbs, "cmd_ops", fails)
    assert cli.main(["ops"]) == 1
    assert "dslc: error: data/x.csv: line 3: not a number" in capsys.readouterr().err


def test_no_verb_prints_help_and_exits_2(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "inspect" in out and "ops" in out


def test_ops_table_lists_language_ops_by_category(capsys):
    code, out, _ = run(capsys, "ops")
    assert code == 0
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    # registry.INTERNAL: emitted by the compiler, not written in models
    assert listed == {n for n, op in registry.all_ops().items() if op.category not in registry.INTERNAL}
    assert "allreduce_mean" not in listed and "conv2d" in listed
    assert out.splitlines()[0] == "layer" and "  relu" in out


@pytest.mark.parametrize("name", sorted(registry.all_ops()))
def test_ops_page_of_every_op(capsys, name):
    code, out, _ = run(capsys, "ops", name)
    op = registry.get(name)
    assert code == 0 and out.startswith(f"{name}  ({op.category})") and op.formula.splitlines()[0] in out
    for a in op.attrs:
        assert f"  {a.name} " in out
        assert all(str(c) in out for c in a.choices)
    for p in op.params:
        assert f"{name}.{p.name}" in out
    assert "sample rejected" not in out


def test_ops_page_details(capsys):
    out = run(capsys, "ops", "conv2d")[1]
    assert "out        int   required   output channels" in out
    assert "shape:       conv2d(" in out and "-> f64[" in out
    assert "conv2d.bias    role bias    init from `bias_init` (default zeros())" in out
    out = run(capsys, "ops", "cross_entropy")[1]
    assert "labels:      label" in out


def test_ops_initialisers(capsys):
    code, out, _ = run(capsys, "ops", "init")
    assert code == 0 and "kaiming(mode=fan_in (fan_in|fan_out)" in out and "zeros()" in out
    code, out, _ = run(capsys, "ops", "xavier")
    assert code == 0 and len(out.splitlines()) == 2 and out.splitlines()[1].startswith("  xavier(dist=")


def test_lenet5_inspects_at_every_stage(capsys):
    path = MODELS / "lenet5.net"
    if not path.exists():
        pytest.skip("models/lenet5.net is not there yet")
    for stage in STAGES:
        code, out, err = run(capsys, "inspect", path, "--stage", stage)
        assert code == 0, err
        assert "%c1.conv2d : f32[N, 6, 28, 28] = conv2d(" in out


def test_ctrl_c_stops_a_command_started_with_sigint_ignored(tmp_path):
    """A process started with SIGINT ignored (a shell's background job, a test runner's
    worker) passes that on to its children; dslc handles Ctrl-C from its first moment anyway,
    as the trainer does once training begins. Before, a Ctrl-C during start-up was lost and
    the run trained to its end, exit status 0."""
    import signal
    import time
    proc = subprocess.Popen(
        [sys.executable, "-m", "dslc.cli", "train", str(MODELS / "digits_mlp.net"), "--device", "reference",
         "--out", str(tmp_path / "run"), "--quiet", "--epochs", "400"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(0.1)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGINT), err
    assert b"Traceback" not in err


def test_a_ctrl_c_python_wrapped_in_another_error_is_still_ctrl_c(monkeypatch):
    """Python wraps an exception raised in `__set_name__` (NumPy's `finfo` being defined during
    a lazy import) in a RuntimeError: a Ctrl-C landing there exits 130 like any other, while
    an error that no Ctrl-C caused still propagates (a traceback is a dslc bug)."""
    def interrupted(argv):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Error calling __set_name__") from e

    monkeypatch.setattr(cli, "_watched", interrupted)
    assert cli.main(["ops"]) == 130

    def broken(argv):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_watched", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["ops"])


# ---- hostile flags and outputs: compile, export, inspect, explain ------------------------

def _digest(*paths) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def test_compile_refuses_a_warm_up_batch_beyond_memory(capsys, good, tmp_path, monkeypatch):
    """--batch beyond NumPy's largest dimension was a ValueError traceback from the arena's
    allocation; now the warm-up run's memory is asked for first, in a fresh cache (a model
    already built needs no warm-up run at all)."""
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path / "cache"))
    for batch in ("999999999999999999", "1000000000000"):  # beyond int64: a usage error, below
        code, _, err = run(capsys, "compile", good, "--stage", "infer", "--batch", batch)
        assert code == 1 and "the warm-up run of 'tiny'" in err and "available" in err, err


def test_inspect_never_writes_over_a_file_the_model_imports(capsys, tmp_path):
    """-o was compared with the file named on the command line only: a model's imported
    blocks were replaced by its graph."""
    lib = tmp_path / "lib.net"
    lib.write_text("block dense(x, n: int) {\n    return x |> linear(n) |> relu\n}\n")
    main = tmp_path / "main.net"
    main.write_text('import "lib.net"\nmodel m {\n    input x: f32[N, 4]\n    output y = dense(x, 8) |> linear(2)\n}\n')
    before = _digest(lib)
    code, _, err = run(capsys, "inspect", main, "--format", "text", "-o", lib)
    assert code == 2 and "which this command reads" in err and _digest(lib) == before


@pytest.fixture
def saved_mlp(tmp_path):
    """A checkpoint of digits_mlp's fresh weights, as export reads it (weights and recipe)."""
    from dslc.runtime.checkpoint import save_checkpoint
    from dslc.runtime.recipes import model_and_recipe

    model, recipe = model_and_recipe(MODELS / "digits_mlp.net", None, {})
    save_checkpoint(tmp_path / "run" / "best", model.init(0), {}, {"recipe": recipe.to_json()})
    return tmp_path / "run"


def test_export_checks_its_numeric_flags(capsys, tmp_path):
    """A NaN --tolerance passed every --check (no difference is > NaN) and a --batch beyond
    NumPy's largest dimension was a traceback: both are refused, nothing written."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out, mlp = tmp_path / "m.onnx", MODELS / "digits_mlp.net"
    assert run(capsys, "export", mlp, "-o", out, "--check", "--tolerance", "nan")[0] == 2
    assert run(capsys, "export", mlp, "-o", out, "--check", "--batch", "0")[0] == 2
    code, _, err = run(capsys, "export", mlp, "-o", out, "--check", "--batch", "999999999999999999")
    assert code == 1 and "a random batch of 999,999,999,999,999,999" in err and not out.exists()


def test_export_never_writes_over_what_it_reads(capsys, tmp_path, saved_mlp):
    """`export -o` onto the checkpoint's weights (or its state, the run's config.json, the .net
    file) replaced them with the ONNX file: refused, exit 2, every byte kept."""
    pytest.importorskip("onnx")
    net = tmp_path / "m.net"
    net.write_text((MODELS / "digits_mlp.net").read_text())
    best = saved_mlp / "best"
    kept = [best / "weights.safetensors", best / "state.json", net]
    before = _digest(*kept)
    for target in kept:
        code, _, err = run(capsys, "export", net, "--checkpoint", saved_mlp, "-o", target)
        assert code == 2 and "which this command reads" in err, err
    assert _digest(*kept) == before


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """digits_mlp trained two epochs by the NumPy reference (about a second, nothing compiled)."""
    out = tmp_path_factory.mktemp("explain") / "run"
    assert cli.main(["train", str(MODELS / "digits_mlp.net"), "--device", "reference", "--epochs", "2",
                     "--out", str(out), "--quiet"]) == 0
    return out


def _explain(run_dir, method, *flags):
    return ("explain", method, MODELS / "digits_mlp.net", "--checkpoint", run_dir, "--device", "reference",
            "--quiet", *flags)


def test_explain_never_writes_over_the_checkpoint(capsys, tmp_path, mlp_run):
    """--npy onto the checkpoint's weights replaced them with the .npy (and `--npy ./f.png -o
    f.png`, one file spelled two ways, wrote the figure over the numbers)."""
    kept = [mlp_run / "best" / "weights.safetensors", mlp_run / "config.json"]
    before = _digest(*kept)
    for target in kept:
        code, _, err = run(capsys, *_explain(mlp_run, "filters", "-o", tmp_path / "f.png", "--npy", target))
        assert code == 2 and "which this command reads" in err, err
    assert _digest(*kept) == before
    code, _, err = run(capsys, *_explain(mlp_run, "filters", "-o", tmp_path / "f.png",
                                         "--npy", f"{tmp_path}/./f.png"))
    assert code == 2 and "name the same file" in err


@pytest.mark.parametrize("method, flags, message", [
    ("style", ["--index", "0", "--style-index", "1", "--style-layers", ",", "--content-layer", "fc1"],
     "--style-layers ',' names no layer"),  # was a ZeroDivisionError
    ("style", ["--index", "0", "--style-layers", "fc1", "--content-layer", "fc1"],
     "give the style example with one of --style-image"),  # named the content's flags
    ("occlusion", ["--index", "0", "--patch", "2", "--stride", "3"],
     "--stride 3 is larger than --patch 2"),  # a map of NaN between the patches
    ("dream", ["--index", "0", "--layer", "fc1", "--steps", "2", "--octaves", "100000"],
     "--octaves 100000 is more than --steps 2"),  # an OverflowError
    ("dream", ["--index", "0", "--layer", "fc1", "--steps", "200", "--octaves", "100"],
     "at most 5 octaves"),  # an OverflowError
    ("dream", ["--index", "0", "--layer", "fc1", "--steps", "2", "--octave-scale", "1e-300"],
     "the ratio between octaves is at least 1"),  # a grid too large for NumPy
    ("dream", ["--index", "0", "--layer", "fc1", "--steps", "2", "--octave-scale", "1e300"],
     "at most 1 octave"),  # an OverflowError
    ("invert", ["--index", "0", "--layer", "fc1", "--tv", "-1"], "must be a finite number >= 0"),
    ("classviz", ["--class", "3", "--blur-every", "-1"], "must be 0 (never) or more"),  # meant never too
])
def test_explain_refuses_flags_that_cannot_work(capsys, tmp_path, mlp_run, method, flags, message):
    code, _, err = run(capsys, *_explain(mlp_run, method, "-o", tmp_path / "x.png", *flags))
    assert code == 2 and message in err, err
    assert not (tmp_path / "x.png").exists()


def test_explain_penalty_weights_take_zero_however_written():
    from dslc.cli.common import nonnegative

    assert nonnegative("0e0") == 0.0 and nonnegative("0.00") == 0.0 and nonnegative("1e-3") == 1e-3


@pytest.mark.parametrize("flags, why", [
    (["--stage", "infer", "-O", "0", "--after", "fold-batchnorm"], "it runs from -O2, not at -O0"),
    (["--stage", "infer", "-O", "1", "--after", "fuse"], "it runs from -O2, not at -O1"),
    (["--stage", "infer", "--after", "cse", "--disable-pass", "cse"], "--disable-pass leaves it out"),
    (["--stage", "train_step", "--after", "fold-batchnorm"], "it runs on stage infer only, not train_step"),
])
def test_inspect_after_a_pass_that_does_not_run_is_refused(capsys, flags, why):
    """--after a pass that its -O level, --disable-pass or the stage skips printed the graph
    before it, as if after it, without a word."""
    code, out, err = run(capsys, "inspect", MODELS / "small_cnn.net", *flags)
    assert code == 2 and why in err and out == "", err
    assert run(capsys, "inspect", MODELS / "small_cnn.net", "--stage", "infer", "-O", "1", "--after", "cse")[0] == 0


def test_checkpoint_dot_from_inside_it_and_an_empty_checkpoint(capsys, tmp_path, mlp_run, monkeypatch):
    """`--checkpoint .` read from inside the checkpoint was a ValueError traceback (the reader
    names `.NAME.old` from the last component, which `.` lacks); `--checkpoint ''` too, and
    export took '' for no checkpoint and wrote fresh weights."""
    import numpy as np

    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 64), np.float32))
    monkeypatch.chdir(mlp_run / "best")
    code, out, _ = run(capsys, "predict", MODELS / "digits_mlp.net", "--checkpoint", ".", "--input", x,
                       "--device", "reference")
    assert code == 0 and out.startswith("0: ")
    assert run(capsys, "predict", MODELS / "digits_mlp.net", "--checkpoint", "", "--input", x)[0] == 2
    assert run(capsys, "export", MODELS / "digits_mlp.net", "--checkpoint", "", "-o", tmp_path / "m.onnx")[0] == 2
    assert not (tmp_path / "m.onnx").exists()


def test_integer_flags_beyond_int64_are_refused_as_set_refuses_them(capsys, tmp_path):
    """`--set epochs=10**23` was refused (the integer is too large) but `--epochs 10**23` was
    taken: `dslc lr` died in matplotlib with a TypeError traceback, `dslc train` ran forever."""
    big, out = "100000000000000000000000", tmp_path / "lr.png"
    code, _, err = run(capsys, "lr", MODELS / "digits_mlp.net", "--epochs", big, "-o", out)
    assert code == 2 and f"argument --epochs: the integer {big} is too large" in err, err
    assert not out.exists()
    code, _, err = run(capsys, "gradcheck", MODELS / "two_layer.net", "--directions", big)
    assert code == 2 and "argument --directions: the integer" in err, err


def test_a_name_that_is_not_utf8_is_printed_escaped(capsys, tmp_path):
    """A path holding a byte that is not UTF-8 (Python's lone surrogate '\\udcff') printed on
    standard output under a strict UTF-8 locale was a UnicodeEncodeError traceback ("wrote
    ...", "run saved in ..."), after the work was done; it is escaped, as standard error does."""
    out = tmp_path / "l\udcff.png"
    code, printed, _ = run(capsys, "lr", MODELS / "digits_mlp.net", "-o", out)
    assert code == 0 and "l\\udcff.png" in printed and out.stat().st_size
