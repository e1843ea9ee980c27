"""DSLC_* environment variables: parsed in one place, read on every call, malformed values refused;
what the DSLC_DEBUG levels print."""
from __future__ import annotations

from pathlib import Path

import pytest

import dslc
from dslc import debug
from dslc.diagnostics import UsageError
from dslc.passes.pipeline import optimize
from dslc.stages import build
from helpers import MODELS


@pytest.mark.parametrize("raw, level", [(None, 0), ("", 0), ("0", 0), ("2", 2), (" 4 ", 4), ("9", 4)])
def test_debug_level(monkeypatch, raw, level):
    if raw is None:
        monkeypatch.delenv("DSLC_DEBUG", raising=False)
    else:
        monkeypatch.setenv("DSLC_DEBUG", raw)
    assert debug.debug_level() == level


@pytest.mark.parametrize("raw", ["two", "-1", "1.5"])
def test_debug_level_refuses_malformed(monkeypatch, raw):
    monkeypatch.setenv("DSLC_DEBUG", raw)
    with pytest.raises(UsageError, match="DSLC_DEBUG"):
        debug.debug_level()


@pytest.mark.parametrize("raw, on", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False),
                                     ("no", False)])
def test_verify_flag(monkeypatch, raw, on):
    monkeypatch.setenv("DSLC_VERIFY", raw)
    assert debug.verify_enabled() is on


def test_verify_flag_refuses_malformed(monkeypatch):
    monkeypatch.setenv("DSLC_VERIFY", "maybe")
    with pytest.raises(UsageError, match="DSLC_VERIFY"):
        debug.verify_enabled()


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DSLC_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert debug.cache_dir() == tmp_path / ".cache" / "dslc"
    monkeypatch.setenv("DSLC_CACHE", "~/kernels")
    assert debug.cache_dir() == tmp_path / "kernels"
    monkeypatch.setenv("DSLC_CACHE", "/x/y")
    assert debug.cache_dir() == Path("/x/y")


# ---- what each rung of the DSLC_DEBUG ladder prints -------------------------------------

def _optimise_digits(monkeypatch, capsys, level: str) -> list[str]:
    graph = build(dslc.load(MODELS / "digits_mlp.net"), "infer")
    capsys.readouterr()
    monkeypatch.setenv("DSLC_DEBUG", level)
    optimize(graph)
    return capsys.readouterr().err.splitlines()


def test_debug_0_prints_nothing(monkeypatch, capsys):
    assert _optimise_digits(monkeypatch, capsys, "0") == []


def test_debug_1_prints_each_pass_report(monkeypatch, capsys):
    lines = _optimise_digits(monkeypatch, capsys, "1")
    assert [line.split()[4] for line in lines] == ["fold-batchnorm:", "const-fold:", "cse:", "pool-relu:", "dce:", "fuse:"]
    assert all(line.startswith("dslc: pipeline digits_mlp (infer) ") for line in lines)
    assert lines[-1].endswith(" nodes]") and "fused kernel" in lines[-1]


def test_debug_3_prints_the_ir_before_and_after_each_pass(monkeypatch, capsys):
    lines = _optimise_digits(monkeypatch, capsys, "3")
    headers = [line for line in lines if line.startswith("dslc: ----")]
    assert headers == ["dslc: ---- digits_mlp (infer) before the pipeline ----"] + [
        f"dslc: ---- digits_mlp (infer) after {p} ----" for p in ("fold-batchnorm", "const-fold", "cse", "pool-relu", "dce", "fuse")]
    after_fuse = lines[lines.index(headers[-1]) + 1:]
    assert after_fuse[0].startswith("graph digits_mlp  (stage infer;") and any(" fused" in x for x in after_fuse)
    assert sum(line.startswith("dslc: pipeline ") for line in lines) == 6  # level 1's reports too
def test_compile_workers(monkeypatch):
    monkeypatch.delenv("DSLC_COMPILE_WORKERS", raising=False)
    assert debug.compile_workers() is None
    monkeypatch.setenv("DSLC_COMPILE_WORKERS", "0")
    assert debug.compile_workers() == 0
    monkeypatch.setenv("DSLC_COMPILE_WORKERS", "two")
    with pytest.raises(UsageError, match="DSLC_COMPILE_WORKERS"):
        debug.compile_workers()
