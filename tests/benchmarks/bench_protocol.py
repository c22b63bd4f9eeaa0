"""Micro-benchmark: commands per second through the pure protocol machine.

Not a test (pytest does not collect it); run it from the repository root:

    python tests/benchmarks/bench_protocol.py [--users 1000] [--messages 200000]

It fills a room with ``--users`` logged-in users, then measures:

- ``machine``: MSG events handed straight to ``ChatMachine.handle``;
- ``framer+machine``: the same MSG lines as raw bytes, cut by a
  ``LineFramer`` in 64 KiB reads, then handled (what the reactor does per
  read, minus the socket);
- ``dm``, ``who``, ``ping``: the other hot commands, for comparison.

Each figure is the best of ``--repeat`` runs, in commands per second.  A MSG
costs the same whatever the room size, because the machine never touches the
recipients (the ``Broadcast`` effect shares the room's audience tuple); run
with ``--users 10`` and ``--users 10000`` to see it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from protocol import ChatMachine, ConnectionOpened, LineFramer, LineReceived  # noqa: E402

PAYLOAD = b"x" * 64


def room(users: int) -> ChatMachine:
    machine = ChatMachine()
    for conn in range(users):
        machine.handle(ConnectionOpened(conn))
        machine.handle(LineReceived(conn, b"LOGIN user%d" % conn))
    return machine


def best_rate(function, count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return count / best


def bench_events(machine: ChatMachine, line: bytes, count: int, repeat: int, senders: int = 10) -> float:
    """``line`` from the first ``senders`` users in turn, ``count`` times."""
    events = [LineReceived(conn % senders, line) for conn in range(count)]
    handle = machine.handle

    def run():
        for event in events:
            handle(event)

    return best_rate(run, count, repeat)


def bench_framed(machine: ChatMachine, count: int, repeat: int, senders: int = 10) -> float:
    framers = [LineFramer(conn) for conn in range(senders)]
    stream = b"MSG " + PAYLOAD + b"\n"
    per_read = 65536 // len(stream)
    chunk = stream * per_read
    reads = count // per_read
    handle = machine.handle

    def run():
        for index in range(reads):
            framer = framers[index % senders]
            framer.feed(chunk)
            for event in framer.take(10**9, 10**9).events:
                handle(event)

    return best_rate(run, reads * per_read, repeat)


def print_rates(title: str, results: list, unit: str, name_width: int) -> None:
    """The title, the Python it ran on, then one ``name  rate unit`` line per result."""
    print(title)
    print(f"Python {platform.python_version()} on {platform.machine()}, {platform.system()}")
    for name, rate in results:
        print(f"  {name:<{name_width}} {rate:>12,.0f} {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.users < 1:
        parser.error("--users must be at least 1")
    machine = room(args.users)
    n, r = args.messages, args.repeat
    senders = min(10, args.users)  # the first ten users send, or all of them
    results = [
        ("MSG, machine", bench_events(machine, b"MSG " + PAYLOAD, n, r, senders)),
        ("MSG, framer+machine", bench_framed(machine, n, r, senders)),
        ("DM, machine", bench_events(machine, f"DM user{min(5, args.users - 1)} ".encode() + PAYLOAD, n, r, senders)),
        ("WHO, machine", bench_events(machine, b"WHO", n, r, senders)),
        ("PING, machine", bench_events(machine, b"PING", n, r, senders)),
    ]
    print_rates(f"protocol micro-benchmark: {args.users} users, {n} commands, best of {r}",
                results, "commands/s", 22)


if __name__ == "__main__":
    main()
