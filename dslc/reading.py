"""Reading files a user points at: regular files only, and never more than a bound.

A .net file, an import, a data file or a checkpoint is named by the user, so it may be
anything: a FIFO (an open() that blocks for ever), `/dev/zero` (a read that never ends),
a symlink to either, or a file far larger than anything dslc could use. `open_regular`
and `read_bounded` refuse all of these with an OSError whose `strerror` says why, so
callers word the message as for any unreadable file; `memory_available` is the other
bound, what this process may still allocate. This module imports nothing of dslc: the
diagnostics renderer, which quotes source lines, reads through it too, and dslc.files
builds the user-facing readers on it.
"""
from __future__ import annotations

import errno
import os
import stat
from io import BufferedReader


class Refused(OSError):
    """A path dslc will not read: not a regular file, or larger than the bound for its kind."""


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message: 'a FIFO', 'a directory', ..."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> BufferedReader:
    """`path` opened for binary reading when it is a regular file (symlinks followed); else
    OSError (`Refused`, or IsADirectoryError). Opening never blocks: the descriptor is opened
    non-blocking and its type checked by fstat() before anything is read, so a FIFO is refused,
    not waited on, even if the path was swapped after a stat()."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "it is a directory", str(path))
        raise Refused(errno.EINVAL, f"{file_kind(mode)}, not a regular file", str(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file at `path`, if it holds at most `limit` of them.

    Anything else raises OSError (`Refused` for what is not a regular file or is too large),
    without blocking and without reading more than `limit` + 1 bytes: a FIFO would block an
    open() for ever and `/dev/zero` never ends (see open_regular); the size is checked before
    reading and the read is capped, since a file can grow while it is read.

        read_bounded("models/lenet5.net", 1 << 20)[:5] -> b'# Le-'
    """
    with open_regular(path) as f:
        too_big = Refused(errno.EFBIG, f"larger than {human_bytes(limit)}, the most dslc reads from one", str(path))
        if os.fstat(f.fileno()).st_size > limit:
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


def human_bytes(n: float) -> str:
    """A byte count for people: 512 bytes, 1 MiB, 3.5 GiB, 30.0 EiB."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        n /= 1024
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f.read(1 << 16).splitlines():
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _address_space_left() -> int | None:
    """What an RLIMIT_AS (`ulimit -v`) leaves beyond the address space already mapped, or None."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm", "rb") as f:
            mapped = int(f.read(256).split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        mapped = 0
    return max(soft - mapped, 0)


def memory_available() -> int:
    """Bytes this process may still allocate: the machine's available memory (MemAvailable,
    else its physical memory), less under an address-space limit."""
    found = _meminfo_available()
    if found is None:
        found = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    left = _address_space_left()
    return found if left is None else min(found, left)
