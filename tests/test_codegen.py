"""The code generator's text and the cache around it: deterministic, readable, keyed soundly.

Numerics live in tests/test_numba_backend.py; here: byte-identical regeneration, names
and headers that point back at the .net source, the scalar table covering every
elementwise op, the cache (DSLC_CACHE, never rewriting a file), `dslc compile`,
NUMBA_DISABLE_JIT, and the trainer's executor adapter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dslc
from dslc.cli import main
from dslc.codegen import cache
from dslc.codegen.numba_cpu import generate
from dslc.codegen.scalar import SCALAR, expression
from dslc.codegen.source import Namer, Source, identifier
from dslc.kernels import lower
from dslc.ops import registry
from dslc.passes.pipeline import optimize
from dslc.stages import build
from helpers import MODELS, ROOT, arrays


def kernel_graph(model="small_cnn.net", stage="train_step", **overrides):
    return lower(optimize(build(dslc.load(MODELS / model, **overrides), stage))[0])


def test_generation_is_deterministic():
    a = generate(kernel_graph())
    b = generate(kernel_graph())  # a fresh load, parse and lowering
    assert a == b
    compile(a, "generated", "exec")  # valid Python


def test_kernels_are_named_after_layers_with_headers_pointing_at_the_source():
    src = generate(kernel_graph())
    assert "def k_stage1_conv_bn_relu_sweep(" in src
    assert "def k_update_adam_step(" in src
    header = src[src.index("# ---- kernel 1: stage1.conv_bn_relu.sweep"):src.index("def k_stage1_conv_bn_relu_sweep")]
    assert "batchnorm" in header and "relu" in header and "small_cnn.net:14" in header
    assert "# out: linear, small_cnn.net:25" in src  # library calls are labelled too
    assert "FALLBACK = ()" in src


def test_a_source_name_that_is_not_utf8_is_escaped_in_the_headers(tmp_path, monkeypatch):
    """A .net file whose name holds a byte that is not UTF-8 (Python's lone surrogate) put
    that surrogate into the kernel headers: the cache key's encode() failed, a traceback at
    `dslc train` and `dslc compile` of such a file."""
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path / "cache"))
    net = tmp_path / "m\udcff.net"
    net.write_bytes((MODELS / "two_layer.net").read_bytes())
    kg = lower(optimize(build(dslc.load(net), "train_step"))[0])
    src = generate(kg)
    assert "m\\udcff.net:" in src and src.isascii()
    assert cache.path_for(kg, src).name.startswith("two_layer_train_step_")


def test_a_relu_after_a_convolution_or_linear_layer_is_applied_by_its_library_call():
    """An epilogue whose whole tail is a relu is the library call with its relu flag
    (externs.RELU_LAST): no generated pass over the output. Compiled results against the
    reference: test_api.py, test_numba_backend.py."""
    src = generate(kernel_graph(stage="infer"))
    calls = {line.split("(")[0].strip(): line.rstrip() for line in src.splitlines() if "_forward(" in line}
    assert calls["strided.conv2d_forward"].endswith("workspace, True)")
    assert calls["winograd.conv2d_forward"].endswith("workspace, True)")
    assert "fc_relu_, True)" in src and "out_, False)" in src  # fc's relu; the logits have none
    assert "def k_stage1_conv_bn_relu_relu(" not in src and "def k_fc_relu(" not in src
    assert "16 kernels: 6 generated, 7 library calls" in src  # the header counts them as library calls


def test_winograd_filters_are_transformed_once_per_load_where_they_never_change():
    """A Winograd pass reads a table of its transformed filters (winograd.transform_weights),
    filled by the prologue where the filters depend only on parameters no step updates (at
    inference, batchnorm folded into them), and by the step itself, before the pass, where
    each step changes them (training)."""
    def drivers(stage):
        src = generate(kernel_graph(stage=stage))
        prologue, step = src.split("\ndef prologue(")[1].split("\ndef step(")
        return prologue, step
    prologue, step = drivers("infer")
    assert "winograd.transform_weights(stage2_conv_bn_relu_batchnorm_folded_weight_, " in prologue
    assert "transform_weights" not in step
    prologue, step = drivers("train_step")
    assert "transform_weights" not in prologue
    order = [step.index(call) for call in ("transform_weights(stage2_conv_bn_relu_conv2d_weight_, stage2", "winograd.conv2d_forward(",
                                           "transform_weights(stage2_conv_bn_relu_conv2d_weight_, grad", "winograd.conv2d_grad_input(")]
    assert order == sorted(order)


def test_a_batchnorm_folded_into_a_convolution_is_one_run_per_output_channel():
    """[O, C, 3, 3] * [O, 1, 1, 1] as loops over [O, C*9] (numba_loops' rows form): the inner
    loop is a run that vectorises, not nd's innermost axis of 3."""
    src = generate(kernel_graph(stage="infer"))
    fold = src[src.index("def k_stage2_conv_bn_relu_batchnorm_folded_weight("):]
    fold = fold[:fold.index("\n\n")]
    assert "for i1 in range(" in fold and "for i2" not in fold and "_r_[i0, i1]" in fold and "_f_[i0]" in fold


def test_identifiers_are_valid_stable_and_unique():
    assert identifier("stage1.conv_bn_relu.conv2d") == "stage1_conv_bn_relu_conv2d"
    assert identifier("1x.y") == "_1x_y" and identifier("class") == "_class"
    names = Namer()  # a model's names end in `_` (the generators' own words never do), kernels start with k_
    assert [names.get(k) for k in ("a.b", "a_b", "np", "a.b", "1x", "a__b.")] == [
        "a_b_", "a_b_1_", "np_", "a_b_", "_1x_", "a_b_2_"]
    assert names.kernel("a.b") == "k_a_b" and names.kernel("a_b") == "k_a_b_1" and names.fresh("i") == "i_"


def test_source_wraps_long_calls_under_their_first_argument():
    src = Source()
    with src.block("def f():"):
        src.line(src.wrapped("call(", [f"argument_{k}" for k in range(20)], ")", width=60))
    lines = src.text().splitlines()
    assert all(len(line) <= 60 for line in lines)
    assert lines[2].startswith(" " * len("    call("))


def test_every_elementwise_and_optimizer_op_has_a_scalar_expression():
    """Fails when an op that fusion or the update groups can put in a loop lacks one."""
    ops = registry.all_ops()
    needed = {n for n, op in ops.items() if op.elementwise is not None or op.category == "optimizer"}
    assert needed <= set(SCALAR), f"no scalar expression for {sorted(needed - set(SCALAR))}"
    assert expression("moving_average", ["m", "g"], {"decay": 0.9, "square": True}) == \
        "0.9 * m + (1.0 - 0.9) * (g * g)"


def test_cache_writes_once_and_keys_on_the_graph(tmp_path, monkeypatch):
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path / "cache"))
    kg = kernel_graph("two_layer.net", hidden=8)
    src = generate(kg)
    module, path = cache.load(kg, src)
    assert path.parent == tmp_path / "cache" and path.read_text() == src
    stamp = path.stat().st_mtime_ns
    again, path2 = cache.load(kg, src)
    assert path2 == path and path.stat().st_mtime_ns == stamp and again is module
    other = kernel_graph("two_layer.net", hidden=9)
    assert cache.path_for(other, generate(other)) != path


