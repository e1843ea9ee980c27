"""The training step as one graph: training-mode forward, backward, optimizer update.

    step = train_step(model.graph, Optimizer("adam", lr=1e-3), frozen={"fc1.weight"})

Inputs of the step graph: the batch inputs, the parameters, the optimizer state
(`param` nodes with role "state", not trainable, zero-initialised, named
`opt.SLOT.PARAM`: opt.v.fc1.weight), the learning rate `lr` (a scalar of the
loss's dtype, so a schedule changes it without recompiling) and, for Adam, `step`
(t = 1 on the first update; bias correction uses it). Outputs: the loss, the
metrics, Output("param", w, new w) for each trained parameter and
Output("state", s, new s) for optimizer state and batchnorm running statistics.

Update rules (CS231n notes; the momentum form differs from PyTorch's only by
v_cs = -lr v_torch, the same iterates for a constant lr):

    sgd        w -= lr g
    momentum   v = mu v - lr g;  w += v
    nesterov   v_prev = v;  v = mu v - lr g;  w += -mu v_prev + (1 + mu) v
    adagrad    c += g^2;  w -= lr g / (sqrt(c) + eps)
    rmsprop    c = d c + (1 - d) g^2;  w -= lr g / (sqrt(c) + eps)
    adam       m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
               w -= lr mhat / (sqrt(vhat) + eps),  mhat = m / (1 - b1^t),  vhat = v / (1 - b2^t)
    adamw      adam, and w -= lr wd w  (decoupled decay)

Weight decay `wd`: adamw decouples it as above; every other kind adds the L2
gradient first, g += wd w. By default only weights (role "weight": linear and conv
kernels, `param`s of rank >= 2 or declared `as weight`) are decayed, never biases or
batchnorm scale and shift: the group `l2(weights)` regularises, as the lectures do.
`decay_roles` names the roles decayed instead: `all` is what PyTorch's optimizers do
with the parameters they are given (AdamW(model.parameters()) decays every one).

Frozen parameters get no update and no gradient nodes: they are not
differentiated, and the cotangents gradient rules compute for them anyway are
pruned with every other node no output needs. A layer with running statistics
whose parameters are all frozen keeps inference semantics (train_mode.lower's
`keep`): a frozen batchnorm normalises with its running statistics and does not
update them.

Gradient clipping by global norm (`clip = norm(max_norm)`, PyTorch's
clip_grad_norm_) rescales every gradient by one factor before the update rule
(and before weight decay is added):

    ||g||^2 = sum over trained parameters of sum g^2
    g      *= min(1, max_norm / ||g||)
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterable, Mapping

from dslc.diagnostics import CompileError, did_you_mean
from dslc.frontend.recipe_values import (BELOW_ONE, FLAG, NONNEG_NUM, POS, Arg, CallSpec, ListOf, Num, Word, family,
                                         when)
from dslc.ir.builder import GraphBuilder
from dslc.ir.graph import Graph, Init, Output
from dslc.ir.types import scalar
from dslc.passes.autodiff import GradBuilder, differentiate, trainable_params
from dslc.passes.data_parallel import DataParallel, average, synchronise_batchnorm
from dslc.passes.dce import prune
from dslc.passes.train_mode import lower

KINDS = ("sgd", "adagrad", "rmsprop", "adam", "adamw")
DECAYABLE = ("weight", "bias", "scale", "shift")  # the trained roles (state is never trained)
LR, STEP = "lr", "step"


@dataclass(frozen=True)
class Optimizer:
    """An optimizer and its hyper-parameters; defaults are PyTorch's (rmsprop's decay is its alpha).

    `momentum` > 0 turns sgd into momentum, and `nesterov` into Nesterov momentum.
    `lr` is the value a trainer feeds to the step's `lr` input.
    """

    kind: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    decay: float = 0.99
    decay_roles: tuple[str, ...] = ("weight",)  # the roles weight_decay applies to; ("all",) for every one

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown optimizer {self.kind!r}; known: {', '.join(KINDS)}")
        if self.nesterov and (self.kind != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs sgd with momentum > 0")
        for key in ("momentum", "beta1", "beta2", "decay"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.lr < 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ValueError("lr and weight_decay must be >= 0 and eps > 0")
        unknown = set(self.decay_roles) - set(DECAYABLE) - {"all"}
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)} in decay_roles; roles: {', '.join(DECAYABLE)}, all")

    def decays(self, role: str) -> bool:
        """Whether weight decay applies to a parameter of `role`."""
        return role in self.decay_roles or ("all" in self.decay_roles and role in DECAYABLE)

    @classmethod
    def of(cls, spec: "Optimizer | Mapping") -> "Optimizer":
        """An Optimizer from itself or a dict such as {"kind": "adam", "lr": 1e-3}."""
        if isinstance(spec, Optimizer):
            return spec
        unknown = set(spec) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown optimizer settings {sorted(unknown)}")
        return cls(**spec)

    @classmethod
    def from_recipe(cls, call) -> "Optimizer":
        """From a recipe's checked `optimizer = adam(lr=1e-3)` (a CallValue of SCHEMA below, whose
        argument names are these fields and whose values the schema has range-checked)."""
        return cls.of({"kind": call.name, **call.kwargs})

    @property
    def slots(self) -> tuple[str, ...]:
        """The per-parameter state this optimizer keeps."""
        if self.kind == "sgd":
            return ("v",) if self.momentum else ()
        return ("cache",) if self.kind in ("adagrad", "rmsprop") else ("m", "v")

    @property
    def needs_step(self) -> bool:
        return self.kind in ("adam", "adamw")


# The recipe's `optimizer = ...` calls: their arguments are Optimizer's fields, range-checked.
_LR = Arg("lr", POS, doc="base learning rate")
_EPS = Arg("eps", POS, 1e-8, "added to the denominator for stability")
_BETAS = (Arg("beta1", Num(range=BELOW_ONE), 0.9, "decay of the gradient mean"),
          Arg("beta2", Num(range=BELOW_ONE), 0.999, "decay of the squared-gradient mean"))


def _decay(default: float) -> Arg:
    return Arg("weight_decay", NONNEG_NUM, default, "L2 penalty coefficient added to the gradient")


_ROLES = Arg("decay_roles", ListOf(Word(DECAYABLE + ("all",))), ("weight",),
             "the parameter roles weight_decay applies to: weight (the lectures' default), or all (PyTorch's)")


SCHEMA = family(
    CallSpec("sgd", "stochastic gradient descent, optionally with (Nesterov) momentum",
             (_LR, Arg("momentum", Num(range=BELOW_ONE), 0.0), Arg("nesterov", FLAG, False), _decay(0.0), _ROLES),
             when(lambda a: a["nesterov"] and a["momentum"] == 0, "E0506", "nesterov",
                  "nesterov=true needs momentum > 0")),
    CallSpec("adagrad", "per-parameter rates scaled by accumulated squared gradients",
             (_LR, _EPS, _decay(0.0), _ROLES)),
    CallSpec("rmsprop", "rates scaled by a moving average of squared gradients",
             (_LR, Arg("decay", Num(range=BELOW_ONE), 0.99), _EPS, _decay(0.0), _ROLES)),
    CallSpec("adam", "Adam with bias correction", (Arg("lr", POS, 1e-3), *_BETAS, _EPS, _decay(0.0), _ROLES)),
    CallSpec("adamw", "Adam with weight decay applied to the weights, not the gradient",
             (Arg("lr", POS, 1e-3), *_BETAS, _EPS, Arg("weight_decay", NONNEG_NUM, 0.01, "decoupled decay"), _ROLES)))


def train_step(graph: Graph, optimizer: "Optimizer | Mapping", frozen: Iterable[str] = (),
               clip: float | None = None, parallel: DataParallel | None = None) -> Graph:
    """The graph of one training step of the typed graph `graph` (stage "train_step");
    `clip` is the max_norm of global-norm gradient clipping (None: no clipping); `parallel`
    makes it one rank's step of a data-parallel run (data_parallel.py: gradients, loss,
    metrics and batchnorm statistics averaged over the ranks)."""
    opt, frozen = Optimizer.of(optimizer), set(frozen)
    _check(graph, frozen)
    keep = [n.name for n in graph if _frozen_with_statistics(graph, n, frozen)]
    lowered = lower(graph, keep)
    if parallel is not None and parallel.sync_batchnorm:
        lowered = synchronise_batchnorm(lowered)
    back = differentiate(lowered, [p.name for p in trainable_params(graph) if p.name not in frozen])
    b = GraphBuilder(back.nodes)
    dtype = back[back.loss].type.dtype
    lr = b.source(LR, "input", scalar(dtype))
    step = b.source(STEP, "input", scalar(dtype)) if opt.needs_step else None
    outputs = [o for o in back.outputs if o.kind in ("loss", "metric", "state")]
    grads = back.outputs_of("grad")
    if parallel is not None:
        outputs, grads = average(b, outputs, grads, parallel.sync_batchnorm)
    scale = _clip_scale(b, [g.value for g in grads], clip, dtype) if clip and grads else None
    for grad in grads:
        w = back[grad.name]
        state = {slot: b.source(f"opt.{slot}.{w.name}", "param", w.type,
                                {"init": Init("zeros"), "trainable": False, "role": "state"})
                 for slot in opt.slots}
        u = _Update(b, opt, w.name, lr, step, state, opt.weight_decay if opt.decays(w.attr("role")) else 0.0)
        g = grad.value if scale is None else u.ops.mul(grad.value, scale)
        g = g if opt.kind == "adamw" or not u.wd else u.ops.add(g, u.times(w.name, u.wd))
        outputs.append(Output("param", w.name, _RULES[opt.kind](u, g)))
        outputs += [Output("state", state[slot], u.updated[slot]) for slot in opt.slots]
    return prune(b.graph(graph.name, outputs, "train_step"))


def _frozen_with_statistics(graph: Graph, node, frozen: set[str]) -> bool:
    params = [graph[i] for i in node.inputs if graph[i].op == "param"]
    return any(p.attr("role") == "state" for p in params) and all(p.name in frozen for p in params)


def _clip_scale(b: GraphBuilder, grads: list[str], max_norm: float, dtype: str) -> str:
    """min(1, max_norm / ||g||) over all gradients, as 1 - relu(1 - max_norm rsqrt(||g||^2 + tiny))
    (`tiny` keeps an all-zero gradient finite: its factor is then 1)."""
    ops = GradBuilder(b, prefix="clip.")
    one = ops.const(1.0, dtype)
    squares = ops.add(ops.l2(*grads), ops.const(1e-30, dtype))
    ratio = ops.mul(ops.const(max_norm, dtype), ops.rsqrt(squares))
    return ops.sub(one, ops.relu(ops.sub(one, ratio)))


def _check(graph: Graph, frozen: set[str]) -> None:
    if graph.loss is None:
        raise CompileError.single("E0401", f"model '{graph.name}' has no loss to train",
                                  hint="add one, e.g. `loss cross_entropy(logits, label)`")
    params = {p.name for p in graph.params}
    unknown = sorted(frozen - params)
    if unknown:
        raise CompileError.single("E0405", f"cannot freeze '{unknown[0]}': model '{graph.name}' has no such "
                                  "parameter", hint=did_you_mean(unknown[0], params))
    trainable = {p.name for p in trainable_params(graph)}
    if not trainable - frozen:  # the step would update nothing, and has no `lr` input to feed
        why = ("every trainable parameter is frozen" if trainable else
               "every parameter is declared `as state`" if params else "it has no parameters")
        raise CompileError.single("E0408", f"model '{graph.name}' has nothing to train: {why}",
                                  hint="declare a trainable `param` (a weight, bias, scale or shift), "
                                  "or freeze fewer parameters")
    taken = [n for n in graph if n.name in (LR, STEP) or n.name.startswith("opt.")]
    if taken:
        raise CompileError.single("E0406", f"'{taken[0].name}' is a name the training step gives its own "
                                  f"values (lr, step, opt.*); model '{graph.name}' already uses it",
                                  taken[0].span, hint="rename it")


class _Update:
    """What an update rule of one parameter `w` uses: its state slots, lr and step, and node
    constructors that name the new parameter `W.new` and each new state `opt.SLOT.W.new`."""

    def __init__(self, b: GraphBuilder, opt: Optimizer, w: str, lr: str, step: str | None,
                 state: dict[str, str], wd: float):
        self.b, self.opt, self.w, self.lr, self.step, self.state, self.wd = b, opt, w, lr, step, state, wd
        self.ops = GradBuilder(b, prefix=f"opt.{w}.")
        self.updated: dict[str, str] = {}

    def times(self, x: str, k: float) -> str:
        return self.ops.mul(x, self.ops.const(k, self.ops.type(x).dtype))

    def param(self, op: str, *inputs: str, **attrs) -> str:
        return self.ops.named(self.b.unique(f"{self.w}.new"), op, *inputs, **attrs)

    def slot(self, slot: str, op: str, *inputs: str, **attrs) -> str:
        self.updated[slot] = self.ops.named(self.b.unique(f"{self.state[slot]}.new"), op, *inputs, **attrs)
        return self.updated[slot]


def _sgd(u: _Update, g: str) -> str:
    mu = u.opt.momentum
    if not mu:
        return u.param("sgd_step", u.w, g, u.lr)
    v = u.slot("v", "momentum_velocity", u.state["v"], g, u.lr, momentum=mu)
    if u.opt.nesterov:
        return u.param("nesterov_step", u.w, u.state["v"], v, momentum=mu)
    return u.param("add", u.w, v)


def _adagrad(u: _Update, g: str) -> str:
    cache = u.slot("cache", "accumulate_square", u.state["cache"], g)
    return u.param("adaptive_step", u.w, g, cache, u.lr, eps=u.opt.eps)


def _rmsprop(u: _Update, g: str) -> str:
    cache = u.slot("cache", "moving_average", u.state["cache"], g, decay=u.opt.decay, square=True)
    return u.param("adaptive_step", u.w, g, cache, u.lr, eps=u.opt.eps)


def _adam(u: _Update, g: str) -> str:
    o = u.opt
    m = u.slot("m", "moving_average", u.state["m"], g, decay=o.beta1)
    v = u.slot("v", "moving_average", u.state["v"], g, decay=o.beta2, square=True)
    return u.param("adam_step", u.w, m, v, u.lr, u.step, beta1=o.beta1, beta2=o.beta2, eps=o.eps,
                   weight_decay=u.wd if o.kind == "adamw" else 0.0)


_RULES: dict[str, Callable[[_Update, str], str]] = {
    "sgd": _sgd, "adagrad": _adagrad, "rmsprop": _rmsprop, "adam": _adam, "adamw": _adam}
