"""One client connection as the reactor sees it: a socket, its buffers, its timers, its phase.

Theory of operation
-------------------
A ``Connection`` is also the connection id the protocol machine is given:
the machine only hashes and compares ids, and identity is exactly what we
want, so no table maps one to the other.

Lifecycle.  A connection is in exactly one ``Phase``, and every change of
phase is one of the methods in the table; nothing else assigns ``phase``::

    phase       what happened                                method          next
    ----------  -------------------------------------------  --------------  ---------
    HANDSHAKING the TLS handshake finished (reactor.tls)     handshake()     OPEN
    OPEN        the peer ended its stream (recv gave b"")    input_ended()   DRAINING
    OPEN or     the machine asked for a close after a        begin_flush()   FLUSHING
    DRAINING    flush, or the drained input is all handled
    FLUSHING    output flushed, and the peer may still send  linger()        LINGERING
    FLUSHING    output flushed, and the peer already ended   close()         CLOSED
    LINGERING   the peer's end of stream, or a read error    close()         CLOSED
    any         a reset, a slow consumer, the HTTP guard,    close()         CLOSED
                a deadline, shutdown

What each phase allows:

- HANDSHAKING (TLS only): the handshake's own reads and writes; the
  protocol machine does not know the connection yet.
- OPEN: read, handle input, send.  Reading pauses (the phase stays) while
  parsed input waits or unsent output is over ``--max-output``.
- DRAINING: the peer sent its last byte; the complete lines it sent are
  still handled and answered.
- FLUSHING: no more input is read or handled; queued output goes out until
  the flush deadline.
- LINGERING: our side is shut for writing; input is read and thrown away
  until the peer's end of stream, so closing cannot make the kernel send a
  reset that destroys the last line in flight.
- CLOSED: the socket is closed; output for it is dropped.

The phases after the handshake are ordered, so the loop asks one question
with one comparison:
``phase < FLUSHING`` (input is still handled), ``phase < LINGERING``
(output is still sent).  Close, linger and interest handling live here, as
they do in asyncio's transports; *when* to do them is the loop's decision
(``reactor.loop``, ``reactor.closing``).

Output.  Output is a list of byte pieces (``bytes`` or ``memoryview``)
waiting to be sent, oldest first.  ``send_queued`` makes one system call for
all of it: ``sendmsg`` with every piece where the platform has it (POSIX),
one joined ``send`` where it does not (Windows).  A partial send keeps the
unsent tail as a ``memoryview`` slice, so nothing is copied twice.  The
first send of a turn's output, on an empty queue, is the loop's
(``Reactor._send_to``): one loop for a broadcast's recipients and a single
reply alike, so there is one send path.

How much of the unsent output is *replies to the client's own commands*
decides whether it is a slow consumer (protocol.md, Limits), so each turn's
output is recorded as a chunk: where it ends in the connection's output
stream and how many reply bytes it holds.  A chunk's replies stop counting
once the whole chunk is sent.  That over-counts by at most the replies of
the one chunk being sent, and never lets credit build up: replies that were
sent are not counted again.
"""

from __future__ import annotations

import enum
import selectors
import socket
from collections import deque

from protocol import Event, LineFramer

from .ratelimit import TokenBucket
from .timers import CloseTimer, FloodTimer, IdleTimer

Piece = bytes | memoryview

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

_HAVE_SENDMSG = hasattr(socket.socket, "sendmsg")
_IOV_MAX = 512  # pieces per sendmsg; POSIX guarantees at least 16, Linux and macOS allow 1024


class PeerGone(Exception):
    """The peer reset the connection or the socket failed; close it now."""


class Phase(enum.IntEnum):
    """Where a connection stands in its life; ordered, see the module's table."""

    HANDSHAKING = 0
    OPEN = 1
    DRAINING = 2
    FLUSHING = 3
    LINGERING = 4
    CLOSED = 5


HANDSHAKING, OPEN, DRAINING, FLUSHING, LINGERING, CLOSED = Phase


