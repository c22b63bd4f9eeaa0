"""One connection to Redis inside the event loop: non-blocking, pipelined, reconnecting.

Theory of operation
-------------------
A ``RedisLink`` is to the engine what a ``Connection`` is to a client: a
non-blocking socket in the reactor's selector, driven by readiness, never
waited on.  The loop asks three things of it every turn, in its usual
order: ``on_events(mask)`` when the selector reports its socket,
``tick()`` once ``wakeup_at`` has come (reconnect times and deadlines),
and ``flush()`` at the end of the turn.  It registers and re-registers
itself in the selector it is given, with itself as the key's ``data``,
because its socket changes on every reconnect: ``key.data`` tells the loop
it is a link, ``interest`` says what it waits for, ``fileno()`` is its
current socket (-1 between sockets).

Lifecycle.  A link is in one ``LinkState``; the table holds every move::

    state        what happened                                   next
    -----------  ----------------------------------------------  -----------
    WAITING      start(), or tick() at the reconnect time        CONNECTING
    CONNECTING   the socket connected (writable, SO_ERROR 0):     HANDSHAKING
                 the handshake commands are sent
    HANDSHAKING  the last handshake reply is a success           READY
    CONNECTING,  a refusal, an error reply in the handshake,     WAITING
    HANDSHAKING  ``connect_timeout`` passed
    READY        end of stream, a reset, a protocol error, or    WAITING
                 no reply for ``reply_timeout`` while one is due
    any          close()                                         CLOSED

The handshake is pipelined in one write: ``AUTH [user] password`` when the
URL has one, ``SELECT db`` when the database is not 0, and always ``CLIENT
SETNAME`` (which also makes a server that wants a password we lack answer
``NOAUTH`` at once).  Any error reply fails the attempt, with the reply as
the reason (``AUTH refused: WRONGPASS ...``).

Commands.  ``send(args, callback)`` encodes the command and appends it to
the turn's output (``send_encoded`` takes one already encoded); nothing
is written until ``flush()``, so all the commands of a turn leave in one
``send`` (pipelining).  Each command's
callback joins a FIFO; replies come in command order, so the reply parsed
next belongs to the callback at the head.  Every callback is called
exactly once: with the reply, with a ``ReplyError`` value for an error
reply, or with ``LinkLost`` when the connection ends first.  ``send`` is
allowed only while ``ready``: the owner keeps what it could not send (the
spec's bounded buffer, ``--cluster-buffer``) and sends it again from
``on_ready``, since a command caught in a lost connection may or may not
have run and only the owner knows whether that matters.  ``unsent_bytes``
and ``pending_commands`` say how much is queued, for that bound.

Reads.  Readable means: ``recv`` until the kernel has no more, at most
``READS_PER_EVENT`` times (so one busy link cannot hold the turn), feeding
each chunk to the hiredis reader and handing out every complete reply at
once.  An exception from a callback is logged and the next reply is still
delivered: the callback is the owner's bug, the stream is still good.

Reconnecting.  Every failure (a refused attempt, a lost link) schedules the
next attempt after an exponential backoff with jitter (``Backoff``): the
step doubles from ``backoff_initial`` up to ``backoff_cap``, and the delay
is drawn between half a step and a whole one, so nodes that lost the same
Redis do not come back in lockstep.  A completed handshake resets it.
Time comes from the ``clock`` and jitter from the ``random`` passed in, so
tests drive both.  Each failure is logged once at WARNING, and
``on_lost(reason)`` is called after the pending callbacks got their
``LinkLost``; ``on_ready()`` once a handshake completes.  The owner counts
its lease from these.  A blocking read (``XREAD BLOCK``) belongs on a link
of its own, with a ``reply_timeout`` longer than the block, so that it
never holds up the writes of the other link.

What never happens: a blocking system call on the socket (it is
non-blocking from birth; a paused Redis only means replies do not come, and
``reply_timeout`` is how the owner notices), an exception out of
``on_events``/``tick``/``flush`` for anything the engine does, a password in
a log line or a reason (the address prints redacted, and a reason is
scrubbed of the password in case a server echoes it).  The one call that
can wait is ``getaddrinfo`` for a host *name*, once per attempt (the
system resolver: /etc/hosts, then DNS); an IP address or a unix socket in
the URL avoids it entirely.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import random as _random
import selectors
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..logs import LOGGER_NAME
from .address import RedisAddress
from .resp import Arg, EngineError, LinkLost, encode_command, reader_factory

__all__ = ["Backoff", "LinkState", "RedisLink"]

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

READ_SIZE = 262144
"""Bytes asked of one ``recv``."""
READS_PER_EVENT = 16
"""``recv`` calls per readiness event at most: 4 MiB, then the turn goes on."""
CONNECT_TIMEOUT = 5.0
"""Seconds an attempt has to connect and finish its handshake."""
BACKOFF_INITIAL = 0.1
BACKOFF_CAP = 10.0

_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, getattr(errno, "WSAEWOULDBLOCK", -1)}

Callback = Callable[[Any], None]


class LinkState(enum.Enum):
    WAITING = "waiting"  # no socket; the next attempt is at wakeup_at
    CONNECTING = "connecting"
    HANDSHAKING = "handshaking"
    READY = "ready"
    CLOSED = "closed"


WAITING, CONNECTING, HANDSHAKING, READY, CLOSED = LinkState


class _Log(Protocol):
    """``logging.Logger`` or the loop's ``TurnLog``: both have this."""

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None: ...


