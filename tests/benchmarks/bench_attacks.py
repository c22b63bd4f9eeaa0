"""Benchmark: six cheap attacks, each beside a healthy observer.

Not a test (pytest does not collect it); run it from the repository root:

    python tests/benchmarks/bench_attacks.py [--scenario NAME ...] [--quick] [--json FILE]

Theory of operation
-------------------
Six ways for a few clients to hurt everyone else within the
limits the spec allows.  This tool reproduces each against the real server
(``python -m reactor --host 127.0.0.1 --port 0 ...``, a fresh subprocess
per case) and reports what a healthy user next to the attack experiences:

- **The observer**, a separate process (this file run with ``--observer``)
  so the attackers' work does not delay its clock: it logs in as
  ``observer`` and sends PING every 100 ms on a fixed schedule, whether or
  not the last PONG came (a stall shows as a queue of late PONGs, not as
  missing samples), and times every PONG from its PING by the kernel's
  receive timestamp (``SO_TIMESTAMPNS``), so its own scheduling delays on
  a busy machine do not count.  A second
  connection in the same process, ``feeder``, sends it ``DM observer <n>``
  every 50 ms; every one must arrive, in order.  Only the PINGs sent while
  the attack runs count toward its figures; those sent in a quiet second
  before it are the baseline.
- **The attack**, driven by this process on non-blocking sockets in one
  epoll loop, which also samples the server's memory (VmRSS) and checks that
  it is alive every 50 ms.
- **The verdict**: each case prints one line of figures and, for each
  target, whether it was met (observer PONG p99 < 100 ms under
  every attack, memory bounded, the flood rate within 5%).  Speed figures
  are measurements, never assertions: the exit status is 1 only for
  correctness failures (a lost, repeated, reordered or unexpected line, a
  server that crashed, logged a traceback or exited badly, a wait that timed
  out), 2 for a usage error.

Each case ends in the same order: the observer stops and drains (every
PONG and DM must arrive within 15 s), connections that are not logged in
are closed, then the server is stopped with SIGTERM while the logged-in
ones are still held (closing thousands of users first would make the
server broadcast thousands of INFO lines), and only then are they closed.

Standard library only; Linux (epoll, /proc).  See README.md beside this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import resource
import select
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_server  # noqa: E402
import loadgen  # noqa: E402

SCENARIOS = ("idle-storm", "who-burst", "telnet-storm", "nfkc-names", "busy-turn", "flood-tick")

PING_INTERVAL = 0.1
"""The observer's PING schedule, in seconds."""
DM_INTERVAL = 0.05
"""The feeder's DM schedule, in seconds."""
P99_TARGET_MS = 100.0
"""The target: a healthy client's PING round trip stays under this at p99."""
RATE_TOLERANCE = 0.05
"""The target: a paced client gets --rate within this share over 10 s."""
TICK = 0.1
"""The server's timer wheel tick (reactor.loop.TICK)."""
SPEC_CLOSE_S = 1.0
"""protocol.md: an idle close comes at most one timer tick (1 s or less) after its deadline."""
MEMORY_SLACK_KIB = 512
"""who-burst: RSS growth allowed beyond --max-output plus one reply (allocator noise)."""
MAX_OUTPUT = 1048576
"""The server's default --max-output, which every case runs with."""

READY_TIMEOUT = 30.0
DRAIN_TIMEOUT = 15.0
LOGIN_TIMEOUT = 60.0
STORM_LIMIT = 10.0
"""idle-storm: fail when a victim is still open this long after its deadline."""
SAMPLE_EVERY = 0.05
SEND_CHUNK = 65536
RECV_SIZE = 262144

IAC_DO = b"\xff\xfd\x01"  # IAC DO ECHO: each is refused with IAC WONT ECHO
IAC_NOP = b"\xff\xf1"
FDFA_NAME = "\ufdfa" * 1363
"""1,363 x U+FDFA: 4,089 bytes of UTF-8, 24,534 code points after NFKC."""

Json = dict[str, Any]
"""A result as it goes into the JSON output."""
Scenario = Callable[..., None]
"""A scenario's function: it runs one case with the sizes the plan gives it."""

perf = time.monotonic  # CLOCK_MONOTONIC: the same clock in the observer process

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Python does not name it; Linux's value
_STAMP_SPACE = socket.CMSG_SPACE(16)


class CaseFailure(Exception):
    """A correctness failure that ends a case: the message says which."""


# -- kernel receive timestamps --------------------------------------------------------


def stamp_arrivals(sock: socket.socket) -> None:
    """Have the kernel note when data reached ``sock`` (``SO_TIMESTAMPNS``, wall clock)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def recv_stamped(sock: socket.socket, size: int) -> tuple[bytes, float]:
    """``recv``, and when the kernel received the last of it (``time.time()`` clock).

    On loopback that is when the server sent it: the figure does not
    include how long this process took to get round to reading it, which
    matters when it reads 5,000 sockets in a row, or when the machine's two
    cores are busy.  Without a timestamp, the time of the read.
    """
    data, ancillary, _flags, _addr = sock.recvmsg(size, _STAMP_SPACE)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            seconds, nanoseconds = struct.unpack("qq", payload[:16])
            return data, seconds + nanoseconds / 1e9
    return data, time.time()


# -- the observer (a process of its own) --------------------------------------------


class ObserverStream:
    """What the observer receives, checked line by line.

    Expected: ``PONG`` (the n-th answers the n-th PING), ``DM feeder <n>``
    for n = 0, 1, 2... with none lost, repeated or out of order, and
    ``INFO <name> disconnected`` (collected: the scenario decides which are
    right).  Anything else is an error.
    """

    MAX_ERRORS = 20

    def __init__(self) -> None:
        self._partial = b""
        self.pongs = 0
        self.dms = 0
        self.infos: list[str] = []
        self.errors: list[str] = []

    def feed(self, data: bytes) -> int:
        """Take a chunk as it arrived; how many PONGs it completed."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        pongs = 0
        for line in lines:
            if line == b"PONG":
                pongs += 1
            elif line.startswith(b"DM feeder "):
                self._dm(line[len(b"DM feeder "):])
            elif line.startswith(b"INFO ") and line.endswith(b" disconnected"):
                self.infos.append(line[5:-13].decode("utf-8", "replace"))
            else:
                self._error(f"unexpected line {line[:100]!r}")
        self.pongs += pongs
        return pongs

    def _dm(self, seq: bytes) -> None:
        if seq == b"%d" % self.dms:
            self.dms += 1
            return
        self._error(f"got DM #{seq.decode('utf-8', 'replace')[:20]} where #{self.dms} was due")
        if seq.isdigit() and int(seq) >= self.dms:
            self.dms = int(seq) + 1  # count the lost ones once, not every later DM

    def _error(self, text: str) -> None:
        if len(self.errors) < self.MAX_ERRORS:
            self.errors.append(text)


