"""What one broadcast costs the reactor per recipient, next to a bare send loop.

    python tests/benchmarks/bench_share.py [--users 99] [--rounds 2000] [--trials 5]

A child process connects ``--users`` clients over loopback TCP, logs them
in, and reads everything they receive.  This process runs a real
``Reactor`` on the other ends and, ``--rounds`` times, files one MSG for
the whole room in its outbox and flushes it: the path a paced message
takes (one message per turn, so nothing is batched and every recipient
costs one ``send``).  It then does the same number of sends in a bare loop
(``for sock in socks: sock.send(line)``), the least Python can do.  Last,
the reactor's path again with every socket replaced by a stub whose
``send`` takes everything at once: the Python alone, without the kernel.
It prints the best of ``--trials`` for each, per recipient.

Linux and macOS (it forks); standard library only.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import selectors
import socket
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from reactor.config import Config  # noqa: E402
from reactor.connection import READ, Connection  # noqa: E402
from reactor.loop import Reactor  # noqa: E402

LINE = b"MSG u1 " + b"x" * 64 + b"\n"
CONFIG = Config(rate=0, idle_timeout=0, max_output=1 << 26)


class StubSocket:
    """Takes every byte at once, at no cost: what is left is the reactor's Python."""

    __slots__ = ()

    def send(self, data: bytes) -> int:
        return len(data)


def python_alone(listener: socket.socket, users: int, rounds: int, trials: int) -> float:
    """Seconds of the reactor's flush per recipient, with stub sockets."""
    reactor = Reactor([listener], CONFIG)
    audience = []
    for i in range(users):
        conn = Connection(StubSocket(), ("stub", i), CONFIG.max_line, None, 0.0, reactor._selector)
        conn.mask = READ  # as if registered; nothing is ever selected
        audience.append(conn)
    audience = tuple(audience)
    best = float("inf")
    try:
        for _ in range(trials):
            started = time.perf_counter()
            for _ in range(rounds):
                reactor._outbox.file_broadcast(LINE, audience, None)
                reactor._flush()
            best = min(best, (time.perf_counter() - started) / (rounds * users))
    finally:
        reactor._connections.clear()  # stubs: nothing to close
        reactor.close()
    return best


def receive_everything(port: int, users: int, ready_fd: int) -> None:
    """The child: log ``users`` clients in, then read until the server goes away."""
    selector = selectors.DefaultSelector()
    for i in range(users):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"LOGIN u%d\n" % i)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    os.write(ready_fd, b"!")
    while True:
        for key, _ in selector.select():
            try:
                if not key.fileobj.recv(1 << 20):
                    return
            except BlockingIOError:
                pass
            except OSError:
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=99)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", 0), backlog=args.users)
    port = listener.getsockname()[1]
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            listener.close()
            receive_everything(port, args.users, ready_write)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_write)  # so a child that dies is an end of file, not a hang
    reactor = Reactor([listener], CONFIG)
    try:
        if not os.read(ready_read, 1):
            print("the receiving process failed to connect", file=sys.stderr)
            return 1
        machine = reactor._machine
        deadline = time.monotonic() + 30
        while len(machine._members) < args.users and time.monotonic() < deadline:
            reactor.run_once()
        if len(machine._members) < args.users:
            print(f"only {len(machine._members)} of {args.users} logged in", file=sys.stderr)
            return 1
        audience = machine._current_audience()
        socks = [conn.sock for conn in audience]
        outbox = reactor._outbox

        def reactor_flush() -> None:
            for _ in range(args.rounds):
                outbox.file_broadcast(LINE, audience, None)
                reactor._flush()

        def bare_loop() -> None:
            for _ in range(args.rounds):
                for sock in socks:
                    sock.send(LINE)

        def catch_up() -> int:
            """Let the loop send what a full kernel buffer held back; how many were behind."""
            behind = sum(1 for conn in audience if conn.queue)
            deadline = time.monotonic() + 30
            while any(conn.queue for conn in audience) and time.monotonic() < deadline:
                reactor.run_once()
            return behind

        best = {"reactor": float("inf"), "bare": float("inf")}
        for _ in range(args.trials):
            for name, run in (("reactor", reactor_flush), ("bare", bare_loop)):
                started = time.process_time()
                try:
                    run()
                except BlockingIOError:  # only the bare loop has no queue to fall back on
                    print("the receiving process fell behind: a kernel buffer filled; "
                          "try fewer --rounds", file=sys.stderr)
                    return 1
                per_recipient = (time.process_time() - started) / (args.rounds * args.users)
                if catch_up():
                    # Queued sends make no system call: this trial would look too cheap.
                    continue
                best[name] = min(best[name], per_recipient)
        if best["reactor"] == float("inf"):
            print("the receiving process fell behind in every trial; try fewer --rounds", file=sys.stderr)
            return 1
    finally:
        reactor.close()
        os.waitpid(child, 0)
    with socket.create_server(("127.0.0.1", 0)) as unused_listener:
        stub = python_alone(unused_listener, args.users, args.rounds, args.trials)
    print(f"{args.users} recipients, {args.rounds} one-message turns, best of {args.trials}:")
    print(f"  reactor flush (outbox + Reactor._send_to): {best['reactor'] * 1e6:.2f} us CPU per recipient")
    print(f"  bare sock.send loop:                          {best['bare'] * 1e6:.2f} us CPU per recipient")
    print(f"  reactor flush, stub sockets (Python alone):   {stub * 1e9:.0f} ns per recipient")
    return 0


if __name__ == "__main__":
    sys.exit(main())
