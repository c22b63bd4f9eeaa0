"""The events a cluster node hears besides a standalone server's, and its one new effect.

A node takes every event of ``protocol.events`` (with its own, *local*
connection ids) and these, which come from its side of the engine: the
reactor's reader of the log, its lease keeper, and its start.  Its effects
are those of ``protocol.effects`` plus ``Append``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NodeStarted:
    """The node is ready to join: its lease is held and its reader is running.

    It answers with ``Append(NodeUp)`` and serves clients once it reads
    that entry back.
    """


@dataclass(frozen=True, slots=True)
class LogRead:
    """``entries`` (encoded, in log order) were read from the log.

    ``position`` is the log's id of the last one (for Redis, its stream id);
    the node keeps it, and a snapshot taken now carries it.  ``entries`` may
    be empty.
    """

    entries: tuple[bytes, ...]
    position: str


@dataclass(frozen=True, slots=True)
class NodeExpired:
    """Another node's lease ran out: it stopped renewing it in time.

    Any node that notices may report it; the node answers with
    ``Append(NodeDown)``, and the first such entry in the log wins.
    """

    node: int


@dataclass(frozen=True, slots=True)
class ClusterUnavailable:
    """This node can no longer take part in the cluster.

    Its own lease ran out (the engine was unreachable for longer than the
    lease), it fell behind the start of the trimmed log, or the engine lost
    its data.  Its clients are closed with ``ERR server-unavailable``, and
    it refuses new ones; it never resurrects them.  To serve again, the
    caller starts a new node, with a new id, from a snapshot.
    """


@dataclass(frozen=True, slots=True)
class Append:
    """Append ``entry`` (encoded, see ``protocol.cluster.entries``) to the log.

    Appends must reach the log in the order the node made them; entries of
    different nodes may interleave in any way.
    """

    entry: bytes


ClusterEvent = NodeStarted | LogRead | NodeExpired | ClusterUnavailable
