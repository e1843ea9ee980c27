"""Checkpoints that survive a kill at any moment and never execute code when loaded.

A checkpoint is a directory (runs/NAME/last/, runs/NAME/best/):

    weights.safetensors     parameters and batchnorm running statistics, by graph name
    optimizer.safetensors   optimizer state arrays (moments, accumulators)
    state.json              step, epoch, RNG states, normalisation statistics, model and recipe
                            hashes, metrics so far, dslc version, and a SHA-256 of each file

safetensors and JSON hold only data, so loading a checkpoint someone sent you cannot run
their code (unlike pickle). The checksums catch a file damaged after it was written. Every
file is read bounded: state.json up to STATE_LIMIT, each safetensors file only when its size
on disk is the one state.json records and fits in memory; a FIFO or device is refused.
Weights and optimizer state holding NaN or infinity are refused both ways: a run whose
state diverged must not replace a good checkpoint with it, nor be evaluated as one.

Writing is atomic, in two steps a trainer can split (`prepare` both `best` and `last`, then
`commit` both, so a full disk leaves neither half-written): `prepare` puts everything into a
hidden sibling `.NAME.tmp` and fsyncs each file and the directory; `commit` renames the old
checkpoint to `.NAME.old`, the new one into place, and removes `.NAME.old`. POSIX cannot
rename a directory over a non-empty one, hence the two renames; a kill between them leaves
only `.NAME.old`, which `load_checkpoint` uses. At every instant either NAME or `.NAME.old`
is a complete checkpoint; a failed write removes its `.NAME.tmp` and keeps the old one. A
read that a save overtakes (its files from two checkpoints, or `.NAME.old` removed under
it) is made again on the new one.

    save_checkpoint("runs/m/last", params, opt_state, {"step": 100, "epoch": 2})
    ckpt = load_checkpoint("runs/m/last")
    problems = compare(ckpt, model.graph, optimizer="sgd")
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import safetensors.numpy as st

from dslc.version import __version__
from dslc.files import UnreadableFile, check_memory, fsync_dir, open_regular, read_json, reason, write_synced
from dslc.ir.types import NUMPY_DTYPE
from dslc.runtime.host import to_host

FORMAT = 1
WEIGHTS, OPTIMIZER, STATE = "weights.safetensors", "optimizer.safetensors", "state.json"
_RESERVED = ("format", "dslc_version", "files")  # keys of state.json that save_checkpoint writes
STATE_LIMIT = 64 << 20  # bytes of state.json: counters, RNG states, a mean image, the recipe


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: arrays by name and the JSON state (ndarrays decoded)."""

    path: Path
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    state: dict[str, Any]


# ---- JSON with arrays ------------------------------------------------------------------

