"""Writing files a user or a run points at: the one atomic writer of dslc.

Every file dslc writes whole (`-o`, `--emit`, a run's config.json and metrics, the kernel
cache) goes through `write_atomic`: the bytes go to a uniquely named temporary sibling
(so two processes never share one), which is renamed over the target only when it is
complete. A reader, or a crash half-way, sees the old file or the new one, never a mix,
and a failed write leaves no temporary file behind. `durable=True` (the default) also
fsyncs the file and its directory, so the rename survives a power cut; the kernel cache,
which can always be regenerated, skips that cost.

A failure the user can act on (a missing directory, no permission, a full disk) is a
`CliError` naming the path and the reason: exit status 1, never a traceback.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> write_atomic(target, b"hello")
    >>> target.read_bytes()
    b'hello'
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dslc.diagnostics import CliError


def fsync_dir(path) -> None:
    """Make a rename or a new entry in directory `path` durable (a file's fsync does not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path, data: bytes) -> None:
    """Write `data` to a new file at `path` and fsync it (inside a directory being built)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Replace the file at `path` by `data` atomically (see the module docstring)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CliError(f"cannot write {path}: {e.strerror or e}") from None
        raise

