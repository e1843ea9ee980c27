"""The ops of the language, one family per module, each op registered in `registry.OPS`.

Importing the package registers every family, so whoever reads the registry (which
imports this package first) finds every op there, and the registry itself imports no
family: the families depend on it, never the reverse.
"""
from dslc.ops import (collective, conv, dropout, elementwise, fused, image, index, linalg, loss,  # noqa: F401
                      math_ops, norm, optim, reduce, regression, shape, source)
