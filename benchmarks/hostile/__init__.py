"""Hostile and careless input, replayed: the trials behind issue 12 (all twelve items).

    python -m benchmarks.hostile                 # every trial; a table and the count of tracebacks
    python -m benchmarks.hostile --only symlink  # the trials whose name contains a word
    python -m benchmarks.hostile --quick         # without the slow ones (training to a full disk, ...)

Each trial stages a hostile file in a temporary workspace and runs one `dslc` command in a
subprocess (see kit.py for what is checked): sources, imports and the command line
(frontend.py), output paths (outputs.py), data files (data.py), checkpoints and run
directories (runs.py). tests/test_hostile.py runs the same
trials under pytest; this runner replays them outside the suite, as a person would.
"""
from benchmarks.hostile import data, frontend, outputs, runs
from benchmarks.hostile.kit import Skip, Trial, run_trial

TRIALS: list[Trial] = frontend.TRIALS + outputs.TRIALS + data.TRIALS + runs.TRIALS

__all__ = ["Skip", "TRIALS", "Trial", "run_trial"]
