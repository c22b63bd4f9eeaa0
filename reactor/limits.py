"""How many connections the process can actually hold.

Every connection is a file descriptor, and the operating system caps how
many one process may open (``RLIMIT_NOFILE``; often 1,024 by default).  At
start the daemon raises its soft limit as far as the hard limit allows, and
if ``--max-clients`` plus a small reserve still does not fit, lowers
``--max-clients`` to what fits, so the server refuses the extra client with
``ERR server-full`` instead of failing inside ``accept``.  On Windows the
limit is ``select()``'s: at most 512 sockets.
"""

from __future__ import annotations

import sys

RESERVE = 32
"""Descriptors kept for the listener, the selector, the signal wakeup pair,
standard streams, and connections that are still closing."""

WINDOWS_SELECT_LIMIT = 512
_MACOS_OPEN_MAX = 10240  # macOS refuses a soft limit above OPEN_MAX


def fit_max_clients(requested: int) -> tuple[int, str | None]:
    """The ``max_clients`` that fits, and a warning when it is lower than ``requested``."""
    if sys.platform == "win32":
        return _fit(requested, WINDOWS_SELECT_LIMIT, "select() on Windows handles at most 512 sockets")
    try:
        import resource
    except ImportError:  # not POSIX and not Windows: nothing to ask
        return requested, None
    limit = _raise_soft_limit(resource, requested + RESERVE)
    if limit is None:
        return requested, None
    return _fit(requested, limit, f"the open-file limit is {limit} (ulimit -n)")


def _fit(requested: int, limit: int, why: str) -> tuple[int, str | None]:
    if requested + RESERVE <= limit:
        return requested, None
    fitted = max(1, limit - RESERVE)
    return fitted, f"--max-clients lowered from {requested} to {fitted}: {why}"


def _raise_soft_limit(resource, needed: int) -> int | None:
    """Raise the soft RLIMIT_NOFILE toward ``needed``; the limit now in force (None: unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None if soft == resource.RLIM_INFINITY else soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    for candidate in (target, min(target, _MACOS_OPEN_MAX)):
        if candidate <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (candidate, hard))
        except (ValueError, OSError):
            continue
        return candidate
    return soft