def test_a_damaged_cached_module_is_written_again(tmp_path, monkeypatch):
    """A generated module cut short (a full disk, a crash before its data reached the disk)
    was imported as it was on every later run: an AttributeError traceback for ever. A file
    whose bytes are not the source its name promises is replaced; an intact one is left as it is."""
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path / "cache"))
    kg = kernel_graph("two_layer.net", hidden=8)
    src = generate(kg)
    path = cache.store(kg, src)
    path.write_text(src[: len(src) // 3])
    assert cache.store(kg, src) == path and path.read_text() == src
    stamp = path.stat().st_mtime_ns
    cache.store(kg, src)
    assert path.stat().st_mtime_ns == stamp


def test_a_file_in_the_way_of_the_caches_folders_is_a_usage_error(tmp_path, monkeypatch):
    """A file where the cache keeps its kernels was a FileExistsError traceback; it is a
    CliError naming the path. Where build notes cannot be written (a file in the way of
    `built/`, a read-only cache) none is: a traceback, or `dslc compile` printing its result
    and then exiting 1, for a note that only spares later work."""
    from dslc.codegen import shared
    from dslc.diagnostics import CliError
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "kernels").write_text("not a folder")
    with pytest.raises(CliError, match="kernels: a file of that name is in the way; set DSLC_CACHE"):
        shared.store(shared.canonical("def f(a):\n    return a\n"))
    (tmp_path / "cache" / "built").write_text("not a folder")
    cache.write_built(("dslc.runtime.cpu.pool", "f"), ("int",), str(tmp_path / "f.nbi"))
    cache.write_record(cache.record_path({"file": "x.net"}), [], [], [])
    assert (tmp_path / "cache" / "built").read_text() == "not a folder"


def test_a_damaged_build_note_means_not_built(tmp_path, monkeypatch):
    """A build record or built-kernel marker that is not what dslc writes (garbage bytes, JSON
    of another shape) was a UnicodeDecodeError or TypeError traceback from `dslc compile`; it
    now reads as absent: the request is compiled and the note written again."""
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path / "cache"))
    where, types = ("dslc.runtime.cpu.pool", "f"), ("int",)
    cache.write_built(where, types, str(tmp_path / "f.nbi"))
    cache._built_path(where, types).write_bytes(b"\xff\xfe garbage")
    assert cache.built_index(where, types) is None
    record = cache.record_path({"file": "x.net"})
    for junk in ("[]", '{"inputs": 3}', "null", '{"inputs": {}, "artefacts": [1]}'):
        cache.write_record(record, [], [], [])
        record.write_text(junk)
        assert cache.read_record(record) is None


