"""Hostile and careless input to the front end and the command line (issue 12, items 1, 3, 5,
10 and 12): every trial of hostile_frontend.TRIALS, run as a user would run dslc, must end
without a traceback, with the documented exit status and a message naming the file (and
line), leaving every file it found in place and unchanged; the trials that used to exhaust
memory or time must answer within their bound under an address-space limit."""
from __future__ import annotations

import pytest

from hostile_frontend import TRIALS, run


@pytest.mark.parametrize("trial", TRIALS, ids=[t.id for t in TRIALS])
def test_hostile_input(trial, tmp_path):
    outcome = run(trial, tmp_path)
    assert not outcome.problems, f"{outcome.problems}\n{outcome.output[-3000:]}"
