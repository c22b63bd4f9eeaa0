"""Small harnesses that drive the chat protocol without sockets.

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

``MachineUnderTest`` and ``ModelUnderTest`` give the machine and the
independent model (tests/model.py) one face, event in, bytes per connection
and closes out, so that one table of examples (tests/examples.py) runs on
both; ``model_expects`` turns an event into the model's method call.
"""

from __future__ import annotations

from model import ChatModel, Expected

from protocol import (
    ChatMachine,
    Close,
    CloseReason,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsClosed,
    ConnectionsTimedOut,
    ConnId,
    Effect,
    Event,
    IdleTimedOut,
    LineReceived,
    LineTooLong,
    ShutdownStarted,
    TelnetOptionRequested,
    TLSHelloReceived,
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


# -- the machine and the model behind one face ------------------------------------

Outcome = tuple[dict[ConnId, bytes], dict[ConnId, str]]
"""What one event produced: the bytes each connection receives, and the
connections the server closes with their reasons (``CloseReason.value``)."""


def model_expects(model: ChatModel, event: Event) -> Expected:
    """Hand ``event`` to the model, which takes one method call per kind of event."""
    if isinstance(event, ConnectionOpened):
        return model.open(event.conn)
    if isinstance(event, LineReceived):
        return model.line(event.conn, event.line)
    if isinstance(event, LineTooLong):
        return model.too_long(event.conn)
    if isinstance(event, TelnetOptionRequested):
        return model.telnet(event.conn, event.command, event.option)
    if isinstance(event, IdleTimedOut):
        return model.idle(event.conn)
    if isinstance(event, ConnectionClosed):
        return model.closed(event.conn)
    if isinstance(event, ConnectionsClosed):
        return model.closed_together(list(event.conns))
    if isinstance(event, ConnectionsTimedOut):
        return model.idle_together(list(event.conns))
    if isinstance(event, ShutdownStarted):
        return model.shutdown()
    if isinstance(event, TLSHelloReceived):
        return model.tls_hello(event.conn)
    raise AssertionError(f"no model method for {event!r}")


class MachineUnderTest:
    """A ``ChatMachine``, answering each event with an ``Outcome``."""

    def __init__(self, max_clients: int | None = None) -> None:
        self.machine = ChatMachine(max_clients=max_clients)

    def handle(self, event: Event) -> Outcome:
        effects = self.machine.handle(event)
        return output_by_connection(effects), {e.conn: e.reason.value for e in effects if isinstance(e, Close)}

    def usernames(self) -> list[str]:
        return self.machine.usernames()


class ModelUnderTest:
    """The reference model, answering each event with an ``Outcome``."""

    def __init__(self, max_clients: int | None = None) -> None:
        self.model = ChatModel(max_clients=max_clients)

    def handle(self, event: Event) -> Outcome:
        expected = model_expects(self.model, event)
        return expected.output(), dict(expected.closes)

    def usernames(self) -> list[str]:
        return self.model.usernames()
