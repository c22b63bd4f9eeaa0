"""The cost of one event: a PING's whole turn through the reactor, in one process.

Not a test (pytest does not collect it).  A client socket pair sends one
``PING``; ``Reactor.run_once`` reads it, frames it, hands it to the machine,
files the reply and sends it; the client reads ``PONG``.  Repeated, with
CPU time measured (``time.process_time``), so other programs on the machine
move the figure less than they move wall-clock round trips.  Kernel work
(the three system calls) is included, the wake-up of a sleeping process is
not: this is the server's fixed cost per event, the part Python can change.

    python tests/benchmarks/bench_turn.py [--rounds N] [--trials N] [--profile]

``--profile`` prints a cProfile of one trial instead, sorted by own time.
A second figure times a turn whose one line is a MSG to a room of 10.
"""

from __future__ import annotations

import argparse
import pathlib
import selectors
import socket
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from reactor.config import Config  # noqa: E402
from reactor.loop import Reactor  # noqa: E402


class Polling(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The loop never sleeps here: the client's bytes are already in the kernel."""

    def select(self, timeout=None):
        return super().select(0)


def make_room(members: int):
    listener = socket.create_server(("127.0.0.1", 0))
    config = Config(host="127.0.0.1", port=0, rate=0, idle_timeout=0)  # no pacing: a turn per PING
    reactor = Reactor([listener], config, selector=Polling())
    clients = []
    for index in range(members):
        server_end, client_end = socket.socketpair()
        reactor.adopt(server_end, ("pair", index))
        client_end.sendall(b"LOGIN u%d\n" % index)
        clients.append(client_end)
    for _ in range(3):
        reactor.run_once()
    for client in clients:
        client.setblocking(False)
        try:
            while client.recv(65536):
                pass
        except BlockingIOError:
            pass
        client.setblocking(True)
    return reactor, clients


def ping_turns(rounds: int) -> float:
    reactor, (client,) = make_room(1)
    recv, send, run_once = client.recv, client.sendall, reactor.run_once
    started = time.process_time()
    for _ in range(rounds):
        send(b"PING\n")
        run_once()
        assert recv(64) == b"PONG\n"
    elapsed = time.process_time() - started
    reactor.close()
    return elapsed / rounds


def msg_turns(rounds: int, room: int = 10) -> float:
    reactor, clients = make_room(room)
    sender, others = clients[0], clients[1:]
    started = time.process_time()
    for _ in range(rounds):
        sender.sendall(b"MSG hello everyone\n")
        run_once = reactor.run_once
        run_once()
        for other in others:
            other.recv(64)
    elapsed = time.process_time() - started
    reactor.close()
    return elapsed / rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50_000)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(ping_turns, args.rounds)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0
    ping = min(ping_turns(args.rounds) for _ in range(args.trials))
    msg = min(msg_turns(args.rounds // 5) for _ in range(args.trials))
    print(f"PING turn: {ping * 1e6:.2f} us CPU (client side included), best of {args.trials}")
    print(f"MSG to 9 others: {msg * 1e6:.2f} us CPU (the 9 reads included), best of {args.trials}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
