"""Data-parallel `dslc train` over real MPI ranks (mpiexec -n 2 on this machine): the final
weights of N ranks at B/N examples each equal one process at batch B, with and without
synchronised batchnorm; allreduce time and bytes in the DSLC_DEBUG=2 table; a killed rank
stops the run with its last checkpoint intact; Ctrl-C and a failed start stop every rank
with one message; a resume with another number of ranks continues the same data order.
Skipped without the `mpi` extra (mpi4py and an MPI with its mpiexec)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from dslc.runtime.checkpoint import load_checkpoint
from helpers import MODELS, mnist_from_digits

pytest.importorskip("mpi4py", reason="the `mpi` extra (mpi4py) is not installed")
MPIEXEC = next((str(p) for p in (Path(sys.executable).parent / "mpiexec",) if p.exists()), None)
if MPIEXEC is None:
    import shutil
    MPIEXEC = shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("no mpiexec", allow_module_level=True)

TOL = 1e-5
CNN = ("--set", "width=4", "--set", "hidden=16", "--set", "batch=64", "--set", "steps=6")


def train(*args, ranks: int | None = 2, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`dslc train ARGS`, under `mpiexec -n RANKS` unless ranks is None."""
    launch = [MPIEXEC, "-n", str(ranks)] if ranks else []
    environ = {**os.environ, "NUMBA_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*launch, sys.executable, "-m", "dslc.cli", "train", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=environ)


def same_weights(a: Path, b: Path, what=("weights", "optimizer")) -> None:
    one, two = load_checkpoint(a / "last"), load_checkpoint(b / "last")
    for part in what:
        for name, value in getattr(one, part).items():
            assert np.allclose(getattr(two, part)[name], value, rtol=TOL, atol=TOL), name


@pytest.fixture(scope="module")
def mnist_cnn(tmp_path_factory) -> Path:
    """models/small_cnn.net reading the digits scaled to 28x28 as MNIST files."""
    folder = tmp_path_factory.mktemp("mnist")
    mnist_from_digits(folder / "data")
    net = folder / "small_cnn.net"
    net.write_text((MODELS / "small_cnn.net").read_text().replace('"data/mnist"', f'"{folder / "data"}"'))
    return net


def test_two_ranks_train_digits_mlp_to_the_weights_of_one_process(tmp_path):
    one = train(MODELS / "digits_mlp.net", "--epochs", 3, "--out", tmp_path / "one", ranks=None)
    two = train(MODELS / "digits_mlp.net", "--epochs", 3, "--out", tmp_path / "two", env={"DSLC_DEBUG": "2"})
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    same_weights(tmp_path / "one", tmp_path / "two")
    assert two.stdout.count("epoch 3/3") == 1 and "x 2 ranks" in two.stdout  # rank 0 alone speaks
    assert json.loads((tmp_path / "two" / "config.json").read_text())["ranks"] == 2
    # one flat message per step: 9,610 parameters' gradients, the loss and the accuracy, float32
    assert "allreduce over 2 ranks: " in two.stderr and f"{4 * 9612:,} bytes in 1.0 calls per step" in two.stderr


def test_small_cnn_synchronised_batchnorm_matches_one_process(tmp_path, mnist_cnn):
    sync = ("--set", "sync_batchnorm=true")
    one = train(mnist_cnn, *CNN, *sync, "--out", tmp_path / "one", ranks=None)
    two = train(mnist_cnn, *CNN, *sync, "--out", tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    same_weights(tmp_path / "one", tmp_path / "two")  # the running statistics are among the weights


def test_small_cnn_without_sync_normalises_each_shard(tmp_path, mnist_cnn):
    """Per-rank statistics: the compiled ranks equal the NumPy reference's ranks, and not one process."""
    one = train(mnist_cnn, *CNN, "--out", tmp_path / "one", ranks=None)
    two = train(mnist_cnn, *CNN, "--out", tmp_path / "two")
    ref = train(mnist_cnn, *CNN, "--out", tmp_path / "ref", "--device", "reference")
    assert one.returncode == 0 and two.returncode == 0 and ref.returncode == 0, two.stderr + ref.stderr
    same_weights(tmp_path / "ref", tmp_path / "two")
    w1, w2 = (load_checkpoint(tmp_path / run / "last").weights for run in ("one", "two"))
    assert max(np.abs(w1[k] - w2[k]).max() for k in w1) > 10 * TOL


def _ranks_of(mark: str) -> dict[int, int]:
    """{rank: pid} of the live processes whose environment holds DSLC_TEST_MARK=mark."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            env = dict(v.split("=", 1) for v in (proc / "environ").read_text().split("\0") if "=" in v)
        except (OSError, ValueError):
            continue
        if env.get("DSLC_TEST_MARK") == mark and "PMI_RANK" in env:
            found[int(env["PMI_RANK"])] = int(proc.name)
    return found


def _start_long_run(tmp_path, mark: str) -> subprocess.Popen:
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "DSLC_TEST_MARK": mark}
    argv = [MPIEXEC, "-n", "2", sys.executable, "-m", "dslc.cli", "train", str(MODELS / "digits_mlp.net"),
            "--epochs", "100000", "--out", str(tmp_path / "run")]
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "last" / "state.json").exists() and time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()[1]
        time.sleep(0.1)
    return run


def test_a_killed_rank_stops_every_rank_and_the_last_checkpoint_survives(tmp_path):
    mark = uuid.uuid4().hex
    run = _start_long_run(tmp_path, mark)
    try:
        ranks = _ranks_of(mark)
        assert sorted(ranks) == [0, 1]
        killed = time.monotonic()
        os.kill(ranks[1], signal.SIGKILL)
        run.wait(30)
        assert time.monotonic() - killed < 10
    finally:
        run.kill()
        run.communicate()
    assert run.returncode != 0 and not _ranks_of(mark)
    ckpt = load_checkpoint(tmp_path / "run" / "last")  # intact: it loads, with its checks
    assert ckpt.state["epoch"] >= 1


def test_ctrl_c_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    mark = uuid.uuid4().hex
    run = _start_long_run(tmp_path, mark)
    run.send_signal(signal.SIGINT)  # mpiexec passes it to every rank
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert err.count("interrupted at step") == 1 and "--resume" in err
    state = load_checkpoint(tmp_path / "run" / "last").state
    assert f"interrupted at step {state['step']} " in err


def test_a_run_that_cannot_start_stops_every_rank_with_one_message(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    done = train(MODELS / "digits_mlp.net", "--epochs", 2, "--out", tmp_path / "run", timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("already holds a run") == 1 and "Traceback" not in done.stderr
    done = train(MODELS / "digits_mlp.net", "--epochs", 1, "--out", tmp_path / "other", timeout=120)
    assert done.returncode == 2 and done.stderr.count("warmup (1 epochs) must be shorter") == 1  # as one process


def test_a_resume_with_another_number_of_ranks_continues_the_same_data_order(tmp_path):
    constant = ("--set", "schedule=constant")
    straight = train(MODELS / "digits_mlp.net", *constant, "--epochs", 4, "--out", tmp_path / "straight", ranks=None)
    assert straight.returncode == 0, straight.stderr
    # two ranks, then one; one rank, then two (started by `--ranks 2` itself)
    first = train(MODELS / "digits_mlp.net", *constant, "--epochs", 2, "--out", tmp_path / "a")
    then = train(MODELS / "digits_mlp.net", "--resume", tmp_path / "a", "--epochs", 4, "--force", ranks=None)
    assert first.returncode == 0 and then.returncode == 0, first.stderr + then.stderr
    first = train(MODELS / "digits_mlp.net", *constant, "--epochs", 2, "--out", tmp_path / "b", ranks=None)
    then = train(MODELS / "digits_mlp.net", "--resume", tmp_path / "b", "--epochs", 4, "--force", "--ranks", 2,
                ranks=None)
    assert first.returncode == 0 and then.returncode == 0, first.stderr + then.stderr
    assert "x 2 ranks" in then.stdout and "resuming at step 40" in then.stdout
    for run in ("a", "b"):
        same_weights(tmp_path / "straight", tmp_path / run)
