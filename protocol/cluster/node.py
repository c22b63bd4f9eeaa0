"""One node of a cluster: its own clients, and its replica of the log's state.

Theory of operation
-------------------
``ClusterNode.handle(event)`` has the shape of ``ChatMachine.handle``: one
event in, a list of effects out, no I/O and no clock.  The events are a
standalone server's (with this node's own connection ids) plus those of
``protocol.cluster.events``; the effects are a standalone server's plus
``Append``.

A node does two jobs, kept apart:

1. **Local rules**, for its own connections only: framing errors, Telnet,
   the HTTP guard, ``PING``, unknown commands, ``--max-clients``, and which
   commands the log must see.  They need nobody else's state, so they are
   decided at once.
2. **Shared decisions**, in ``ClusterState`` (``protocol.cluster.state``):
   every line whose outcome depends on who else is logged in becomes an
   ``Append``; nothing is decided when it is sent.  When the entry comes
   back in a ``LogRead``, the replica decides, exactly as every other node
   decides, and the node keeps the effects that concern its own clients.

What goes to the log, and what stays
------------------------------------
A connection's *state* (awaiting login or logged in) changes only through
the log.  While one of its ``LOGIN`` entries (or a raw ``Line``) is on its
way, the node cannot know that state, so any line whose meaning depends on
it goes to the log too and the replica decides: a ``MSG`` then may end as
``ERR not-logged-in``, a second ``LOGIN`` as ``ERR already-logged-in``.
Once every such entry is back, the state is *settled* and the node decides
the state-dependent errors locally again.  So an anonymous client reaches
the log only while a ``LOGIN`` of its own is on its way, and no faster
than flood control lets any user send.

Local answers go out at once (or queue, see below); entries are appended::

    line            awaiting login      logged in              unknown (LOGIN on its way)
    --------------  ------------------  ---------------------  --------------------------
    blank           nothing             nothing                nothing
    HTTP-looking    close, no reply     ERR unknown-command    Line entry
    invalid UTF-8   ERR invalid-utf8    ERR invalid-utf8       ERR invalid-utf8
    unknown word    ERR unknown-command ERR unknown-command    ERR unknown-command
    PING            PONG                PONG                   PONG
    LOGIN           Login entry         ERR already-logged-in  Login entry
    MSG, DM, WHO    ERR not-logged-in   Msg, Dm, Who entry     Msg, Dm, Who entry
    QUIT, EXIT      Quit entry          Quit entry             Quit entry

A connection that quit, timed out or is being closed ignores every line.

Replies keep the order of commands
----------------------------------
A local reply (``PONG``, ``ERR unknown-command``, a Telnet refusal) to a
connection that has entries on their way waits behind them: it is queued
with the count of entries the connection had appended, and sent as soon as
that many are back, right after the replica's replies to the last of them.
So ``WHO`` then ``PING`` gives the ``USER`` lines and then ``PONG``, and a
transcript reads as if the standalone server had handled the connection's
commands at the points the log put them.

Departures go through the log as well: ``QUIT`` and an idle timeout become
entries, and ``Goodbye!`` or ``ERR idle-timeout`` come when the replica
folds them, together with the ``INFO`` everyone else gets at that same
point.  A connection that ends is appended as ``Closed`` if the log knows
it.  Only closes the standalone server has no equivalent for are local and
immediate: ``ERR server-shutting-down`` (this node stops; it appends
``NodeDown`` for itself, so everyone else gets an ``INFO`` per user) and
``ERR server-unavailable`` (it lost the cluster; see ``ClusterUnavailable``).
Replies still waiting for the log are dropped then: the client gets the
close instead.

The hot path keeps its shape
----------------------------
A MSG from a local client costs a classification and one encoded entry.  A
MSG read from the log costs a decode, one ``ChatMachine.handle_msg`` in the
replica (the MSG's rules, with no line made to be parsed again), and a
``Broadcast`` whose audience is this node's logged-in clients: a tuple
built when *local* membership changes and shared by every broadcast until
then, as ``ChatMachine`` does, so the reactor's outbox still sends a turn's
broadcasts from one shared buffer.  Logins elsewhere in the cluster do not
rebuild it.

Joining and leaving
-------------------
A node starts from a snapshot (or an empty state) and folds the log after
it.  ``NodeStarted`` makes it append ``NodeUp``; once it reads that entry
back it has folded everything before it, its replica is current, and it
serves clients (before that it refuses them with ``ERR
server-unavailable``).  It leaves with ``NodeDown``: its own at shutdown, or
another node's when its lease ran out (``NodeExpired``).  A node that reads
its own ``NodeDown`` while it thought itself alive was declared dead by the
others: it closes its clients with ``ERR server-unavailable`` and never
serves again, so its users are not resurrected.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from typing import cast

from .. import wire
from ..commands import COMMAND_WORDS, Command, looks_like_http
from ..effects import Broadcast, Close, CloseReason, Deliver, Effect, Reply
from ..events import (
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
from ..machine import ConnState, ProtocolUsageError
from ..text import WHITESPACE, is_utf8, split_word
from .codec import DecodeError, varint
from .entries import (
    Closed,
    Dm,
    Entry,
    Idle,
    Line,
    Login,
    Msg,
    NodeDown,
    NodeUp,
    Quit,
    Who,
    decode_entry,
    decode_msg,
    encode_entry,
    msg_head,
)
from .events import Append, ClusterUnavailable, LogRead, NodeExpired, NodeStarted
from .snapshot import Snapshot
from .state import ClusterState, GlobalId

NodeEffect = Effect | Append
NodeEvent = Event | NodeStarted | LogRead | NodeExpired | ClusterUnavailable

AWAITING_LOGIN = ConnState.AWAITING_LOGIN
LOGGED_IN = ConnState.LOGGED_IN
CLOSING = ConnState.CLOSING

_PONG = wire.PONG
_ERR_ALREADY_LOGGED_IN = wire.error("already-logged-in")
_ERR_IDLE_TIMEOUT = wire.error("idle-timeout")
_ERR_INVALID_UTF8 = wire.error("invalid-utf8")
_ERR_LINE_TOO_LONG = wire.error("line-too-long")
_ERR_NOT_LOGGED_IN = wire.error("not-logged-in")
_ERR_SERVER_FULL = wire.error("server-full")
_ERR_SHUTTING_DOWN = wire.error("server-shutting-down")
_ERR_UNAVAILABLE = wire.error("server-unavailable")
_ERR_UNKNOWN_COMMAND = wire.error("unknown-command")


class Phase(enum.Enum):
    """Where the node stands in the cluster."""

    NEW = "new"  # constructed; folding the log, not yet announced
    JOINING = "joining"  # NodeUp appended, not yet read back
    JOINED = "joined"  # serving clients
    SHUTTING_DOWN = "shutting-down"  # ShutdownStarted: NodeDown of its own appended
    DOWN = "down"  # lost the cluster: never serves again


class _Local:
    """One of this node's own connections."""

    __slots__ = (
        "conn", "number", "admitted", "closing", "close_sent", "member",
        "in_log", "appended", "folded", "unsettled_until", "queue", "number_bytes",
    )

    def __init__(self, conn: ConnId, number: int, admitted: bool) -> None:
        self.conn = conn
        self.number = number  # its conn number in entries; (node id, number) is its global id
        self.number_bytes = varint(number)  # encoded once, for the MSG hot path
        self.admitted = admitted  # holds one of the max_clients places
        self.closing = False  # ignores input: it quit, timed out, or a Close is sent or queued
        self.close_sent = False  # a Close effect went out: nothing more is sent to it
        self.member = False  # logged in and sent to: in the local audience
        self.in_log = False  # it has appended an entry, so the log will see it end
        self.appended = 0  # its entries appended ...
        self.folded = 0  # ... and read back
        self.unsettled_until = 0  # its state is unknown until `folded` reaches this
        self.queue: deque[tuple[int, Effect]] = deque()  # local replies waiting for the log


