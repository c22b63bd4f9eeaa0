"""The event loop: one thread, one selector, every socket.

Theory of operation
-------------------
A chat server spends its life waiting.  Instead of a thread per client
blocked in ``recv``, one thread asks the operating system, through
``selectors``, "which of these sockets can I read or write without
blocking?", does a bounded amount of work for each, and asks again.  One
pass is a *turn*, and ``Reactor.run_once`` is exactly one turn:

1. **Sleep** in ``select`` until a socket is ready or the next timer is due.
   The timeout comes from the timer wheel (``reactor.timerwheel``), so an
   idle server with 10,000 connections sleeps until a deadline, not a poll
   interval; it is 0 when a connection still has parsed input waiting.
2. **Read.**  For each readable socket: one ``recv`` of at most
   ``READ_SIZE`` bytes, fed to that connection's ``LineFramer``, which cuts
   lines within two budgets: flood-control tokens (``reactor.ratelimit``)
   and ``WORK_PER_TURN`` lines, so one fast sender cannot starve the rest.
   Each line event goes to the protocol machine (``protocol.ChatMachine``),
   and each effect it returns is filed in the ``Outbox`` (``reactor.outbox``);
   nothing is sent yet.  New connections are accepted here too, a bounded
   batch per turn.
3. **Time.**  The wheel hands back the timers that came due: idle
   deadlines (re-armed lazily: a line only stamps ``last_active``, and an
   expired timer whose connection has been active since is simply moved to
   the new deadline), flood-control resumptions, close deadlines.
4. **Flush.**  The outbox hands each connection all of its output for the
   turn at once, and each connection gets one ``send``.  A broadcast's bytes
   are joined once and the same object goes to every ordinary recipient.  A
   connection whose kernel buffer is full keeps the rest in its queue and
   gets write interest; the selector says when it can take more.

Backpressure.  Reading from a connection stops (its read interest is
dropped) while its framer holds unparsed input, while its unsent output is
over ``--max-output``, once it reached end of stream, and while it closes.
So memory per connection is bounded by one read, one line and its output
limit, and a client that floods or never reads is slowed by TCP itself.
Lines from other users that would push a connection's unsent output past
``--max-output`` make it a *slow consumer*: it is closed at once and the
others are told it left; nobody ever waits for it.

Closing.  A connection closes in one of three ways: at once (a reset, a
slow consumer, an HTTP request); after its output is flushed (QUIT, an idle
timeout, server full, shutdown: the last line must arrive), bounded by a
1 s deadline; or when the peer ends its stream (its remaining complete
lines are answered first).  Before closing with output just sent, the
socket is shut for writing and the peer's remaining input is drained until
its FIN or the deadline (a *lingering close*): closing a socket with unread
input makes the kernel send RST, which can destroy the last line in
flight.  The machine hears of every connection's end exactly once, at the
flush of the turn it ended in; several ends in one turn are reported
together (``ConnectionsClosed``), so a mass disconnect does not make the
leavers' INFO lines to each other cost N * N / 2.

Errors.  ``EAGAIN`` and ``EINTR`` mean "not now"; ``ECONNRESET``, ``EPIPE``
and friends mean the peer is gone, and only that connection closes.  Python
ignores SIGPIPE, so a write to a closed socket raises instead of killing
the process.  Running out of file descriptors on ``accept`` pauses
accepting for ``ACCEPT_RETRY`` seconds instead of spinning.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import sys
import time
from collections.abc import Callable, Iterable

from protocol import (
    Broadcast,
    ChatMachine,
    Close,
    CloseReason,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsClosed,
    Deliver,
    IdleTimedOut,
    Reply,
    ShutdownStarted,
    wire,
)

from .config import Config
from .connection import Connection, PeerGone
from .outbox import Outbox
from .ratelimit import UNLIMITED, TokenBucket
from .stats import Counters, Stats
from .timerwheel import Timer, TimerWheel

log = logging.getLogger("chat")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

READ_SIZE = 65536
"""Bytes read from one socket per turn."""
WORK_PER_TURN = 1024
"""Lines (and Telnet commands) handled for one connection per turn."""
ACCEPTS_PER_TURN = 256
"""Connections accepted per turn; the rest wait in the listen queue."""
FLUSH_TIMEOUT = 1.0
"""How long a closing connection may take to flush its last lines."""
SHUTDOWN_TIMEOUT = 2.0
"""How long the server flushes at shutdown before closing everything."""
ACCEPT_RETRY = 0.5
"""How long accepting pauses when the process runs out of file descriptors."""
TICK = 0.1
"""The timer wheel's resolution: timers fire at most this late."""
SOCKET_MARGIN = 16
"""Client sockets allowed beyond ``--max-clients`` (refusals still flushing, closes lingering)."""
MAX_SLEEP: float | None = 1.0 if sys.platform == "win32" else None
"""On Windows a signal does not interrupt ``select``: wake at least once a second."""

