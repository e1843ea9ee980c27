"""Reading files a user points at: regular files only, and never more than a bound.

A .net file, an import, a data file or a checkpoint is named by the user, so it may be
anything: a FIFO (an open() that blocks for ever), `/dev/zero` (a read that never ends),
a symlink to either, or a file far larger than anything dslc could use. `read_bounded`
refuses all of these with an OSError whose `strerror` says why, so callers word the
message as for any unreadable file. This module imports nothing of dslc: the diagnostics
renderer, which quotes source lines, reads through it too.
"""
from __future__ import annotations

import errno
import os
import stat


class Refused(OSError):
    """A path dslc will not read: not a regular file, or larger than the bound for its kind."""


def _kind(mode: int) -> str:
    return ("a FIFO" if stat.S_ISFIFO(mode) else
            "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file at `path`, if it holds at most `limit` of them.

    Anything else raises OSError (`Refused` for what is not a regular file or is too large),
    without blocking and without reading more than `limit` + 1 bytes: a FIFO would block an
    open() for ever and `/dev/zero` never ends, so the type is checked by stat() before
    opening, and again by fstat() on the descriptor (opened non-blocking) in case the path
    was swapped in between; the size is checked before reading and the read is capped, since
    a file can grow while it is read.

        read_bounded("models/lenet5.net", 1 << 20)[:5] -> b'# Le-'
    """
    def refuse(mode: int) -> OSError:
        if stat.S_ISDIR(mode):
            return IsADirectoryError(errno.EISDIR, "it is a directory", str(path))
        return Refused(errno.EINVAL, f"{_kind(mode)}, not a regular file", str(path))

    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise refuse(mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refuse(info.st_mode)
        too_big = Refused(errno.EFBIG, f"larger than {size_text(limit)}, the most dslc reads from one", str(path))
        if info.st_size > limit:
            raise too_big
        chunks, total = [], 0
        while total <= limit:
            chunk = f.read(min(limit + 1 - total, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise too_big
    return b"".join(chunks)


def size_text(n: float) -> str:
    """A byte count for people: 512 bytes, 1 MiB, 3.5 GiB, 30.0 EiB."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        n /= 1024
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
    raise AssertionError("unreachable")
