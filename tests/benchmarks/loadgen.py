"""Load generator for ``bench_server.py``: one process, one epoll loop.

Not a test (pytest does not collect it).  ``bench_server.py`` runs it as a
separate process, once against our chat server and once against
``redis-server`` pub/sub, with the same arguments but ``--proto``:

    python tests/benchmarks/loadgen.py --proto chat|redis --port P[,P...] \\
        [--server-pid PID[,PID...]] [--hold] [--tls [--tls-ca FILE]] MODE [options]

and it prints one JSON object on stdout (``"ok": false`` and ``"error"``
when a check failed or a wait timed out; exit status 1).  Several ports
are a cluster's nodes (``bench_cluster_server.py``): connection ``i`` goes
to the (i mod n)-th, and several PIDs (the nodes and their Redis) are
measured together and each on its own.  Modes:

``fanout``
    ``--clients`` connections log in (chat: ``LOGIN u<i>``; redis:
    ``SUBSCRIBE room``); ``--senders`` of them (redis: that many extra
    publisher connections, since a RESP2 subscriber cannot publish) each
    send ``--messages`` 64-byte messages as fast as the socket takes them.
    Each sender's whole byte stream is built before the clock starts and
    sent in 256 KiB slices from a non-blocking socket, interleaved with
    reading.  Receivers ``recv_into`` a buffer allocated (and touched) in
    advance, in reads of up to 256 KiB, and count deliveries with
    ``bytearray.count``; every delivery is parsed and checked only after
    the clock stops: exactly the expected messages from every sender, in
    order, nothing damaged, duplicated or extra.
``latency``
    The same room, but each sender is paced at ``--rate`` messages per
    second by a scheduler (every message is sent at its slot time; senders
    are staggered evenly) for ``--duration`` seconds.  The payload carries
    the ``time.perf_counter_ns()`` at which it was sent; a receiver computes
    the delay of every delivery on the read that completed it.  The same
    checks as fanout follow.
``connections``
    ``--clients`` connections connect and log in, pipelined (connects are
    not waited for, each sends its login at once, OKs are collected as they
    come; at most somaxconn in progress at once); then the generator sleeps
    ``--idle`` seconds.  Reports the login time, the server's resident
    memory before, after, and after the idle time (``/proc/PID/status``
    VmRSS), and its CPU over the idle time.
``ping``
    One connection, ``--warmup`` then ``--count`` sequential PING round
    trips (blocking socket, TCP_NODELAY); p50, p99 and p99.9 in microseconds.
``handshakes``
    ``--count`` new connections, ``--parallel`` in progress at once, each:
    connect, TLS handshake (with ``--tls``), PING, PONG, close.  The rate,
    the server's CPU per connection (schedstat), and each one's time from
    connect to PONG.

With ``--tls`` (fanout, connections, handshakes) every connection is
wrapped in ``ssl``, non-blocking, verifying the server's certificate
against ``--tls-ca`` and its name; every handshake is full (no session is
offered back; one resumed all the same is an error).  A handshake, a read
or a write that raises ``SSLWantReadError`` or ``SSLWantWriteError`` waits
for that readiness and is tried again (a write with the same bytes); every
TLS read goes on until the SSL object wants more from the kernel, since
decrypted bytes left in it (``pending()``) are invisible to epoll.

Measured windows: server CPU from ``/proc/PID/stat`` (utime + stime over
SC_CLK_TCK, 10 ms resolution); the idle CPU of ``connections`` also from
``/proc/PID/task/*/schedstat`` (nanoseconds), since 10 ms cannot resolve
it; the generator's own CPU from ``os.times()``; and the CPU the rest of
the machine spent meanwhile (``/proc/stat`` minus both), which shows when
another program was competing for the two cores.

With ``--hold`` the generator keeps its connections open after printing
the result, until its stdin is closed (at most 120 s): the driver stops the
server first, so tearing 10,000 logged-in clients down does not become
10,000 INFO broadcasts, and no client port is left in TIME_WAIT.

The hot loops call ``select.epoll`` directly (the ``selectors`` wrapper
costs microseconds per event, a large share of a delivery in the latency
run).  Standard library only; Linux (epoll, /proc).
"""

from __future__ import annotations

import argparse
import errno
import glob
import json
import math
import os
import re
import resource
import select
import selectors
import socket
import ssl
import sys
import time

