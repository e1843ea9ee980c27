"""Whether arrays fit in memory, asked before they are allocated.

A hyper-parameter is a number anyone can type (`--set hidden=1000000000000`), and the
model it makes may need more memory than any machine has. NumPy would try, and either
raise a MemoryError after a long wait or, under overcommit, be killed later. So the
places that allocate whole models or batches (Model.init, the random inputs of gradcheck
and of `inspect --verify`) ask `require` first, and get one line with the figure:

    dslc: error: model 'digits_mlp' needs 3.7 TiB for its 1,000,000,010,000 parameters;
    this machine has 21.5 GiB available

What is available: the machine's MemAvailable (Linux; elsewhere its physical memory),
and, under an address-space limit (`ulimit -v`, RLIMIT_AS), what is left of that limit.
"""
from __future__ import annotations

import math

import numpy as np

from dslc.diagnostics import CliError
from dslc.ir.types import NUMPY_DTYPE
from dslc.reading import human_bytes, memory_available


class OutOfMemory(CliError):
    """Arrays that cannot fit: a user's choice of sizes, reported with the figures (exit 1)."""


def require(nbytes: int, what: str) -> None:
    """Raise OutOfMemory when `nbytes` exceed what is available; `what` starts the message."""
    free = memory_available()
    if nbytes > free:
        raise OutOfMemory(f"{what} needs {human_bytes(nbytes)}; this machine has {human_bytes(free)} available")


def array_bytes(types, sizes: dict[str, int]) -> int:
    """Bytes of arrays of these TensorTypes with the symbolic dimensions bound to `sizes`."""
    return sum(math.prod(t.bind(sizes)) * np.dtype(NUMPY_DTYPE[t.dtype]).itemsize for t in types)
