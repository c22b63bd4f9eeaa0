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
   interval; it is 0 when work was left over from the last turn.
2. **Read.**  For each readable socket: one ``recv`` of at most
   ``READ_SIZE`` bytes, fed to that connection's ``LineFramer``
   (``protocol.framing``), which cuts lines within two budgets:
   flood-control tokens (``reactor.ratelimit``) and ``WORK_PER_TURN``
   lines.  Each line event goes to the protocol machine
   (``protocol.ChatMachine``); the effects it returns are carried out at
   once where they are decisions (a ``Close``) and filed in the ``Outbox``
   (``reactor.outbox``) where they are bytes to send; nothing is sent yet.
   New connections are accepted here too (``reactor.acceptor``).
3. **Time.**  The wheel hands back the timers that came due (their kinds
   are in ``reactor.timers``): idle deadlines, flood-control resumptions,
   flush deadlines.  Idle deadlines are re-armed lazily: a line only stamps
   ``last_active``, and a timer whose connection has been active since is
   moved to the new deadline when it fires.
4. **Flush.**  The outbox hands each connection all of its output for the
   turn at once, and each connection gets one ``send``; a broadcast's bytes
   are joined once and the same object goes to every ordinary recipient.
   A connection whose kernel buffer is full keeps the rest in its queue and
   gets write interest; the selector says when it can take more.  Ends of
   connections are reported to the machine here (``reactor.closing``).

Budgets.  No client may cost the others a stall, however many clients
misbehave at once, so each kind of work in a turn is bounded:

- per connection: one read, an equal share of ``WORK_PER_TURN`` lines (all
  of it when it is alone, never under ``MIN_SHARE``), and no more commands
  once its unsent replies pass ``--max-output`` (the rest waits, parsed);
- per turn: reading stops once the turn has spent ``READ_BUDGET`` seconds
  (after one connection at least), and ``TIMERS_PER_TURN`` timers are handled at most, idle deadlines aside
  (all of a turn's leave together, as one departure, and a storm of them
  gathers for ``IDLE_STORM_WINDOW`` first; the others hear of it at once,
  and the leavers get their last line and close ``LEAVERS_PER_TURN`` a
  turn).  Whatever was put
  off is served first in the next turn, in order (round robin, so nobody
  starves), and the loop does not sleep while anything waits.  TLS
  handshakes with input take turns with the chat connections, oldest
  first, and while too many are put off new TLS clients wait in the
  listen queue (``HANDSHAKES_BEHIND``).

Backpressure.  Reading from a connection stops (its read interest is
dropped) while input it sent waits to be handled, while its unsent output is
over ``--max-output``, and once it is no longer OPEN (the lifecycle is in
``reactor.connection``).  So memory per connection is bounded by one read,
one line and its output limit plus one reply, and a client that floods or
never reads is slowed by TCP itself.  Lines from other users that would
push a connection's unsent output past ``--max-output`` make it a *slow
consumer*: it is closed at once and the others are told it left; nobody
ever waits for it.

Errors.  ``EAGAIN`` and ``EINTR`` mean "not now"; ``ECONNRESET``, ``EPIPE``
and friends mean the peer is gone, and only that connection closes.  Python
ignores SIGPIPE, so a write to a closed socket raises instead of killing
the process.  A bug while serving one connection (an exception from the
machine) closes that connection, logged, and the server goes on.
"""

from __future__ import annotations

import itertools
import logging
import selectors
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from protocol import (
    Broadcast,
    ChatMachine,
    Close,
    CloseReason,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsClosed,
    ConnectionsTimedOut,
    Deliver,
    Effect,
    Event,
    IdleTimedOut,
    Reply,
    ShutdownStarted,
    Taken,
)
from protocol.cluster import Append

from . import heap
from .acceptor import ACCEPTS_PER_TURN, LISTENER, Acceptor
from .closing import Closer
from .config import Config
from .connection import CLOSED, FLUSHING, HANDSHAKING, LINGERING, OPEN, WRITE, Connection, PeerGone
from .engine.link import RedisLink
from .logs import LOGGER_NAME, TurnLog
from .outbox import Outbox
from .ratelimit import UNLIMITED, TokenBucket
from .stats import Counters, Stats
from .timers import CallbackTimer, CloseTimer, FloodTimer, IdleTimer
from .timerwheel import Timer, TimerWheel

if TYPE_CHECKING:
    import ssl

    from .cluster import ClusterDriver

log = logging.getLogger(LOGGER_NAME)

READ_SIZE = 65536
"""Bytes read from one socket per turn."""
WORK_PER_TURN = 1024
"""Lines (and Telnet commands) a turn handles, shared among the connections it serves."""
MIN_SHARE = 16
"""The least share of ``WORK_PER_TURN`` a connection gets, however many are busy."""
READ_BUDGET = 0.010
"""Seconds a turn may spend reading before it puts the rest off to the next turn."""
TIMERS_PER_TURN = 1024
"""Timers handled per turn, idle deadlines aside; the rest are handled in the next turns, at once."""
IDLE_STORM = 32
"""Idle deadlines reached in one turn that make a storm: the loop gathers the rest for a moment."""
IDLE_STORM_WINDOW = 0.6
"""How long a storm of idle deadlines gathers before they all leave, as one departure.

