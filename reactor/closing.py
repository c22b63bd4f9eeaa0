"""Ending connections: the flush deadline, the lingering close, and telling the machine once.

Theory of operation
-------------------
A connection ends in one of three ways (``reactor.connection`` has the
phases):

- *at once* (``close_now``): a reset, a slow consumer, the HTTP guard, a
  passed deadline.  The socket is closed; what was queued is dropped.
- *after a flush* (``close_after_flush``): QUIT, an idle timeout, server
  full, shutdown, and a peer that ended its stream once its lines are
  answered.  The last line must arrive, so the connection stops handling
  input and waits until its queue is empty, bounded by ``FLUSH_TIMEOUT``
  (a ``CloseTimer``), or by the shutdown deadline if that comes first.
- then, once flushed, ``finish_flushed`` closes it, *lingering* first
  when the peer may still send: closing a socket with unread input makes
  the kernel answer with a reset, which can destroy the last line still in
  flight to the client.  So our side is shut for writing and the peer's
  input is read and dropped until its end of stream, or the deadline.

The machine hears of every connection's end exactly once
(``ConnectionClosed``), whichever way it ended, even when the machine asked
for the close itself.  Ends are collected during a turn (``report``) and
handed to the machine together at the flush (``take_ended``), as one
``ConnectionsClosed`` when there are several: the leavers of one turn are
one departure, so a mass disconnect of N users costs N INFO lines per
survivor, not N * N / 2 lines, most of them to sockets already gone.
"""

from __future__ import annotations

from collections.abc import Callable

from .connection import CLOSED, FLUSHING, Connection
from .logs import TurnLog
from .timers import CloseTimer
from .timerwheel import TimerWheel

FLUSH_TIMEOUT = 1.0
"""How long a closing connection may take to flush its last lines and linger."""


class Closer:
    """Connections on their way out, and the ends the machine has not heard of."""

    def __init__(
        self,
        wheel: TimerWheel,
        turn_log: TurnLog,
        forget: Callable[[Connection], None],
        max_output: int,
    ) -> None:
        self._wheel = wheel
        self._max_output = max_output
        self._log = turn_log
        self._forget = forget
        # Read by the loop every turn, so plain attributes, not properties:
        self.flushing: list[Connection] = []  # to close once their output is flushed
        self.ended: list[Connection] = []  # gone, not yet reported to the machine

    def close_now(self, conn: Connection) -> None:
        """Close ``conn`` at once; its end is reported at the flush."""
        if conn.phase is CLOSED:
            return
        conn.close()
        self._forget(conn)
        self._log.note(f"Connection closed: {conn.peer}")
        self.report(conn)

    def close_after_flush(self, conn: Connection, now: float, stop_at: float | None) -> None:
        """Stop handling ``conn``'s input; close it once its output is out, or at the deadline."""
        if not conn.begin_flush():
            return
        deadline = now + FLUSH_TIMEOUT
        if stop_at is not None:
            deadline = min(deadline, stop_at)
        if conn.close_timer is None:
            conn.close_timer = CloseTimer(conn)
        self._wheel.schedule(conn.close_timer, deadline)
        self.flushing.append(conn)
        if conn.queue:
            # Output waits for the kernel: stop reading until it is out.  With
            # nothing queued the flush of this very turn sends the last line
            # and lingers, which reads again: two selector calls saved a close.
            conn.update_interest(self._max_output)

    def report(self, conn: Connection) -> None:
        """Queue ``conn``'s end for the machine (once, if it knew it), to be taken at the flush."""
        if conn.known:
            conn.known = False
            self.ended.append(conn)

    def take_ended(self) -> list[Connection]:
        """The connections that ended since the last call, each exactly once."""
        ended, self.ended = self.ended, []
        return ended

    def finish_flushed(self) -> None:
        """Close, or linger, every flushing connection whose output is all sent."""
        flushing, self.flushing = self.flushing, []
        for conn in flushing:
            if conn.phase is not FLUSHING:
                continue  # closed meanwhile
            if conn.queue:
                self.flushing.append(conn)  # the kernel has not taken it all yet
            elif conn.peer_ended or not conn.linger():
                self.close_now(conn)
            else:
                conn.update_interest(self._max_output)  # read until the peer's end of stream
