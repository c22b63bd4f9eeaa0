"""The chat-server process as an operator and a user meet it: started with
``python -m reactor`` as the README says, stopped by signals, refusing bad
configuration, and serving a real third-party client.

The seed README's sessions (raw sockets and netcat) and the README's
piped netcat line also run against two ``--cluster`` nodes on a real
Redis, the terminals alternating between them (conftest.py's
``daemons``).  The rest is about one process: its
output lines, its signals and exit statuses, its flags; cluster mode's own
(a node stopped by a signal, bad Redis URLs) are in
test_cluster_redis.py and test_config.py."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import pytest
import seed
from netutil import ROOT, Client, ServerProcess, login, server_process
from tools import ProcessClient, require


def run_daemon(*args: str, env=None, timeout: float = 10) -> subprocess.CompletedProcess:
    """Run ``python -m reactor`` expecting it to exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "reactor", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=timeout,
    )


# -- starting -----------------------------------------------------------------------


def test_startup_lines_on_stdout_and_connections_logged_on_stderr():
    with server_process() as server:
        client = login(server.port, "alice")
        client.say("MSG a secret only alice knows")
        client.sync()
        client.say("QUIT")
        client.expect("Goodbye!")
        assert client.read_until_closed() == b""
        peer = f"('127.0.0.1', {client.sock.getsockname()[1]})"
        status, out, err = server.stop()
    assert status == 0
    assert out.startswith(
        b"Chat server started on port %d\nWaiting for connections... (Press Ctrl+C to stop)\n"
        % server.port
    )
    log = err.decode()
    assert f"New connection from {peer}\n" in log
    assert f"Connection closed: {peer}\n" in log
    assert "secret" not in log  # users' messages are theirs
    assert "Traceback" not in log


def test_listening_on_every_interface_says_who_can_join():
    server = ServerProcess("--port", "0")  # the default host, 0.0.0.0
    try:
        status, _, err = server.stop()
    finally:
        server.kill()
    assert status == 0
    assert f"anyone who can reach port {server.port} can join" in err.decode()


def test_the_port_comes_from_the_environment_and_the_flag_wins():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    server = ServerProcess("--host", "127.0.0.1", env={"PORT": str(free)})
    try:
        assert server.port == free
    finally:
        server.kill()
    server = ServerProcess("--host", "127.0.0.1", "--port", "0", env={"PORT": str(free)})
    try:
        assert server.port != free
    finally:
        server.kill()


# -- stopping ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_tells_everyone_flushes_and_exits_zero(signum):
    with server_process() as server:
        alice = login(server.port, "alice")
        bob = login(server.port, "bob")
        anonymous = Client(server.port)
        anonymous.sync()
        status, out, err = server.stop(signum)
        for client in (alice, bob, anonymous):
            # Everyone gets the reason, and no INFO about the others leaving.
            assert client.read_until_closed() == b"ERR server-shutting-down\n"
    assert status == 0, err
    assert b"Traceback" not in err


def test_shutdown_with_no_clients_is_immediate():
    with server_process() as server:
        status, _, err = server.stop(signal.SIGINT, timeout=3)
    assert status == 0 and b"Traceback" not in err


# -- statistics: SIGUSR1 and --stats-interval ---------------------------------------------------

STATS = rb"stats: users=(\d+) connections=(\d+) accepted=(\d+) refused=(\d+) lines_in=(\d+) lines_out=(\d+) bytes_in=(\d+) bytes_out=(\d+) evictions=(\d+) flood_pauses=(\d+) uptime=(\d+)s\n"


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="Windows has no SIGUSR1")
def test_sigusr1_logs_one_line_of_statistics_and_the_server_goes_on():
    with server_process() as server:
        alice = login(server.port, "alice")
        bob = login(server.port, "bob")
        alice.say("MSG hi")
        bob.expect("MSG alice hi")
        anonymous = Client(server.port)
        anonymous.sync()
        server.process.send_signal(signal.SIGUSR1)
        (match,) = server.wait_for_stderr(STATS)
        figures = [int(value) for value in match.groups()]
        # users, connections, accepted, refused, lines in (LOGIN x2, MSG, PING), lines out (OK x2, MSG, PONG),
        # bytes in, bytes out, evictions, flood pauses
        assert figures[:6] == [2, 3, 3, 0, 4, 4]
        assert figures[6] == len(b"LOGIN alice\nLOGIN bob\nMSG hi\nPING\n")
        assert figures[7] == len(b"OK\nOK\nMSG alice hi\nPONG\n")
        assert figures[8:10] == [0, 0]
        alice.sync()  # still serving
        status, _, err = server.stop()
    assert status == 0
    assert err.count(b"stats: ") == 1
    assert b"hi\n" not in err.replace(b"MSG alice hi", b"")  # no message text


