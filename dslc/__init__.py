"""dslc: a compiler for neural networks written in the .net language.

    import dslc
    m = dslc.load("models/lenet5.net", width=32)
    print(m.summary().text())
"""
__version__ = "0.1.0"

from dslc.diagnostics import CompileError  # noqa: E402

__all__ = ["CompileError", "Model", "load", "__version__"]


def __getattr__(name: str):
    """`dslc.load` and `dslc.Model`, imported on first use: the front end (Lark, NumPy) takes a
    quarter second to import, which `dslc --help`, and Ctrl-C during start-up, should not wait for."""
    if name in ("Model", "load"):
        from dslc import model
        return getattr(model, name)
    raise AttributeError(f"module 'dslc' has no attribute {name!r}")
