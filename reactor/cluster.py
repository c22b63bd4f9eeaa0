"""Cluster mode in the loop: the node, its two links to Redis, its lease and the shared snapshot.

Theory of operation
-------------------
``protocol.cluster.ClusterNode`` is the whole of cluster mode's logic, pure
(docs/cluster.md).  This module is its engine side, the part with sockets
and a clock, driven by the same ``selectors`` loop as the clients:

- **The log** is a Redis stream, ``<name>:log``.  The appends the node
  makes in one loop turn are one ``XADD``, one stream entry with a
  field ``e`` per log entry, in order (at most ``APPEND_BATCH`` of them or
  ``APPEND_BATCH_BYTES``, then the next ``XADD``), and leave in one
  pipelined write on the *writer* link: per chat line, the engine parses
  no command and the node parses no reply.  The *reader* link sits in
  ``XREAD BLOCK`` from the node's position and hands everything it reads,
  each stream entry's fields in order, to the node as one ``LogRead``: the
  node's clients get their lines from there, on every node alike.  A
  stream entry is in the log whole or not at all, so its log entries are
  too.
- **Joining.** The node's id comes from ``INCR <name>:node-id`` (never
  reused), its starting state from the stored snapshot; it takes its
  lease, starts reading after the snapshot's position, and appends
  ``NodeUp``.  When it reads that back it has seen everything before it:
  the loop starts accepting clients (``on_joined``).
- **The lease** is ``<name>:lease:<id>``, a key with a time to live of
  ``--cluster-lease``, renewed every third of it.  A renewal that has not
  succeeded for a whole lease means the others may have declared this node
  down: the node reports ``ClusterUnavailable`` and closes its clients
  with ``ERR server-unavailable``.  Every third of a lease, and once as
  soon as it joins, the node also asks how long the other live nodes'
  leases have left (``PTTL``): one about to run out is asked about again
  just after its end, and one that is gone is reported ``NodeExpired``;
  the node appends its ``NodeDown``.  So a dead node's users leave within
  a lease (and a round trip) of its last renewal.
- **Nothing lost, nothing twice.**  An entry stays in the node's
  ``unconfirmed()`` until it is read back.  When the writer reconnects, all
  of them are appended again (their serials make the fold drop the copies
  that had made it), and no new entry goes out before them: the fold
  drops an entry whose serial is not above its author's last one, so a
  new entry ahead of those that waited would make copies of them.  When
  the reader reconnects, it reads on from the last position it had.  A
  Redis restart with its data (AOF) within the lease is thus a delay, not
  a loss.  ``<name>:epoch``, a random value set when the stream is first
  used, tells a Redis that lost its data from one that kept it: each link
  reads it after every reconnect, before anything else (the reader may
  come back first, and must not read a new log from an old position), and
  a different epoch is ``ClusterUnavailable``.
- **Snapshots and trimming.**  The live node with the lowest id stores
  ``encode_snapshot(node.snapshot())`` every ``SNAPSHOT_EVERY`` entries,
  with a script that keeps only a later position, and then trims the
  stream up to the *previous* snapshot's position (a snapshot's worth of
  slack for a slow reader).  A reader whose position falls before what was
  trimmed (the first entry left comes after it, see ``_trimmed_past``)
  would show a partial picture: it reports ``ClusterUnavailable`` instead,
  and the next node starts from the snapshot.  The check (``XINFO
  STREAM``) leaves with each ``XREAD``, in the same write.  A snapshot
  that does not decode is logged and ignored: the node starts from the
  log's beginning, which works until the log is trimmed; after that it
  cannot join, and tries again (backing off up to a lease) until a live
  node has stored a good one.
- **After ``ClusterUnavailable``**, or when the log says the node is
  dead (its own ``NodeDown``, appended by another node), the node is
  finished.  Once its last client is gone and the engine answers again, a
  new node with a new id joins from the snapshot (a client the old node
  refused meanwhile delays the swap, not the lease), and reports the old
  node expired as soon as it joins, so the old node's users leave and
  their names are free at once (unless the engine lost its data between
  the two: ids start again at 1 in an empty Redis, and the old id may be
  another node's by then); the process never exits because of the
  engine.  A reply to the reader that comes for a node already replaced
  is dropped.
- **Bounded memory.**  While the engine is away, entries pile up in
  ``unconfirmed()``.  Past ``--cluster-buffer`` bytes the loop stops
  handling clients' lines (``full``), as flood control does, until the
  engine has taken them.

Nothing here blocks: the links are non-blocking, their deadlines are
timers on the loop's wheel, and every reply is handled in a callback from
inside the loop's turn.
"""

