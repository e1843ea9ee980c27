"""Hostile and careless input (issue 12, all twelve items), one test per trial.

The trials live in benchmarks/hostile (so `python -m benchmarks.hostile` replays the very same
ones outside the suite): sources and imports that are symlinks, devices, FIFOs, too large or
too deep; --set values and flags; output paths that are devices, symlinks, FIFOs, directories,
read-only or full; data files that are devices, FIFOs or bombs (IDX, .npz, .npy, PNG,
CIFAR pickles, safetensors); hand-edited run files; silently accepted values; faults during
training. Each runs one `dslc` command in a subprocess and checks: no traceback, the
documented exit status, a message naming the file, nothing kept replaced, no temporary
left, and memory bombs (under an RLIMIT_AS cap) failing within 5 s. Device nodes and
tmpfs mounts need root: without it those trials are skipped.
"""
from __future__ import annotations

import re

import pytest

from benchmarks.hostile import TRIALS, Skip, run_trial


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """Shared by the trials of one worker: the kernel cache and a trained base run."""
    return tmp_path_factory.mktemp("hostile-cache")


def _id(trial) -> str:
    return f"item{trial.item}-" + re.sub(r"[^A-Za-z0-9]+", "-", trial.name).strip("-")


@pytest.mark.parametrize("trial", [pytest.param(t, id=_id(t), marks=[pytest.mark.slow] if t.slow else [])
                                   for t in TRIALS])
def test_hostile_input_is_refused_cleanly(trial, cache):
    try:
        problems, outcome = run_trial(trial, cache)
    except Skip as e:
        pytest.skip(str(e))
    assert not problems, f"{trial.name}:\n" + "\n".join(problems)


def test_every_item_of_the_issue_has_trials():
    assert {t.item for t in TRIALS} == set(range(1, 13))
    assert len({t.name for t in TRIALS}) == len(TRIALS)  # names are the test ids: unique
