"""TLS beside plaintext, in the same loop: real handshakes, real third-party clients.

Certificates are made at test time by ``trustme`` (a private CA and a
certificate for localhost and 127.0.0.1), written to a temporary directory
and thrown away: no private key is ever committed.
"""

from __future__ import annotations

import itertools
import logging
import platform
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import warnings

import pytest
import seed
import trustme
from loopharness import FakeClock, LoopHarness
from netutil import ROOT, Client, TLSClient, login, server_process, threaded_server
from tools import ProcessClient, require

from reactor import loop as loop_module
from reactor.config import Config
from reactor.connection import CLOSED, HANDSHAKING, OPEN
from reactor.logs import LOGGER_NAME
from reactor.loop import TICK
from reactor.tls import HANDSHAKE_TIMEOUT, TLSSetupError, server_context


class Certificates:
    """One CA, the server's certificate and key as files, and contexts for both ends."""

    def __init__(self, directory, name: str = "ca") -> None:
        self.ca = trustme.CA()
        issued = self.ca.issue_cert("localhost", "127.0.0.1")
        self.cert_file = directory / f"{name}-server.pem"
        self.key_file = directory / f"{name}-server.key"
        self.ca_file = directory / f"{name}.pem"
        for blob in issued.cert_chain_pems:
            with open(self.cert_file, "ab") as out:
                out.write(blob.bytes())
        issued.private_key_pem.write_to_path(str(self.key_file))
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        return server_context(str(self.cert_file), str(self.key_file))

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture
def certs(tmp_path) -> Certificates:
    return Certificates(tmp_path)


@pytest.fixture
def tls_server(certs):
    with threaded_server(tls_context=certs.server_context()) as server:
        yield server


def tls_login(server, certs, name: str) -> TLSClient:
    client = TLSClient(server.tls_port, certs.client_context())  # a ThreadedServer or a ServerProcess
    client.say(f"LOGIN {name}")
    client.expect("OK")
    return client


# -- the seed session, and plaintext beside it ----------------------------------------


@pytest.mark.parametrize("session", seed.SESSIONS, ids=seed.session_name)
def test_the_seed_sessions_over_tls_beside_plaintext(tls_server, certs, session):
    """Every other terminal is a plaintext one: TLS and plaintext users share one chat."""
    kinds = itertools.cycle(
        [lambda: TLSClient(tls_server.tls_port, certs.client_context()), lambda: Client(tls_server.port)]
    )
    seed.play(session, lambda: next(kinds)())


def test_a_broadcast_reaches_many_tls_users_in_order(tls_server, certs):
    users = [tls_login(tls_server, certs, f"u{i}") for i in range(20)]
    sender = login(tls_server.port, "sender")
    sender.say(*[f"MSG line {n}" for n in range(200)])
    for user in users:
        user.expect(*[f"MSG sender line {n}" for n in range(200)])
        user.sync()


# -- real third-party TLS clients -------------------------------------------------------


def chat_through(argv: list[str], server) -> None:
    client = ProcessClient(argv)
    try:
        client.say("LOGIN tool", "PING", "WHO")
        client.expect("OK", "PONG", "USER tool")
        watcher = login(server.port, "watcher")
        watcher.say("MSG hello tool")
        client.expect("MSG watcher hello tool")
        client.say("QUIT")
        client.expect("Goodbye!")
        watcher.expect("INFO tool disconnected")
    finally:
        client.close()


def test_openssl_s_client(tls_server, certs):
    require("openssl")
    chat_through(
        [
            "openssl", "s_client", "-quiet", "-verify_return_error", "-CAfile", str(certs.ca_file),
            "-verify_hostname", "localhost", "-connect", f"127.0.0.1:{tls_server.tls_port}",
        ],
        tls_server,
    )


def test_socat(tls_server, certs):
    require("socat")
    chat_through(
        ["socat", "-", f"OPENSSL:127.0.0.1:{tls_server.tls_port},cafile={certs.ca_file},commonname=localhost"],
        tls_server,
    )