from __future__ import annotations

import logging
import os
import random as _random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from protocol.cluster import (
    Append,
    ClusterNode,
    ClusterUnavailable,
    LogRead,
    NodeExpired,
    NodeStarted,
    Phase,
    decode_snapshot,
    encode_snapshot,
)
from protocol.cluster.codec import DecodeError

from .engine import Backoff, EngineError, LinkLost, RedisAddress, RedisLink, encode_xadd
from .timers import CallbackTimer

if TYPE_CHECKING:
    from .loop import Reactor

log = logging.getLogger("chat")

READ_BLOCK_MS = 1000
"""How long one ``XREAD`` waits for entries; the reader's silence past this plus a margin is a lost link."""
APPEND_BATCH = 100
"""Log entries in one ``XADD`` (one stream entry) at most, so that one read stays bounded ..."""
APPEND_BATCH_BYTES = 65536
"""... and their bytes: past this, the turn's next entries go in another ``XADD``."""
READ_COUNT = 10
"""Stream entries one ``XREAD`` returns at most: 1,000 log entries and 640 KiB or so, folded in one turn."""
ENTRY_OVERHEAD = 256
"""Bytes of Python objects per entry waiting for the engine, besides its own bytes: its tuple,
bytes object and slots in ``node.unconfirmed()`` (about 185, measured with tracemalloc) and its
share of an unsent XADD in the writer (less than 50, one per entry before batching); the XADD's
bytes are ``unsent_bytes``."""
LEASE_MARGIN = 0.05
"""Seconds after another node's lease should have run out before it is asked about again."""
START_BACKOFF = 0.5
"""Seconds before the next node after one that could not start or gave up; it doubles up to the lease."""
SNAPSHOT_EVERY = 10_000
"""Entries folded between two snapshots (by the live node with the lowest id)."""

