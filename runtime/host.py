"""Host copies of arrays that may live on the GPU: the one place the CPU side converts.

With `--device gpu` the trainer's `params` hold CuPy arrays (the GPU arena's own, see
dslc/runtime/cuda/executor.py); whatever reads them on the host (a checkpoint being
written, the update/weight ratios, the anomaly replay) goes through `to_host`. On the CPU
path it is `np.asarray` of an ndarray: the same object, no copy.

    >>> import numpy as np
    >>> a = np.zeros(3, np.float32)
    >>> to_host(a) is a
    True
"""
from __future__ import annotations

import numpy as np


def to_host(a) -> np.ndarray:
    """`a` as a NumPy array: a CuPy array is copied to the host (`.get()`, which is
    cupy.asnumpy, without importing CuPy here); a NumPy array is returned as it is."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "__cuda_array_interface__") and callable(getattr(a, "get", None)):
        return a.get()
    return np.asarray(a)


def host_block(value, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """`value` as a C-contiguous host array of exactly `dtype` and `shape`, ready to be
    copied to a device buffer of that shape.

    Not `np.ascontiguousarray`: it returns at least one dimension, so a scalar (a learning
    rate, a step count, a constant) became shape (1,) and CuPy refused to copy it into its
    0-d buffer; that failed every training step on the first GPU run.

    >>> host_block(2.0, np.float32, ()).shape
    ()
    """
    return np.require(np.asarray(value, dtype).reshape(shape), requirements="C")
