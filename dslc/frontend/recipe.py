"""Training recipes: `train MODEL [as NAME] { key = value }` checked against one schema.

A recipe says how to train, never what to compute; the trainer gives each setting its
effect. Here every setting is declared once (`KEYS`, with its type, default and meaning)
and the AST values are turned into a frozen, JSON-able `Recipe` whose calls are
`CallValue`s with every argument present (defaults filled in). A call's arguments may be
given by position, in the order shown, or by name; a bare name stands for a call without
arguments (`schedule = constant`); `key = none` turns an optional setting off.

    data       digits() | mnist(dir) | fashion_mnist(dir) | cifar10(dir) | cifar100(dir, labels=fine)
               | npz(path, x="x", y="y") | csv(path, label="label") | image_folder(dir, size);
               each also takes `classes=[...]` (keyword only): keep those classes       required
    split      validation(fraction, test=0, seed=0) | none         validation(0.1, test=0, seed=0)
    normalize  none | mean_image | per_channel (statistics of the training split)      per_channel
    augment    [hflip(p=0.5), random_crop(size, pad=0), random_resized_crop(size, scale=[0.08, 1.0]),
                color_jitter(brightness=0, contrast=0, saturation=0), cutout(size), mixup(alpha)]   []
    batch      int > 0                                                                    64
    epochs     int > 0, or none when `steps` is given                                     10
    steps      int > 0 optimiser steps instead of epochs (not both)                       none
    optimizer  sgd(lr, momentum=0, nesterov=false, weight_decay=0) | adagrad(lr, eps=1e-8,
               weight_decay=0) | rmsprop(lr, decay=0.99, eps=1e-8, weight_decay=0)
               | adam(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0)
               | adamw(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)    adam()
    schedule   constant() | step(every, gamma=0.1) | exponential(k) | inverse_time(k)
               | cosine(min_lr=0) | cyclical(low, high, period) | one_cycle(max_lr, pct=0.3);
               each also takes `warmup=EPOCHS` (keyword only); time is counted in epochs  constant()
    weight_decay  float >= 0, shorthand for the optimizer's weight_decay argument (moved there)
    clip       norm(max_norm) or a bare number: clip gradients to this global L2 norm   none
    stop       early(metric=val_loss, patience=5, mode=min|max, min_delta=0); mode defaults to
               min for a metric ending in "loss", else max; metrics: train_/val_ + loss or a
               metric of the model                                                    none
    checkpoint every(n): save the last and best weights every n epochs | none           every(1)
    init       checkpoint(path, skip=[globs]) | none                                     none
    freeze     [globs] of parameters (or layers: a glob may match any dotted prefix)    []
    seed       int in [0, 2**32 - 1]                                                     0
    device     cpu | gpu | auto (the GPU where CuPy sees one, else the cpu)               auto

Diagnostics (E05xx):
    E0501 unknown setting            E0507 a required setting is missing (data; epochs or steps)
    E0502 value of the wrong type    E0508 a setting given twice in one recipe
    E0503 unknown call or choice     E0509 a glob (freeze, init skip) matches no parameter
    E0504 unknown, missing, repeated or surplus argument of a call
    E0505 value out of range         E0510 the recipe trains a model that does not exist
    E0506 settings that conflict     E0511 two recipes share a name
    E0512 (warning) a glob matches only layers without parameters, so it selects nothing
"""
from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from dslc.diagnostics import CompileError, Diagnostic, Span, UsageError, did_you_mean
from dslc.frontend import ast
from dslc.frontend.parse import parse