# Keep the stored snapshot only if the new one is at a later position: positions
# are stream ids, "<ms>-<seq>", compared as two numbers.
_STORE_SNAPSHOT = b"""
local current = redis.call('GET', KEYS[2])
if current then
  local cm, cs = string.match(current, '(%d+)-(%d+)')
  local nm, ns = string.match(ARGV[2], '(%d+)-(%d+)')
  cm, cs, nm, ns = tonumber(cm), tonumber(cs), tonumber(nm), tonumber(ns)
  if nm < cm or (nm == cm and ns <= cs) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


class ClusterDriver:
    """The engine side of one cluster node (see the module docstring).

    The reactor owns it: it passes the replies' events to the node through
    ``Reactor.feed_machine``, carries out the node's ``Append`` effects by
    calling ``append``, and calls ``end_of_turn`` before it sleeps.
    """

    def __init__(
        self,
        address: RedisAddress,
        *,
        name: str,
        lease: float,
        buffer: int,
        max_clients: int | None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.address = address
        self._keys = _Keys(name)
        self._lease = lease
        self._buffer = buffer
        self._max_clients = max_clients
        self._random = random
        self._reactor: Reactor | None = None
        self.node: ClusterNode | None = None  # the current node, once it has an id
        self._epoch: bytes | None = None
        self._starting = False  # a new node's id, snapshot and lease are being fetched
        self._leased: tuple[int, Any, float, bytes | None] | None = None  # a new node's id, snapshot,
        # lease time and the epoch its id came from
        self._node_epoch: bytes | None = None  # the epoch of the log the current node's id belongs to
        self._predecessors: list[int] = []  # this process's nodes that gave up: down once a new one joins
        # A node that could not start or gave up is followed by the next one after a backoff,
        # so an engine that keeps refusing (a trimmed log, a key of the wrong type) is not hammered.
        self._start_backoff = Backoff(START_BACKOFF, max(START_BACKOFF, lease), random)
        self._next_start_at = 0.0
        self._start_timer = CallbackTimer(self._maybe_start)
        self._resumed = False  # the writer's connection has re-sent what waited: appends go straight
        self._reader_checked = False  # the reader's connection saw the epoch: it may read
        self._reading = False  # an XREAD is out on the reader link
        self._renewed_at = 0.0  # when the lease was last renewed, successfully
        self._folded_since_snapshot = 0
        self._last_snapshot_position: str | None = None
        self._gave_up = False  # the current node reported ClusterUnavailable
        self._stopping = False
        self._joined_told = False
        self._batch: list[bytes] = []  # this turn's appends, for one XADD at its end
        self._batch_bytes = 0
        self._link_timers: dict[RedisLink, CallbackTimer] = {}
        self._lease_timers: dict[int, CallbackTimer] = {}  # other nodes' leases about to run out
        self.writer: RedisLink
        self.reader: RedisLink

    # -- wiring ------------------------------------------------------------------

    def bind(self, reactor: Reactor) -> None:
        """Make the links in the reactor's selector and start connecting."""
        self._reactor = reactor
        common: dict[str, Any] = {
            "clock": reactor.clock,
            "random": self._random,
            "selector": reactor.selector,
            "logger": reactor.turn_log,
        }
        self.writer = RedisLink(
            self.address, client_name=f"chat-{os.getpid()}-writer", on_ready=self._writer_ready,
            reply_timeout=max(2.0, self._lease / 2), **common,
        )
        self.reader = RedisLink(
            self.address, client_name=f"chat-{os.getpid()}-reader", on_ready=self._reader_ready,
            reply_timeout=READ_BLOCK_MS / 1000 + max(2.0, self._lease / 2), **common,
        )
        self._link_timers = {link: CallbackTimer(link.tick) for link in (self.writer, self.reader)}
        reactor.call_every(self._lease / 3, self._keep_lease)
        self.writer.start()
        self.reader.start()

    @property
    def joined(self) -> bool:
        """Whether the current node serves clients."""
        return self.node is not None and self.node.joined

    @property
    def full(self) -> bool:
        """Whether entries waiting for the engine passed ``--cluster-buffer``: read no client now.

        What they hold in memory counts, not only their bytes: a short MSG's
        entry is about 30 bytes, and the objects that keep it about 250 more.
        """
        node = self.node
        if node is None:
            return False
        held = node.unconfirmed_bytes + node.unconfirmed_count * ENTRY_OVERHEAD + self.writer.unsent_bytes
        return held > self._buffer

    @property
    def finished(self) -> bool:
        """At shutdown: whether the node's last entries (its NodeDown) are in the log."""
        node = self.node
        return node is None or not node.unconfirmed_bytes or not self.writer.ready or self._down

    @property
    def _down(self) -> bool:
        """Whether the current node is finished: it lost the cluster, or the log says it is dead."""
        node = self.node
        return node is not None and (self._gave_up or node.phase is Phase.DOWN)

    def append(self, effect: Append) -> None:
        """The node's ``Append``: in this turn's ``XADD``, or after the next reconnect."""
        if self._resumed and self.writer.ready and not self._starting and not self._down:
            entry = effect.entry  # (_add_to_batch, written out: every chat line's path)
            self._batch.append(entry)
            self._batch_bytes += len(entry)
            if len(self._batch) >= APPEND_BATCH or self._batch_bytes >= APPEND_BATCH_BYTES:
                self._send_batch()
        # Otherwise it waits in node.unconfirmed(), which the writer sends when it is back, in
        # order: an entry appended before those that waited would make the fold drop them.

    def _add_to_batch(self, entry: bytes) -> None:
        self._batch.append(entry)
        self._batch_bytes += len(entry)
        if len(self._batch) >= APPEND_BATCH or self._batch_bytes >= APPEND_BATCH_BYTES:
            self._send_batch()

    def _send_batch(self) -> None:
        """The appends so far, as one XADD; none if the writer was lost since (they wait in unconfirmed())."""
        if self.writer.ready:
            node = self.node
            self.writer.send_encoded(
                encode_xadd(self._keys.log, b"e", self._batch), lambda reply: self._appended(node, reply)
            )
        self._batch = []
        self._batch_bytes = 0

    def end_of_turn(self) -> None:
        """Send the turn's appends (one XADD), flush the links (one write each) and arm their deadlines."""
        assert self._reactor is not None
        if self._leased is not None:
            self._serve_new_node()  # once the old node's last refused client is gone
        else:
            self._maybe_start()  # the old node's clients are gone and the engine is back
        if self.node is not None and self.node.joined and not self._joined_told:
            self._joined_told = True
            self._reactor.cluster_joined()
            self._start_backoff.reset()
            self._retire_predecessors()
            self._watch_leases()  # nodes that died before this one joined leave now, not a lease later
        if self._batch:
            self._send_batch()
        for link, timer in self._link_timers.items():
            link.flush()
            due = link.wakeup_at
            if due is None:
                timer.cancel()
            elif timer.deadline != due:
                self._reactor.schedule(timer, due)

    def stop(self) -> None:
        """Shutdown has begun: no new node, no more snapshots."""
        self._stopping = True

    def close(self) -> None:
        for link in (self.writer, self.reader):
            link.close()

    # -- the writer ----------------------------------------------------------------

    def _writer_ready(self) -> None:
        """Connected (again): check the engine kept its data, then start or resume the node."""
        self._resumed = False
        keys = self._keys
        self.writer.send((b"SET", keys.epoch, os.urandom(8).hex().encode(), b"NX"))
        self.writer.send((b"GET", keys.epoch), self._epoch_checked)

    def _epoch_checked(self, epoch: Any) -> None:
        if isinstance(epoch, EngineError):
            return  # the link went down again; this runs anew when it is back
        self._resumed = True
        if not self._same_epoch(epoch):
            return
        if self.node is None or self._down:
            self._maybe_start()
        else:
            self._keep_lease()
            if self._down:
                return  # its lease ran out meanwhile: its clients were told, their lines go nowhere
            for entry in self.node.unconfirmed():  # at least once; the fold drops copies
                self._add_to_batch(entry)

    def _same_epoch(self, epoch: Any) -> bool:
        """Whether the engine one link reached still has the data this node folded (its epoch)."""
        if self._epoch is None:
            self._epoch = epoch
        elif epoch != self._epoch:
            if epoch is not None:  # (None: the reader is back first, before the writer set a new one;
                self._epoch = epoch  # keep the old until then, or the next loss would go unseen)
            self._predecessors.clear()  # ids of a log that is gone: the new one hands them out again
            self._turn_unavailable("the engine lost its data (a new epoch)")
            return False
        return True

    def _maybe_start(self) -> None:
        """Start a new node if one is needed (none yet, or the old one down and empty) and it is time."""
        assert self._reactor is not None
        node = self.node
        if node is not None and (not self._down or len(node)):
            return
        if self._starting or self._leased is not None or self._stopping or not self._resumed:
            return
        if not self.writer.ready:
            return
        if self._reactor.clock() < self._next_start_at:
            self._reactor.schedule(self._start_timer, self._next_start_at)
            return
        self._starting = True
        self.writer.send((b"INCR", self._keys.node_id), self._got_id)

    def _start_later(self) -> None:
        """The next node starts after a backoff (the one before could not start, or gave up)."""
        assert self._reactor is not None
        self._next_start_at = self._reactor.clock() + self._start_backoff.next_delay()

    def _start_failed(self, what: str, reply: Any) -> None:
        self._starting = False
        if not isinstance(reply, LinkLost):  # (a lost link starts again when it is back)
            log.error("cluster: cannot start a node: %s: %s", what, reply)
            self._start_later()

    def _got_id(self, reply: Any) -> None:
        if isinstance(reply, EngineError):
            self._start_failed("INCR of the node id refused", reply)
            return
        node_id, epoch = int(reply), self._epoch
        self.writer.send(
            (b"GET", self._keys.snapshot), lambda snapshot: self._got_snapshot(node_id, epoch, snapshot)
        )

    def _got_snapshot(self, node_id: int, epoch: bytes | None, data: Any) -> None:
        if isinstance(data, LinkLost):
            self._starting = False
            return
        try:
            if isinstance(data, EngineError):  # the key holds something else than a string
                raise DecodeError(str(data))
            snapshot = decode_snapshot(data) if data is not None else None
        except DecodeError as error:
            log.error("cluster: the stored snapshot does not decode (%s): starting from the log", error)
            snapshot = None
        assert self._reactor is not None
        lease_key = self._keys.lease(node_id)
        sent_at = self._reactor.clock()
        self.writer.send(
            (b"SET", lease_key, b"1", b"PX", str(int(self._lease * 1000)).encode()),
            lambda reply: self._got_lease(node_id, snapshot, sent_at, epoch, reply),
        )

    def _got_lease(
        self, node_id: int, snapshot: Any, sent_at: float, epoch: bytes | None, reply: Any
    ) -> None:
        if isinstance(reply, EngineError):
            self._start_failed("the lease refused", reply)
            return
        self._starting = False
        self._leased = (node_id, snapshot, sent_at, epoch)
        self._serve_new_node()

    def _serve_new_node(self) -> None:
        """The new node takes over, once the old one's last client is gone (refused ones linger a turn)."""
        assert self._reactor is not None and self._leased is not None
        if self.node is not None and len(self.node):
            return
        node_id, snapshot, self._renewed_at, epoch = self._leased
        self._leased = None
        if self._stopping:
            return
        if epoch != self._epoch:  # the engine lost its data since the id was handed out: another one
            self._maybe_start()
            return
        if self.node is not None and self._node_epoch == epoch:
            # Only a predecessor in the same log: after a new epoch its id may be another node's.
            self._predecessors.append(self.node.node_id)
        self._node_epoch = epoch
        node = ClusterNode(node_id, snapshot=snapshot, max_clients=self._max_clients)
        self._reactor.replace_machine(node)
        self.node = node
        self._gave_up = False
        self._joined_told = False
        self._last_snapshot_position = snapshot.position if snapshot is not None else None
        self._reading = False
        log.info("cluster: node %d joining %s", node_id, self.address.redacted)
        self._reactor.feed_machine(NodeStarted())
        self._read_on()

    def _retire_predecessors(self) -> None:
        """The nodes this process gave up are dead for sure: their users leave now, not a lease later."""
        assert self._reactor is not None and self.node is not None
        live = self.node.live_nodes()
        for node_id in self._predecessors:
            if node_id in live and node_id != self.node.node_id:
                self._reactor.feed_machine(NodeExpired(node_id))
        self._predecessors.clear()

    def _appended(self, node: ClusterNode | None, reply: Any) -> None:
        """An XADD refused (out of memory, a read-only replica): its lines can never be delivered.

        A later append that succeeds would confirm them with its own serials,
        and they would be lost without a word; so the node gives up, its
        clients are told (``ERR server-unavailable``), and a new node joins
        once the engine takes appends again.
        """
        if isinstance(reply, EngineError) and not isinstance(reply, LinkLost):
            log.error("cluster: an append was refused: %s", reply)
            if node is self.node:
                self._turn_unavailable("the engine refused an append")

    # -- the reader ------------------------------------------------------------------

    def _reader_ready(self) -> None:
        """Connected (again): read on only from an engine that kept what this node folded."""
        self._reader_checked = False
        self._reading = False  # whatever was out failed with the old connection
        self.reader.send((b"GET", self._keys.epoch), self._reader_epoch_checked)

    def _reader_epoch_checked(self, epoch: Any) -> None:
        if isinstance(epoch, EngineError):
            return  # the link went down again; this runs anew when it is back
        self._reader_checked = True
        if self._epoch is None and epoch is None:
            return  # a new cluster: the writer sets the epoch before the node starts
        if self._same_epoch(epoch):
            self._read_on()

    def _read_on(self) -> None:
        """Read on from the node's position, with a check that nothing after it was trimmed.

        Both commands leave together; their replies are for this node only:
        one that comes after the node was replaced (an XREAD blocks for up
        to a second) is dropped, or it would fold another position's entries.
        """
        node = self.node
        if node is None or self._reading or self._down or not self.reader.ready or not self._reader_checked:
            return
        self._reading = True
        position = node.position or "0-0"
        self.reader.send((b"XINFO", b"STREAM", self._keys.log), lambda info: self._trim_checked(node, info))
        self.reader.send(
            (b"XREAD", b"COUNT", str(READ_COUNT).encode(), b"BLOCK", str(READ_BLOCK_MS).encode(),
             b"STREAMS", self._keys.log, position.encode()),
            lambda reply: self._got_entries(node, reply),
        )

    def _trim_checked(self, node: ClusterNode, info: Any) -> None:
        if node is not self.node or self._down or isinstance(info, EngineError):
            return  # (ERR no such key: no stream yet, nothing trimmed)
        if _trimmed_past(info, node.position or "0-0"):
            self._turn_unavailable("this node fell behind the trimmed log")  # its XREAD's reply is dropped

    def _got_entries(self, node: ClusterNode, reply: Any) -> None:
        assert self._reactor is not None
        if node is not self.node:
            return  # read for a node that is gone
        self._reading = False
        if isinstance(reply, EngineError) or self._down:
            return
        if reply:
            (_, records), = reply
            entries = tuple([entry for _, fields in records for entry in fields[1::2]])
            position = records[-1][0].decode()
            self._reactor.feed_machine(LogRead(entries, position))
            if node.phase is Phase.DOWN and not self._gave_up:  # it read its own NodeDown
                self._gave_up = True
                log.error("cluster: node %d leaves the cluster: the others declared it down", node.node_id)
            self._folded_since_snapshot += len(entries)
            self._maybe_store_snapshot()
        self._read_on()

    # -- the lease, the others' leases, the snapshot ------------------------------------

    def _keep_lease(self) -> None:
        """Every third of a lease: renew ours, look at the others', give up ours if it ran out."""
        assert self._reactor is not None
        node = self.node
        if node is None or self._down or self._starting:
            return
        now = self._reactor.clock()
        if now - self._renewed_at > self._lease:
            self._turn_unavailable(f"its lease could not be renewed for {self._lease:g} s")
            return
        if not self.writer.ready:
            return
        sent_at = now
        self.writer.send(
            (b"SET", self._keys.lease(node.node_id), b"1", b"PX", str(int(self._lease * 1000)).encode()),
            lambda reply: self._renewed(reply, sent_at),
        )
        self._watch_leases()

    def _watch_leases(self) -> None:
        """Ask how long each other live node's lease has left (``NodeExpired`` once it is gone)."""
        node = self.node
        if node is None or not node.joined or self._down or not self.writer.ready:
            return
        for other in node.live_nodes():
            if other != node.node_id:
                self._ask_lease(node, other)

    def _ask_lease(self, node: ClusterNode, other: int) -> None:
        key = self._keys.lease(other)
        self.writer.send((b"PTTL", key), lambda reply: self._lease_seen(node, other, reply))

    def _renewed(self, reply: Any, sent_at: float) -> None:
        if not isinstance(reply, EngineError):
            self._renewed_at = max(self._renewed_at, sent_at)

    def _lease_seen(self, node: ClusterNode, other: int, reply: Any) -> None:
        """A lease gone is a node down; one that runs out before the next look is looked at when it does.

        A live node renews every third of a lease, so its lease never has
        less than two thirds left; a dead one's runs down, and is asked
        about again just after its end, so its users leave within a lease
        of its last renewal, not up to a third of a lease later.
        """
        assert self._reactor is not None
        if node is not self.node or self._down or isinstance(reply, EngineError):
            return
        if reply == -2:  # no such key
            log.warning("cluster: node %d's lease ran out: it is down", other)
            self._reactor.feed_machine(NodeExpired(other))
        elif 0 <= reply < self._lease * 1000 / 3:
            timer = self._lease_timers.get(other)
            if timer is None:
                timer = self._lease_timers[other] = CallbackTimer(lambda: self._look_again(node, other))
            self._reactor.schedule(timer, self._reactor.clock() + reply / 1000 + LEASE_MARGIN)

    def _look_again(self, node: ClusterNode, other: int) -> None:
        self._lease_timers.pop(other, None)
        if node is self.node and not self._down and self.writer.ready and other in node.live_nodes():
            self._ask_lease(node, other)

    def _maybe_store_snapshot(self) -> None:
        node = self.node
        if node is None or self._folded_since_snapshot < SNAPSHOT_EVERY or not self.writer.ready:
            return
        live = node.live_nodes()
        if not node.joined or not live or min(live) != node.node_id:
            return
        self._folded_since_snapshot = 0
        position = node.position
        keys = self._keys
        self.writer.send(
            (b"EVAL", _STORE_SNAPSHOT, b"2", keys.snapshot, keys.snapshot_position,
             encode_snapshot(node.snapshot()), position.encode())
        )
        if self._last_snapshot_position is not None:  # a snapshot's worth of slack for slow readers
            self.writer.send((b"XTRIM", keys.log, b"MINID", self._last_snapshot_position.encode()))
        self._last_snapshot_position = position

    # -- losing the cluster ---------------------------------------------------------------

    def _turn_unavailable(self, why: str) -> None:
        assert self._reactor is not None
        if self._down or self.node is None:
            return
        self._gave_up = True
        self._start_later()
        log.error("cluster: node %d leaves the cluster: %s", self.node.node_id, why)
        self._reactor.feed_machine(ClusterUnavailable())


