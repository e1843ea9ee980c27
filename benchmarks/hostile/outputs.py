"""Issue 12, item 2: output paths. `-o`, `--out`, `--emit` and DSLC_CACHE pointed at device
nodes, symlinks, FIFOs, /proc/self/fd/1, directories, read-only or full file systems, missing
parents and over-long names; `dslc ops` into a full or closed stdout."""
from __future__ import annotations

import os
import stat

from benchmarks.hostile.kit import MLP, Case, Trial

# A verb writing one file, as (argv for an output path). inspect is told its format: the
# paths below have no suffix to guess it from.
FILE_WRITERS = {
    "inspect -o": lambda out: ["inspect", MLP, "--format", "text", "-o", out],
    "lr -o": lambda out: ["lr", MLP, "-o", out],
}
FIGURES = {"lr"}  # the writers above that draw a figure, its format from its name's suffix
# A verb writing into a directory it creates, as (argv, env) for a directory path.
DIR_WRITERS = {
    "compile --emit": lambda out: (["compile", MLP, "--no-build", "--stage", "infer", "--emit", out], {}),
    "compile --target gpu --emit": lambda out: (["compile", MLP, "--target", "gpu", "--no-build", "--stage",
                                                 "infer", "--emit", out], {}),
    "DSLC_CACHE": lambda out: (["compile", MLP, "--no-build", "--stage", "infer"], {"DSLC_CACHE": str(out)}),
    "train --out": lambda out: (["train", MLP, "--device", "reference", "--epochs", "2", "--quiet", "--out", out],
                                {}),
}


def _is_regular_with(path, mode: int | None = None):
    def after(_):
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return [f"{path} is not a non-empty regular file after the write"]
        if mode is not None and stat.S_IMODE(st.st_mode) != mode:
            return [f"{path} lost its permissions: {oct(stat.S_IMODE(st.st_mode))}, was {oct(mode)}"]
        return []
    return after


def _printed(outcome):
    return [] if outcome.stdout.strip() else ["nothing arrived on standard output"]


# Each kind of output path: (name, make(ws, writer) -> Case).
def _null(ws, w):
    node = ws.node("null", 1, 3)
    return Case(w(node), 0, keep=(node,))


def _full_device(ws, w):
    node = ws.node("full", 1, 7)
    return Case(w(node), 1, says=(str(node), "no space"), keep=(node,))


def _block_device(ws, w):
    node = ws.node("disk", 7, 0, block=True)  # never opened: refused by its type
    return Case(w(node), 1, says=(str(node), "block device"), keep=(node,))


def _symlink(ws, w):
    target = ws.file("real", b"old")
    link = ws.path / "link"
    link.symlink_to(target.name)
    return Case(w(link), 0, keep=(link,), after=_is_regular_with(target))


def _existing_file(ws, w):
    target = ws.file("old", b"old")
    target.chmod(0o640)
    return Case(w(target), 0, after=_is_regular_with(target, 0o640))


def _fifo(ws, w):
    fifo = ws.fifo("pipe")
    return Case(w(fifo), 1, says=(str(fifo), "no reader"), keep=(fifo,), seconds=20)


def _proc_fd(ws, w):
    return Case(w("/proc/self/fd/1"), 0, after=_printed)


def _directory(ws, w):
    folder = ws.path / "folder"
    folder.mkdir()
    return Case(w(folder), 1, says=(str(folder), "directory"), keep=(folder,))


def _file_as_parent(ws, w):
    parent = ws.file("plain.txt", b"keep me")
    return Case(w(parent / "out"), 1, says=("plain.txt", "not a directory"), keep=(parent,))


def _missing_parent(ws, w):
    return Case(w(ws.path / "nowhere" / "out"), 1, says=("nowhere", "no such directory"))


def _too_long(ws, w):
    return Case(w(ws.path / ("x" * 300)), 1, says=("file name too long",))


def _read_only(ws, w):
    folder = ws.read_only_dir()
    return Case(w(folder / "out"), 1, says=(str(folder / "out"),))


def _full_disk(ws, w):
    folder = ws.full_dir()
    return Case(w(folder / "out"), 1, says=(str(folder / "out"), "no space"))


def _the_input(ws, w):
    net = ws.net(name="model.net")
    argv = [net if a == MLP else a for a in w(net)]
    # a figure's name is checked first: a .net file is no figure (files.figure_format)
    return Case(argv, 2, says=("model.net", "not .net" if argv[0] in FIGURES else "reads"), keep=(net,))


FILE_KINDS = {"a null device": _null, "a full device": _full_device, "a block device": _block_device,
              "a symlink": _symlink, "an existing file": _existing_file, "a FIFO with no reader": _fifo,
              "/proc/self/fd/1": _proc_fd, "a directory": _directory, "a file as parent": _file_as_parent,
              "a missing parent": _missing_parent, "a name too long": _too_long,
              "a read-only directory": _read_only, "a full disk": _full_disk, "the model it reads": _the_input}


# Each kind of directory path: the directory must be made or refused, never a node replaced.
def _dir_file(ws, w):
    path = ws.file("plain", b"keep me")
    argv, env = w(path)
    return Case(argv, 1, says=(str(path), "in the way"), keep=(path,), env=env)


def _dir_node(ws, w):
    node = ws.node("null", 1, 3)
    argv, env = w(node)
    return Case(argv, 1, says=(str(node),), keep=(node,), env=env)


def _dir_read_only(ws, w):
    folder = ws.read_only_dir()
    argv, env = w(folder / "sub")
    return Case(argv, 1, says=(str(folder / "sub"),), env=env)


def _dir_full(ws, w):
    folder = ws.full_dir()
    argv, env = w(folder / "sub")
    return Case(argv, 1, says=("no space",), env=env)


def _dir_too_long(ws, w):
    argv, env = w(ws.path / ("d" * 300))
    return Case(argv, 1, says=("file name too long",), env=env)


DIR_KINDS = {"a file": _dir_file, "a device node": _dir_node, "a read-only directory": _dir_read_only,
             "a full disk": _dir_full, "a name too long": _dir_too_long}


def _ops_full(ws):
    node = ws.node("full", 1, 7)
    return Case(["ops"], 1, says=("standard output", "no space"), keep=(node,), stdout=node)


def _ops_closed(ws):
    return Case(["ops"], 0, close_stdout=True)


TRIALS = [Trial(2, f"{writer} to {kind}", lambda ws, w=w, k=k: k(ws, w))
          for writer, w in FILE_WRITERS.items() for kind, k in FILE_KINDS.items()]
TRIALS += [Trial(2, f"{writer} at {kind}", lambda ws, w=w, k=k: k(ws, w), slow=writer == "train --out")
           for writer, w in DIR_WRITERS.items() for kind, k in DIR_KINDS.items()]
TRIALS += [Trial(2, "dslc ops into a full stdout", _ops_full), Trial(2, "dslc ops into a closed pipe", _ops_closed)]
