"""Child processes that end with the process that started them, on Linux.

A child of dslc (a search's trial, a kernel-compiling worker) does work only its parent
wants. Killed with SIGKILL, the parent cannot stop it, and it ran on: a trial holding its
run directory's lock, a compile worker finishing its unit (25 s for Winograd's module).
PR_SET_PDEATHSIG has the kernel send the child SIGTERM when its parent thread dies.

    subprocess.Popen(argv, preexec_fn=on_parent_death_preexec())   # set between fork and exec
    die_with_parent(parent_pid)                                      # or by the child itself

Elsewhere (macOS, Windows) both do nothing, and a child may outlive a killed parent.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _ask() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def on_parent_death_preexec():
    """Popen's preexec_fn that sets it in the child, or None off Linux."""
    return _ask if sys.platform == "linux" else None


def die_with_parent(parent_pid: int) -> None:
    """From the child itself, once started: SIGTERM when the parent dies, and an exit now if
    it already has (the child is then another process's: `parent_pid` is no longer its
    parent), which the request alone would miss."""
    if sys.platform != "linux":
        return
    _ask()
    if os.getppid() != parent_pid:
        os._exit(1)
