"""The chat protocol as one deterministic state machine.

Theory of operation
-------------------
``ChatMachine.handle(event)`` takes one event (``protocol.events``) and
returns the list of effects (``protocol.effects``) it causes, in order.  That
is the whole interface.  The machine does no I/O, reads no clock and keeps no
global state: everything it knows lives in one instance, so two machines in
one process never interfere, and the same events always give the same
effects.  That is what lets Hypothesis drive it without sockets.

Each connection is in one of three states; everything that changes a state
is in this table, and nowhere else::

    state           event                         next state
    --------------  ----------------------------  --------------
    (new)           ConnectionOpened, room left   AWAITING_LOGIN
    (new)           ConnectionOpened, full or     CLOSING  (ERR server-full /
                    shutting down                            server-shutting-down)
    AWAITING_LOGIN  LOGIN with a free valid name  LOGGED_IN (OK)
    AWAITING_LOGIN  a line that looks like HTTP   CLOSING  (no reply)
    AWAITING_LOGIN  TLSHelloReceived              CLOSING  (no reply)
    any but CLOSING QUIT or EXIT                  CLOSING  (Goodbye!)
    any but CLOSING IdleTimedOut, or one of the   CLOSING  (ERR idle-timeout)
                    ConnectionsTimedOut
    any but CLOSING ShutdownStarted               CLOSING  (ERR server-shutting-down)
    any             ConnectionClosed(s)           (forgotten)

Every other event leaves the state as it is.  A CLOSING connection ignores
all input: the machine has asked for it to be closed, and nothing it sent
afterwards may run.  Leaving LOGGED_IN, by any route except shutdown, sends
``INFO <name> disconnected`` to the users who remain.

Where the time goes
-------------------
A MSG is the hot path.  The line is handled as bytes from start to end:
``isascii`` stands in for UTF-8 validation for almost every line, the
command word is one ``partition`` and one dict lookup, control characters
are looked for with one regex search, and the outgoing line is the sender's
precomputed ``MSG <name> `` prefix plus the text as it arrived.  The
recipients are not touched at all: the ``Broadcast`` effect carries the
room's current audience, a tuple built once per change of membership and
shared by every broadcast until the next change.  So a MSG costs the same in
a room of 2 and a room of 10,000; delivering it is the reactor's job.

Replies to WHO are cached the same way, so repeated WHOs in a big room cost
one dict lookup each.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from . import wire
from .commands import ALLOWED_BEFORE_LOGIN, COMMAND_WORDS, Command, looks_like_http
from .effects import Broadcast, Close, CloseReason, Deliver, Effect, Reply
from .events import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsClosed,
    ConnectionsTimedOut,
    ConnId,
    Event,
    IdleTimedOut,
    LineReceived,
    LineTooLong,
    ShutdownStarted,
    TelnetOptionRequested,
    TLSHelloReceived,
)
from .names import Username, maybe_name_key, parse_username
from .text import WHITESPACE, clean_text, is_utf8, split_word


class ProtocolUsageError(Exception):
    """The caller broke the event contract (see ``protocol.events``).

    Only a programming error in the caller raises this; no bytes from a
    client can.
    """


class ConnState(enum.Enum):
    """Where one connection stands in the protocol."""

    AWAITING_LOGIN = "awaiting-login"
    LOGGED_IN = "logged-in"
    CLOSING = "closing"


AWAITING_LOGIN = ConnState.AWAITING_LOGIN
LOGGED_IN = ConnState.LOGGED_IN
CLOSING = ConnState.CLOSING

_OK = wire.OK
_PONG = wire.PONG
_GOODBYE = wire.GOODBYE
_ERR_ALREADY_LOGGED_IN = wire.error("already-logged-in")
_ERR_IDLE_TIMEOUT = wire.error("idle-timeout")
_ERR_INVALID_USERNAME = wire.error("invalid-username")
_ERR_INVALID_UTF8 = wire.error("invalid-utf8")
_ERR_LINE_TOO_LONG = wire.error("line-too-long")
_ERR_MISSING_TEXT = wire.error("missing-text")
_ERR_MISSING_USERNAME = wire.error("missing-username")
_ERR_NOT_LOGGED_IN = wire.error("not-logged-in")
_ERR_SERVER_FULL = wire.error("server-full")
_ERR_SHUTTING_DOWN = wire.error("server-shutting-down")
_ERR_UNKNOWN_COMMAND = wire.error("unknown-command")
_ERR_USER_NOT_FOUND = wire.error("user-not-found")
_ERR_USERNAME_TAKEN = wire.error("username-taken")

_NEEDS_LOGIN = frozenset(
    word for word, command in COMMAND_WORDS.items() if command not in ALLOWED_BEFORE_LOGIN
)


class _Member:
    """A logged-in user, with the byte strings every line they cause begins with."""

    __slots__ = ("name", "msg_prefix", "_dm_prefix")

    def __init__(self, name: Username) -> None:
        self.name = name
        self.msg_prefix = wire.msg_prefix(name.wire)
        self._dm_prefix: bytes | None = None  # made at the first DM: most users never send one

    @property
    def dm_prefix(self) -> bytes:
        prefix = self._dm_prefix
        if prefix is None:
            prefix = self._dm_prefix = wire.dm_prefix(self.name.wire)
        return prefix


class _Session:
    """What the machine knows about one open connection."""

    __slots__ = ("state", "member", "admitted")

    def __init__(self, state: ConnState, admitted: bool) -> None:
        self.state = state
        self.member: _Member | None = None
        # Whether it holds one of the max_clients places (refused ones do not).
        self.admitted = admitted


class ChatMachine:
    """All of the chat protocol that needs no socket and no clock.

    ``max_clients`` bounds the connections admitted at once (``None``: no
    bound); the one after the last place gets ``ERR server-full``.
    """

    def __init__(self, *, max_clients: int | None = None) -> None:
        if max_clients is not None and max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self._max_clients = max_clients
        self._sessions: dict[ConnId, _Session] = {}
        self._members: dict[ConnId, _Member] = {}  # in login order
        self._conn_by_key: dict[str, ConnId] = {}
        self._admitted = 0
        self._shutting_down = False
        self._audience: tuple[ConnId, ...] | None = None
        self._who_reply: bytes | None = None
        self._event_handlers: dict[type, Callable[..., list[Effect]]] = {
            ConnectionOpened: self._connection_opened,
            LineReceived: self._line_received,
            LineTooLong: self._line_too_long,
            TelnetOptionRequested: self._telnet_option_requested,
            TLSHelloReceived: self._tls_hello_received,
            IdleTimedOut: self._idle_timed_out,
            ConnectionsTimedOut: self._connections_timed_out,
            ConnectionClosed: self._connection_closed,
            ConnectionsClosed: self._connections_closed,
            ShutdownStarted: self._shutdown_started,
        }
        self._command_handlers: dict[Command, Callable[..., list[Effect]]] = {
            Command.LOGIN: self._login,
            Command.MSG: self._msg,
            Command.WHO: self._who,
            Command.DM: self._dm,
            Command.PING: self._ping,
            Command.QUIT: self._quit,
        }
        self._handlers_by_word = {
            word: self._command_handlers[command] for word, command in COMMAND_WORDS.items()
        }

    # -- the interface -----------------------------------------------------

    def handle(self, event: Event) -> list[Effect]:
        """The effects of ``event``, in the order they must happen."""
        try:
            handler = self._event_handlers[type(event)]
        except KeyError:
            raise ProtocolUsageError(f"not a protocol event: {event!r}") from None
        return handler(event)

    def handle_msg(self, conn: ConnId, text: bytes) -> list[Effect]:
        """``handle(LineReceived(conn, b"MSG " + text))``, without making the line to parse it again.

        For a caller that already split the command word off (a cluster
        node's replica, for every MSG of the cluster).  A logged-in sender's
        line parses to exactly this: the trimmed ``text``, checked for
        UTF-8, then ``MSG``'s own rules; any other state takes the one path
        of every line.
        """
        session = self._sessions.get(conn)
        if session is None or session.state is not LOGGED_IN:
            return self._line_received(LineReceived(conn, b"MSG " + text))
        rest = text.strip(WHITESPACE)
        if not rest.isascii() and not is_utf8(rest):
            return [Reply(conn, _ERR_INVALID_UTF8)]
        return self._msg(conn, session, rest)

    def state_of(self, conn: ConnId) -> ConnState | None:
        """The state of ``conn``, or ``None`` if it is not open."""
        session = self._sessions.get(conn)
        return None if session is None else session.state

    def usernames(self) -> list[str]:
        """The logged-in users' names, in login order (what WHO lists)."""
        return [member.name.display for member in self._members.values()]

    @property
    def user_count(self) -> int:
        """How many users are logged in."""
        return len(self._members)

    def __len__(self) -> int:
        """The number of open connections the machine knows of."""
        return len(self._sessions)

    # -- events ------------------------------------------------------------

    def _connection_opened(self, event: ConnectionOpened) -> list[Effect]:
        conn = event.conn
        if conn in self._sessions:
            raise ProtocolUsageError(f"connection {conn!r} is already open")
        if self._shutting_down:
            return self._refuse(conn, _ERR_SHUTTING_DOWN, CloseReason.SHUTTING_DOWN)
        if self._max_clients is not None and self._admitted >= self._max_clients:
            return self._refuse(conn, _ERR_SERVER_FULL, CloseReason.SERVER_FULL)
        self._sessions[conn] = _Session(AWAITING_LOGIN, admitted=True)
        self._admitted += 1
        return []

    def _refuse(self, conn: ConnId, line: bytes, reason: CloseReason) -> list[Effect]:
        self._sessions[conn] = _Session(CLOSING, admitted=False)
        return [Reply(conn, line), Close(conn, reason)]

    def _line_received(self, event: LineReceived) -> list[Effect]:
        conn = event.conn
        session = self._sessions.get(conn)  # _session(), written out: this is every line's path
        if session is None:
            raise ProtocolUsageError(f"connection {conn!r} is not open")
        state = session.state
        if state is CLOSING:
            return []
        line = event.line.strip(WHITESPACE)
        if not line:
            return []
        if state is AWAITING_LOGIN and looks_like_http(line):
            session.state = CLOSING
            return [Close(conn, CloseReason.CROSS_PROTOCOL)]
        if not line.isascii() and not is_utf8(line):
            return [Reply(conn, _ERR_INVALID_UTF8)]
        word, rest = split_word(line)
        word = word.upper()
        handler = self._handlers_by_word.get(word)
        if handler is None:
            return [Reply(conn, _ERR_UNKNOWN_COMMAND)]
        if state is AWAITING_LOGIN and word in _NEEDS_LOGIN:
            return [Reply(conn, _ERR_NOT_LOGGED_IN)]
        return handler(conn, session, rest)

    def _line_too_long(self, event: LineTooLong) -> list[Effect]:
        if self._session(event.conn).state is CLOSING:
            return []
        return [Reply(event.conn, _ERR_LINE_TOO_LONG)]

    def _telnet_option_requested(self, event: TelnetOptionRequested) -> list[Effect]:
        if self._session(event.conn).state is CLOSING:
            return []
        return [Reply(event.conn, wire.telnet_refusal(event.command, event.option))]

    def _tls_hello_received(self, event: TLSHelloReceived) -> list[Effect]:
        session = self._session(event.conn)
        if session.state is not AWAITING_LOGIN:
            return []  # the framer only sees one at the start: a client that logged in never sends one
        session.state = CLOSING
        return [Close(event.conn, CloseReason.TLS_ON_PLAIN_PORT)]

    def _idle_timed_out(self, event: IdleTimedOut) -> list[Effect]:
        return self._time_out((event.conn,))

    def _connections_timed_out(self, event: ConnectionsTimedOut) -> list[Effect]:
        return self._time_out(event.conns)

    def _time_out(self, conns: Sequence[ConnId]) -> list[Effect]:
        """Close idle connections as one departure: ERR to each, one INFO per leaver to the rest."""
        sessions = self._open_sessions(conns)
        effects: list[Effect] = []
        leavers = []
        closing = []
        for conn, session in zip(conns, sessions, strict=True):
            if session.state is CLOSING:
                continue
            effects.append(Reply(conn, _ERR_IDLE_TIMEOUT))
            member = self._remove_member(conn, session)
            if member is not None:
                leavers.append(member)
            closing.append(conn)
        effects += self._announce_departures(leavers)
        effects += [Close(conn, CloseReason.IDLE_TIMEOUT) for conn in closing]
        return effects

    def _connection_closed(self, event: ConnectionClosed) -> list[Effect]:
        return self._forget([event.conn])

    def _connections_closed(self, event: ConnectionsClosed) -> list[Effect]:
        return self._forget(event.conns)

    def _forget(self, conns: Sequence[ConnId]) -> list[Effect]:
        """Drop connections that ended together; tell the users who remain about each."""
        self._open_sessions(conns)  # check every one before changing anything
        leavers = []
        for conn in conns:
            session = self._sessions.pop(conn)
            if session.admitted:
                self._admitted -= 1
            member = self._remove_member(conn, session)
            if member is not None:
                leavers.append(member)
        return self._announce_departures(leavers)

    def _shutdown_started(self, event: ShutdownStarted) -> list[Effect]:
        """Everyone is told and closed; nobody is told about anybody else leaving."""
        self._shutting_down = True
        effects: list[Effect] = []
        for conn, session in self._sessions.items():
            if session.state is not CLOSING:
                session.state = CLOSING
                session.member = None
                effects.append(Reply(conn, _ERR_SHUTTING_DOWN))
                effects.append(Close(conn, CloseReason.SHUTTING_DOWN))
        self._members.clear()
        self._conn_by_key.clear()
        self._membership_changed()
        return effects

    # -- commands ----------------------------------------------------------
    # Each takes the connection, its session and the bytes after the command
    # word (valid UTF-8, trimmed), and returns the effects.

    def _login(self, conn: ConnId, session: _Session, rest: bytes) -> list[Effect]:
        if session.state is LOGGED_IN:
            return [Reply(conn, _ERR_ALREADY_LOGGED_IN)]
        if not rest:
            return [Reply(conn, _ERR_MISSING_USERNAME)]
        name = parse_username(rest)
        if name is None:
            return [Reply(conn, _ERR_INVALID_USERNAME)]
        if name.key in self._conn_by_key:
            return [Reply(conn, _ERR_USERNAME_TAKEN)]
        member = _Member(name)
        session.state = LOGGED_IN
        session.member = member
        self._members[conn] = member
        self._conn_by_key[name.key] = conn
        self._membership_changed()
        return [Reply(conn, _OK)]

    def _msg(self, conn: ConnId, session: _Session, rest: bytes) -> list[Effect]:
        text = clean_text(rest)
        if not text:
            return [Reply(conn, _ERR_MISSING_TEXT)]
        line = self._members[conn].msg_prefix + text + b"\n"
        return [Broadcast(line, self._current_audience(), conn)]

    def _who(self, conn: ConnId, session: _Session, rest: bytes) -> list[Effect]:
        reply = self._who_reply
        if reply is None:
            reply = self._who_reply = b"".join(
                wire.user_line(member.name.wire) for member in self._members.values()
            )
        return [Reply(conn, reply)]

    def _dm(self, conn: ConnId, session: _Session, rest: bytes) -> list[Effect]:
        target_name, text = split_word(rest)
        text = clean_text(text)
        if not target_name or not text:
            return [Reply(conn, _ERR_MISSING_TEXT)]
        key = maybe_name_key(target_name)
        target = None if key is None else self._conn_by_key.get(key)
        if target is None:
            return [Reply(conn, _ERR_USER_NOT_FOUND)]
        return [Deliver(target, self._members[conn].dm_prefix + text + b"\n")]

    def _ping(self, conn: ConnId, session: _Session, rest: bytes) -> list[Effect]:
        return [Reply(conn, _PONG)]

    def _quit(self, conn: ConnId, session: _Session, rest: bytes) -> list[Effect]:
        effects: list[Effect] = [Reply(conn, _GOODBYE)]
        effects += self._leave(conn, session)
        effects.append(Close(conn, CloseReason.QUIT))
        return effects

    # -- membership --------------------------------------------------------

    def _open_sessions(self, conns: Sequence[ConnId]) -> list[_Session]:
        """The sessions of ``conns``, which must be open and distinct (the event contract)."""
        sessions = [self._session(conn) for conn in conns]
        if len(set(conns)) != len(conns):
            raise ProtocolUsageError(f"a connection is reported twice in one event: {conns!r}")
        return sessions

    def _session(self, conn: ConnId) -> _Session:
        try:
            return self._sessions[conn]
        except KeyError:
            raise ProtocolUsageError(f"connection {conn!r} is not open") from None

    def _leave(self, conn: ConnId, session: _Session) -> list[Effect]:
        """Mark ``conn`` CLOSING; if it was logged in, tell the others it left."""
        member = self._remove_member(conn, session)
        return self._announce_departures([] if member is None else [member])

    def _remove_member(self, conn: ConnId, session: _Session) -> _Member | None:
        """Mark ``conn`` CLOSING and log it out; the member it was, if any."""
        member = session.member
        session.state = CLOSING
        if member is not None:
            session.member = None
            del self._members[conn]
            del self._conn_by_key[member.name.key]
            self._membership_changed()
        return member

    def _announce_departures(self, leavers: list[_Member]) -> list[Effect]:
        """One INFO per leaver to every remaining user, all sharing one audience."""
        if not leavers or not self._members:
            return []
        audience = self._current_audience()
        return [Broadcast(wire.disconnected(member.name.wire), audience) for member in leavers]

    def _membership_changed(self) -> None:
        self._audience = None
        self._who_reply = None

    def _current_audience(self) -> tuple[ConnId, ...]:
        audience = self._audience
        if audience is None:
            audience = self._audience = tuple(self._members)
        return audience
