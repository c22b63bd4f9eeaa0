"""systemd without systemd: the daemon given the environment and descriptors systemd would give it.

- Notification: the test binds a real ``AF_UNIX`` datagram socket (a path,
  or a name in the abstract namespace), points ``NOTIFY_SOCKET`` at it and
  reads what the daemon sends: ``READY=1`` once it listens, ``STATUS=``
  with the user count, ``WATCHDOG=1`` at half of ``WATCHDOG_USEC``,
  ``STOPPING=1`` at shutdown.
- Socket activation: the test opens a real listening socket and starts the
  daemon through a small launcher that moves it to descriptor 3 and sets
  ``LISTEN_PID`` to its own pid before it execs the daemon (same pid), as
  systemd does; and through systemd's own ``systemd-socket-activate`` where
  it is installed.
- The unit files in docs/ pass ``systemd-analyze verify`` without a word.

None of this needs systemd running; only the last two need its tools, which
exist on Linux alone.  .ci/run installs them, and with CHAT_REQUIRE_TOOLS=1
a missing one fails the test instead of skipping it.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from netutil import ROOT, TIMEOUT, Client, ServerProcess, login

from reactor import systemd

needs_unix_sockets = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX on this platform")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd exists on Linux only")


def require_systemd_tool(name: str) -> str:
    """A systemd program: fails in CI (CHAT_REQUIRE_TOOLS=1) and skips elsewhere when missing."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian package systemd)"
    if os.environ.get("CHAT_REQUIRE_TOOLS"):
        pytest.fail(message)
    pytest.skip(message)


# -- the notification socket ------------------------------------------------------------


