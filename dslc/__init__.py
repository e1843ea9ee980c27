"""dslc: a compiler for neural networks written in the .net language.

    import dslc
    m = dslc.load("models/lenet5.net", width=32)
    print(m.summary().text())
    m = dslc.load("models/small_cnn.net", checkpoint="runs/small_cnn")   # + its trained parameters
    c = m.compile(device="cpu")                                          # forward, grad, step
"""
from dslc.version import __version__

__all__ = ["CompileError", "Model", "load", "__version__"]


def __getattr__(name: str):
    """`dslc.load`, `dslc.Model` and `dslc.CompileError`, imported on first use. Importing the
    package itself costs nothing: the front end (Lark, NumPy) takes a quarter second, which
    `dslc --help` should not wait for, and the CLI's Ctrl-C handling starts only once its
    `main` runs, so nothing may happen before that."""
    if name in ("Model", "load"):
        from dslc import api
        return getattr(api, name)
    if name == "CompileError":
        from dslc.diagnostics import CompileError
        return CompileError
    raise AttributeError(f"module 'dslc' has no attribute {name!r}")
