"""A model compiled for one device: forward, grad and step as Python callables.

    c = compile_model(model, "cpu")                    # or "gpu", or "reference" (the NumPy oracle)
    out = c.forward(params, {"image": x})              # declared outputs (+ loss, metrics with labels)
    out = c.forward(params, {"image": x}, outputs=["stage2.conv_bn_relu", "fc8"])  # any named nodes
    value, g = c.grad(params, {"image": x}, of="fc8[:, 3]", wrt=["image"])   # saliency of class 3
    loss = c.step(params, {"image": x, "label": y})    # one training step; params updated in place,
                                                       # with the optimizer's state and count (TAKEN)

Each distinct request (the outputs asked for, the `of` terms and `wrt` names, training or
inference semantics) builds its graph once and compiles it with the device's executor
(runtime/executor.py: Numba kernels in a planned arena, CUDA through CuPy, or the NumPy
reference); the executor compiles again only for a new batch size. Masks and cotangents
of `of` are inputs of the graph (dslc/objective.py), so saliency for another class,
another image or another cotangent reuses the compiled kernels.

Semantics: forward and grad run the inference graph's semantics unless `train=True`
(batchnorm on running statistics, dropout off); grad of the loss defaults to training
semantics, as training differentiates it. Results are host NumPy arrays the caller owns.
On the compiled devices a batchnorm on running statistics is folded into the convolution
before it (dslc/passes/fold_batchnorm.py; not into a linear layer: FOLDED), before
differentiating, which changes values only by rounding: a saliency map of small_cnn at
batch 64 went from 10.1 to 8.9 ms (the per-channel scale passes, forward and backward,
are gone). The reference device runs the graph as written.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import MutableMapping
from typing import Callable, Mapping, Sequence

import numpy as np

from dslc.diagnostics import UsageError
from dslc.ir.graph import Graph
from dslc.objective import (OBJECTIVE, check_call, check_grad_options, default_outputs, names_of, objective_graph,
                            outputs_graph, parse_of, weight_feeds)
from dslc.ops.norm import over_examples_alone
from dslc.passes import train_mode
from dslc.passes.autodiff import trainable_params
from dslc.passes.dce import prune
from dslc.passes.fold_batchnorm import fold_batchnorm
from dslc.passes.train_step import LR, STEP, Optimizer
from dslc.runtime.executor import Executor, Step, executor_for
from dslc.runtime.host import to_host
from dslc.stages import build, recipe_settings

Arrays = Mapping[str, np.ndarray]
# The layers whose batchnorm on running statistics the compiled devices fold into them. The
# fold runs in the prologue (it reads only parameters), which runs again whenever what it
# reads has changed: the parameters are the caller's arrays, read where they are, so the CPU
# runner compares their bytes at every call (runtime/cpu/runner.py). A convolution's weight
# is small beside its output, so the fold saves the per-channel scale passes for a few
# microseconds; a linear layer's weight is large beside its output (in x out against out per
# example): mlp_bn's forward took 288 us at batch 1 with its linear layers folded (784 x 512
# weights scaled at every call, before the comparison) and 47 us without, at batch 16 538
# and 255, at 64 865 and 791, at 128 1522 and 1597 (measured alternately, the 2-core EPYC),
# and comparing such weights would cost much of what the fold saves.
FOLDED = ("conv2d",)
# Compiled requests a Compiled keeps, the most recently used: each holds its kernels' arenas,
# and a caller making a new request at every call (a fresh lambda in `rules`, which is keyed
# by identity as JAX keys a static function) would otherwise keep them all.
REQUESTS = 32
# The entry of `params` that `step` keeps its count of steps taken in (Adam's t, for its bias
# correction), under the optimizer state's reserved prefix: a count per set of parameters,
# as PyTorch keeps one per parameter in the optimizer's state. It was the Compiled's: two
# dicts stepped in turn by one compiled model each took the other's steps as their own.
TAKEN = "opt.step"


def _one_call_at_a_time(method):
    """`method` under the object's lock. A compiled request runs in one arena: its inputs
    are copied in, its kernels run, its results copied out, each a step of Python, and two
    threads calling at once read each other's values (797 of 800 saliency maps of small_cnn
    wrong, from four threads). Uncontended, the lock costs well under a microsecond."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class Compiled:
    """The callables of one model on one executor (see the module docstring). Calls from
    several threads are safe and run one at a time (_one_call_at_a_time)."""

    def __init__(self, model, executor: Executor, optimizer: Optimizer | None = None):
        self._lock = threading.Lock()
        self.model, self.executor = model, executor
        self.optimizer = optimizer
        self._steps: dict[tuple, Step] = {}  # request -> its compiled Step
        self._needs: dict[tuple, frozenset] = {}  # request -> the names of its graph's inputs
        self._fold = FOLDED if executor.name != "reference" else ()  # the oracle runs the graph as written
        self._over_examples = over_examples_alone(model.graph)  # batchnorms a step of one example would break
        self._masks: tuple = ((), {})  # the last grad call's (request, terms, input shapes) and mask feeds
        self._again: tuple = (None, ())  # the last grad call's _signature, its Step and weight feeds
        self._requests: dict[tuple, tuple] = {}  # grad's spelled requests, read (_request)
        self._defaults: tuple = (None, ())  # the last forward's input names and its default outputs
        self._params = frozenset(n.name for n in model.graph.params)  # the caller's to give (step adds the rest)
        self._states: dict[tuple, tuple] = {}  # step request -> (its state nodes, the names it updates)

    @property
    def device(self) -> str:
        return self.executor.name

    def _compiled(self, key: tuple, make):
        """The compiled Step of request `key` (compiled by `make` the first time), now the most
        recently used of the REQUESTS kept."""
        step = self._steps.pop(key, None)
        if step is None:
            while len(self._steps) >= REQUESTS:  # the least recently used first (the dict's order)
                oldest = next(iter(self._steps))
                del self._steps[oldest], self._needs[oldest]
                self._states.pop(oldest, None)
            step = self.executor.compile(make())
            self._needs[key] = frozenset(n.name for n in step.graph.inputs)
        self._steps[key] = step
        return step

    def _base(self, train: bool) -> Graph:
        return train_mode.lower(self.model.graph) if train else self.model.graph

    # ---- forward ------------------------------------------------------------------------

    @_one_call_at_a_time
    def forward(self, params: Arrays, inputs: Arrays, outputs: Sequence[str] | None = None, train: bool = False,
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """The values of `outputs` (node or output names), by name; by default the declared
        outputs and, when `inputs` hold what they read, the loss and metrics."""
        check_call(params, inputs, self.model.input_names, self.model.name)
        _check_rng(rng, "forward")
        names = names_of(outputs, "forward: outputs") if outputs is not None else self._default_outputs(inputs)
        key = ("forward", names, train)
        self._compiled(key, lambda: self._forward_graph(names, train))
        return self._run(key, inputs, params, rng)

    def _default_outputs(self, inputs: Arrays) -> tuple[str, ...]:
        """objective.default_outputs for these input names, kept for the next call with the
        same names (1.5 of the 13 us a forward of digits_mlp at batch 1 took)."""
        fed = frozenset(inputs)
        if fed != self._defaults[0]:
            self._defaults = (fed, default_outputs(self.model.graph, fed))
        return self._defaults[1]

    def _forward_graph(self, names: tuple[str, ...], train: bool) -> Graph:
        graph = outputs_graph(self._base(train), names)
        return prune(fold_batchnorm(graph, self._fold)[0]) if self._fold else graph

    # ---- grad ---------------------------------------------------------------------------

    @_one_call_at_a_time
    def grad(self, params: Arrays, inputs: Arrays, of="loss", wrt: Sequence[str] | None = None,
             train: bool | None = None, rng: np.random.Generator | None = None,
             rules: Mapping[str, Callable] | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """(the objective's value, {name: its gradient}) for the objective `of` names
        (dslc/objective.py: "loss", "fc8", "fc8[:, 3]", {"conv3": "l2", "conv5": dL}) with
        respect to the inputs and parameters in `wrt` (default: every trainable parameter).
        `train` defaults to training semantics for the loss and inference for anything else.
        `rules` replaces some ops' gradient rules ({"relu": rule}: guided backpropagation); a
        rule is known by its identity, so define it once: a new lambda at every call compiles
        the request again."""
        signature = _signature(params, inputs, of, wrt, train, rng, rules)
        if signature is not None and signature == self._again[0]:  # asked as the last call was
            step, weights = self._again[1]
            out = _owned(step.again({**inputs, **weights}, dict(params)))
        else:
            check_call(params, inputs, self.model.input_names, self.model.name)
            _check_rng(rng, "grad")
            key, terms, names, train = self._request(of, wrt, train, rules)
            step = self._compiled(key, lambda: objective_graph(self._base(train), terms, names, rules, self._fold))
            weights = self._weights(key, step, terms, inputs)
            out = self._run(key, {**inputs, **weights}, params, rng)
            self._again = (signature, (step, weights)) if signature is not None else (None, ())
        return float(out.pop(OBJECTIVE)), out

    def _request(self, of, wrt, train, rules) -> tuple:
        """(key, terms, wrt names, train) of a grad request, checked; kept by its spelling for
        the next call when `of` is one name and `rules` none (a loop of saliency maps asks the
        same each time: 2 of its 160 us at batch 1 went to reading it again)."""
        spelled = _spelling(of, wrt, train, rules)
        if spelled in self._requests:
            return self._requests[spelled]
        check_grad_options(rules, train)
        terms = parse_of(of)
        train = (of == "loss") if train is None else train
        names = names_of(wrt, "grad: wrt") if wrt is not None else tuple(p.name for p in trainable_params(self.model.graph))
        key = ("grad", tuple(t.key for t in terms), names, train, tuple(sorted((rules or {}).items())))
        if key not in self._steps:  # checked once, when the request is first compiled
            for name in names:
                self.model.check_wrt(name)
        if spelled is not None:
            if len(self._requests) >= REQUESTS:
                self._requests.clear()
            self._requests[spelled] = (key, terms, names, train)
        return key, terms, names, train

    def _weights(self, key: tuple, step, terms, inputs: Arrays) -> dict[str, np.ndarray]:
        """weight_feeds, kept for the next call with the same terms (indices included) and
        inputs of the same shapes where they are masks (they depend on nothing else; a given
        weighting array is read afresh): 12 of the 0.39 ms of a saliency gradient of
        small_cnn at batch 1 went to making them."""
        if any(t.kind == "array" for t in terms):
            return weight_feeds(step.graph, terms, inputs)
        shapes = (key, tuple((t.node, t.kind, t.index) for t in terms),
                  tuple((name, np.shape(v)) for name, v in inputs.items()))
        if shapes != self._masks[0]:
            self._masks = (shapes, weight_feeds(step.graph, terms, inputs))
        return self._masks[1]

    # ---- step ---------------------------------------------------------------------------

    @_one_call_at_a_time
    def step(self, params: dict[str, np.ndarray], inputs: Arrays, lr: float | None = None,
             rng: np.random.Generator | None = None) -> dict[str, float]:
        """One training step with the recipe's optimizer (or `optimizer` given to compile, or
        plain SGD): updates `params` in place, adding the optimizer's state (zeros) on the
        first call, and for Adam the count of steps taken (params[TAKEN]); returns the loss and
        metrics of the batch."""
        check_call(params, inputs, self.model.input_names, self.model.name)
        _check_rng(rng, "step")
        if not isinstance(params, MutableMapping):  # else a TypeError at the first assignment, perhaps after the step
            raise UsageError(f"step: params is updated in place, so it is a dict of arrays (m.init(seed), or a "
                             f"copy: dict(m.params)), not {type(params).__name__}")
        if lr is not None and not (isinstance(lr, (int, float, np.number)) and not isinstance(lr, (bool, np.bool_))
                                   and 0 <= lr < np.inf):
            raise UsageError(f"step: lr is a finite number >= 0 (as PyTorch's optimizers take it), not {lr!r}")
        self._check_batch_statistics(inputs)
        opt = self.optimizer or self._recipe_optimizer
        step = self._compiled(("step", opt), lambda: build(self.model, "train_step", opt))
        states, updated = self._step_state(("step", opt), step.graph)
        taken = _steps_taken(params)
        for node in states:  # optimizer state starts at zero
            if node.name not in params:
                params[node.name] = np.zeros(node.type.bind({}), np.dtype(_numpy(node.type.dtype)))
                taken = 0  # and so does its count of steps (Adam's t)
        dtype = _numpy(step.graph[LR].type.dtype)
        feeds = dict(inputs)
        feeds[LR] = np.asarray(opt.lr if lr is None else lr, dtype)
        if STEP in step.graph:
            feeds[STEP] = np.asarray(taken + 1, dtype)
        self._check_fed(("step", opt), feeds)
        out = step(feeds, params, rng)
        if STEP in step.graph:
            params[TAKEN] = np.asarray(taken + 1, np.int64)
        for name in updated:
            params[name] = np.array(to_host(params[name]))  # the caller's copy, not an arena view
        return {name: float(v) for name, v in out.items()}

    @functools.cached_property
    def _recipe_optimizer(self) -> Optimizer:
        """The model's recipe's optimizer, read once: reading the recipe again at each step
        took 100 of a 1 ms step of small_cnn at batch 1."""
        return recipe_settings(self.model)[0]

    def _step_state(self, key: tuple, graph: Graph) -> tuple:
        """(the optimizer state nodes of step request `key`'s graph, the names of the
        parameters and state it updates), found once per request."""
        if key not in self._states:
            self._states[key] = ([node for node in graph.params if node.name not in self._params],
                                 [o.name for o in graph.outputs if o.kind in ("param", "state")])
        return self._states[key]

    def _check_batch_statistics(self, inputs: Arrays) -> None:
        """A UsageError for a step on one example of a model with a batchnorm over the examples
        alone (norm.over_examples_alone): its running variance would become NaN (0/0), as
        PyTorch refuses it too."""
        names = self._over_examples
        sizes = [np.shape(inputs[n.name])[:1] for n in self.model.graph.inputs if n.name in inputs]
        if names and (1,) in sizes:
            raise UsageError(f"step: batchnorm '{names[0]}' takes its statistics over the examples of a batch "
                             "alone, and one example has no variance (its running variance would be NaN); "
                             "step on 2 examples or more")

    def _run(self, key: tuple, feeds: Arrays, params: Arrays, rng) -> dict[str, np.ndarray]:
        """The compiled request `key` run on `feeds` (those its graph reads) and `params`."""
        step, needed = self._steps[key], self._check_fed(key, feeds)
        return _owned(step({k: np.asarray(v) for k, v in feeds.items() if k in needed}, dict(params), rng))

    def _check_fed(self, key: tuple, feeds: Arrays) -> frozenset:
        """The names of the inputs request `key`'s graph reads; a UsageError naming those
        `feeds` lack (a step without its labels named the rate and step count it is fed too)."""
        needed = self._needs[key]
        if not needed.issubset(feeds):
            missing = sorted(needed - set(feeds))
            raise UsageError(f"model '{self.model.name}': this needs the input(s) {', '.join(missing)}")
        return needed

    def __repr__(self) -> str:
        return f"<Compiled {self.model.name} on {self.device}: {len(self._steps)} graphs compiled>"


def _owned(out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A step's results as host arrays of the caller's own (not views of the arena)."""
    return {name: np.array(to_host(v)) for name, v in out.items()}


def _signature(params, inputs, of, wrt, train, rng, rules) -> tuple | None:
    """A grad call as a key: its spelling (_spelling) and each input's name, shape and dtype;
    None unless params and inputs are dicts, each input a NumPy array, the request plainly
    spelled and no generator given. A call with the last call's key runs the last call's
    Step again as it is (Compiled.grad; ArenaStep.again): the checks, the request, the
    weight feeds and the arena the last call found hold for it too. In a loop of saliency
    maps of small_cnn at batch 1 the Python around the kernels took 70 us of a 296 us call
    in a slow minute (2026-12-08, the Xeon), several times what each piece took in a loop
    of its own: the kernels before it leave the interpreter's data out of cache. Alternated
    in one process, the call took 316 and 333 us so against 344 and 354 the whole way."""
    if rng is not None or type(params) is not dict or type(inputs) is not dict:
        return None
    spelled = _spelling(of, wrt, train, rules)
    if spelled is None or not all(type(v) is np.ndarray for v in inputs.values()):
        return None
    return spelled, tuple((name, v.shape, v.dtype) for name, v in inputs.items())


def _spelling(of, wrt, train, rules) -> tuple | None:
    """A grad request as a dict key, where it is spelled plainly (`of` one name, `wrt` None, a
    name or names, `train` None or a bool, no rules); None otherwise (read afresh each call)."""
    if rules is not None or not isinstance(of, str) or not (train is None or isinstance(train, (bool, np.bool_))):
        return None
    if wrt is None or isinstance(wrt, str):
        return of, wrt, train
    if isinstance(wrt, (list, tuple)) and all(isinstance(name, str) for name in wrt):
        return of, tuple(wrt), train
    return None


def _steps_taken(params) -> int:
    """The steps `params` has taken (TAKEN), 0 before the first; a UsageError for a count
    that is no whole number >= 0."""
    count = params.get(TAKEN)
    if count is None:
        return 0
    value = np.asarray(count)
    if value.ndim or value.dtype.kind not in "iu" or value < 0:
        raise UsageError(f"step: params['{TAKEN}'] is the count of steps taken (Adam's t), a whole number >= 0, "
                         f"not {count!r}")
    return int(value)


def _check_rng(rng, call: str) -> None:
    """A UsageError unless `rng` is None or a NumPy Generator: a seed (rng=3) or a legacy
    RandomState was an AttributeError from inside the executor ('int' object has no attribute
    'integers'), and only for a model with dropout, where masks are drawn."""
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise UsageError(f"{call}: rng is a NumPy Generator (np.random.default_rng(seed)) or None, not "
                         f"{type(rng).__name__}")


def _numpy(dtype: str):
    from dslc.ir.types import NUMPY_DTYPE
    return NUMPY_DTYPE[dtype]


def compile_model(model, device: str = "cpu", optimizer: Optimizer | None = None) -> Compiled:
    """The compiled callables of `model` on `device` (cpu, gpu, auto, reference); a
    DeviceError for a GPU that cannot be used."""
    if optimizer is not None and not isinstance(optimizer, Optimizer):  # optimizer="adam" failed at the first step,
        # as "unknown optimizer settings ['a', 'd', 'm']"
        given = repr(optimizer) if isinstance(optimizer, str) else type(optimizer).__name__
        raise UsageError(f"compile: optimizer is an Optimizer (dslc.passes.train_step.Optimizer(\"adam\", lr=1e-3)) "
                         f"or None for the recipe's, not {given}")
    return Compiled(model, executor_for(device), optimizer)
