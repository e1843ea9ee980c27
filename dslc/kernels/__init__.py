"""The backend-neutral kernel graph: see graph.py for what it describes, lower.py for how
an optimised graph becomes one, show.py for its text and DOT views."""
from dslc.kernels.graph import Buffer, Kernel, KernelGraph, bindings
from dslc.kernels.lower import lower
from dslc.kernels.show import format_kernels, kernel_clusters

__all__ = ["Buffer", "Kernel", "KernelGraph", "bindings", "lower", "format_kernels", "kernel_clusters"]
