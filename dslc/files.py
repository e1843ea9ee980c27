"""Reading and writing the files a user or a run points at: the one place that touches them raw.

Writing. Every file dslc writes whole (`-o`, `--emit`, a run's config.json and metrics, the
kernel cache) goes through `write_atomic`, which looks at what the path names first:
- a regular file, or nothing yet: the bytes go to a uniquely named temporary sibling (two
  processes never share one), renamed over the target only when complete. A reader, or a
  crash half-way, sees the old file or the new one, never a mix; a failed write leaves no
  temporary behind; the old file's permissions are kept. A symlink stays a symlink: the
  file it points at is the one replaced. `durable=True` (the default) also fsyncs the file
  and its directory, so the rename survives a power cut; the kernel cache, which can always
  be regenerated, skips that cost.
- a character device or a pipe (`-o /dev/null`, a FIFO, `/dev/stdout`, `/proc/self/fd/1`):
  the bytes are written into it, as a shell redirection would; the node is never replaced.
  A pipe with no reader is refused rather than waited on.
- a directory, a block device or a socket: refused.
`write_together` writes files that belong together (a .net model and its weights) the same
way, every one staged before any is renamed: one that cannot be written leaves all as they were.
A failure the user can act on (a missing directory, no permission, a full disk, a name too
long) is a `CliError` naming the path and the reason: exit status 1, never a traceback.

Reading. `open_regular` opens only regular files, without blocking on a FIFO, so `/dev/zero`
or a pipe given as a data file, a checkpoint or a run file is refused at once; `read_limited`
also bounds what is read by a limit of the caller's (what such a file can sensibly hold) and
by the memory this process may still take (`memory_available`: the machine's available memory,
or less under `ulimit -v`). A size a header claims is checked with `check_memory` before
anything is allocated for it.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> write_atomic(target, b"hello")
    >>> read_limited(target, 100, "a greeting")
    b'hello'
"""
from __future__ import annotations

import errno
import io
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from io import BufferedReader

from dslc import reading
from dslc.diagnostics import CliError, UsageError
from dslc.reading import human_bytes, memory_available

_REASONS = {errno.ENOENT: "no such file or directory", errno.ENOTDIR: "a part of the path is not a directory",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
            errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large",
            errno.ENAMETOOLONG: "file name too long", errno.EISDIR: "is a directory",
            errno.ELOOP: "too many levels of symbolic links", errno.EIO: "input/output error"}


def reason(e: OSError) -> str:
    """A short lower-case reason for an OS error, without the path (the message names it)."""
    return _REASONS.get(e.errno, (e.strerror or str(e)).lower())


# ---- writing ---------------------------------------------------------------------------

def fsync_dir(path) -> None:
    """Make a rename or a new entry in directory `path` durable (a file's fsync does not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path, data: bytes) -> None:
    """Write `data` to a new file at `path` and fsync it (inside a directory being built)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def ensure_dir(path) -> Path:
    """Create directory `path` and its parents if needed; CliError when it cannot be one."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CliError(f"cannot create directory {path}: a file of that name is in the way") from None
    except OSError as e:
        raise CliError(f"cannot create directory {path}: {reason(e)}") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# /dev/stdout, /dev/fd/N, /proc/self/fd/N: an open descriptor of this process, used as it is
# (reopening it would truncate a redirected file, renaming over it would lose the output).
def _own_fd(path: Path) -> int | None:
    pattern = rf"/(?:dev/(?:std(out|err)|fd/(\d+))|proc/(?:self|{os.getpid()})/fd/(\d+))"
    match = re.fullmatch(pattern, os.path.abspath(path))
    if match is None:
        return None
    std, *numbers = match.groups()
    return {"out": 1, "err": 2}[std] if std else int(next(n for n in numbers if n))


def written_into(path: str | os.PathLike) -> bool:
    """Whether write_atomic writes into `path` rather than putting a file there: a descriptor
    of this process (/dev/stdout), a character device or a pipe (through symbolic links)."""
    path = Path(path)
    if _own_fd(path) is not None:
        return True
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)


def write_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path`: replace a regular file atomically, write into a character device
    or a pipe, refuse anything else (see the module docstring)."""
    path = Path(path)
    fd = _own_fd(path)
    if fd is not None:
        return _write_fd(fd, data, path)
    mode = _replaced_mode(path)
    if mode is None:
        return _write_into(path, data)
    target = Path(os.path.realpath(path))
    _commit(path, _stage(path, target, data, durable, mode), target, durable)