_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ERR_SERVER_FULL = wire.error("server-full")

_LISTENER = "listener"
_WAKEUP = "wakeup"


class Reactor:
    """Serves the chat protocol on a listening socket until shut down.

    ``clock`` is the monotonic clock (tests pass a fake one); ``wakeup`` is
    the read end of a socket pair whose write end is the signal wakeup fd, so
    a signal interrupts ``select`` at once; ``after_turn`` runs at the end of
    every turn, before the loop sleeps (the daemon writes its log lines then);
    ``selector`` is the readiness API, the platform's best by default (tests
    pass each kind the platform has, so Windows's ``select`` is checked on
    Linux too).
    """

    def __init__(
        self,
        listeners: Iterable[socket.socket],
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        wakeup: socket.socket | None = None,
        after_turn: Callable[[], None] | None = None,
        selector: selectors.BaseSelector | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._now = clock()
        self._machine = ChatMachine(max_clients=config.max_clients)
        self._selector = selector if selector is not None else selectors.DefaultSelector()
        self._wheel = TimerWheel(self._now, tick=TICK)
        self._outbox = Outbox()
        self._listeners: list[socket.socket] = list(listeners)
        self._accepting = False
        self._accept_timer = Timer((self._resume_accepting, None))
        self._wakeup = wakeup
        self._after_turn = after_turn
        self._notes: list[str] = []  # connection log lines, written once per turn
        self._connections: set = set()
        self._carried: list[Connection] = []  # parsed input left by the work budget
        self._closing: list[Connection] = []  # to close once their output is flushed
        self._writable: list[Connection] = []
        self._ended: list[Connection] = []  # gone, not yet reported to the machine
        self._shutdown_requested = False
        self._stop_at: float | None = None
        for listener in self._listeners:
            listener.setblocking(False)
        self._start_accepting()
        if wakeup is not None:
            wakeup.setblocking(False)
            self._selector.register(wakeup, READ, _WAKEUP)
        self._idle_timeout = config.idle_timeout
        self._max_output = config.max_output
        self._socket_limit = config.max_clients + SOCKET_MARGIN
        self._started = self._now
        self.counters = Counters()
        self._bytes_out_closed = 0

    # -- the interface -----------------------------------------------------

    def request_shutdown(self) -> None:
        """Ask the loop to shut down; safe to call from a signal handler.

        Asking again once shutdown has begun stops waiting for slow clients.
        """
        if self._stop_at is not None:
            self._stop_at = min(self._stop_at, self._clock())
        self._shutdown_requested = True

    @property
    def finished(self) -> bool:
        """Whether shutdown is complete: every connection closed or out of time."""
        return self._stop_at is not None and not self._connections

    def call_every(self, interval: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` every ``interval`` seconds of the loop's clock, from the loop.

        For the daemon's periodic chores (statistics, the systemd watchdog):
        they run between turns' work like any timer, never concurrently.
        """
        if not interval > 0:
            raise ValueError("interval must be > 0")

        def fire(_unused: object, timer: Timer) -> None:
            self._wheel.schedule(timer, self._now + interval)
            callback()

        self._wheel.schedule(Timer((fire, None)), self._now + interval)

    def stats(self) -> Stats:
        """A snapshot of the counters and of what is open now."""
        c = self.counters
        return Stats(
            users=self._machine.user_count,
            connections=len(self._connections),
            accepted=c.accepted,
            refused=c.refused,
            lines_in=c.lines_in,
            lines_out=c.lines_out,
            bytes_in=c.bytes_in,
            bytes_out=self._bytes_out_closed + sum(conn.written for conn in self._connections),
            evictions=c.evictions,
            flood_pauses=c.flood_pauses,
            uptime=self._clock() - self._started,
        )

    @property
    def addresses(self) -> list[tuple]:
        """The addresses the listening sockets are bound to (empty once they are closed)."""
        return [listener.getsockname() for listener in self._listeners]

    def serve_forever(self) -> None:
        """Run turns until a requested shutdown is complete."""
        while not self.finished:
            self.run_once()

    def run_once(self) -> None:
        """One turn: sleep, read, time, flush."""
        timers_due = self._wheel.next_wakeup()
        ready = self._selector.select(self._select_timeout(timers_due))
        self._now = now = self._clock()
        carried = None  # connections whose parsed input waited for this turn
        if self._carried:
            carried, self._carried = self._carried, []
        for key, mask in ready:
            target = key.data
            if target is _LISTENER:
                self._accept_batch(key.fileobj)
            elif target is _WAKEUP:
                self._drain_wakeup()
            elif not target.closed:  # an earlier event this turn may have closed it
                if mask & WRITE:
                    self._writable.append(target)
                if mask & READ:
                    self._readable(target)
        if carried:
            self._continue(carried)
        if self._shutdown_requested and self._stop_at is None:
            self._begin_shutdown()
        if timers_due is not None and now >= timers_due:
            # Timers armed during this turn are all in the future: not due yet.
            for timer in self._wheel.advance(now):
                callback, conn = timer.payload
                callback(conn, timer)
        self._flush()
        if self._stop_at is not None and now >= self._stop_at:
            for conn in list(self._connections):
                self._close_now(conn)
        if self._notes:
            self._write_notes()
        if self._after_turn is not None:
            self._after_turn()

    def close(self) -> None:
        """Release every socket (after ``serve_forever``, or to abandon the loop)."""
        for conn in list(self._connections):
            self._close_now(conn)
        self._report_ended()
        if self._notes:
            self._write_notes()
        self._stop_listening()
        self._selector.close()

    def _write_notes(self) -> None:
        """Log the turn's connections and disconnections as one record.

        Two lines per connection sit on the accept path; one record per turn
        instead of one per line keeps the logging machinery off it.  The
        bytes on stderr are the same, one line each.
        """
        notes, self._notes = self._notes, []
        log.info("%s", "\n".join(notes))

    def _log(self, level: int, message: str, *args: object, exc_info: bool = False) -> None:
        """Any other log record, after the connection lines it may refer to."""
        if not log.isEnabledFor(level):
            return
        if self._notes:
            self._write_notes()
        log.log(level, message, *args, exc_info=exc_info)

    def _select_timeout(self, timers_due: float | None) -> float | None:
        """Sleep until the next timer (or the shutdown deadline); not at all if work waits."""
        if self._carried or (self._shutdown_requested and self._stop_at is None):
            return 0.0
        timeout = None if timers_due is None else max(0.0, timers_due - self._clock())
        if self._stop_at is not None:
            until_stop = max(0.0, self._stop_at - self._clock())
            timeout = until_stop if timeout is None else min(timeout, until_stop)
        if MAX_SLEEP is not None:
            timeout = MAX_SLEEP if timeout is None else min(timeout, MAX_SLEEP)
        return timeout

    # -- accepting ---------------------------------------------------------

    def _start_accepting(self) -> None:
        if not self._accepting and self._listeners:
            for listener in self._listeners:
                self._selector.register(listener, READ, _LISTENER)
            self._accepting = True

    def _accept_batch(self, listener: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            if not self._accepting:
                return
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS:
                    self._pause_accepting(error)
                    return
                # ECONNABORTED, EPROTO, ...: that client gave up; try the next one.
                self._log(logging.DEBUG, "accept failed: %s", error)
                continue
            self._open(sock, address)

    def _pause_accepting(self, error: OSError) -> None:
        """Out of file descriptors: stop accepting for a while instead of spinning."""
        self._log(
            logging.WARNING,
            "cannot accept connections: %s; pausing accept for %.1f s",
            error.strerror or error,
            ACCEPT_RETRY,
        )
        self._stop_accepting()
        self._wheel.schedule(self._accept_timer, self._now + ACCEPT_RETRY)

    def _resume_accepting(self, _unused: object, timer: Timer) -> None:
        self._start_accepting()

    def _stop_accepting(self) -> None:
        if self._accepting:
            for listener in self._listeners:
                self._selector.unregister(listener)
            self._accepting = False

    def _stop_listening(self) -> None:
        self._wheel.cancel(self._accept_timer)
        self._stop_accepting()
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()

    def _open(self, sock: socket.socket, address) -> None:
        if len(self._connections) >= self._socket_limit:
            self._refuse_at_once(sock, address)
            return
        sock.setblocking(False)
        try:
            # Without it, Nagle's algorithm and delayed ACKs stall a client
            # that both sends and receives by about 40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        config = self._config
        now = self._now
        bucket = TokenBucket(config.rate, config.burst, now) if config.rate else None
        conn = Connection(sock, tuple(address[:2]), config.max_line, bucket, now)
        self.counters.accepted += 1
        self._connections.add(conn)
        self._selector.register(sock, READ, conn)
        conn.mask = READ
        self._notes.append(f"New connection from {conn.peer}")
        if self._idle_timeout:
            conn.idle_timer = Timer((self._idle_timer_fired, conn))
            self._wheel.schedule(conn.idle_timer, now + self._idle_timeout)
        self._apply(self._machine.handle(ConnectionOpened(conn)))

    def _refuse_at_once(self, sock: socket.socket, address) -> None:
        """Too many sockets still open (refused or closing ones): refuse without a Connection.

        The machine refuses clients past ``--max-clients``, but each refusal
        holds a socket until its last line is flushed.  This guard keeps the
        total under ``--max-clients`` plus a margin, whatever arrives (on
        Windows, ``select()`` fails past 512 sockets).
        """
        self.counters.refused += 1
        try:
            sock.setblocking(False)
            sock.send(_ERR_SERVER_FULL)
        except OSError:
            pass
        sock.close()
        self._log(
            logging.DEBUG, "refused %s at once: %d sockets open", tuple(address[:2]), len(self._connections)
        )

    def _drain_wakeup(self) -> None:
        try:
            while self._wakeup.recv(512):
                pass
        except OSError:
            pass

    # -- reading -----------------------------------------------------------

    def _readable(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_now(conn)
            return
        if conn.lingering:
            if not data:
                self._close_now(conn)
            return
        if data:
            self.counters.bytes_in += len(data)
            conn.framer.feed(data)
        else:
            conn.eof = True
            conn.framer.end_of_stream()
        self._pump(conn)

    def _pump(self, conn: Connection) -> None:
        """Handle the lines waiting in ``conn``'s framer, within its budgets."""
        if conn.closing or conn.closed:
            return
        now = self._now
        bucket = conn.bucket
        tokens = UNLIMITED if bucket is None else bucket.available(now)
        taken = conn.framer.take(tokens, WORK_PER_TURN)
        if bucket is not None and taken.tokens:
            bucket.spend(taken.tokens)
        if taken.lines:
            conn.last_active = now
            self.counters.lines_in += taken.lines
        handle = self._machine.handle
        apply = self._apply
        try:
            for event in taken.events:
                apply(handle(event))
                if conn.closing or conn.closed:
                    return  # nothing it sent after this may run
        except Exception:  # a bug, never a client's input: cost that client only
            self._log(logging.ERROR, "internal error while serving %s; closing it", conn.peer, exc_info=True)
            self._close_now(conn)
            return
        if conn.framer.pending:
            if bucket is not None and bucket.available(now) < 1:
                self._wait_for_tokens(conn, bucket)
            else:
                self._carry(conn)
        elif conn.eof:
            self._peer_finished(conn)
            return
        elif conn.mask == READ:
            # All input handled, nothing queued (WRITE would be registered):
            # READ is what _update_interest would choose.  The usual case.
            return
        self._update_interest(conn)

    def _carry(self, conn: Connection) -> None:
        """Come back to ``conn``'s parsed input next turn, after the others had theirs."""
        if not conn.carried:
            conn.carried = True
            self._carried.append(conn)

    def _continue(self, carried: list[Connection]) -> None:
        for conn in carried:
            conn.carried = False
            if conn.closed:
                continue
            if conn.queued <= self._max_output:
                self._pump(conn)
            else:
                self._update_interest(conn)  # it goes on once its output drains

    def _wait_for_tokens(self, conn: Connection, bucket: TokenBucket) -> None:
        self.counters.flood_pauses += 1
        if conn.timer is None:
            conn.timer = Timer((self._tokens_refilled, conn))
        self._wheel.schedule(conn.timer, bucket.next_token_at())

    def _tokens_refilled(self, conn: Connection, timer: Timer) -> None:
        if conn.closed:
            return
        if conn.peer_failed():  # it reset while paused: its backlog is nobody's now
            self._close_now(conn)
        elif conn.queued <= self._max_output:
            self._pump(conn)

    def _peer_finished(self, conn: Connection) -> None:
        """End of stream and every complete line handled: tell the others, then close."""
        self._report_closed(conn)
        self._close_after_flush(conn)

    # -- effects -----------------------------------------------------------

    def _apply(self, effects: list) -> None:
        outbox = self._outbox
        counters = self.counters
        for effect in effects:
            kind = type(effect)
            if kind is Broadcast:
                outbox.broadcast(effect.data, effect.audience, effect.exclude)
                counters.lines_out += len(effect.audience) - (effect.exclude is not None)
            elif kind is Reply:
                outbox.reply(effect.conn, effect.data)
                counters.lines_out += effect.data.count(b"\n")
            elif kind is Deliver:
                outbox.deliver(effect.conn, effect.data)
                counters.lines_out += 1
            elif kind is Close:
                self._close_requested(effect.conn, effect.reason)
            else:
                raise TypeError(f"unknown effect {effect!r}")

    def _close_requested(self, conn: Connection, reason: CloseReason) -> None:
        if conn.closed:
            return
        self._log(logging.DEBUG, "closing %s: %s", conn.peer, reason.value)
        if reason is CloseReason.SERVER_FULL:
            self.counters.refused += 1
        elif reason is CloseReason.CROSS_PROTOCOL:
            self._log(
                logging.WARNING,
                "closing %s: it sent an HTTP request to the chat port (cross-protocol guard)",
                conn.peer,
            )
        if reason.flush_first:
            self._close_after_flush(conn)
        else:
            self._close_now(conn)

    # -- writing -----------------------------------------------------------

    def _flush(self) -> None:
        """Hand out the turn's output, one send per connection, then finish closes.

        Closing a connection here can make the machine broadcast (INFO), so
        it repeats until nothing new was filed.
        """
        outbox = self._outbox
        while True:
            if self._ended:
                self._report_ended()
            if outbox:
                outbox.drain(self._deliver, self._share_run)
            if self._writable:
                writable, self._writable = self._writable, []
                for conn in writable:
                    if not conn.closed and conn.queue:
                        self._send_queued(conn)
            if self._closing:
                closing, self._closing = self._closing, []
                for conn in closing:
                    if conn.closed:
                        continue
                    if conn.queue:
                        self._closing.append(conn)
                    elif not conn.lingering:
                        self._linger_or_close(conn)
            if not outbox and not self._ended:
                return

    def _deliver(self, conn: Connection, pieces: list, reply_bytes: int) -> None:
        """The outbox's hand-over: queue or send ``conn``'s output for this turn."""
        if conn.closed or conn.lingering:
            return  # a lingering socket is shut for writing
        if conn.queue:
            conn.enqueue(pieces, reply_bytes)  # it is waiting for the kernel already
        else:
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            try:
                conn.send_now(data, reply_bytes)
            except PeerGone:
                self._close_now(conn)
                return
        if conn.queued > self._max_output:
            self._over_output_limit(conn, foreign=reply_bytes < sum(map(len, pieces)))
        if not conn.closed and bool(conn.queue) != bool(conn.mask & WRITE):
            self._update_interest(conn)

    def _share_run(self, audience: tuple, payload: bytes, skip) -> None:
        """The hot path: a run's bytes, the same object, to every ordinary member.

        One loop here instead of a call per recipient: a member with an
        empty queue costs one ``send`` and a few attribute tests.  A member
        with output already waiting, or closed, or lingering goes the general
        way, through ``_deliver``; a send the kernel cuts short is queued
        here.  The send itself is ``Connection.send_now`` written out, to
        save a call per recipient: change one, change both.
        """
        size = len(payload)
        for conn in audience:
            if conn in skip:
                continue
            if conn.queue or conn.closed or conn.lingering:
                self._deliver(conn, [payload], 0)
                continue
            try:
                sent = conn.sock.send(payload)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close_now(conn)
                continue
            conn.written += sent
            if sent < size:  # the kernel's buffer is full: queue the rest, wait until writable
                conn.keep_unsent(payload, sent, 0)
                if conn.queued > self._max_output:
                    self._over_output_limit(conn, foreign=True)
                self._update_interest(conn)

    def _send_queued(self, conn: Connection) -> None:
        try:
            conn.send_queued()
        except PeerGone:
            self._close_now(conn)
            return
        if conn.framer.pending and not conn.closing and conn.queued <= self._max_output:
            self._carry(conn)  # it paused for its output; it may go on
        self._update_interest(conn)

    def _over_output_limit(self, conn: Connection, foreign: bool) -> None:
        """Evict a slow consumer; a client behind on its own replies just stops being read."""
        if foreign and conn.foreign_bytes > self._max_output and not conn.closing:
            self._log(
                logging.WARNING,
                "disconnecting slow consumer %s: %d bytes of unsent output (--max-output %d)",
                conn.peer,
                conn.queued,
                self._max_output,
            )
            self.counters.evictions += 1
            self._close_now(conn)

    # -- interest ----------------------------------------------------------

    def _update_interest(self, conn: Connection) -> None:
        """Register exactly the events ``conn`` can act on now."""
        if conn.closed:
            return
        mask = 0
        if conn.lingering or not (
            conn.eof
            or conn.closing
            or conn.framer.pending
            or conn.queued > self._max_output
        ):
            mask = READ
        if conn.queue:
            mask |= WRITE
        if mask == conn.mask:
            return
        if not mask:
            self._selector.unregister(conn.sock)
        elif not conn.mask:
            self._selector.register(conn.sock, mask, conn)
        else:
            self._selector.modify(conn.sock, mask, conn)
        conn.mask = mask

    # -- timers ------------------------------------------------------------

    def _idle_timer_fired(self, conn: Connection, timer: Timer) -> None:
        if conn.closed or conn.closing:
            return
        deadline = conn.last_active + self._idle_timeout
        if deadline > self._now:
            self._wheel.schedule(timer, deadline)  # it was active since: re-arm lazily
            return
        self._apply(self._machine.handle(IdleTimedOut(conn)))

    def _close_deadline_passed(self, conn: Connection, timer: Timer) -> None:
        self._close_now(conn)

    # -- closing -----------------------------------------------------------

    def _close_after_flush(self, conn: Connection) -> None:
        if conn.closing or conn.closed:
            return
        conn.closing = True
        if conn.timer is not None:
            self._wheel.cancel(conn.timer)  # a flood-control resume: no more reading
        conn.timer = Timer((self._close_deadline_passed, conn))
        deadline = self._now + FLUSH_TIMEOUT
        if self._stop_at is not None:
            deadline = min(deadline, self._stop_at)
        self._wheel.schedule(conn.timer, deadline)
        if conn.idle_timer is not None:
            self._wheel.cancel(conn.idle_timer)
        self._closing.append(conn)
        self._update_interest(conn)

    def _linger_or_close(self, conn: Connection) -> None:
        """Output flushed: close, shutting our side first if the peer may still send."""
        if conn.eof:
            self._close_now(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_now(conn)
            return
        conn.lingering = True
        self._update_interest(conn)

    def _close_now(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.idle_timer is not None:
            self._wheel.cancel(conn.idle_timer)
        if conn.timer is not None:
            self._wheel.cancel(conn.timer)
        if conn.mask:
            self._selector.unregister(conn.sock)
            conn.mask = 0
        conn.sock.close()
        self._bytes_out_closed += conn.written
        conn.queue.clear()
        conn.queued = 0
        self._connections.discard(conn)
        self._notes.append(f"Connection closed: {conn.peer}")
        self._report_closed(conn)

    def _report_closed(self, conn: Connection) -> None:
        """Queue ``conn``'s end for the machine; ``_report_ended`` tells it at the flush."""
        if not conn.reported:
            conn.reported = True
            self._ended.append(conn)

    def _report_ended(self) -> None:
        """Tell the machine which connections ended this turn, all at once.

        Reported together, leavers are not told about each other: a mass
        disconnect of N users costs N INFO lines per survivor, not N * N / 2
        lines, most of them to sockets that are already gone.
        """
        if not self._ended:
            return
        ended, self._ended = self._ended, []
        if len(ended) == 1:
            event = ConnectionClosed(ended[0])
        else:
            event = ConnectionsClosed(tuple(ended))
        self._apply(self._machine.handle(event))

    # -- shutdown ----------------------------------------------------------

    def _begin_shutdown(self) -> None:
        """Stop accepting, tell everyone, and give them SHUTDOWN_TIMEOUT to get it."""
        self._log(logging.INFO, "Shutting down: %d connection(s) open", len(self._connections))
        self._stop_at = self._now + SHUTDOWN_TIMEOUT
        self._stop_listening()
        self._apply(self._machine.handle(ShutdownStarted()))
