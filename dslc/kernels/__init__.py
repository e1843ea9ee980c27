"""The backend-neutral kernel graph: see graph.py for what it describes, lower.py for how
an optimised graph becomes one (grouping.py, loop_forms.py), show.py for its text and DOT
views, memory_plan.py for its buffers' places in one arena, interpret.py for its meaning
(run with the references), geometry.py for the windows of convolutions and pooling."""
from dslc.kernels.graph import Buffer, Kernel, KernelGraph, bindings
from dslc.kernels.lower import lower
from dslc.kernels.show import format_kernels, kernel_clusters

__all__ = ["Buffer", "Kernel", "KernelGraph", "bindings", "lower", "format_kernels", "kernel_clusters"]
