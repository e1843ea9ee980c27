"""The CUDA backend's runtime: library kernels as CUDA source, and the CuPy runner.

    library.py  CUDA source of the library kernels (im2col/col2im, pooling, softmax,
                cross-entropy, accuracy) that generated modules include; no CuPy
    ops.py      extern ops on the GPU: cuBLAS GEMMs through cupy.matmul around them
    runner.py   one generated module bound to a GPU arena, run step after step
    executor.py the trainer's Executor interface (GpuExecutor) over runner.py

CuPy is the optional extra `gpu` (cupy-cuda12x). Only ops.py, runner.py and executor.py use it,
and only when a graph is compiled for the GPU: everything else in dslc (the generator,
`dslc compile --target gpu`, the nvcc tests) works without it.
"""
