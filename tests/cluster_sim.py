"""An in-memory cluster for tests: a list as the log, nodes that append and read it.

Theory of operation
-------------------
``Engine`` is the sequencer part 2 puts on Redis: one list of encoded
entries; an entry's position is its index.  ``SimNode`` plays one node's
reactor: it hands events to a ``ClusterNode`` and files the effects the
way a reactor would:

- ``Append`` goes into the node's *outgoing* queue, which reaches the log
  only when the test calls ``commit`` (so appends of different nodes can
  interleave in any order, while each node's stay in order, as on one
  pipelined engine connection);
- ``Reply``, ``Deliver`` and ``Broadcast`` become bytes in each connection's
  transcript (``received``); ``Close`` is recorded with its reason;
- ``read`` hands the node the next entries after its own cursor, so each
  node can lag the log by its own amount.

Nothing here decides anything about the protocol; it only moves bytes.
``Cluster`` wires a few of them together for the example tests.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from protocol import Broadcast, Close, CloseReason, ConnectionOpened, Deliver, LineReceived, Reply
from protocol.cluster import Append, ClusterNode, LogRead, NodeStarted, Snapshot


class Engine:
    """The log: append-only, one order for everyone."""

    def __init__(self) -> None:
        self.log: list[bytes] = []


class SimNode:
    """One node and what its clients have received."""

    def __init__(
        self,
        engine: Engine,
        node_id: int,
        *,
        snapshot: Snapshot | None = None,
        cursor: int = 0,
        max_clients: int | None = None,
    ) -> None:
        self.engine = engine
        self.node = ClusterNode(node_id, snapshot=snapshot, max_clients=max_clients)
        self.outgoing: list[bytes] = []
        self.cursor = cursor
        self.received: dict[Hashable, bytes] = {}
        self.replies: dict[Hashable, bytes] = {}  # the Reply part of `received` alone
        self.closes: dict[Hashable, CloseReason] = {}
        self.effects_seen = 0

    # -- driving -----------------------------------------------------------

    def handle(self, event) -> list:
        effects = self.node.handle(event)
        self.file(effects)
        return effects

    def file(self, effects: Iterable) -> None:
        for effect in effects:
            self.effects_seen += 1
            if isinstance(effect, Append):
                self.outgoing.append(effect.entry)
            elif isinstance(effect, Reply):
                self._give(effect.conn, effect.data)
                self.replies[effect.conn] = self.replies.get(effect.conn, b"") + effect.data
            elif isinstance(effect, Deliver):
                self._give(effect.conn, effect.data)
            elif isinstance(effect, Broadcast):
                for conn in effect.recipients():
                    self._give(conn, effect.data)
            elif isinstance(effect, Close):
                assert effect.conn not in self.closes, f"second Close for {effect.conn!r}"
                self.closes[effect.conn] = effect.reason
            else:  # pragma: no cover
                raise AssertionError(effect)

    def _give(self, conn: Hashable, data: bytes) -> None:
        assert conn not in self.closes, f"{data!r} sent to {conn!r} after its Close"
        self.received[conn] = self.received.get(conn, b"") + data

    def commit(self, count: int | None = None) -> int:
        """The engine takes the next ``count`` (default: all) of this node's appends."""
        count = len(self.outgoing) if count is None else min(count, len(self.outgoing))
        self.engine.log += self.outgoing[:count]
        del self.outgoing[:count]
        return count

    def read(self, count: int | None = None) -> list:
        """The node reads the next ``count`` (default: all) entries of the log."""
        log = self.engine.log
        end = len(log) if count is None else min(len(log), self.cursor + count)
        entries = tuple(log[self.cursor : end])
        self.cursor = end
        return self.handle(LogRead(entries, str(end)))

    @property
    def lag(self) -> int:
        return len(self.engine.log) - self.cursor


class Cluster:
    """Several ``SimNode`` over one ``Engine``, for examples written by hand."""

    def __init__(self, nodes: int = 2, **options) -> None:
        self.engine = Engine()
        self.nodes = [SimNode(self.engine, node_id, **options) for node_id in range(1, nodes + 1)]
        for sim in self.nodes:
            sim.handle(NodeStarted())
        self.settle()
        assert all(sim.node.joined for sim in self.nodes)

    def settle(self) -> None:
        """Commit every append and let every node read everything, until nothing moves."""
        for _ in range(100):
            moved = sum(sim.commit() for sim in self.nodes)
            for sim in self.nodes:
                if sim.lag:
                    sim.read()
            if not moved and not any(sim.outgoing for sim in self.nodes):
                return
        raise AssertionError("the cluster does not settle")

    def connect(self, node: int, conn: Hashable) -> None:
        self.nodes[node].handle(ConnectionOpened(conn))

    def send(self, node: int, conn: Hashable, line: bytes, settle: bool = True) -> None:
        self.nodes[node].handle(LineReceived(conn, line))
        if settle:
            self.settle()

    def received(self, node: int, conn: Hashable) -> bytes:
        return self.nodes[node].received.get(conn, b"")
