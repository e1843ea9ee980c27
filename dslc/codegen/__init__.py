"""Code generation: a kernel graph (dslc/kernels/) -> source a backend compiles.

One emitter, two languages (as tinygrad's renderers: one algorithm, a table of syntax each):

    emit.py         what each kernel becomes (the decision tree), the body of one element,
                    reduce/expand set-up, and `Lang`, the syntax table a language fills in
    groups.py       the optimizer-update and batchnorm-sweep planners
    source.py       the shared writer: indentation, stable names, wrapped calls, kernel headers
    scalar.py       reads each elementwise/optimizer op's scalar expression (CPU and CUDA) from its op block

    numba_cpu.py    Python for Numba: the syntax table and the whole module (kernels, `step`
                    and `prologue` drivers); numba_loops.py and numba_sweep.py lay kernels
                    out as range/prange loops
    externs.py      library kernels of dslc/runtime/cpu/ and how to call them
    shared.py       content-addressed kernels: one compiled copy per distinct kernel text
    cache.py        generated modules on disk, keyed by graph, versions and source; build notes
    cuda_gpu.py     CUDA C: the syntax table, the module and its launches; cuda_loops.py lays
                    kernels out over blocks and threads; cuda_library.py holds the library
                    kernels (im2col, pooling, softmax ...) a module includes

The runtime objects that run generated code are dslc/runtime/cpu/runner.py and
dslc/runtime/cuda/runner.py (CuPy, imported only there).
"""