def test_ncat(tls_server, certs):
    require("ncat")
    chat_through(
        ["ncat", "--ssl", "--ssl-verify", "--ssl-trustfile", str(certs.ca_file), "localhost",
         str(tls_server.tls_port)],
        tls_server,
    )


# -- what is refused -------------------------------------------------------------------


@pytest.fixture
def debug_records():
    """The server's DEBUG records while the test runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(LOGGER_NAME)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def handshake_failures(records) -> list[str]:
    return [r.getMessage() for r in records if r.getMessage().startswith("TLS handshake with")]


def test_plaintext_to_the_tls_port_is_closed_with_one_debug_line(tls_server, debug_records):
    client = Client(tls_server.tls_port)
    client.say("LOGIN plain", "PING")
    assert b"OK" not in client.read_until_closed()
    watcher = login(tls_server.port, "watcher")
    watcher.sync()  # the server has handled the failure: its log line is written
    assert len(handshake_failures(debug_records)) == 1
    assert not any(r.exc_info for r in debug_records)  # no traceback


def test_a_tls_1_0_client_is_refused(tls_server, debug_records):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so the client itself may offer TLS 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated: the point
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
    raw = socket.create_connection(("127.0.0.1", tls_server.tls_port), timeout=5)
    with pytest.raises(ssl.SSLError):
        context.wrap_socket(raw)
    raw.close()
    login(tls_server.port, "watcher").sync()
    assert len(handshake_failures(debug_records)) == 1


def test_openssl_s_client_on_the_plaintext_port_is_refused(tls_server, certs):
    require("openssl")
    completed = subprocess.run(
        ["openssl", "s_client", "-CAfile", str(certs.ca_file), "-connect", f"127.0.0.1:{tls_server.port}"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
    )
    assert completed.returncode != 0  # no handshake: the server closed at its ClientHello
    login(tls_server.port, "watcher").sync()


def test_an_unverifiable_server_is_refused_by_a_verifying_client(tls_server, tmp_path):
    strangers = Certificates(tmp_path, "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        TLSClient(tls_server.tls_port, strangers.client_context())


# -- the handshake is bounded -----------------------------------------------------------


def test_a_stalled_handshake_is_closed_at_its_deadline(certs):
    loop = LoopHarness()
    try:
        loop.reactor.set_tls_context(certs.server_context())
        server_end, client_end = socket.socketpair()
        conn = loop.reactor.adopt(server_end, ("pair", 1), tls=True)
        assert conn is not None and conn.phase is HANDSHAKING
        client_end.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
        loop.advance(HANDSHAKE_TIMEOUT - 0.001)
        assert conn.phase is HANDSHAKING
        assert loop.reactor.stats().users == 0 and len(loop.reactor._machine) == 0  # not a chat client
        loop.advance(0.001 + TICK)
        assert conn.phase is CLOSED
        client_end.close()
    finally:
        loop.close()


def test_500_stalled_handshakes_do_not_stop_a_healthy_client(tls_server, certs):
    stalled = []
    try:
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", tls_server.tls_port), timeout=5)
            sock.sendall(b"\x16\x03\x01")  # a ClientHello that never finishes
            stalled.append(sock)
        healthy = tls_login(tls_server, certs, "healthy")
        healthy.sync()
        plain = login(tls_server.port, "plain")
        plain.say("MSG still here")
        healthy.expect("MSG plain still here")
    finally:
        for sock in stalled:
            sock.close()


class HandshakingClient:
    """A TLS client on a socket pair, stepped by hand between the loop's turns."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        sock.setblocking(False)
        self.sock = context.wrap_socket(sock, server_hostname="localhost", do_handshake_on_connect=False)
        self.done = False

    def step(self) -> None:
        if not self.done:
            try:
                self.sock.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass


