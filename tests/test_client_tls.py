"""chat-client --tls against a real TLS terminator in front of the plaintext server.

The server's own TLS is not needed to test the client's: ``socat`` (a real
third-party program, never a mock) accepts TLS with a certificate made for
the test and forwards the plaintext to a ``threaded_server``, the way stunnel
or a load balancer would.  Certificates come from ``trustme`` at test time,
in the test's temporary directory: no private key is ever committed.

What must hold: a session over TLS is the same session byte for byte; the
end of piped input is still a half-close the server answers (TLS's
close_notify, then TCP's); a certificate for another host name, or from a
CA the client does not trust, ends the client with one line and status 1;
and nothing is ever sent in plaintext to a port that does not speak TLS.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import trustme
from tools import require

from chatclient import cli as chat_client
from tests import test_client
from tests.netutil import TIMEOUT, login, threaded_server
from tests.test_client import (
    assert_one_line,
    bare_listener,
    piped_client,
    run_client,
)

pty_client = test_client.pty_client  # the fixture, shared

_LISTENING = re.compile(rb"listening on AF=2 127\.0\.0\.1:(\d+)")


class Certificates:
    """A private CA and a server certificate it signed, as PEM files in ``directory``."""

    def __init__(self, directory: pathlib.Path, *names: str) -> None:
        self.ca = trustme.CA()
        self.cafile = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.cafile))
        self.server = directory / "server.pem"  # the key and the chain, as socat's cert= takes them
        issued = self.ca.issue_cert(*(names or ("localhost",)))
        issued.private_key_and_cert_chain_pem.write_to_path(str(self.server))


@pytest.fixture
def certificates(tmp_path) -> Certificates:
    return Certificates(tmp_path)


@contextlib.contextmanager
def tls_terminator(chat_port: int, server_pem: pathlib.Path) -> Iterator[int]:
    """socat serving TLS on a port the OS chose, forwarding to ``chat_port``; yields the TLS port.

    ``-t 5``: after one direction ends, socat goes on carrying the other for
    up to 5 s, so a client's half-close still gets the server's answers.
    """
    socat = require("socat")
    process = subprocess.Popen(
        [
            socat, "-d", "-d", "-t", "5",
            f"OPENSSL-LISTEN:0,bind=127.0.0.1,reuseaddr,fork,verify=0,cert={server_pem}",
            f"TCP:127.0.0.1:{chat_port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its forked children share the group, ended with it
    )
    drain = threading.Thread(target=process.stderr.read, daemon=True)  # the log must not fill up
    try:
        port = _listening_port(process)
        drain.start()
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(TIMEOUT)
        if drain.ident is not None:  # started
            drain.join(TIMEOUT)
        process.stderr.close()


def _listening_port(process: subprocess.Popen) -> int:
    """The port, from socat's log line saying where it listens."""
    log = b""
    deadline = time.monotonic() + TIMEOUT
    while not (found := _LISTENING.search(log)):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"socat did not start listening: {log!r}"
        ready, _, _ = select.select([process.stderr], [], [], remaining)
        chunk = os.read(process.stderr.fileno(), 65536) if ready else b""
        assert chunk or not ready, f"socat exited: {log!r}"
        log += chunk
    return int(found.group(1))


def tls_run(port: int, *args: str, input: bytes = b"") -> subprocess.CompletedProcess:
    return run_client("--tls", "--port", str(port), *args, input=input)


# -- sessions over TLS -------------------------------------------------------------------


def test_the_scripted_session_over_tls_is_byte_for_byte_the_plain_one(certificates):
    with threaded_server() as server, tls_terminator(server.port, certificates.server) as tls_port:
        bob = login(server.port, "bob")
        result = tls_run(
            tls_port, "--cafile", str(certificates.cafile),
            input=b"LOGIN bot\nWHO\nDM bob over tls\nQUIT\n",
        )
        bob.expect("DM bot over tls", "INFO bot disconnected")
    assert result.stdout == b"OK\nUSER bob\nUSER bot\nGoodbye!\n"
    assert (result.returncode, result.stderr) == (0, b"")


def test_the_end_of_input_over_tls_is_a_half_close_the_server_answers(certificates):
    """close_notify, then TCP's FIN: the server answers every line, then closes; status 0."""
    with threaded_server() as server, tls_terminator(server.port, certificates.server) as tls_port:
        result = tls_run(
            tls_port, "--cafile", str(certificates.cafile), "--login", "bot", input=b"WHO\nPING\n"
        )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"OK\nUSER bot\nPONG\n", b"")


