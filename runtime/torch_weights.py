"""Starting from PyTorch weights: `init = torch_weights("resnet18.safetensors", skip=["fc*"])`.

A PyTorch `state_dict` is read from safetensors, or from a `.pt`/`.pth` file through
`torch.load(weights_only=True)` when PyTorch is installed: never a plain unpickle, which
would run whatever code the file holds. Its keys are matched to the model's parameters:

  - which module: torch_names.TABLES[model name] maps torchvision's module names to dslc
    layers (`features.0` -> `conv1.conv_relu.conv2d`); a module not in the table is looked
    for under its own name; a mapping file (JSON, {"torch name": "dslc name" or null}, module
    or parameter names) adds entries, overrides them or (null) ignores keys;
  - which parameter: each op's convention (TORCH_SLOTS): batchnorm's gamma and beta are
    PyTorch's `weight` and `bias`, prelu's alpha its `weight`; running statistics keep
    their names and meaning (PyTorch's running_var is unbiased, as dslc's);
    `num_batches_tracked` has no dslc counterpart and is ignored;
  - which layout: a linear weight is (in, out) in dslc and (out, in) in PyTorch, so it is
    transposed; convolution weights are (out, in/groups, kh, kw) on both sides.

Parameters the skip globs select keep their fresh initialisation (a new head for new
classes), and the keys meant for them are not needed. Every key missing, left over or of
the wrong shape is listed at once, with a "did you mean" where a name is close.

    params.update(load_torch_weights(model, "resnet18.safetensors", skip=["fc*"]))
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Mapping

import numpy as np

from dslc.diagnostics import did_you_mean
from dslc.files import UnreadableFile, check_memory, open_regular
from dslc.reading import human_bytes
from dslc.recipe.schema import select_params
from dslc.ir.types import NUMPY_DTYPE
from dslc.runtime.checkpoint import CheckpointError
from dslc.runtime.torch_names import TABLES

TORCH_SLOTS = {  # dslc parameter slot -> PyTorch's name for it, per op; other slots keep their name
    "batchnorm": {"gamma": "weight", "beta": "bias"},
    "groupnorm": {"gamma": "weight", "beta": "bias"},
    "layernorm": {"gamma": "weight", "beta": "bias"},
    "instancenorm": {"gamma": "weight", "beta": "bias"},
    "prelu": {"alpha": "weight"},
}
TRANSPOSED = {"linear": "weight", "dropconnect": "weight"}  # (in, out) in dslc, (out, in) in PyTorch
IGNORED = ("num_batches_tracked",)  # batchnorm's step counter: dslc's running averages do not use it
SAFETENSORS = (".safetensors",)
PICKLES = (".pt", ".pth", ".bin")
MAX_MAPPING_BYTES = 1 << 20


def load_torch_weights(model, path, skip=(), mapping: str | None = None) -> dict[str, np.ndarray]:
    """The model's parameters from the state_dict at `path`, converted to dslc's conventions,
    except those the `skip` globs select. CheckpointError names the file and every problem."""
    state = read_state_dict(path)
    pairs = match(model, {k: v.shape for k, v in state.items()}, skip, mapping, str(path))
    params = {p.name: p for p in model.graph.params}
    out, problems = {}, []
    for name, key in pairs.items():
        value = state[key].T if _transposed(model.graph, name) else state[key]
        dtype = NUMPY_DTYPE[params[name].type.dtype]
        if value.dtype.kind == "c":  # the cast would drop the imaginary parts, with a ComplexWarning
            problems.append(f"'{key}' (for {name}) holds complex numbers")
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            out[name] = np.ascontiguousarray(value, dtype=dtype)
        # A diverged run's weights (or a float64 beyond float32) would train from NaN: the
        # first step's loss was "nan", blamed on the run, not on the file it started from.
        if out[name].dtype.kind == "f" and not np.isfinite(out[name]).all():
            bad = int((~np.isfinite(out[name])).sum())
            why = (f"{bad:,} NaN or infinite value{'s' if bad > 1 else ''}" if not _finite(value)
                   else f"values beyond {dtype}'s range")
            problems.append(f"'{key}' (for {name}) holds {why}")
    if problems:
        raise CheckpointError(f"init = torch_weights({str(path)!r}): weights that are not finite real numbers "
                              "cannot be trained from:\n" + "\n".join(f"  {p}" for p in problems))
    return out


def _finite(value: np.ndarray) -> bool:
    return value.dtype.kind not in "fc" or bool(np.isfinite(value).all())


def match(model, shapes: Mapping[str, tuple], skip=(), mapping: str | None = None,
          source: str = "the state_dict") -> dict[str, str]:
    """{dslc parameter: state_dict key} for every parameter not skipped, given the state_dict's
    key -> shape. Raises CheckpointError listing every missing, extra and misshapen key."""
    graph = model.graph
    skipped = set(select_params(graph, skip))
    modules, params, ignored = _table(model, mapping)
    wanted = {p.name: torch_name(graph, p.name, modules, params) for p in graph.params}
    pairs = {name: key for name, key in wanted.items() if name not in skipped}
    problems = []
    unused = [k for k in shapes if k not in wanted.values() and not _ignored(k, ignored)]
    for name, key in pairs.items():
        if key not in shapes:
            hint = did_you_mean(key, unused)
            problems.append(f"missing: '{key}' (for {name}) is not in the file" + (f"; {hint}" if hint else ""))
        elif tuple(shapes[key]) != torch_shape(graph, name):
            problems.append(f"shape: '{key}' is {list(shapes[key])}, {name} needs "
                            f"{list(torch_shape(graph, name))}" + (" (PyTorch's (out, in) layout)"
                                                                   if _transposed(graph, name) else ""))
    missing = [key for key in pairs.values() if key not in shapes]
    for key in unused:
        hint = did_you_mean(key, missing)
        problems.append(f"extra: '{key}' matches no parameter of model '{model.name}'" + (f"; {hint}" if hint else ""))
    if problems:
        raise CheckpointError(
            f"init = torch_weights({source!r}): the state_dict does not fit model '{model.name}' "
            f"({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n" + "\n".join(f"  {p}" for p in problems)
            + "\n  (skip=[...] the parameters that should start fresh; mapping=\"map.json\" renames or ignores keys)")
    return pairs


def torch_name(graph, param: str, modules: Mapping[str, str], params: Mapping[str, str]) -> str:
    """The state_dict key PyTorch would give the dslc parameter `param`."""
    if param in params:
        return params[param]
    layer, _, slot = param.rpartition(".")
    if layer not in graph:  # a `param` declared on its own (two_layer.net's W1): its own name
        return param
    return f"{modules.get(layer, layer)}.{TORCH_SLOTS.get(graph[layer].op, {}).get(slot, slot)}"


def _transposed(graph, param: str) -> bool:
    layer, _, slot = param.rpartition(".")
    return layer in graph and TRANSPOSED.get(graph[layer].op) == slot


def torch_shape(graph, param: str) -> tuple[int, ...]:
    """The shape PyTorch gives the dslc parameter `param` (a linear weight's transposed)."""
    shape = tuple(graph[param].type.shape)
    return shape[::-1] if _transposed(graph, param) else shape


def _ignored(key: str, ignored: set[str]) -> bool:
    return key.rsplit(".", 1)[-1] in IGNORED or key in ignored or any(key.startswith(m + ".") for m in ignored)


def _table(model, mapping: str | None) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """(dslc layer -> torch module, dslc parameter -> torch key, torch names to ignore): the
    architecture's table with the mapping file's entries on top."""
    torch_to_dslc = dict(TABLES.get(model.name, {}))
    params, ignored = {}, set()
    layers = {n.name for n in model.graph.nodes if n.op not in ("input", "param", "const")}
    names = {p.name for p in model.graph.params}
    problems = []
    for key, value in (_read_mapping(mapping) if mapping else {}).items():
        if value is None:
            ignored.add(key)
        elif value in names:
            params[value] = key
        elif value in layers:
            torch_to_dslc[key] = value
        else:
            hint = did_you_mean(value, layers | names)
            problems.append(f"  '{key}': '{value}' is no layer or parameter of model '{model.name}'"
                            + (f"; {hint}" if hint else ""))
    if problems:
        raise CheckpointError(f"{mapping}: " + "\n".join(problems).strip())
    return {layer: module for module, layer in torch_to_dslc.items()}, params, ignored


def _read_mapping(path: str) -> dict:
    file = Path(path)
    try:
        if file.stat().st_size > MAX_MAPPING_BYTES:
            raise CheckpointError(f"{file}: a mapping file of {file.stat().st_size:,} bytes is too large")
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read the mapping file ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not a JSON mapping file ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, type(None))) for v in data.values()):
        raise CheckpointError(f'{file}: a mapping file is one JSON object {{"torch name": "dslc name" or null}}')
    return data


