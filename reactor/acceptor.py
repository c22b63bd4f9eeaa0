"""Accepting connections: the listening sockets, in bounded batches, never spinning.

Theory of operation
-------------------
Each listening socket is registered for reading; "readable" means the
kernel's listen queue holds connections.  ``accept_batch`` takes at most
``ACCEPTS_PER_TURN`` of them, fewer while the loop is behind (it passes a
smaller ``limit``), so a connection storm cannot keep one turn from ending:
the rest wait in the listen queue, where TCP keeps them.  It hands each new
socket to the loop, saying whether it came from a TLS listener (the loop
wraps those in TLS, ``reactor.tls``).

Three guards keep accepting from hurting anybody:

- *Out of file descriptors* (EMFILE, ENFILE, ...): the pending connection
  stays in the listen queue, so the listener stays readable, and a loop
  that simply tried again would spin at full CPU.  Accepting pauses instead
  (the listeners are unregistered) for ``ACCEPT_RETRY`` seconds, on a timer.
- *Handshakes behind* (TLS): while the loop has more TLS handshakes with
  input waiting than it got to this turn (``HANDSHAKES_BEHIND`` in the
  loop), it holds the TLS listeners, so a burst of thousands of TLS clients
  waits in the listen queue, where the kernel completes their TCP
  handshakes and their handshake deadline has not started.
- *The socket limit*: the machine refuses clients past ``--max-clients``
  with ``ERR server-full``, but each refusal still holds a socket until its
  line is flushed.  Past ``--max-clients`` plus a small margin, a new
  connection is refused here and now, with one ``send`` and a close, never
  becoming a ``Connection`` at all (on Windows ``select()`` fails past 512
  sockets).

A failed ``accept`` of any other kind (ECONNABORTED: the client gave up
while waiting) costs only that client.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
from collections.abc import Callable, Iterable

from protocol import wire

from .logs import TurnLog
from .stats import Counters
from .timers import CallbackTimer
from .timerwheel import TimerWheel

ACCEPTS_PER_TURN = 256
"""Connections accepted per turn from one listener; the rest wait in the listen queue."""
ACCEPT_RETRY = 0.5
"""How long accepting pauses when the process runs out of file descriptors."""

LISTENER = "listener"
"""The selector data of a listening socket (connections carry their ``Connection``)."""

_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ERR_SERVER_FULL = wire.error("server-full")


class Acceptor:
    """The listening sockets, and the guards on accepting."""

    def __init__(
        self,
        listeners: Iterable[socket.socket],
        selector: selectors.BaseSelector,
        wheel: TimerWheel,
        turn_log: TurnLog,
        counters: Counters,
        has_room: Callable[[], bool],
        open_connection: Callable[[socket.socket, tuple, bool], object],
        tls_listeners: Iterable[socket.socket] = (),
    ) -> None:
        self._tls_listeners = list(tls_listeners)
        self._listeners = list(listeners) + self._tls_listeners
        self._selector = selector
        self._wheel = wheel
        self._log = turn_log
        self._counters = counters
        self._has_room = has_room
        self._open_connection = open_connection
        self._resume_timer = CallbackTimer(self.start)
        self._accepting = False
        self._tls_held = False  # TLS listeners unwatched: the loop is behind on handshakes
        for listener in self._listeners:
            listener.setblocking(False)

    @property
    def accepting(self) -> bool:
        """Whether the listeners are watched now (not before start, nor while paused or closed)."""
        return self._accepting

    @property
    def addresses(self) -> list[tuple]:
        """The addresses listened on (empty once closed)."""
        return [listener.getsockname() for listener in self._listeners]

    def start(self) -> None:
        """Watch the listeners (again)."""
        if not self._accepting and self._listeners:
            for listener in self._listeners:
                if not (self._tls_held and listener in self._tls_listeners):
                    self._selector.register(listener, selectors.EVENT_READ, LISTENER)
            self._accepting = True

    def stop(self) -> None:
        """Stop watching the listeners; connections wait in the listen queues."""
        if self._accepting:
            for listener in self._listeners:
                if not (self._tls_held and listener in self._tls_listeners):
                    self._selector.unregister(listener)
            self._accepting = False

    def hold_tls(self) -> None:
        """Too many TLS handshakes at once: the next clients wait in the TLS listen queues."""
        if not self._tls_held:
            if self._accepting:
                for listener in self._tls_listeners:
                    self._selector.unregister(listener)
            self._tls_held = True

    def release_tls(self) -> None:
        """Handshakes finished: take TLS clients again."""
        if self._tls_held:
            self._tls_held = False
            if self._accepting:
                for listener in self._tls_listeners:
                    self._selector.register(listener, selectors.EVENT_READ, LISTENER)

    @property
    def tls_held(self) -> bool:
        return self._tls_held

    def close(self) -> None:
        """Stop for good: close the listening sockets."""
        self._resume_timer.cancel()
        self.stop()
        self._tls_held = False
        listeners, self._listeners, self._tls_listeners = self._listeners, [], []
        for listener in listeners:
            listener.close()

    def accept_batch(self, listener: socket.socket, now: float, limit: int = ACCEPTS_PER_TURN) -> None:
        """Accept what the listen queue holds, up to ``limit``."""
        for _ in range(limit):
            if not self._accepting:
                return
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS:
                    self._pause(error, now)
                    return
                # ECONNABORTED, EPROTO, ...: that client gave up; try the next one.
                self._log.log(logging.DEBUG, "accept failed: %s", error)
                continue
            peer = tuple(address[:2])
            if self._has_room():
                self._counters.accepted += 1
                self._open_connection(sock, peer, listener in self._tls_listeners)
                if self._tls_held:
                    return  # the loop is behind on handshakes: the rest wait in the queue
            else:
                self._refuse_at_once(sock, peer)

    def _pause(self, error: OSError, now: float) -> None:
        """Out of file descriptors: stop accepting for a while instead of spinning."""
        self._log.log(
            logging.WARNING,
            "cannot accept connections: %s; pausing accept for %.1f s",
            error.strerror or error,
            ACCEPT_RETRY,
        )
        self.stop()
        self._wheel.schedule(self._resume_timer, now + ACCEPT_RETRY)

    def _refuse_at_once(self, sock: socket.socket, peer: tuple) -> None:
        """Too many sockets still open (refused or closing ones): refuse without a Connection."""
        self._counters.refused += 1
        try:
            sock.setblocking(False)
            sock.send(_ERR_SERVER_FULL)
        except OSError:
            pass
        sock.close()
        self._log.log(logging.DEBUG, "refused %s at once: no room for another socket", peer)
