"""Code generation: a kernel graph (dslc/kernels/) -> source a backend compiles.

    source.py     the shared writer: indentation, stable names, wrapped calls
    scalar.py     one scalar expression per elementwise and optimizer op
    loops.py      fused elementwise/reduce/epilogue loop nests (and expand, regularisers)
    groups.py     the optimizer-update and batchnorm-sweep group kernels
    externs.py    library kernels of dslc/runtime/cpu/ and how to call them
    numba_cpu.py  the whole module for Numba: kernels, `step` and `prologue` drivers
    cache.py      generated modules on disk, keyed by graph, versions and source
    compile_cmd.py  `dslc compile`

The runtime object that runs a generated module is dslc/runtime/cpu/runner.py.
"""
