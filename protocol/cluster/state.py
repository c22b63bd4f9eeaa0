"""The replicated state: one ``ChatMachine`` over global ids, fed by the log.

Theory of operation
-------------------
Every node holds a ``ClusterState`` and folds every log entry into it, in
log order.  The fold is a pure function of the entries, so every node that
has folded the same prefix holds the same state, and every decision taken
here (who got a name, who receives a MSG, whether a DM finds its user, what
WHO lists) is taken identically on every node.  This is state machine
replication; the log is the sequencer.

The protocol's rules are not written a second time.  The state runs the
standalone ``ChatMachine`` unchanged, with *global* connection ids
``(node, conn)`` as its connection ids, and turns each entry into the event
the standalone server would have seen::

    Login(conn, name)       LineReceived(g, b"LOGIN " + name)
    Msg / Dm / Who / Quit   LineReceived(g, b"MSG " + text) and so on
    Line(conn, line)        LineReceived(g, line)
    Idle(conns)             ConnectionsTimedOut of them (IdleTimedOut for one)
    Closed(conns)           ConnectionsClosed(gs)
    NodeDown(node)          ConnectionsClosed(all of that node's gs)

A connection is opened in the machine when its first entry is folded, so
a client that never sends a command the log must see costs the log
nothing.  The machine's effects name global ids; ``protocol.cluster.node``
keeps the ones for its own clients.

Around the machine the state keeps what makes the log safe to replay:

- *Membership of nodes.*  A node's entries count from its ``NodeUp`` until
  the first ``NodeDown`` that names it; the entries it appends after that
  (a node that was cut off and does not know it yet) are ignored, and so is
  a second ``NodeDown``.  A node id is never reused: ``retired`` remembers it.
- *Exactly once.*  Each node numbers its entries (``serial``); an entry
  whose serial is not above the last one applied from its author is a copy
  and is ignored.  So a node may append again whatever it is not sure
  reached the log.
- *Robustness.*  An entry about a connection the machine does not have open
  is skipped where the machine would call that a usage error, so no entry
  can make a node raise.

``snapshot`` and ``from_snapshot`` turn this state into a
``protocol.cluster.snapshot.Snapshot`` and back.
"""

from __future__ import annotations

from collections.abc import Callable

from ..effects import Effect
from ..events import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsClosed,
    ConnectionsTimedOut,
    IdleTimedOut,
    LineReceived,
)
from ..machine import ChatMachine, ConnState
from .codec import DecodeError
from .entries import Closed, Dm, Entry, Idle, Line, Login, Msg, NodeDown, NodeUp, Quit, Who
from .snapshot import Snapshot

GlobalId = tuple[int, int]
"""A connection anywhere in the cluster: (node id, that node's number for it)."""

LOGGED_IN = ConnState.LOGGED_IN
CLOSING = ConnState.CLOSING