def test_reading_and_sending_at_once_over_tls(certificates):
    """Two threads on one TLS connection: the input thread sends while the main thread reads."""
    count = 3000
    with threaded_server(rate=0) as server, tls_terminator(server.port, certificates.server) as tls_port:
        result = tls_run(
            tls_port, "--cafile", str(certificates.cafile), "--login", "bot",
            input=b"PING\n" * count,
        )
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b"OK\n" + b"PONG\n" * count


def test_a_terminal_session_over_tls(certificates, pty_client):
    with threaded_server() as server, tls_terminator(server.port, certificates.server) as tls_port:
        bob = login(server.port, "bob")
        alice = pty_client(tls_port, "--tls", "--cafile", str(certificates.cafile), "--login", "alice")
        alice.wait_for(lambda: alice.screen.line(-1) == "OK" and alice.at_prompt(""), "OK, then the prompt")
        assert alice.screen.lines()[0].startswith(f"Connected to localhost port {tls_port} over TLS (TLSv1.")
        alice.type(b"MSG hello over tls\r")
        bob.expect("MSG alice hello over tls")
        bob.say("MSG hi alice")
        alice.wait_for(lambda: "MSG bob hi alice" in alice.screen.lines(), "bob's message")
        alice.type(b"\x04")
        alice.assert_exit(0)
        bob.expect("INFO alice disconnected")
    assert "Goodbye!" in alice.screen.lines()
    assert "chat-client: disconnected (Goodbye!)" in alice.screen.lines()  # the close was seen at once
    alice.assert_left_cleanly()


def test_the_servers_close_over_tls_ends_the_session_with_its_reason(certificates):
    """The server closes first (TLS close_notify before ours): the input still open, status 0."""
    with threaded_server(idle_timeout=0.5) as server, tls_terminator(server.port, certificates.server) as tls_port:
        with piped_client(tls_port, "--tls", "--cafile", str(certificates.cafile), "--login", "bot") as bot:
            status, out, err = bot.finish(close_input=False)
    assert out == b"OK\nERR idle-timeout\n"
    assert "idle timeout" in assert_one_line(err)
    assert status == 0


def test_a_server_that_vanishes_behind_tls_is_exit_1(certificates):
    with bare_listener() as listener, tls_terminator(listener.getsockname()[1], certificates.server) as tls_port:
        with piped_client(tls_port, "--tls", "--cafile", str(certificates.cafile)) as bot:
            bot.say(b"PING\n")
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            assert conn.recv(64) == b"PING\n"
            conn.sendall(b"PONG\n")
            conn.close()
            status, out, err = bot.finish(close_input=False)
    assert out == b"PONG\n"
    assert "closed the connection without Goodbye!" in assert_one_line(err)
    assert status == 1




# -- verification fails: one line, status 1, nothing sent -----------------------------------


def assert_refused_in_one_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 1
    assert result.stdout == b""
    line = assert_one_line(result.stderr)
    assert line.startswith("chat-client: cannot connect to ") and " over TLS: " in line, line
    for word in words:
        assert word in line, line


def test_a_certificate_for_another_host_name_is_exit_1_in_one_line(tmp_path):
    elsewhere = Certificates(tmp_path, "chat.example.test")
    with threaded_server() as server, tls_terminator(server.port, elsewhere.server) as tls_port:
        result = tls_run(tls_port, "--cafile", str(elsewhere.cafile), "--login", "bot", input=b"MSG hi\n")
        watcher = login(server.port, "watcher")
        watcher.say("WHO")
        watcher.expect("USER watcher")  # bot never logged in: nothing passed the failed handshake
    assert_refused_in_one_line(result, "does not name the host you asked for", "'localhost'")


def test_an_ip_address_the_certificate_does_not_name_is_exit_1(certificates):
    with threaded_server() as server, tls_terminator(server.port, certificates.server) as tls_port:
        result = tls_run(tls_port, "--host", "127.0.0.1", "--cafile", str(certificates.cafile))
    assert_refused_in_one_line(result, "does not name the host you asked for")


