"""Load: 1,000 concurrent logged-in clients against the real daemon.

The server is ``python -m reactor`` in a subprocess, with the default
``--max-clients``.  The test process drives all the clients itself from one
thread: blocking sockets while logging in one by one (so the login order is
known), then non-blocking sockets under one ``selectors`` selector to read
everybody's lines at once.  Every wait has a deadline; the end of every
phase is proved by a PING/PONG barrier, never by waiting a while.

Marked ``slow`` (deselect with ``-m "not slow"``); CI runs it.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from netutil import TIMEOUT, server_process

CLIENTS = 1000
PHASE_TIMEOUT = 20.0
"""Each phase (log in, broadcast, WHO, mass disconnect, barrier) must end within this."""


@contextlib.contextmanager
def descriptors_for(count: int) -> Iterator[None]:
    """Raise this process's soft RLIMIT_NOFILE to ``count`` if it is lower; restore it after."""
    if sys.platform == "win32":
        pytest.skip("1,000 sockets exceed select()'s 512 on Windows")
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.fail(f"the hard open-file limit ({hard}) is below the {count} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Peer:
    """One client: its socket, its name, the complete lines it received so far."""

    __slots__ = ("name", "sock", "lines", "_partial")

    def __init__(self, name: bytes, sock: socket.socket) -> None:
        self.name = name
        self.sock = sock
        self.lines: list[bytes] = []
        self._partial = b""

    def feed(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        self.lines.extend(complete)

    def __repr__(self) -> str:
        return f"<Peer {self.name.decode()}: {len(self.lines)} lines, last {self.lines[-1:]!r}>"


def log_in(port: int, name: bytes) -> Peer:
    """Connect and log in with a round trip, so the server's login order is ours."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"LOGIN " + name + b"\n")
    reply = b""
    for _ in range(10):  # "OK\n" is 3 bytes: a few reads at most
        chunk = sock.recv(64)
        assert chunk, f"{name!r}: end of stream before OK"
        reply += chunk
        if reply.endswith(b"\n"):
            break
    assert reply == b"OK\n", f"{name!r} got {reply!r}"
    sock.setblocking(False)
    return Peer(name, sock)


def read_until(peers: Sequence[Peer], done: Callable[[Peer], bool], what: str) -> None:
    """Read every peer's lines until ``done`` holds for each, within PHASE_TIMEOUT."""
    deadline = time.monotonic() + PHASE_TIMEOUT
    waiting = {peer for peer in peers if not done(peer)}
    selector = selectors.DefaultSelector()
    try:
        for peer in waiting:
            selector.register(peer.sock, selectors.EVENT_READ, peer)
        for _ in range(1_000_000):  # bounded in count too; the deadline comes first
            if not waiting:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(min(remaining, 1.0)):
                peer = key.data
                try:
                    data = peer.sock.recv(262144)
                except (BlockingIOError, InterruptedError):
                    continue
                assert data, f"{what}: the server closed {peer!r}"
                peer.feed(data)
                if done(peer):
                    selector.unregister(peer.sock)
                    waiting.discard(peer)
        sample = sorted(waiting, key=lambda peer: peer.name)[:5]
        raise AssertionError(f"{what}: {len(waiting)} clients not done within {PHASE_TIMEOUT} s, e.g. {sample}")
    finally:
        selector.close()


def send_to_all(peers: Sequence[Peer], data: bytes) -> None:
    """A few bytes to each peer; a fresh socket's send buffer always takes them."""
    for peer in peers:
        assert peer.sock.send(data) == len(data)


def reset(peer: Peer) -> None:
    """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.sock.close()


@pytest.mark.slow
def test_a_thousand_clients_broadcast_who_and_a_mass_reset():
    names = [b"user%04d" % number for number in range(CLIENTS)]
    random.Random(1000).shuffle(names)  # login order differs from any sorted order
    peers: list[Peer] = []
    with descriptors_for(CLIENTS + 200), server_process("--log-level", "WARNING") as server:
        # WARNING: 1,500 connection lines at INFO would fill the stderr pipe nobody reads until the end.
        try:
            started = time.monotonic()
            for name in names:
                peers.append(log_in(server.port, name))
            assert time.monotonic() - started < PHASE_TIMEOUT, "logging in 1,000 clients took too long"

            # One broadcast reaches every one of the 999 others, and only once.
            sender, others = peers[0], peers[1:]
            sender.sock.sendall(b"MSG hello, all 999 of you\n")
            read_until(others, lambda peer: len(peer.lines) >= 1, "broadcast")
            expected = b"MSG " + sender.name + b" hello, all 999 of you"
            wrong = [peer for peer in others if peer.lines != [expected]]
            assert not wrong, f"{len(wrong)} got something else, e.g. {wrong[:3]}"

            # WHO lists all 1,000, in login order.
            asker = peers[-1]
            asker.lines.clear()
            asker.sock.sendall(b"WHO\n")
            read_until([asker], lambda peer: len(peer.lines) >= CLIENTS, "WHO")
            assert asker.lines == [b"USER " + name for name in names]

            # Half of them vanish at once with a reset: each survivor hears of each leaver once.
            leavers, survivors = peers[1::2], peers[0::2]
            for peer in peers:
                peer.lines.clear()
            for peer in leavers:
                reset(peer)
            read_until(survivors, lambda peer: len(peer.lines) >= len(leavers), "INFO after the mass reset")
            send_to_all(survivors, b"PING\n")  # the barrier: PONG comes after everything before it
            read_until(survivors, lambda peer: b"PONG" in peer.lines, "PING barrier")
            leaver_names = {peer.name for peer in leavers}
            for peer in survivors:
                *infos, last = peer.lines
                assert last == b"PONG", f"{peer!r}: lines after PONG"
                count = len(infos)
                assert count == len(leaver_names), f"{peer!r}: {count} lines before PONG, e.g. {infos[:4]}"
                told = set()
                for line in infos:
                    assert line.startswith(b"INFO ") and line.endswith(b" disconnected"), f"{peer!r}: {line!r}"
                    told.add(line[len(b"INFO ") : -len(b" disconnected")])
                assert told == leaver_names, f"{peer!r}: missing {sorted(leaver_names - told)[:5]}"

            # The room is exactly the survivors, still in login order.
            asker = survivors[-1]
            asker.lines.clear()
            asker.sock.sendall(b"WHO\nPING\n")
            read_until([asker], lambda peer: b"PONG" in peer.lines, "WHO after the reset")
            assert asker.lines == [b"USER " + peer.name for peer in survivors] + [b"PONG"]
        finally:
            for peer in peers:
                if peer.sock.fileno() >= 0:
                    peer.sock.close()
        status, _, err = server.stop()
    log = err.decode("utf-8", "replace")
    assert status == 0, log
    assert "slow consumer" not in log and "Traceback" not in log, log