class Connection:
    """A client socket and everything the reactor keeps for it."""

    tls = False  # a TLSConnection says True

    __slots__ = (
        "sock",
        "peer",
        "framer",
        "bucket",
        "queue",
        "queued",
        "written",
        "reply_bytes",
        "reply_chunks",
        "last_active",
        "idle_timer",
        "flood_timer",
        "close_timer",
        "mask",
        "phase",
        "known",
        "unhandled",
        "_selector",
    )

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        max_line: int,
        bucket: TokenBucket | None,
        now: float,
        selector: selectors.BaseSelector,
    ) -> None:
        self.sock = sock
        self.peer = peer  # "('1.2.3.4', 5678)": the address as the log shows it, formatted once
        self.framer = LineFramer(self, max_line)
        self.bucket = bucket  # None when flood control is off
        # Output not yet sent, oldest first; an empty tuple, not a list, while
        # there is none (nearly always): an idle connection carries no list.
        self.queue: list[Piece] | tuple[()] = ()
        self.queued = 0  # bytes in queue
        self.written = 0  # bytes handed to the kernel since the connection opened
        # Replies (to its own commands) among the unsent bytes, at most one
        # chunk's worth too many; reply_chunks holds (stream offset where a
        # chunk ends, its reply bytes) for unsent chunks that have replies.
        self.reply_bytes = 0
        self.reply_chunks: deque[tuple[int, int]] | None = None  # made when needed
        self.last_active = now  # when the last complete line arrived
        self.idle_timer: IdleTimer | None = None
        self.flood_timer: FloodTimer | None = None
        self.close_timer: CloseTimer | None = None
        self.mask = 0  # selector events registered; 0 = not registered
        self.phase = OPEN
        self.known = False  # the machine has been told it opened, and not yet that it ended
        # Parsed events left unhandled when its output passed the limit mid-turn.
        self.unhandled: list[Event] | None = None
        self._selector = selector

    def __repr__(self) -> str:
        return f"<Connection {self.peer!r} {self.phase.name.lower()}>"

    # -- lifecycle (the table in the module docstring) ------------------------

    def input_ended(self) -> None:
        """The peer will send no more: handle what it sent, then close."""
        self.framer.end_of_stream()
        if self.phase is OPEN:
            self.phase = DRAINING

    def begin_flush(self) -> bool:
        """Stop handling input and close once output is flushed; False if already closing."""
        if self.phase >= FLUSHING:
            return False
        self.phase = FLUSHING
        for timer in (self.idle_timer, self.flood_timer):
            if timer is not None:
                timer.cancel()
        return True

    def linger(self) -> bool:
        """Output is flushed: shut our side and wait for the peer's; False if that failed."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        self.phase = LINGERING
        return True

    def close(self) -> None:
        """Close the socket now; queued output is dropped."""
        self.phase = CLOSED
        for timer in (self.idle_timer, self.flood_timer, self.close_timer):
            if timer is not None:
                timer.cancel()
        if self.mask:
            self._selector.unregister(self.sock)
            self.mask = 0
        self.sock.close()
        self.queue = ()
        self.queued = 0
        self.unhandled = None

    @property
    def peer_ended(self) -> bool:
        """Whether the peer has ended its stream."""
        return self.framer.ended

    # -- interest ----------------------------------------------------------------

    @property
    def input_waiting(self) -> bool:
        """Whether input it sent waits to be handled (parsed or not)."""
        return self.unhandled is not None or self.framer.pending

    def update_interest(self, max_output: int) -> None:
        """Register exactly the events it can act on now."""
        phase = self.phase
        if phase is CLOSED:
            return
        mask = 0
        if phase is LINGERING or (
            phase is OPEN and not self.input_waiting and self.queued <= max_output
        ):
            mask = READ
        if self.queue:
            mask |= WRITE
        self._set_mask(mask)

    def _set_mask(self, mask: int) -> None:
        if mask == self.mask:
            return
        if not mask:
            self._selector.unregister(self.sock)
        elif not self.mask:
            self._selector.register(self.sock, mask, self)
        else:
            self._selector.modify(self.sock, mask, self)
        self.mask = mask

    # -- output ------------------------------------------------------------------

    @property
    def foreign_bytes(self) -> int:
        """Unsent bytes that are (at least) lines from other users."""
        return self.queued - min(self.reply_bytes, self.queued)

    def enqueue(self, pieces: list[Piece], reply_bytes: int) -> None:
        """Append output behind what is already waiting; sends nothing."""
        if self.queue:
            self.queue.extend(pieces)  # type: ignore[union-attr]
        else:
            self.queue = list(pieces)
        self.queued += sum(map(len, pieces))
        self._count_replies(reply_bytes)

    def keep_unsent(self, data: bytes, sent: int, reply_bytes: int) -> None:
        """Queue what the kernel did not take of ``data`` (sent on an empty queue)."""
        self.queue = [memoryview(data)[sent:] if sent else data]
        self.queued = len(data) - sent
        self._count_replies(reply_bytes)

    def peer_failed(self) -> bool:
        """Whether the socket holds an error no read has reported yet (a reset).

        For a connection the loop is not reading (flood control paces it),
        so its departure is not missed for as long as its backlog lasts.
        Linux and the BSDs (macOS) record an incoming reset there; Windows
        may not, and such a connection then ends once its backlog is handled.
        """
        try:
            return bool(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        except OSError:
            return True

    def _count_replies(self, reply_bytes: int) -> None:
        """Record that the chunk just queued (ending the queue) holds ``reply_bytes`` replies."""
        if not reply_bytes:
            return
        if self.reply_chunks is None:
            self.reply_chunks = deque()
        self.reply_chunks.append((self.written + self.queued, reply_bytes))
        self.reply_bytes += reply_bytes

    def send_queued(self) -> None:
        """One system call for as much of the queue as the kernel takes.

        Raises ``PeerGone`` if the connection is broken.
        """
        queue = self.queue
        assert isinstance(queue, list), "send_queued needs something queued"
        try:
            if len(queue) == 1:
                sent = self.sock.send(queue[0])
            elif _HAVE_SENDMSG:
                sent = self.sock.sendmsg(queue[:_IOV_MAX])
            else:
                joined = b"".join(queue)
                queue[:] = [joined]
                sent = self.sock.send(joined)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            raise PeerGone(error) from None
        self._consume(sent)

    def _consume(self, sent: int) -> None:
        """Drop ``sent`` bytes from the front of the queue."""
        queue = self.queue
        assert isinstance(queue, list)
        self.queued -= sent
        self.written += sent
        chunks = self.reply_chunks
        if chunks is not None:
            while chunks and chunks[0][0] <= self.written:
                self.reply_bytes -= chunks.popleft()[1]
            if not chunks:
                self.reply_chunks = None
        if not self.queued:
            self.queue = ()
            return
        done = 0
        while sent and sent >= len(queue[done]):
            sent -= len(queue[done])
            done += 1
        if done:
            del queue[:done]
        if sent:
            queue[0] = memoryview(queue[0])[sent:]