def write_together(files: list[tuple[str | os.PathLike, bytes]], *, durable: bool = True) -> None:
    """Write files that belong together (a model and its weights) as write_atomic writes each,
    none replaced unless all can be: every target is looked at, and every regular one's bytes
    are in a complete temporary sibling, before the first is renamed into place. A target
    write_atomic refuses (a directory, a missing folder, a full disk) leaves every file as it
    was. The renames follow one another with nothing written between; a character device or a
    pipe among the targets is written into after them.

        write_together([("m.net", text), ("m.safetensors", weights)])
    """
    plans = []
    for path, data in files:
        path = Path(path)
        mode = None if _own_fd(path) is not None else _replaced_mode(path)
        plans.append((path, data, mode))
    staged: list[tuple[Path, str, Path]] = []  # (as given, temporary, target)
    try:
        for path, data, mode in plans:
            if mode is not None:
                target = Path(os.path.realpath(path))
                staged.append((path, _stage(path, target, data, durable, mode), target))
        while staged:
            path, tmp, target = staged[0]
            _commit(path, tmp, target, durable)
            staged.pop(0)
    finally:
        for _, tmp, _ in staged:  # not renamed: a failure before or at its turn
            Path(tmp).unlink(missing_ok=True)
    for path, data, mode in plans:
        if mode is None:
            write_atomic(path, data, durable=durable)


def _replaced_mode(path: Path) -> int | None:
    """The permissions the file replacing `path` gets (a regular file's own, or the usual ones
    for a new file); None for a character device or a pipe, which are written into; CliError
    for what is neither."""
    try:
        st = os.stat(path)  # follows symlinks: what the path finally names
    except FileNotFoundError:
        return 0o666 & ~_umask()
    except OSError as e:
        raise CliError(f"cannot write {path}: {reason(e)}") from None
    if stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return None
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
            else "a socket")
    raise CliError(f"cannot write {path}: it is {kind}; give the name of a file")


# A figure's format from its file name's suffix (matplotlib renders each; jpg through pillow).
# A name without one (`-o /dev/stdout`, a FIFO) gets PNG; any other suffix is refused
# rather than written as PNG bytes under a name that says otherwise.
FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpg", ".jpeg": "jpg"}


def figure_format(path: str | os.PathLike) -> str:
    """The format a figure written to `path` takes; ValueError for a suffix no figure has.

    >>> figure_format("curves.pdf"), figure_format("/dev/stdout"), figure_format("a.b/saliency")
    ('pdf', 'png', 'png')
    """
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "png"
    if suffix not in FIGURE_FORMATS:
        raise ValueError(f"{os.fspath(path)}: a figure is written as {', '.join(FIGURE_FORMATS)}, "
                         f"not {suffix}; name the file with one of those")
    return FIGURE_FORMATS[suffix]


_SURROGATE = re.compile("[\ud800-\udfff]")


def write_figure(fig, path: str | os.PathLike, dpi: int) -> None:
    """Render a matplotlib Figure in the format its name asks for (figure_format) and write it
    atomically: a viewer never reads half a file."""
    from matplotlib.text import Text

    # A name from the command line may hold bytes that are not UTF-8, which Python keeps as
    # lone surrogates ('r\udcff') and FreeType cannot draw: a run directory so named was a
    # TypeError traceback at its curves.png, after training. They are shown escaped, as in messages.
    for text in fig.findobj(Text):
        shown = _SURROGATE.sub(lambda m: ascii(m.group())[1:-1], text.get_text())
        if shown != text.get_text():
            text.set_text(shown)
    buf = io.BytesIO()
    fig.savefig(buf, format=figure_format(path), dpi=dpi)
    write_atomic(path, buf.getvalue())


