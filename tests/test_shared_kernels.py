"""Kernels generic in their sizes, shared by every layer, model and width with the same text.

The Numba generator's kernels take views the runner shapes once (never a `reshape`, whose
error path costs Numba seconds to compile), so a kernel's text depends on its loops' form
only; its canonical text (shared.canonical: names by position) keys one compiled copy.
The drivers' calls are planned with their argument types before the first step
(numba_cpu.driver_calls), compiled ahead (runtime/cpu/build.py), and a `dslc compile`
whose kernels are all built answers without Numba.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

import dslc
from dslc.codegen import shared
from dslc.codegen.numba_cpu import driver_calls, generate_with
from dslc.kernels import lower
from dslc.passes.pipeline import optimize
from dslc.stages import build
from helpers import MODELS, ROOT


def generated(name: str, stage: str = "train_step", **sizes):
    return generate_with(lower(optimize(build(dslc.load(MODELS / f"{name}.net", **sizes), stage))[0]))


def kernel_texts(name: str, stage: str = "train_step", **sizes) -> set[str]:
    gen, _ = generated(name, stage, **sizes)
    return {shared.canonical(unit) for unit in gen.units.values()}


def test_canonical_text_names_by_position_and_drops_comments():
    unit = '''@njit(cache=True)
def k_fc_relu(fc_linear_f, fc_relu_f):
    # the layer's comment
    for i in range(fc_relu_f.size):
        linear = fc_linear_f[i]
        fc_relu_f[i] = max(linear, 0.0)
'''
    text = shared.canonical(unit)
    assert "fc" not in text and "#" not in text and "def kernel(a0, a1):" in text
    assert "v1 = a0[v0]" in text and "max(v1, 0.0)" in text  # globals (max, range) keep their names


@pytest.mark.parametrize("name,other", [("small_cnn", dict(width=40, hidden=96)), ("mlp_bn", dict(h1=100, h2=30)),
                                        ("cifar_cnn", dict(width=24, hidden=200))])
def test_a_size_change_needs_no_new_kernel(name, other):
    assert kernel_texts(name, **other) == kernel_texts(name)


def test_layers_of_one_kind_share_a_kernel():
    gen, _ = generated("small_cnn")
    sweeps = [shared.canonical(gen.units[f"k_{stage}_conv_bn_relu_sweep"]) for stage in ("stage1", "stage2")]
    assert sweeps[0] == sweeps[1]
    assert len({shared.canonical(u) for u in gen.units.values()}) < len(gen.units)


def test_every_generated_kernel_runs_its_shared_copy_and_never_reshapes():
    for path in sorted(MODELS.glob("*.net")):
        for stage in ("train_step", "infer"):
            gen, source = generated(path.stem, stage)
            called = {line[0] for lines in gen.calls.values() for line in lines if isinstance(line, tuple)}
            assert called <= set(gen.units), f"{path.stem} {stage}: {called - set(gen.units)} not shared"
            assert not any(".reshape(" in unit for unit in gen.units.values()), f"{path.stem} {stage}"


def test_the_planned_signatures_are_the_ones_a_step_calls(monkeypatch, tmp_path):
    """After a step, each function the drivers call was compiled exactly for the argument
    types driver_calls planned: nothing compiled at the first call that the build missed."""
    from dslc.runtime.cpu.build import _function, _signature
    from dslc.runtime.cpu.runner import compile_graph
    from helpers import arrays
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path))
    graph = build(dslc.load(MODELS / "small_cnn.net", width=3, hidden=8), "train_step")
    feeds, params, _ = arrays(graph, 2)
    cg = compile_graph(graph, 2)
    cg.run(feeds, params)
    gen, _ = generate_with(cg.kg)
    for where, types in driver_calls(gen):
        fn = _function(where)
        assert _signature(types, fn) in fn.overloads, where
        if not where[0].startswith("dslc."):  # a generated kernel: this one signature only
            assert list(fn.overloads) == [_signature(types, fn)], where


def test_compile_of_a_model_whose_kernels_are_built_loads_no_numba(tmp_path):
    """The second width needs nothing compiled: `dslc compile` checks its kernels' build
    notes and never imports Numba (a size change answers in well under a second)."""
    env_code = ("import sys\nfrom dslc.cli import main\n"
                f"assert main(['compile', {str(MODELS / 'two_layer.net')!r}, '--stage', 'train_step', '--set', "
                "'hidden=' + sys.argv[1]]) == 0\nprint('numba' in sys.modules)\n")
    env = {**__import__("os").environ, "DSLC_CACHE": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", env_code, "5"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run([sys.executable, "-c", env_code, "7"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "built already" in again.stdout and again.stdout.split()[-1] == "False"


def test_kernels_compile_in_worker_processes_and_say_so(monkeypatch, tmp_path, capsys):
    """With a worker allowed, the kernels missing from a fresh cache compile in two
    processes; progress says how many and how many came from the cache; all end cached."""
    from dslc.runtime.cpu import build as builder
    from dslc.runtime.cpu.runner import load_kernels
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path))
    monkeypatch.setenv("DSLC_COMPILE_WORKERS", "1")
    monkeypatch.setattr(builder, "SPAWN_WORTH", 0.0)
    # kernels an earlier test of this process compiled are in memory whatever the cache:
    # forget them, so that the generated ones load afresh from the new cache's files
    shared.module.cache_clear()
    for name in [m for m in sys.modules if m.startswith("dslc_kernel_")]:
        monkeypatch.delitem(sys.modules, name)
    kg = lower(optimize(build(dslc.load(MODELS / "two_layer.net", hidden=3), "train_step"))[0])
    loaded = load_kernels(kg)
    report = loaded.build
    assert report.processes == 2 and report.compiled >= 2 and report.compiled + report.cached == report.calls
    err = capsys.readouterr().err
    assert f"compiled {report.compiled} kernels ({report.cached} from the cache)" in err
    again = builder.build(loaded.gen, "again")
    assert (again.compiled, again.cached) == (0, report.calls)


def test_a_worker_never_runs_the_callers_script_again(tmp_path):
    """A script with no `if __name__ == "__main__"` guard that compiles with a worker runs
    once: workers are fresh interpreters, not re-imports of the caller's main module."""
    script = tmp_path / "script.py"
    runs = tmp_path / "runs.txt"
    script.write_text(f"""
import dslc
from dslc.runtime.cpu import build
from dslc.runtime.cpu.runner import compile_graph
from dslc.stages import build as stage
open({str(runs)!r}, "a").write("ran\\n")
build.SPAWN_WORTH = 0.0
cg = compile_graph(stage(dslc.load({str(MODELS / 'two_layer.net')!r}, hidden=4), "infer"), 2)
assert cg.kernels
""")
    env = {**__import__("os").environ, "DSLC_CACHE": str(tmp_path / "cache"), "DSLC_COMPILE_WORKERS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert runs.read_text() == "ran\n" and "compiled" in done.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_that_asks_to_dies_with_its_parent(tmp_path):
    """parent_death.die_with_parent: a child of a SIGKILLed process ends at once (a compile
    worker went on with its unit for 25 s), and one whose parent has already changed exits."""
    child = ("import sys, time; from dslc.runtime.parent_death import die_with_parent; "
             "die_with_parent(int(sys.argv[1])); print('ready', flush=True); time.sleep(120)")
    middle = tmp_path / "middle.py"
    middle.write_text(f"""
import os, subprocess, sys, time
proc = subprocess.Popen([sys.executable, "-c", {child!r}, str(os.getpid())], stdout=subprocess.PIPE, text=True)
assert proc.stdout.readline() == "ready\\n"
print(proc.pid, flush=True)
time.sleep(120)
""")
    parent = subprocess.Popen([sys.executable, str(middle)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    # a compile worker told a parent that is not its own (pid 1) exits before it reads a unit
    worker = subprocess.run([sys.executable, "-m", "dslc.runtime.cpu.build", "1"], input="", cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == 1 and worker.stdout == ""


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie waiting for init to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("module", ["pool", "strided", "dropout_masks", "gemm"])
def test_importing_any_kernel_module_first_drops_the_packages_stale_cached_kernels(module, tmp_path):
    """A cached kernel inlines helpers from other files (lanes.py, blas.py, philox.py), which
    Numba does not check: runtime/cpu/kernel_cache.py drops the package's cached kernels when
    a source changed, whichever module a script imports first. Here a stale stamp and a
    cached file of pool.py must be gone after importing one module alone."""
    import os
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    script = f"import dslc.runtime.cpu.{module}"
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True)
    stamp = next(tmp_path.rglob("dslc-sources.sha256"))
    stamp.write_text("an older source tree")
    cached = stamp.parent / "pool._maxpool_2x2_forward-56.py311.nbi"
    cached.write_text("stale")
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True)
    assert not cached.exists() and stamp.read_text() != "an older source tree"


def test_a_damaged_shared_kernel_file_is_written_again(tmp_path, monkeypatch):
    """A shared kernel file cut short was imported as it was by every later run (a
    SyntaxError, or a module without `kernel`): one whose bytes differ from its text is replaced."""
    monkeypatch.setenv("DSLC_CACHE", str(tmp_path))
    text = shared.canonical("def f(a, b):\n    b[0] = a[0] + 1.0\n")
    path = shared.store(text)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    assert shared.store(text) == path and path.read_bytes() == whole
    assert callable(shared.load(text))


def test_a_truncated_numba_cache_file_is_compiled_again(tmp_path):
    """Numba unpickles its index (.nbi) and data (.nbc) files unguarded: one cut short was an
    UnpicklingError on every later run (here at few_rows.py's import, which compiles its
    cfuncs). kernel_cache.py makes such a file a cache miss, rewritten by the compile."""
    import os
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    script = "import dslc.runtime.cpu.few_rows"
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True)
    files = [*tmp_path.rglob("few_rows.*.nbi"), *tmp_path.rglob("few_rows.*.nbc")]
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:20])
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(f.stat().st_size > 20 for f in files)


def test_numba_saves_into_one_cache_one_process_at_a_time(tmp_path):
    """Numba's save picks the first data file name its index does not list: two processes
    saving two signatures of one function at once both took `.1.nbc`, and a later run loaded
    one's machine code for the other's types ("can't unbox array"). kernel_cache.py holds an
    exclusive lock on `<index>.lock` while saving: another process's lock is refused then."""
    import fcntl
    import os

    import numpy as np
    from numba.core.caching import IndexDataCacheFile

    from dslc.runtime.cpu import kernel_cache  # noqa: F401
    (tmp_path / "fmod.py").write_text("from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    refused = []
    save_data = IndexDataCacheFile._save_data

    def probe(self, name, data):
        fd = os.open(self._index_path + ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            refused.append(name)
        finally:
            os.close(fd)
        return save_data(self, name, data)

    try:
        IndexDataCacheFile._save_data = probe
        import fmod
        fmod.f(np.zeros(2))
    finally:
        IndexDataCacheFile._save_data = save_data
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fmod", None)
    assert refused