class ClusterState:
    """The fold of the log: identical on every node at the same position."""

    def __init__(self) -> None:
        self.machine = ChatMachine()
        self.position = ""
        self.live: dict[int, int] = {}  # node id -> serial of its last entry applied
        self.retired: set[int] = set()
        self.ignored = 0  # entries not applied: copies, from nodes that are not live
        self._open: dict[GlobalId, None] = {}  # connections the machine has open
        self._members: dict[GlobalId, None] = {}  # logged in, in login order
        self._folders: dict[type, Callable[..., list[Effect]]] = {
            NodeUp: self._node_up,
            NodeDown: self._node_down,
            Login: self._login,
            Msg: self._msg,
            Dm: self._dm,
            Who: self._who,
            Quit: self._quit,
            Line: self._line,
            Idle: self._idle,
            Closed: self._closed,
        }

    # -- folding -----------------------------------------------------------

    def fold(self, entry: Entry) -> list[Effect]:
        """Apply ``entry``; the machine's effects, with global connection ids."""
        author = entry.author
        last = self.live.get(author)
        if last is None:
            if type(entry) is NodeUp and author not in self.retired:
                self.live[author] = entry.serial
            else:
                self.ignored += 1
            return []
        if entry.serial <= last:
            self.ignored += 1
            return []
        self.live[author] = entry.serial
        return self._folders[type(entry)](entry)

    def fold_msg(self, author: int, serial: int, conn: int, text: bytes) -> list[Effect]:
        """``fold(Msg(author, serial, conn, text))`` without the entry object: the hot path."""
        last = self.live.get(author)
        if last is None or serial <= last:
            self.ignored += 1
            return []
        self.live[author] = serial
        g = (author, conn)
        if g not in self._open:
            self._open_connection(g)
        return self.machine.handle_msg(g, text)

    def _node_up(self, entry: NodeUp) -> list[Effect]:
        self.ignored += 1  # the author is live already: a copy with a new serial
        return []

    def _node_down(self, entry: NodeDown) -> list[Effect]:
        node = entry.node
        if node not in self.live:
            self.ignored += 1
            return []
        del self.live[node]
        self.retired.add(node)
        # Users in login order first: that is the order of their INFO lines.
        leaving = [g for g in self._members if g[0] == node]
        leaving += [g for g in self._open if g[0] == node and g not in self._members]
        return self._close(leaving)

    def _login(self, entry: Login) -> list[Effect]:
        return self._line_changing_state((entry.author, entry.conn), b"LOGIN " + entry.name)

    def _msg(self, entry: Msg) -> list[Effect]:
        return self._command((entry.author, entry.conn), b"MSG " + entry.text)

    def _dm(self, entry: Dm) -> list[Effect]:
        return self._command((entry.author, entry.conn), b"DM " + entry.rest)

    def _who(self, entry: Who) -> list[Effect]:
        return self._command((entry.author, entry.conn), b"WHO")

    def _quit(self, entry: Quit) -> list[Effect]:
        return self._line_changing_state((entry.author, entry.conn), b"QUIT")

    def _line(self, entry: Line) -> list[Effect]:
        return self._line_changing_state((entry.author, entry.conn), entry.line)

    def _idle(self, entry: Idle) -> list[Effect]:
        # A node's idle timeouts of one turn are one entry, and one departure here.
        gs = [g for g in ((entry.author, conn) for conn in entry.conns) if g in self._open]
        if not gs:
            return []
        if len(gs) == 1:
            effects = self.machine.handle(IdleTimedOut(gs[0]))
        else:
            effects = self.machine.handle(ConnectionsTimedOut(tuple(gs)))
        for g in gs:
            self._note_state(g)
        return effects

    def _closed(self, entry: Closed) -> list[Effect]:
        gs = [(entry.author, conn) for conn in entry.conns]
        return self._close([g for g in gs if g in self._open])

    # -- helpers -----------------------------------------------------------

    def _command(self, g: GlobalId, line: bytes) -> list[Effect]:
        """A command that cannot change its connection's state (MSG, DM, WHO)."""
        if g not in self._open:
            self._open_connection(g)
        return self.machine.handle(LineReceived(g, line))

    def _line_changing_state(self, g: GlobalId, line: bytes) -> list[Effect]:
        effects = self._command(g, line)
        self._note_state(g)
        return effects

    def _open_connection(self, g: GlobalId) -> None:
        self.machine.handle(ConnectionOpened(g))  # no max_clients here: never refused
        self._open[g] = None

    def _note_state(self, g: GlobalId) -> None:
        """Keep ``_members`` in the machine's login order after ``g``'s state may have changed."""
        if self.machine.state_of(g) is LOGGED_IN:
            self._members.setdefault(g, None)
        else:
            self._members.pop(g, None)

    def _close(self, gs: list[GlobalId]) -> list[Effect]:
        if not gs:
            return []
        for g in gs:
            del self._open[g]
            self._members.pop(g, None)
        if len(gs) == 1:
            return self.machine.handle(ConnectionClosed(gs[0]))
        return self.machine.handle(ConnectionsClosed(tuple(gs)))

    # -- looking at it -----------------------------------------------------

    def state_of(self, g: GlobalId) -> ConnState | None:
        """The state of ``g`` in the machine, or ``None`` if the log does not have it open."""
        return self.machine.state_of(g)

    def members(self) -> list[GlobalId]:
        """The logged-in connections, in login order."""
        return list(self._members)

    def usernames(self) -> list[str]:
        """What WHO lists at this point of the log."""
        return self.machine.usernames()

    # -- snapshots ---------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """This state as a ``Snapshot``; see ``protocol.cluster.snapshot``."""
        names = self.machine.usernames()
        users = tuple(
            (g[0], g[1], name.encode("utf-8")) for g, name in zip(self._members, names, strict=True)
        )
        others = [g for g in self._open if g not in self._members]
        return Snapshot(
            position=self.position,
            nodes=tuple(sorted(self.live.items())),
            retired=tuple(sorted(self.retired)),
            users=users,
            waiting=tuple(g for g in others if self.machine.state_of(g) is not CLOSING),
            closing=tuple(g for g in others if self.machine.state_of(g) is CLOSING),
        )

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> ClusterState:
        """The state ``snapshot`` describes; ``DecodeError`` if it describes none."""
        state = cls()
        state.position = snapshot.position
        state.live = dict(snapshot.nodes)
        state.retired = set(snapshot.retired)
        if len(state.live) != len(snapshot.nodes) or state.retired & state.live.keys():
            raise DecodeError("snapshot names a node twice")
        everyone = [(n, c) for n, c, _ in snapshot.users] + list(snapshot.waiting) + list(snapshot.closing)
        if len(set(everyone)) != len(everyone):
            raise DecodeError("snapshot names a connection twice")
        for node, conn, name in snapshot.users:
            g = (node, conn)
            state._open_connection(g)
            state._line_changing_state(g, b"LOGIN " + name)
            if state.machine.state_of(g) is not LOGGED_IN:
                raise DecodeError(f"snapshot user {name!r} cannot log in again")
        for g in snapshot.waiting:
            state._open_connection(g)
        for g in snapshot.closing:
            state._open_connection(g)
            state.machine.handle(LineReceived(g, b"QUIT"))
        return state
