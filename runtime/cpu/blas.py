"""BLAS GEMM on row-major blocks, for Numba kernels that split their work over threads themselves.

    gemm_block(a, b, c, trans_a, trans_b, accumulate)   # c (+)= op(a) @ op(b), in the calling thread

Why not `np.dot` with BLAS's own threads: on a small machine two thread pools fight.
OpenBLAS's workers spin for a while after each call and Numba's parallel loops then
find the cores taken (a loop right after a GEMM ran 3-15x slower), while a
multi-threaded BLAS called from inside a parallel loop serialises. So every kernel
here parallelises with `prange` over independent blocks (images of a convolution,
row or column halves of a product) and calls a single-threaded BLAS inside the loop:
one pool, no spinning, and each thread's GEMM works on data it just wrote to its own
cache. `use_one_blas_thread()` makes every OpenBLAS in the process (NumPy's and
SciPy's; Numba calls one of them) single-threaded; it runs when this module is imported.

A product with at most few_rows.FEW_ROWS rows (a linear layer at a small batch, or its
input gradient) is few_rows.py's instead: sgemm packs all of op(b) however few the rows, and on
small_cnn's 3136x128 layer that took 0.15 ms at 4 rows, where reading b once takes 0.04.
One row times b (not transposed) stays with BLAS, as a GEMV (Numba's `numba_xxgemv`):
23 us there against few_rows' 29 (which wins for b transposed: 23 against GEMV's 26).

`gemm_block` calls Numba's own `numba_xxgemm` helper (the sgemm/dgemm SciPy exports,
which is what `np.dot` uses inside @njit), but with leading dimensions, so a block can
be any row range or column range of a larger matrix with unit stride along its rows,
and with beta = 1 (`accumulate`), which `np.dot(a, b, out)` cannot do. Row-major C =
op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the operands swap and the flags
stay. alpha and beta are passed by pointer, to stack slots (`_address_of`): pointers to
global arrays would make Numba refuse to cache every kernel that calls this.

Kernels in other files inline `gemm_block`, and Numba revalidates a cached kernel
against its own file only: kernel_cache.py, imported first, drops the package's cached
kernels when any of its files changed.
"""
from __future__ import annotations

from dslc.runtime.cpu import kernel_cache  # noqa: F401  (drops the package's stale cached kernels first)

import importlib.util
import sys
from pathlib import Path

import numba
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

from dslc.runtime.cpu import few_rows

_N, _T = ord("N"), ord("T")


def _signature(dtype):
    ptr = types.CPointer(dtype)
    return types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,
                      ptr, ptr, types.intp, ptr, types.intp, ptr, ptr, types.intp)


def num_threads() -> int:
    """The size of Numba's thread pool, callable in cached kernels."""
    return numba.get_num_threads()


@overload(num_threads)
def _num_threads():
    # `numba.get_num_threads()` embeds a ctypes pointer, which keeps Numba from caching
    # the kernel; this names the symbol the threading layer registers, declared as
    # Numba's own parallel loops declare it (intp: two declarations in one module must agree).
    get = types.ExternalFunction("get_num_threads", types.intp())
    return lambda: get()


@intrinsic
def _address_of(typingctx, value):
    """A pointer to a stack slot holding `value`, valid in the calling function."""
    def codegen(context, builder, signature, args):
        return cgutils.alloca_once_value(builder, args[0])
    return types.CPointer(value)(value), codegen


def gemm_block(a, b, c, trans_a, trans_b, accumulate):
    """c = op(a) @ op(b), or c += ... with accumulate; op transposes when its flag is set.
    2-D arrays of one float dtype, each with unit stride along its last axis (any row stride).
    This body runs only without the JIT (NUMBA_DISABLE_JIT=1); compiled code uses the overload."""
    product = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if accumulate:
        c += product
    else:
        c[...] = product


@overload(gemm_block)
def _gemm_block(a, b, c, trans_a, trans_b, accumulate):
    if not all(isinstance(t, types.Array) and t.ndim == 2 for t in (a, b, c)) or \
            a.dtype not in (types.float32, types.float64) or not a.dtype == b.dtype == c.dtype:
        raise TypingError("gemm_block: a, b, c must be 2-D float32 or float64 arrays of one dtype")

    few = types.ExternalFunction(few_rows.symbol(a.dtype), few_rows.signature(a.dtype))

    def impl(a, b, c, trans_a, trans_b, accumulate):
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        if (b.shape[1] if trans_b else b.shape[0]) != k or (a.shape[1] if trans_a else a.shape[0]) != m \
                or (b.shape[0] if trans_b else b.shape[1]) != n:
            raise ValueError("gemm_block: shapes do not match")
        if m == 0 or n == 0:
            return
        if k == 0:
            if not accumulate:
                c[:] = 0
            return
        lda, ldb, ldc = _leading(a), _leading(b), _leading(c)
        if m <= few_rows.FEW_ROWS and not trans_a and (trans_b or m > 1):  # op(b) read once, not packed
            few(_data(a), _data(b), _data(c), m, k, n, lda, ldb, ldc, 1 if trans_b else 0, 1 if accumulate else 0)
        else:
            _blas(a, b, c, trans_a, trans_b, accumulate, m, n, k, lda, ldb, ldc)
    return impl


