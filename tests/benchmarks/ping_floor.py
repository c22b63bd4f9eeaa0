"""The floor under the ping scenario: the least a Python loop can do per round trip.

    python tests/benchmarks/ping_floor.py [--count N] [--runs N]

Starts, in a child process, a server with no protocol at all: one
``selectors`` loop that answers every ``PING`` line in a read with ``PONG``
and every other line with ``OK`` (enough for the load generator's login),
one ``recv`` and one ``send`` per readable socket.  Then it runs the
benchmark's own ping load generator against it and prints p50 and p99.

The same three system calls per round trip as our server and Redis
(``epoll_wait``, ``recv``, ``send``), and the least Python that can glue
them: what is left between this figure and ours is the cost of the
protocol (framing, the state machine, the outbox), and what is left
between this figure and Redis's is the cost of an interpreter.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import selectors
import socket
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def serve(listener: socket.socket) -> None:
    """Answer lines until killed; one recv and at most one send per ready socket."""
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, _ in selector.select():
            sock = key.data
            if sock is None:
                sock, _ = listener.accept()
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(sock, selectors.EVENT_READ, sock)
                continue
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                continue
            # Sequential pings arrive one whole line per read; a floor need
            # not handle lines split across reads, nor a full send buffer.
            pings = data.count(b"PING\n")
            others = data.count(b"\n") - pings
            sock.send(b"PONG\n" * pings + b"OK\n" * others)


def measure(port: int, count: int) -> dict:
    completed = subprocess.run(
        [sys.executable, str(HERE / "loadgen.py"), "--proto", "chat", "--port", str(port),
         "ping", "--count", str(count), "--warmup", str(count // 10)],
        capture_output=True, timeout=300,
    )
    try:
        return json.loads(completed.stdout)
    except ValueError:
        return {"ok": False, "error": completed.stderr.decode(errors="replace")[-2000:] or "no result"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="timed round trips per run")
    parser.add_argument("--runs", type=int, default=3, help="runs, each on a fresh server")
    parser.add_argument("--serve", type=int, metavar="FD", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:  # the child: serve on the inherited listening socket
        serve(socket.socket(fileno=args.serve))
        return 0
    results = []
    for _ in range(args.runs):
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(listener.fileno())],
            pass_fds=(listener.fileno(),),
        )
        try:
            results.append(measure(listener.getsockname()[1], args.count))
        finally:
            child.kill()
            child.wait()
            listener.close()
    failed = [r.get("error") for r in results if not r.get("ok")]
    if failed:
        print(f"ping floor: FAILED: {failed[0]}", file=sys.stderr)
        return 1
    p50 = statistics.median(r["p50_us"] for r in results)
    p99 = statistics.median(r["p99_us"] for r in results)
    print(f"ping floor (a bare selectors loop, {sys.implementation.name} "
          f"{'.'.join(map(str, sys.version_info[:3]))}): p50 {p50:.1f} us, p99 {p99:.1f} us "
          f"(median of {len(results)} runs of {args.count} round trips)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