With the tick before it starts, the tick its timer may be late, and the
turns the leavers take to close, still within protocol.md's one second.
"""
LEAVERS_PER_TURN = 1024
"""Timed-out connections a turn sends their last line and starts closing; the rest go next turns.

One departure of 5,000 is one event for the machine, and their INFO lines
go to the others at once, but the leavers' own ``ERR idle-timeout`` and
close cost about 17 µs each, 85 ms for all: a turn that did them all would
keep every healthy client waiting that long.  The machine already treats
them as closing, so nothing they send meanwhile is handled.  (A cluster
node's leavers get their lines from the log, in the turn that reads it.)
"""
SHUTDOWN_TIMEOUT = 2.0
"""How long the server flushes at shutdown before closing everything."""
TICK = 0.1
"""The timer wheel's resolution: timers fire at most this late."""
ACCEPTS_WHEN_BEHIND = 16
"""The fewest connections a listener hands over in a turn, however far behind the loop is.

Each connection put off to the next turn with input unread stays readable,
and ``select`` reports it again every turn until it is served: accepting
256 a turn while serving 150 made a burst of 5,000 logins report each
connection about ten times, and doubled its CPU cost.  So a turn accepts
``ACCEPTS_PER_TURN`` less the connections it put off, and new clients wait
in the kernel's listen queue (which costs nothing) until the loop catches
up; never fewer than this, so busy clients cannot lock new ones out.
"""
TLS_BURST = 512
"""TLS handshakes in progress at once that make a burst: when it is over, free heap goes back.

Thousands of handshakes at once leave glibc's heap at its high-water mark
after they are done (``reactor.heap``); once none is left in progress the
loop hands the free pages back, once per burst.
"""
HANDSHAKES_BEHIND = 128
"""TLS handshakes with input put off to the next turn at which TLS accepting pauses.

The loop is behind on handshake work (each costs the CPU a signature or a key
exchange): new TLS clients wait in the kernel's listen queue, where their
handshake deadline has not started, until the put-off handshakes are below
half of this.  Stalled handshakes, which send nothing, never count.
"""
SOCKET_MARGIN = 16
"""Client sockets allowed beyond ``--max-clients`` (refusals still flushing, closes lingering)."""
MAX_SLEEP: float | None = 1.0 if sys.platform == "win32" else None
"""On Windows a signal does not interrupt ``select``: wake at least once a second."""

_WAKEUP = "wakeup"


class Reactor:
    """Serves the chat protocol on listening sockets until shut down.

    ``clock`` is the monotonic clock (tests pass one they move by hand);
    ``wakeup`` is the read end of a socket pair whose write end is the
    signal wakeup fd, so a signal interrupts ``select`` at once;
    ``after_turn`` runs at the end of every turn, before the loop sleeps;
    ``selector`` is the readiness API, the platform's best by default
    (tests pass each kind the platform has, so Windows's ``select`` is
    checked on Linux too).
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
        tls_listeners: Iterable[socket.socket] = (),
        tls_context: ssl.SSLContext | None = None,
        cluster: ClusterDriver | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._now = self._started = clock()
        # Standalone: the chat machine.  Cluster mode: the current ClusterNode,
        # which the driver hands over once it has joined (replace_machine).
        self._machine: Any = ChatMachine(max_clients=config.max_clients) if cluster is None else None
        self._cluster = cluster
        self._selector = selector if selector is not None else selectors.DefaultSelector()
        self._wheel = TimerWheel(self._now, tick=TICK)
        self._outbox = Outbox()
        self._turn_log = TurnLog(log)
        self.counters = Counters()
        self._connections: set[Connection] = set()
        self._socket_limit = config.max_clients + SOCKET_MARGIN
        self._idle_timeout = config.idle_timeout
        self._max_output = config.max_output
        self._acceptor = Acceptor(
            listeners,
            self._selector,
            self._wheel,
            self._turn_log,
            self.counters,
            has_room=lambda: len(self._connections) < self._socket_limit,
            open_connection=self.adopt,
            tls_listeners=tls_listeners,
        )
        self._tls_context: ssl.SSLContext | None = None
        self._not_now: tuple[type[BaseException], ...] = (BlockingIOError, InterruptedError)
        self._tls_buffered: list[Connection] = []  # TLS input the selector cannot see
        self._handshakes: dict[Connection, None] = {}  # TLS handshakes in progress, oldest first
        self._handshakes_peak = 0  # the most in progress at once since there were none
        if tls_context is not None:
            self.set_tls_context(tls_context)
        self._closer = Closer(self._wheel, self._turn_log, self._forget, config.max_output)
        self._wakeup = wakeup
        self._after_turn = after_turn
        # Work put off to the next turn, served first and in order.
        self._backlog: dict[Connection, None] = {}
        self._due_timers: deque[Timer] = deque()
        self._writable: list[Connection] = []
        self._parked: dict[Connection, None] = {}  # cluster mode: waiting for the engine to catch up
        self._answers_due: dict[Connection, None] = {}  # cluster mode: ended, replies still in the log
        self._reply_limit_passed = False  # set when filing a reply; read by _pump
        self._work_share = WORK_PER_TURN  # lines per connection this turn (see _read)
        self._idle_storm: list[Connection] | None = None  # idle deadlines gathering (see _idle_expired)
        self._idle_storm_timer = CallbackTimer(self._end_idle_storm)
        self._leaving: deque[list[Effect]] = deque()  # see LEAVERS_PER_TURN
        self._bytes_out_closed = 0
        self._shutdown_requested = False
        self._stop_at: float | None = None
        self._on_timer: dict[type, Callable[..., None]] = {
            FloodTimer: self._tokens_due,
            CloseTimer: self._closer.close_now,
            CallbackTimer: lambda callback: callback(),
        }
        if cluster is None:
            self._acceptor.start()  # a cluster node accepts once it is in the cluster
        if wakeup is not None:
            wakeup.setblocking(False)
            self._selector.register(wakeup, selectors.EVENT_READ, _WAKEUP)
        if cluster is not None:
            cluster.bind(self)

    # -- the interface -----------------------------------------------------

    def run_once(self) -> None:
        """One turn: sleep, read, time, flush."""
        timers_due = self._wheel.next_wakeup()
        ready = self._selector.select(self._select_timeout(timers_due))
        self._now = self._clock()
        readable = self._sort_ready(ready)
        self._read(readable)
        if self._shutdown_requested and self._stop_at is None:
            self._begin_shutdown()
        if self._due_timers or (timers_due is not None and self._now >= timers_due):
            self._run_timers()  # (timers armed during this turn are all in the future)
        if self._leaving:
            self._let_leave()
        self._flush()
        if self._cluster is not None:
            self._cluster.end_of_turn()
            if self._parked and not self._cluster.full:
                self._backlog.update(self._parked)  # the engine caught up: they go on
                self._parked.clear()
        if self._stop_at is not None and self._now >= self._stop_at:
            self._close_everything()
        if self._turn_log.notes:
            self._turn_log.flush()
        if self._after_turn is not None:
            self._after_turn()

    def serve_forever(self) -> None:
        """Run turns until a requested shutdown is complete."""
        while not self.finished:
            self.run_once()

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
        return (
            self._stop_at is not None
            and not self._connections
            and (self._cluster is None or self._cluster.finished or self._now >= self._stop_at)
        )

    def close(self) -> None:
        """Release every socket (after ``serve_forever``, or to abandon the loop)."""
        self._close_everything()
        if self._machine is not None:
            self._report_ended()
        self._turn_log.flush()
        self._acceptor.close()
        if self._cluster is not None:
            self._cluster.close()
        self._selector.close()

    def adopt(self, sock: socket.socket, peer: tuple, tls: bool = False) -> Connection | None:
        """Serve a connected socket: one ``accept`` gave it, or a test's socket pair.

        With ``tls`` the socket is wrapped in the current TLS context first,
        and becomes a chat connection once its handshake is done.  Returns
        the connection (``None`` if it could not even be set up).
        """
        sock.setblocking(False)
        try:
            # Without it, Nagle's algorithm and delayed ACKs stall a client
            # that both sends and receives by about 40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a socket pair), or already gone
        config = self._config
        now = self._now
        bucket = TokenBucket(config.rate, config.burst, now) if config.rate else None
        shown = str(peer)  # formatted once: every log line about it shows this
        self._turn_log.note(f"New connection from {shown}")
        if tls:
            return self._adopt_tls(sock, shown, bucket)
        conn = Connection(sock, shown, config.max_line, bucket, now, self._selector)
        self._connections.add(conn)
        conn.update_interest(self._max_output)
        self._open(conn)
        return conn

    def _open(self, conn: Connection) -> None:
        """``conn`` is a chat connection from now on: its idle timer runs, the machine knows it."""
        if self._idle_timeout:
            conn.idle_timer = IdleTimer(conn)
            self._wheel.schedule(conn.idle_timer, self._now + self._idle_timeout)
        conn.known = True
        self._apply(self._machine.handle(ConnectionOpened(conn)))

    def set_tls_context(self, context: ssl.SSLContext) -> None:
        """Use ``context`` for new TLS handshakes (a renewed certificate); open ones keep theirs."""
        if self._tls_context is None:
            from . import tls  # only a server with TLS pays for importing ssl's machinery

            self._not_now += tls.WOULD_BLOCK
        self._tls_context = context

    # -- TLS -------------------------------------------------------------------

    def _adopt_tls(self, sock: socket.socket, peer: str, bucket: TokenBucket | None) -> Connection | None:
        from .tls import HANDSHAKE_TIMEOUT, TLSConnection

        assert self._tls_context is not None, "a TLS listener needs a TLS context"
        try:
            wrapped = self._tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as error:
            self._turn_log.log(logging.DEBUG, "TLS setup for %s failed: %s", peer, error)
            sock.close()
            self._turn_log.note(f"Connection closed: {peer}")
            return None
        conn = TLSConnection(
            wrapped, peer, self._config.max_line, bucket, self._now, self._selector,
            buffered=self._tls_buffered,
        )
        self._connections.add(conn)
        self._handshakes[conn] = None
        self._handshakes_peak = max(self._handshakes_peak, len(self._handshakes))
        conn.close_timer = CloseTimer(conn)
        self._wheel.schedule(conn.close_timer, self._now + HANDSHAKE_TIMEOUT)
        conn.update_interest(self._max_output)  # the first step waits for its turn, within the budget
        return conn

    def _handshake(self, conn: Connection) -> None:
        """Take a TLS handshake one step further; open the chat connection when it is done."""
        try:
            done = conn.handshake()  # type: ignore[attr-defined]
        except PeerGone as error:
            self._turn_log.log(logging.DEBUG, "TLS handshake with %s failed: %s", conn.peer, error)
            self._closer.close_now(conn)
            return
        if done:
            conn.close_timer.cancel()  # type: ignore[union-attr]
            del self._handshakes[conn]
            if not self._handshakes:
                self._after_handshakes()
            self._open(conn)
        conn.update_interest(self._max_output)

    def _after_handshakes(self) -> None:
        """The last handshake in progress is over: after a burst, the heap's free pages go back."""
        if self._handshakes_peak >= TLS_BURST:
            heap.give_back_free_heap()
        self._handshakes_peak = 0

    def call_every(self, interval: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` every ``interval`` seconds of the loop's clock, from the loop.

        For the daemon's periodic chores (statistics, the systemd watchdog):
        they run between turns' work like any timer, never concurrently.
        """
        if not interval > 0:
            raise ValueError("interval must be > 0")

        def chore() -> None:
            self._wheel.schedule(timer, self._now + interval)
            callback()

        timer = CallbackTimer(chore)
        self._wheel.schedule(timer, self._now + interval)

    # -- for cluster mode's driver (reactor.cluster) ------------------------------

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def selector(self) -> selectors.BaseSelector:
        return self._selector

    @property
    def turn_log(self) -> TurnLog:
        return self._turn_log

    @property
    def serving(self) -> bool:
        """Whether clients are accepted: from the start standalone, once joined in a cluster."""
        return self._acceptor.accepting or self._stop_at is not None

    @property
    def shutting_down(self) -> bool:
        return self._stop_at is not None or self._shutdown_requested

    @property
    def cluster_address(self) -> str:
        return self._cluster.address.redacted if self._cluster is not None else ""

    def schedule(self, timer: Timer, when: float) -> None:
        """Arm ``timer`` (a ``CallbackTimer``) for ``when`` on the loop's wheel."""
        self._wheel.schedule(timer, when)

    def feed_machine(self, event: Event) -> None:
        """Hand ``event`` to the machine and carry out its effects, in this turn."""
        self._apply(self._machine.handle(event))
        if self._answers_due:
            self._close_answered()

    def _close_answered(self) -> None:
        """Connections that ended while replies were on their way from the log close once they are in."""
        for conn in list(self._answers_due):
            if conn.phase >= FLUSHING:
                del self._answers_due[conn]  # closed meanwhile (QUIT, idle, the node lost the cluster)
            elif not self._machine.waiting(conn):
                del self._answers_due[conn]
                self._closer.report(conn)
                self._closer.close_after_flush(conn, self._now, self._stop_at)

    def replace_machine(self, machine: Any) -> None:
        """Serve with ``machine`` from now on (a new cluster node); the old one must be empty."""
        if self._machine is not None and len(self._machine):
            raise RuntimeError("the machine still has connections")
        self._machine = machine

    def cluster_joined(self) -> None:
        """The cluster node reads its own arrival back: accept clients."""
        if self._stop_at is None:
            self._acceptor.start()

    def stats(self) -> Stats:
        """A snapshot of the counters and of what is open now."""
        c = self.counters
        return Stats(
            users=self._machine.user_count if self._machine is not None else 0,
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
        return self._acceptor.addresses

    # -- 1. sleeping ---------------------------------------------------------

    def _select_timeout(self, wake: float | None) -> float | None:
        """Sleep until ``wake`` (the next timer) or the shutdown deadline; not at all if work waits."""
        if (
            self._backlog
            or self._due_timers
            or self._leaving
            or self._tls_buffered
            or (self._shutdown_requested and self._stop_at is None)
        ):
            return 0.0
        if self._stop_at is not None:
            wake = self._stop_at if wake is None else min(wake, self._stop_at)
        timeout = None if wake is None else max(0.0, wake - self._clock())
        if MAX_SLEEP is not None:
            timeout = MAX_SLEEP if timeout is None else min(timeout, MAX_SLEEP)
        return timeout

    def _sort_ready(self, ready: list[tuple[selectors.SelectorKey, int]]) -> list[Connection]:
        """Accept, note the writable, and return the readable connections."""
        readable = []
        for key, mask in ready:
            target = key.data
            if target is LISTENER:
                self._acceptor.accept_batch(key.fileobj, self._now, self._accept_allowance())  # type: ignore[arg-type]
            elif target is _WAKEUP:
                self._drain_wakeup()
            elif type(target) is RedisLink:  # cluster mode's links to the engine
                target.on_events(mask)
            elif target.phase is HANDSHAKING:
                readable.append(target)  # the handshake itself says whether it can go on
            elif target.phase is not CLOSED:  # an earlier event this turn may have closed it
                if mask & WRITE:
                    self._writable.append(target)
                if mask & selectors.EVENT_READ:
                    readable.append(target)
        return readable

    def _accept_allowance(self) -> int:
        """How many new connections a listener may hand over this turn; see ``ACCEPTS_WHEN_BEHIND``."""
        return max(ACCEPTS_WHEN_BEHIND, ACCEPTS_PER_TURN - len(self._backlog))

    def _drain_wakeup(self) -> None:
        assert self._wakeup is not None
        try:
            while self._wakeup.recv(512):
                pass
        except OSError:
            pass

    # -- 2. reading ----------------------------------------------------------

    def _read(self, readable: list[Connection]) -> None:
        """Serve the connections put off last turn, then the newly readable, within the budget."""
        if self._tls_buffered:
            self._backlog.update(dict.fromkeys(self._tls_buffered))
            self._tls_buffered.clear()
        if not self._backlog and len(readable) == 1:  # the usual turn: one connection, nothing left over
            if self._acceptor.tls_held:
                self._acceptor.release_tls()  # nothing was put off: the loop has caught up
            self._work_share = WORK_PER_TURN
            conn = readable[0]
            if conn.phase is OPEN:
                self._receive(conn)  # readable means read interest: no input of its was waiting
            else:
                self._serve(conn)
            return
        backlog, self._backlog = self._backlog, {}
        put_off: dict[Connection, None] = {}
        self._work_share = max(MIN_SHARE, WORK_PER_TURN // max(1, len(backlog) + len(readable)))
        stop_at = self._now + READ_BUDGET
        clock = self._clock
        candidates = list(itertools.chain(backlog, [conn for conn in readable if conn not in backlog]))
        if self._handshakes:
            candidates = self._handshakes_oldest_first(candidates)
        over_budget = False  # checked after each, so every turn serves at least one
        for conn in candidates:
            if over_budget:
                put_off[conn] = None  # everybody left waits for the next turn
            else:
                self._serve(conn)
                over_budget = clock() >= stop_at
        if put_off:  # first in the next turn, before those served in this one
            put_off.update(self._backlog)
            self._backlog = put_off
        if self._handshakes or self._acceptor.tls_held:
            self._pace_tls_accepting()

    def _handshakes_oldest_first(self, candidates: list[Connection]) -> list[Connection]:
        """The turn's order when handshakes are ready: chat and handshakes in turn, oldest handshake first.

        Oldest first, a burst of TLS clients finishes one by one (a client's
        second flight goes before a newer client's first) instead of every
        handshake advancing in lockstep and all finishing as late as the
        last; alternating, neither a burst of handshakes nor a busy room
        starves the other of the read budget.
        """
        ready = {conn for conn in candidates if conn.phase is HANDSHAKING}
        if not ready:
            return candidates
        chat = [conn for conn in candidates if conn not in ready]
        shaking = [conn for conn in self._handshakes if conn in ready]
        both = itertools.chain.from_iterable(itertools.zip_longest(chat, shaking))
        return [conn for conn in both if conn is not None]

    def _pace_tls_accepting(self) -> None:
        """Pause accepting TLS clients while the loop is behind on handshakes; see ``HANDSHAKES_BEHIND``."""
        behind = sum(1 for conn in self._backlog if conn.phase is HANDSHAKING) if self._backlog else 0
        if behind >= HANDSHAKES_BEHIND:
            self._acceptor.hold_tls()
        elif behind < HANDSHAKES_BEHIND // 2:
            self._acceptor.release_tls()

    def _serve(self, conn: Connection) -> None:
        """Whatever ``conn`` can go on with: its handshake, input that waited, or a read."""
        phase = conn.phase
        if phase is CLOSED:
            return  # an earlier connection in this turn closed it
        if phase is HANDSHAKING:
            self._handshake(conn)
        elif phase < FLUSHING and conn.input_waiting:
            self._resume(conn)
        else:
            self._receive(conn)

    def _receive(self, conn: Connection) -> None:
        """One ``recv``, fed to the framer, then the lines it completes handled."""
        try:
            data = conn.sock.recv(READ_SIZE)
        except self._not_now:
            return
        except (OSError, ValueError):
            self._closer.close_now(conn)
            return
        if conn.phase is LINGERING:
            if not data:
                self._closer.close_now(conn)
            return
        if data:
            self.counters.bytes_in += len(data)
            conn.framer.feed(data)
            if conn.tls and conn.has_buffered_input:  # type: ignore[attr-defined]
                self._tls_buffered.append(conn)
        else:
            conn.input_ended()
        self._pump(conn)

    def _resume(self, conn: Connection) -> None:
        """Go on with input that waited: for the work budget, or for its output to drain."""
        if conn.queued <= self._max_output:
            self._pump(conn)
        else:
            conn.update_interest(self._max_output)  # it goes on once its output drains

    def _pump(self, conn: Connection, waited: bool = False) -> None:
        """Handle the lines waiting for ``conn``, within its budgets.

        ``waited``: flood control paused it and its token is due now.
        """
        if conn.phase >= FLUSHING:
            return
        if self._cluster is not None and self._cluster.full:
            self._parked[conn] = None  # the engine is behind: its lines wait (--cluster-buffer)
            conn.update_interest(self._max_output)
            return
        events = conn.unhandled
        if events is None:
            taken = self._take(conn, waited)
            events, more = taken.events, taken.pending
        else:
            conn.unhandled = None
            more = conn.framer.pending
        try:
            handled = self._handle_commands(conn, events)
        except Exception:  # a bug, never a client's input: cost that client only
            self._turn_log.log(
                logging.ERROR, "internal error while serving %s; closing it", conn.peer, exc_info=True
            )
            self._closer.close_now(conn)
            return
        if handled < len(events) and conn.phase < FLUSHING:
            conn.unhandled = events[handled:]  # its replies passed --max-output: later
            more = True
        self._after_pump(conn, more)

    def _take(self, conn: Connection, waited: bool) -> Taken:
        """Parse the lines the budgets allow; flood tokens are spent here."""
        bucket = conn.bucket
        tokens = UNLIMITED if bucket is None else bucket.available(self._now, waited)
        taken = conn.framer.take(tokens, self._work_share)
        if bucket is not None and taken.tokens:
            bucket.spend(taken.tokens)
        if taken.lines:
            conn.last_active = self._now
            self.counters.lines_in += taken.lines
        return taken

    def _handle_commands(self, conn: Connection, events: Sequence[Event]) -> int:
        """Hand ``events`` to the machine until done, closing, or over the reply limit; how many."""
        handle = self._machine.handle
        apply = self._apply
        self._reply_limit_passed = False
        limit = self._max_output - conn.queued
        for handled, event in enumerate(events, 1):
            apply(handle(event), limit)
            if conn.phase >= FLUSHING:
                return len(events)  # nothing it sent after this may run
            if self._reply_limit_passed:
                return handled
        return len(events)

    def _after_pump(self, conn: Connection, input_waiting: bool) -> None:
        """Decide what ``conn`` waits for next: tokens, the next turn, or its socket."""
        if conn.phase >= FLUSHING:
            return
        if input_waiting:
            bucket = conn.bucket
            if conn.unhandled is None and bucket is not None and bucket.available(self._now) < 1:
                self._wait_for_tokens(conn, bucket)
            else:  # the work budget ran out, or its replies passed the limit: next turn
                self._backlog[conn] = None
        elif conn.phase is not OPEN:  # DRAINING, and every line handled
            if self._cluster is not None and self._machine.waiting(conn):
                self._answers_due[conn] = None  # its last replies come from the log: close after them
                return
            self._closer.report(conn)
            self._closer.close_after_flush(conn, self._now, self._stop_at)
            return
        elif conn.mask == selectors.EVENT_READ:
            return  # all input handled, nothing queued: the usual case, nothing to change
        conn.update_interest(self._max_output)

    def _wait_for_tokens(self, conn: Connection, bucket: TokenBucket) -> None:
        self.counters.flood_pauses += 1
        if conn.flood_timer is None:
            conn.flood_timer = FloodTimer(conn)
        self._wheel.schedule(conn.flood_timer, bucket.next_token_at())

    def _tokens_due(self, conn: Connection) -> None:
        if conn.phase >= FLUSHING:
            return
        if conn.peer_failed():  # it reset while paused: its backlog is nobody's now
            self._closer.close_now(conn)
        elif conn.queued <= self._max_output:
            self._pump(conn, waited=True)

    # -- effects -----------------------------------------------------------

    def _apply(self, effects: list[Effect], reply_limit: int | None = None) -> None:
        """Carry out the machine's decisions: file bytes in the outbox, start closes.

        ``reply_limit``: the reply bytes the connection being served may
        still be given this turn; passing it sets ``_reply_limit_passed``.
        """
        outbox = self._outbox
        counters = self.counters
        for effect in effects:
            kind = type(effect)
            if kind is Broadcast:
                outbox.file_broadcast(effect.data, effect.audience, effect.exclude)  # type: ignore[union-attr]
                counters.lines_out += len(effect.audience) - (effect.exclude is not None)  # type: ignore[union-attr]
            elif kind is Reply:
                filed = outbox.file_reply(effect.conn, effect.data)  # type: ignore[union-attr]
                counters.lines_out += effect.data.count(b"\n")  # type: ignore[union-attr]
                if reply_limit is not None and filed > reply_limit:
                    self._reply_limit_passed = True
            elif kind is Deliver:
                outbox.file_direct(effect.conn, effect.data)  # type: ignore[union-attr]
                counters.lines_out += 1
            elif kind is Close:
                self._close_requested(effect.conn, effect.reason)  # type: ignore[union-attr]
            elif kind is Append:
                self._cluster.append(effect)  # type: ignore[union-attr,arg-type]
            else:
                raise TypeError(f"unknown effect {effect!r}")

    def _close_requested(self, conn: Connection, reason: CloseReason) -> None:
        if conn.phase is CLOSED:
            return
        self._turn_log.log(logging.DEBUG, "closing %s: %s", conn.peer, reason.value)
        if reason is CloseReason.SERVER_FULL:
            self.counters.refused += 1
        elif reason is CloseReason.CROSS_PROTOCOL:
            self._turn_log.log(
                logging.WARNING,
                "closing %s: it sent an HTTP request to the chat port (cross-protocol guard)",
                conn.peer,
            )
        elif reason is CloseReason.TLS_ON_PLAIN_PORT:
            self._turn_log.log(
                logging.WARNING,
                "closing %s: it began a TLS handshake on the plaintext port (cross-protocol guard)",
                conn.peer,
            )
        if reason.flush_first:
            self._closer.close_after_flush(conn, self._now, self._stop_at)
        else:
            self._closer.close_now(conn)

    # -- 3. time -----------------------------------------------------------

    def _run_timers(self) -> None:
        """Handle the timers that came due.

        Idle deadlines are all handled at once, whatever their number: the
        connections whose deadline passed leave as one departure, which
        costs O(leavers) however many they are, where departures cut into
        batches would cost every later leaver an INFO per earlier one.
        Other timers are handled ``TIMERS_PER_TURN`` a turn.
        """
        due = self._due_timers
        idle: list[Connection] = []
        for timer in self._wheel.advance(self._now):
            if type(timer) is IdleTimer:
                self._idle_deadline(timer, idle)
            else:
                due.append(timer)
        if idle:
            self._idle_expired(idle)
        for _ in range(min(len(due), TIMERS_PER_TURN)):
            timer = due.popleft()
            if not timer.pending:  # (pending again: re-armed since it fired)
                self._on_timer[type(timer)](timer.payload)

    def _idle_deadline(self, timer: Timer, expired: list[Connection]) -> None:
        conn: Connection = timer.payload  # type: ignore[assignment]
        if conn.phase >= FLUSHING:
            return
        deadline = conn.last_active + self._idle_timeout
        if deadline > self._now:
            self._wheel.schedule(timer, deadline)  # it was active since: re-arm lazily
        else:
            expired.append(conn)

    def _idle_expired(self, conns: list[Connection]) -> None:
        """Close the idle now, unless they are a storm: then gather the rest of it first.

        Thousands of clients that connected together (after a network blip)
        go quiet together and reach their deadlines within a second, tick
        after tick.  Closed tick by tick, each batch would be told of every
        earlier one: millions of INFO lines to clients about to leave too.
        So once one turn finds ``IDLE_STORM`` of them, the loop waits
        ``IDLE_STORM_WINDOW`` for the others, and they leave as one
        departure, still within protocol.md's one second.
        """
        storm = self._idle_storm
        if storm is None and len(conns) < IDLE_STORM:
            self._time_out(conns)
            return
        if storm is None:
            storm = self._idle_storm = []
            self._wheel.schedule(self._idle_storm_timer, self._now + IDLE_STORM_WINDOW)
        storm += conns

    def _end_idle_storm(self) -> None:
        storm, self._idle_storm = self._idle_storm or [], None
        expired = []
        for conn in storm:
            if conn.phase >= FLUSHING:
                continue  # gone meanwhile
            deadline = conn.last_active + self._idle_timeout
            if deadline > self._now:  # it spoke meanwhile: watch it again
                self._wheel.schedule(conn.idle_timer, deadline)  # type: ignore[arg-type]
            else:
                expired.append(conn)
        if expired:
            self._time_out(expired)

    def _time_out(self, conns: list[Connection]) -> None:
        """The idle timeouts of one turn, as one departure."""
        if len(conns) == 1:
            event: Event = IdleTimedOut(conns[0])
        else:
            event = ConnectionsTimedOut(tuple(conns))
        effects = self._machine.handle(event)
        if len(conns) > LEAVERS_PER_TURN:
            effects = self._put_off_leavers(conns, effects)  # the turn lets the first of them leave
        self._apply(effects)

    def _put_off_leavers(self, conns: list[Connection], effects: list[Effect]) -> list[Effect]:
        """Queue each leaver's own effects (its last line, its close), together; return the others'."""
        own: dict[Connection, list[Effect]] = {conn: [] for conn in conns}
        others = []
        for effect in effects:
            mine = own.get(getattr(effect, "conn", None))  # type: ignore[arg-type]
            if mine is None:
                others.append(effect)
            else:
                mine.append(effect)
        self._leaving.extend(own.values())
        return others

    def _let_leave(self) -> None:
        """The next ``LEAVERS_PER_TURN`` timed-out connections get their last line and start closing."""
        leaving = self._leaving
        for _ in range(min(len(leaving), LEAVERS_PER_TURN)):
            self._apply(leaving.popleft())

    # -- 4. flushing ---------------------------------------------------------

    def _flush(self) -> None:
        """Hand out the turn's output, one send per connection, then finish closes.

        Reporting an end to the machine can make it broadcast (INFO), and
        handing out output can evict a slow consumer, so it repeats until
        nothing new was filed.
        """
        outbox = self._outbox
        closer = self._closer
        while True:
            if closer.ended:
                self._report_ended()  # files the machine's INFO lines, if any
            if outbox:
                outbox.drain(self._hand_over, self._share)
            if self._writable:
                self._send_queued_output()
            if closer.flushing:
                closer.finish_flushed()
            if not closer.ended:  # only reporting an end files more output
                return

    def _hand_over(self, conn: Connection, pieces: list[bytes], reply_bytes: int) -> None:
        """The outbox's hand-over: ``conn``'s output for this turn, sent or queued."""
        if conn.phase >= LINGERING:
            return  # closed, or shut for writing
        if not conn.queue:
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self._send_to((conn,), data, reply_bytes)
            return
        conn.enqueue(pieces, reply_bytes)  # it is waiting for the kernel already
        if conn.queued > self._max_output:
            self._over_output_limit(conn, foreign=reply_bytes < sum(map(len, pieces)))
        if conn.phase is not CLOSED and not conn.mask & WRITE:
            conn.update_interest(self._max_output)

    def _share(self, audience: Sequence[Connection], payload: bytes, skip: Container[Connection]) -> None:
        """The hot path: a run's bytes, the same object, to every ordinary member."""
        self._send_to(audience, payload, 0, skip)

    def _send_to(
        self,
        members: Sequence[Connection],
        payload: bytes,
        reply_bytes: int,
        skip: Container[Connection] = frozenset(),
    ) -> None:
        """Send ``payload`` to each member: the one send path for a turn's output.

        One loop here instead of a call per recipient: a member with an
        empty queue costs one ``send`` and a few attribute tests.  A member
        with output already waiting, or no longer taking output, goes the
        general way (``_hand_over``); a send the kernel cuts short is queued
        here, and may make a slow consumer of the member.
        """
        size = len(payload)
        not_now = self._not_now
        for conn in members:
            if conn in skip:
                continue
            if conn.queue or conn.phase >= LINGERING:
                self._hand_over(conn, [payload], reply_bytes)
                continue
            try:
                sent = conn.sock.send(payload)
            except not_now:
                sent = 0
            except OSError:
                self._closer.close_now(conn)
                continue
            conn.written += sent
            if sent < size:  # the kernel's buffer is full: queue the rest, wait until writable
                conn.keep_unsent(payload, sent, reply_bytes)
                if conn.queued > self._max_output:
                    self._over_output_limit(conn, foreign=reply_bytes < size)
                conn.update_interest(self._max_output)

    def _send_queued_output(self) -> None:
        writable, self._writable = self._writable, []
        for conn in writable:
            if conn.phase is CLOSED or not conn.queue:
                continue
            try:
                conn.send_queued()
            except PeerGone:
                self._closer.close_now(conn)
                continue
            if conn.input_waiting and conn.phase < FLUSHING and conn.queued <= self._max_output:
                self._backlog[conn] = None  # it paused for its output; it may go on
            conn.update_interest(self._max_output)

    def _over_output_limit(self, conn: Connection, foreign: bool) -> None:
        """Evict a slow consumer; a client behind on its own replies just stops being read."""
        if foreign and conn.foreign_bytes > self._max_output and conn.phase < FLUSHING:
            self._turn_log.log(
                logging.WARNING,
                "disconnecting slow consumer %s: %d bytes of unsent output (--max-output %d)",
                conn.peer,
                conn.queued,
                self._max_output,
            )
            self.counters.evictions += 1
            self._closer.close_now(conn)

    def _report_ended(self) -> None:
        """Tell the machine which connections ended, all at once (``reactor.closing``)."""
        ended = self._closer.take_ended()
        if not ended:
            return
        if len(ended) == 1:
            event: Event = ConnectionClosed(ended[0])
        else:
            event = ConnectionsClosed(tuple(ended))
        self._apply(self._machine.handle(event))

    def _forget(self, conn: Connection) -> None:
        """The closer closed ``conn``: it is no longer one of ours."""
        self._connections.discard(conn)
        if self._handshakes.pop(conn, False) is None and not self._handshakes:
            self._after_handshakes()
        self._backlog.pop(conn, None)
        self._bytes_out_closed += conn.written

    # -- shutdown ----------------------------------------------------------

    def _begin_shutdown(self) -> None:
        """Stop accepting, tell everyone, and give them SHUTDOWN_TIMEOUT to get it."""
        self._turn_log.log(logging.INFO, "Shutting down: %d connection(s) open", len(self._connections))
        self._stop_at = self._now + SHUTDOWN_TIMEOUT
        self._acceptor.close()
        if self._cluster is not None:
            self._cluster.stop()
            if self._machine is None:
                return  # it never joined: nobody to tell
        for conn in [conn for conn in self._connections if conn.phase is HANDSHAKING]:
            self._closer.close_now(conn)  # not yet a chat connection: nothing to tell it
        self._apply(self._machine.handle(ShutdownStarted()))

    def _close_everything(self) -> None:
        self._leaving.clear()  # (their closes are below)
        for conn in list(self._connections):
            self._closer.close_now(conn)
