"""One client connection as the reactor sees it: a socket, its buffers, its timers.

A ``Connection`` is also the connection id the protocol machine is given:
the machine only hashes and compares ids, and identity is exactly what we
want, so no table maps one to the other.

Output is a list of byte pieces (``bytes`` or ``memoryview``) waiting to be
sent, oldest first.  ``send_queued`` makes one system call for all of it:
``sendmsg`` with every piece where the platform has it (POSIX), one joined
``send`` where it does not (Windows).  A partial send keeps the unsent tail
as a ``memoryview`` slice, so nothing is copied twice.

How much of the unsent output is *replies to the client's own commands*
decides whether it is a slow consumer (protocol.md, Limits), so each turn's
output is recorded as a chunk: where it ends in the connection's output
stream and how many reply bytes it holds.  A chunk's replies stop counting
once the whole chunk is sent.  That over-counts by at most the replies of
the one chunk being sent, and never lets credit build up: replies that were
sent are not counted again.

The class holds state and the socket calls on it; deciding *when* to read,
write or close is the loop's job (``reactor.loop``).
"""

from __future__ import annotations

import socket
from collections import deque

from protocol import LineFramer

from .ratelimit import TokenBucket
from .timerwheel import Timer

Piece = bytes | memoryview

_HAVE_SENDMSG = hasattr(socket.socket, "sendmsg")
_IOV_MAX = 512  # pieces per sendmsg; POSIX guarantees at least 16, Linux and macOS allow 1024


class PeerGone(Exception):
    """The peer reset the connection or the socket failed; close it now."""


class Connection:
    """A client socket and everything the reactor keeps for it."""

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
        "timer",
        "mask",
        "eof",
        "closing",
        "lingering",
        "closed",
        "reported",
        "carried",
    )

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple,
        max_line: int,
        bucket: TokenBucket | None,
        now: float,
    ) -> None:
        self.sock = sock
        self.peer = peer  # (host, port), for the log
        self.framer = LineFramer(self, max_line)
        self.bucket = bucket  # None when flood control is off
        self.queue: list[Piece] = []  # output not yet sent, oldest first
        self.queued = 0  # bytes in queue
        self.written = 0  # bytes handed to the kernel since the connection opened
        # Replies (to its own commands) among the unsent bytes, at most one
        # chunk's worth too many; reply_chunks holds (stream offset where a
        # chunk ends, its reply bytes) for unsent chunks that have replies.
        self.reply_bytes = 0
        self.reply_chunks: deque[tuple[int, int]] | None = None  # made when needed
        self.last_active = now  # when the last complete line arrived
        self.idle_timer: Timer | None = None
        self.timer: Timer | None = None  # flood-control resume, or the close deadline
        self.mask = 0  # selector events registered; 0 = not registered
        self.eof = False  # the peer will send no more
        self.closing = False  # close once output is flushed (or the deadline passes)
        self.lingering = False  # our side is shut; discarding input until the peer's FIN
        self.closed = False
        self.reported = False  # the machine has been told ConnectionClosed
        self.carried = False  # parsed input waits for the next turn (work budget)

    def __repr__(self) -> str:
        return f"<Connection {self.peer!r}{' closed' if self.closed else ''}>"

    @property
    def foreign_bytes(self) -> int:
        """Unsent bytes that are (at least) lines from other users."""
        return self.queued - min(self.reply_bytes, self.queued)

    def enqueue(self, pieces: list[Piece], reply_bytes: int) -> None:
        """Append output behind what is already waiting; sends nothing."""
        self.queue.extend(pieces)
        self.queued += sum(map(len, pieces))
        self._count_replies(reply_bytes)

    def send_now(self, data: bytes, reply_bytes: int) -> None:
        """Send ``data`` on an empty queue; what the kernel does not take is queued.

        Raises ``PeerGone`` if the connection is broken.  ``Reactor._share_run``
        has this written out in its loop: change one, change both.
        """
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            raise PeerGone(error) from None
        self.written += sent
        if sent < len(data):
            self.keep_unsent(data, sent, reply_bytes)

    def keep_unsent(self, data: bytes, sent: int, reply_bytes: int) -> None:
        """Queue what the kernel did not take of ``data`` (sent on an empty queue)."""
        self.queue.append(memoryview(data)[sent:] if sent else data)
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
        self.queued -= sent
        self.written += sent
        chunks = self.reply_chunks
        if chunks is not None:
            while chunks and chunks[0][0] <= self.written:
                self.reply_bytes -= chunks.popleft()[1]
            if not chunks:
                self.reply_chunks = None
        if not self.queued:
            queue.clear()
            return
        done = 0
        while sent and sent >= len(queue[done]):
            sent -= len(queue[done])
            done += 1
        if done:
            del queue[:done]
        if sent:
            queue[0] = memoryview(queue[0])[sent:]