RECV_SIZE = 256 * 1024
SWEEP_NS = 2_000_000  # latency --timed-every: how often untimed receivers are drained
SEND_CHUNK = 256 * 1024
PAYLOAD_SIZE = 64
LOGIN_TIMEOUT = 60.0
STALL = 20.0
"""Fanout: fail when no socket was readable or writable for this long."""
GRACE = 0.25
"""Seconds the receivers keep reading after the last expected delivery, to
catch duplicates."""
LATE_NS = 2_000_000
LATE_SHARE = 0.01
"""Latency runs: the generator *fell behind* when more than LATE_SHARE of the
sends left more than LATE_NS after their slot (epoll waits in whole
milliseconds, so up to 1 ms late is normal)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

perf_ns = time.perf_counter_ns


KEEP: list = []
"""Sockets kept open until the driver lets go (``--hold``)."""


class Failure(Exception):
    """A check failed or a wait timed out; the message says which."""


# -- /proc and rusage ----------------------------------------------------------


def server_cpu(pid: int | tuple | None) -> float | None:
    """utime + stime of ``pid`` in seconds, from /proc/PID/stat (a tuple of PIDs: their sum)."""
    if not pid:
        return None
    if isinstance(pid, tuple):
        return sum(server_cpu(one) for one in pid)
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def server_cpu_ns(pid: int | tuple | None) -> int | None:
    """Time on CPU of every thread of ``pid``, in ns (/proc/PID/task/*/schedstat; a tuple: the sum)."""
    if not pid:
        return None
    if isinstance(pid, tuple):
        return sum(server_cpu_ns(one) for one in pid)
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path, "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just exited
    return total


def server_rss_kib(pid: int | tuple | None) -> int | None:
    if not pid:
        return None
    if isinstance(pid, tuple):
        return sum(server_rss_kib(one) for one in pid)
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return None


def machine_busy() -> float:
    """CPU seconds spent by the whole machine, all cores (/proc/stat, not idle or iowait)."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Window:
    """Wall time, server CPU and generator CPU between ``start`` and ``stop``.

    With several server PIDs (a cluster's nodes and its engine), the server
    CPU is their sum, and ``cpu_by_pid_s`` gives each one's share in
    nanoseconds' resolution (schedstat), since one process's part of a short
    window is often under the 10 ms steps of /proc/PID/stat."""

    def __init__(self, pid: int | tuple | None) -> None:
        self.pid = pid
        self.each = pid if isinstance(pid, tuple) else ()

    def start(self) -> None:
        self.busy0 = machine_busy()
        self.srv0 = server_cpu(self.pid)
        self.each0 = [server_cpu_ns(one) for one in self.each]
        self.gen0 = own_cpu()
        self.t0 = perf_ns()

    def stop(self, t_end_ns: int | None = None) -> dict:
        t1 = perf_ns() if t_end_ns is None else t_end_ns
        gen1 = own_cpu()
        each1 = [server_cpu_ns(one) for one in self.each]
        srv1 = server_cpu(self.pid)
        busy1 = machine_busy()
        wall = (t1 - self.t0) / 1e9
        server = None if srv1 is None else srv1 - self.srv0
        gen = gen1 - self.gen0
        busy = busy1 - self.busy0
        measured = {
            "window_s": wall,
            "server_cpu_s": server,
            "gen_cpu_s": gen,
            # everything else the machine did meanwhile: other processes, and
            # kernel (softirq) time charged to neither process
            "other_cpu_s": None if server is None else max(0.0, busy - server - gen),
        }
        if self.each:
            measured["cpu_by_pid_s"] = {
                str(one): (b - a) / 1e9 for one, a, b in zip(self.each, self.each0, each1, strict=True)
            }
        return measured


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise Failure(
            f"need {needed} file descriptors but the hard limit is {hard} (ulimit -Hn)"
        )


def percentile(sorted_values: list, q: float):
    """Nearest-rank percentile of an already sorted list: the smallest value
    with at least ``q`` of the values at or below it."""
    if not sorted_values:
        return None
    rank = math.ceil(q * len(sorted_values) - 1e-9)
    return sorted_values[min(len(sorted_values), max(1, rank)) - 1]


# -- the two protocols ---------------------------------------------------------


def payload(sid: int, seq: int, ts: int = 0) -> bytes:
    """64 bytes: ``#<sender>:<seq>:<send time ns>:`` padded with ``x``."""
    head = b"#%d:%d:%d:" % (sid, seq, ts)
    return head + b"x" * (PAYLOAD_SIZE - len(head))


_RESP_MESSAGE_HEAD = b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$%d\r\n" % PAYLOAD_SIZE


class Chat:
    name = "chat"
    marker = b"\n"  # exactly one per delivered MSG line
    # One delivered line, fully: the username must match the sender id.
    line_re = re.compile(rb"MSG u(\d+) #(\d+):(\d+):(\d+):x*\n")
    ts_re = re.compile(rb"#\d+:\d+:(\d+):")
    ping = b"PING\n"
    pong = b"PONG\n"

    @staticmethod
    def login(i: int) -> bytes:
        return b"LOGIN u%d\n" % i

    @staticmethod
    def login_done(buf: bytes) -> bool:
        return buf.endswith(b"\n")

    @staticmethod
    def login_ok(buf: bytes) -> bool:
        return buf == b"OK\n"

    @staticmethod
    def message(sid: int, seq: int, ts: int = 0) -> bytes:
        return b"MSG " + payload(sid, seq, ts) + b"\n"

    @staticmethod
    def delivery_len(sid: int) -> int:
        return len(b"MSG u%d " % sid) + PAYLOAD_SIZE + 1


class Redis:
    name = "redis"
    marker = b"*"  # one per pub/sub message: the payload never holds a '*'
    line_re = re.compile(
        re.escape(_RESP_MESSAGE_HEAD) + rb"#(\d+):(\d+):(\d+):x*\r\n"
    )
    ts_re = Chat.ts_re
    ping = b"*1\r\n$4\r\nPING\r\n"
    pong = b"+PONG\r\n"
    _subscribed = re.compile(rb"\*3\r\n\$9\r\nsubscribe\r\n\$4\r\nroom\r\n:\d+\r\n")

    @staticmethod
    def login(i: int) -> bytes:
        return b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nroom\r\n"

    @classmethod
    def login_done(cls, buf: bytes) -> bool:
        return buf.count(b"\n") >= 6 or buf.startswith(b"-") and buf.endswith(b"\n")

    @classmethod
    def login_ok(cls, buf: bytes) -> bool:
        return cls._subscribed.fullmatch(buf) is not None

    @staticmethod
    def message(sid: int, seq: int, ts: int = 0) -> bytes:
        p = payload(sid, seq, ts)
        return b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n$%d\r\n%s\r\n" % (len(p), p)

    @staticmethod
    def delivery_len(sid: int) -> int:
        return len(_RESP_MESSAGE_HEAD) + PAYLOAD_SIZE + 2


PROTOCOLS = {"chat": Chat, "redis": Redis}


# -- connecting ----------------------------------------------------------------


def new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def somaxconn() -> int:
    """The kernel's cap on a listen backlog (both servers listen with it)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return max(1, int(f.read()))
    except (OSError, ValueError):
        return socket.SOMAXCONN


class ClientTLS:
    """How the generator speaks TLS: a client context that trusts the run's private CA.

    Every connection verifies the server's certificate and name, and does a
    full handshake: no session is ever offered back, so nothing is resumed.
    """

    def __init__(self, cafile: str, server_name: str) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        self.server_name = server_name

    def wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        return self.context.wrap_socket(
            sock, server_hostname=self.server_name, do_handshake_on_connect=False)


def tls_info(sock) -> dict:
    """What a TLS connection negotiated (nothing for a plain socket)."""
    if not isinstance(sock, ssl.SSLSocket):
        return {}
    session = sock.session
    return {
        "tls_version": sock.version(),
        "tls_cipher": (sock.cipher() or ("?",))[0],
        "tls_session_ticket": bool(session is not None and session.has_ticket),
    }


def is_connected(sock: socket.socket) -> bool:
    """Whether a non-blocking connect has completed (on loopback it often has at once)."""
    try:
        sock.getpeername()
    except OSError as error:
        if error.errno == errno.ENOTCONN:
            return False
        raise Failure(f"connect failed: {error}") from None
    return True


CONNECTING, HANDSHAKING, SENDING, READING = "connecting", "handshaking", "sending", "reading"


class Dial:
    """One connection on its way from ``connect`` to the reply to its first line."""

    __slots__ = ("index", "sock", "stage", "line", "reply", "mask", "t0")

    def __init__(self, index: int, sock, line: bytes | None) -> None:
        self.index = index
        self.sock = sock
        self.line = line  # the first line to send (a login, a PING), or None: connect only
        self.stage = CONNECTING
        self.reply = b""
        self.mask = 0  # 0: not on the epoll object
        self.t0 = perf_ns()


def since(d: Dial) -> str:
    """Seconds since ``d``'s connect, for an error message (a server's handshake deadline shows)."""
    return f"{(perf_ns() - d.t0) / 1e9:.1f}"


def dial_many(addr, count: int, *, line_for, reply_done, reply_ok, on_ready,
              tls: ClientTLS | None = None, timeout: float = LOGIN_TIMEOUT,
              max_pending: int | None = None, purpose: str = "login",
              what: str = "logged in") -> tuple:
    """Open ``count`` connections, each up to the reply to its first line.

    ``addr`` is ``(host, port)``, or a list of them (a cluster's nodes):
    connection ``i`` then goes to ``addr[i % len(addr)]``.
    Pipelined: connects are started without waiting; each connection takes
    its next step (TLS handshake, then its line) as soon as it can, and
    replies are collected as they arrive.  At most ``max_pending`` are in
    progress at once (default: the kernel's listen-backlog cap, somaxconn),
    so the server's accept queue never overflows: an overflow drops the SYN,
    and the kernel's 1 s retransmission timer, not the server, would then
    decide the time.  ``line_for(i)`` gives connection ``i``'s line (None:
    connect, and handshake, only); ``reply_done(buf)`` says the reply is
    complete, ``reply_ok(buf)`` that it is right.  ``on_ready(dial)`` gets
    each finished connection, off the epoll object.  Over TLS every read
    goes on until the SSL object wants more from the kernel, so no decrypted
    byte waits in it (``pending()``) unseen by epoll.  Returns
    ``(first_connect_ns, last_ready_ns)``; closes every socket on failure.
    """
    if max_pending is None:
        max_pending = somaxconn()
    addrs = addr if isinstance(addr, list) else [addr]  # several: connection i goes to addrs[i % n]
    ep = select.epoll(min(count, max_pending) + 1)
    made: list = []
    dials: dict = {}  # fd -> Dial in progress
    deadline = time.monotonic() + timeout
    t_first = perf_ns()
    t_last = t_first
    done = 0

    def step(d: Dial) -> int | None:
        """Take ``d`` as far as it goes now: the epoll event it waits for, or None when ready."""
        sock = d.sock
        while True:
            stage = d.stage
            if stage is CONNECTING:
                return EPOLLOUT
            if stage is HANDSHAKING:
                try:
                    sock.do_handshake()
                except ssl.SSLWantReadError:
                    return EPOLLIN
                except ssl.SSLWantWriteError:
                    return EPOLLOUT
                except (OSError, ValueError) as error:
                    raise Failure(f"connection #{d.index}: TLS handshake failed "
                                  f"{since(d)} s after its connect: {error}") from None
                if d.line is None:
                    return None
                d.stage = SENDING
                continue
            if stage is SENDING:
                try:
                    sent = sock.send(d.line)
                except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                    return EPOLLOUT
                except ssl.SSLWantReadError:
                    return EPOLLIN
                except OSError as error:
                    if error.errno == errno.ENOTCONN:  # plain: connect not finished yet
                        d.stage = CONNECTING
                        return EPOLLOUT
                    raise Failure(f"connection #{d.index}: sending the {purpose} failed "
                                  f"{since(d)} s after its connect: {error}") from None
                if sent != len(d.line):
                    raise Failure(f"connection #{d.index}: the {purpose} line did not fit the socket")
                d.stage = READING
                return EPOLLIN  # the reply cannot be there yet: wait for it
            # READING
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return EPOLLIN
            except ssl.SSLWantWriteError:
                return EPOLLOUT
            except OSError as error:
                raise Failure(f"connection #{d.index} failed during {purpose}, "
                              f"{since(d)} s after its connect: {error}") from None
            if not data:
                raise Failure(
                    f"connection #{d.index} closed by the server during {purpose}, "
                    f"{since(d)} s after its connect (received {d.reply!r})"
                )
            d.reply += data
            if tls is not None and sock.pending():
                continue  # decrypted bytes wait in the SSL object: epoll would never say
            if reply_done(d.reply):
                if not reply_ok(d.reply):
                    raise Failure(f"connection #{d.index}: unexpected {purpose} reply {d.reply[:200]!r}")
                return None
            if tls is None:
                return EPOLLIN  # plain: one read per event
            # TLS: read on until the SSL object wants more from the kernel

    def advance(d: Dial) -> None:
        nonlocal done, t_last
        mask = step(d)
        fd = d.sock.fileno()
        if mask is None:
            if d.mask:
                ep.unregister(fd)
            del dials[fd]
            done += 1
            t_last = perf_ns()
            on_ready(d)
        elif not d.mask:
            ep.register(fd, mask)
            d.mask = mask
        elif mask != d.mask:
            ep.modify(fd, mask)
            d.mask = mask

    try:
        while done < count:
            while len(made) < count and len(dials) < max_pending:
                i = len(made)
                sock = new_socket()
                to = addrs[i % len(addrs)]
                err = sock.connect_ex(to)
                if err not in (0, errno.EINPROGRESS):
                    sock.close()
                    raise Failure(
                        f"connect #{i} of {count} to {to[0]}:{to[1]} failed: "
                        f"{os.strerror(err)}"
                    )
                d = Dial(i, sock, line_for(i))
                made.append(d)
                if tls is not None:
                    if is_connected(sock):
                        d.sock = tls.wrap(sock)
                        d.stage = HANDSHAKING
                elif d.line is not None:
                    d.stage = SENDING  # on loopback the connect is usually done already
                dials[d.sock.fileno()] = d
                advance(d)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failure(f"only {done} of {count} connections {what} "
                              f"within {timeout:.0f} s")
            for fd, _events in ep.poll(min(remaining, 1.0)):
                d = dials[fd]
                if d.stage is CONNECTING:
                    err = d.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise Failure(f"connect #{d.index} failed: {os.strerror(err)}")
                    if tls is not None:
                        d.sock = tls.wrap(d.sock)  # the same descriptor
                        d.stage = HANDSHAKING
                    elif d.line is None:
                        d.stage = READING  # connected is all it needed
                        d.reply = b""
                        ep.unregister(fd)
                        del dials[fd]
                        done += 1
                        t_last = perf_ns()
                        on_ready(d)
                        continue
                    else:
                        d.stage = SENDING
                advance(d)
    except BaseException:
        for d in made:
            d.sock.close()
        raise
    finally:
        ep.close()
    return t_first, t_last


def open_clients(proto, addr, count: int, first: int = 0, login: bool = True,
                 timeout: float = LOGIN_TIMEOUT, max_pending: int | None = None,
                 tls: ClientTLS | None = None) -> tuple:
    """``count`` connected (and, if ``login``, logged-in) non-blocking sockets.

    Each connection is connected (over TLS: and its handshake done), then
    sends its login at once and waits for the reply; see ``dial_many``.
    Returns ``(sockets, first_connect_ns, last_ok_ns)``.
    """
    socks: list = [None] * count

    def keep(d: Dial) -> None:
        socks[d.index] = d.sock

    t_first, t_last = dial_many(
        addr, count,
        line_for=(lambda i: proto.login(first + i)) if login else (lambda i: None),
        reply_done=proto.login_done, reply_ok=proto.login_ok, on_ready=keep, tls=tls,
        timeout=timeout, max_pending=max_pending,
        what="logged in" if login else ("connected" if tls is None else "connected over TLS"),
    )
    return socks, t_first, t_last


# -- checking deliveries ---------------------------------------------------------


def verify_stream(proto, data: bytes, expect: dict, label: str, errors: list,
                  seq_names: list) -> int:
    """Check one receiver's whole stream; return the number of deliveries found.

    ``expect`` maps a sender id (bytes, as in the payload) to how many of
    its messages this receiver must get, in order 0, 1, 2, ...  Anything
    else (a missing, extra, repeated or reordered message, a damaged line,
    bytes that are not a delivery) is appended to ``errors``.
    """
    found = proto.line_re.findall(data)
    nxt = dict.fromkeys(expect, 0)
    problems = []
    markers = data.count(proto.marker)
    if markers != len(found):
        problems.append(
            f"{markers - len(found)} of {markers} deliveries are damaged or not deliveries"
            + first_bad_line(proto, data)
        )
    for match in found:
        if proto is Chat:  # (user, sender id, seq, ts): the user named must be the sender
            user, sid, seq = match[:3]
        else:  # (sender id, seq, ts)
            sid, seq = match[:2]
            user = sid
        n = nxt.get(sid)
        if n is None or user != sid:
            problems.append(f"unexpected line from u{user.decode()} with sender id {sid.decode()}")
            continue
        if n >= len(seq_names) or seq != seq_names[n]:
            problems.append(f"from sender {sid.decode()}: got #{seq.decode()} where #{n} was due")
        nxt[sid] = n + 1
        if len(problems) > 3:
            break
    if not problems:
        for sid, want in expect.items():
            if nxt[sid] != want:
                problems.append(f"got {nxt[sid]} messages from sender {sid.decode()}, expected {want}")
        want_bytes = sum(proto.delivery_len(int(sid)) * n for sid, n in expect.items())
        if not problems and len(data) != want_bytes:
            problems.append(
                f"received {len(data)} bytes where {want_bytes} were expected "
                f"(damaged or foreign lines: {data.count(proto.marker)} delivery markers, "
                f"{len(found)} well-formed deliveries)"
            )
    for problem in problems[:3]:
        errors.append(f"{label}: {problem}")
    return len(found)


def laggard(receivers: list) -> str:
    """Where the receiver furthest behind stands, for a timeout message."""
    worst = min(receivers, key=lambda p: p.got - p.expect)
    head = bytes(worst.view[: min(worst.pos, 100)]) if worst.view is not None else b""
    tail = bytes(worst.view[max(0, worst.pos - 100) : worst.pos]) if worst.view is not None else b""
    return (f"receiver #{worst.index} has {worst.got} of {worst.expect} "
            f"({worst.pos} bytes; first {head!r}, last {tail!r})")


def first_bad_line(proto, data: bytes) -> str:
    """The first line of a chat stream that is not a well-formed delivery (error path only)."""
    if proto is not Chat:
        return ""
    for line in data.split(b"\n")[:-1]:
        if not proto.line_re.fullmatch(line + b"\n"):
            return f" (first: {line[:120]!r})"
    return ""


class Peer:
    """One connection in the fanout or latency loop.

    Everything a connection receives lands in one buffer allocated (and
    touched, so no page faults happen later) before the clock starts:
    ``recv_into`` writes straight into it, ``bytearray.count`` counts the
    deliveries, and the whole stream is checked after the clock stops.
    """

    __slots__ = ("sock", "fd", "index", "receiver", "buf", "view", "pos", "parsed",
                 "got", "expect", "out", "off", "mask", "tls")

    def __init__(self, sock, index, receiver, expect=0):
        self.sock = sock
        self.fd = sock.fileno()
        self.index = index
        self.receiver = receiver  # False: a redis publisher, which only gets replies
        self.buf = None
        self.view = None
        self.pos = 0  # bytes received so far
        self.parsed = 0  # latency: bytes whose timestamps were read
        self.got = 0  # deliveries (or, for a publisher, replies) so far
        self.expect = expect
        self.out = None  # what is left to send
        self.off = 0
        self.mask = 0
        self.tls = isinstance(sock, ssl.SSLSocket)

    def allocate(self, size: int) -> None:
        # b"\0" * n writes every byte: the pages are mapped now, not mid-run.
        self.buf = bytearray(b"\0") * (size + RECV_SIZE)
        self.view = memoryview(self.buf)

    def received(self) -> bytes:
        return bytes(self.view[: self.pos])

    def describe(self) -> str:
        return f"{'receiver' if self.receiver else 'publisher'} #{self.index}"


class Room:
    """Every connection of a fanout or latency run, on one epoll object.

    The hot loops call ``select.epoll.poll`` directly and map descriptors to
    peers with a dict: the ``selectors`` wrapper costs a few microseconds
    per event, which is most of a delivery's price in the latency run.
    """

    def __init__(self, receivers: list, sending: list) -> None:
        self.receivers = receivers
        self.sending = sending
        self.peers = list({id(p): p for p in receivers + sending}.values())
        self.ep = select.epoll(len(self.peers) + 1)
        self.by_fd = {}
        for peer in self.peers:
            peer.mask = EPOLLIN | (EPOLLOUT if peer.out is not None else 0)
            self.ep.register(peer.fd, peer.mask)
            self.by_fd[peer.fd] = peer

    def set_mask(self, peer: Peer, mask: int) -> None:
        if mask != peer.mask:
            self.ep.modify(peer.fd, mask)
            peer.mask = mask

    def read_until(self, done, seconds: float, marker: bytes, what: str) -> None:
        """Keep reading until ``done()`` (or, if ``done`` is None, for ``seconds``)."""
        until = time.monotonic() + seconds
        while done is None or not done():
            remaining = until - time.monotonic()
            if remaining <= 0:
                if done is None:
                    return
                raise Failure(f"{what} within {seconds:.0f} s")
            for fd, ev in self.ep.poll(min(remaining, 1.0)):
                if ev & READABLE:
                    read_into(self.by_fd[fd], marker)

    def finish(self, marker: bytes) -> None:
        """Redis: wait (bounded) for every PUBLISH reply; then catch duplicates."""
        pubs = [p for p in self.sending if not p.receiver]
        self.read_until(
            lambda: all(p.got >= p.expect for p in pubs), 30.0, marker,
            "publishers did not get all their PUBLISH replies",
        )
        self.read_until(None, GRACE, marker, "")
        self.ep.close()

    def keep(self) -> None:
        KEEP.extend(p.sock for p in self.peers)


EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
"""A non-blocking socket's "not now", plain or TLS (``ssl`` raises its own)."""
READABLE = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP


def build_room(proto, addr, clients: int, senders: int, messages: int,
               tls: ClientTLS | None = None):
    """Log everyone in; return (receivers, senders, login seconds).

    Each receiver's buffer is sized for exactly what it should get, plus one
    read of slack so that extra deliveries are caught and reported.
    """
    socks, t0, t1 = open_clients(proto, addr, clients, tls=tls)
    receivers = []
    sending = []
    if proto is Chat:
        for i, sock in enumerate(socks):
            expect = (senders - (1 if i < senders else 0)) * messages
            peer = Peer(sock, i, True, expect)
            receivers.append(peer)
            if i < senders:
                sending.append(peer)
    else:
        for i, sock in enumerate(socks):
            receivers.append(Peer(sock, i, True, senders * messages))
        pubs, _, _ = open_clients(proto, addr, senders, login=False, tls=tls)
        for k, sock in enumerate(pubs):
            peer = Peer(sock, k, False, messages)
            peer.allocate(messages * len(b":%d\r\n" % clients))
            sending.append(peer)
    for peer in receivers:
        want = expected_senders(proto, peer, senders, messages)
        peer.allocate(sum(proto.delivery_len(int(s)) * n for s, n in want.items()))
    return receivers, sending, (t1 - t0) / 1e9


def expected_senders(proto, peer: Peer, senders: int, messages: int) -> dict:
    ids = range(senders)
    if proto is Chat:
        ids = [s for s in ids if s != peer.index]
    return {b"%d" % s: messages for s in ids}


def check_room(proto, room: Room, senders: int, messages: int) -> dict:
    """Every receiver's stream checked line by line; publishers' replies too."""
    errors: list = []
    seq_names = [b"%d" % n for n in range(messages)]
    total = 0
    for peer in room.receivers:
        total += verify_stream(
            proto, peer.received(), expected_senders(proto, peer, senders, messages),
            f"receiver u{peer.index}", errors, seq_names,
        )
        if len(errors) > 20:
            break
    if proto is Redis:
        want = b":%d\r\n" % len(room.receivers)
        for peer in room.sending:
            data = peer.received()
            if data != want * messages:
                errors.append(
                    f"publisher {peer.index}: expected {messages} replies {want!r}, "
                    f"got {data.count(b':')} replies starting {data[:40]!r}"
                )
    for peer in room.peers:
        peer.buf = peer.view = None  # release the memory
    return {"checked_deliveries": total, "errors": errors}


def receive(peer: Peer) -> int:
    """One ``recv_into`` the peer's buffer; the bytes it read (0: nothing yet)."""
    pos = peer.pos
    if pos >= len(peer.buf):
        raise too_much(peer, pos)
    try:
        n = peer.sock.recv_into(peer.view[pos : pos + RECV_SIZE])
    except WOULD_BLOCK:
        return 0
    except OSError as error:
        raise Failure(f"{peer.describe()}: {error}") from None
    if not n:
        raise closed_early(peer)
    peer.pos = pos + n
    if peer.tls:
        n += receive_more_tls(peer)
    return n


def too_much(peer: Peer, pos: int) -> Failure:
    """The failure of a peer whose buffer, sized for what it should get, is full."""
    return Failure(
        f"{peer.describe()} received more bytes than expected ({pos}): "
        f"extra or duplicated deliveries"
    )


def closed_early(peer: Peer, more: str = "") -> Failure:
    """The failure of a peer the server hung up on before it had everything."""
    return Failure(
        f"{peer.describe()}: the server closed the connection after {peer.got} "
        f"{'deliveries' if peer.receiver else 'replies'}{more}"
    )


def receive_more_tls(peer: Peer) -> int:
    """After a TLS read: read on until the SSL object wants more from the kernel.

    One ``recv_into`` returns at most one TLS record (16 KiB); the next
    records may already be in the kernel (epoll would say so) or, decrypted,
    inside the SSL object, where epoll never looks (``pending()``).  Reading
    until ``SSLWantReadError`` leaves neither behind and costs one epoll
    turn per burst, not per record.
    """
    sock = peer.sock
    total = 0
    while True:
        pos = peer.pos
        if pos >= len(peer.buf):
            if not sock.pending():
                return total  # full, and nothing decrypted waits: the next read will say
            raise too_much(peer, pos)
        try:
            n = sock.recv_into(peer.view[pos : pos + RECV_SIZE])
        except WOULD_BLOCK:
            return total
        except OSError as error:
            raise Failure(f"{peer.describe()}: {error}") from None
        if not n:
            raise closed_early(peer, f" (and {total} more bytes)")
        peer.pos = pos + n
        total += n


def read_into(peer: Peer, marker: bytes) -> int:
    """One read; returns the deliveries it completed (0 for a publisher's replies)."""
    pos = peer.pos
    n = receive(peer)
    if peer.receiver:
        n = peer.buf.count(marker, pos, pos + n)
        peer.got += n
        return n
    peer.got += peer.buf.count(b"\n", pos, pos + n)
    return 0


# -- fanout ----------------------------------------------------------------------


def run_fanout(proto, addr, args) -> dict:
    clients, senders, messages = args.clients, args.senders, args.messages
    raise_nofile(clients + senders + 64)
    receivers, sending, login_s = build_room(proto, addr, clients, senders, messages, args.tls)
    for peer in sending:
        peer.out = memoryview(b"".join(proto.message(peer.index, n) for n in range(messages)))
    room = Room(receivers, sending)
    expected = sum(p.expect for p in receivers)
    marker = proto.marker
    waiting = sum(1 for p in receivers if p.expect)
    sending_left = len(sending)
    poll = room.ep.poll
    by_fd = room.by_fd
    window = Window(args.server_pid)
    deadline = time.monotonic() + args.timeout
    t_end = None
    t_sent = None
    window.start()
    progress = time.monotonic()
    while waiting or sending_left:
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0 or now - progress > STALL:
            got = sum(p.got for p in receivers)
            why = (f"nothing moved for {STALL:.0f} s" if remaining > 0
                   else f"timed out after {args.timeout:.0f} s")
            raise Failure(
                f"{why}: {got} of {expected} deliveries, "
                f"{sending_left} sender(s) still sending; {laggard(receivers)}"
            )
        events = poll(min(remaining, 1.0))
        if events:
            progress = now
        for fd, ev in events:
            peer = by_fd[fd]
            if ev & EPOLLOUT:
                try:
                    sent = peer.sock.send(peer.out[peer.off : peer.off + SEND_CHUNK])
                except WOULD_BLOCK:  # TLS: the next try passes the same bytes, as it must
                    sent = 0
                except OSError as error:
                    raise Failure(f"sender #{peer.index}: {error}") from None
                peer.off += sent
                if peer.off >= len(peer.out):
                    room.set_mask(peer, EPOLLIN)
                    sending_left -= 1
                    if not sending_left:
                        t_sent = perf_ns()
            if ev & READABLE:
                n = read_into(peer, marker)
                if n and peer.got - n < peer.expect <= peer.got:
                    waiting -= 1  # this receiver just got its last expected delivery
                    if not waiting:
                        t_end = perf_ns()
    measured = window.stop(t_end)
    room.finish(marker)
    cpu0 = own_cpu()
    checked = check_room(proto, room, senders, messages)
    room.keep()
    return {
        "mode": "fanout",
        **tls_info(receivers[0].sock),
        "clients": clients,
        "senders": senders,
        "messages": messages,
        "login_s": login_s,
        "deliveries": sum(p.got for p in receivers),
        "expected_deliveries": expected,
        "deliveries_per_s": expected / measured["window_s"],
        "send_s": None if t_sent is None else (t_sent - window.t0) / 1e9,
        "verify_cpu_s": own_cpu() - cpu0,
        **measured,
        **checked,
    }


# -- latency ---------------------------------------------------------------------


def send_paced(room: Room, peer: Peer, msg: bytes) -> None:
    """Send one message now; keep what the socket did not take for later."""
    if peer.out:
        peer.out += msg
        return
    try:
        sent = peer.sock.send(msg)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError as error:
        raise Failure(f"sender #{peer.index}: {error}") from None
    if sent < len(msg):
        peer.out = bytearray(msg[sent:])
        room.set_mask(peer, EPOLLIN | EPOLLOUT)


def flush_paced(room: Room, peer: Peer) -> None:
    try:
        sent = peer.sock.send(peer.out)
    except (BlockingIOError, InterruptedError):
        return
    except OSError as error:
        raise Failure(f"sender #{peer.index}: {error}") from None
    del peer.out[:sent]
    if not peer.out:
        room.set_mask(peer, EPOLLIN)


def run_latency(proto, addr, args) -> dict:
    clients, senders, rate = args.clients, args.senders, args.rate
    messages = max(1, round(rate * args.duration))
    raise_nofile(clients + senders + 64)
    receivers, sending, login_s = build_room(proto, addr, clients, senders, messages)
    room = Room(receivers, sending)  # every peer.out is None: read interest only
    # Timing every delivery costs the generator one read per delivery (198,000
    # a second at 200 msg/s), which one Python process cannot keep up with.
    # With --timed-every K only every K-th receiver is read as each line
    # arrives and timed; the others are drained in bulk every --sweep-ms and
    # only counted (their streams are still checked in full afterwards).
    untimed = {p for p in receivers if p.index % args.timed_every}
    bulk = [p for p in receivers if p in untimed and p not in sending]  # senders keep their events
    for peer in bulk:
        room.ep.unregister(peer.fd)
    bulk_done = set()
    next_sweep = 0
    sweep_ns = int(args.sweep_ms * 1e6)
    poll = room.ep.poll
    by_fd = room.by_fd
    ts_re = proto.ts_re
    message = proto.message
    interval = 1e9 / (rate * senders)  # ns between two slots, senders staggered evenly
    total = senders * messages
    latencies: list = []
    lags: list = []
    waiting = sum(1 for p in receivers if p.expect)
    window = Window(args.server_pid)
    t_end = None
    t_last_send = None
    deadline = None
    j = 0
    window.start()
    t0 = window.t0 + 1_000_000  # the first slot is 1 ms from now
    while j < total or waiting:
        now = perf_ns()
        while j < total:
            slot = t0 + int(j * interval)
            if slot > now:
                break
            peer = sending[j % senders]
            ts = perf_ns()
            send_paced(room, peer, message(peer.index, j // senders, ts))
            lags.append(ts - slot)
            j += 1
            now = ts
        if bulk and now >= next_sweep:
            for peer in bulk:
                if read_into(peer, proto.marker) and peer.got >= peer.expect and peer not in bulk_done:
                    bulk_done.add(peer)
                    waiting -= 1
                    if not waiting:
                        t_end = perf_ns()
            next_sweep = perf_ns() + sweep_ns
        if j < total:
            timeout = max(0.0, (t0 + int(j * interval) - perf_ns()) / 1e9)
        else:
            if t_last_send is None:
                t_last_send = now
                deadline = time.monotonic() + args.timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = sum(p.got for p in receivers)
                want = sum(p.expect for p in receivers)
                raise Failure(
                    f"timed out {args.timeout:.0f} s after the last send: "
                    f"{got} of {want} deliveries; {laggard(receivers)}"
                )
            timeout = min(remaining, 1.0)
        if bulk:
            timeout = min(timeout, max(0.0, (next_sweep - perf_ns()) / 1e9))
        for fd, ev in poll(timeout):
            peer = by_fd[fd]
            if ev & EPOLLOUT:
                flush_paced(room, peer)
            if not ev & READABLE:
                continue
            if not peer.receiver:
                read_into(peer, proto.marker)
                continue
            if peer in untimed:  # a sender that is not sampled: count its deliveries only
                if read_into(peer, proto.marker) and peer.got >= peer.expect and peer not in bulk_done:
                    bulk_done.add(peer)
                    waiting -= 1
                    if not waiting:
                        t_end = perf_ns()
                continue
            if not receive(peer):
                continue
            now = perf_ns()
            end = peer.pos
            # Only complete lines: a timestamp is read once its line has ended.
            if peer.buf[end - 1] == 10:  # the usual case: the read ends a line
                cut = end
            else:
                cut = peer.buf.rfind(b"\n", peer.parsed, end) + 1
                if not cut:
                    continue
            stamps = ts_re.findall(peer.buf, peer.parsed, cut)
            peer.parsed = cut
            if not stamps:
                continue
            latencies.extend([now - int(t) for t in stamps])
            n = len(stamps)
            peer.got += n
            if peer.got - n < peer.expect <= peer.got:
                waiting -= 1
                if not waiting:
                    t_end = now
    measured = window.stop(t_end)
    for peer in bulk:  # back on the epoll object, so finish() catches extra deliveries
        room.ep.register(peer.fd, EPOLLIN)
    room.finish(proto.marker)
    cpu0 = own_cpu()
    checked = check_room(proto, room, senders, messages)
    room.keep()
    latencies.sort()
    lags.sort()
    send_span = (t_last_send - t0) / 1e9 if t_last_send else 0.0
    ms = 1e6
    late = sum(1 for lag in lags if lag > LATE_NS)
    return {
        "mode": "latency",
        "clients": clients,
        "senders": senders,
        "rate_per_sender": rate,
        "messages": messages,
        "login_s": login_s,
        "timed_receivers": len(receivers) - len(untimed),
        "deliveries": len(latencies),
        "expected_deliveries": sum(p.expect for p in receivers),
        "p50_ms": percentile(latencies, 0.50) / ms,
        "p99_ms": percentile(latencies, 0.99) / ms,
        "p999_ms": percentile(latencies, 0.999) / ms,
        "max_ms": latencies[-1] / ms,
        "mean_ms": sum(latencies) / len(latencies) / ms,
        "offered_msgs_per_s": total / send_span if send_span > 0 else None,
        "schedule_lag_p50_ms": percentile(lags, 0.50) / ms,
        "schedule_lag_p99_ms": percentile(lags, 0.99) / ms,
        "schedule_lag_max_ms": lags[-1] / ms,
        "late_sends": late,
        "fell_behind": late > total * LATE_SHARE,
        "verify_cpu_s": own_cpu() - cpu0,
        **measured,
        **checked,
    }


# -- connections -----------------------------------------------------------------


def run_connections(proto, addr, args) -> dict:
    n = args.clients
    raise_nofile(n + 64)
    pid = args.server_pid
    rss0 = server_rss_kib(pid)
    window = Window(pid)
    window.start()
    socks, t_first, t_last = open_clients(proto, addr, n, tls=args.tls, max_pending=args.max_pending)
    login = window.stop(t_last)
    KEEP.extend(socks)
    rss1 = server_rss_kib(pid)
    idle = Window(pid)
    ns0 = server_cpu_ns(pid)
    idle.start()
    time.sleep(args.idle)
    ns1 = server_cpu_ns(pid)
    idled = idle.stop()
    rss2 = server_rss_kib(pid)
    # Nothing may arrive while idle (no timeout, no close): nobody is readable.
    sel = selectors.EpollSelector()
    for i, sock in enumerate(socks):
        sel.register(sock, READ, i)
    ready = sel.select(0)
    sel.close()
    errors = []
    waiting = [i for i, sock in enumerate(socks) if args.tls and sock.pending()]
    if waiting:
        errors.append(f"{len(waiting)} idle TLS connections hold decrypted bytes nobody read "
                      f"(connection #{waiting[0]} first)")
    if ready:
        key, _ = ready[0]
        try:
            data = key.fileobj.recv(200)
        except OSError as error:
            data = repr(error).encode()
        errors.append(
            f"{len(ready)} of {n} idle connections became readable during the idle "
            f"period (connection #{key.data} got {data!r})"
        )
    return {
        "mode": "connections",
        **tls_info(socks[0]),
        "clients": n,
        "max_pending": args.max_pending or somaxconn(),
        "login_s": (t_last - t_first) / 1e9,
        "logins_per_s": n / ((t_last - t_first) / 1e9),
        "login_server_cpu_s": login["server_cpu_s"],
        "login_gen_cpu_s": login["gen_cpu_s"],
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "rss_after_idle_kib": rss2,
        "kib_per_conn": None if rss0 is None else (rss1 - rss0) / n,
        "kib_per_conn_idle": None if rss0 is None else (rss2 - rss0) / n,
        "idle_s": idled["window_s"],
        "idle_server_cpu_s": idled["server_cpu_s"],
        "idle_server_cpu_precise_s": None if ns0 is None else (ns1 - ns0) / 1e9,
        "idle_gen_cpu_s": idled["gen_cpu_s"],
        # the table's CPU columns for this scenario: the login phase
        "window_s": login["window_s"],
        "server_cpu_s": login["server_cpu_s"],
        "gen_cpu_s": login["gen_cpu_s"],
        "errors": errors,
    }


# -- ping ------------------------------------------------------------------------


def run_ping(proto, addr, args) -> dict:
    sock = socket.create_connection(addr, timeout=10.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    KEEP.append(sock)
    ping, pong = proto.ping, proto.pong
    size = len(pong)
    send, recv = sock.send, sock.recv
    if proto is Chat:  # a user pings once logged in (a Redis client pings as it is)
        try:
            sock.sendall(proto.login(0))
            reply = b""
            while not proto.login_done(reply):
                more = recv(64)
                if not more:
                    break
                reply += more
        except OSError as error:
            raise Failure(f"ping connection failed to log in: {error}") from None
        if not proto.login_ok(reply):
            raise Failure(f"ping connection failed to log in: {reply!r}")

    def round_trips(count: int, samples: list | None) -> None:
        for _ in range(count):
            t = perf_ns()
            send(ping)
            data = recv(64)
            if data != pong:
                while len(data) < size and data and pong.startswith(data):
                    more = recv(64)
                    if not more:
                        break
                    data += more
                if data != pong:
                    raise Failure(f"expected {pong!r}, got {data!r}")
            if samples is not None:
                samples.append(perf_ns() - t)

    try:
        round_trips(args.warmup, None)
        samples: list = []
        window = Window(args.server_pid)
        window.start()
        round_trips(args.count, samples)
        measured = window.stop()
    except TimeoutError:
        raise Failure("no PONG within 10 s") from None
    except OSError as error:
        raise Failure(f"ping connection failed: {error}") from None
    samples.sort()
    us = 1e3
    return {
        "mode": "ping",
        "count": args.count,
        "warmup": args.warmup,
        "p50_us": percentile(samples, 0.50) / us,
        "p99_us": percentile(samples, 0.99) / us,
        "p999_us": percentile(samples, 0.999) / us,
        "mean_us": sum(samples) / len(samples) / us,
        "round_trips_per_s": args.count / measured["window_s"],
        **measured,
        "errors": [],
    }


# -- handshakes ------------------------------------------------------------------


def run_handshakes(proto, addr, args) -> dict:
    """``--count`` new connections, ``--parallel`` at a time: connect, TLS handshake, PING, PONG, close.

    Every handshake is full: the generator never offers a session back, and
    a connection whose session was resumed all the same is an error.  The
    PONG shows the server finished its side of the handshake (in TLS 1.3 the
    client is done first) and serves the connection.  The clock runs from
    the first connect to the last PONG; ``--warmup`` connections go first,
    untimed.
    """
    raise_nofile(args.parallel + 64)
    tls = args.tls
    durations: list = []
    reused: list = []
    info: dict = {}

    def ready(d: Dial) -> None:
        durations.append(perf_ns() - d.t0)
        if tls is not None:
            if d.sock.session_reused:
                reused.append(d.index)
            if not info:
                info.update(tls_info(d.sock))
        d.sock.close()

    pong = proto.pong
    dial = dict(
        line_for=lambda i: proto.ping,
        reply_done=lambda buf: len(buf) >= len(pong) or not pong.startswith(buf),
        reply_ok=lambda buf: buf == pong,
        on_ready=ready, tls=tls, max_pending=args.parallel, purpose="PING",
        what="answered PING" if tls is None else "answered PING after a TLS handshake",
    )
    if args.warmup:
        dial_many(addr, args.warmup, **dial)
    durations.clear()
    window = Window(args.server_pid)
    ns0 = server_cpu_ns(args.server_pid)
    window.start()
    _, t_last = dial_many(addr, args.count, **dial)
    measured = window.stop(t_last)
    ns1 = server_cpu_ns(args.server_pid)
    server_s = None if ns0 is None else (ns1 - ns0) / 1e9
    durations.sort()
    ms = 1e6
    errors = []
    if reused:
        errors.append(f"{len(reused)} of {args.count} TLS sessions were resumed, not new "
                      f"(connection #{reused[0]} first)")
    return {
        "mode": "handshakes",
        **info,
        "count": args.count,
        "warmup": args.warmup,
        "parallel": args.parallel,
        "handshakes_per_s": args.count / measured["window_s"],
        # what the server spent on each (schedstat, ns): its capacity on one
        # core, whether or not the generator kept it busy
        "server_cpu_precise_s": server_s,
        "server_ms_per_handshake": None if server_s is None else server_s * 1e3 / args.count,
        "handshakes_per_server_cpu_s": args.count / server_s if server_s else None,
        "p50_ms": percentile(durations, 0.50) / ms,
        "p99_ms": percentile(durations, 0.99) / ms,
        "max_ms": durations[-1] / ms,
        "resumed": len(reused),
        **measured,
        "errors": errors,
    }


# -- command line ----------------------------------------------------------------

MODES = {
    "fanout": run_fanout,
    "latency": run_latency,
    "connections": run_connections,
    "ping": run_ping,
    "handshakes": run_handshakes,
}
TLS_MODES = ("fanout", "connections", "handshakes")
"""The modes that can run over TLS (``--tls``); latency and ping speak plain TCP only."""


def _numbers(text: str) -> list:
    """``4000`` or ``4000,4001``: a list of positive integers."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, not {text!r}") from None
    if not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return values


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Load generator for bench_server.py (JSON result on stdout).",
    )
    parser.add_argument("--proto", choices=sorted(PROTOCOLS), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_numbers, required=True, metavar="PORT[,PORT...]",
                        help="the server's port; several (a cluster's nodes): connection i goes "
                             "to the (i mod n)-th, so clients and senders are spread over them")
    parser.add_argument("--server-pid", type=_numbers, default=None, metavar="PID[,PID...]",
                        help="server process to read CPU and memory of, from /proc; several: "
                             "their sum, and each one's CPU in cpu_by_pid_s")
    parser.add_argument("--hold", action="store_true",
                        help="after printing, keep the connections until stdin closes")
    parser.add_argument("--tls", action="store_true",
                        help=f"speak TLS, verifying the server's certificate ({', '.join(TLS_MODES)})")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="with --tls: the CA certificate to trust (PEM); default: the system's")
    parser.add_argument("--tls-name", metavar="NAME",
                        help="with --tls: the name the certificate must carry (default: --host)")
    modes = parser.add_subparsers(dest="mode", required=True)
    fanout = modes.add_parser("fanout", help="deliveries per second")
    fanout.add_argument("--clients", type=int, default=100)
    fanout.add_argument("--senders", type=int, default=10)
    fanout.add_argument("--messages", type=int, default=2000, help="per sender")
    fanout.add_argument("--timeout", type=float, default=180.0,
                        help="seconds the whole send-and-deliver phase may take")
    latency = modes.add_parser("latency", help="delivery latency at a paced rate")
    latency.add_argument("--clients", type=int, default=100)
    latency.add_argument("--senders", type=int, default=10)
    latency.add_argument("--rate", type=float, default=200.0, help="messages per second per sender")
    latency.add_argument("--duration", type=float, default=5.0, help="seconds of sending")
    latency.add_argument("--timed-every", type=int, default=1,
                         help="time the deliveries of every K-th receiver only; drain the rest in bulk")
    latency.add_argument("--sweep-ms", type=_positive, default=SWEEP_NS / 1e6,
                         help="how often the untimed receivers are drained, in ms")
    latency.add_argument("--timeout", type=float, default=30.0,
                         help="seconds to wait after the last send")
    conns = modes.add_parser("connections", help="login time, memory and idle CPU")
    conns.add_argument("--clients", type=int, default=5000)
    conns.add_argument("--idle", type=float, default=10.0, help="seconds to sit idle")
    conns.add_argument("--max-pending", type=int, default=None, metavar="N",
                       help="connections in progress (connecting, in their handshake, logging in) "
                            "at once; default: the kernel's somaxconn")
    ping = modes.add_parser("ping", help="sequential PING round trips")
    ping.add_argument("--count", type=int, default=20000)
    ping.add_argument("--warmup", type=int, default=2000)
    shakes = modes.add_parser("handshakes", help="new connections per second: connect, (TLS), PING, close")
    shakes.add_argument("--count", type=int, default=2000)
    shakes.add_argument("--warmup", type=int, default=100)
    shakes.add_argument("--parallel", type=int, default=8, help="connections in progress at once")
    return parser


def hold() -> None:
    """Keep the connections until the driver closes our stdin (at most 120 s)."""
    try:
        until = time.monotonic() + 120
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            ready, _, _ = select.select([sys.stdin], [], [], remaining)
            if ready and not os.read(sys.stdin.fileno(), 4096):
                return
    except (OSError, ValueError):
        return


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tls and args.mode not in TLS_MODES:
        parser.error(f"--tls works with {', '.join(TLS_MODES)}, not {args.mode}")
    if (args.tls_ca or args.tls_name) and not args.tls:
        parser.error("--tls-ca and --tls-name need --tls")
    if len(args.port) > 1 and args.mode == "ping":
        parser.error("ping speaks to one server: give one --port")
    proto = PROTOCOLS[args.proto]
    addrs = [(args.host, port) for port in args.port]
    addr = addrs[0] if len(addrs) == 1 else addrs
    pids = args.server_pid
    args.server_pid = None if not pids else pids[0] if len(pids) == 1 else tuple(pids)
    args.tls = ClientTLS(args.tls_ca, args.tls_name or args.host) if args.tls else None
    try:
        result = MODES[args.mode](proto, addr, args)
        result["ok"] = not result.get("errors")
        if not result["ok"]:
            result["error"] = "; ".join(result["errors"][:5])
    except Failure as failure:
        result = {"mode": args.mode, "ok": False, "error": str(failure)}
    result["proto"] = proto.name
    result["gen_total_cpu_s"] = own_cpu()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    if args.hold:
        hold()
    for sock in KEEP:
        sock.close()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
