"""DSLC_* environment variables: parsed in one place, read on every call, malformed values refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from dslc import debug
from dslc.diagnostics import UsageError


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


def test_compile_workers(monkeypatch):
    monkeypatch.delenv("DSLC_COMPILE_WORKERS", raising=False)
    assert debug.compile_workers() is None
    monkeypatch.setenv("DSLC_COMPILE_WORKERS", "0")
    assert debug.compile_workers() == 0
    monkeypatch.setenv("DSLC_COMPILE_WORKERS", "two")
    with pytest.raises(UsageError, match="DSLC_COMPILE_WORKERS"):
        debug.compile_workers()