def test_a_burst_of_handshakes_finishes_oldest_first(certs, monkeypatch):
    # One connection served per turn (a zero read budget): the first client's
    # second flight must go before the later clients' first flights, so it
    # opens in two turns, not after everybody's ClientHello (lockstep).
    monkeypatch.setattr(loop_module, "READ_BUDGET", 0.0)
    loop = LoopHarness()
    try:
        loop.reactor.set_tls_context(certs.server_context())
        context = certs.client_context()
        servers, clients = [], []
        for number in range(4):
            server_end, client_end = socket.socketpair()
            servers.append(loop.reactor.adopt(server_end, ("pair", number), tls=True))
            clients.append(HandshakingClient(client_end, context))
        opened_at: dict[int, int] = {}
        for turn in range(1, 13):
            for client in clients:
                client.step()
            loop.turn()
            for number, conn in enumerate(servers):
                if conn.phase is OPEN:
                    opened_at.setdefault(number, turn)
        assert opened_at == {0: 2, 1: 4, 2: 6, 3: 8}
    finally:
        loop.close()


def test_the_heap_goes_back_once_when_a_burst_of_handshakes_is_over(certs, monkeypatch):
    """After TLS_BURST handshakes at once, the last one's end gives free heap back, once;
    a handshake or two at a time never does."""
    monkeypatch.setattr(loop_module, "TLS_BURST", 3)
    trims: list[int] = []
    monkeypatch.setattr(loop_module.heap, "give_back_free_heap", lambda: trims.append(1) or True)
    loop = LoopHarness()
    try:
        loop.reactor.set_tls_context(certs.server_context())
        context = certs.client_context()

        servers: dict[HandshakingClient, object] = {}

        def handshakes(count: int) -> list[HandshakingClient]:
            clients = []
            for number in range(count):
                server_end, client_end = socket.socketpair()
                client = HandshakingClient(client_end, context)
                servers[client] = loop.reactor.adopt(server_end, ("pair", number), tls=True)
                clients.append(client)
            return clients

        def finish(clients: list[HandshakingClient]) -> None:
            for _ in range(20):
                for client in clients:
                    client.step()
                loop.turn()
                if all(client.done and servers[client].phase is OPEN for client in clients):
                    return
            raise AssertionError("the handshakes did not finish")

        burst = handshakes(4)
        finish(burst[:3])
        assert trims == []  # one is still in progress
        burst[3].sock.close()  # and it gives up: the burst is over all the same
        for _ in range(5):
            loop.turn()
        assert trims == [1]
        finish(handshakes(2))  # below TLS_BURST: no trim
        assert trims == [1]
    finally:
        loop.close()


def test_giving_back_free_heap_works_where_the_c_library_allows_it():
    """glibc (Linux, CI's Debian) has malloc_trim; elsewhere it is a no-op that says so."""
    from reactor import heap

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert heap.give_back_free_heap() is glibc


def test_tls_accepting_pauses_while_the_loop_is_behind_on_handshakes(certs, monkeypatch):
    monkeypatch.setattr(loop_module, "READ_BUDGET", 0.0)  # one handshake step per turn
    monkeypatch.setattr(loop_module, "HANDSHAKES_BEHIND", 4)
    tls_listener = socket.create_server(("127.0.0.1", 0))
    plain_listener = socket.create_server(("127.0.0.1", 0))
    reactor = loop_module.Reactor(
        [plain_listener], Config(host="127.0.0.1", port=0), clock=FakeClock(),
        tls_listeners=[tls_listener], tls_context=certs.server_context(),
    )
    context = certs.client_context()
    clients = []
    try:
        for _ in range(8):
            clients.append(HandshakingClient(socket.create_connection(tls_listener.getsockname()), context))
        for client in clients:
            client.step()  # each ClientHello is on its way
        connections = []
        deadline = time.monotonic() + 10
        while len(connections) < 5 and time.monotonic() < deadline:  # each turn serves one of 8 waiting
            reactor.run_once()
            connections.append(reactor.stats().connections)
        # All 8 accepted at once, then 7 put off (4 or more): no more accepting...
        late = HandshakingClient(socket.create_connection(tls_listener.getsockname()), context)
        late.step()
        plain = Client(plain_listener.getsockname()[1])  # ...from the TLS listeners only
        for _ in range(3):
            reactor.run_once()
        assert reactor.stats().connections == 9  # 8 TLS and the plaintext one, not the late TLS one
        for _ in range(200):  # the handshakes finish, then the late client is taken
            for client in [*clients, late]:
                client.step()
            reactor.run_once()
            if late.done:
                break
        assert late.done and all(client.done for client in clients)
        plain.close()
    finally:
        for client in clients:
            client.sock.close()
        reactor.close()