REQUIRED = object()  # an argument or setting without a default
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# ---- values ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CallValue:
    """A checked call such as sgd(lr=0.1, ...): every argument in declaration order."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    def __getitem__(self, key: str):
        return dict(self.args)[key]

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    def with_arg(self, key: str, value) -> "CallValue":
        return CallValue(self.name, tuple((k, value if k == key else v) for k, v in self.args))


@dataclass(frozen=True)
class Recipe:
    """A checked recipe with every setting of `KEYS` (off ones are None): recipe["batch"] -> 64."""

    model: str
    name: str
    entries: tuple[tuple[str, Any], ...]
    span: Span | None = field(default=None, compare=False)

    def __getitem__(self, key: str):
        return dict(self.entries)[key]

    def to_json(self) -> dict:
        return {"model": self.model, "name": self.name, "entries": {k: _to_json(v) for k, v in self.entries}}

    @classmethod
    def from_json(cls, data: dict) -> "Recipe":
        return cls(data["model"], data["name"], tuple((k, _from_json(v)) for k, v in data["entries"].items()))

    def __str__(self) -> str:
        """The recipe as .net text, which reads back to an equal Recipe."""
        return "\n".join(_render(self)[0])


def _to_json(v):
    if isinstance(v, CallValue):
        return {"call": v.name, "args": {k: _to_json(x) for k, x in v.args}}
    return [_to_json(x) for x in v] if isinstance(v, tuple) else v


def _from_json(v):
    if isinstance(v, dict):
        return CallValue(v["call"], tuple((k, _from_json(x)) for k, x in v["args"].items()))
    return tuple(_from_json(x) for x in v) if isinstance(v, list) else v


def _quote(s: str) -> str:
    return '"' + "".join({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, c)
                         for c in s) + '"'


def _fmt(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else repr(v)


# ---- value types: each converts an AST expression or raises _Bad ----------------

class _Bad(Exception):
    """A value that cannot be used; carries its diagnostic, or None when already reported."""

    def __init__(self, diag: Diagnostic | None = None):
        self.diag = diag


def _number(e):
    if isinstance(e, ast.Num):
        return e.value
    if isinstance(e, ast.Neg):
        v = _number(e.operand)
        return None if v is None else -v
    return None


def _describe(e) -> str:
    if isinstance(e, (ast.Num, ast.Neg)) and _number(e) is not None:
        return f"the number {_number(e)}"
    return {ast.Str: "a string", ast.Bool: "true/false", ast.ListLit: "a list"}.get(type(e)) or (
        f"the name '{e.id}'" if isinstance(e, ast.Name) else
        f"a call to {e.func}()" if isinstance(e, ast.Call) else "an expression")


def _wrong(typ, e, label: str) -> _Bad:
    return _Bad(Diagnostic("E0502", f"{label} must be {typ.what}, got {_describe(e)}", e.span))


@dataclass(frozen=True)
class Range:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v) -> bool:
        return ((self.lo is None or v > self.lo or (v == self.lo and not self.lo_open))
                and (self.hi is None or v < self.hi or (v == self.hi and not self.hi_open)))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


POSITIVE, NONNEG = Range(0, lo_open=True), Range(0)
PROB, FRACTION, BELOW_ONE = Range(0, 1), Range(0, 1, True, True), Range(0, 1, hi_open=True)


@dataclass(frozen=True)
class Num:
    integer: bool = False
    range: Range | None = None

    @property
    def what(self) -> str:
        return "an integer" if self.integer else "a number"

    def accepts(self, e) -> bool:
        return _number(e) is not None

    def convert(self, e, label: str, errors):
        written = _number(e)
        if written is None or (self.integer and isinstance(written, float) and not written.is_integer()):
            raise _wrong(self, e, label)
        v = int(written) if self.integer else float(written)
        if not math.isfinite(v) or (self.range and v not in self.range):
            bound = f"{self.range}" if self.range else "finite"
            raise _Bad(Diagnostic("E0505", f"{label} must be {bound}, got {written}", e.span))
        return v

    def show(self, v) -> str:
        return _fmt(v)


@dataclass(frozen=True)
class Lit:
    """A literal of one AST kind: a string (TEXT) or true/false (FLAG)."""

    node: type
    what: str

    def accepts(self, e) -> bool:
        return isinstance(e, self.node)

    def convert(self, e, label: str, errors):
        if not self.accepts(e):
            raise _wrong(self, e, label)
        return e.value

    def show(self, v) -> str:
        return _quote(v) if isinstance(v, str) else _fmt(v)


TEXT, FLAG = Lit(ast.Str, "a string"), Lit(ast.Bool, "true or false")


@dataclass(frozen=True)
class Word:
    """A bare name (or a string) such as `per_channel`; any name when `choices` is empty."""

    choices: tuple[str, ...] = ()

    @property
    def what(self) -> str:
        return f"one of {', '.join(self.choices)}" if self.choices else "a name"

    def accepts(self, e) -> bool:
        return isinstance(e, (ast.Name, ast.Str))

    def convert(self, e, label: str, errors):
        if not self.accepts(e):
            raise _wrong(self, e, label)
        v = e.id if isinstance(e, ast.Name) else e.value
        if self.choices and v not in self.choices:
            raise _Bad(Diagnostic("E0503", f"{label} must be {self.what}, got '{v}'", e.span,
                                  did_you_mean(v, self.choices)))
        return v

    def show(self, v: str) -> str:
        return v if _IDENT.match(v) else _quote(v)


@dataclass(frozen=True)
class ListOf:
    """A list `[a, b]`; a single item stands for a list of one. `size` fixes the length."""

    item: Any
    size: int | None = None

    @property
    def what(self) -> str:
        return f"a list{f' of {self.size}' if self.size else ''} (each {self.item.what})"

    def accepts(self, e) -> bool:
        return isinstance(e, ast.ListLit) or self.item.accepts(e)

    def convert(self, e, label: str, errors):
        if not self.accepts(e):
            raise _wrong(self, e, label)
        items = e.items if isinstance(e, ast.ListLit) else (e,)
        if self.size is not None and len(items) != self.size:
            raise _Bad(Diagnostic("E0502", f"{label} must be a list of {self.size} values, got {len(items)}",
                                  e.span))
        out, ok = [], True
        for item in items:
            try:
                out.append(self.item.convert(item, label, errors))
            except _Bad as bad:
                ok = False
                errors.extend([bad.diag] if bad.diag else [])
        if not ok:
            raise _Bad()
        return tuple(out)

    def show(self, v) -> str:
        return "[" + ", ".join(self.item.show(x) for x in v) + "]"


@dataclass(frozen=True)
class Arg:
    """One argument of a recipe call; `default` may be a function of the other arguments."""

    name: str
    type: Any
    default: Any = REQUIRED
    doc: str = ""
    positional: bool = True


@dataclass(frozen=True)
class CallSpec:
    """A call a setting accepts; `check(args)` returns (code, argument, message) for a bad combination."""

    name: str
    doc: str
    args: tuple[Arg, ...] = ()
    check: Callable[[dict], tuple[str, str, str] | None] | None = None

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)

    def make(self, **given) -> CallValue:
        """The call with `given` arguments and defaults for the rest (no checking)."""
        args = {a.name: given.get(a.name, a.default) for a in self.args}
        for a in self.args:
            if callable(a.default) and a.name not in given:
                args[a.name] = a.default(args)
        return CallValue(self.name, tuple(args.items()))


def _arg_expr(e, spec: CallSpec, name: str):
    """The expression written for argument `name` of call `e`, or None when it was left out."""
    if not isinstance(e, ast.Call):
        return None
    for kw in e.kwargs:
        if kw.name == name:
            return kw.value
    args = ((e.piped,) if e.piped is not None else ()) + e.args
    positional = [a.name for a in spec.args if a.positional]
    i = positional.index(name) if name in positional else len(args)
    return args[i] if i < len(args) else None


@dataclass(frozen=True)
class Calls:
    """One call of a family, e.g. an optimizer; `bare_number` names the call a lone number means."""

    family: dict[str, CallSpec]
    noun: str
    bare_number: str | None = None

    @property
    def what(self) -> str:
        return f"{'a number or ' if self.bare_number else ''}a {self.noun} such as {next(iter(self.family))}(...)"

    def accepts(self, e) -> bool:
        return isinstance(e, (ast.Call, ast.Name)) or (self.bare_number is not None and _number(e) is not None)

    def convert(self, e, label: str, errors):
        if not self.accepts(e):
            raise _wrong(self, e, label)
        if not isinstance(e, (ast.Call, ast.Name)):
            spec = self.family[self.bare_number]
            return spec.make(**{spec.args[0].name: spec.args[0].type.convert(e, label, errors)})
        name, name_span = (e.func, e.func_span) if isinstance(e, ast.Call) else (e.id, e.span)
        spec = self.family.get(name)
        if spec is None:
            raise _Bad(Diagnostic("E0503", f"unknown {self.noun} '{name}'", name_span,
                                  did_you_mean(name, self.family) or f"expected one of: {', '.join(self.family)}"))
        args = self._bind(spec, e, label, errors)
        if spec.check and (problem := spec.check(args)):
            code, arg, message = problem
            raise _Bad(Diagnostic(code, f"{label} {spec.name}(): {message}", (_arg_expr(e, spec, arg) or e).span))
        return CallValue(spec.name, tuple((a.name, args[a.name]) for a in spec.args))

    def _bind(self, spec: CallSpec, e, label: str, errors) -> dict:
        """Match the written arguments to `spec`, convert them and fill in the defaults."""
        label = f"{label} {spec.name}()"
        given: dict[str, Any] = {}
        positional = [a for a in spec.args if a.positional]
        written = ((e.piped,) if getattr(e, "piped", None) is not None else ()) + getattr(e, "args", ())
        problems = [Diagnostic("E0504", f"{label} takes {len(positional)} positional argument(s), got "
                               f"{len(written)}", x.span) for x in written[len(positional):]][:1]
        pairs = [(a, x) for a, x in zip(positional, written)]
        for kw in getattr(e, "kwargs", ()):
            a = spec.arg(kw.name)
            if a is None:
                problems.append(Diagnostic("E0504", f"{label} has no argument '{kw.name}'", kw.span,
                                           did_you_mean(kw.name, [x.name for x in spec.args])))
            elif any(a is b for b, _ in pairs):
                problems.append(Diagnostic("E0504", f"{label}: argument '{kw.name}' is given twice", kw.span))
            else:
                pairs.append((a, kw.value))
        for a, x in pairs:
            try:
                given[a.name] = a.type.convert(x, f"{label}: {a.name}", errors)
            except _Bad as bad:
                problems.extend([bad.diag] if bad.diag else [])
                given[a.name] = REQUIRED  # reported; keeps it from also counting as missing
        missing = [a.name for a in spec.args if a.default is REQUIRED and a.name not in given]
        if missing:
            problems.append(Diagnostic("E0504", f"{label} needs argument(s) {', '.join(missing)}", e.span,
                                       f"write e.g. {spec.name}({', '.join(f'{m}=...' for m in missing)})"))
        if problems or any(v is REQUIRED for v in given.values()):
            errors.extend(sorted(problems, key=lambda d: (d.span.line, d.span.col)))
            raise _Bad()
        return spec.make(**given).kwargs

    def show(self, v: CallValue) -> str:
        spec = self.family[v.name]
        return f"{v.name}(" + ", ".join(f"{a.name}={a.type.show(v[a.name])}" for a in spec.args) + ")"


# ---- the schema ---------------------------------------------------------------------

def _family(*specs: CallSpec) -> dict[str, CallSpec]:
    return {s.name: s for s in specs}


def _when(bad: Callable[[dict], bool], code: str, arg: str, message: str):
    return lambda args: (code, arg, message.format(**args)) if bad(args) else None


INT_POS, POS, NONNEG_NUM = Num(True, POSITIVE), Num(range=POSITIVE), Num(range=NONNEG)
_DIR, _PATH = Arg("dir", TEXT, doc="folder holding the files"), Arg("path", TEXT, doc="file to read")
_LR = Arg("lr", POS, doc="base learning rate")
_EPS = Arg("eps", POS, 1e-8, "added to the denominator for stability")
_BETAS = (Arg("beta1", Num(range=BELOW_ONE), 0.9, "decay of the gradient mean"),
          Arg("beta2", Num(range=BELOW_ONE), 0.999, "decay of the squared-gradient mean"))


def _decay(default: float) -> Arg:
    return Arg("weight_decay", NONNEG_NUM, default, "L2 penalty coefficient added to the gradient")


_CLASSES = Arg("classes", ListOf(Num(True, NONNEG)), (), "keep only these classes, relabelled 0..k-1 in this "
               "order (all when empty)", positional=False)


def _dataset(name: str, doc: str, *args: Arg) -> CallSpec:
    return CallSpec(name, doc, (*args, _CLASSES))


DATASETS = _family(
    _dataset("digits", "8x8 grey digits shipped with dslc (1,797 images, 10 classes); no download"),
    _dataset("mnist", "MNIST IDX files in dir", _DIR),
    _dataset("fashion_mnist", "Fashion-MNIST IDX files in dir", _DIR),
    _dataset("cifar10", "CIFAR-10 binary batches in dir", _DIR),
    _dataset("cifar100", "CIFAR-100 binary files in dir", _DIR, Arg("labels", Word(("fine", "coarse")), "fine")),
    _dataset("npz", "a NumPy .npz holding features/images and integer labels",
             _PATH, Arg("x", TEXT, "x", "array of inputs"), Arg("y", TEXT, "y", "array of labels")),
    _dataset("csv", "a CSV file with a header; one column is the class, the others features",
             _PATH, Arg("label", TEXT, "label", "name of the class column")),
    _dataset("image_folder", "one sub-folder of images per class, resized to size x size",
             _DIR, Arg("size", INT_POS, doc="side of the square images in pixels")))

SPLITS = _family(CallSpec(
    "validation", "hold out a random fraction of the training data (and a test fraction if none ships)",
    (Arg("fraction", Num(range=FRACTION), doc="share of the examples used for validation"),
     Arg("test", Num(range=BELOW_ONE), 0.0, "share held out for testing when the data has no test set"),
     Arg("seed", Num(True, NONNEG), 0, "seed of the shuffle")),
    _when(lambda a: a["fraction"] + a["test"] >= 1, "E0505", "test",
          "validation and test fractions must leave training data, got {fraction} + {test} >= 1")))

AUGMENTATIONS = _family(
    CallSpec("hflip", "mirror images left-right", (Arg("p", Num(range=PROB), 0.5, "probability"),)),
    CallSpec("random_crop", "pad by `pad` pixels, then crop a random size x size window",
             (Arg("size", INT_POS), Arg("pad", Num(True, NONNEG), 0))),
    CallSpec("random_resized_crop", "crop a random area share in `scale` and resize it to size x size",
             (Arg("size", INT_POS), Arg("scale", ListOf(Num(range=Range(0, 1, lo_open=True)), 2), (0.08, 1.0))),
             _when(lambda a: a["scale"][0] > a["scale"][1], "E0505", "scale",
                   "scale must be [low, high] with low <= high, got {scale}")),
    CallSpec("color_jitter", "scale brightness/contrast/saturation by a random factor in [1-x, 1+x]",
             tuple(Arg(k, NONNEG_NUM, 0.0) for k in ("brightness", "contrast", "saturation"))),
    CallSpec("cutout", "zero a random size x size square", (Arg("size", INT_POS),)),
    CallSpec("mixup", "blend pairs of examples and labels with weight ~ Beta(alpha, alpha)", (Arg("alpha", POS),)))

OPTIMIZERS = _family(
    CallSpec("sgd", "stochastic gradient descent, optionally with (Nesterov) momentum",
             (_LR, Arg("momentum", Num(range=BELOW_ONE), 0.0), Arg("nesterov", FLAG, False), _decay(0.0)),
             _when(lambda a: a["nesterov"] and a["momentum"] == 0, "E0506", "nesterov",
                   "nesterov=true needs momentum > 0")),
    CallSpec("adagrad", "per-parameter rates scaled by accumulated squared gradients", (_LR, _EPS, _decay(0.0))),
    CallSpec("rmsprop", "rates scaled by a moving average of squared gradients",
             (_LR, Arg("decay", Num(range=BELOW_ONE), 0.99), _EPS, _decay(0.0))),
    CallSpec("adam", "Adam with bias correction", (Arg("lr", POS, 1e-3), *_BETAS, _EPS, _decay(0.0))),
    CallSpec("adamw", "Adam with weight decay applied to the weights, not the gradient",
             (Arg("lr", POS, 1e-3), *_BETAS, _EPS, Arg("weight_decay", NONNEG_NUM, 0.01, "decoupled decay"))))

_WARMUP = Arg("warmup", NONNEG_NUM, 0.0, "epochs of linear warm-up from 0 to the rate", positional=False)


def _schedule(name: str, doc: str, *args: Arg, check=None) -> CallSpec:
    return CallSpec(name, doc, (*args, _WARMUP), check)


SCHEDULES = _family(
    _schedule("constant", "the optimizer's rate throughout"),
    _schedule("step", "multiply the rate by gamma every `every` epochs",
              Arg("every", POS), Arg("gamma", Num(range=Range(0, 1, lo_open=True)), 0.1)),
    _schedule("exponential", "lr * exp(-k * epoch)", Arg("k", POS)),
    _schedule("inverse_time", "lr / (1 + k * epoch)", Arg("k", POS)),
    _schedule("cosine", "cosine decay from lr to min_lr over the training", Arg("min_lr", NONNEG_NUM, 0.0)),
    _schedule("cyclical", "triangular cycles between low and high, `period` epochs each",
              Arg("low", POS), Arg("high", POS), Arg("period", POS),
              check=_when(lambda a: a["low"] >= a["high"], "E0505", "high",
                          "high must exceed low, got low={low}, high={high}")),
    _schedule("one_cycle", "rise to max_lr during the first pct of training, then anneal",
              Arg("max_lr", POS), Arg("pct", Num(range=FRACTION), 0.3)))

CLIPS = _family(CallSpec("norm", "rescale gradients whose global L2 norm exceeds max_norm", (Arg("max_norm", POS),)))

STOPS = _family(CallSpec(
    "early", "stop when `metric` has not improved by min_delta for `patience` epochs",
    (Arg("metric", Word(), "val_loss", "train_ or val_ + loss or a metric name"), Arg("patience", INT_POS, 5),
     Arg("mode", Word(("min", "max")), lambda a: "min" if a["metric"].endswith("loss") else "max"),
     Arg("min_delta", NONNEG_NUM, 0.0)),
    _when(lambda a: not a["metric"].startswith(("train_", "val_")), "E0503", "metric",
          "metric must start with train_ or val_, got '{metric}'")))

CHECKPOINTS = _family(CallSpec("every", "save the last and best weights every n epochs", (Arg("n", INT_POS),)))
INITS = _family(CallSpec("checkpoint", "start from saved weights, except the parameters the skip globs match",
                         (_PATH, Arg("skip", ListOf(TEXT), ()))),
                CallSpec("torch_weights", "start from a PyTorch state_dict (.safetensors, or .pt read weights-only), "
                         "except the parameters the skip globs match", (_PATH, Arg("skip", ListOf(TEXT), ()),
                         Arg("mapping", TEXT, None, "JSON file {torch name: dslc name or null}"))))


@dataclass(frozen=True)
class Key:
    """One recipe setting. `optional`: `none` turns it off; `excludes`: the setting it cannot go with;
    `moves_to`: (setting, argument) it is shorthand for."""

    name: str
    type: Any
    default: Any
    doc: str
    optional: bool = False
    excludes: str | None = None
    moves_to: tuple[str, str] | None = None


KEYS = {k.name: k for k in (
    Key("data", Calls(DATASETS, "dataset"), REQUIRED, "the examples to train on"),
    Key("split", Calls(SPLITS, "split"), SPLITS["validation"].make(fraction=0.1), "validation hold-out", True),
    Key("normalize", Word(("none", "mean_image", "per_channel")), "per_channel", "input standardisation"),
    Key("augment", ListOf(Calls(AUGMENTATIONS, "augmentation")), (), "random transforms of training images"),
    Key("batch", INT_POS, 64, "examples per optimiser step"),
    Key("epochs", INT_POS, 10, "passes over the training split", True, excludes="steps"),
    Key("steps", INT_POS, None, "optimiser steps, instead of epochs", True, excludes="epochs"),
    Key("optimizer", Calls(OPTIMIZERS, "optimizer"), OPTIMIZERS["adam"].make(), "the update rule"),
    Key("schedule", Calls(SCHEDULES, "schedule"), SCHEDULES["constant"].make(), "learning rate over time"),
    Key("weight_decay", NONNEG_NUM, None, "the optimizer's weight_decay", moves_to=("optimizer", "weight_decay")),
    Key("clip", Calls(CLIPS, "clipping rule", bare_number="norm"), None, "gradient clipping", True),
    Key("stop", Calls(STOPS, "stopping rule"), None, "early stopping", True),
    Key("checkpoint", Calls(CHECKPOINTS, "checkpoint rule"), CHECKPOINTS["every"].make(n=1), "saving", True),
    Key("init", Calls(INITS, "initialisation"), None, "initial weights", True),
    Key("freeze", ListOf(TEXT), (), "globs of parameters kept fixed"),
    Key("seed", Num(True, Range(0, 2**32 - 1)), 0, "seed of initialisation, shuffling and augmentation"),
    Key("device", Word(("cpu", "gpu", "auto")), "auto", "where to train"),
)}


def defaults(model: str = "", name: str | None = None) -> Recipe:
    """The settings an empty `train MODEL {}` gets (data, which has no default, is None)."""
    entries = tuple((k.name, None if k.default is REQUIRED else k.default) for k in KEYS.values() if not k.moves_to)
    return Recipe(model, name or model, entries)


# ---- checking a train block ------------------------------------------------------

def validate(train: ast.TrainDef, model_graph=None) -> tuple[Recipe, list[Diagnostic]]:
    """Check one train block: the Recipe (bad settings keep their defaults) and every mistake found.

    `model_graph` (the model's typed Graph) enables the checks of freeze/skip globs and stop metrics.
        recipe, errors = validate(module.trains[0])
    """
    errors: list[Diagnostic] = []
    values = {k.name: k.default for k in KEYS.values()}
    given: dict[str, ast.RecipeEntry] = {}  # the settings written and accepted
    seen: dict[str, ast.RecipeEntry] = {}
    for entry in train.entries:
        key = KEYS.get(entry.key)
        if key is None:
            errors.append(Diagnostic("E0501", f"unknown recipe setting '{entry.key}'", entry.key_span,
                                     did_you_mean(entry.key, KEYS) or f"settings: {', '.join(KEYS)}"))
            continue
        if entry.key in seen:
            errors.append(Diagnostic("E0508", f"'{entry.key}' is set twice", entry.key_span)
                          .with_note(seen[entry.key].key_span, "first set here"))
            continue
        seen[entry.key] = entry
        try:
            optional_off = key.optional and isinstance(entry.value, ast.Name) and entry.value.id == "none"
            values[entry.key] = None if optional_off else key.type.convert(entry.value, entry.key, errors)
            given[entry.key] = entry
        except _Bad as bad:
            errors.extend([bad.diag] if bad.diag else [])
    _cross_check(values, given, train, errors)
    if model_graph is not None:
        _graph_check(values, given, model_graph, errors)
    if values["data"] is REQUIRED:
        values["data"] = None
        if "data" not in seen:
            errors.append(Diagnostic("E0507", f"recipe '{train.alias or train.model}' has no data",
                                     train.model_span, "add e.g. `data = digits()`"))
    entries = tuple((k, v) for k, v in values.items() if not KEYS[k].moves_to)
    return Recipe(train.model, train.alias or train.model, entries, train.span), errors


def _cross_check(values: dict, given: dict[str, ast.RecipeEntry], train: ast.TrainDef, errors) -> None:
    """The rules that involve two settings: exclusive pairs, shorthands, lengths and metrics."""
    for key in KEYS.values():
        other = key.excludes
        if other and key.name in given and other in given and None not in (values[key.name], values[other]):
            if key.name < other:  # report each pair once
                errors.append(Diagnostic("E0506", f"give '{key.name}' or '{other}', not both",
                                         given[other].span).with_note(given[key.name].span, "also set here"))
        elif other and key.name not in given and other in given and values[other] is not None:
            values[key.name] = None  # the default gives way to the setting written
    if values["epochs"] is None and values["steps"] is None:
        span = (given.get("epochs") or given.get("steps") or train).span
        errors.append(Diagnostic("E0507", "the recipe needs epochs or steps", span))
    for key in KEYS.values():
        if key.moves_to and key.name in given:
            target, arg = key.moves_to
            spec = KEYS[target].type.family[values[target].name]
            if target in given and _arg_expr(given[target].value, spec, arg) is not None:
                errors.append(Diagnostic("E0506", f"'{key.name}' is also set in {target}", given[key.name].span)
                              .with_note(given[target].span, f"{target} sets {arg} here"))
            else:
                values[target] = values[target].with_arg(arg, values[key.name])
    sched, opt = values["schedule"], values["optimizer"]
    where = given["schedule"].value if "schedule" in given else None
    if sched.name == "cosine" and sched["min_lr"] >= opt["lr"]:
        span = (_arg_expr(where, SCHEDULES["cosine"], "min_lr") or where or train).span
        errors.append(Diagnostic("E0505", f"schedule cosine(): min_lr ({sched['min_lr']:g}) must be below the "
                                 f"optimizer's lr ({opt['lr']:g})", span))
    if values["epochs"] is not None and sched["warmup"] >= values["epochs"]:
        span = (_arg_expr(where, SCHEDULES[sched.name], "warmup") or where or train).span
        errors.append(Diagnostic("E0505", f"schedule {sched.name}(): warmup ({sched['warmup']:g} epochs) must be "
                                 f"shorter than training ({values['epochs']} epochs)", span))
    stop = values["stop"]
    if stop is not None and stop["metric"].startswith("val_") and values["split"] is None:
        errors.append(Diagnostic("E0506", f"stop watches '{stop['metric']}' but split = none leaves no "
                                 "validation data", given["stop"].span).with_note(given["split"].span, "here"))


def _graph_check(values: dict, given: dict[str, ast.RecipeEntry], graph, errors) -> None:
    """Checks that need the model: globs must select parameters, stop must watch a real metric."""
    globs = []
    if "freeze" in given:
        e = given["freeze"].value
        globs += zip(values["freeze"], e.items if isinstance(e, ast.ListLit) else (e,))
    if values["init"] is not None and "init" in given:
        e = _arg_expr(given["init"].value, INITS["checkpoint"], "skip")
        globs += zip(values["init"]["skip"], e.items if isinstance(e, ast.ListLit) else (e,))
    names = [p.name for p in graph.params]
    layers = sorted(_prefixes(n.name for n in graph.nodes if n.op != "input"))
    for pattern, expr in globs:
        if select_params(graph, [pattern]):
            continue
        hit = [name for name in layers if fnmatch.fnmatchcase(name, pattern)]
        if hit:  # e.g. a labelled pooling layer: legal, but the glob selects nothing
            errors.append(Diagnostic("E0512", f"'{pattern}' matches only layers without parameters "
                                     f"({', '.join(hit[:3])}), so it selects nothing", expr.span, severity="warning"))
            continue
        errors.append(Diagnostic("E0509", f"'{pattern}' matches no parameter of model '{graph.name}'",
                                 expr.span, did_you_mean(pattern.replace("*", ""), _prefixes(names))
                                 or f"parameters: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"))
    stop = values["stop"]
    if stop is not None and "stop" in given:
        known = ["loss"] + [o.name for o in graph.outputs_of("metric")]
        metrics = [f"{p}_{m}" for p in ("train", "val") for m in known]
        if stop["metric"] not in metrics:
            e = _arg_expr(given["stop"].value, STOPS["early"], "metric") or given["stop"].value
            errors.append(Diagnostic("E0503", f"model '{graph.name}' has no metric '{stop['metric']}'", e.span,
                                     did_you_mean(stop["metric"], metrics) or f"metrics: {', '.join(metrics)}"))


def _prefixes(names) -> set[str]:
    """Every dotted prefix of the names: a.b.c -> a, a.b, a.b.c (the layers and blocks a name is in)."""
    return {".".join(parts[:i]) for n in names for parts in [n.split(".")] for i in range(1, len(parts) + 1)}


def select_params(graph, patterns) -> list[str]:
    """The parameters (state such as running means included) a glob list selects: a glob
    matches a parameter's name or a layer or block it is in (a dotted prefix).

        select_params(g, ["stem*"]) -> ["stem.linear.weight", "stem.linear.bias"]
    """
    return [p.name for p in graph.params
            if any(fnmatch.fnmatchcase(prefix, pat) for prefix in _prefixes([p.name]) for pat in patterns)]


# ---- every recipe of a program ----------------------------------------------------

def program_recipes(program, graph_of: Callable[[str], Any] | None = None):
    """Check every train block of a Program: ({recipe name: Recipe}, diagnostics).

    `graph_of(model_name)` builds a model's graph, called only for recipes that need it
    (freeze, init, stop); a model that does not compile is reported elsewhere and skipped here.
    """
    recipes: dict[str, Recipe] = {}
    errors: list[Diagnostic] = []
    for train in program.trains:
        name = train.alias or train.model
        if train.model not in program.models:
            errors.append(Diagnostic("E0510", f"recipe trains unknown model '{train.model}'", train.model_span,
                                     did_you_mean(train.model, program.models)
                                     or f"models: {', '.join(program.models) or 'none'}"))
            continue
        if name in recipes:
            errors.append(Diagnostic("E0511", f"two recipes are named '{name}'", train.model_span,
                                     "name one with `train MODEL as NAME`")
                          .with_note(recipes[name].span, "first recipe here"))
            continue
        graph = None
        if graph_of is not None and any(e.key in ("freeze", "init", "stop") for e in train.entries):
            try:
                graph = graph_of(train.model)
            except CompileError:
                graph = None
        recipes[name], found = validate(train, graph)
        errors += found
    return recipes, errors


def validate_program(program, graph_of: Callable[[str], Any] | None = None) -> list[Diagnostic]:
    """Every mistake in the train blocks of a Program (see program_recipes)."""
    return program_recipes(program, graph_of)[1]


# ---- text and command-line overrides ------------------------------------------------

def _render(recipe: Recipe, sources: dict[str, str] | None = None) -> tuple[list[str], dict[int, str]]:
    """The .net lines of a recipe, with `sources` replacing some values' text; and line -> setting."""
    sources = sources or {}
    alias = f" as {recipe.name}" if recipe.name != recipe.model else ""
    lines, line_key = [f"train {recipe.model}{alias} {{"], {}
    for key, value in recipe.entries:
        spec = KEYS[key]
        if key not in sources and value is None and not spec.optional:
            continue
        line_key[len(lines) + 1] = key
        text = sources.get(key) or ("none" if value is None else spec.type.show(value))
        lines.append(f"    {key} = {text}")
    return lines + ["}"], line_key


def _source(raw, typ) -> str:
    """The .net text of a command-line value; plain words and paths become strings where one is wanted."""
    if isinstance(raw, (bool, int, float)):
        return _fmt(raw)
    raw = str(raw).strip()
    wants_text = isinstance(typ, Word) or TEXT in (typ, getattr(typ, "item", None))
    return _quote(raw) if wants_text and not raw.startswith(('"', "[")) else raw


def apply_overrides(recipe: Recipe, sets: dict[str, Any], model_graph=None) -> Recipe:
    """The recipe with command-line settings applied and re-checked; raises UsageError.

        apply_overrides(r, {"epochs": 5, "optimizer.lr": "0.01", "augment": "[hflip()]"})
    Whole settings are applied first, then `key.arg` ones to the resulting calls;
    `epochs` replaces `steps` and the reverse.
    """
    whole = {k: v for k, v in sets.items() if "." not in k and not getattr(KEYS.get(k), "moves_to", None)}
    dotted = {k: v for k, v in sets.items() if k not in whole}
    for batch in (whole, dotted):
        if batch:
            recipe = _apply(recipe, batch, model_graph)
    return recipe


def _apply(recipe: Recipe, sets: dict[str, Any], model_graph) -> Recipe:
    values = dict(recipe.entries)
    args: dict[str, dict[str, str]] = {}  # setting -> argument -> new text
    sources, origin = {}, {}
    for dotted, raw in sets.items():
        key, _, arg = dotted.partition(".")
        spec = KEYS.get(key)
        if spec is None:
            raise UsageError(f"--set {dotted}: recipes have no setting '{key}'; "
                             + (did_you_mean(key, KEYS) or f"settings: {', '.join(KEYS)}"))
        if spec.moves_to and not arg:
            key, arg = spec.moves_to
            spec = KEYS[key]
        origin[key] = ", ".join(filter(None, [origin.get(key), f"{dotted}={raw}"]))
        if not arg:
            sources[key] = _check_syntax(dotted, _source(raw, spec.type))
            if spec.excludes:
                values[spec.excludes] = None
            continue
        call = values.get(key)
        if not isinstance(call, CallValue):
            state = "none" if call is None else "not a single call"
            raise UsageError(f"--set {dotted}: '{key}' is {state} here; set it whole first, e.g. --set {key}=...")
        cspec = spec.type.family[call.name]
        a = cspec.arg(arg)
        if a is None:
            hint = did_you_mean(arg, [x.name for x in cspec.args])
            raise UsageError(f"--set {dotted}: {call.name}() has no argument '{arg}'" + (f"; {hint}" if hint else ""))
        args.setdefault(key, {})[arg] = _check_syntax(dotted, _source(raw, a.type))
    for key, new in args.items():
        call, cspec = values[key], KEYS[key].type.family[values[key].name]
        # An argument still equal to its derived default (stop's mode) is re-derived, not frozen.
        kept = [x for x in cspec.args if x.name in new or not (callable(x.default) and call[x.name] == x.default(
            call.kwargs))]
        sources[key] = f"{call.name}(" + ", ".join(
            f"{x.name}={new.get(x.name) or x.type.show(call[x.name])}" for x in kept) + ")"
    lines, line_key = _render(replace(recipe, entries=tuple(values.items())), sources)
    module = parse("\n".join(lines), "<--set>")
    result, diagnostics = validate(module.trains[0], model_graph)
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        def where(d: Diagnostic) -> str:
            key = line_key.get(d.span.line) if d.span else None
            return f"--set {origin[key]}" if key in origin else (key or "recipe")
        raise UsageError("\n".join(f"{where(d)}: {d.message}" + (f" ({d.hint})" if d.hint else "") for d in errors))
    return replace(result, span=recipe.span)


def _check_syntax(dotted: str, text: str) -> str:
    """`text` if it reads as one .net expression; a UsageError otherwise."""
    try:
        module = parse(f"train _ {{ v = {text} }}", "<--set>")
    except CompileError as e:
        raise UsageError(f"--set {dotted}: cannot read '{text}': {e.diagnostics[0].message}") from None
    if len(module.trains) != 1 or len(module.trains[0].entries) != 1 or "\n" in text:
        raise UsageError(f"--set {dotted}: cannot read '{text}' as one value")
    return text
