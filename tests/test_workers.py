"""``chat-server --cluster URL --workers N``: N node processes on one port, under one parent.

Everything here is real: ``python -m reactor`` as a user starts it, a
``redis-server`` of the test's own (tests/redisutil.py), clients on TCP.
Which worker a client reached is read from the log, where every line of a
worker starts with ``[worker K]``: ``New connection from ('127.0.0.1',
<the client's port>)``.  The kernel spreads connections over the workers
by a hash of the client's port, so ``client_on(K)`` connects until one
lands on worker K (with two workers, 40 tries all missing is a chance of
2 ** -40).  Processes are waited for with ``pidfd_open`` (a worker is the
parent's child, not ours), and whatever outlives a test is killed by PID.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import seed
import trustme
from netutil import ROOT, Client, ServerProcess, TLSClient
from redisutil import redis_servers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers needs Linux")

WAIT = 10.0
LEASE = 1.5  # seconds: a killed worker's users are reported gone within about this
TRIES = 40  # connections opened at most to reach one given worker


@pytest.fixture
def redis(tmp_path):
    with redis_servers(tmp_path) as make:
        yield make()


class Workers:
    """A ``--workers`` server process and what its log says about its workers."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.port = server.port
        self.seen: set[int] = set()  # every worker pid the log named, for the cleanup

    def pids(self) -> dict[int, int]:
        """Each worker's current pid, by its number (the latest ``worker K (pid P) started``)."""
        pids = {int(k): int(p) for k, p in re.findall(rb"^worker (\d+) \(pid (\d+)\) started$", self.err, re.M)}
        self.seen.update(pids.values())
        return pids

    @property
    def err(self) -> bytes:
        return self.server.stderr

    def worker_of(self, client: Client) -> int:
        """The number of the worker that accepted ``client``."""
        peer = client.sock.getsockname()[1]
        (match,) = self.server.wait_for_stderr(
            rb"\[worker (\d+)\] New connection from \('127\.0\.0\.1', %d\)" % peer, timeout=WAIT
        )
        return int(match.group(1))

    def client_on(self, worker: int) -> Client:
        """A client that worker ``worker`` accepted (the others it took on the way are closed)."""
        for _ in range(TRIES):
            client = Client(self.port)
            if self.worker_of(client) == worker:
                return client
            client.close()
        raise AssertionError(f"{TRIES} connections and none reached worker {worker}")

    def login_on(self, worker: int, name: str) -> Client:
        client = self.client_on(worker)
        client.say(f"LOGIN {name}")
        client.expect("OK")
        return client


@contextmanager
def workers_server(redis, *args: str) -> Iterator[Workers]:
    """Two workers on a port of their own, in the cluster of ``redis``; nothing of them outlives the test."""
    server = ServerProcess("--host", "127.0.0.1", "--port", "0", "--cluster", redis.url(), "--workers", "2", *args)
    workers = Workers(server)
    try:
        workers.pids()
        yield workers
    finally:
        workers.pids()
        server.kill()
        for pid in workers.seen:  # the parent's death stops them (PR_SET_PDEATHSIG); make sure
            if not gone(pid, WAIT):
                os.kill(pid, signal.SIGKILL)


def gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` has ended (or ends within ``timeout``)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


# -- two workers, one port, one chat -------------------------------------------------------------


def test_two_workers_share_one_port_and_play_the_seed_session(redis):
    with workers_server(redis) as workers:
        workers.server.wait_for_stderr(rb"worker 1 \(pid \d+\) serving")
        workers.server.wait_for_stderr(rb"worker 2 \(pid \d+\) serving")
        pids = workers.pids()
        assert sorted(pids) == [1, 2]
        parent = workers.server.process.pid
        assert os.getpgid(parent) not in (os.getpgid(pids[1]), os.getpgid(pids[2]))
        assert os.getpgid(pids[1]) == pids[1] and os.getpgid(pids[2]) == pids[2]
        assert b"[worker 1] cluster: node" in workers.err and b"[worker 2] cluster: node" in workers.err

        placed = iter((1, 2))  # Naman on worker 1, Yudi on worker 2
        seed.play(seed.EXAMPLE_SESSION, lambda: workers.client_on(next(placed)))

        status, out, err = workers.server.stop()
    assert status == 0, err
    port = workers.port
    assert out == (  # once, from the parent
        f"Chat server started on port {port}\nWaiting for connections... (Press Ctrl+C to stop)\n".encode()
    )
    assert b"Traceback" not in err


def test_sigterm_stops_every_worker_then_the_parent_exits_0(redis):
    with workers_server(redis) as workers:
        naman, yudi = workers.login_on(1, "Naman"), workers.login_on(2, "Yudi")
        pids = workers.pids()

        workers.server.process.send_signal(signal.SIGUSR1)  # passed on: each worker logs its statistics (its own users)
        for worker in (1, 2):
            workers.server.wait_for_stderr(rb"\[worker %d\] stats: users=1 connections=1 " % worker)

        workers.server.process.send_signal(signal.SIGTERM)
        for client, other in ((naman, "Yudi"), (yudi, "Naman")):
            # The other may be gone first: a node that stopped is a node that left.
            assert client.read_until_closed() in (
                b"ERR server-shutting-down\n", f"INFO {other} disconnected\nERR server-shutting-down\n".encode()
            )
            client.close()  # the worker lingers until then
        workers.server.process.wait(timeout=WAIT)
        status, out, err = workers.server.stop()
    assert status == 0, err
    assert all(gone(pid, 0) for pid in pids.values())
    lines = err.decode().splitlines()
    assert lines[-1] == "Server stopped"
    for worker in (1, 2):
        assert f"[worker {worker}] Server stopped" in lines
        assert f"worker {worker} (pid {pids[worker]}) stopped" in lines


def test_the_parent_killed_takes_its_workers_along(redis):
    """kill -9 of the parent: each worker gets SIGTERM from the kernel and shuts down as asked."""
    with workers_server(redis) as workers:
        naman = workers.login_on(1, "Naman")
        pids = workers.pids()
        workers.server.kill()
        assert naman.read_until_closed() == b"ERR server-shutting-down\n"
        naman.close()  # the worker lingers until then
        assert all(gone(pid, WAIT) for pid in pids.values())


def test_ctrl_c_before_the_workers_serve_stops_them_and_exits_0(redis):
    """Ctrl+C signals the terminal's process group (the parent's; each worker has its own, see above).

    Redis is gone, so the workers are still joining: the parent passes the
    signal on, they stop, and it exits 0 without printing the startup line.
    """
    url = redis.url()
    redis.stop()
    process = subprocess.Popen(
        [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0", "--cluster", url,
         "--workers", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        err = b""
        deadline = time.monotonic() + WAIT
        while not (b"[worker 1] Joining" in err and b"[worker 2] Joining" in err):  # their handlers are in place
            remaining = deadline - time.monotonic()
            assert remaining > 0 and select.select([process.stderr], [], [], remaining)[0], err
            chunk = os.read(process.stderr.fileno(), 65536)
            assert chunk, err
            err += chunk
        os.killpg(process.pid, signal.SIGINT)
        out, rest = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    err += rest
    assert process.returncode == 0, err
    assert out == b""
    assert b"Shutting down: stopping 2 workers\n" in err
    for worker in (1, 2):
        assert re.search(rb"worker %d \(pid \d+\) stopped\n" % worker, err)


# -- under systemd ---------------------------------------------------------------------------------------

LAUNCHER = """
import os, sys
if int(sys.argv[1]) != 3:
    os.dup2(int(sys.argv[1]), 3)  # inheritable, as systemd passes it
    os.close(int(sys.argv[1]))
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "reactor", *sys.argv[2:]])
"""
"""What systemd does between fork and exec: the socket becomes descriptor 3, LISTEN_PID the server's."""


class NotifyReceiver:
    """NOTIFY_SOCKET's receiving end, with each message's sender pid (SO_PASSCRED, as systemd reads it)."""

    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.address = str(path)
        self.sock.bind(self.address)
        self.messages: list[tuple[int, str]] = []

    def wait_for(self, wanted: str) -> tuple[int, str]:
        """The first message from now on with the line ``wanted``, and its sender."""
        deadline = time.monotonic() + WAIT
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {wanted!r} within {WAIT} s; got {self.messages!r}"
            self.sock.settimeout(remaining)
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
            except TimeoutError:
                continue
            (pid,) = [struct.unpack("3i", cmsg_data)[0] for _, kind, cmsg_data in ancillary
                      if kind == socket.SCM_CREDENTIALS]
            self.messages.append((pid, data.decode()))
            if wanted in data.decode().split("\n"):
                return self.messages[-1]


def test_under_systemd_the_parent_alone_notifies_and_the_workers_share_its_socket(redis, tmp_path):
    receiver = NotifyReceiver(tmp_path / "notify")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = ServerProcess(
        "--cluster", redis.url(), "--workers", "2",
        command=[sys.executable, "-c", LAUNCHER, str(listener.fileno())],
        env={"LISTEN_FDS": "1", "NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "400000"},
        pass_fds=[listener.fileno()],
    )
    listener.close()  # the server holds it now
    workers = Workers(server)
    try:
        parent = server.process.pid
        assert server.port == port
        assert receiver.wait_for("READY=1") == (parent, "READY=1\nSTATUS=workers: 2 of 2 serving")
        assert receiver.wait_for("WATCHDOG=1")[0] == parent
        naman = Client(port)
        naman.say("LOGIN Naman", "WHO")
        naman.expect("OK", "USER Naman")

        os.kill(workers.pids()[1], signal.SIGKILL)
        assert receiver.wait_for("STATUS=workers: 1 of 2 serving")[0] == parent
        assert receiver.wait_for("STATUS=workers: 2 of 2 serving")[0] == parent
        server.process.send_signal(signal.SIGTERM)
        assert receiver.wait_for("STOPPING=1") == (parent, "STOPPING=1\nSTATUS=Shutting down")
        naman.read_until_closed()
        naman.close()
        server.process.wait(timeout=WAIT)
        status, _, err = server.stop()
    finally:
        workers.pids()
        server.kill()
        receiver.sock.close()
        for pid in workers.seen:
            if not gone(pid, WAIT):
                os.kill(pid, signal.SIGKILL)
    assert status == 0, err
    assert {pid for pid, _ in receiver.messages} == {parent}  # no worker ever spoke to systemd
    assert err.count(b"Listening on sockets from systemd") == 1


# -- a worker that dies ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_its_users_are_reported_gone(redis):
    with workers_server(redis, "--cluster-lease", str(LEASE)) as workers:
        naman, yudi = workers.login_on(1, "Naman"), workers.login_on(2, "Yudi")
        dead = workers.pids()[1]

        killed_at = time.monotonic()
        os.kill(dead, signal.SIGKILL)
        assert yudi.line(timeout=LEASE + 3) == b"INFO Naman disconnected"
        assert time.monotonic() - killed_at < LEASE + 3
        assert naman.read_until_closed() == b""

        workers.server.wait_for_stderr(
            rb"WARNING: worker 1 \(pid %d\) ended \(killed by SIGKILL\) after [0-9.]+ s: "
            rb"restarting it in 0.5 s" % dead
        )
        (serving,) = workers.server.wait_for_stderr(rb"worker 1 \(pid (\d+)\) serving", count=2)[1:]
        assert int(serving.group(1)) == workers.pids()[1] != dead

        again = workers.login_on(1, "Naman")  # on the new worker, and the name is free again
        again.say("MSG back again")
        assert yudi.line() == b"MSG Naman back again"
        yudi.say("MSG welcome back")
        assert again.line() == b"MSG Yudi welcome back"
        yudi.say("WHO")
        yudi.expect("USER Yudi", "USER Naman")


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_server_with_its_status(redis, tmp_path):
    """A replacement that fails as the server does at start (a certificate gone bad): exit 2, no loop."""
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    with workers_server(redis, "--tls-cert", str(cert), "--tls-key", str(key)) as workers:
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        secure = TLSClient(workers.server.tls_port, client_context)  # the TLS port is shared too
        secure.say("LOGIN Naman")
        secure.expect("OK")
        yudi = workers.login_on(2, "Yudi")
        dead = workers.pids()[1]
        cert.write_text("not a certificate\n")
        os.kill(dead, signal.SIGKILL)

        assert yudi.read_until_closed().endswith(b"ERR server-shutting-down\n")  # after Naman's INFO, if there
        yudi.close()
        secure.close()
        workers.server.process.wait(timeout=WAIT)
        status, _, err = workers.server.stop()
    assert status == 2, err
    assert re.search(
        rb"ERROR: worker 1 \(pid \d+\) could not start \(exit status 2\): stopping the other workers\n", err
    )
    assert len(re.findall(rb"^worker 1 \(pid \d+\) started$", err, re.M)) == 2  # no third try
    assert err.endswith(b"Server stopped\n")


def test_the_restart_delay_doubles_after_each_short_life_up_to_30_s_and_starts_over_after_a_long_one():
    from reactor.workers import STABLE_AFTER, WorkerSlot  # a Linux module: SIGHUP, SO_REUSEPORT, prctl

    slot = WorkerSlot(1)
    assert [slot.restart_delay(lived=1.0) for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert slot.restart_delay(lived=STABLE_AFTER - 0.1) == 30
    assert slot.restart_delay(lived=STABLE_AFTER) == 0.5
    assert slot.restart_delay(lived=0.0) == 1


# -- what is not several workers ----------------------------------------------------------------------


def test_a_bad_certificate_is_one_message_and_status_2_before_any_worker(redis, tmp_path):
    cert = tmp_path / "missing.pem"
    completed = subprocess.run(
        [sys.executable, "-m", "reactor", "--cluster", redis.url(), "--workers", "2",
         "--port", "0", "--tls-cert", str(cert)],
        cwd=ROOT, capture_output=True, timeout=WAIT,
    )
    assert completed.returncode == 2
    assert completed.stdout == b""
    assert completed.stderr.count(b"chat-server: error: ") == 1 and b"worker" not in completed.stderr


def test_several_workers_without_cluster_mode_is_status_2():
    completed = subprocess.run(
        [sys.executable, "-m", "reactor", "--workers", "2", "--port", "0"],
        cwd=ROOT, capture_output=True, timeout=WAIT,
    )
    assert completed.returncode == 2
    assert completed.stderr.endswith(
        b"chat-server: error: argument --workers: more than 1 worker needs --cluster\n"
    )


def test_one_worker_is_the_single_process_server():
    server = ServerProcess("--host", "127.0.0.1", "--port", "0", "--workers", "1")
    try:
        client = Client(server.port)
        client.say("LOGIN solo", "WHO")
        client.expect("OK", "USER solo")
        assert children(server.process.pid) == []
        client.close()
        status, _, err = server.stop()
    finally:
        server.kill()
    assert status == 0
    assert b"worker" not in err