# -- every guarantee over TLS -------------------------------------------------------------


def test_idle_timeout_over_tls(certs):
    with threaded_server(tls_context=certs.server_context(), idle_timeout=0.3) as server:
        client = TLSClient(server.tls_port, certs.client_context())
        assert client.read_until_closed() == b"ERR idle-timeout\n"


def test_shutdown_over_tls(certs):
    server = threaded_server(tls_context=certs.server_context())
    with server as running:
        client = tls_login(running, certs, "ann")
        running.reactor.request_shutdown()
        running._wake_write.send(b"\0")
        assert client.read_until_closed() == b"ERR server-shutting-down\n"


def test_a_slow_consumer_over_tls_is_evicted(certs):
    max_output = 64 << 10
    with threaded_server(tls_context=certs.server_context(), max_output=max_output, rate=0) as server:
        context = certs.client_context()
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        raw.settimeout(5)
        raw.connect(("127.0.0.1", server.tls_port))
        slow = context.wrap_socket(raw, server_hostname="localhost")
        slow.sendall(b"LOGIN slow\n")  # and never reads again
        watcher = login(server.port, "watcher")
        talker = login(server.port, "talker")
        line = "MSG " + "x" * 4000
        received: list[str] = []
        for _ in range(200):  # 8 MB: more than the kernel's buffers and --max-output hold together
            talker.say(*[line] * 10, "PING")
            talker.expect("PONG")
            watcher.say("PING")
            while (text := watcher.line().decode()) != "PONG":  # its 10 lines, perhaps the INFO
                received.append(text)
            if "INFO slow disconnected" in received:
                break
        assert "INFO slow disconnected" in received
        delivered = [text for text in received if text.startswith("MSG talker ")]
        assert len(delivered) % 10 == 0 and delivered  # nobody else lost a line
        slow.close()


def test_a_peer_that_resets_mid_session_costs_only_itself(tls_server, certs):
    gone = tls_login(tls_server, certs, "gone")
    watcher = login(tls_server.port, "watcher")
    raw = gone.sock
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    watcher.expect("INFO gone disconnected")
    watcher.sync()


# -- renewing the certificate -------------------------------------------------------------


def test_a_new_context_serves_new_handshakes_and_open_sessions_go_on(tls_server, certs, tmp_path):
    before = tls_login(tls_server, certs, "before")
    renewed = Certificates(tmp_path, "renewed")
    tls_server.reactor.set_tls_context(renewed.server_context())
    tls_server._wake_write.send(b"\0")
    after = tls_login(tls_server, renewed, "after")  # verifies only with the new CA
    assert after.sock.getpeercert()["issuer"] != before.sock.getpeercert()["issuer"]
    before.say("MSG still here")
    after.expect("MSG before still here")
    with pytest.raises(ssl.SSLCertVerificationError):
        TLSClient(tls_server.tls_port, certs.client_context())  # the old CA no longer fits


# -- the context ---------------------------------------------------------------------------


def test_the_server_context_speaks_tls_1_2_and_newer_only(certs):
    context = certs.server_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION


def test_bad_files_are_named(certs, tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSSetupError, match="missing.pem: no such file"):
        server_context(str(missing), str(certs.key_file))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSSetupError, match="garbage.pem"):
        server_context(str(garbage), str(certs.key_file))
    other = Certificates(tmp_path, "other")
    with pytest.raises(TLSSetupError, match="key"):
        server_context(str(certs.cert_file), str(other.key_file))  # a key that does not match


