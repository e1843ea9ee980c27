"""Benchmarks: `python -m benchmarks.kernels` times the CPU library kernels."""
