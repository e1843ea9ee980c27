"""Checkpoints: round trips, every crash state of the atomic save, SIGKILL at random moments,
clear errors for damaged files, model hashes and differences, and RNG streams that resume."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import dslc
from dslc.runtime import checkpoint as C
from dslc.runtime.rng import Streams

MLP = """
model mlp(hidden: int = 16) {{
    input x : f32[N, 8]
    input y : i64[N]
    h = x |> linear(hidden) |> {act}
    logits = h |> linear(3)
    metric accuracy(logits, y)
    loss cross_entropy(logits, y)
}}
"""


def arrays(v: int) -> tuple[dict, dict]:
    weights = {"fc.weight": np.full((4, 3), v, np.float32), "fc.bias": np.arange(3, dtype=np.float64) + v,
               "bn.count": np.asarray(v, np.int64)}
    return weights, {"m/fc.weight": np.full((4, 3), -v, np.float32)}


def save(path, v: int, **state):
    weights, opt = arrays(v)
    return C.save_checkpoint(path, weights, opt, {"step": v, "epoch": v / 10, **state})


def assert_version(ckpt, v: int):
    weights, opt = arrays(v)
    assert ckpt.state["step"] == v
    for mine, theirs in ((ckpt.weights, weights), (ckpt.optimizer, opt)):
        assert mine.keys() == theirs.keys()
        for k in theirs:
            assert mine[k].dtype == theirs[k].dtype and np.array_equal(mine[k], theirs[k]), k


# ---- round trips and the atomic save ---------------------------------------------------------

def test_round_trip_keeps_arrays_dtypes_and_state(tmp_path):
    streams = Streams(7)
    streams["shuffle"].random(5)
    norm = {"mean": np.array([0.1, 0.2, 0.3], np.float32), "std": np.array([1.5, 2.0, 0.7], np.float32)}
    save(tmp_path / "last", 3, rng=streams.state(), normalization=norm, metrics=[{"val_loss": 0.5}],
         optimizer="adam", model_hash="abc")
    ckpt = C.load_checkpoint(tmp_path / "last")
    assert_version(ckpt, 3)
    assert ckpt.weights["bn.count"].shape == ()
    st = ckpt.state
    assert st["epoch"] == 0.3 and st["dslc_version"] == dslc.__version__ and "files" not in st
    assert all(st["normalization"][k].dtype == np.float32 and np.array_equal(st["normalization"][k], norm[k])
               for k in norm)
    assert st["metrics"] == [{"val_loss": 0.5}] and st["optimizer"] == "adam"
    assert sorted(os.listdir(tmp_path)) == ["last"]  # no .tmp or .old left behind


def test_saving_again_replaces_the_checkpoint(tmp_path):
    for v in range(3):
        save(tmp_path / "last", v)
    assert_version(C.load_checkpoint(tmp_path / "last"), 2)
    assert sorted(os.listdir(tmp_path)) == ["last"]


def test_empty_optimizer_state_round_trips(tmp_path):
    C.save_checkpoint(tmp_path / "c", {"w": np.ones(2, np.float32)}, {}, {"step": 0})
    assert C.load_checkpoint(tmp_path / "c").optimizer == {}


def test_reserved_state_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="files"):
        C.save_checkpoint(tmp_path / "c", {}, {}, {"files": 1})


def test_killed_between_the_two_renames_loads_the_old_copy_and_saves_on(tmp_path):
    save(tmp_path / "last", 1)
    save(tmp_path / "next", 2)
    os.rename(tmp_path / "last", tmp_path / ".last.old")  # the crash state: only .old
    os.rename(tmp_path / "next", tmp_path / ".last.tmp")  # and the complete new copy, not yet renamed
    assert_version(C.load_checkpoint(tmp_path / "last"), 1)
    save(tmp_path / "last", 3)
    assert_version(C.load_checkpoint(tmp_path / "last"), 3)
    assert sorted(os.listdir(tmp_path)) == ["last"]


def _saving_while_read(monkeypatch, saves):
    """Make each of the first reads of a weights file run `saves.pop(0)()` first: a trainer
    committing a checkpoint while it is being read."""
    real = C._read_arrays

    def read(file, expected):
        if file.name == C.WEIGHTS and saves:
            saves.pop(0)()
        return real(file, expected)
    monkeypatch.setattr(C, "_read_arrays", read)


def test_a_checkpoint_replaced_while_it_is_read_is_read_again_whole(tmp_path, monkeypatch):
    """A save between reading state.json and the weights gave the new weights under the old
    state.json (a checksum mismatch, "corrupt"); the read is made again on the new one."""
    save(tmp_path / "last", 1)
    _saving_while_read(monkeypatch, [lambda: save(tmp_path / "last", 2)])
    assert_version(C.load_checkpoint(tmp_path / "last"), 2)


def test_reading_the_old_copy_as_a_save_removes_it_reads_the_new_one(tmp_path, monkeypatch):
    """Found as `.last.old` (a save between its two renames), then the save completes and
    removes it mid-read: read again at `last`."""
    save(tmp_path / "last", 1)
    save(tmp_path / "next", 2)
    os.rename(tmp_path / "last", tmp_path / ".last.old")

    def finish():
        os.rename(tmp_path / "next", tmp_path / "last")
        shutil.rmtree(tmp_path / ".last.old")
    _saving_while_read(monkeypatch, [finish])
    assert_version(C.load_checkpoint(tmp_path / "last"), 2)


def test_a_damaged_checkpoint_is_read_once_and_one_replaced_at_every_read_is_given_up(tmp_path, monkeypatch):
    path = save(tmp_path / "last", 1)
    (path / C.OPTIMIZER).unlink()
    reads = []
    real = C._read_state
    monkeypatch.setattr(C, "_read_state", lambda file: reads.append(file) or real(file))
    with pytest.raises(C.CheckpointError, match="optimizer.safetensors: missing"):
        C.load_checkpoint(path)
    assert len(reads) == 1  # the same directory: what is on disk, reported at once
    save(path, 2)
    _saving_while_read(monkeypatch, [lambda v=v: save(path, v) for v in range(3, 3 + C.READS)])
    with pytest.raises(C.CheckpointError, match="weights.safetensors: corrupt or truncated"):
        C.load_checkpoint(path)
    assert len(reads) == 1 + C.READS


def test_leftover_tmp_and_old_beside_a_complete_checkpoint_are_ignored_then_cleared(tmp_path):
    save(tmp_path / "last", 1)
    (tmp_path / ".last.tmp").mkdir()
    (tmp_path / ".last.tmp" / "weights.safetensors").write_bytes(b"half a fi")
    save(tmp_path / "old", 0)
    os.rename(tmp_path / "old", tmp_path / ".last.old")
    assert_version(C.load_checkpoint(tmp_path / "last"), 1)
    save(tmp_path / "last", 2)
    assert sorted(os.listdir(tmp_path)) == ["last"]


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from dslc.runtime.checkpoint import save_checkpoint
    path, v = sys.argv[1], int(sys.argv[2])
    while True:  # ~2 MB per version so a kill often lands mid-write
        w = {"a": np.full((512, 512), v, np.float32), "b": np.full(7, v, np.int64)}
        save_checkpoint(path, w, {"m": np.full((512, 512), -v, np.float32)}, {"step": v, "s": np.full(3, v)})
        print(v, flush=True)
        v += 1
""")


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_loadable_checkpoint(tmp_path):
    script, path = tmp_path / "writer.py", tmp_path / "run" / "last"
    script.write_text(WRITER)
    rnd, start, deadline = random.Random(0), 0, time.monotonic() + 30
    for _ in range(8):
        if time.monotonic() > deadline:
            break
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(start)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_WAIT_POLICY": "passive"})
        first = int(proc.stdout.readline())  # one complete save of this writer
        time.sleep(rnd.uniform(0, 0.2))
        proc.send_signal(signal.SIGKILL)
        printed = [first] + [int(x) for x in proc.stdout.read().split()]
        proc.wait()
        ckpt = C.load_checkpoint(path)
        step = ckpt.state["step"]
        # the last save reported done, or the one after it if it finished renaming before the print
        assert printed[-1] <= step <= printed[-1] + 1
        assert np.all(ckpt.weights["a"] == step) and np.all(ckpt.weights["b"] == step)
        assert np.all(ckpt.optimizer["m"] == -step) and list(ckpt.state["s"]) == [step] * 3
        start = step + 1  # the next writer starts from whatever crash state this one left


