"""Micro-benchmark: a cluster node's two halves, with no engine and no sockets.

Not a test (pytest does not collect it); run it from the repository root:

    python tests/benchmarks/bench_cluster.py [--users 1000] [--messages 100000]

Part 2 puts the log on Redis; this measures what the node itself costs
around it, next to the standalone machine:

- ``standalone``: MSG events handed to ``ChatMachine.handle`` (the same
  figure as ``bench_protocol.py``'s first row, for comparison);
- ``node, MSG in``: a local user's MSG handed to ``ClusterNode.handle``,
  which answers with one ``Append`` (classification and encoding);
- ``node, MSG from the log``: MSG entries from another node handed over in
  ``LogRead`` batches of ``--batch``: decoding, the replica's
  ``ChatMachine.handle_msg``, and the ``Broadcast`` to this node's users.

Every node folds every entry of the cluster, so the last figure bounds the
MSG rate one log can carry, whatever the number of nodes.  Each figure is
the best of ``--repeat`` runs, in MSG per second.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_protocol import PAYLOAD, bench_events, best_rate, print_rates, room  # noqa: E402

from protocol import ConnectionOpened, LineReceived  # noqa: E402
from protocol.cluster import Append, ClusterNode, LogRead, NodeStarted  # noqa: E402
from protocol.cluster.entries import msg_entry  # noqa: E402


class Loop:
    """Two nodes that read their own appends back at once: a log with no delay."""

    def __init__(self, users: int) -> None:
        self.log: list[bytes] = []
        self.nodes = [ClusterNode(1), ClusterNode(2)]
        for node in self.nodes:
            self.apply(node.handle(NodeStarted()))
        self.catch_up()
        local = self.nodes[0]
        for conn in range(users):
            self.apply(local.handle(ConnectionOpened(conn)))
            self.apply(local.handle(LineReceived(conn, b"LOGIN user%d" % conn)))
        self.apply(self.nodes[1].handle(ConnectionOpened("remote")))
        self.apply(self.nodes[1].handle(LineReceived("remote", b"LOGIN remote")))
        self.catch_up()

    def apply(self, effects) -> None:
        self.log += [effect.entry for effect in effects if isinstance(effect, Append)]

    def catch_up(self) -> None:
        for node in self.nodes:
            node.handle(LogRead(tuple(self.log), str(len(self.log))))
        self.log.clear()


def bench_standalone(users: int, count: int, repeat: int) -> float:
    """``bench_protocol.py``'s MSG row, from at most 10 senders."""
    return bench_events(room(users), b"MSG " + PAYLOAD, count, repeat, senders=min(10, users))


def bench_msg_in(loop: Loop, users: int, count: int, repeat: int) -> float:
    events = [LineReceived(conn % min(10, users), b"MSG " + PAYLOAD) for conn in range(count)]
    handle = loop.nodes[0].handle

    def run():
        for event in events:
            handle(event)

    return best_rate(run, count, repeat)


def bench_msg_from_log(loop: Loop, count: int, batch: int, repeat: int) -> float:
    node = loop.nodes[0]
    handle = node.handle
    serial = 10**6  # entries of another node; each run needs new serials (copies are skipped)
    best = float("inf")
    for _ in range(repeat):
        reads = []
        for start in range(0, count - batch + 1, batch):
            entries = tuple(msg_entry(2, serial + index, 1, PAYLOAD) for index in range(start, start + batch))
            reads.append(LogRead(entries, str(start)))
        serial += count
        started = time.perf_counter()
        for read in reads:
            handle(read)
        best = min(best, time.perf_counter() - started)
    return (count - count % batch) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000, help="users logged in on the measured node (10 send)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100, help="entries per LogRead")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, r = args.messages, args.repeat
    loop = Loop(args.users)
    results = [
        ("standalone", bench_standalone(args.users, n, r)),
        ("node, MSG in", bench_msg_in(loop, args.users, n, r)),
        ("node, MSG from the log", bench_msg_from_log(loop, n, args.batch, r)),
    ]
    print_rates(f"cluster micro-benchmark: {args.users} users on the node, {n} MSG, best of {r}",
                results, "MSG/s", 24)


if __name__ == "__main__":
    main()