def _encode(value):
    """JSON-able form of a state value: ndarrays become {"__ndarray__": {dtype, shape, data}}."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": {"dtype": value.dtype.str, "shape": list(value.shape),
                                "data": value.ravel().tolist()}}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(obj: dict):
    if set(obj) != {"__ndarray__"}:
        return obj
    spec = obj["__ndarray__"]
    dtype = np.dtype(spec["dtype"])
    if dtype.kind not in "biuf":  # only plain numbers: no object arrays from a file
        raise ValueError(f"array of dtype {dtype} is not allowed")
    return np.asarray(spec["data"], dtype=dtype).reshape(spec["shape"])


# ---- save and load ---------------------------------------------------------------------

def _siblings(path: Path) -> tuple[Path, Path]:
    """`.NAME.tmp` and `.NAME.old` beside the checkpoint directory `path`. A path without a
    last component (`.`, from inside the checkpoint) is named by its absolute form: `.`
    had no name to put them under (a ValueError traceback from `dslc predict --checkpoint .`)."""
    named = path if path.name else Path(os.path.abspath(path))
    if not named.name:
        raise CheckpointError(f"{path}: not a checkpoint directory")
    return named.with_name(f".{named.name}.tmp"), named.with_name(f".{named.name}.old")


def _arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    # safetensors needs C-contiguous ndarrays; np.require keeps 0-d arrays 0-d. GPU arrays
    # (training with --device gpu) come to the host here, only when a checkpoint is written.
    return {str(k): np.require(to_host(v), requirements="C") for k, v in arrays.items()}


def save_checkpoint(path, weights: Mapping[str, np.ndarray], optimizer: Mapping[str, np.ndarray],
                    state: Mapping[str, Any]) -> Path:
    """Write a checkpoint directory atomically (see the module docstring); returns its path.

    `state` is JSON data plus ndarrays (normalisation statistics), by convention with
    step, epoch, rng, normalization, model_hash, recipe_hash, optimizer (its name), metrics.
    """
    return commit(prepare(path, weights, optimizer, state), path)


def prepare(path, weights: Mapping[str, np.ndarray], optimizer: Mapping[str, np.ndarray],
            state: Mapping[str, Any]) -> Path:
    """Write the checkpoint for `path` complete and fsynced into its hidden sibling `.NAME.tmp`
    (returned), which `commit` puts in place. CheckpointError, leaving no temporary, when a
    value is not finite or the disk refuses (full, read-only)."""
    path = Path(path)
    clash = [k for k in _RESERVED if k in state]
    if clash:
        raise ValueError(f"state keys {clash} are written by save_checkpoint itself")
    arrays = {WEIGHTS: _arrays(weights), OPTIMIZER: _arrays(optimizer)}
    for file, named in arrays.items():
        bad = _non_finite(named)
        if bad:
            raise CheckpointError(f"{path} not written: {bad} (in {file})")
    tmp = _siblings(path)[0]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
        tmp.mkdir()
        files = {}
        for name, named in arrays.items():
            data = st.save(named)
            write_synced(tmp / name, data)
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        doc = {"format": FORMAT, "dslc_version": __version__, "files": files, **_encode(dict(state))}
        write_synced(tmp / STATE, json.dumps(doc, indent=1).encode())
        fsync_dir(tmp)
    except OSError as e:
        discard(tmp)
        raise CheckpointError(f"cannot write checkpoint {path}: {reason(e)}") from None
    return tmp


def commit(tmp: Path, path) -> Path:
    """Put the checkpoint `prepare` wrote in `tmp` in place of `path` (see the module docstring)."""
    path = Path(path)
    old = _siblings(path)[1]
    try:
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)  # stale: `path` is complete, so .old is not needed
            os.rename(path, old)
            fsync_dir(path.parent)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        discard(tmp)
        raise CheckpointError(f"cannot write checkpoint {path}: {reason(e)}") from None
    shutil.rmtree(old, ignore_errors=True)
    return path


def discard(tmp: Path) -> None:
    """Remove a prepared checkpoint that will not be committed."""
    shutil.rmtree(tmp, ignore_errors=True)


def _non_finite(arrays: Mapping[str, np.ndarray]) -> str | None:
    """'NAME holds N nan/inf values' for the first float array that is not all finite."""
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            nans = int(np.isnan(a).sum())
            infs = int(np.isinf(a).sum())
            what = " and ".join(f"{n:,} {w}" for n, w in ((nans, "NaN"), (infs, "infinite")) if n)
            return f"{name} holds {what} value{'s' if nans + infs > 1 else ''}"
    return None


def saved(run: Path, name: str) -> bool:
    """Whether run directory `run` holds its checkpoint `name` (best, last), or the `.NAME.old`
    a save killed between its two renames left (find_checkpoint reads that one)."""
    return (run / name).is_dir() or _siblings(run / name)[1].is_dir()


def unsaved_run(path: Path) -> bool:
    """Whether `path` is a run directory (its config.json, runs.CONFIG) whose training stopped
    before its first checkpoint was saved: said so, rather than as a checkpoint missing files."""
    return ((path / "config.json").is_file() and not (path / STATE).exists()
            and not any(saved(path, name) for name in ("best", "last")))


def find_checkpoint(path) -> Path:
    """The complete checkpoint directory for `path`: itself, or `.NAME.old` when a save was
    killed between its two renames. Raises CheckpointError when there is neither."""
    path = Path(path)
    old = _siblings(path)[1]
    if (path / "last").is_dir() and not (path / STATE).exists():
        raise CheckpointError(f"{path} is a run directory; its checkpoints are {path / 'last'} and {path / 'best'}")
    if (path / "search.json").is_file() and not (path / STATE).exists():  # runs.SEARCH: `dslc search --out`
        raise CheckpointError(f"{path} is a search directory; each trial is a run with its checkpoints, e.g. "
                              f"{path / 'trial-001' / 'best'} (results.csv ranks the trials)")
    if unsaved_run(path):
        raise CheckpointError(f"{path} is a run directory with no checkpoint yet (no best/ or last/): its "
                              "training stopped before the first was saved")
    if path.is_dir():
        if not any(os.path.lexists(path / name) for name in (STATE, WEIGHTS, OPTIMIZER)):
            raise CheckpointError(_not_a_checkpoint(path))
        return path
    if not path.exists() and old.is_dir():
        return old
    raise CheckpointError(f"{path}: {'not a checkpoint directory' if path.exists() else 'no checkpoint there'}")


def _not_a_checkpoint(path: Path, shown: int = 3) -> str:
    """What a directory holding none of a checkpoint's files is: the runs directory that
    `dslc train --out runs/NAME` fills (`init = checkpoint("runs")`), named with the runs it
    holds, or something else. It was "runs/state.json: missing; the checkpoint is
    incomplete", as if a save had lost a file."""
    try:
        runs = sorted(entry.name for entry in os.scandir(path)
                      if entry.is_dir() and (saved(Path(entry.path), "best") or saved(Path(entry.path), "last")))
    except OSError:
        runs = []
    if not runs:
        return f"{path}: not a checkpoint directory (no {STATE}, {WEIGHTS} or {OPTIMIZER})"
    more = f" and {len(runs) - shown} more" if len(runs) > shown else ""
    return (f"{path} holds runs, not a checkpoint: {', '.join(runs[:shown])}{more}; name one, e.g. "
            f"{path / runs[0]} (its best checkpoint, else its last)")