# ---- errors that name the file ---------------------------------------------------------------

def test_missing_checkpoint_and_run_directory_hint(tmp_path):
    with pytest.raises(C.CheckpointError, match="no checkpoint there"):
        C.load_checkpoint(tmp_path / "nope")
    save(tmp_path / "run" / "last", 1)
    with pytest.raises(C.CheckpointError, match=r"run is a run directory; its checkpoints are .*run/last and"):
        C.load_checkpoint(tmp_path / "run")
    with pytest.raises(C.CheckpointError, match="run/best: no checkpoint there"):
        C.load_checkpoint(tmp_path / "run" / "best")


def test_a_directory_of_runs_or_of_anything_else_is_not_called_an_incomplete_checkpoint(tmp_path):
    """`init = checkpoint("runs")` named the directory `dslc train --out runs/NAME` fills, and
    was told "runs/state.json: missing; the checkpoint is incomplete", as if a save had lost
    a file: it now lists the runs there, and any other directory is no checkpoint."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.CheckpointError, match=r"empty: not a checkpoint directory \(no state.json, "):
        C.load_checkpoint(tmp_path / "empty")
    for name in ("b", "a", "c", "d"):
        save(tmp_path / "runs" / name / "last", 1)
    (tmp_path / "runs" / "notes").mkdir()
    with pytest.raises(C.CheckpointError, match=r"runs holds runs, not a checkpoint: a, b, c and 1 more; name "
                                                r"one, e.g. .*runs/a \(its best checkpoint, else its last\)"):
        C.load_checkpoint(tmp_path / "runs")
    path = save(tmp_path / "c", 1)
    (path / "state.json").unlink()  # a checkpoint that lost a file is still said to be incomplete
    with pytest.raises(C.CheckpointError, match=r"state.json: missing; the checkpoint is incomplete"):
        C.load_checkpoint(path)


@pytest.mark.parametrize("name", ["state.json", "weights.safetensors", "optimizer.safetensors"])
def test_missing_file_is_named(tmp_path, name):
    path = save(tmp_path / "c", 1)
    (path / name).unlink()
    with pytest.raises(C.CheckpointError, match=rf"{name}: missing"):
        C.load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_safetensors_is_named(tmp_path, damage):
    path = save(tmp_path / "c", 1)
    file = path / "weights.safetensors"
    data = bytearray(file.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:
        data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(C.CheckpointError, match=r"weights.safetensors: corrupt or truncated"):
        C.load_checkpoint(path)


def test_invalid_safetensors_with_matching_checksum_is_named(tmp_path):
    """A file that someone rewrote along with its checksum still has to parse as safetensors."""
    path = save(tmp_path / "c", 1)
    garbage = b"\xff" * 64
    (path / "optimizer.safetensors").write_bytes(garbage)
    state = json.loads((path / "state.json").read_text())
    state["files"]["optimizer.safetensors"] = {"sha256": C.hashlib.sha256(garbage).hexdigest(), "bytes": 64}
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(C.CheckpointError, match="optimizer.safetensors: not a valid safetensors file"):
        C.load_checkpoint(path)


@pytest.mark.parametrize("text, message", [
    ('{"format": 1, "files": {', r"state.json: bad JSON at line 1"),
    ('[1, 2]', r"state.json: not a dslc checkpoint state"),
    ('{"format": 99, "files": {}}', r"state.json: checkpoint format 99"),
    ('{"format": 1, "files": {}, "x": {"__ndarray__": {"dtype": "|O", "shape": [1], "data": [1]}}}',
     r"state.json: bad array entry"),
])
def test_bad_state_json_is_named(tmp_path, text, message):
    path = save(tmp_path / "c", 1)
    (path / "state.json").write_text(text)
    with pytest.raises(C.CheckpointError, match=message):
        C.load_checkpoint(path)


# ---- model identity ----------------------------------------------------------------------------

@pytest.fixture
def model(net):
    """model(act="relu", comment="", **overrides) -> a loaded mlp."""
    def load(act: str = "relu", comment: str = "", **overrides):
        return dslc.load(net(comment + MLP.format(act=act), name=f"m_{act}_{len(comment)}.net"), **overrides)
    return load


def snapshot(tmp_path, m, optimizer="sgd"):
    path = C.save_checkpoint(tmp_path / "c", m.init(seed=0), {}, {"model_hash": C.model_hash(m.graph),
                                                                    "optimizer": optimizer})
    return C.load_checkpoint(path)


def test_model_hash_ignores_source_positions_but_not_structure(model):
    base = C.model_hash(model().graph)
    assert base == C.model_hash(model(comment="# a comment\n\n\n").graph)
    assert base != C.model_hash(model(act="tanh").graph)
    assert base != C.model_hash(model(hidden=32).graph)


def test_compare_same_model_has_no_differences(tmp_path, model):
    assert C.compare(snapshot(tmp_path, model()), model().graph, "sgd") == []


def test_compare_lists_shape_optimizer_and_structure_changes(tmp_path, model):
    ckpt = snapshot(tmp_path, model())
    diffs = C.compare(ckpt, model(hidden=32).graph, "adam")
    shapes = {d.name: str(d) for d in diffs if d.kind == "shape"}
    assert set(shapes) == {"linear.weight", "linear.bias", "linear_1.weight"}, diffs
    assert "checkpoint has shape [8, 16], model [8, 32]" in shapes["linear.weight"]
    assert [str(d) for d in diffs if d.kind == "optimizer"] == [
        "optimizer: checkpoint was trained with sgd, recipe uses adam"]
    assert [d.kind for d in C.compare(ckpt, model(act="tanh").graph)] == ["structure"]


def test_compare_lists_missing_extra_and_dtype(tmp_path, model):
    ckpt = snapshot(tmp_path, model())
    ckpt.weights["stray"] = ckpt.weights.pop("linear.bias").astype(np.float64)
    ckpt.weights["linear.weight"] = ckpt.weights["linear.weight"].astype(np.float64)
    diffs = {(d.kind, d.name) for d in C.compare(ckpt, model().graph)}
    assert diffs == {("missing", "linear.bias"), ("extra", "stray"), ("dtype", "linear.weight")}


# ---- random streams survive a checkpoint --------------------------------------------------------

def test_rng_streams_resume_exactly_through_a_checkpoint(tmp_path):
    streams = Streams(42)
    streams["shuffle"].permutation(10)
    streams["augment"].random(3)
    C.save_checkpoint(tmp_path / "c", {}, {}, {"rng": streams.state()})
    resumed = Streams.restore(42, C.load_checkpoint(tmp_path / "c").state["rng"])
    for name in ("shuffle", "augment", "dropout"):  # dropout was never used: starts fresh in both
        assert np.array_equal(streams[name].random(5), resumed[name].random(5)), name


def test_rng_streams_are_independent_and_stable():
    a, b = Streams(1), Streams(1)
    b["augment"].random(100)  # using one stream leaves the others untouched
    assert np.array_equal(a["shuffle"].random(4), b["shuffle"].random(4))
    assert not np.array_equal(Streams(1)["shuffle"].random(4), Streams(1)["init"].random(4))
    with pytest.raises(ValueError, match="unknown bit generator"):
        Streams.restore(1, {"x": {"bit_generator": "os.system"}})


def test_a_checkpoint_is_found_from_inside_it(tmp_path, monkeypatch):
    """`.` (a checkpoint named from inside its directory) is found and read as its absolute
    path; `/` is no checkpoint. Both used to end in a ValueError from Path.with_name."""
    from dslc.runtime.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint
    where = save_checkpoint(tmp_path / "best", {"w": np.ones(3, np.float32)}, {}, {"epoch": 1})
    monkeypatch.chdir(where)
    assert find_checkpoint(".").resolve() == where.resolve()
    np.testing.assert_array_equal(load_checkpoint(".").weights["w"], np.ones(3, np.float32))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        find_checkpoint("/")
