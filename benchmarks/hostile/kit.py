"""The machinery of a hostile-input trial: a workspace, a `dslc` process, and what must hold after it.

A trial makes its files in a fresh temporary workspace (device nodes with os.mknod, FIFOs
with os.mkfifo, small or read-only tmpfs mounts: all inside the workspace, never the
system's), runs one `dslc` command in a subprocess (memory bombs under an RLIMIT_AS cap)
and checks, whatever the command: no Python traceback; the exit status the README
documents; a message naming the file (and reason); every path the trial marks `keep` of
the same type, bytes, link target and device numbers as before; no temporary file
(`.NAME.tmp`) left anywhere in the workspace; the time limit kept. Problems are returned
as text, so the pytest suite and the standalone runner share one definition.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dslc.runtime.cpu import openmp_env

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
MLP = MODELS / "digits_mlp.net"
TEMPORARY = re.compile(r"^\..+\.tmp$")  # what write_atomic and checkpoints write before renaming


class Skip(Exception):
    """This machine cannot stage the trial (no root for mknod or mount)."""


@dataclass
class Case:
    """One `dslc ARGV` run and what must be true of it."""

    argv: list
    status: int | tuple[int, ...]
    says: tuple[str, ...] = ()          # in stderr: the file named, the reason given
    keep: tuple[Path, ...] = ()         # unchanged afterwards (type, bytes, link target, device)
    never_says: tuple[str, ...] = ()    # in neither stdout nor stderr (a secret file's content)
    env: dict = field(default_factory=dict)
    memory: int | None = None           # RLIMIT_AS of the process, bytes
    seconds: float = 60.0
    stdout: Path | None = None          # where stdout goes (a node, a file); else captured
    close_stdout: bool = False          # stdout a pipe whose reader has gone
    background: list | None = None      # another dslc command started first, stopped (Ctrl-C) after
    wait_for: Path | None = None        # ...and the file it must have made before the main one starts
    during: Callable[[subprocess.Popen], None] | None = None  # done to the process while it runs
    after: Callable[["Outcome"], list[str]] | None = None     # more checks: problems found


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class Trial:
    item: int                                  # the numbered item of issue 12
    name: str
    make: Callable[["Workspace"], Case]
    slow: bool = False


class Workspace:
    """A temporary directory for one trial, with helpers that stage hostile files in it."""

    def __init__(self, path: Path, cache: Path):
        self.path, self.cache = path, cache
        self._mounts: list[Path] = []

    def file(self, name: str, data: bytes | str = b"") -> Path:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def node(self, name: str, major: int, minor: int, block: bool = False) -> Path:
        """A device node in the workspace (1,3 null; 1,5 zero; 1,7 full); Skip without root."""
        path = self.path / name
        try:
            os.mknod(path, 0o600 | (stat.S_IFBLK if block else stat.S_IFCHR), os.makedev(major, minor))
        except PermissionError:
            raise Skip("device nodes need root (os.mknod)") from None
        return path

    def fifo(self, name: str) -> Path:
        path = self.path / name
        os.mkfifo(path)
        return path

    def tmpfs(self, name: str, size: str, read_only: bool = False) -> Path:
        """A tmpfs of `size` (e.g. "256k") mounted at workspace/NAME; Skip where mounting is refused."""
        path = self.path / name
        path.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        if done.returncode:
            raise Skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()})")
        self._mounts.append(path)
        return path

    def full_dir(self, name: str = "full") -> Path:
        """A directory on a tmpfs that is already full."""
        path = self.tmpfs(name, "64k")
        try:
            with open(path / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        return path

    def read_only_dir(self, name: str = "ro") -> Path:
        """A directory this process cannot write: a read-only tmpfs as root, else mode 0555."""
        if os.geteuid() == 0:
            return self.tmpfs(name, "64k", read_only=True)
        path = self.path / name
        path.mkdir(mode=0o555)
        return path

    def remount(self, path: Path, mode: str, seconds: float = 10.0) -> None:
        """Make the tmpfs at `path` read-only ("ro") or writable again ("rw"). The kernel refuses
        to make a file system read-only while a file on it is open for writing (EBUSY: mount
        exits 32), which it is for the moments a run writes a checkpoint or a metrics line:
        so the remount is tried again until it takes, for up to `seconds` (one CI run of the
        read-only-mid-run trial failed on its single try)."""
        deadline = time.monotonic() + seconds
        while True:
            done = subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], capture_output=True)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                done.check_returncode()
            time.sleep(0.005)

    def net(self, data: str | None = None, name: str = "m.net", text: str | None = None) -> Path:
        """digits_mlp.net (or `text`) with its recipe's data replaced by `data`, e.g. 'csv("t.csv")'."""
        text = text or MLP.read_text()
        if data is not None:
            text = text.replace("data      = digits()", f"data      = {data}")
        return self.file(name, text)

    def run_dir(self, name: str = "run") -> Path:
        """A copy of a finished two-epoch run of digits_mlp (trained once per cache, reference device)."""
        base = self.cache / "digits_mlp_run"
        if not (base / "last" / "state.json").exists():
            shutil.rmtree(base, ignore_errors=True)
            done = dslc(["train", MLP, "--device", "reference", "--epochs", "2", "--out", base, "--quiet"],
                        cwd=self.cache, env=self.env({}))
            if done.returncode:
                raise RuntimeError(f"the base run failed: {done.stderr}")
        shutil.copytree(base, self.path / name, symlinks=True)
        return self.path / name

    def env(self, extra: dict) -> dict:
        env = {**os.environ, **openmp_env(), "DSLC_CACHE": str(self.cache / "dslc"),
               "NUMBA_CACHE_DIR": str(self.cache / "numba"), "PYTHONPATH": str(ROOT)}
        return {**env, **extra}

    def close(self) -> None:
        for mount in reversed(self._mounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        shutil.rmtree(self.path, ignore_errors=True)


def dslc(argv, cwd, env, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dslc.cli", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, **kw)


def snapshot(path: Path):
    """What must not change about `path`: its type, link target, device numbers, bytes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = stat.S_IFMT(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return kind, os.readlink(path)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return kind, st.st_rdev
    if stat.S_ISREG(st.st_mode):
        return kind, hashlib.sha256(path.read_bytes()).hexdigest()
    return kind, None


def temporaries(root: Path) -> list[str]:
    """Names of temporary files or directories left anywhere under `root`."""
    found = []
    for here, dirs, files in os.walk(root):
        found += [os.path.join(here, n) for n in dirs + files if TEMPORARY.match(n)]
    return found


def _limits(memory: int | None):
    def apply():
        os.setsid()  # its own process group: Ctrl-C trials signal it alone
        if memory:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return apply


def execute(case: Case, ws: Workspace) -> Outcome:
    """Run the case's command in the workspace; the background command too, if any."""
    env = ws.env(case.env)
    background = None
    if case.background:
        background = subprocess.Popen([sys.executable, "-m", "dslc.cli", *map(str, case.background)], cwd=ws.path,
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while case.wait_for and not case.wait_for.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    stdout = open(case.stdout, "wb") if case.stdout else subprocess.PIPE
    start = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "dslc.cli", *map(str, case.argv)], cwd=ws.path, env=env,
                                stdout=stdout, stderr=subprocess.PIPE, preexec_fn=_limits(case.memory))
        if case.close_stdout:
            proc.stdout.close()
        if case.during:
            case.during(proc)
        try:
            out, err = proc.communicate(timeout=case.seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    finally:
        if case.stdout:
            stdout.close()
        if background is not None:  # Ctrl-C: it saves and stops cleanly, leaving no temporaries
            background.send_signal(signal.SIGINT)
            try:
                background.wait(timeout=60)
            except subprocess.TimeoutExpired:
                background.kill()
                background.wait()
    decode = lambda b: (b or b"").decode("utf-8", "replace")
    return Outcome(proc.returncode, "" if case.close_stdout else decode(out), decode(err), time.monotonic() - start)


def check(case: Case, outcome: Outcome, before: dict, ws: Workspace) -> list[str]:
    """Every way the outcome breaks the guarantees (see the module docstring); [] when none."""
    problems = []
    if "Traceback" in outcome.stderr:
        problems.append("a traceback:\n" + outcome.stderr[-2000:])
    wanted = case.status if isinstance(case.status, tuple) else (case.status,)
    if outcome.status not in wanted:
        problems.append(f"exit status {outcome.status}, expected {' or '.join(map(str, wanted))}; "
                        f"stderr: {outcome.stderr[-500:]!r}")
    problems += [f"stderr does not say {s!r}: {outcome.stderr[-500:]!r}" for s in case.says
                 if s not in outcome.stderr]
    problems += [f"the output repeats {s!r}" for s in case.never_says if s in outcome.stdout + outcome.stderr]
    problems += [f"{p} changed: {before[p]} -> {snapshot(p)}" for p in case.keep if snapshot(p) != before[p]]
    if outcome.seconds > case.seconds:
        problems.append(f"took {outcome.seconds:.1f} s, more than {case.seconds:g} s")
    if case.after:  # before looking for temporaries: it may be the next run, which clears them
        problems += case.after(outcome)
    problems += [f"temporary left behind: {t}" for t in temporaries(ws.path)]
    return problems


def run_trial(trial: Trial, cache: Path) -> tuple[list[str], Outcome | None]:
    """(problems, outcome) of one trial in a fresh workspace; Skip when it cannot be staged."""
    ws = Workspace(Path(tempfile.mkdtemp(prefix="dslc-hostile-")), cache)
    try:
        case = trial.make(ws)
        before = {p: snapshot(p) for p in case.keep}
        outcome = execute(case, ws)
        return check(case, outcome, before, ws), outcome
    finally:
        ws.close()


def interrupt_after(seconds: float):
    """A `during` action: Ctrl-C (SIGINT to the process group) after `seconds`."""
    def send(proc: subprocess.Popen) -> None:
        time.sleep(seconds)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    return send