def login_blocking(port: int, name: str) -> socket.socket:
    """A connected, logged-in, non-blocking socket; CaseFailure otherwise."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=LOGIN_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"LOGIN %s\n" % name.encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
    except OSError as error:
        raise CaseFailure(f"{name} could not log in: {error}") from None
    if reply != b"OK\n":
        sock.close()
        raise CaseFailure(f"{name} could not log in: {reply!r}")
    sock.setblocking(False)
    stamp_arrivals(sock)
    return sock


class Outgoing:
    """A non-blocking socket's unsent bytes (the observer's sends are tiny; this is for stalls)."""

    def __init__(self, sock: socket.socket, poller: select.epoll) -> None:
        self.sock = sock
        self.poller = poller
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.pending += data
        self.flush()

    def flush(self) -> None:
        if self.pending:
            try:
                sent = self.sock.send(self.pending)
            except (BlockingIOError, InterruptedError):
                sent = 0
            self.pending = self.pending[sent:]
        mask = select.EPOLLIN | (select.EPOLLOUT if self.pending else 0)
        self.poller.modify(self.sock.fileno(), mask)


def run_observer(port: int, ping_interval: float, dm_interval: float) -> int:
    """The observer process: ping, receive the feeder's DMs, report JSON when told to stop."""
    result: Json = {"ok": False}
    try:
        result.update(observe(port, ping_interval, dm_interval))
    except CaseFailure as failure:
        result["errors"] = [str(failure)]
    except OSError as error:
        result["errors"] = [f"observer: {error}"]
    result["ok"] = not result.get("errors")
    times = os.times()
    result["cpu_s"] = times.user + times.system
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


def observe(port: int, ping_interval: float, dm_interval: float) -> Json:
    observer = login_blocking(port, "observer")
    feeder = login_blocking(port, "feeder")
    poller = select.epoll()
    poller.register(observer.fileno(), select.EPOLLIN)
    poller.register(feeder.fileno(), select.EPOLLIN)
    poller.register(sys.stdin.fileno(), select.EPOLLIN)
    to_observer = Outgoing(observer, poller)
    to_feeder = Outgoing(feeder, poller)
    stream = ObserverStream()
    feeder_partial = b""
    feeder_infos = 0
    errors: list[str] = []
    ping_sent: list[float] = []  # monotonic: the driver's windows
    ping_wall: list[float] = []  # wall clock: against the kernel's receive timestamps
    samples: list[list[float]] = []
    dms_sent = 0
    print("ready", flush=True)
    now = perf()
    next_ping = now + ping_interval  # not at once: with --burst 1, LOGIN took the only token
    next_dm = now + dm_interval
    stop_by = None
    while True:
        now = perf()
        if stop_by is None:
            if now >= next_ping:
                ping_sent.append(now)
                ping_wall.append(time.time())
                to_observer.send(b"PING\n")
                next_ping = max(next_ping + ping_interval, now)
            if now >= next_dm:
                to_feeder.send(b"DM observer %d\n" % dms_sent)
                dms_sent += 1
                next_dm = max(next_dm + dm_interval, now)
            timeout = max(0.0, min(next_ping, next_dm) - perf())
        else:
            if stream.pongs >= len(ping_sent) and stream.dms >= dms_sent:
                break
            timeout = stop_by - now
            if timeout <= 0:
                errors.append(
                    f"{len(ping_sent) - stream.pongs} PONGs and {dms_sent - stream.dms} DMs "
                    f"still missing {DRAIN_TIMEOUT:.0f} s after the attack")
                break
        for fd, events in poller.poll(timeout):
            if fd == sys.stdin.fileno():
                os.read(fd, 4096)  # "stop", or end of file: the driver is done (or gone)
                poller.unregister(fd)
                stop_by = perf() + DRAIN_TIMEOUT
                continue
            if events & select.EPOLLOUT:
                (to_observer if fd == observer.fileno() else to_feeder).flush()
            if not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                continue
            sock = observer if fd == observer.fileno() else feeder
            try:
                data, arrived = recv_stamped(sock, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as error:
                data = b""
                errors.append(f"the {'observer' if sock is observer else 'feeder'} "
                              f"connection failed: {error}")
            if not data:
                errors.append(f"the server closed the {'observer' if sock is observer else 'feeder'} "
                              f"connection")
                return {"errors": errors + stream.errors}
            if sock is observer:
                first = stream.pongs
                for k in range(first, first + stream.feed(data)):
                    if k >= len(ping_sent):
                        errors.append("more PONGs than PINGs")
                        break
                    samples.append([round(ping_sent[k], 6), round(arrived - ping_wall[k], 6)])
            else:  # the feeder is told who leaves, and nothing else
                *lines, feeder_partial = (feeder_partial + data).split(b"\n")
                for line in lines:
                    if line.startswith(b"INFO ") and line.endswith(b" disconnected"):
                        feeder_infos += 1
                    elif len(errors) < 20:
                        errors.append(f"the feeder got an unexpected line {line[:100]!r}")
    observer.close()
    feeder.close()
    errors.extend(stream.errors)
    return {
        "errors": errors,
        "pings": len(ping_sent),
        "pongs": stream.pongs,
        "dms_sent": dms_sent,
        "dms_received": stream.dms,
        "infos": stream.infos,
        "feeder_infos": feeder_infos,
        "samples": samples,
    }


class Observer:
    """The driver's handle on the observer process."""

    def __init__(self, port: int, ping_interval: float = PING_INTERVAL,
                 dm_interval: float = DM_INTERVAL) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).resolve()), "--observer",
             "--port", str(port), "--ping-interval", str(ping_interval),
             "--dm-interval", str(dm_interval)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
        )
        self.output = b""
        if b"ready\n" not in self._read_until(lambda: b"\n" in self.output, READY_TIMEOUT):
            result = self.stop()
            raise CaseFailure(f"the observer did not log in: {'; '.join(result['errors'])}")

    def _read_until(self, done: Callable[[], bool], seconds: float) -> bytes:
        deadline = perf() + seconds
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while not done():
            remaining = deadline - perf()
            if remaining <= 0:
                break
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                self.output += chunk
        return self.output

    def stop(self) -> Json:
        """Tell it to stop; its JSON result (``errors`` says what went wrong)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self._read_until(lambda: self.output.endswith(b"}\n"), DRAIN_TIMEOUT + 15)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        last = self.output.rstrip(b"\n").rpartition(b"\n")[2]
        try:
            result: Json = json.loads(last)
            return result
        except ValueError:
            self.stderr.seek(0)
            tail = self.stderr.read().decode("utf-8", "replace").strip()[-2000:]
            return {"ok": False, "errors": [f"the observer printed no result; stderr: {tail}"]}


def window_stats(samples: list[list[float]], start: float, end: float) -> Json:
    """PONG round trips (ms) of the PINGs sent in [start, end), and when the slowest was sent."""
    inside = [(rtt * 1e3, sent) for sent, rtt in samples if start <= sent < end]
    rtts = sorted(rtt for rtt, _ in inside)
    return {
        "count": len(rtts),
        "p50_ms": loadgen.percentile(rtts, 0.50),
        "p99_ms": loadgen.percentile(rtts, 0.99),
        "max_ms": rtts[-1] if rtts else None,
        "max_at_s": max(inside)[1] - start if inside else None,
    }


# -- the server and its probe --------------------------------------------------------


class AttackServer(bench_server.ChatServer):
    """``python -m reactor`` on a free port of 127.0.0.1, with the limits a case sets."""

    def __init__(self, flags: list[Any]) -> None:
        bench_server.Server.__init__(self)
        self.command = [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0",
                        *(str(flag) for flag in flags)]


class Probe:
    """The server's memory, sampled at most every SAMPLE_EVERY s; each sample checks it lives."""

    def __init__(self, server: AttackServer) -> None:
        self.server = server
        self.before = self.peak = self.last_kib = 0
        self.last = 0.0

    def rss(self) -> int:
        self.server.check_alive()
        try:
            return loadgen.server_rss_kib(self.server.pid) or 0
        except OSError:
            self.server.check_alive()
            raise

    def mark(self) -> None:
        """The baseline: memory now; the peak starts again from here."""
        self.before = self.peak = self.last_kib = self.rss()

    def sample(self) -> None:
        now = perf()
        if now - self.last >= SAMPLE_EVERY:
            self.last = now
            self.last_kib = self.rss()
            self.peak = max(self.peak, self.last_kib)

    def hold(self, seconds: float) -> None:
        """Sample for ``seconds`` while the attack works on its own."""
        until = perf() + seconds
        while perf() < until:
            self.sample()
            time.sleep(min(SAMPLE_EVERY, max(0.0, until - perf())))

    @property
    def growth_kib(self) -> int:
        return self.peak - self.before