class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half drawn at random."""

    __slots__ = ("initial", "cap", "failures", "_random")

    def __init__(
        self,
        initial: float = BACKOFF_INITIAL,
        cap: float = BACKOFF_CAP,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self.failures = 0  # since the last reset
        self._random = random

    def step(self) -> float:
        """The current step, before jitter: initial * 2**failures, at most cap."""
        return min(self.cap, self.initial * 2.0 ** min(self.failures, 64))

    def next_delay(self) -> float:
        """The delay before the next attempt, between step/2 and step; counts one failure."""
        step = self.step()
        self.failures += 1
        return step / 2 + self._random() * step / 2

    def reset(self) -> None:
        self.failures = 0


class RedisLink:
    """A connection to Redis for the event loop (see the module doc for the whole contract).

    ``address`` is where; ``clock`` the loop's monotonic clock; ``random``
    the jitter's source; ``selector`` the loop's (None: the owner registers
    ``fileno()`` with ``interest`` itself, after every call); ``client_name``
    what ``CLIENT LIST`` shows; ``on_ready()`` and ``on_lost(reason)`` the
    owner's hooks; ``logger`` where WARNINGs go (the ``chat`` logger by
    default, or the loop's ``TurnLog``); ``reply_timeout`` declares the link
    lost when a reply is due and none came for that long (None: never).
    """

    def __init__(
        self,
        address: RedisAddress,
        *,
        clock: Callable[[], float],
        random: Callable[[], float] = _random.random,
        selector: selectors.BaseSelector | None = None,
        client_name: str = "chat",
        on_ready: Callable[[], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        logger: _Log | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        reply_timeout: float | None = None,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        if not client_name or any(c.isspace() or not c.isprintable() for c in client_name):
            raise ValueError("a client name has no spaces or control characters (CLIENT SETNAME)")
        self.address = address
        self.client_name = client_name
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.backoff = Backoff(backoff_initial, backoff_cap, random)
        self.state = WAITING
        self.last_error: str | None = None  # the reason of the last failure, cleared when ready
        self.attempts = 0  # connection attempts since the last ready handshake, this one included
        self._clock = clock
        self._selector = selector
        self._log: _Log = logger if logger is not None else logging.getLogger(LOGGER_NAME)
        self._sock: socket.socket | None = None
        self._mask = 0
        self._reader: Any = None
        self._new_reader: Callable[[], Any] = _no_reader
        self._targets: list[tuple[int, Any]] = []  # (family, sockaddr) left to try in this attempt
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        self._pending: deque[Callback | None] = deque()
        self._waiting_since = 0.0  # when the oldest due reply began to be awaited
        self._retry_at: float | None = None
        self._deadline: float | None = None  # connect + handshake

    def __repr__(self) -> str:
        return f"<RedisLink {self.address.redacted} {self.state.value}>"

    # -- the owner's interface -------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether ``send`` may be called: the handshake is done and the link is up."""
        return self.state is READY

    @property
    def unsent_bytes(self) -> int:
        """Bytes of commands not yet taken by the kernel."""
        return self._out_bytes

    @property
    def pending_commands(self) -> int:
        """Commands sent or queued whose reply has not come (handshake included)."""
        return len(self._pending)

    def start(self) -> None:
        """Make the first attempt now (the owner wires its hooks first).

        Raises ``MissingExtra`` if hiredis is not installed: the one
        exception, and before anything is connected.
        """
        if self.state is WAITING and self._retry_at is None and not self.attempts:
            self._new_reader = reader_factory()
            self._attempt()

    def send(self, args: Sequence[Arg], callback: Callback | None = None) -> None:
        """Queue one command; ``callback(reply)`` is called exactly once.  Only while ``ready``."""
        if self.state is not READY:
            raise RuntimeError(f"the engine link is {self.state.value}, not ready: send from on_ready")
        self._queue(encode_command(args), callback)

    def send_encoded(self, command: bytes, callback: Callback | None = None) -> None:
        """``send`` for one command already in RESP (``encode_xadd``'s, say); the same contract."""
        if self.state is not READY:
            raise RuntimeError(f"the engine link is {self.state.value}, not ready: send from on_ready")
        self._queue(command, callback)

    def flush(self) -> None:
        """End of turn: everything queued leaves in one write, as far as the kernel takes it."""
        if self._out and not self._mask & WRITE and self.state in (HANDSHAKING, READY):
            self._write()

    # -- the loop's interface ----------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    @property
    def interest(self) -> int:
        """The selector events the link waits for now (0: no socket)."""
        return self._mask

    @property
    def wakeup_at(self) -> float | None:
        """When ``tick`` has something to do: the next attempt, or a deadline."""
        if self.state is WAITING:
            return self._retry_at
        if self.state in (CONNECTING, HANDSHAKING):
            return self._deadline
        if self.state is READY and self.reply_timeout is not None and self._pending:
            return self._waiting_since + self.reply_timeout
        return None

    def tick(self) -> None:
        """Act on the time: attempt again, or give up on a connect or a reply that is late."""
        due = self.wakeup_at
        if due is None:
            return
        now = self._clock()
        if now < due:
            return
        if self.state is WAITING:
            self._attempt()
        elif self.state is READY:
            self._fail(f"no reply from the engine for {self.reply_timeout:g} s")
        else:
            self._fail(f"no ready connection within {self.connect_timeout:g} s")

    def on_events(self, mask: int) -> None:
        """The selector reported the link's socket with ``mask``."""
        if self.state is CONNECTING:
            self._finish_connect()
            return
        if mask & WRITE and self._out and self.state in (HANDSHAKING, READY):
            self._write()
        if mask & READ and self.state in (HANDSHAKING, READY):
            self._read()

    def close(self) -> None:
        """Close for good: no reconnect, pending callbacks get ``LinkLost("closed")``, no on_lost."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._drop_socket()
        self._fail_pending("the link was closed")

    # -- attempts ---------------------------------------------------------------

    def _attempt(self) -> None:
        self.state = CONNECTING
        self.attempts += 1
        self._retry_at = None
        self._deadline = self._clock() + self.connect_timeout
        try:
            self._targets = self._resolve()
        except OSError as error:
            self._fail(f"cannot resolve {self.address.host}: {_describe(error)}")
            return
        self._connect_next(None)

    def _resolve(self) -> list[tuple[int, Any]]:
        address = self.address
        if address.path is not None:
            if not hasattr(socket, "AF_UNIX"):
                raise OSError("unix sockets are not available on this platform")
            return [(socket.AF_UNIX, address.path)]
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]

    def _connect_next(self, error: str | None) -> None:
        """Connect to the next address of this attempt; with none left, the attempt failed."""
        while self._targets:
            family, sockaddr = self._targets.pop(0)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:  # out of file descriptors, say
                error = _describe(exc)
                continue
            sock.setblocking(False)
            try:
                code = sock.connect_ex(sockaddr)
            except OSError as exc:  # a unix path that is too long, say
                error = _describe(exc)
            else:
                if code == 0 or code in _IN_PROGRESS:
                    self._sock = sock
                    if code == 0:
                        self._connected()
                    else:
                        self._set_mask(WRITE)  # writable: the connect finished, one way or the other
                    return
                error = _strerror(code)
            sock.close()
        self._fail(error or "no address to connect to")

    def _finish_connect(self) -> None:
        assert self._sock is not None
        try:
            code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as error:
            code = error.errno or -1
        if code:
            self._drop_socket()
            self._connect_next(_strerror(code))
            return
        self._connected()

    def _connected(self) -> None:
        """The socket is up: send the handshake, pipelined."""
        assert self._sock is not None
        if self._sock.family != getattr(socket, "AF_UNIX", None):
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._targets = []
        self.state = HANDSHAKING
        self._reader = self._new_reader()
        address = self.address
        steps: list[tuple[str, list[Arg]]] = []
        if address.password is not None:
            auth: list[Arg] = ["AUTH", address.password.encode("utf-8", "surrogateescape")]
            if address.username is not None:
                auth.insert(1, address.username)
            steps.append(("AUTH", auth))
        if address.db:
            steps.append((f"SELECT {address.db}", ["SELECT", address.db]))
        steps.append(("CLIENT SETNAME", ["CLIENT", "SETNAME", self.client_name]))
        for index, (what, args) in enumerate(steps):
            self._queue(encode_command(args), self._handshake_step(what, last=index == len(steps) - 1))
        self._write()

    def _handshake_step(self, what: str, last: bool) -> Callback:
        def step(reply: Any) -> None:
            if isinstance(reply, LinkLost):
                return  # the attempt already failed; its reason is logged
            if isinstance(reply, EngineError):
                self._fail(f"{what} refused: {reply}")
            elif last:
                self._became_ready()

        return step

    def _became_ready(self) -> None:
        self.state = READY
        self._deadline = None
        self.backoff.reset()
        self._log.log(
            logging.INFO, "engine %s: connected (attempt %d)", self.address.redacted, self.attempts
        )
        self.attempts = 0
        self.last_error = None
        if self.on_ready is not None:
            self._call(self.on_ready)

    def _fail(self, reason: str) -> None:
        """Any failure: drop the socket, schedule the next attempt, tell everyone once."""
        reason = self._scrub(reason)
        was_ready = self.state is READY
        self._drop_socket()
        delay = self.backoff.next_delay()
        self.state = WAITING
        self._deadline = None
        self._retry_at = self._clock() + delay
        self.last_error = reason
        if was_ready:
            self._log.log(
                logging.WARNING, "engine %s: connection lost (%s); reconnecting in %.2f s",
                self.address.redacted, reason, delay,
            )
        else:
            self._log.log(
                logging.WARNING, "engine %s: connection attempt %d failed (%s); retrying in %.2f s",
                self.address.redacted, self.attempts, reason, delay,
            )
        self._fail_pending(reason)
        if self.on_lost is not None:
            self._call(self.on_lost, reason)

    def _scrub(self, reason: str) -> str:
        password = self.address.password
        return reason.replace(password, "***") if password else reason

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, deque()
        for callback in pending:
            if callback is not None:
                self._call(callback, LinkLost(reason))

    def _drop_socket(self) -> None:
        self._set_mask(0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._reader = None
        self._out.clear()
        self._out_bytes = 0

    # -- bytes -----------------------------------------------------------------

    def _queue(self, data: bytes, callback: Callback | None) -> None:
        if not self._pending:
            self._waiting_since = self._clock()
        self._out.append(data)
        self._out_bytes += len(data)
        self._pending.append(callback)

    def _write(self) -> None:
        sock = self._sock
        assert sock is not None
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self._fail(f"write failed: {_describe(error)}")
            return
        if sent == len(data):
            out.clear()
            self._out_bytes = 0
        else:
            out[:] = [memoryview(data)[sent:]]
            self._out_bytes = len(data) - sent
        self._set_mask(READ | (WRITE if self._out else 0))

    def _read(self) -> None:
        sock, reader = self._sock, self._reader
        assert sock is not None
        for _ in range(READS_PER_EVENT):
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._fail(f"read failed: {_describe(error)}")
                return
            if not data:
                self._fail("the engine closed the connection")
                return
            reader.feed(data)
            if not self._deliver(reader) or len(data) < READ_SIZE:
                return

    def _deliver(self, reader: Any) -> bool:
        """Hand every complete reply to its callback; False once the link has moved on."""
        while True:
            try:
                reply = reader.gets()
            except Exception as error:  # hiredis.ProtocolError: not Redis, or a corrupt stream
                self._fail(f"protocol error from the engine: {error}")
                return False
            if reply is False:
                return True
            if not self._pending:
                self._fail("a reply came that no command asked for")
                return False
            callback = self._pending.popleft()
            self._waiting_since = self._clock() if self._pending else 0.0
            if callback is not None:
                self._call(callback, reply)
            if self._reader is not reader:  # the callback closed it, or it failed
                return False

    def _call(self, function: Callable[..., None], *args: object) -> None:
        """Run an owner's callback; its exception is logged, never raised into the loop."""
        try:
            function(*args)
        except Exception:
            self._log.log(logging.ERROR, "engine %s: a callback failed", self.address.redacted, exc_info=True)

    # -- the selector ------------------------------------------------------------

    def _set_mask(self, mask: int) -> None:
        if mask == self._mask:
            return
        selector = self._selector
        if selector is not None and self._sock is not None:
            if not mask:
                selector.unregister(self._sock)
            elif not self._mask:
                selector.register(self._sock, mask, self)
            else:
                selector.modify(self._sock, mask, self)
        self._mask = mask


def _no_reader() -> Any:
    raise AssertionError("start() makes the reader factory")


def _strerror(code: int) -> str:
    try:
        return os.strerror(code)
    except (ValueError, OverflowError):
        return f"error {code}"


def _describe(error: OSError) -> str:
    """``Connection refused`` rather than ``[Errno 111] Connection refused``."""
    return error.strerror or str(error) or type(error).__name__

