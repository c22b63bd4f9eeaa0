"""Handing freed heap memory back to the kernel after a burst, where the C library allows it.

Theory of operation
-------------------
A burst of TLS clients holds thousands of handshakes in progress at once,
each with OpenSSL's buffers and state, all allocated with the C library's
``malloc``.  Once they are done, the memory is free but glibc keeps the
fragmented heap's high-water mark: 5,000 idle TLS connections that arrived
4,096 at a time held 38 KiB each, against 17 KiB when they came 100 at a
time.  glibc's ``malloc_trim`` gives the free pages back; Python has no
call for it, so it is reached through ``ctypes``, once, when a burst ends
(the loop decides when: ``TLS_BURST`` in ``reactor.loop``).

Elsewhere (macOS, Windows, musl) there is no such call, and nothing is done:
the memory is reused by the next burst all the same.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_looked = False


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # only here: most servers never have a burst to trim after

        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, ImportError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def give_back_free_heap() -> bool:
    """Return the heap's free pages to the kernel; whether the C library could."""
    global _trim, _looked
    if not _looked:
        _trim, _looked = _find_malloc_trim(), True
    if _trim is None:
        return False
    _trim(0)
    return True
