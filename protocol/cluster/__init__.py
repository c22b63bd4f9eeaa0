"""Cluster mode: one chat on many nodes, as the protocol machine replicated over one ordered log.

Theory of operation
-------------------
The chat protocol is a deterministic state machine (``ChatMachine``): the
same events in the same order give the same effects.  So several nodes
behave as one server if they all run the same machine over the same events
in the same order.  The nodes agree on that order through one totally
ordered, append-only log that an engine keeps (Redis Streams, in part 2;
an in-memory list in the tests); the engine is the sequencer, nodes never
talk to each other.

- A node appends an *entry* (``entries``) for each event another node could
  decide differently: a login attempt, a MSG, a DM, a WHO, a departure, a
  node that is gone.  Entries have one compact, versioned byte encoding.
- Every node reads the whole log back in order and folds each entry into
  its *replicated state* (``state``): the unchanged ``ChatMachine``, run
  over global connection ids ``(node, conn)``.  Identical input, identical
  decisions: a name is granted once, every MSG reaches the same users in
  the same order everywhere, a WHO lists what its asker has seen.
- The *node* (``node``) is ``ChatMachine``'s shape for one server of the
  cluster: local events and log reads in, effects out (``Append`` besides
  ``Reply``, ``Deliver``, ``Broadcast`` and ``Close``), with per-connection
  rules kept local and replies kept in command order.
- A *snapshot* (``snapshot``) is the replicated state at one log position;
  a node that starts late folds the log after it.

docs/cluster.md tells the whole story, with one MSG followed across two
nodes.  Like the rest of ``protocol``, this package does no I/O and reads
no clock: leases, the engine and time belong to the reactor.
"""

from .codec import DecodeError
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
    encode_entry,
)
from .events import Append, ClusterEvent, ClusterUnavailable, LogRead, NodeExpired, NodeStarted
from .node import ClusterNode, NodeEffect, NodeEvent, Phase
from .snapshot import Snapshot, decode_snapshot, encode_snapshot
from .state import ClusterState, GlobalId

__all__ = [
    "Append",
    "Closed",
    "ClusterEvent",
    "ClusterNode",
    "ClusterState",
    "ClusterUnavailable",
    "DecodeError",
    "Dm",
    "Entry",
    "GlobalId",
    "Idle",
    "Line",
    "LogRead",
    "Login",
    "Msg",
    "NodeDown",
    "NodeEffect",
    "NodeEvent",
    "NodeExpired",
    "NodeStarted",
    "NodeUp",
    "Phase",
    "Quit",
    "Snapshot",
    "Who",
    "decode_entry",
    "decode_snapshot",
    "encode_entry",
    "encode_snapshot",
]
