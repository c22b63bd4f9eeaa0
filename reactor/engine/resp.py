"""RESP, the Redis wire format: commands encoded here, replies parsed by hiredis.

Theory of operation
-------------------
A command is an array of bulk strings, ``*N\\r\\n`` then ``$len\\r\\narg\\r\\n``
for each argument: ``encode_command`` writes it in a few lines, and
commands queued in one loop turn are simply concatenated (pipelining needs
nothing more).

Replies are the hard half: five types, nesting, partial reads.  They are
parsed by ``hiredis.Reader``, the C parser redis-py uses.  It is sans-I/O,
the same shape as our ``LineFramer``: ``feed(bytes)`` whatever ``recv``
gave, then ``gets()`` until it answers ``False`` (no complete reply yet).
A pure-Python parser is about an order of magnitude slower on the replies
cluster mode reads (``tests/benchmarks/bench_resp.py``; figures in
``docs/cluster.md``), and the engine's replies are on every
delivery's path.

hiredis is the only dependency of the optional ``cluster`` extra, so it
is imported only by ``load_hiredis``, called when a link starts: the
standalone server never imports it (a test checks ``import
reactor.daemon``).  ``hiredis_available`` answers without importing it,
for the configuration's early exit 2.  tests/test_layering.py allows this
module, and no other in ``reactor/``, to import it.

Values a command's callback receives: ``bytes``, ``int``, ``None``, a list
of those, or an ``EngineError``: a ``ReplyError`` for an error reply
(``-ERR ...``, also inside a list, as EXEC returns them), a ``LinkLost``
when the connection ended before the reply came.  Errors are values, never
raised, so one bad command cannot unwind the event loop.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = [
    "INSTALL_HINT",
    "Arg",
    "EngineError",
    "LinkLost",
    "MissingExtra",
    "ReplyError",
    "encode_command",
    "encode_xadd",
    "hiredis_available",
    "load_hiredis",
    "reader_factory",
]

INSTALL_HINT = 'cluster mode needs the hiredis package: pip install "chat-reactor[cluster]"'

Arg = bytes | bytearray | memoryview | str | int | float
"""One command argument: text is sent as UTF-8, numbers in decimal."""


class MissingExtra(RuntimeError):
    """hiredis is not installed; the message says how to install it."""


class EngineError(Exception):
    """What a callback gets instead of a reply: an error reply, or a lost link."""


class ReplyError(EngineError):
    """An error reply, ``-ERR ...``; ``code`` is its first word (``ERR``, ``WRONGTYPE``, ``NOSCRIPT``)."""

    @property
    def code(self) -> str:
        message = str(self)
        return message.split(" ", 1)[0] if message else ""


class LinkLost(EngineError):
    """The connection ended before this command's reply came; it may or may not have run."""


def hiredis_available() -> bool:
    """Whether ``load_hiredis`` would succeed, without importing it."""
    try:
        return importlib.util.find_spec("hiredis") is not None
    except (ImportError, ValueError):
        return False


def load_hiredis() -> ModuleType:
    """The hiredis module, or ``MissingExtra`` with the line that tells how to install it."""
    try:
        import hiredis  # the cluster extra: imported only when cluster mode starts
    except ImportError:
        raise MissingExtra(INSTALL_HINT) from None
    return hiredis


def reader_factory() -> Callable[[], Any]:
    """Makes fresh ``hiredis.Reader``s whose error replies are ``ReplyError`` values.

    Raises ``MissingExtra`` now, when the owner starts a link, rather than
    from inside the loop when the first connection comes up.
    """
    return functools.partial(load_hiredis().Reader, replyError=ReplyError)


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command as RESP: an array of bulk strings.

    One comprehension, one join; text and bytes take the fast path.  The
    one command on every chat line's path, cluster mode's append, has an
    encoder of its own: ``encode_xadd``.
    """
    parts = [arg.encode() if arg.__class__ is str else _as_bytes(arg) for arg in args]
    return b"*%d\r\n" % len(parts) + b"".join([b"$%d\r\n%b\r\n" % (len(part), part) for part in parts])


def encode_xadd(key: bytes, field: bytes, values: Sequence[bytes]) -> bytes:
    """``XADD key * field value [field value ...]``: one stream entry with a field per value.

    ``encode_command`` of the same arguments, byte for byte, in a tenth of
    its time per value: the head is written once, and a value's length
    comes from a table.  Cluster mode appends every entry of a loop turn
    this way.
    """
    parts = [b"*%d\r\n$4\r\nXADD\r\n$%d\r\n%b\r\n$1\r\n*\r\n" % (3 + 2 * len(values), len(key), key)]
    label = b"$%d\r\n%b\r\n$" % (len(field), field)
    lengths = _LENGTHS
    for value in values:
        size = len(value)
        parts += (label, lengths[size] if size < _TABLED else b"%d\r\n" % size, value, b"\r\n")
    return b"".join(parts)


_TABLED = 1024
_LENGTHS = [b"%d\r\n" % size for size in range(_TABLED)]
"""A bulk string's length line, made once for the sizes of nearly every chat line."""


def _as_bytes(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):
        raise TypeError("a bool is not a Redis argument: send 0 or 1")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode()
    return bytes(arg)  # a bytearray, or a memoryview whatever its format