# -- the attackers --------------------------------------------------------------------


def named(prefix: str) -> type:
    """loadgen's chat protocol, logging in as ``<prefix><i>``."""
    login_prefix = b"LOGIN " + prefix.encode()

    class Named(loadgen.Chat):
        @staticmethod
        def login(i: int) -> bytes:
            return login_prefix + b"%d\n" % i

    return Named


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:  # before connect, so the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(LOGIN_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class FloodPeer:
    """One attacking socket: sends ``unit`` over and over as fast as the server takes it."""

    def __init__(self, sock: socket.socket, unit: bytes, read: bool) -> None:
        self.sock = sock
        self.unit_len = len(unit)
        repeats = -(-(SEND_CHUNK + len(unit)) // max(1, len(unit))) if unit else 0
        self.data = memoryview(unit * repeats)  # any SEND_CHUNK window from offset < len(unit)
        self.pos = 0
        self.read = read
        self.sent = self.received = self.lines = 0
        self.closed = False


class Flood:
    """Attacking sockets in one epoll loop: they send and read (or never read)."""

    def __init__(self) -> None:
        self.poller = select.epoll()
        self.peers: dict[int, FloodPeer] = {}

    def add(self, sock: socket.socket, unit: bytes = b"", read: bool = True) -> FloodPeer:
        sock.setblocking(False)
        peer = FloodPeer(sock, unit, read)
        self.peers[sock.fileno()] = peer
        mask = (select.EPOLLIN if read else 0) | (select.EPOLLOUT if unit else 0)
        self.poller.register(sock.fileno(), mask)
        return peer

    def run(self, seconds: float, probe: Probe) -> None:
        until = perf() + seconds
        while True:
            remaining = until - perf()
            if remaining <= 0:
                return
            for fd, events in self.poller.poll(min(SAMPLE_EVERY, remaining)):
                peer = self.peers[fd]
                if events & select.EPOLLIN or (peer.read and events & (select.EPOLLHUP | select.EPOLLERR)):
                    self._receive(peer)
                if not peer.closed and events & (select.EPOLLOUT | select.EPOLLERR):
                    self._send(peer)
            probe.sample()

    def _receive(self, peer: FloodPeer) -> None:
        try:
            data = peer.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._closed(peer)
            return
        peer.received += len(data)
        peer.lines += data.count(b"\n")

    def _send(self, peer: FloodPeer) -> None:
        try:
            sent = peer.sock.send(peer.data[peer.pos:peer.pos + SEND_CHUNK])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._closed(peer)
            return
        peer.sent += sent
        peer.pos = (peer.pos + sent) % peer.unit_len

    def _closed(self, peer: FloodPeer) -> None:
        peer.closed = True
        self.poller.unregister(peer.sock.fileno())

    def close(self) -> None:
        self.poller.close()

    @property
    def closed_by_server(self) -> int:
        return sum(peer.closed for peer in self.peers.values())

    @property
    def lines_received(self) -> int:
        return sum(peer.lines for peer in self.peers.values())


# -- one case -----------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    figure: str
    measured: str
    target: str
    met: bool


class Case:
    """One server, one observer, one attack; what it measured and whether it held."""

    def __init__(self, scenario: str, name: str, flags: list[Any],
                 ping_interval: float = PING_INTERVAL, dm_interval: float = DM_INTERVAL) -> None:
        self.scenario = scenario
        self.name = name
        self.flags = [str(flag) for flag in flags]
        self.ping_interval = ping_interval
        self.dm_interval = dm_interval
        self.figures: Json = {}
        self.checks: list[Check] = []
        self.failures: list[str] = []
        self.summary = ""
        self.loose: list[socket.socket] = []  # closed before the server stops
        self.held: list[socket.socket] = []  # logged in: closed after it stopped
        self.observed: Json = {}
        self.finished = False

    # setting up and tearing down

    def start(self) -> None:
        self.server = AttackServer(self.flags)
        self.figures["server_command"] = shlex.join(["python"] + self.server.command[1:])
        self.server.start()
        self.port = self.server.port
        self.probe = Probe(self.server)
        self.observer: Observer | None = Observer(self.port, self.ping_interval, self.dm_interval)

    def finish(self) -> None:
        """Stop the observer (checking what it got), then the server, then the attackers."""
        if self.finished:
            return
        self.finished = True
        observer = getattr(self, "observer", None)
        if observer is not None:
            self.observed = observer.stop()
            self.observer = None
            for error in self.observed.get("errors", []):
                self.failures.append(f"observer: {error}")
        for sock in self.loose:
            sock.close()
        if getattr(self, "server", None) is not None:
            crashed = self.server.proc is not None and self.server.proc.poll() is not None
            status = self.server.stop()
            if crashed:
                self.failures.append(f"the server exited with status {status} during the run:\n"
                                     f"{self.server.log_tail()}")
            elif status not in (0, None):
                self.failures.append(f"the server exited with status {status} on SIGTERM:\n"
                                     f"{self.server.log_tail()}")
            if self.server.log_has(b"Traceback"):
                self.failures.append(f"the server logged a traceback:\n{self.server.log_tail(30)}")
        for sock in self.held:
            sock.close()

    def login_many(self, prefix: str, count: int) -> list[socket.socket]:
        """``count`` users ``<prefix><i>``, logged in pipelined (loadgen's way); held."""
        loadgen.raise_nofile(count + len(self.held) + 256)
        try:
            socks, _, _ = loadgen.open_clients(named(prefix), ("127.0.0.1", self.port), count,
                                               timeout=LOGIN_TIMEOUT)
        except loadgen.Failure as failure:
            raise CaseFailure(f"logging in {count} users: {failure}") from None
        self.held.extend(socks)
        return list(socks)

    def quiet(self, seconds: float) -> float:
        """A quiet stretch for the observer's baseline; when the attack may start."""
        self.probe.hold(seconds)
        return perf()

    def attack_starts(self) -> None:
        """The server's memory baseline, and the start of the CPU window."""
        self.probe.mark()
        self.window = loadgen.Window(self.server.pid)
        self.window.start()

    def attack_ends(self) -> Json:
        """CPU seconds of the server, of this process and of everything else since ``attack_starts``."""
        cpu = self.window.stop()
        self.cpu = cpu
        self.figures.update({
            "window_s": cpu["window_s"], "server_cpu_s": cpu["server_cpu_s"],
            "driver_cpu_s": cpu["gen_cpu_s"], "other_cpu_s": cpu["other_cpu_s"],
            "rss_before_kib": self.probe.before, "rss_peak_kib": self.probe.peak,
            "rss_growth_kib": self.probe.growth_kib,
        })
        return cpu

    def load_note(self) -> str:
        """``; other load N% of a core`` when other programs skewed the figures (the observer counts too)."""
        cpu = getattr(self, "cpu", None)
        if not cpu or not cpu["window_s"]:
            return ""
        other = (cpu["other_cpu_s"] or 0) / cpu["window_s"]
        return f"; other load {other:.0%} of a core" if other >= bench_server.NOISY else ""

    # the figures

    def observer_figures(self, start: float, end: float, baseline_start: float) -> Json:
        """The observer's round trips during [start, end), and before it; a p99 check."""
        samples = self.observed.get("samples") or []
        during = window_stats(samples, start, end)
        before = window_stats(samples, baseline_start, start)
        self.figures["observer"] = during
        self.figures["observer_before"] = before
        self.figures["observer_dms"] = self.observed.get("dms_received")
        if during["count"]:
            self.check("observer PONG p99", f"{during['p99_ms']:.1f} ms", f"< {P99_TARGET_MS:.0f} ms",
                       during["p99_ms"] < P99_TARGET_MS)
        else:
            self.failures.append("the observer sent no PING during the attack")
        return during

    def observer_text(self) -> str:
        during = self.figures.get("observer") or {}
        before = self.figures.get("observer_before") or {}
        if not during.get("count"):
            return "observer: no samples"
        return (f"observer PONG p50 {during['p50_ms']:.1f} / p99 {during['p99_ms']:.1f} / max "
                f"{during['max_ms']:.1f} ms (sent at +{during['max_at_s']:.1f} s) over "
                f"{during['count']} PINGs (before: p99 "
                f"{fmt(before.get('p99_ms'), '.1f')} ms); {self.figures.get('observer_dms')} DMs in order")

    def check(self, figure: str, measured: str, target: str, met: bool) -> None:
        self.checks.append(Check(figure, measured, target, met))

    def unexpected_infos(self) -> str:
        infos = self.observed.get("infos") or []
        return f"; {len(infos)} users left meanwhile ({', '.join(infos[:5])})" if infos else ""

    def report(self) -> Json:
        return {
            "scenario": self.scenario,
            "case": self.name,
            "ok": not self.failures,
            "summary": self.summary,
            "figures": self.figures,
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "failures": self.failures,
            "observer_pings": self.observed.get("pings"),
            "observer_cpu_s": self.observed.get("cpu_s"),
        }


def cpu_share(window: Json) -> float:
    return (window["server_cpu_s"] or 0) / window["window_s"] if window["window_s"] else 0.0


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# -- 1. idle-storm ------------------------------------------------------------------

IDLE_ERR = b"ERR idle-timeout\n"


def count_victim_lines(lines: bytes) -> tuple[int, int, int, bytes | None]:
    """PONG, ``INFO v<n> disconnected`` and ERR idle-timeout lines in ``lines``
    (whole lines), and the first line that is none of them.

    Counted at C speed: when 5,000 deadlines span several turns, the later
    victims are told of the earlier ones, millions of INFO lines in all,
    and a Python loop over them would make this process, not the server,
    the one that delays the closes.
    """
    pongs = lines.count(b"PONG\n")
    infos = lines.count(b" disconnected\n")
    told = lines.count(IDLE_ERR)
    if lines.count(b"\n") == pongs + infos + told and lines.count(b"INFO v") == infos:
        return pongs, infos, told, None
    for line in lines.split(b"\n"):
        if line not in (b"PONG", IDLE_ERR[:-1]) and not (
                line.startswith(b"INFO v") and line.endswith(b" disconnected")):
            return pongs, infos, told, line[:80]
    return pongs, infos, told, b"?"


def idle_storm(case: Case, clients: int, timeout: float) -> None:
    """``clients`` logged-in users whose idle deadlines all fall within a fraction of a second.

    Each sends one PING right after every login is done, in one quick pass,
    and then nothing: their deadlines are that send plus ``--idle-timeout``
    (a little early: the server stamps the line when it reads it, so the
    lateness figures are upper bounds).  Each victim notes when ``ERR
    idle-timeout`` reached its socket (the kernel's timestamp, so reading
    5,000 sockets in a row does not count); the observer must be told of
    every leaver exactly once.  Times here are wall-clock, as the kernel's
    timestamps are; ``to_mono`` turns them into the observer's clock.
    """
    case.start()
    victims = case.login_many("v", clients)
    for sock in victims:
        stamp_arrivals(sock)
    sent_at = []
    for sock in victims:
        sent_at.append(time.time())
        sock.send(b"PING\n")
    wall_minus_mono = time.time() - perf()

    def to_mono(wall: float) -> float:
        return wall - wall_minus_mono

    synced = perf()
    deadlines = [t + timeout for t in sent_at]
    first_deadline, last_deadline = min(deadlines), max(deadlines)
    index = {sock.fileno(): i for i, sock in enumerate(victims)}
    partial = [b""] * clients
    pongs = [0] * clients
    infos = [0] * clients
    told_at: list[float | None] = [None] * clients
    ended_at: list[float | None] = [None] * clients
    strange: list[str] = []
    poller = select.epoll(clients)
    for sock in victims:
        poller.register(sock.fileno(), select.EPOLLIN)
    open_left = clients
    marked = False
    try:
        while open_left:
            now = time.time()
            if now > last_deadline + STORM_LIMIT:
                raise CaseFailure(f"{open_left} of {clients} victims still open {STORM_LIMIT:.0f} s "
                                  f"after their idle deadline")
            if not marked and now >= first_deadline - 0.3:
                case.attack_starts()  # every login and PONG done; nothing has timed out yet
                marked = True
            for fd, _events in poller.poll(SAMPLE_EVERY, clients):
                i = index[fd]
                try:
                    data, arrived = recv_stamped(victims[i], RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as error:
                    strange.append(f"v{i}: {error}")
                    data, arrived = b"", time.time()
                if not data:
                    ended_at[i] = arrived
                    poller.unregister(fd)
                    open_left -= 1
                    continue
                data = partial[i] + data
                cut = data.rfind(b"\n") + 1
                partial[i] = data[cut:]
                if told_at[i] is not None and cut:
                    strange.append(f"v{i} got {data[:80]!r} after ERR idle-timeout")
                pong, info, told, odd = count_victim_lines(data[:cut])
                pongs[i] += pong
                infos[i] += info
                if told:
                    told_at[i] = arrived
                if odd is not None or told > 1 or (told and not data.endswith(IDLE_ERR)):
                    strange.append(f"v{i} got {odd or data[-80:]!r}")
            case.probe.sample()
        last_close = max(t for t in ended_at if t is not None)
        case.probe.hold(0.6)  # the observer's window goes on 0.5 s past the storm
    finally:
        poller.close()
    if not marked:
        raise CaseFailure("the victims timed out before the baseline memory was taken")
    case.attack_ends()
    case.finish()
    if strange:
        case.failures.append("victims got unexpected lines: " + "; ".join(strange[:10]))
    if sum(pongs) != clients:
        case.failures.append(f"only {sum(pongs)} of {clients} victims got their PONG")
    untold = sum(t is None for t in told_at)
    if untold:
        case.failures.append(f"{untold} of {clients} victims were closed without ERR idle-timeout")
    expected = {f"v{i}" for i in range(clients)}
    seen = case.observed.get("infos") or []
    if sorted(seen) != sorted(expected):
        case.failures.append(
            f"the observer was told of {len(seen)} departures ({len(set(seen))} different users); "
            f"expected one for each of the {clients} victims")
    late = sorted((t if t is not None else e) - d
                  for t, e, d in zip(told_at, ended_at, deadlines, strict=True) if e is not None)
    lateness = {"p50_s": loadgen.percentile(late, 0.5), "p99_s": loadgen.percentile(late, 0.99),
                "max_s": late[-1] if late else None, "min_s": late[0] if late else None}
    case.observer_figures(to_mono(first_deadline) - 0.5, to_mono(last_close) + 0.5, synced + 0.5)
    case.figures.update({
        "clients": clients, "idle_timeout_s": timeout,
        "deadline_spread_s": last_deadline - first_deadline,
        "storm_s": last_close - first_deadline,
        "close_after_deadline": lateness,
        "infos_to_leavers": sum(infos),
    })
    if lateness["max_s"] is not None:
        # (operations.md promises a tick, 0.1 s, for fewer than IDLE_STORM at once; this is a storm)
        case.check("idle closes after their deadline, max", f"{lateness['max_s']:.3f} s",
                   f"<= {SPEC_CLOSE_S:.0f} s (protocol.md: one tick)", lateness["max_s"] <= SPEC_CLOSE_S)
    case.summary = (
        f"{case.observer_text()}; server RSS +{mib(case.probe.growth_kib)} (peak "
        f"{mib(case.probe.peak)}); idle closes after their deadline p50 {fmt(lateness['p50_s'], '.3f')} "
        f"/ p99 {fmt(lateness['p99_s'], '.3f')} / max {fmt(lateness['max_s'], '.3f')} s (deadlines "
        f"spread over {last_deadline - first_deadline:.3f} s); INFO lines: the observer got "
        f"{len(seen)}, the leavers {sum(infos)}{case.load_note()}")


# -- 2. who-burst --------------------------------------------------------------------


def kernel_queues(server_port: int, client_port: int) -> tuple[int, int]:
    """Bytes the kernel holds for one loopback connection: the server side's send
    queue and the client side's receive queue (/proc/net/tcp, in hex)."""
    server_side = f"0100007F:{server_port:04X} 0100007F:{client_port:04X}"
    client_side = f"0100007F:{client_port:04X} 0100007F:{server_port:04X}"
    sent = received = 0
    with open("/proc/net/tcp") as f:
        for line in f:
            if server_side in line:
                sent = int(line.split()[4].split(":")[0], 16)
            elif client_side in line:
                received = int(line.split()[4].split(":")[1], 16)
    return sent, received


def who_burst(case: Case, users: int, whos: int, rate: int, most: float, quiet: float) -> None:
    """``users`` in the room; one more sends ``whos`` WHO at once and never reads.

    The replies first fill the kernel's buffers (its receive buffer is made
    small, but the server side's send buffer grows to megabytes), then the
    server's own queue, until it passes ``--max-output`` and the server
    stops reading WHOs.  So the case lasts until the kernel's share has not
    moved for 1 s, plus the time ``--rate`` WHOs a second take to queue
    ``--max-output`` (at most ``most`` s in all).  The server's RSS growth
    from just before the burst to its peak in that time should be at most
    ``--max-output`` plus one reply.
    """
    case.start()
    names = ["observer", "feeder"] + [f"u{i}" for i in range(users)] + ["whoer"]
    reply = sum(len(f"USER {name}\n") for name in names)
    case.login_many("u", users)
    whoer = connect(case.port, rcvbuf=4096)
    case.loose.append(whoer)  # closed before the server stops: no 2 s shutdown flush for it
    whoer.sendall(b"LOGIN whoer\n")
    if whoer.recv(64) != b"OK\n":
        raise CaseFailure("whoer could not log in")
    client_port = whoer.getsockname()[1]
    start = case.quiet(quiet)
    case.attack_starts()
    whoer.sendall(b"WHO\n" * whos)
    t0 = perf()
    queued, moved = (0, 0), t0
    while perf() - t0 < most and perf() - moved < 1.0:
        case.probe.hold(0.2)
        now_queued = kernel_queues(case.port, client_port)
        if now_queued != queued:
            queued, moved = now_queued, perf()
    settled = perf() - moved >= 1.0
    kernel = sum(queued)
    fill = (MAX_OUTPUT + reply) / (reply * rate) if rate and kernel < whos * reply else 0.0
    case.probe.hold(max(0.0, min(fill + 0.5, most - (perf() - t0))))
    cpu = case.attack_ends()
    end = perf()
    case.finish()
    bound = MAX_OUTPUT // 1024 + -(-reply // 1024) + MEMORY_SLACK_KIB
    case.observer_figures(start, end, start - quiet)
    case.figures.update({"users": users, "whos": whos, "reply_bytes": reply, "bound_kib": bound,
                         "kernel_bytes": kernel, "settled_after_s": moved - t0 if settled else None})
    case.check("server RSS growth", mib(case.probe.growth_kib),
               f"<= --max-output + one reply ({reply // 1024} KiB) + {MEMORY_SLACK_KIB} KiB = {mib(bound)}",
               case.probe.growth_kib <= bound)
    if not settled:
        how = f"still taking more after {most:.0f} s"
    elif kernel >= whos * reply:
        how = "every reply fitted in the kernel's buffers"
    else:
        how = (f"full after {moved - t0:.1f} s; then {fill + 0.5:.1f} s for --max-output to fill"
               if rate else f"full after {moved - t0:.1f} s")
    case.summary = (f"server RSS +{mib(case.probe.growth_kib)} (one WHO reply {reply / 1024:.0f} KiB; "
                    f"bound {mib(bound)}); the kernel held {mib(kernel / 1024)} of the "
                    f"{mib(whos * reply / 1024)} asked for, {how}; server CPU {cpu_share(cpu):.0%}; "
                    f"{case.observer_text()}{case.unexpected_infos()}{case.load_note()}")


# -- 3. telnet-storm, 4. nfkc-names, 5. busy-turn: streams of cheap input ---------------


def run_flood(case: Case, flood: Flood, duration: float, quiet: float) -> Json:
    """Let ``flood`` run ``duration`` s after a quiet stretch; the server's CPU and memory."""
    start = case.quiet(quiet)
    case.attack_starts()
    flood.run(duration, case.probe)
    cpu = case.attack_ends()
    end = perf()
    flood.close()
    case.finish()
    case.observer_figures(start, end, start - quiet)
    case.figures.update({
        "attack_lines_received": flood.lines_received,
        "attackers_closed_by_server": flood.closed_by_server,
    })
    return cpu


def telnet_storm(case: Case, connections: int, command: str, duration: float, quiet: float) -> None:
    """Connections that stream one Telnet command without end, never reading."""
    case.start()
    unit = IAC_DO if command == "DO" else IAC_NOP
    flood = Flood()
    for _ in range(connections):
        sock = connect(case.port)
        case.loose.append(sock)
        flood.add(sock, unit, read=False)
    cpu = run_flood(case, flood, duration, quiet)
    sent = sum(peer.sent for peer in flood.peers.values()) // len(unit)
    case.figures["commands_sent"] = sent
    case.summary = (f"server CPU {cpu_share(cpu):.0%}; RSS +{mib(case.probe.growth_kib)}; "
                    f"{case.observer_text()}; {sent:,} commands written into the sockets"
                    + (f"; {flood.closed_by_server} attackers closed" if flood.closed_by_server else "")
                    + case.load_note())


def nfkc_names(case: Case, connections: int, command: str, duration: float, quiet: float) -> None:
    """Legal 4 KB lines whose name argument NFKC would blow up 18-fold, at the default rate."""
    case.start()
    flood = Flood()
    for i in range(connections):
        sock = connect(case.port)
        if command == "LOGIN":
            case.loose.append(sock)
            line = f"LOGIN {FDFA_NAME}\n"
        else:
            case.held.append(sock)
            sock.sendall(b"LOGIN n%d\n" % i)
            if sock.recv(64) != b"OK\n":
                raise CaseFailure(f"n{i} could not log in")
            line = f"DM {FDFA_NAME} x\n"
        flood.add(sock, line.encode(), read=True)
    cpu = run_flood(case, flood, duration, quiet)
    handled = flood.lines_received / cpu["window_s"]
    case.figures["attack_lines_per_s"] = handled
    case.summary = (f"{case.observer_text()}; server CPU {cpu_share(cpu):.0%}; the server refused "
                    f"{handled:,.0f} such lines/s ({len(line.encode())} bytes each)"
                    + case.unexpected_infos() + case.load_note())


def busy_turn(case: Case, connections: int, room: int, duration: float, quiet: float) -> None:
    """At ``--rate 0``, connections that each stream WHO, DM and PING and read every reply.

    ``room`` idle users make each WHO reply long.  Each attacker DMs the
    next one, so no line reaches the observer; they read what they get so
    none is evicted.  The total work per turn is large: only the turn's
    own budget keeps the observer's turn short.
    """
    case.start()
    case.login_many("r", room)
    flood = Flood()
    for i in range(connections):
        sock = connect(case.port)
        case.held.append(sock)
        sock.sendall(b"LOGIN b%d\n" % i)
        if sock.recv(64) != b"OK\n":
            raise CaseFailure(f"b{i} could not log in")
        partner = b"b%d" % ((i + 1) % connections)
        unit = (b"WHO\n" + (b"DM " + partner + b" " + b"x" * 60 + b"\n") * 8 + b"PING\n" * 8)
        flood.add(sock, unit, read=True)
    cpu = run_flood(case, flood, duration, quiet)
    received = sum(peer.received for peer in flood.peers.values())
    case.figures["attack_mib_per_s"] = received / 2**20 / cpu["window_s"]
    case.figures["attack_lines_per_s"] = flood.lines_received / cpu["window_s"]
    case.summary = (f"{case.observer_text()}; server CPU {cpu_share(cpu):.0%}; the attackers got "
                    f"{flood.lines_received / cpu['window_s']:,.0f} lines/s "
                    f"({received / 2**20 / cpu['window_s']:.1f} MiB/s); this process used "
                    f"{(cpu['gen_cpu_s'] or 0) / cpu['window_s']:.0%} of a core"
                    + (f"; {flood.closed_by_server} attackers closed" if flood.closed_by_server else "")
                    + case.unexpected_infos() + case.load_note())


# -- 6. flood-tick -------------------------------------------------------------------


def flood_tick(case: Case, rate: int, pings: int, run: float, quiet: float) -> None:
    """``--rate R --burst 1``: a burst of PINGs, and a client paced by the server for ``run`` s.

    Two fresh connections (full buckets of one token) start together: one
    sends ``pings`` PINGs at once (its last PONG is due after
    ``(pings - 1) / R`` s); the other sends more PINGs than ``run`` s allow
    and the rate of its PONGs is measured between its first and its last
    within ``run`` s.
    """
    case.start()
    burst = connect(case.port)
    paced = connect(case.port)
    case.loose.extend([burst, paced])
    start = case.quiet(quiet)
    case.attack_starts()
    t0 = perf()
    burst.sendall(b"PING\n" * pings)
    paced.sendall(b"PING\n" * int(rate * run * 2 + 10))
    times: dict[int, list[float]] = {burst.fileno(): [], paced.fileno(): []}
    partial: dict[int, bytes] = {burst.fileno(): b"", paced.fileno(): b""}
    poller = select.epoll()
    for sock in (burst, paced):
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
    limit = t0 + max(run, (pings - 1) / rate) + 10
    try:
        while len(times[burst.fileno()]) < pings or perf() < t0 + run:
            if perf() > limit:
                raise CaseFailure(f"only {len(times[burst.fileno()])} of {pings} PONGs within "
                                  f"{limit - t0:.0f} s")
            for fd, _events in poller.poll(SAMPLE_EVERY):
                sock = burst if fd == burst.fileno() else paced
                data = sock.recv(65536)
                arrived = perf()
                if not data:
                    raise CaseFailure("the server closed a flood-tick connection")
                *lines, partial[fd] = (partial[fd] + data).split(b"\n")
                for line in lines:
                    if line != b"PONG":
                        raise CaseFailure(f"expected PONG, got {line[:80]!r}")
                    times[fd].append(arrived)
            case.probe.sample()
    finally:
        poller.close()
    case.attack_ends()
    end = perf()
    burst_times, paced_times = times[burst.fileno()], times[paced.fileno()]
    case.finish()
    case.observer_figures(start, end, start - quiet)
    last_pong = burst_times[pings - 1] - t0
    paced_times = [t for t in paced_times if t <= t0 + run]
    measured = (len(paced_times) - 1) / (paced_times[-1] - paced_times[0]) if len(paced_times) > 1 else 0.0
    due = (pings - 1) / rate
    case.figures.update({"rate": rate, "pings": pings, "last_pong_s": last_pong, "due_s": due,
                         "paced_run_s": run, "paced_pongs": len(paced_times), "paced_rate": measured})
    latest = due + TICK + 0.05  # the last resumption may wait for the wheel's tick, and a turn
    case.check(f"{pings} PINGs at once: the last PONG after", f"{last_pong:.2f} s",
               f"{due:.2f}-{latest:.2f} s", due - 0.01 <= last_pong <= latest)
    case.check(f"paced rate over {run:.0f} s", f"{measured:.2f}/s",
               f"{rate} +-{RATE_TOLERANCE:.0%}", abs(measured / rate - 1) <= RATE_TOLERANCE)
    case.summary = (f"{pings} PINGs at once: the last PONG after {last_pong:.2f} s (due {due:.1f} s); "
                    f"paced for {run:.0f} s: {len(paced_times)} PONGs, {measured:.2f}/s against "
                    f"--rate {rate} ({measured / rate - 1:+.1%}); {case.observer_text()}{case.load_note()}")


# -- the plan ------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[tuple[Case, Scenario, Json]]:
    """Every case of the chosen scenarios: (case, its function, its sizes)."""
    quick = args.quick
    quiet = 0.3 if quick else 1.0
    duration = args.duration or (1.0 if quick else 4.0)
    cases: list[tuple[Case, Scenario, Json]] = []
    chosen = args.scenario or list(SCENARIOS)

    if "idle-storm" in chosen:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        wanted = args.idle_clients or (300 if quick else 5000)
        clients = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard - 256)
        timeout = args.idle_timeout or (1.5 if quick else 5.0)
        cases.append((Case("idle-storm", f"idle-storm {clients}",
                           ["--idle-timeout", timeout, "--max-clients", clients + 100]),
                      idle_storm, {"clients": clients, "timeout": timeout}))
    if "who-burst" in chosen:
        room_sizes = args.who_users or ([200] if quick else [1000, 5000])
        whos = args.whos or (100 if quick else 2000)
        for rate in (50, 0):
            for users in room_sizes:
                flags = ["--max-clients", users + 100] + (["--rate", 0] if rate == 0 else [])
                label = f"who-burst {users}" + (" --rate 0" if rate == 0 else "")
                cases.append((Case("who-burst", label, flags), who_burst,
                               {"users": users, "whos": whos, "rate": rate, "most": 4.0 if quick else 15.0,
                                "quiet": quiet}))
    if "telnet-storm" in chosen:
        storms = [(5, "DO")] if quick else [(10, "DO"), (30, "DO"), (30, "NOP")]
        for connections, command in storms:
            cases.append((Case("telnet-storm", f"telnet-storm {connections}x{command}", []),
                          telnet_storm, {"connections": connections, "command": command,
                                         "duration": duration, "quiet": quiet}))
    if "nfkc-names" in chosen:
        for command in ("LOGIN", "DM"):
            connections = 3 if quick else 10
            cases.append((Case("nfkc-names", f"nfkc-names {connections}x{command}", []),
                          nfkc_names, {"connections": connections, "command": command,
                                       "duration": duration, "quiet": quiet}))
    if "busy-turn" in chosen:
        connections = args.busy_clients or (10 if quick else 50)
        room = 100 if quick else 1000
        cases.append((Case("busy-turn", f"busy-turn {connections}", ["--rate", 0, "--max-clients",
                                                                     room + connections + 100]),
                      busy_turn, {"connections": connections, "room": room,
                                  "duration": duration + (0 if quick else 1), "quiet": quiet}))
    if "flood-tick" in chosen:
        rate = 10
        cases.append((Case("flood-tick", "flood-tick", ["--rate", rate, "--burst", 1],
                           ping_interval=0.25, dm_interval=0.25),
                      flood_tick, {"rate": rate, "pings": 10 if quick else 30,
                                   "run": 2.0 if quick else 10.0, "quiet": quiet}))
    return cases


def run_case(case: Case, function: Scenario, sizes: Json) -> Json:
    """Run one case; a failure is recorded, and the server and observer are stopped whatever happens."""
    try:
        function(case, **sizes)
    except (CaseFailure, bench_server.ServerError, loadgen.Failure, OSError) as failure:
        case.failures.insert(0, f"{type(failure).__name__}: {failure}")
    finally:  # also on Ctrl+C: never leave a server or an observer running
        try:
            case.finish()
        except Exception as error:  # noqa: BLE001 - the first failure is the one to report
            case.failures.append(f"while cleaning up: {error!r}")
    return case.report()


# -- the report ----------------------------------------------------------------------


def header(argv: list[str]) -> list[str]:
    return [
        "Six attacks against the chat server, each beside a healthy observer",
        f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine:  {bench_server.cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
        f"python:   {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        f"commit:   {bench_server.git_describe()}",
        f"command:  {shlex.join([os.path.basename(sys.executable)] + argv)}",
        f"load avg: {bench_server.load_average()} (before the run); ulimit -n {bench_server._nofile()}",
    ]


def table(results: list[Json]) -> str:
    rows = [("attack", "figure", "measured", "target", "met?")]
    for result in results:
        if not result["ok"]:
            rows.append((result["case"], "correctness", "FAILED", "no lost or reordered line", "no"))
        for check in result["checks"]:
            rows.append((result["case"], check["figure"], check["measured"], check["target"],
                         "yes" if check["met"] else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Reproduce six cheap attacks against the chat server and report "
                    "what a healthy observer connection experiences.",
        epilog="Exit status: 0 when nothing was lost or broken (speed targets are reported, not "
               "enforced); 1 for a correctness failure; 2 for a usage error.",
    )
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also save every figure as JSON")
    parser.add_argument("--settle", type=float, default=None, metavar="SECONDS",
                        help="before each case, wait up to this long for the machine to be quiet "
                             "(default 5, 0 with --quick)")
    sizes = parser.add_argument_group("sizes (defaults depend on --quick)")
    sizes.add_argument("--idle-clients", type=int, metavar="N",
                       help="idle-storm: users timing out together (default 5000, or what "
                            "the open-file limit allows; --quick 300)")
    sizes.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                       help="idle-storm: the server's --idle-timeout (default 5; --quick 1.5)")
    sizes.add_argument("--who-users", type=int, action="append", metavar="N",
                       help="who-burst: users in the room (repeatable; default 1000 and 5000; --quick 200)")
    sizes.add_argument("--whos", type=int, metavar="N",
                       help="who-burst: WHO lines in the burst (default 2000; --quick 100)")
    sizes.add_argument("--busy-clients", type=int, metavar="N",
                       help="busy-turn: attacking connections (default 50; --quick 10)")
    sizes.add_argument("--duration", type=float, metavar="SECONDS",
                       help="telnet-storm, nfkc-names, busy-turn: seconds of attack (default 4; "
                            "--quick 1; busy-turn one more)")
    hidden = argparse.SUPPRESS
    parser.add_argument("--observer", action="store_true", help=hidden)
    parser.add_argument("--port", type=int, help=hidden)
    parser.add_argument("--ping-interval", type=float, default=PING_INTERVAL, help=hidden)
    parser.add_argument("--dm-interval", type=float, default=DM_INTERVAL, help=hidden)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = build_parser().parse_args(argv[1:])
    if args.observer:
        return run_observer(args.port, args.ping_interval, args.dm_interval)
    for name in ("idle_clients", "whos", "busy_clients", "idle_timeout", "duration"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"--{name.replace('_', '-')} must be more than 0", file=sys.stderr)
            return 2
    if any(n <= 0 for n in args.who_users or []):
        print("--who-users must be more than 0", file=sys.stderr)
        return 2
    if args.settle is None:
        args.settle = 0.0 if args.quick else 5.0
    print("\n".join(header(argv)), flush=True)
    results = []
    try:
        for case, function, sizes in plan(args):
            bench_server.settle(args.settle)
            print(f"  [{case.name}] running...", file=sys.stderr, flush=True)
            result = run_case(case, function, sizes)
            results.append(result)
            verdicts = "; ".join(f"{c['figure']} {c['measured']} (target {c['target']}): "
                                 f"{'met' if c['met'] else 'NOT MET'}" for c in result["checks"])
            print(f"\n{result['case']}: {result['summary'] or 'no figures'}\n    server: "
                  f"{result['figures'].get('server_command')}\n    {verdicts or 'no targets'}"
                  + ("" if result["ok"] else "\n    FAILED: " + " | ".join(result["failures"])),
                  flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; partial results:", file=sys.stderr)
    if results:
        print()
        print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": header(argv), "cases": results}, f, indent=2)
        print(f"\nresults saved to {args.json}")
    failed = [r for r in results if not r["ok"]]
    if failed:
        print("\nFAILED:", file=sys.stderr)
        for result in failed:
            for failure in result["failures"]:
                print(f"  {result['case']}: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
