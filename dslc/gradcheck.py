"""Gradient checking: autodiff's gradients against central differences, tensor by tensor.

The model is rebuilt in float64 and run in training mode on a small random batch
(float inputs standard normal, labels uniform over the classes) with parameters
from their initialisers. Dropout masks are drawn once and then held fixed, so the
loss is a deterministic function of the parameters and inputs. For every trainable
parameter and every float input x, the analytic gradient g from the backward graph
is compared with central differences of the loss L along directions d:

    n = (L(x + eps d) - L(x - eps d)) / (2 eps)      against      a = <g, d>

A small tensor (at most `max_elements` elements) is checked element by element (d = e_i,
the per-element table). A large one is checked along `directions` random unit directions,
each of which tests every element of the gradient at once, as JAX's check_grads does,
plus `samples` random elements, so that a network the size of ResNet-20 is checked in
seconds rather than hours: each check costs two forward passes, and each pass re-runs
only what the perturbed tensor feeds. The error is

    error = |a - n| / max(|a|, |n|, tiny)

`tiny` is the gradient size below which a relative error means nothing. Rounding
makes each evaluation of L wrong by about u|L| (u = 2.2e-16 in float64), so n
carries an absolute noise of about u|L|/eps; measured on the models shipped it
stays under 3 u|L|/eps, and tiny = 8 u|L| / (eps * threshold) makes that noise
pass. Below tiny the test is thus an absolute one (|a - n| < 8 u|L|/eps), and an
exact zero on both sides passes.

Kinks. relu, max-pooling and |x| are not differentiable everywhere; a perturbation that
moves a unit across its kink makes the difference quotient mix two slopes. In a network
the size of ResNet-20 a step of 1e-6 along a batchnorm scale moves a hundred thousand
units, and a few of them cross. So a check that fails is repeated with eps / 10: a
smooth function gives the same quotient at both steps (its truncation error is
O(eps^2)), so a quotient that agrees with itself and not with the rule is a wrong
gradient; one that moved was a kink, and the smaller step decides, and eps / 100 after
it. A check that never settles is left out and counted (`kinks`); a tensor none of whose
checks settled is reported as not checked, and fails, since nothing vouches for it.

Domains. The loss must be finite at the random point: log, sqrt or a fractional power of
a standard-normal input is NaN there, and every comparison with NaN fails. So a loss
that is not finite is an error (E0407) located at the first op whose value is not, and
`inputs="positive"` draws the float inputs from [0.5, 2] instead (the registry's
"positive" domain). A quotient or gradient that is not finite beside a finite loss is
no kink: that check fails with an infinite error.

    rows = gradcheck(dslc.load("models/digits_mlp.net"))
    print(format_table(rows))
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
from threadpoolctl import threadpool_limits

from dslc import reference
from dslc.diagnostics import CompileError, Diagnostic
from dslc.ir.graph import Graph
from dslc.ir.types import NUMPY_DTYPE
from dslc.memory import array_bytes, require
from dslc.model import Model
from dslc.ops import registry
from dslc.passes.autodiff import trainable_params
from dslc.passes.dce import ancestors

NOISE_FACTOR = 8.0  # rounding noise of a difference quotient, in units of u|L|/eps (measured <= 3)
INPUTS = ("normal", "positive")  # what random float inputs are drawn from: N(0, 1), or uniform on [0.5, 2]


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # param | input
    shape: tuple[int, ...]
    max_rel_error: float
    passed: bool
    checked: int  # elements compared one by one: all of them, or a random sample of a large tensor
    directions: int = 0  # random directions compared (large tensors)
    kinks: int = 0  # checks left out because the perturbation crossed a kink

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def compared(self) -> int:
        """Checks that settled and were compared with the rule (0: the tensor is not checked)."""
        return self.checked + self.directions - self.kinks


def gradcheck(model: Model, batch: int = 2, seed: int = 0, threshold: float = 1e-6, eps: float = 1e-6,
              max_elements: int = 16, directions: int = 2, samples: int = 3, inputs: str = "normal") -> list[Row]:
    """One Row per trainable parameter and float input; CompileError for a model without a loss
    (E0401) or whose loss is not finite at the random point (E0407). `inputs` is one of INPUTS."""
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    m64 = model.with_dtype("f64")
    params = m64.init(seed)
    rng = np.random.default_rng(seed)
    feeds = random_feeds(m64.graph, batch, rng, positive=inputs == "positive")
    wrt = [p.name for p in trainable_params(m64.graph)] + [n.name for n in m64.graph.inputs if n.type.is_float]
    backward = m64.grad_graph(wrt, train=True)
    sizes = reference.bind_inputs(backward, feeds)
    # Drawn once and held fixed: the loss must be a function of params and inputs alone.
    randoms = {n.name: reference.draw_random(n, n.type.bind(sizes), rng) for n in backward.of_op("random")}
    # The reference's GEMMs are small (a batch of 2): one BLAS thread runs them faster than
    # OpenBLAS's pool, whose spinning workers lose most to anything else on the cores
    # (resnet20: 9.4 s against 13.9 s quiet, 13.6 s against 78-98 s beside another job).
    with threadpool_limits(limits=1, user_api="blas"):
        return check_graph(backward, feeds, params, randoms, threshold=threshold, eps=eps,
                           max_elements=max_elements, directions=directions, samples=samples, rng=rng,
                           inputs=inputs)


def check_graph(backward: Graph, feeds: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
                randoms: Mapping[str, np.ndarray] | None = None, *, threshold: float = 1e-6, eps: float = 1e-6,
                max_elements: int = 16, directions: int = 2, samples: int = 3,
                rng: np.random.Generator | None = None, inputs: str = "normal") -> list[Row]:
    """Check every Output("grad", name, ...) of a differentiated float64 graph against its loss;
    CompileError (E0407) if the loss is not finite at this point."""
    rng = rng or np.random.default_rng(0)
    # NaN and inf are found and reported below, never as NumPy's warnings.
    with np.errstate(all="ignore"):
        values = reference.evaluate(backward, feeds, params, randoms=randoms)
        forward = loss_subgraph(backward)
        if not math.isfinite(float(values[backward.loss])):
            raise _not_finite(forward, values, inputs)
        numeric = _Numeric(forward, dict(feeds), dict(params), randoms or {}, values, eps, threshold)
        return [_check_tensor(numeric, out.name, values[out.value], max_elements, directions, samples, rng)
                for out in backward.outputs_of("grad")]


def _check_tensor(numeric: "_Numeric", name: str, g: np.ndarray, max_elements: int, directions: int,
                  samples: int, rng: np.random.Generator) -> Row:
    """The row of one tensor: every element of a small one, random directions and elements of a large one."""
    x = numeric.tensor(name)
    if x.size <= max_elements:
        picked, dirs = np.arange(x.size), []
    else:
        picked = np.sort(rng.choice(x.size, min(samples, x.size), False))
        dirs = [d / np.linalg.norm(d) for d in (rng.standard_normal(x.shape) for _ in range(directions))]
    checks = [_unit(x.shape, int(i)) for i in picked] + dirs
    errors = [numeric.check(name, d, float(np.vdot(g, d))) for d in checks]
    kept = [e for e in errors if e is not None]
    worst = float(max(kept, default=0.0))
    kind = "param" if name in numeric.params else "input"
    # Nothing compared is nothing vouched for: a tensor whose every check crossed a kink fails.
    passed = worst < numeric.threshold and (bool(kept) or not errors)
    return Row(name, kind, x.shape, worst, passed, len(picked), len(dirs), len(errors) - len(kept))


def _unit(shape: tuple[int, ...], i: int) -> np.ndarray:
    d = np.zeros(shape)
    d.flat[i] = 1.0
    return d


@dataclass
class _Numeric:
    """Central differences of the loss along a direction, re-running only what the perturbed tensor feeds."""

    forward: Graph
    feeds: dict
    params: dict
    randoms: Mapping
    base: dict  # every value at the unperturbed point
    eps: float
    threshold: float

    def tensor(self, name: str) -> np.ndarray:
        return self.params[name] if name in self.params else self.feeds[name]

    def check(self, name: str, d: np.ndarray, analytic: float, steps: int = 3) -> float | None:
        """The relative error of `analytic` against the central difference along `d`; None when
        the difference quotient never settles (a kink at every step tried; module docstring),
        inf when the gradient, or the quotient at every step, is not finite (no kink)."""
        if not math.isfinite(analytic):
            return math.inf
        stale = _downstream(self.forward, name)
        known = {k: v for k, v in self.base.items() if k not in stale}
        eps, before = self.eps, None
        for _ in range(steps):
            n = (self._loss(name, d * eps, known) - self._loss(name, -d * eps, known)) / (2 * eps)
            if math.isfinite(n):  # else the step left the loss's domain, and a smaller one may not
                error = self._relative(analytic, n, eps)
                if error < self.threshold or (before is not None and
                                              self._relative(before, n, eps) < self.threshold):
                    return error  # it agrees, or two steps agree with each other and not with the rule
                before = n
            eps /= 10
        return None if before is not None else math.inf

    def _relative(self, a: float, n: float, eps: float) -> float:
        here = float(self.base[self.forward.loss])
        tiny = max(NOISE_FACTOR * np.finfo(np.float64).eps * abs(here) / (eps * self.threshold), 1e-12)
        return abs(a - n) / max(abs(a), abs(n), tiny)

    def _loss(self, name: str, step: np.ndarray, known: dict) -> float:
        y = self.tensor(name) + step
        feeds, params = self.feeds, self.params
        if name in params:
            params = {**params, name: y}
        else:
            feeds = {**feeds, name: y}
        values = reference.evaluate(self.forward, feeds, params, randoms=self.randoms, known=known)
        return float(values[self.forward.loss])


def loss_subgraph(graph: Graph) -> Graph:
    """Only the loss and what it depends on (no gradients, metrics or state updates)."""
    needed = ancestors(graph, [graph.loss])
    return graph.replace(nodes=[n for n in graph.nodes if n.name in needed], outputs=graph.outputs_of("loss"))


def _not_finite(forward: Graph, values: Mapping[str, np.ndarray], inputs: str = "normal") -> CompileError:
    """E0407 for a loss that is NaN or infinite at the random point, located at the first op
    (in graph order) whose value is not finite, and naming the inputs and parameters it reads."""
    loss = float(values[forward.loss])
    first = next(n for n in forward if not np.all(np.isfinite(values[n.name])))
    fed = [forward[s] for s in sorted(ancestors(forward, [first.name]))]
    sources = [f"{s.op if s.op == 'input' else 'parameter'} '{s.name}'" for s in fed if s.op in ("input", "param")]
    d = Diagnostic("E0407", f"the loss is {loss} at gradcheck's random point: {first.op} here is the first "
                   "value that is not finite", first.span)
    if sources:
        d.with_note(None, f"it is computed from {', '.join(sources[:4])}" + (" ..." if len(sources) > 4 else ""))
    if inputs == "normal" and any(s.op == "input" for s in fed):
        d.hint = "float inputs are drawn from a standard normal; `--inputs positive` draws them from [0.5, 2]"
    else:
        d.hint = "keep the op's argument in its domain for every value, e.g. log(softplus(h)) or sqrt(h * h + 1e-6)"
    return CompileError([d])


def _downstream(graph: Graph, name: str) -> set[str]:
    reach = {name}
    for n in graph.nodes:
        if any(i in reach for i in n.inputs):
            reach.add(n.name)
    return reach


def random_feeds(graph: Graph, batch: int, rng: np.random.Generator, positive: bool = False) -> dict[str, np.ndarray]:
    """Standard-normal float inputs (uniform on [0.5, 2] if `positive`) and uniform labels;
    every symbolic dimension is `batch`."""
    symbols = {s for n in graph.inputs for d in n.type.shape if not isinstance(d, int) for s in d.syms}
    sizes = dict.fromkeys(symbols, batch)
    require(array_bytes([n.type for n in graph.inputs], sizes), f"a random batch of {batch:,} for '{graph.name}'")
    feeds = {}
    for n in graph.inputs:
        shape, dtype = n.type.bind(sizes), NUMPY_DTYPE[n.type.dtype]
        if not n.type.is_float:
            feeds[n.name] = rng.integers(0, label_classes(graph, n.name), shape).astype(dtype)
        else:
            feeds[n.name] = (rng.uniform(0.5, 2.0, shape) if positive else rng.standard_normal(shape)).astype(dtype)
    return feeds


def label_classes(graph: Graph, label: str) -> int:
    """The number of classes an integer input ranges over: the last dimension of the scores
    (the first float input) of every op that reads it as a label, the smallest if several."""
    sizes = []
    for user in graph.consumers()[label]:
        if any(user.inputs[k] == label for k in registry.get(user.op).integer_inputs):
            scores = next((graph[i].type for i in user.inputs if graph[i].type.is_float), None)
            if scores is not None and scores.rank and isinstance(scores.shape[-1], int):
                sizes.append(scores.shape[-1])
    if not sizes:
        raise ValueError(f"cannot tell the range of integer input {label!r}: no op reads it as a label")
    return min(sizes)


def _checked(r: Row) -> str:
    if not r.directions:
        return "all" if r.checked == r.size else f"{r.checked} of {r.size} (random)"
    return f"{r.directions} directions + {r.checked} of {r.size}"


def _verdict(r: Row) -> str:
    return "ok" if r.passed else "not checked" if r.kinks and not r.compared else "FAIL"


def format_table(rows: list[Row], threshold: float = 1e-6) -> str:
    """The rows as an aligned table, then a verdict line."""
    head = ("tensor", "kind", "shape", "checked", "max rel error", "")
    body = [(r.name, r.kind, "x".join(map(str, r.shape)) or "scalar", _checked(r),
             f"{r.max_rel_error:.2e}" if r.compared else "-",
             _verdict(r) + (f" ({r.kinks} at kinks, left out)" if r.kinks else "")) for r in rows]
    widths = [max(len(line[c]) for line in [head] + body) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [head] + body]
    failed = [r.name for r in rows if _verdict(r) == "FAIL"]
    unchecked = [r.name for r in rows if _verdict(r) == "not checked"]
    parts = ([f"{len(failed)} of {len(rows)} tensors at or above {threshold:g}: {', '.join(failed)}"] if failed
             else []) + ([f"{len(unchecked)} of {len(rows)} not checked, every check at a kink: "
                          f"{', '.join(unchecked)}"] if unchecked else [])
    verdict = ("FAILED: " + "; ".join(parts)) if parts else f"passed: all {len(rows)} tensors below {threshold:g}"
    return "\n".join(lines + ["", verdict])


def to_json(rows: list[Row], threshold: float = 1e-6) -> dict:
    """`passed` only if every tensor was compared (`compared` > 0) and is below the threshold."""
    return {"threshold": threshold, "passed": all(r.passed for r in rows),
            "tensors": [asdict(r) | {"shape": list(r.shape), "size": r.size, "compared": r.compared}
                        for r in rows]}
