"""Fixtures every test module may use (plain helpers and constants are in helpers.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "passive")


@pytest.fixture
def net(tmp_path):
    """net("model m { ... }", name="x.net") writes a file in a temp dir and returns its path."""
    def write(text: str, name: str = "test.net") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path
    return write
