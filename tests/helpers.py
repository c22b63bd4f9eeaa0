"""A small harness that drives one ``ChatMachine`` without sockets.

``Chat`` plays the part of the reactor: it feeds events to the machine and
keeps, per connection, the bytes that connection would have received (every
``Reply``, ``Deliver`` and ``Broadcast`` recipient, rendered by
``protocol.output_by_connection``) and the closes the machine asked for.
Tests then read what happened since they last looked::

    chat = Chat()
    chat.open("a", "b")
    chat.send("a", b"LOGIN alice")
    assert chat.output("a") == b"OK\\n"
    assert chat.output("b") == b""

The accessors *consume*: ``output(conn)`` and ``closed()`` return what
accumulated since their previous call and forget it, so every assertion is
about the last few steps only.  ``event`` also returns the raw effects of
that one event, for the rare test that cares about their kinds.

Like a real caller, the harness never reports ``ConnectionClosed`` on its
own when the machine asks for a close: call ``close(conn)`` for that, so a
test can also look at what happens in between.
"""

from __future__ import annotations

from protocol import (
    ChatMachine,
    Close,
    CloseReason,
    ConnectionClosed,
    ConnectionOpened,
    ConnId,
    Effect,
    LineReceived,
    output_by_connection,
)


class Chat:
    """One ``ChatMachine`` plus what each connection has received so far."""

    def __init__(self, **machine_options) -> None:
        self.machine = ChatMachine(**machine_options)
        self._received: dict[ConnId, bytes] = {}
        self._closes: list[tuple[ConnId, CloseReason]] = []

    # -- feeding the machine ------------------------------------------------

    def event(self, ev) -> list[Effect]:
        """Hand ``ev`` to the machine, record its effects and return them."""
        effects = self.machine.handle(ev)
        for conn, data in output_by_connection(effects).items():
            self._received[conn] = self._received.get(conn, b"") + data
        self._closes += [(e.conn, e.reason) for e in effects if isinstance(e, Close)]
        return effects

    def open(self, *conns: ConnId) -> None:
        """Report that each of ``conns`` connected, in order."""
        for conn in conns:
            self.event(ConnectionOpened(conn))

    def send(self, conn: ConnId, line: bytes) -> list[Effect]:
        """Report one complete line from ``conn`` (raw bytes, without the LF)."""
        return self.event(LineReceived(conn, line))

    def close(self, conn: ConnId) -> list[Effect]:
        """Report that ``conn``'s connection is gone."""
        return self.event(ConnectionClosed(conn))

    def login(self, conn: ConnId, name: str) -> None:
        """Open ``conn`` and log it in as ``name``; the ``OK`` is consumed."""
        self.open(conn)
        self.send(conn, b"LOGIN " + name.encode())
        assert self.output(conn) == b"OK\n"

    # -- reading what happened ---------------------------------------------

    def output(self, conn: ConnId) -> bytes:
        """The bytes ``conn`` received since the last call for it."""
        return self._received.pop(conn, b"")

    def outputs(self) -> dict[ConnId, bytes]:
        """Every connection's non-empty output since the last look, consumed."""
        received, self._received = self._received, {}
        return {conn: data for conn, data in received.items() if data}

    def closed(self) -> list[tuple[ConnId, CloseReason]]:
        """The closes the machine requested since the last call, in order."""
        closes, self._closes = self._closes, []
        return closes
