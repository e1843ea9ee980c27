"""Hostile and careless input, replayed: the trials behind issue 12 (items 2-4, 6-9 and 11).

    python -m benchmarks.hostile                 # every trial; a table and the count of tracebacks
    python -m benchmarks.hostile --only symlink  # the trials whose name contains a word
    python -m benchmarks.hostile --quick         # without the slow ones (training to a full disk, ...)

Each trial stages a hostile file in a temporary workspace and runs one `dslc` command in a
subprocess (see kit.py for what is checked). tests/test_hostile_files.py runs the same
trials under pytest; this runner replays them outside the suite, as a person would.
"""
from benchmarks.hostile import data, outputs, runs
from benchmarks.hostile.kit import Skip, Trial, run_trial

TRIALS: list[Trial] = outputs.TRIALS + data.TRIALS + runs.TRIALS

__all__ = ["Skip", "TRIALS", "Trial", "run_trial"]