def _read_state(file: Path) -> dict:
    if not os.path.lexists(file):
        raise CheckpointError(f"{file}: missing; the checkpoint is incomplete")
    try:
        state = read_json(file, STATE_LIMIT, "a checkpoint's state.json", object_hook=_decode)
    except UnreadableFile as e:
        raise CheckpointError(str(e)) from None
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{file}: bad array entry ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict):
        raise CheckpointError(f"{file}: not a dslc checkpoint state (no 'files' table)")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{file}: checkpoint format {state.get('format')!r}; this dslc reads {FORMAT}")
    return state


def _read_arrays(file: Path, expected) -> dict[str, np.ndarray]:
    """The arrays of one safetensors file of a checkpoint, read only when its size on disk is
    the one state.json records (so a huge or sparse file is refused before it is read)."""
    if not os.path.lexists(file):
        raise CheckpointError(f"{file}: missing; the checkpoint is incomplete")
    if not isinstance(expected, dict):
        raise CheckpointError(f"{file}: not listed in state.json")
    try:
        with open_regular(file) as f:
            size = os.fstat(f.fileno()).st_size
            if size != expected.get("bytes"):
                raise CheckpointError(f"{file}: corrupt or truncated ({size:,} bytes; state.json records "
                                      f"another size)")
            check_memory(size, "loading it", file)
            data = f.read(size)
    except UnreadableFile as e:
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"{file}: unreadable ({reason(e)})") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise CheckpointError(f"{file}: corrupt or truncated ({len(data)} bytes; the checksum in "
                              f"state.json does not match)")
    try:
        arrays = st.load(data)
    except Exception as e:  # safetensors raises its own SafetensorError for a bad header
        raise CheckpointError(f"{file}: not a valid safetensors file ({e})") from None
    bad = _non_finite(arrays)
    if bad:
        raise CheckpointError(f"{file}: {bad}; a checkpoint of a diverged run cannot be used")
    return arrays