class NotifyReceiver:
    """The receiving end of NOTIFY_SOCKET: a real datagram socket, as systemd binds one."""

    def __init__(self, tmp_path, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"chat-reactor-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(tmp_path / "notify")
            self.sock.bind(self.address)
        self.messages: list[str] = []

    def wait_for(self, wanted: str, timeout: float = TIMEOUT) -> list[str]:
        """Messages until one that contains the line ``wanted``; all of them, that one last."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {wanted!r} within {timeout} s; got {seen!r}"
            self.sock.settimeout(remaining)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(message)
            seen.append(message)
            if wanted in message.split("\n"):
                return seen

    def close(self) -> None:
        self.sock.close()


@needs_unix_sockets
@linux_only  # the abstract namespace is Linux's; macOS would take the path form
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_ready_status_watchdog_and_stopping(tmp_path, abstract):
    receiver = NotifyReceiver(tmp_path, abstract)
    env = {"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "400000"}  # a ping every 0.2 s
    server = ServerProcess("--host", "127.0.0.1", "--port", "0", env=env)
    try:
        (ready,) = receiver.wait_for("READY=1")
        assert ready == "READY=1\nSTATUS=users: 0, connections: 0"
        Client(server.port).close()  # it listens by the time it says so
        receiver.wait_for("WATCHDOG=1", timeout=2)
        alice = login(server.port, "alice")
        receiver.wait_for("STATUS=users: 1, connections: 1", timeout=5)
        watchdog_before = receiver.messages.count("WATCHDOG=1")
        receiver.wait_for("WATCHDOG=1", timeout=2)
        assert receiver.messages.count("WATCHDOG=1") > watchdog_before  # it goes on pinging
        server.process.send_signal(signal.SIGTERM)
        stopping = receiver.wait_for("STOPPING=1")[-1]
        assert stopping == "STOPPING=1\nSTATUS=Shutting down"
        assert alice.read_until_closed() == b"ERR server-shutting-down\n"
        status, _, err = server.stop()
    finally:
        server.kill()
        receiver.close()
    assert status == 0, err
    assert b"WARNING" not in err.replace(b"WARNING: listening on all", b"")
    # Every message is one of the four kinds, READY first.
    assert receiver.messages[0].startswith("READY=1")
    for message in receiver.messages:
        assert re.fullmatch(
            r"READY=1\nSTATUS=.*|STATUS=users: \d+, connections: \d+|WATCHDOG=1|STOPPING=1\nSTATUS=Shutting down",
            message,
        ), message


@needs_unix_sockets
@pytest.mark.parametrize(
    "watchdog", [{}, {"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}], ids=["unset", "another-pid"]
)
def test_no_watchdog_pings_unless_asked(tmp_path, watchdog):
    receiver = NotifyReceiver(tmp_path)
    server = ServerProcess("--host", "127.0.0.1", "--port", "0", env={"NOTIFY_SOCKET": receiver.address, **watchdog})
    try:
        receiver.wait_for("READY=1")
        alice = login(server.port, "alice")
        receiver.wait_for("STATUS=users: 1, connections: 1")  # a second or so of running
        alice.close()
        receiver.wait_for("STATUS=users: 0, connections: 0")
        status, _, _ = server.stop()
    finally:
        server.kill()
        receiver.close()
    assert status == 0
    assert "WATCHDOG=1" not in receiver.messages


def test_without_notify_socket_nothing_is_sent_and_all_is_as_before():
    notifier = systemd.Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False


@needs_unix_sockets
def test_an_unreachable_notify_socket_costs_one_warning_and_nothing_else(tmp_path, caplog):
    notifier = systemd.Notifier(str(tmp_path / "nobody-listens-here"))
    with caplog.at_level("WARNING", logger="chat"):
        assert notifier.notify("READY=1") is False
        assert notifier.notify("WATCHDOG=1") is False
    notifier.close()
    assert len(caplog.records) == 1
    assert "cannot notify systemd" in caplog.records[0].getMessage()


def test_a_notify_socket_of_another_kind_is_not_used(caplog):
    with caplog.at_level("WARNING", logger="chat"):
        notifier = systemd.Notifier("vsock:2:1234")
    assert not notifier.enabled
    assert "not notifying systemd" in caplog.text


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_usec(environ, expected):
    assert systemd.watchdog_interval(environ, pid=4242) == expected


# -- socket activation ----------------------------------------------------------------------

LAUNCHER = textwrap.dedent("""\
    # What systemd does between fork and exec: the sockets become descriptors
    # 3, 4, ...; LISTEN_PID is the pid of the process about to exec.
    import fcntl, os, sys
    fds = [int(fd) for fd in sys.argv[1].split(",")] if sys.argv[1] else []
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of 3, 4, ...
    for index, fd in enumerate(moved):
        os.dup2(fd, 3 + index)  # inheritable, unlike the rest
    for fd in set(fds + moved) - set(range(3, 3 + len(fds))):
        os.close(fd)
    os.environ["LISTEN_PID"] = str(os.getpid()) if sys.argv[2] == "self" else sys.argv[2]
    os.execv(sys.executable, [sys.executable, "-m", "reactor", *sys.argv[3:]])
""")


def activated_server(listeners: list[socket.socket], *args: str, listen_pid: str = "self",
                     names: str | None = None) -> ServerProcess:
    """The daemon started with ``listeners`` passed the way systemd passes them."""
    env = {"LISTEN_FDS": str(len(listeners))}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    fds = [listener.fileno() for listener in listeners]
    try:
        return ServerProcess(
            *args,
            command=[sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), listen_pid],
            env=env,
            pass_fds=fds,
        )
    finally:
        for listener in listeners:
            listener.close()  # the server holds them now, as a service holds systemd's


TEST_NET = "192.0.2.1"  # an address no interface has: binding it would fail


@needs_unix_sockets
def test_a_passed_socket_is_served_and_host_and_port_are_not_used():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # A connection that arrives before the server runs waits in the queue, as during a restart.
    early = Client(port)
    early.say("LOGIN early")
    server = activated_server([listener], "--host", TEST_NET, "--port", "1", names="chat")
    try:
        assert server.port == port
        early.expect("OK")
        late = login(port, "late")
        late.say("WHO")
        late.expect("USER early", "USER late")
        status, _, err = server.stop()
    finally:
        server.kill()
    assert status == 0
    log = err.decode()
    assert f"Listening on sockets from systemd (--host and --port are not used): 127.0.0.1:{port} (chat)\n" in log
    assert "anyone who can reach" not in log


@needs_unix_sockets
def test_several_passed_sockets_all_serve_and_unnamed_ones_get_their_descriptor_as_name():
    first = socket.create_server(("127.0.0.1", 0))
    second = socket.create_server(("127.0.0.1", 0))
    ports = [first.getsockname()[1], second.getsockname()[1]]
    server = activated_server([first, second], "--port", "1")
    try:
        assert server.port == ports[0]
        one = login(ports[0], "one")
        two = login(ports[1], "two")
        two.say("MSG hi")
        one.expect("MSG two hi")
        status, _, err = server.stop()
    finally:
        server.kill()
    assert status == 0
    assert f"127.0.0.1:{ports[0]} (fd3), 127.0.0.1:{ports[1]} (fd4)" in err.decode()


@needs_unix_sockets
def test_sockets_meant_for_another_process_are_ignored():
    decoy = socket.create_server(("127.0.0.1", 0))
    decoy_port = decoy.getsockname()[1]
    server = activated_server([decoy], "--host", "127.0.0.1", "--port", "0", listen_pid="1")
    try:
        assert server.port != decoy_port
        login(server.port, "ann").sync()
        status, _, err = server.stop()
    finally:
        server.kill()
    assert status == 0 and b"systemd" not in err


@needs_unix_sockets
@pytest.mark.parametrize("kind", ["datagram", "connected", "not-listening"])
def test_a_passed_descriptor_that_is_no_listening_tcp_socket_is_one_line_and_exit_1(kind):
    keep = []
    if kind == "datagram":
        passed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    elif kind == "connected":
        server_side = socket.create_server(("127.0.0.1", 0))
        passed = socket.create_connection(server_side.getsockname())
        keep.append(server_side)
    else:
        passed = socket.socket()
        passed.bind(("127.0.0.1", 0))
    try:
        result = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(passed.fileno()), "self", "--port", "0"],
            cwd=ROOT, env={**os.environ, "LISTEN_FDS": "1"}, pass_fds=[passed.fileno()],
            capture_output=True, text=True, timeout=30,
        )
    finally:
        passed.close()
        for sock in keep:
            sock.close()
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "chat-server: error: LISTEN_FDS: descriptor 3 (fd3) is not a listening TCP socket "
        "(the .socket unit needs ListenStream= with an address or a port, and Accept=no)"
    ]


def test_listen_fds_reads_and_removes_the_variables():
    environ = {"LISTEN_PID": "4242", "LISTEN_FDS": "0", "LISTEN_FDNAMES": "", "OTHER": "x"}
    assert systemd.listen_fds(environ, pid=4242) == []
    assert environ == {"OTHER": "x"}
    assert systemd.listen_fds({}, pid=4242) == []
    meant_for_another = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert systemd.listen_fds(meant_for_another, pid=4242) == []
    assert meant_for_another == {}  # removed all the same, as sd_listen_fds does
    with pytest.raises(systemd.ActivationError, match="LISTEN_FDS must be a number"):
        systemd.listen_fds({"LISTEN_PID": "4242", "LISTEN_FDS": "three"}, pid=4242)


@linux_only
def test_systemd_socket_activate_starts_it_with_a_socket_of_its_own():
    """systemd's own launcher, which waits for the first connection and then execs the server."""
    tool = require_systemd_tool("systemd-socket-activate")
    with socket.socket() as probe:  # a port the OS considers free; the tool binds it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
    process = subprocess.Popen(
        [tool, "--listen", f"127.0.0.1:{port}", "--fdname", "chat", sys.executable, "-m", "reactor",
         "--host", TEST_NET, "--port", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # the tool says when it listens; connecting before that would be refused
            line = process.stderr.readline().decode()
            assert line and time.monotonic() < deadline, "systemd-socket-activate did not start"
            if line.startswith(f"Listening on 127.0.0.1:{port}"):
                break
        client = Client(port)
        client.say("LOGIN ann", "WHO")
        client.expect("OK", "USER ann")
        assert process.stdout.readline() == f"Chat server started on port {port}\n".encode()
        client.say("QUIT")
        client.expect("Goodbye!")
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
        log = process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        process.stdout.close()
        process.stderr.close()
    assert f"Listening on sockets from systemd (--host and --port are not used): 127.0.0.1:{port} (chat)" in log


# -- the unit files --------------------------------------------------------------------------

UNITS = ROOT / "docs"
INSTALLED_PROGRAM = "/opt/chat-reactor/bin/chat-server"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def test_the_service_has_what_the_documentation_promises():
    service = unit("chat-server.service")
    settings = dict(service["Service"])
    assert settings["Type"] == "notify"
    assert settings["ExecStart"].startswith(INSTALLED_PROGRAM + " ")
    assert settings["WatchdogSec"]
    for key, value in {
        "DynamicUser": "yes", "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }.items():
        assert settings[key] == value, key
    assert service["Install"]["WantedBy"] == "multi-user.target"
    socket_unit = unit("chat-server.socket")
    assert socket_unit["Socket"]["ListenStream"] == "4000"
    assert socket_unit["Install"]["WantedBy"] == "sockets.target"


@linux_only
def test_the_unit_files_pass_systemd_analyze_verify(tmp_path):
    """The files as shipped, but for ExecStart's program: verify wants it to exist, so a stand-in does."""
    analyze = require_systemd_tool("systemd-analyze")
    program = tmp_path / "chat-server"
    program.write_text(f"#!/bin/sh\nexec {sys.executable} -m reactor \"$@\"\n")
    program.chmod(0o755)
    service, replaced = re.subn(
        f"^ExecStart={re.escape(INSTALLED_PROGRAM)} ", f"ExecStart={program} ",
        (UNITS / "chat-server.service").read_text(), flags=re.M,
    )
    assert replaced == 1
    (tmp_path / "chat-server.service").write_text(service)
    shutil.copy(UNITS / "chat-server.socket", tmp_path / "chat-server.socket")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "chat-server.socket"), str(tmp_path / "chat-server.service")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""  # an unknown key is only a warning: none allowed


@linux_only
def test_systemd_analyze_verify_does_catch_a_broken_unit(tmp_path):
    """A guard on the guard: a misspelt key and a missing program are reported."""
    analyze = require_systemd_tool("systemd-analyze")
    broken = (UNITS / "chat-server.service").read_text().replace("ProtectSystem=", "ProtectSystm=")
    (tmp_path / "chat-server.service").write_text(broken)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "chat-server.service")],
        capture_output=True, text=True, timeout=60,
    )
    assert "ProtectSystm" in result.stderr
    assert INSTALLED_PROGRAM in result.stderr and result.returncode != 0