@pytest.mark.parametrize("trust", ["another CA", "the system's CAs"])
def test_a_certificate_from_an_untrusted_ca_is_exit_1(certificates, tmp_path, trust):
    args = []
    if trust == "another CA":
        stranger = tmp_path / "stranger.pem"
        trustme.CA().cert_pem.write_to_path(str(stranger))
        args = ["--cafile", str(stranger)]
    with threaded_server() as server, tls_terminator(server.port, certificates.server) as tls_port:
        result = tls_run(tls_port, *args, "--login", "bot")
    assert_refused_in_one_line(result, "not trusted", "no trusted CA signed it")


def test_tls_to_a_plaintext_port_sends_nothing_in_plaintext_and_is_exit_1():
    """A server that answers in plaintext: the client stops; all it sent was its ClientHello."""
    with bare_listener() as listener:
        client = subprocess.Popen(
            [sys.executable, "-m", "chatclient", "--tls", "--port", str(listener.getsockname()[1]),
             "--login", "bot"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=pathlib.Path(__file__).resolve().parent.parent,
        )
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        hello = conn.recv(65536)
        conn.sendall(b"Welcome to a plaintext server\n")
        out, err = client.communicate(b"MSG secret\n", timeout=TIMEOUT * 2)
        conn.settimeout(TIMEOUT)
        received = hello + _read_until_closed(conn)
        conn.close()
    assert hello[:2] == b"\x16\x03"  # a TLS handshake record: the ClientHello
    assert b"LOGIN" not in received and b"secret" not in received
    assert (client.returncode, out) == (1, b"")
    assert "did not answer in TLS" in assert_one_line(err)


def test_a_server_that_closes_during_the_handshake_is_exit_1():
    """What a TLS-aware plaintext port does with a ClientHello: it closes, and so do we."""
    with bare_listener() as listener:
        client = subprocess.Popen(
            [sys.executable, "-m", "chatclient", "--tls", "--port", str(listener.getsockname()[1])],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=pathlib.Path(__file__).resolve().parent.parent,
        )
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        conn.recv(65536)
        conn.close()
        out, err = client.communicate(timeout=TIMEOUT * 2)
    assert (client.returncode, out) == (1, b"")
    assert "closed the connection during the handshake" in assert_one_line(err)


def _read_until_closed(conn: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := conn.recv(65536):
            data += chunk
    return data


# -- the command line ----------------------------------------------------------------


def test_the_tls_port_defaults_to_4443_and_a_plain_port_flag_still_wins():
    assert chat_client.parse_options(["--tls"], {}).port == 4443
    assert chat_client.parse_options(["--tls"], {"PORT": "5000"}).port == 4443  # PORT is plaintext's
    assert chat_client.parse_options(["--tls"], {"CHAT_TLS_PORT": "5443"}).port == 5443
    assert chat_client.parse_options(["--tls", "--port", "6000"], {"CHAT_TLS_PORT": "5443"}).port == 6000
    assert chat_client.parse_options([], {"CHAT_TLS_PORT": "5443"}).port == 4000
    assert chat_client.parse_options([], {}).tls is None


def test_the_default_context_verifies_the_certificate_and_the_host_name(certificates):
    context = chat_client.parse_options(["--tls"], {}).tls
    assert context.verify_mode.name == "CERT_REQUIRED" and context.check_hostname
    assert context.minimum_version >= context.minimum_version.TLSv1_2
    implied = chat_client.parse_options(["--cafile", str(certificates.cafile)], {}).tls
    assert implied is not None and implied.check_hostname  # --cafile alone means TLS, never less


def _bad_cafiles(tmp_path: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    key_only = tmp_path / "key.pem"
    trustme.CA().private_key_pem.write_to_path(str(key_only))
    return {
        "missing": (tmp_path / "missing.pem", "no such file"),
        "directory": (tmp_path, "is a directory"),
        "garbage": (garbage, "no CA certificate"),
        "a private key": (key_only, "no CA certificate"),
    }


@pytest.mark.parametrize("kind", ["missing", "directory", "garbage", "a private key"])
def test_a_bad_cafile_is_one_line_naming_it_and_exit_2(tmp_path, kind):
    path, reason = _bad_cafiles(tmp_path)[kind]
    result = run_client("--tls", "--cafile", str(path))
    assert (result.returncode, result.stdout) == (2, b"")
    line = assert_one_line(result.stderr)
    assert f"--cafile {path}: " in line and reason in line, line


def test_a_bad_tls_port_variable_is_exit_2():
    with pytest.raises(SystemExit) as leaving:
        chat_client.parse_options(["--tls"], {"CHAT_TLS_PORT": "99999"})
    assert leaving.value.code == 2