def load_checkpoint(path) -> Checkpoint:
    """Load a checkpoint directory (or the `.NAME.old` a killed save left); CheckpointError
    names the file when something is missing, truncated, corrupt or not JSON.

    A running trainer may replace the checkpoint while it is read (`dslc eval` of a run still
    training): commit's renames can put a new weights file under the state.json already
    read, or remove `.NAME.old` between two of its files. A read that fails after the
    checkpoint at `path` has become another directory is made again, up to READS times in
    all; one that fails on the directory it began with is what is on disk, and is reported."""
    for _ in range(READS - 1):
        where = find_checkpoint(path)
        began = _identity(where)
        try:
            return _read(where)
        except CheckpointError:
            if not _replaced(path, began):
                raise
    return _read(find_checkpoint(path))


READS = 4  # attempts at a checkpoint that keeps being replaced while it is read


def _read(where: Path) -> Checkpoint:
    state = _read_state(where / STATE)
    files = state.pop("files")
    weights = _read_arrays(where / WEIGHTS, files.get(WEIGHTS))
    optimizer = _read_arrays(where / OPTIMIZER, files.get(OPTIMIZER))
    return Checkpoint(where, weights, optimizer, state)


def _identity(where: Path) -> tuple[int, int] | None:
    """(device, inode) of a checkpoint directory; None when it is gone."""
    try:
        st = os.stat(where)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _replaced(path, began: tuple[int, int] | None) -> bool:
    """Whether the checkpoint found at `path` is now another directory than `began` (or
    none: the next attempt says why)."""
    try:
        return _identity(find_checkpoint(path)) != began
    except CheckpointError:
        return True


# ---- identity: hashes and differences ----------------------------------------------------

def digest(obj) -> str:
    """A short stable hash of JSON-able data (keys sorted; non-JSON values by str())."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_hash(graph) -> str:
    """Hash of a model's graph: every node's name, op, inputs, attributes and type (parameter
    names, shapes and dtypes included) and the outputs. Source positions are left out, so
    editing comments or moving lines keeps the hash; changing an activation does not."""
    nodes = [[n.name, n.op, list(n.inputs), [[k, str(v)] for k, v in n.attrs], n.type.show()] for n in graph.nodes]
    return digest({"nodes": nodes, "outputs": [[o.kind, o.name, o.value] for o in graph.outputs]})


def recipe_hash(recipe) -> str:
    """Hash of a checked Recipe's resolved settings (its JSON form)."""
    return digest(recipe.to_json())


class Difference(NamedTuple):
    """One way a checkpoint does not fit a model. kind: missing, extra, shape, dtype,
    optimizer or structure (same parameters, different graph)."""

    kind: str
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


def compare(checkpoint: Checkpoint, graph, optimizer: str | None = None) -> list[Difference]:
    """Every difference between a checkpoint and a model (and optimizer name); [] when it fits.

        for d in compare(load_checkpoint("runs/m/last"), model.graph, "adam"): print(d)
    """
    saved = checkpoint.weights
    wanted = {p.name: p for p in graph.params}
    out = [Difference("missing", n, "in the model, not in the checkpoint") for n in wanted if n not in saved]
    out += [Difference("extra", n, "in the checkpoint, not in the model") for n in saved if n not in wanted]
    for name, p in wanted.items():
        if name not in saved:
            continue
        shape, have = tuple(p.type.shape), saved[name]
        if tuple(have.shape) != shape:
            out.append(Difference("shape", name, f"checkpoint has shape {list(have.shape)}, model {list(shape)}"))
        if have.dtype != np.dtype(NUMPY_DTYPE[p.type.dtype]):
            out.append(Difference("dtype", name, f"checkpoint has {have.dtype}, model {NUMPY_DTYPE[p.type.dtype]}"))
    was = checkpoint.state.get("optimizer")
    if optimizer is not None and was is not None and was != optimizer:
        out.append(Difference("optimizer", "optimizer", f"checkpoint was trained with {was}, recipe uses {optimizer}"))
    saved_hash = checkpoint.state.get("model_hash")
    if not out and saved_hash is not None and saved_hash != model_hash(graph):
        out.append(Difference("structure", "model", "same parameters but a different graph (layers, "
                                                    "activations or attributes changed)"))
    return out
