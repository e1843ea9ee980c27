"""dslc: a compiler for neural networks written in the .net language.

    import dslc
    m = dslc.load("models/lenet5.net", width=32)
    print(m.summary().text())
"""
__version__ = "0.1.0"

from dslc.diagnostics import CompileError  # noqa: E402
from dslc.model import Model, load  # noqa: E402

__all__ = ["CompileError", "Model", "load", "__version__"]