def test_stats_interval_logs_the_line_periodically():
    with server_process("--stats-interval", "0.2") as server:
        alice = login(server.port, "alice")
        alice.sync()
        before = len(re.findall(STATS, server.stderr))  # lines from before alice logged in
        *_, first, second = server.wait_for_stderr(STATS, count=before + 2)
        assert int(first.group(1)) == int(second.group(1)) == 1  # users
        assert int(first.group(11)) <= int(second.group(11))  # uptime
        status, _, _ = server.stop()
    assert status == 0


# -- bad configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, env, names",
    [
        (["--port", "70000"], {}, "--port"),
        (["--port", "http"], {}, "--port"),
        ([], {"PORT": "abc"}, "PORT"),
        (["--idle-timeout", "-1"], {}, "--idle-timeout"),
        ([], {"IDLE_TIMEOUT": "soon"}, "IDLE_TIMEOUT"),
        (["--max-clients", "0"], {}, "--max-clients"),
        (["--max-line", "0"], {}, "--max-line"),
        (["--rate", "-5"], {}, "--rate"),
        ([], {"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        (["--stats-interval", "-1"], {}, "--stats-interval"),
        ([], {"CHAT_HOST": "a,,b"}, "CHAT_HOST"),
    ],
)
def test_a_bad_value_exits_2_with_one_line_naming_it(args, env, names):
    import os

    environment = {key: value for key, value in os.environ.items() if key != "PORT"}
    environment.update(env)
    result = run_daemon(*args, env=environment)
    assert result.returncode == 2
    assert result.stdout == b""  # it never started
    err = result.stderr.decode()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and names in errors[0]


def test_a_port_in_use_exits_1_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_daemon("--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        f"chat-server: error: port {port} is already in use (is another server running?)"
    ]


def test_help_and_version():
    import protocol

    help_text = run_daemon("--help")
    assert help_text.returncode == 0 and b"--idle-timeout" in help_text.stdout
    assert b"CHAT_HOST" in help_text.stdout and b"--stats-interval" in help_text.stdout
    version = run_daemon("--version")
    assert version.returncode == 0
    assert version.stdout == f"chat-server {protocol.__version__}\n".encode()


# -- the seed README, against the server started as the README says --------------------------


@pytest.mark.parametrize("session", seed.SESSIONS, ids=seed.session_name)
def test_the_seed_readme_sessions_against_python_m_reactor(daemons, session):
    """The README's sessions, raw sockets, the daemon started as the README says (or two cluster nodes)."""
    seed.play(session, lambda: Client(daemons.port))
    for server in daemons:
        status, _, err = server.stop()
        assert status == 0 and b"Traceback" not in err


# -- a real third-party client --------------------------------------------------------------


@pytest.mark.parametrize("session", seed.SESSIONS, ids=seed.session_name)
def test_the_seed_readme_sessions_through_netcat(daemons, session):
    nc = require("nc")
    # -N: shut the socket down when standard input ends, as a scripted user would.
    seed.play(session, lambda: ProcessClient([nc, "-N", "127.0.0.1", str(daemons.port)]))


def test_the_readme_s_piped_netcat_line_ends_by_itself(daemons):
    """README: ``printf ... | nc -N localhost 4000`` prints the answers and exits, with no QUIT."""
    require("nc")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"\n\$ (printf [^\n]*\| nc -N) localhost 4000\n(.*?)```", readme, flags=re.S)
    assert match, "README.md has no piped nc example"
    pipeline, expected = match.groups()
    result = subprocess.run(
        ["sh", "-c", f"{pipeline} 127.0.0.1 {daemons.port}"], capture_output=True, text=True, timeout=20
    )
    assert (result.returncode, result.stdout) == (0, expected)
    for server in daemons:
        status, _, _ = server.stop()
        assert status == 0


def test_the_garbage_collector_is_tuned_for_long_lived_connections():
    import gc

    from reactor.daemon import GC_THRESHOLDS, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # what start-up made is out of every later collection
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