def _stage(shown: Path, target: Path, data: bytes, durable: bool, mode: int) -> str:
    """A complete temporary sibling of `target` holding `data`, by name; errors name `shown`."""
    tmp = None
    try:
        # The temporary's name is bounded, so a target name near the limit still gets one.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:80]}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)  # mkstemp makes 0600; keep the old file's, or the usual
        staged, tmp = tmp, None
        return staged
    except OSError as e:
        raise CliError(f"cannot write {shown}: {_where(e, target)}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _commit(shown: Path, tmp: str, target: Path, durable: bool) -> None:
    """Rename the temporary `tmp` over `target` (removed if that fails); errors name `shown`."""
    try:
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CliError(f"cannot write {shown}: {_where(e, target)}") from None
    if durable:
        try:
            fsync_dir(target.parent)
        except OSError as e:
            raise CliError(f"cannot write {shown}: {_where(e, target)}") from None


def _where(e: OSError, target: Path) -> str:
    """The reason of a failed write, saying which directory is missing when one is."""
    if e.errno == errno.ENOENT and not target.parent.exists():
        return f"no such directory {target.parent}"
    return reason(e)


def _write_into(path: Path, data: bytes) -> None:
    """Write into a character device or a FIFO; a FIFO nobody reads is an error, not a hang."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        why = "a pipe with no reader" if e.errno == errno.ENXIO else reason(e)
        raise CliError(f"cannot write {path}: {why}") from None
    try:
        os.set_blocking(fd, True)
        _write_fd(fd, data, path)
    finally:
        os.close(fd)


def _write_fd(fd: int, data: bytes, shown: Path) -> None:
    if fd in (1, 2):  # what print() buffered so far comes first
        (sys.stdout if fd == 1 else sys.stderr).flush()
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise CliError(f"cannot write {shown}: {reason(e)}") from None


def same_file(a, b) -> bool:
    """Whether `a` and `b` name one existing file (through links too); False where either is absent or unreadable."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def output_is_not(output, *inputs, flag: str = "-o") -> None:
    """UsageError when `flag OUTPUT` (-o, or another option that writes) names a file the
    command reads (`dslc inspect m.net -o m.net` would replace the model with its graph)."""
    for given in inputs:
        if output is not None and same_file(output, given):
            raise UsageError(f"{flag} {output} is {given}, which this command reads; choose another output file")


# ---- reading ---------------------------------------------------------------------------

class UnreadableFile(CliError):
    """A file that cannot be read as asked: `path` and `reason` apart, for callers that raise
    their own error type (DataError, CheckpointError) with the same words."""

    def __init__(self, path, why: str):
        self.path, self.reason = str(path), why
        super().__init__(f"{path}: {why}")


def open_regular(path) -> BufferedReader:
    """`path` opened for binary reading when it is a regular file (symlinks followed);
    UnreadableFile otherwise. Opening never blocks: a FIFO is refused, not waited on."""
    try:
        return reading.open_regular(path)
    except reading.Refused as e:
        raise UnreadableFile(path, f"is {e.strerror}") from None
    except OSError as e:
        raise UnreadableFile(path, "no such file" if e.errno == errno.ENOENT else reason(e)) from None


def read_limited(path, limit: int, what: str) -> bytes:
    """The bytes of regular file `path`, refused when it holds more than `limit` bytes (`what`
    names the kind of file in the message) or more than memory allows."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise UnreadableFile(path, f"{human_bytes(size)}; more than the {human_bytes(limit)} {what} may hold")
        check_memory(size, f"reading it ({human_bytes(size)})", path)
        try:
            return f.read(size)
        except OSError as e:
            raise UnreadableFile(path, f"cannot read: {reason(e)}") from None


def check_memory(nbytes: int, what: str, path) -> None:
    """UnreadableFile naming `path` when `what` (needing `nbytes`) would not fit in memory."""
    available = memory_available()
    if nbytes > available:
        raise UnreadableFile(path, f"{what} needs {human_bytes(nbytes)} of memory; "
                                   f"{human_bytes(available)} is available")


def read_json(path, limit: int, what: str, object_hook=None):
    """The JSON document in regular file `path` (at most `limit` bytes; `what` names it in
    messages); UnreadableFile for bad UTF-8 or JSON, with the line and column."""
    import json

    raw = read_limited(path, limit, what)
    try:
        return json.loads(raw.decode("utf-8"), object_hook=object_hook)
    except UnicodeDecodeError as e:
        raise UnreadableFile(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UnreadableFile(path, f"bad JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise UnreadableFile(path, "JSON nested too deeply to be a dslc file") from None