# ---- reading state_dicts --------------------------------------------------------------------

def read_state_dict(path) -> dict[str, np.ndarray]:
    """The arrays of a state_dict saved as safetensors or with torch.save (weights only)."""
    file = Path(path)
    try:  # a regular file (a FIFO is refused, not waited on), sized by the one descriptor it is
        with open_regular(file) as f:  # checked through; every tensor is read into memory, so
            size = os.fstat(f.fileno()).st_size  # it is refused at once where they would not fit
        check_memory(size, f"reading its state_dict ({human_bytes(size)})", file)
    except UnreadableFile as e:
        raise CheckpointError(f"{e} (torch_weights reads a .safetensors or .pt file)") from None
    if file.suffix in SAFETENSORS:
        return _read_safetensors(file)
    if file.suffix in PICKLES:
        return _read_pickle(file)
    raise CheckpointError(f"{file}: unknown format '{file.suffix}'; torch_weights reads "
                          f"{', '.join(SAFETENSORS + PICKLES)} files")


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="numpy") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def _read_pickle(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{file}: reading a .pt file needs PyTorch (pip install torch); or save the "
                              "state_dict with safetensors (safetensors.torch.save_file)") from None
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{file}: not a weights-only file, so dslc will not load it ({_unpickler_reason(e)}); "
                              "save model.state_dict(), not the model object") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable PyTorch file ({e})") from None
    for nested in ("state_dict", "model"):  # training checkpoints often wrap the state_dict
        if isinstance(data, dict) and isinstance(data.get(nested), dict):
            data = data[nested]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{file}: holds {type(data).__name__}, not a state_dict of tensors")
    named = [k for k in data if not isinstance(k, str)]
    if named:
        raise CheckpointError(f"{file}: a state_dict's keys are parameter names, but it holds the key {named[0]!r}")
    out = {}
    for k, v in data.items():
        # bfloat16 has no NumPy dtype; the weights are cast to the model's dtype anyway. A sparse,
        # quantized or float8 tensor has no NumPy form at all (it was a TypeError traceback).
        try:
            out[k] = (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu().numpy()
        except (TypeError, RuntimeError) as e:
            raise CheckpointError(f"{file}: '{k}' ({v.dtype}, {str(v.layout).removeprefix('torch.')}) cannot be read "
                                  f"as an array ({str(e).splitlines()[0]}); save it as a dense float tensor") from None
    return out


def _unpickler_reason(error: Exception) -> str:
    """What torch's weights-only unpickler refused (an object's class, an opcode), without the
    advice around it: its message suggests weights_only=False, which dslc never does."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    reason = text.strip().split("\n")[0].split(". Please")[0].strip()
    return reason or type(error).__name__
