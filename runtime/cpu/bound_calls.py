"""A generated driver's calls, bound once to their arguments and to the compiled code they reach.

    calls = bind(module.step, args)      # [(callable, arguments)], in the driver's order
    run(calls)                           # what module.step(*args) does
    calls = rebind(module.step, other, calls)   # other arrays of the same types; else None

A generated module's drivers (dslc/codegen/numba_cpu.py) are plain Python, one call per
statement: a library kernel (`winograd.conv2d_forward(...)`), a generated kernel
(`k_fc_relu(...)`) or `fallback(k)`, each argument a parameter of the driver or a
literal. Called as Python, each statement looks its function up and each Numba
dispatcher types its arguments again, though a runner's arguments never change between
runs: the same arena views, lent parameters and constants. So the runner binds the
driver's statements to their values once, as TVM's graph executor binds its operators'
closures, and where the function is a Numba dispatcher that has compiled these argument
types, to that compiled entry point, which skips the dispatch. A saliency gradient of
small_cnn at batch 1 (17 calls) took 128 us so against 134-139 through the driver, on the
2-core EPYC. The statements are read from the driver's own source, so what runs is the
driver, call for call.
"""
from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Callable, Sequence

import numpy as np


@functools.lru_cache(maxsize=64)
def _statements(driver: Callable) -> tuple:
    """Each call of `driver` as (what it calls, its arguments), a statement that is not a
    call (the docstring, `return None`) skipped. What it calls is (the driver's parameter's
    index, or its global's name; then the attributes taken), each argument ('name', the
    parameter's index) or ('value', a literal)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(driver)))
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef)
    params = [a.arg for a in function.args.args]
    out = []
    for statement in function.body:
        if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)):
            continue
        call = statement.value
        attrs: list[str] = []
        func = call.func
        while isinstance(func, ast.Attribute):
            attrs.insert(0, func.attr)
            func = func.value
        assert isinstance(func, ast.Name)
        head = params.index(func.id) if func.id in params else func.id
        args = tuple(("name", params.index(a.id)) if isinstance(a, ast.Name) and a.id in params
                     else ("value", ast.literal_eval(a)) for a in call.args)
        out.append(((head, tuple(attrs)), args))
    return tuple(out)


def bind(driver: Callable, args: Sequence) -> list[tuple[Callable, tuple]]:
    """The calls of `driver` with its arguments `args` (in its parameters' order), each as
    (what it calls, its argument values): a function of the driver's globals, or a parameter
    (`fallback`), resolved to its compiled entry point where it has one (compiled_entry)."""
    calls = []
    for (head, attrs), spec in _statements(driver):
        values = _values(spec, args)
        calls.append((compiled_entry(_function(driver, head, attrs, args), values), values))
    return calls


def rebind(driver: Callable, args: Sequence, bound: list[tuple[Callable, tuple]]) -> list | None:
    """`bound`, the calls of `driver` bound to other arguments, with the values of `args`,
    where Numba types each new value as it typed the old (_typed_alike); None otherwise, for
    bind to start afresh after a run through the driver, which compiles what the new types
    need. A call through a parameter (`fallback`) is resolved again. The runner binds again
    whenever the caller lends other arrays, and typing every argument of every call again
    added 550-600 us to a saliency gradient of small_cnn at batch 1 given a copy of its
    parameters at each call (801-859 us against 235-268 for the same arrays, in a slow minute)."""
    calls = []
    for ((head, attrs), spec), (entry, was) in zip(_statements(driver), bound):
        values = _values(spec, args)
        if not all(map(_typed_alike, values, was)):
            return None
        calls.append((compiled_entry(_function(driver, head, attrs, args), values) if isinstance(head, int)
                      else entry, values))
    return calls


def _function(driver: Callable, head, attrs: tuple, args: Sequence) -> Callable:
    """What a call calls: the driver's parameter (an index) or global (a name), then its attributes."""
    function = args[head] if isinstance(head, int) else driver.__globals__[head]
    for attr in attrs:
        function = getattr(function, attr)
    return function


def _values(spec: tuple, args: Sequence) -> tuple:
    """A call's argument values: the driver's parameters it names, and its literals."""
    return tuple(args[v] if kind == "name" else v for kind, v in spec)


def _typed_alike(value, was) -> bool:
    """Whether Numba types `value` as it typed `was`: the same object, or two NumPy arrays
    (not subclasses) of one dtype, rank, layout (C, F or neither), writeability and
    alignment, all that its typeof reads of an array."""
    if value is was:
        return True
    if type(value) is not np.ndarray or type(was) is not np.ndarray:
        return False
    new, old = value.flags, was.flags
    return (value.dtype == was.dtype and value.ndim == was.ndim and new.c_contiguous == old.c_contiguous
            and new.f_contiguous == old.f_contiguous and new.writeable == old.writeable and new.aligned == old.aligned)


def compiled_entry(function: Callable, values: tuple) -> Callable:
    """`function`'s compiled entry point for the types of `values` where it is a Numba
    dispatcher that has compiled them, else `function` itself (a Python function, a
    dispatcher that compiles them at its first call, or any function without the JIT)."""
    overloads, typeof = getattr(function, "overloads", None), getattr(function, "typeof_pyval", None)
    if not overloads or typeof is None:
        return function
    try:
        types = tuple(typeof(v) for v in values)
    except (TypeError, ValueError):
        return function
    compiled = overloads.get(types)
    return compiled.entry_point if compiled is not None else function


def run(calls: list[tuple[Callable, tuple]]) -> None:
    """Each call in order."""
    for function, values in calls:
        function(*values)