def _blas(a, b, c, trans_a, trans_b, accumulate, m, n, k, lda, ldb, ldc):
    """gemm_block's BLAS call: SciPy's sgemm or dgemm (sgemv or dgemv for one row times b), its
    sizes and leading dimensions checked. This body runs only without the JIT, as gemm_block's does."""
    gemm_block(a, b, c, trans_a, trans_b, accumulate)


@overload(_blas)
def _blas_impl(a, b, c, trans_a, trans_b, accumulate, m, n, k, lda, ldb, ldc):
    xxgemm = types.ExternalFunction("numba_xxgemm", _signature(a.dtype))
    ptr = types.CPointer(a.dtype)
    xxgemv = types.ExternalFunction("numba_xxgemv", types.intc(types.char, types.char, types.intp, types.intp,
                                                               ptr, ptr, types.intp, ptr, ptr, ptr))
    kind = ord("s" if a.dtype == types.float32 else "d")
    one, zero = as_dtype(a.dtype).type(1), as_dtype(a.dtype).type(0)

    def impl(a, b, c, trans_a, trans_b, accumulate, m, n, k, lda, ldb, ldc):
        if m == 1 and not (trans_a or trans_b):  # column-major b^T times the row
            xxgemv(kind, _N, n, k, _address_of(one), b.ctypes, ldb, a.ctypes, _address_of(one if accumulate else zero),
                   c.ctypes)
        else:
            xxgemm(kind, _T if trans_b else _N, _T if trans_a else _N, n, m, k, _address_of(one), b.ctypes, ldb,
                   a.ctypes, lda, _address_of(one if accumulate else zero), c.ctypes, ldc)
    return impl


@intrinsic
def _data(typingctx, x):
    """A pointer to x's first element."""
    def codegen(context, builder, signature, args):
        return context.make_array(signature.args[0])(context, builder, args[0]).data
    return types.CPointer(x.dtype)(x), codegen


@njit(inline="always")
def _leading(x):
    """The row stride of x in elements; its rows must be contiguous. The leading dimension
    of a one-row block is free: BLAS only needs it >= the row length."""
    if x.shape[1] > 1 and x.strides[1] != x.itemsize:
        raise ValueError("gemm_block: rows must be contiguous")
    return max(x.strides[0] // x.itemsize, x.shape[1], 1)


@njit(cache=True)
def _warm_up(x):
    """1x1 products on the calling (main) thread, a GEMV and a GEMM: Numba's helpers look up
    SciPy's functions on first use, taking the GIL, which a worker of a parallel loop could not get."""
    _blas(x, x, x, False, False, True, 1, 1, 1, 1, 1, 1)
    _blas(x, x, x, True, False, True, 1, 1, 1, 1, 1, 1)


def _load_cython_blas() -> None:
    """Load scipy.linalg.cython_blas, the module whose sgemm/dgemm Numba calls, without
    running scipy.linalg's __init__, which imports all of SciPy's linear algebra (0.3 s, a
    quarter of a warm `dslc train` start) for two function pointers. Numba (and a later
    `import scipy.linalg`) finds the module by its name in sys.modules. Where SciPy lays
    its files out otherwise, the ordinary import."""
    if "scipy.linalg.cython_blas" in sys.modules:
        return
    package = importlib.util.find_spec("scipy")
    found = (sorted(Path(package.origin).parent.joinpath("linalg").glob("cython_blas.*.so"))
             if package and package.origin else [])
    spec = importlib.util.spec_from_file_location("scipy.linalg.cython_blas", found[0]) if found else None
    if spec is None or spec.loader is None:
        import scipy.linalg.cython_blas  # noqa: F401
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[spec.name] = module


def use_one_blas_thread() -> int:
    """Make every OpenBLAS loaded in the process single-threaded; how many were found.

    Numba's `numba_xxgemm` resolves through SciPy's cython_blas, yet with NumPy 2 and
    SciPy each bundling a scipy-openblas the work was measured running on NumPy's
    (its 2 workers busy while SciPy's was set to 1 thread), so limiting one library by
    name is not enough: threadpoolctl finds them all. MKL or an OpenMP runtime another
    package brought (PyTorch's, in the benchmark) is left alone.
    """
    _load_cython_blas()  # loaded, so threadpoolctl sees its OpenBLAS
    from threadpoolctl import ThreadpoolController
    blas = ThreadpoolController().select(internal_api="openblas")
    blas.limit(limits=1)
    return len(blas.lib_controllers)


numba.get_num_threads()  # starts the pool, which registers `get_num_threads` for num_threads
use_one_blas_thread()
_warm_up(np.zeros((1, 1), np.float32))
_warm_up(np.zeros((1, 1), np.float64))
