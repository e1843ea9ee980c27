"""Every `DSLC_*` environment variable is read here, and only here.

    DSLC_VERIFY=1    run the IR verifier (dslc/ir/verify.py) after every pass
    DSLC_DEBUG=N     the inspection ladder, on standard error: 1 each optimiser pass's
                     report (dslc/passes/pipeline.py), 2 also per-kernel timings at
                     exit (runtime/cpu/runner.py), 3 also the IR before and after each
                     pass, 4 also the generated source of each compiled module
    DSLC_CACHE=DIR   where compiled kernels are cached (default ~/.cache/dslc)
    DSLC_COMPILE_WORKERS=N   processes besides the calling one that compile kernels
                     (default: one per core the load average leaves idle)

The variables are read on every call rather than once at import, so a test (or a
notebook) can change them with `monkeypatch.setenv` and see the effect at once.
A malformed value is a usage error: silently ignoring `DSLC_DEBUG=two` would hide
the very output the user asked for.
"""
from __future__ import annotations

import os
from pathlib import Path

from dslc.diagnostics import UsageError

MAX_DEBUG = 4
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def verify_enabled() -> bool:
    """True when DSLC_VERIFY asks for the verifier between passes (1/true/yes/on)."""
    raw = os.environ.get("DSLC_VERIFY", "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise UsageError(f"DSLC_VERIFY must be 0 or 1, got {raw!r}")


def debug_level() -> int:
    """The DSLC_DEBUG level, 0 (quiet) to 4; larger numbers mean 4, as in tinygrad."""
    raw = os.environ.get("DSLC_DEBUG", "").strip()
    if not raw:
        return 0
    try:
        level = int(raw)
    except ValueError:
        level = -1
    if level < 0:
        raise UsageError(f"DSLC_DEBUG must be an integer from 0 to {MAX_DEBUG}, got {raw!r}")
    return min(level, MAX_DEBUG)


def compile_workers() -> int | None:
    """DSLC_COMPILE_WORKERS as a count (0: compile in the calling process only), or None when unset."""
    raw = os.environ.get("DSLC_COMPILE_WORKERS", "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise UsageError(f"DSLC_COMPILE_WORKERS must be a count of processes (0 or more), got {raw!r}")
    return int(raw)


def cache_dir() -> Path:
    """The kernel cache directory: DSLC_CACHE, else ~/.cache/dslc (not created here)."""
    raw = os.environ.get("DSLC_CACHE", "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "dslc"
