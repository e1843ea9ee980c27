"""benchmarks/core_latency.py, the probe api_grad prints beside its figures: it measures a
round trip where two CPUs run Numba's two threads, and answers None, at once, where it
cannot (no rounds, one thread), instead of spinning."""
from __future__ import annotations

import os

import numba
import pytest

from benchmarks.core_latency import round_trip_ns


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or numba.config.NUMBA_NUM_THREADS < 2,
                    reason="needs two CPUs and two of Numba's threads")
def test_a_round_trip_is_measured_on_two_threads_and_refused_on_one():
    assert round_trip_ns(0) is None
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        trip = round_trip_ns(2000)
        assert trip is not None and 1 < trip < 1e6  # ns: a transfer between cores takes tens to hundreds
        numba.set_num_threads(1)
        assert round_trip_ns(2000) is None
    finally:
        numba.set_num_threads(previous)
