"""A ``Reactor`` driven by hand: a clock the test moves, turns the test runs.

The loop's time-driven behaviour (idle timeouts, flood control, flush and
shutdown deadlines, the pause on EMFILE) is about *when* things happen, and
testing it with real sleeps is slow and flaky.  Here nothing sleeps:

- ``FakeClock`` is the reactor's clock; only the test moves it;
- ``NeverSleeps`` is the reactor's selector, and polls (``select(0)``)
  whatever timeout the loop asks for, so a turn never waits for real time;
- clients are ``socket.socketpair()`` ends handed to ``Reactor.adopt``: real
  sockets, so reads, writes, end of stream and resets are the kernel's,
  and what one end writes the other can read at once, in the same thread.

A test moves the clock and runs turns::

    loop = LoopHarness(idle_timeout=60)
    ann = loop.connect()
    ann.say("LOGIN ann")
    loop.turn()
    assert ann.lines() == ["OK"]
    loop.advance(60)                  # one turn at the new time
    assert ann.lines() == ["ERR idle-timeout"]
"""

from __future__ import annotations

import dataclasses
import selectors
import socket

from reactor.config import Config
from reactor.connection import Connection
from reactor.loop import Reactor

MAX_TURNS = 10_000
"""Every loop in a harness test is bounded; this is the bound on turns."""


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a monotonic clock never goes back"
        self.now += seconds


class NeverSleeps(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's selector, but every select is a poll: time is the test's."""

    def select(self, timeout: float | None = None) -> list:
        return super().select(0)


class Peer:
    """The client end of a socket pair: what a test types and what it reads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._buffer = b""
        self.ended = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def say(self, *lines: str) -> None:
        self.send("".join(line + "\n" for line in lines).encode())

    def read(self) -> bytes:
        """Everything the server has sent so far (never waits); notes its end of stream."""
        data = self._buffer
        self._buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                return data
            except ConnectionResetError:
                self.ended = True
                return data
            if not chunk:
                self.ended = True
                return data
            data += chunk

    def lines(self) -> list[str]:
        """The complete lines received so far; a partial line waits for the next call."""
        data = self.read()
        *complete, self._buffer = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]

    def close(self) -> None:
        self.sock.close()


class LoopHarness:
    """One reactor, a hand-moved clock, and clients on socket pairs."""

    def __init__(self, listener: socket.socket | None = None, **settings: object) -> None:
        self.clock = FakeClock()
        self.start = self.clock.now
        self.config = dataclasses.replace(Config(host="127.0.0.1", port=0), **settings)
        self.listener = listener if listener is not None else socket.create_server(("127.0.0.1", 0))
        self.reactor = Reactor([self.listener], self.config, clock=self.clock, selector=NeverSleeps())
        self._peers: list[Peer] = []
        self.server_side: dict[Peer, Connection] = {}

    def connect(self) -> Peer:
        """A new client, adopted by the reactor (the machine hears of it at once)."""
        server_end, client_end = socket.socketpair()
        peer = Peer(client_end)
        self._peers.append(peer)
        conn = self.reactor.adopt(server_end, ("pair", len(self._peers)))
        assert conn is not None
        self.server_side[peer] = conn
        return peer

    def login(self, name: str) -> Peer:
        peer = self.connect()
        peer.say(f"LOGIN {name}")
        self.turn()
        assert peer.lines() == ["OK"], name
        return peer

    def turn(self, count: int = 1) -> None:
        """Run ``count`` turns without moving the clock."""
        for _ in range(count):
            self.reactor.run_once()

    def advance(self, seconds: float, turns: int = 1) -> None:
        """Move the clock by ``seconds``, then run ``turns`` turns."""
        self.clock.advance(seconds)
        self.turn(turns)

    def advance_to(self, when: float, turns: int = 1) -> None:
        """Move the clock to ``when`` (seconds since the reactor started), then run turns."""
        self.clock.now = max(self.clock.now, self.start + when)
        self.turn(turns)

    @property
    def elapsed(self) -> float:
        return self.clock.now - self.start

    def close(self) -> None:
        self.reactor.close()
        for peer in self._peers:
            peer.close()