class ClusterNode:
    """A node of the cluster; see the module docstring.

    ``node_id`` must be unique to this node's lifetime, never reused (the
    engine hands them out); ``snapshot`` is where its replica starts;
    ``max_clients`` bounds this node's own connections.
    """

    def __init__(
        self, node_id: int, *, snapshot: Snapshot | None = None, max_clients: int | None = None
    ) -> None:
        if max_clients is not None and max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.node_id = node_id
        self._state = ClusterState() if snapshot is None else ClusterState.from_snapshot(snapshot)
        self._phase = Phase.NEW
        self._max_clients = max_clients
        self._admitted = 0
        self._serial = 0
        self._msg_head = msg_head(node_id)
        self._unconfirmed: deque[tuple[int, bytes, tuple[_Local, ...]]] = deque()  # with whose entry it is
        self._unconfirmed_bytes = 0
        self._locals: dict[ConnId, _Local] = {}
        self._by_number: dict[int, _Local] = {}
        self._next_number = 0
        self._members: dict[ConnId, None] = {}  # local audience, in login order
        self._audience: tuple[ConnId, ...] | None = None
        self.malformed = 0  # entries read that did not decode (skipped by every node alike)
        self._event_handlers: dict[type, Callable[..., list[NodeEffect]]] = {
            ConnectionOpened: self._connection_opened,
            LineReceived: self._line_received,
            LineTooLong: self._line_too_long,
            TelnetOptionRequested: self._telnet_option_requested,
            IdleTimedOut: self._idle_timed_out,
            ConnectionsTimedOut: self._connections_timed_out,
            TLSHelloReceived: self._tls_hello_received,
            ConnectionClosed: self._connection_closed,
            ConnectionsClosed: self._connections_closed,
            ShutdownStarted: self._shutdown_started,
            NodeStarted: self._node_started,
            LogRead: self._log_read,
            NodeExpired: self._node_expired,
            ClusterUnavailable: self._cluster_unavailable,
        }

    # -- the interface -----------------------------------------------------

    def handle(self, event: NodeEvent) -> list[NodeEffect]:
        """The effects of ``event``, in the order they must happen."""
        try:
            handler = self._event_handlers[type(event)]
        except KeyError:
            raise ProtocolUsageError(f"not a cluster node event: {event!r}") from None
        return handler(event)

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def joined(self) -> bool:
        """Whether the node serves clients (it read its own ``NodeUp`` and is not down)."""
        return self._phase is Phase.JOINED

    @property
    def position(self) -> str:
        """The log position of the last entry folded (``""`` before any)."""
        return self._state.position

    def snapshot(self) -> Snapshot:
        """The replicated state at ``position``, for a node that starts later."""
        return self._state.snapshot()

    def live_nodes(self) -> list[int]:
        """The nodes whose entries count now; a lease keeper watches the others' leases."""
        return sorted(self._state.live)

    def usernames(self) -> list[str]:
        """Every logged-in user of the cluster at ``position``, in login order."""
        return self._state.usernames()

    def unconfirmed(self) -> list[bytes]:
        """This node's entries appended but not yet read back, in order.

        After a reconnect to the engine, append them again: the fold ignores
        the copies of those that had made it.
        """
        return [data for _, data, _ in self._unconfirmed]

    @property
    def unconfirmed_bytes(self) -> int:
        """The bytes of ``unconfirmed()``, kept as entries come and go (for a bound on memory)."""
        return self._unconfirmed_bytes

    @property
    def unconfirmed_count(self) -> int:
        """``len(unconfirmed())`` without the list: each entry also costs its objects' overhead."""
        return len(self._unconfirmed)

    @property
    def user_count(self) -> int:
        """How many of this node's own clients are logged in."""
        return len(self._members)

    def conn_number(self, conn: ConnId) -> int:
        """The number entries give ``conn``; ``(node_id, number)`` names it cluster-wide."""
        return self._local(conn).number

    def waiting(self, conn: ConnId) -> int:
        """How many of ``conn``'s commands wait for the log (a caller may stop reading it)."""
        local = self._local(conn)
        return local.appended - local.folded + len(local.queue)

    def state_of(self, conn: ConnId) -> ConnState | None:
        """``conn``'s state as this node knows it now, or ``None`` if it is not open."""
        local = self._locals.get(conn)
        if local is None:
            return None
        if local.closing:
            return CLOSING
        return LOGGED_IN if local.member else AWAITING_LOGIN

    def __len__(self) -> int:
        """The number of this node's open connections."""
        return len(self._locals)

    # -- the node's own life -----------------------------------------------

    def _node_started(self, event: NodeStarted) -> list[NodeEffect]:
        if self._phase is not Phase.NEW:
            raise ProtocolUsageError("a node starts once")
        self._phase = Phase.JOINING
        return [self._append(NodeUp(self.node_id, self._serial + 1))]

    def _node_expired(self, event: NodeExpired) -> list[NodeEffect]:
        if event.node == self.node_id:
            return self._cluster_unavailable(ClusterUnavailable())
        if self._phase is not Phase.JOINED or event.node not in self._state.live:
            return []
        return [self._append(NodeDown(self.node_id, self._serial + 1, event.node))]

    def _cluster_unavailable(self, event: ClusterUnavailable) -> list[NodeEffect]:
        effects: list[NodeEffect] = []
        if self._phase in (Phase.JOINING, Phase.JOINED):
            # Best effort: if it ever reaches the log, the others need not wait for the lease.
            effects.append(self._append(NodeDown(self.node_id, self._serial + 1, self.node_id)))
        if self._phase is not Phase.SHUTTING_DOWN:
            self._phase = Phase.DOWN
        effects += self._close_all(_ERR_UNAVAILABLE, CloseReason.SERVER_UNAVAILABLE)
        return effects

    def _shutdown_started(self, event: ShutdownStarted) -> list[NodeEffect]:
        effects: list[NodeEffect] = []
        if self._phase in (Phase.JOINING, Phase.JOINED):
            effects.append(self._append(NodeDown(self.node_id, self._serial + 1, self.node_id)))
        self._phase = Phase.SHUTTING_DOWN
        effects += self._close_all(_ERR_SHUTTING_DOWN, CloseReason.SHUTTING_DOWN)
        return effects

    def _close_all(self, line: bytes, reason: CloseReason) -> list[NodeEffect]:
        """Close every connection not yet closed, at once, dropping replies that wait for the log."""
        effects: list[NodeEffect] = []
        for local in self._locals.values():
            if not local.close_sent:
                local.queue.clear()
                effects.append(Reply(local.conn, line))
                self._mark_closed(local)
                effects.append(Close(local.conn, reason))
        return effects

    # -- connections -------------------------------------------------------

    def _connection_opened(self, event: ConnectionOpened) -> list[NodeEffect]:
        conn = event.conn
        if conn in self._locals:
            raise ProtocolUsageError(f"connection {conn!r} is already open")
        phase = self._phase
        if phase is Phase.SHUTTING_DOWN:
            return self._refuse(conn, _ERR_SHUTTING_DOWN, CloseReason.SHUTTING_DOWN)
        if phase is not Phase.JOINED:
            return self._refuse(conn, _ERR_UNAVAILABLE, CloseReason.SERVER_UNAVAILABLE)
        if self._max_clients is not None and self._admitted >= self._max_clients:
            return self._refuse(conn, _ERR_SERVER_FULL, CloseReason.SERVER_FULL)
        self._add_local(conn, admitted=True)
        self._admitted += 1
        return []

    def _refuse(self, conn: ConnId, line: bytes, reason: CloseReason) -> list[NodeEffect]:
        local = self._add_local(conn, admitted=False)
        self._mark_closed(local)
        return [Reply(conn, line), Close(conn, reason)]

    def _add_local(self, conn: ConnId, admitted: bool) -> _Local:
        self._next_number += 1
        local = self._locals[conn] = _Local(conn, self._next_number, admitted)
        self._by_number[local.number] = local
        return local

    def _connection_closed(self, event: ConnectionClosed) -> list[NodeEffect]:
        return self._forget([event.conn])

    def _connections_closed(self, event: ConnectionsClosed) -> list[NodeEffect]:
        return self._forget(event.conns)

    def _forget(self, conns: Sequence[ConnId]) -> list[NodeEffect]:
        """Drop connections that ended together; the log hears of those it knows, in one entry."""
        for conn in conns:
            self._local(conn)  # every one must be open: check before changing anything
        if len(set(conns)) != len(conns):
            raise ProtocolUsageError(f"a connection is reported closed twice: {conns!r}")
        numbers = []
        for conn in conns:
            local = self._locals.pop(conn)
            del self._by_number[local.number]
            if local.admitted:
                self._admitted -= 1
            self._leave_audience(local)
            local.closing = local.close_sent = True  # nothing more for it, whatever the log says
            local.queue.clear()
            if local.in_log:
                numbers.append(local.number)
        if not numbers or self._phase not in (Phase.JOINING, Phase.JOINED):
            return []
        return [self._append(Closed(self.node_id, self._serial + 1, tuple(numbers)))]

    def _local(self, conn: ConnId) -> _Local:
        try:
            return self._locals[conn]
        except KeyError:
            raise ProtocolUsageError(f"connection {conn!r} is not open") from None

    # -- lines -------------------------------------------------------------

    def _line_received(self, event: LineReceived) -> list[NodeEffect]:
        local = self._locals.get(event.conn)
        if local is None:
            local = self._local(event.conn)  # (raises)
        if local.closing:
            return []
        line = event.line.strip(WHITESPACE)
        if not line:
            return []
        settled = local.folded >= local.unsettled_until
        logged_in = settled and local.member
        if not logged_in and looks_like_http(line):
            if not settled:
                return self._send_line(local, line)
            local.closing = True
            return self._answer(local, Close(local.conn, CloseReason.CROSS_PROTOCOL))
        if not line.isascii() and not is_utf8(line):
            return self._answer(local, Reply(local.conn, _ERR_INVALID_UTF8))
        if logged_in and line[:4].upper() == b"MSG ":  # the hot path: split_word's answer, sooner
            return self._send_msg(local, line[4:].lstrip(WHITESPACE))
        word, rest = split_word(line)
        command = COMMAND_WORDS.get(word.upper())
        if command is Command.MSG and logged_in:
            return self._send_msg(local, rest)
        return self._command(local, command, rest, settled, logged_in)

    def _command(
        self, local: _Local, command: Command | None, rest: bytes, settled: bool, logged_in: bool
    ) -> list[NodeEffect]:
        """A valid line that is not a logged-in user's MSG: local answer or entry."""
        if command is None:
            return self._answer(local, Reply(local.conn, _ERR_UNKNOWN_COMMAND))
        if command is Command.PING:
            return self._answer(local, Reply(local.conn, _PONG))
        if command is Command.QUIT:
            local.closing = True
            return [self._append(Quit(self.node_id, self._serial + 1, local.number), local)]
        if command is Command.LOGIN:
            if logged_in:
                return self._answer(local, Reply(local.conn, _ERR_ALREADY_LOGGED_IN))
            return self._send_line(local, rest, login=True)
        if settled and not logged_in:
            return self._answer(local, Reply(local.conn, _ERR_NOT_LOGGED_IN))
        if command is Command.MSG:
            return self._send_msg(local, rest)
        serial = self._serial + 1
        if command is Command.DM:
            return [self._append(Dm(self.node_id, serial, local.number, rest), local)]
        return [self._append(Who(self.node_id, serial, local.number), local)]

    def _send_msg(self, local: _Local, text: bytes) -> list[NodeEffect]:
        """``_append(Msg(...))``, from parts encoded once per node and per connection."""
        serial = self._serial = self._serial + 1
        data = self._msg_head + varint(serial) + local.number_bytes + text
        self._unconfirmed.append((serial, data, (local,)))
        self._unconfirmed_bytes += len(data)
        local.appended += 1
        local.in_log = True
        return [Append(data)]

    def _send_line(self, local: _Local, data: bytes, login: bool = False) -> list[NodeEffect]:
        """Append a line that may change the connection's state; it is unknown until it is back."""
        serial = self._serial + 1
        entry: Entry = (
            Login(self.node_id, serial, local.number, data) if login
            else Line(self.node_id, serial, local.number, data)
        )
        effect = self._append(entry, local)
        local.unsettled_until = local.appended
        return [effect]

    def _line_too_long(self, event: LineTooLong) -> list[NodeEffect]:
        local = self._local(event.conn)
        if local.closing:
            return []
        return self._answer(local, Reply(local.conn, _ERR_LINE_TOO_LONG))

    def _telnet_option_requested(self, event: TelnetOptionRequested) -> list[NodeEffect]:
        local = self._local(event.conn)
        if local.closing:
            return []
        return self._answer(local, Reply(local.conn, wire.telnet_refusal(event.command, event.option)))

    def _tls_hello_received(self, event: TLSHelloReceived) -> list[NodeEffect]:
        """A TLS client on the plaintext port: it never logged in, so this is local (the HTTP guard's way)."""
        local = self._local(event.conn)
        if local.closing or local.member:
            return []
        local.closing = True
        return self._answer(local, Close(local.conn, CloseReason.TLS_ON_PLAIN_PORT))

    def _idle_timed_out(self, event: IdleTimedOut) -> list[NodeEffect]:
        return self._timed_out((event.conn,))

    def _connections_timed_out(self, event: ConnectionsTimedOut) -> list[NodeEffect]:
        return self._timed_out(event.conns)

    def _timed_out(self, conns: Sequence[ConnId]) -> list[NodeEffect]:
        """Idle timeouts of one turn: one ``Idle`` entry for those the log knows, local closes for the rest.

        ``ConnectionsTimedOut`` (several in one turn, one departure) is this
        with all of them; the fold then hands the replica the same event.
        """
        effects: list[NodeEffect] = []
        known: list[_Local] = []
        for conn in conns:
            local = self._local(conn)
            if local.closing:
                continue
            local.closing = True
            if local.in_log:
                known.append(local)
            else:  # the log never saw it: nobody else needs to know
                effects += self._answer(local, Reply(local.conn, _ERR_IDLE_TIMEOUT))
                effects += self._answer(local, Close(local.conn, CloseReason.IDLE_TIMEOUT))
        if known:
            numbers = tuple(local.number for local in known)
            effects.append(self._append(Idle(self.node_id, self._serial + 1, numbers), *known))
        return effects

    # -- appending ---------------------------------------------------------

    def _append(self, entry: Entry, *about: _Local) -> Append:
        return self._appended(about, encode_entry(entry), entry.serial)

    def _appended(self, about: tuple[_Local, ...], data: bytes, serial: int) -> Append:
        """Record the entry ``data``, made with the next serial, as on its way.

        ``about`` are the connections whose commands it carries: their
        replies wait for it.
        """
        self._serial = serial
        self._unconfirmed.append((serial, data, about))
        self._unconfirmed_bytes += len(data)
        for local in about:
            local.appended += 1
            local.in_log = True
        return Append(data)

    def _answer(self, local: _Local, effect: Effect) -> list[NodeEffect]:
        """Send a local reply (or close) now, or queue it behind the connection's entries on their way."""
        if local.folded < local.appended:
            local.queue.append((local.appended, effect))
            return []
        if type(effect) is Close:
            self._mark_closed(local)
        return [effect]

    # -- reading the log ---------------------------------------------------

    def _log_read(self, event: LogRead) -> list[NodeEffect]:
        effects: list[NodeEffect] = []
        fold_msg = self._state.fold_msg
        me = self.node_id
        for data in event.entries:
            try:
                msg = decode_msg(data)
                entry = decode_entry(data) if msg is None else None
            except DecodeError:
                self.malformed += 1
                continue
            if msg is None:
                self._fold(cast(Entry, entry), effects)
                continue
            author, serial, conn, text = msg  # the hot path: a MSG, with no entry object
            shared = fold_msg(author, serial, conn, text)
            if shared:
                self._keep_local(shared, effects)
            if author == me:
                self._confirm(serial, effects)
        self._state.position = event.position
        return effects

    def _fold(self, entry: Entry, effects: list[NodeEffect]) -> None:
        me = self.node_id
        shared = self._state.fold(entry)
        if isinstance(entry, NodeDown):
            if entry.node == me and me not in self._state.live:
                self._declared_down(effects)
        elif entry.author == me and type(entry) is not Msg:
            self._note_own_entry(entry)
        if shared:
            self._keep_local(shared, effects)
        if entry.author == me:
            self._confirm(entry.serial, effects)

    def _note_own_entry(self, entry: Entry) -> None:
        """After one of this node's own entries: its phase, or a connection's membership."""
        if isinstance(entry, (Login, Line, Quit)):
            numbers: tuple[int, ...] = (entry.conn,)
        elif isinstance(entry, Idle):
            numbers = entry.conns
        else:
            joined = self.node_id in self._state.live
            if isinstance(entry, NodeUp) and self._phase is Phase.JOINING and joined:
                self._phase = Phase.JOINED  # everything before this entry is folded: serve
            return
        for number in numbers:
            local = self._by_number.get(number)
            if local is not None:
                self._refresh_member(local)

    def _declared_down(self, effects: list[NodeEffect]) -> None:
        """The log says this node is gone: its clients are closed, never resurrected."""
        if self._phase in (Phase.JOINING, Phase.JOINED, Phase.NEW):
            self._phase = Phase.DOWN
        # Before the replica's INFO lines for its users: they reach nobody here.
        effects += self._close_all(_ERR_UNAVAILABLE, CloseReason.SERVER_UNAVAILABLE)

    def _keep_local(self, shared: list[Effect], effects: list[NodeEffect]) -> None:
        """Translate the replica's effects (global ids) into this node's (local ids)."""
        me = self.node_id
        by_number = self._by_number
        for effect in shared:
            if isinstance(effect, Broadcast):  # every MSG: no method call, no cast() here
                audience = self._audience
                if audience is None:
                    audience = self._current_audience()
                if audience:
                    exclude: GlobalId | None = effect.exclude  # type: ignore[assignment]
                    sender = None
                    if exclude is not None and exclude[0] == me:
                        local = by_number.get(exclude[1])
                        if local is not None and local.member:
                            sender = local.conn
                    effects.append(Broadcast(effect.data, audience, sender))
                continue
            g = cast(GlobalId, effect.conn)
            if g[0] != me:
                continue
            local = by_number.get(g[1])
            if local is None or local.close_sent:
                continue
            if isinstance(effect, Reply):
                effects.append(Reply(local.conn, effect.data))
            elif isinstance(effect, Deliver):
                effects.append(Deliver(local.conn, effect.data))
            else:
                local.closing = True
                local.queue.clear()
                self._mark_closed(local)
                effects.append(Close(local.conn, effect.reason))

    def _confirm(self, serial: int, effects: list[NodeEffect]) -> None:
        """This node's entries up to ``serial`` are back: release what waited for them."""
        unconfirmed = self._unconfirmed
        while unconfirmed and unconfirmed[0][0] <= serial:
            _, data, about = unconfirmed.popleft()
            self._unconfirmed_bytes -= len(data)
            for local in about:
                local.folded += 1
                queue = local.queue
                while queue and queue[0][0] <= local.folded:
                    effect = queue.popleft()[1]
                    if type(effect) is Close:
                        self._mark_closed(local)
                    effects.append(effect)

    # -- the local audience ------------------------------------------------

    def _refresh_member(self, local: _Local) -> None:
        """Put ``local`` in or out of the audience, as the replica and its close say."""
        member = (
            not local.close_sent
            and self._state.state_of((self.node_id, local.number)) is LOGGED_IN
        )
        if member and not local.member:
            local.member = True
            self._members[local.conn] = None
            self._audience = None
        elif not member:
            self._leave_audience(local)

    def _leave_audience(self, local: _Local) -> None:
        if local.member:
            local.member = False
            del self._members[local.conn]
            self._audience = None

    def _mark_closed(self, local: _Local) -> None:
        local.closing = local.close_sent = True
        self._leave_audience(local)

    def _current_audience(self) -> tuple[ConnId, ...]:
        audience = self._audience
        if audience is None:
            audience = self._audience = tuple(self._members)
        return audience