def test_phases_after_the_handshake(tls_server, certs):
    client = tls_login(tls_server, certs, "ann")
    client.sync()
    (conn,) = [c for c in tls_server.reactor._connections if c.tls]
    assert conn.phase is OPEN


# -- the daemon: flags, files, SIGHUP, the client ----------------------------------------------


def tls_args(certs: Certificates, *extra: str) -> list[str]:
    return ["--tls-cert", str(certs.cert_file), "--tls-key", str(certs.key_file), "--tls-port", "0", *extra]


def test_the_daemon_serves_tls_beside_plaintext_and_the_client_verifies_it(certs):
    with server_process(*tls_args(certs)) as server:
        assert server.tls_port != server.port
        plain = login(server.port, "plain")
        completed = subprocess.run(
            [sys.executable, "-m", "chatclient", "--tls", "--cafile", str(certs.ca_file),
             "--host", "localhost", "--port", str(server.tls_port)],
            input=b"LOGIN secure\nWHO\nQUIT\n", capture_output=True, timeout=20, cwd=ROOT,
        )
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout == b"OK\nUSER plain\nUSER secure\nGoodbye!\n"
        plain.expect("INFO secure disconnected")


def test_the_client_refuses_a_server_whose_name_does_not_match(certs, tmp_path):
    with server_process(*tls_args(certs)) as server:
        completed = subprocess.run(
            [sys.executable, "-m", "chatclient", "--tls", "--cafile", str(certs.ca_file),
             "--host", "127.0.0.2", "--port", str(server.tls_port)],
            input=b"LOGIN x\n", capture_output=True, timeout=20, cwd=ROOT,
        )
        assert completed.returncode == 1
        assert len(completed.stderr.decode().strip().splitlines()) == 1, completed.stderr


def test_tls_only_has_no_plaintext_port(certs):
    with server_process(*tls_args(certs, "--tls-only")) as server:
        assert server.port == server.tls_port  # the startup line names the TLS port
        client = tls_login(server, certs, "ann")
        client.sync()
        _, out, _ = server.stop()
    assert out.count(b"TLS on port") == 1


@pytest.mark.parametrize(
    "which, expected",
    [("cert", b"missing-cert.pem: no such file"), ("key", b"missing-key.pem: no such file")],
)
def test_a_missing_certificate_or_key_exits_2_naming_the_file(certs, tmp_path, which, expected):
    args = tls_args(certs)
    args[args.index(f"--tls-{which}") + 1] = str(tmp_path / f"missing-{which}.pem")
    completed = subprocess.run(
        [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0", *args],
        capture_output=True, timeout=20, cwd=ROOT,
    )
    assert completed.returncode == 2
    assert expected in completed.stderr and b"Traceback" not in completed.stderr
    assert b"Chat server started" not in completed.stdout  # it never bound


def test_tls_flags_without_a_certificate_are_refused():
    completed = subprocess.run(
        [sys.executable, "-m", "reactor", "--tls-only"], capture_output=True, timeout=20, cwd=ROOT
    )
    assert completed.returncode == 2
    assert b"--tls-only" in completed.stderr and b"--tls-cert" in completed.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX")
def test_sighup_reloads_the_certificate_and_a_bad_one_keeps_the_old(certs, tmp_path):
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(certs.cert_file, live_cert)
    shutil.copy(certs.key_file, live_key)
    with server_process(
        "--tls-cert", str(live_cert), "--tls-key", str(live_key), "--tls-port", "0"
    ) as server:
        before = tls_login(server, certs, "before")
        renewed = Certificates(tmp_path, "renewed")
        shutil.copy(renewed.cert_file, live_cert)
        shutil.copy(renewed.key_file, live_key)
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_stderr(rb"TLS certificate reloaded")
        after = tls_login(server, renewed, "after")
        before.say("MSG the old session goes on")
        after.expect("MSG before the old session goes on")
        live_key.write_text("not a key\n")  # a botched renewal
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_stderr(rb"ERROR: TLS reload failed, the old certificate stays in use: .*live\.pem")
        again = tls_login(server, renewed, "again")  # still the renewed certificate
        again.sync()
