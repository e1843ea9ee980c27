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
import os

import numpy as np

from dslc.diagnostics import CliError
from dslc.ir.types import NUMPY_DTYPE
from dslc.reading import size_text


class OutOfMemory(CliError):
    """Arrays that cannot fit: a user's choice of sizes, reported with the figures (exit 1)."""


def available_bytes() -> int | None:
    """Bytes this process could still allocate, or None where the platform does not say."""
    found = [b for b in (_mem_available(), _address_space_left()) if b is not None]
    return min(found) if found else None


def require(nbytes: int, what: str) -> None:
    """Raise OutOfMemory when `nbytes` exceed what is available; `what` starts the message."""
    free = available_bytes()
    if free is not None and nbytes > free:
        raise OutOfMemory(f"{what} needs {size_text(nbytes)}; this machine has {size_text(free)} available")


def array_bytes(types, sizes: dict[str, int]) -> int:
    """Bytes of arrays of these TensorTypes with the symbolic dimensions bound to `sizes`."""
    return sum(math.prod(t.bind(sizes)) * np.dtype(NUMPY_DTYPE[t.dtype]).itemsize for t in types)


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f.read(1 << 16).splitlines():
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _address_space_left() -> int | None:
    """What an RLIMIT_AS leaves beyond the address space already mapped (Linux), or None."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm", "rb") as f:
            mapped = int(f.read(4096).split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        mapped = 0
    return max(soft - mapped, 0)
