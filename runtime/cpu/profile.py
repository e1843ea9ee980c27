"""Per-kernel timing of a generated module's `step`: the DSLC_DEBUG>=2 kernel table.

    prof = Profile(module.step)          # one code object per kernel call of the driver
    prof(*args)                          # runs the step, timing each call
    print(prof.table())                  # kernels by total time, with their share

The generated driver is a straight list of calls (dslc/codegen/numba_cpu.py), so the
profiler needs nothing from the generator: it splits the driver's body into its
statements, compiles each on its own against the module's globals, and runs them in
order with the driver's parameters bound, timing each. Profiling costs a dict lookup
and a clock read per kernel; the unprofiled step is untouched.
"""
from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import time


class Profile:
    def __init__(self, driver, group=None):
        fn = ast.parse(textwrap.dedent(inspect.getsource(driver))).body[0]
        self.params = [a.arg for a in fn.args.args]
        self.globals = driver.__globals__
        self.calls = []  # (label, code) per kernel call, in driver order
        for stmt in fn.body:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                label = _label(stmt.value)
                code = compile(ast.Module([stmt], type_ignores=[]), f"<{label}>", "exec")
                self.calls.append((label, code))
        self.seconds = [0.0] * len(self.calls)
        self.runs = 0
        self.group = group  # the ranks of a step with collective ops (dslc/collective.py)

    def __call__(self, *args) -> None:
        scope = dict(zip(self.params, args))
        for i, (_, code) in enumerate(self.calls):
            start = time.perf_counter()
            exec(code, self.globals, scope)
            self.seconds[i] += time.perf_counter() - start
        self.runs += 1

    def table(self, title: str = "") -> str:
        """Kernels by total time: ms per run, share of the step, the call."""
        total = sum(self.seconds) or 1.0
        runs = max(self.runs, 1)
        lines = [f"dslc: kernel times {title} ({self.runs} runs, {total / runs * 1e3:.2f} ms per run)"]
        for i in sorted(range(len(self.calls)), key=lambda i: -self.seconds[i]):
            lines.append(f"  {self.seconds[i] / runs * 1e3:8.3f} ms  {self.seconds[i] / total:6.1%}  "
                         f"{self.calls[i][0]}")
        if self.group is not None:
            size = self.group.size
            lines.append(f"  allreduce over {size} rank{'s' * (size != 1)}: {self.group.traffic.per_step()}")
        return "\n".join(lines)

    def report(self, title: str = "") -> None:
        if self.runs:
            print(self.table(title), file=sys.stderr)


def _label(call: ast.Call) -> str:
    """A generated kernel's name (it names its layer); for a library call (`conv.conv2d_forward`)
    also the buffer it writes, its last array argument, which tells the layers apart."""
    func = ast.unparse(call.func)
    if not isinstance(call.func, ast.Attribute):
        return func
    arrays = [a.id for a in call.args if isinstance(a, ast.Name) and a.id != "workspace"]
    return f"{func} -> {arrays[-1]}" if arrays else func
