"""PyTorch as the benchmarks' peer, with the threading a PyTorch user gets.

PyTorch's OpenMP runtime (its own copy of libgomp) reads OMP_WAIT_POLICY and GOMP_SPINCOUNT
once, when it is loaded. dslc sets its own values for Numba's libgomp (dslc/runtime/cpu),
and a shell that exports them for dslc would hand them to PyTorch too: with
OMP_WAIT_POLICY=passive its workers sleep after every parallel loop and take ~40 us to
wake for the next, which made the eager MLP step 30% slower than PyTorch's default. So
torch is imported with those variables removed from the environment, and they are put
back for dslc.
"""
from __future__ import annotations

import os
import sys

OPENMP_WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def import_torch():
    """The torch module, loaded with PyTorch's own OpenMP waiting; None when not installed."""
    if "torch" not in sys.modules:
        saved = {k: os.environ.pop(k) for k in OPENMP_WAITING if k in os.environ}
        try:
            import torch  # noqa: F401
        except ImportError:
            return None
        finally:
            os.environ.update(saved)
    return sys.modules["torch"]
