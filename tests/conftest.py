"""Fixtures every test module may use, and one kernel cache for the whole run (plain helpers
and constants are in helpers.py).

Every test of a run, in every xdist worker, compiles into the same DSLC_CACHE and
NUMBA_CACHE_DIR (a fresh directory per run, removed at its end), so a kernel the suite
uses in many tests (they share kernels across models and widths) is compiled once per
run, and no run depends on what an earlier one left in ~/.cache. Set DSLC_CACHE and
NUMBA_CACHE_DIR yourself to keep compiled kernels across runs. Tests that exercise the
cache itself point DSLC_CACHE at their own tmp_path.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import dslc.runtime.cpu  # noqa: F401  (sets OpenMP's waiting before any test loads Numba)


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller set the environment up
        return
    run = tempfile.mkdtemp(prefix="dslc-tests-")
    config._dslc_run_cache = run
    os.environ.setdefault("DSLC_CACHE", os.path.join(run, "dslc"))
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(run, "numba"))
    workers = getattr(config.option, "numprocesses", None)
    if workers:  # xdist workers already fill the cores
        os.environ.setdefault("DSLC_COMPILE_WORKERS", "0")
        # and BLAS's own threads would overfill them: the reference's many small GEMMs, two
        # OpenBLAS threads in each of two workers on two cores, ran 5x slower than one each
        # (tests/test_gradcheck.py + test_reference.py at -n 2: 77 s against 15 s)
        share = max(1, (os.cpu_count() or 1) // workers) if isinstance(workers, int) else 1
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(share))
        os.environ.setdefault("MKL_NUM_THREADS", str(share))


def pytest_unconfigure(config):
    run = getattr(config, "_dslc_run_cache", None)
    if run is not None:
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture
def net(tmp_path):
    """net("model m { ... }", name="x.net") writes a file in a temp dir and returns its path."""
    def write(text: str, name: str = "test.net") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path
    return write