class _Keys:
    """Every key of one cluster, under its ``--cluster-name`` prefix."""

    def __init__(self, name: str) -> None:
        prefix = name.encode()
        self.log = prefix + b":log"
        self.node_id = prefix + b":node-id"
        self.epoch = prefix + b":epoch"
        self.snapshot = prefix + b":snapshot"
        self.snapshot_position = prefix + b":snapshot-position"
        self._lease = prefix + b":lease:"

    def lease(self, node_id: int) -> bytes:
        return self._lease + str(node_id).encode()


def _trimmed_past(info: Any, position: str) -> bool:
    """Whether ``XINFO STREAM``'s answer says entries after ``position`` may be gone from the stream.

    XTRIM does not move Redis 7's ``max-deleted-entry-id`` (only XDEL
    does), so the test is on what is left: if entries were ever removed
    (``entries-added`` above ``length``) and the first one left comes after
    the position, the entries in between may have been trimmed.  Redis 6.2
    has no count of entries added: there a first entry later than the
    position counts, except for a node starting at the very beginning,
    which cannot tell a trimmed log from a young one.
    """
    fields = dict(zip(info[::2], info[1::2], strict=False))
    deleted = fields.get(b"max-deleted-entry-id")
    if deleted is not None and _later(deleted.decode(), position):
        return True  # (entries deleted one by one: XDEL)
    first = fields.get(b"first-entry")
    added = fields.get(b"entries-added")
    if added is not None:  # Redis 7
        if added == fields.get(b"length"):
            return False  # nothing was ever removed
        if not first:  # everything was
            return _later(fields[b"last-generated-id"].decode(), position)
        return _later(first[0].decode(), position)
    return bool(first) and position != "0-0" and _later(first[0].decode(), position)


def _later(a: str, b: str) -> bool:
    """Whether stream id ``a`` comes after ``b``."""
    am, _, aseq = a.partition("-")
    bm, _, bseq = b.partition("-")
    return (int(am), int(aseq or 0)) > (int(bm), int(bseq or 0))