def test_compile_emits_identical_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path / "cache"))
    for out in ("a", "b"):
        assert main(["compile", str(MODELS / "mlp_bn.net"), "--set", "h1=16", "--set", "h2=8",
                     "--emit", str(tmp_path / out), "--no-build"]) == 0
    for stage in ("train_step", "infer"):
        a = (tmp_path / "a" / f"mlp_bn_{stage}.py").read_bytes()
        assert a == (tmp_path / "b" / f"mlp_bn_{stage}.py").read_bytes()
    assert "mlp_bn train_step:" in capsys.readouterr().out


@pytest.mark.parametrize("flags,said", [(["--emit", ""], "--emit: give the directory"),
                                         (["--arch", "sm_90"], "--arch sm_90: the nvcc architecture of --target gpu")])
def test_compile_flags_that_would_do_nothing_are_refused(flags, said, tmp_path, capsys, monkeypatch):
    """`--emit ''` emitted nothing and `--arch` with the CPU target was ignored, each without a
    word: now a usage error (exit 2) before anything is generated."""
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path / "cache"))
    assert main(["compile", str(MODELS / "mlp_bn.net"), "--no-build", *flags]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_compile_again_is_answered_from_the_build_record(tmp_path, capsys, monkeypatch):
    """A second compile of an unchanged model finds its kernels built; so does an edit, or new
    widths, that leave every kernel's text as it was (the kernels are shared); a deleted Numba
    cache file of a kernel makes it build again."""
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path / "cache"))
    net = tmp_path / "two_layer.net"
    net.write_text((MODELS / "two_layer.net").read_text())

    def run(*sets: str) -> str:
        assert main(["compile", str(net), "--stage", "train_step", *sets]) == 0
        return capsys.readouterr().out

    assert "built already" not in run("--set", "hidden=5")
    assert "built already" in run("--set", "hidden=5")
    record = next((tmp_path / "cache" / "built").glob("*.json"))
    artefacts = json.loads(record.read_text())["artefacts"]
    assert any(a.endswith(".nbi") for a in artefacts) and any("/kernels/k_" in a for a in artefacts)
    net.write_text(net.read_text() + "\n# an edit\n")
    assert "built already" in run("--set", "hidden=5")
    assert "built already" in run("--set", "hidden=7")
    for index in artefacts:  # Numba's index files of the shared kernels, wherever NUMBA_CACHE_DIR puts them
        if index.endswith(".nbi") and Path(index).name.startswith("k_"):
            Path(index).unlink()
    assert "built already" not in run("--set", "hidden=9")
    assert "built already" in run("--set", "hidden=9")


SCRIPT = """
import numpy as np, dslc
from dslc import reference
from dslc.runtime.cpu.runner import compile_graph
from dslc.stages import build
from helpers import arrays
graph = build(dslc.load("models/two_layer.net", hidden=6), "train_step")
feeds, params, _ = arrays(graph, 3)
want = reference.run_outputs(graph, feeds, params)
got = compile_graph(graph, 3).run(feeds, params)
assert all(np.allclose(got[k], w, rtol=1e-4, atol=1e-6) for k, w in want.items())
import numba
print("ok", numba.config.DISABLE_JIT)
"""


def test_generated_code_runs_as_plain_python_without_the_jit(tmp_path):
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", DSLC_CACHE=str(tmp_path), PYTHONPATH=str(ROOT / "tests"))
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", "1"]


def test_executor_adapter_updates_params_in_place():
    from dslc.runtime.cpu.executor import NumbaExecutor
    graph = build(dslc.load(MODELS / "two_layer.net", hidden=6), "train_step")
    feeds, params, _ = arrays(graph, 4)
    expected = dslc.reference.run_outputs(graph, feeds, params)
    step = NumbaExecutor().compile(graph)
    out = step(feeds, params)
    assert set(out) == {o.name for o in graph.outputs if o.kind not in ("param", "state")}
    for o in graph.outputs:
        got = params[o.name] if o.kind in ("param", "state") else out[o.name]
        np.testing.assert_allclose(got, expected[o.kind, o.name], rtol=1e-4, atol=1e-6)
    first = {k: v for k, v in params.items()}
    step(feeds, params)  # the arena's arrays came back: nothing is copied, nothing re-bound
    assert all(params[k] is v for k, v in first.items() if k in {o.name for o in graph.outputs})
    with pytest.raises(ValueError, match=r"input .x.: expected f32\[N, 64\], got shape \(4, 3\)"):
        step({**feeds, "x": np.zeros((4, 3), np.float32)}, params)
