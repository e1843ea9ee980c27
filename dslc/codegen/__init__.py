"""Code generation: a kernel graph (dslc/kernels/) -> source a backend compiles.

    source.py     the shared writer: indentation, stable names, wrapped calls
    scalar.py     reads each elementwise/optimizer op's scalar expression (CPU and CUDA) from its op block
    loops.py      fused elementwise/reduce/epilogue loop nests (and expand, regularisers)
    groups.py     the optimizer-update and batchnorm-sweep group kernels
    externs.py    library kernels of dslc/runtime/cpu/ and how to call them
    numba_cpu.py  the whole module for Numba: kernels, `step` and `prologue` drivers
    cache.py      generated modules on disk, keyed by graph, versions and source
    cuda_gpu.py   the same kernel graph as CUDA C (cuda_loops.py, cuda_groups.py): one
                  __global__ kernel per fused/group kernel, run through CuPy

The runtime objects that run generated code are dslc/runtime/cpu/runner.py and
dslc/runtime/cuda/runner.py (CuPy, imported only there).
"""
