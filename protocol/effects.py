"""Effects: what the machine asks the outside world to do.

Effects are imperatives, small frozen values, returned in the order they must
happen.  Bytes are always complete wire data (every line already ends with
LF), encoded exactly once however many connections receive them.

Who a line is *for* matters to the reactor, so there are three kinds of send:

- ``Reply``: to a connection, caused by that connection's own input (``OK``,
  ``PONG``, ``USER ...``, ``ERR ...``, ``Goodbye!``, a Telnet refusal) or a
  notice about that connection (``ERR idle-timeout``).  A client is never
  evicted for not reading its own replies; the reactor stops reading its
  commands instead.
- ``Deliver``: one line from another user (a DM).
- ``Broadcast``: one line from another user to many (MSG, INFO).  It names its
  recipients with ``audience``, an immutable tuple the machine shares between
  all broadcasts until somebody logs in or out, so creating one costs O(1)
  however many users are in the room.  Consecutive broadcasts with the *same*
  audience object can be sent from one shared buffer; the reactor's outbox
  relies on that.

A client that lets ``Deliver`` and ``Broadcast`` output pile up is a slow
consumer and may be evicted; see docs/protocol.md.

``Close`` ends a connection, after its queued output is flushed unless the
reason says otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .events import ConnId
from .values import fast_init


class CloseReason(enum.Enum):
    """Why the machine closes a connection; the reactor logs it."""

    QUIT = "quit"
    IDLE_TIMEOUT = "idle-timeout"
    SERVER_FULL = "server-full"
    SHUTTING_DOWN = "server-shutting-down"
    CROSS_PROTOCOL = "cross-protocol"
    TLS_ON_PLAIN_PORT = "tls-on-plaintext-port"
    SERVER_UNAVAILABLE = "server-unavailable"  # cluster mode only: the node lost the cluster

    @property
    def flush_first(self) -> bool:
        """Whether queued output is sent before closing.

        A cross-protocol request (a browser talking HTTP to the chat port, a
        TLS client on the plaintext port) is cut off at once: nothing it
        sent runs and nothing is owed to it.
        """
        return self is not CloseReason.CROSS_PROTOCOL and self is not CloseReason.TLS_ON_PLAIN_PORT


@fast_init
@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``data`` to ``conn``, about its own input or its own connection."""

    conn: ConnId
    data: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``data``, a line from another user, to ``conn``."""

    conn: ConnId
    data: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``data`` to every connection in ``audience`` except ``exclude``."""

    data: bytes
    audience: tuple[ConnId, ...]
    exclude: ConnId | None = None

    def recipients(self) -> Iterator[ConnId]:
        """The connections that receive ``data``, in login order."""
        exclude = self.exclude
        return (conn for conn in self.audience if conn != exclude)


@fast_init
@dataclass(frozen=True, slots=True)
class Close:
    """End ``conn``'s connection (after flushing its output if ``reason.flush_first``)."""

    conn: ConnId
    reason: CloseReason


Effect = Reply | Deliver | Broadcast | Close


def output_by_connection(effects: Iterable[Effect]) -> dict[ConnId, bytes]:
    """The bytes each connection receives from ``effects``, in order.

    A reference rendering for tests, replays and fuzzers: it expands every
    broadcast recipient by recipient, which is exactly the per-recipient work
    the reactor avoids on its hot path.
    """
    chunks: dict[ConnId, list[bytes]] = {}
    for effect in effects:
        if isinstance(effect, (Reply, Deliver)):
            chunks.setdefault(effect.conn, []).append(effect.data)
        elif isinstance(effect, Broadcast):
            for conn in effect.recipients():
                chunks.setdefault(conn, []).append(effect.data)
    return {conn: b"".join(parts) for conn, parts in chunks.items()}
