"""dslc: a compiler for neural networks written in the .net language.

    import dslc
    m = dslc.load("models/lenet5.net", width=32)
    print(m.summary().text())
"""
from dslc.diagnostics import CompileError
from dslc.model import Model, load
from dslc.version import __version__

__all__ = ["CompileError", "Model", "load", "__version__"]
