"""chat-client against a real server: scripted through pipes, interactive in a pseudo-terminal.

The client always runs as a user would start it, ``python -m chatclient``
from the repository root, in a subprocess.  Scripted mode gets pipes and its
output is compared byte for byte.  Interactive mode gets a pseudo-terminal
(``os.openpty``), and everything the client and readline write to it is
rendered by ``VirtualTerminal``, a small VT100 emulator, so the tests check
the screen a user would see, not a byte stream that merely contains the
right words.  The other users are raw sockets (``tests.netutil.Client``).

No test sleeps: each waits, with a deadline, for output to arrive (select on
the pty, a condition variable for pipes), for a line on a raw socket, or for
the process to exit.
"""

from __future__ import annotations

import codecs
import configparser
import contextlib
import importlib
import os
import pathlib
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import chatclient
import protocol
from chatclient import cli as chat_client
from tests.netutil import ROOT, TIMEOUT, login, server_process, threaded_server

SGR = re.compile(rb"\x1b\[[0-9;]*m")


def client_environment(**changes: str | None) -> dict:
    """The caller's environment without what would change the client's behaviour."""
    env = dict(os.environ)
    for name in ("PORT", "CHAT_TLS_PORT", "NO_COLOR", "COLUMNS", "LINES", "PYTHONSTARTUP"):
        env.pop(name, None)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_client(
    *args: str, input: bytes = b"", env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chatclient", *args],
        input=input,
        capture_output=True,
        cwd=ROOT,
        env=env or client_environment(),
        timeout=TIMEOUT * 2,
    )


def free_port() -> int:
    """A port on which nothing listens: the OS chose it, and it is free again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text!r}"
    return text


class PipedClient:
    """A scripted client whose stdin stays open, its stdout collected by a thread.

    A thread, not select, so that this works with Windows pipes too.
    """

    def __init__(self, port: int, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatclient", "--port", str(port), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=client_environment(),
        )
        self.output = b""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        while True:
            chunk = self.process.stdout.read1(65536)
            with self._changed:
                if not chunk:
                    return
                self.output += chunk
                self._changed.notify_all()

    def say(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def wait_for_output(self, expected: bytes) -> None:
        with self._changed:
            arrived = self._changed.wait_for(lambda: expected in self.output, TIMEOUT)
        assert arrived, f"no {expected!r} on stdout within {TIMEOUT} s (have {self.output!r})"

    def finish(self, close_input: bool = True) -> tuple:
        """(exit status, all of stdout, all of stderr) once the client has exited."""
        if close_input:
            self.process.stdin.close()
        status = self.process.wait(TIMEOUT * 2)
        self._reader.join(TIMEOUT)
        err = self.process.stderr.read()
        return status, self.output, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            with contextlib.suppress(OSError):
                stream.close()


@contextlib.contextmanager
def piped_client(port: int, *args: str) -> Iterator[PipedClient]:
    piped = PipedClient(port, *args)
    try:
        yield piped
    finally:
        piped.kill()


# -- the command line ------------------------------------------------------------


def test_version_names_the_program_and_the_protocol_version():
    result = run_client("--version")
    assert result.returncode == 0
    assert result.stdout == f"chat-client {protocol.__version__}\n".encode()


def test_the_console_script_runs_the_package_main():
    """``chat-client`` (setup.cfg) and ``python -m chatclient`` are one program."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    scripts = dict(
        line.replace(" ", "").split("=", 1)
        for line in config["options.entry_points"]["console_scripts"].strip().splitlines()
    )
    module, _, function = scripts["chat-client"].partition(":")
    assert getattr(importlib.import_module(module), function) is chatclient.main


def test_help_lists_every_flag():
    result = run_client("--help")
    assert result.returncode == 0
    for flag in (b"--host", b"--port", b"--login", b"--timeout", b"--tls", b"--cafile", b"--version"):
        assert flag in result.stdout
    statuses = result.stdout.split(b"exit status:\n", 1)[1]
    assert re.findall(rb"(?m)^  ([0-9]+) ", statuses) == [b"0", b"1", b"2", b"130"]


@pytest.mark.parametrize(
    "args, env, named",
    [
        (["--port", "70000"], {}, "--port"),
        (["--port", "0"], {}, "--port"),
        (["--port", "abc"], {}, "--port"),
        (["--port", "-1"], {}, "--port"),
        ([], {"PORT": "abc"}, "PORT"),
        ([], {"PORT": "65536"}, "PORT"),
        (["--timeout", "-1"], {}, "--timeout"),
        (["--login", "two words"], {}, "--login"),
        (["--host", ""], {}, "--host"),
        (["--bogus"], {}, "--bogus"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_status_2(args, env, named):
    result = run_client(*args, env=client_environment(**env))
    assert result.returncode == 2
    assert named in assert_one_line(result.stderr)
    assert result.stdout == b""


def test_port_comes_from_the_flag_then_the_variable_then_the_default():
    assert chat_client.parse_options([], {}).port == 4000
    assert chat_client.parse_options([], {"PORT": ""}).port == 4000  # blank is unset
    assert chat_client.parse_options([], {"PORT": " 5000 "}).port == 5000
    assert chat_client.parse_options(["--port", "6000"], {"PORT": "abc"}).port == 6000
    assert chat_client.parse_options([], {}).host == "localhost"


def test_the_port_variable_reaches_a_real_server():
    with threaded_server() as server:
        result = run_client(input=b"PING\n", env=client_environment(PORT=str(server.port)))
    assert (result.returncode, result.stdout) == (0, b"PONG\n")


# -- an old Python -------------------------------------------------------------------


_OLD_PYTHONS = ["2.7", "3.6", "3.7", "3.8", "3.9"]


def old_python(version: str) -> str:
    """The interpreter of an old Python on this machine (pyenv's, or on the PATH)."""
    for candidate in (
        pathlib.Path.home() / ".pyenv" / "versions",
        pathlib.Path(os.environ.get("PYENV_ROOT", "/nonexistent")) / "versions",
    ):
        found = sorted(candidate.glob(f"{version}.*/bin/python"))
        if found:
            return str(found[-1])
    path = shutil.which(f"python{version}")
    if path:
        return path
    pytest.skip(f"no Python {version} here (the check itself is tested by simulating one)")


def test_an_old_python_is_named_in_one_line():
    assert chatclient.python_too_old((3, 10, 0)) is None
    assert chatclient.python_too_old((3, 13, 1)) is None
    complaint = chatclient.python_too_old((3, 9, 18, "final", 0))
    assert "needs Python 3.10 or newer" in complaint and "is Python 3.9.18" in complaint
    assert "\n" not in complaint


def test_the_check_runs_before_anything_that_needs_3_10_is_imported():
    """With sys.version_info made to say 3.9, nothing but the package itself is imported."""
    probe = (
        "import runpy, sys\n"
        "sys.version_info = (3, 9, 18, 'final', 0)\n"
        "try:\n"
        "    runpy.run_module('chatclient', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as leaving:\n"
        "    print(leaving.code, sorted(m for m in sys.modules if m.startswith(('chatclient', 'protocol'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "--help"],
        capture_output=True, cwd=ROOT, env=client_environment(), timeout=TIMEOUT * 2,
    )
    assert result.stdout.decode() == "2 ['chatclient']\n"  # neither protocol nor chatclient.cli
    assert "needs Python 3.10 or newer" in assert_one_line(result.stderr)


@pytest.mark.parametrize("version", _OLD_PYTHONS)
@pytest.mark.parametrize("entry", ["-m chatclient", "console script"])
def test_a_real_old_python_says_which_python_and_exits_2(version, entry):
    """Both entry points, with no traceback, however old the Python (2.7 included)."""
    python = old_python(version)
    if entry == "-m chatclient":
        argv = [python, "-m", "chatclient", "--help"]
    else:  # what pip writes into the chat-client script
        argv = [python, "-c", "import sys; from chatclient import main; sys.exit(main())", "--help"]
    result = subprocess.run(argv, capture_output=True, cwd=ROOT, env=client_environment(), timeout=TIMEOUT * 2)
    assert result.returncode == 2
    line = assert_one_line(result.stderr)
    assert line.startswith("chat-client: needs Python 3.10 or newer, but ") and f"Python {version}." in line
    assert result.stdout == b""


# -- scripted mode ---------------------------------------------------------------


def test_scripted_example_prints_exactly_the_servers_lines():
    with threaded_server() as server:
        result = run_client("--port", str(server.port), input=b"LOGIN bot\nWHO\nQUIT\n")
    assert result.stdout == b"OK\nUSER bot\nGoodbye!\n"
    assert result.stderr == b""
    assert result.returncode == 0


def test_without_quit_the_client_waits_for_every_answer_then_exits():
    """End of input half-closes; the server answers everything, then closes."""
    with threaded_server() as server:
        result = run_client("--port", str(server.port), input=b"LOGIN bot\nWHO\nPING\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"OK\nUSER bot\nPONG\n", b"")


def test_a_last_line_without_lf_is_still_sent():
    with threaded_server() as server:
        result = run_client("--port", str(server.port), input=b"LOGIN bot\r\nWHO")
    assert (result.returncode, result.stdout) == (0, b"OK\nUSER bot\n")


def test_login_flag_logs_in_before_the_input():
    with threaded_server() as server:
        result = run_client("--port", str(server.port), "--login", "bot", input=b"WHO\nQUIT\n")
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b"OK\nUSER bot\nGoodbye!\n"


def test_a_refused_login_is_said_plainly_and_exit_status_1_and_the_input_is_never_sent():
    with threaded_server() as server:
        bob = login(server.port, "bob")
        result = run_client("--port", str(server.port), "--login", "BOB", input=b"LOGIN bot\nMSG hi\n")
        bob.say("WHO", "PING")
        bob.expect("USER bob", "PONG")  # bot never logged in: the input was not sent
    assert result.returncode == 1
    assert result.stdout == b"ERR username-taken\n"  # stdout still holds all the server said
    line = assert_one_line(result.stderr)
    assert line.startswith("chat-client: cannot log in as BOB: the name is taken")
    assert "(ERR username-taken)" in line


def test_an_invalid_name_refused_by_the_server_is_exit_status_1():
    with threaded_server() as server:
        result = run_client("--port", str(server.port), "--login", "a" * 33, input=b"")
    assert (result.returncode, result.stdout) == (1, b"ERR invalid-username\n")
    assert "not a name the server accepts" in assert_one_line(result.stderr)


def test_login_on_a_full_server_gives_the_servers_reason():
    with threaded_server(max_clients=1) as server:
        occupant = login(server.port, "occupant")
        result = run_client("--port", str(server.port), "--login", "bot", input=b"WHO\n")
        occupant.close()
    assert (result.returncode, result.stdout) == (1, b"ERR server-full\n")
    assert "cannot log in as bot: the server is full" in assert_one_line(result.stderr)


@contextlib.contextmanager
def fake_server_link(replies: bytes, close: bool = True) -> Iterator[chat_client.Link]:
    """A ``Link`` to a socket pair whose other end has already said ``replies``."""
    ours, theirs = socket.socketpair()
    theirs.sendall(replies)
    if close:
        theirs.shutdown(socket.SHUT_WR)
    try:
        yield chat_client.Link(ours)
        assert theirs.recv(64) == b"LOGIN bob\n"
    finally:
        ours.close()
        theirs.close()


def test_log_in_returns_ok_and_what_came_with_it():
    with fake_server_link(b"OK\nMSG carol hi\nDM car", close=False) as link:
        assert chat_client.log_in(link, "bob") == b"OK\nMSG carol hi\nDM car"


@pytest.mark.parametrize(
    "replies, reason",
    [
        (b"ERR username-taken\n", "the name is taken"),
        (b"ERR server-shutting-down\n", "it is shutting down"),
        (b"PONG\r\n", "the server answered 'PONG'"),
        (b"\x1b[2J\n", "the server answered '\ufffd[2J'"),  # no escape reaches the terminal
        (b"", "closed the connection without Goodbye!"),
        (b"O", "closed the connection without Goodbye!"),
    ],
)
def test_log_in_fails_on_anything_but_ok(replies, reason):
    with fake_server_link(replies) as link, pytest.raises(chat_client.LoginFailed) as failure:
        chat_client.log_in(link, "bob")
    assert str(failure.value).startswith("cannot log in as bob: ") and reason in str(failure.value)


def test_log_in_waits_for_the_answer_no_longer_than_its_timeout(monkeypatch):
    monkeypatch.setattr(chat_client, "LOGIN_TIMEOUT", 0.05)
    with fake_server_link(b"", close=False) as link, pytest.raises(chat_client.LoginFailed) as failure:
        chat_client.log_in(link, "bob")
    assert "no answer within 0.05 s" in str(failure.value)


def test_invalid_utf8_is_replaced_so_no_telnet_byte_is_ever_sent():
    """Raw, ``\\xff\\xfd\\x01`` is Telnet's IAC DO 1: the server would answer IAC WONT 1."""
    with threaded_server() as server:
        result = run_client("--port", str(server.port), input=b"LOGIN bot\n\xff\xfd\x01 x\nQUIT\n")
    assert result.stdout == b"OK\nERR unknown-command\nGoodbye!\n"


def test_scripted_messages_reach_a_raw_client():
    with threaded_server() as server:
        bob = login(server.port, "bob")
        result = run_client(
            "--port", str(server.port), input=b"LOGIN bot\nMSG hi  all\nDM bob psst\nQUIT\n"
        )
        bob.expect("MSG bot hi  all", "DM bot psst", "INFO bot disconnected")
    assert (result.returncode, result.stdout) == (0, b"OK\nGoodbye!\n")


def test_scripted_client_prints_what_others_send_while_its_input_is_open():
    with threaded_server() as server:
        bob = login(server.port, "bob")
        with piped_client(server.port) as bot:
            bot.say(b"LOGIN bot\n")
            bot.wait_for_output(b"OK\n")
            bob.say("MSG hello bot", "DM bot caf\u00e9 \u2603")
            bot.wait_for_output("DM bob caf\u00e9 \u2603\n".encode())
            status, out, err = bot.finish()
        bob.expect("INFO bot disconnected")
    assert out == "OK\nMSG bob hello bot\nDM bob caf\u00e9 \u2603\n".encode()
    assert (status, err) == (0, b"")


def test_a_reader_that_leaves_is_exit_status_1_without_a_traceback():
    """``chat-client | head -1``: stdout closes under the client."""
    with threaded_server() as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatclient", "--port", str(server.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=client_environment(),
        )
        process.stdout.close()
        _, err = process.communicate(b"PING\nPING\n", timeout=TIMEOUT * 2)
    assert (process.returncode, err) == (1, b"")


@pytest.mark.skipif(os.name == "nt", reason="SIGINT cannot be sent to a child process on Windows")
def test_ctrl_c_on_a_scripted_client_is_exit_status_130_without_a_traceback():
    with threaded_server() as server:
        with piped_client(server.port) as bot:
            bot.say(b"LOGIN bot\n")
            bot.wait_for_output(b"OK\n")
            bot.process.send_signal(signal.SIGINT)
            status, out, err = bot.finish(close_input=False)
    assert (status, out, err) == (130, b"OK\n", b"")


def test_a_refused_connection_is_one_line_and_exit_status_1():
    result = run_client("--port", str(free_port()), input=b"LOGIN bot\n")
    assert result.returncode == 1
    assert "connection refused" in assert_one_line(result.stderr)
    assert result.stdout == b""


def test_idle_timeout_ends_a_scripted_client_with_the_reason():
    with threaded_server(idle_timeout=0.5) as server:
        with piped_client(server.port) as bot:
            bot.say(b"LOGIN bot\n")
            status, out, err = bot.finish(close_input=False)
    assert out == b"OK\nERR idle-timeout\n"
    assert "idle timeout" in assert_one_line(err)
    assert status == 0


def test_server_shutdown_ends_a_scripted_client_with_the_reason():
    with server_process() as server:
        with piped_client(server.port) as bot:
            bot.say(b"LOGIN bot\n")
            bot.wait_for_output(b"OK\n")
            server.stop(signal.SIGTERM)
            status, out, err = bot.finish(close_input=False)
    assert out == b"OK\nERR server-shutting-down\n"
    assert "shutting down" in assert_one_line(err)
    assert status == 0


def test_a_full_server_is_exit_status_1():
    with threaded_server(max_clients=1) as server:
        occupant = login(server.port, "occupant")
        result = run_client("--port", str(server.port), input=b"LOGIN bot\n")
        occupant.close()
    assert result.stdout == b"ERR server-full\n"
    assert "full" in assert_one_line(result.stderr)
    assert result.returncode == 1


@contextlib.contextmanager
def bare_listener() -> Iterator[socket.socket]:
    """A port that accepts connections and does only what the test tells it to."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    try:
        yield listener
    finally:
        listener.close()


def test_a_server_that_vanishes_while_the_input_is_open_is_exit_status_1():
    """A close without Goodbye! or an ERR reason is not an orderly end: a script must see it."""
    with bare_listener() as listener:
        with piped_client(listener.getsockname()[1]) as bot:
            conn, _ = listener.accept()
            conn.sendall(b"hello\n")
            conn.close()
            status, out, err = bot.finish(close_input=False)
    assert out == b"hello\n"
    assert "closed the connection without Goodbye!" in assert_one_line(err)
    assert status == 1


def test_a_close_after_the_input_ended_is_the_orderly_end_of_stream():
    """The same close, after the half-close, is the protocol's answer to it: status 0, quietly."""
    with bare_listener() as listener:
        with piped_client(listener.getsockname()[1]) as bot:
            conn, _ = listener.accept()
            bot.say(b"PING\n")
            bot.process.stdin.close()
            conn.settimeout(TIMEOUT)
            received = b""
            while chunk := conn.recv(64):  # until the client's half-close
                received += chunk
            conn.sendall(b"PONG\n")
            conn.close()
            status, out, err = bot.finish(close_input=False)
    assert received == b"PING\n"
    assert (status, out, err) == (0, b"PONG\n", b"")


def test_a_reset_connection_is_one_line_and_exit_status_1():
    with bare_listener() as listener:
        with piped_client(listener.getsockname()[1]) as bot:
            conn, _ = listener.accept()
            bot.say(b"PING\n")
            assert conn.recv(64) == b"PING\n"  # the client is connected, not still connecting
            conn.sendall(b"partial line")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            conn.close()
            status, out, err = bot.finish(close_input=False)
    assert "connection lost" in assert_one_line(err)
    assert status == 1


def test_a_server_that_never_closes_cannot_hang_the_client():
    with bare_listener() as listener:  # the kernel completes the handshake; nobody answers
        started = time.monotonic()
        port = listener.getsockname()[1]
        result = run_client("--port", str(port), "--timeout", "0.3", input=b"PING\n")
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "did not close" in assert_one_line(result.stderr)
    assert elapsed < TIMEOUT


# -- interactive mode: a pseudo-terminal rendered by a tiny VT100 ---------------------


class VirtualTerminal:
    """Just enough of an xterm to render what readline and the client write.

    Rows are unbounded (the screen never scrolls away), each ``columns``
    wide, with xterm's deferred wrap: printing in the last column leaves the
    cursor there until the next character.  Sequences it does not know are
    collected in ``unknown`` rather than guessed at.
    """

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.cells: list[list[str]] = [[" "] * columns]
        self.row = 0
        self.col = 0
        self.wrap_pending = False
        self.insert_mode = False
        self.unknown: list[str] = []
        self._escape: str | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    # reading the screen
    def lines(self) -> list[str]:
        return ["".join(row).rstrip() for row in self.cells]

    def line(self, offset: int = 0) -> str:
        """The row ``offset`` rows from the cursor's (negative: above)."""
        index = self.row + offset
        return self.lines()[index] if 0 <= index < len(self.cells) else ""

    def text(self) -> str:
        return "\n".join(self.lines())

    # writing to it
    def feed(self, data: bytes) -> None:
        for char in self._decoder.decode(data):
            if self._escape is not None:
                self._escape_char(char)
            elif char == "\x1b":
                self._escape = ""
            elif char == "\r":
                self.col, self.wrap_pending = 0, False
            elif char == "\n":
                self._down(1)
            elif char == "\b":
                self.col, self.wrap_pending = max(0, self.col - 1), False
            elif char == "\t":
                self.col = min(self.columns - 1, (self.col // 8 + 1) * 8)
            elif char >= " " and char != "\x7f":
                self._print(char)

    def _down(self, rows: int) -> None:
        self.row += rows
        while len(self.cells) <= self.row:
            self.cells.append([" "] * self.columns)
        self.wrap_pending = False

    def _print(self, char: str) -> None:
        if self.wrap_pending:
            self.col = 0
            self._down(1)
        row = self.cells[self.row]
        if self.insert_mode:
            row.insert(self.col, char)
            del row[self.columns:]
        else:
            row[self.col] = char
        if self.col == self.columns - 1:
            self.wrap_pending = True
        else:
            self.col += 1

    def _escape_char(self, char: str) -> None:
        sequence = self._escape = self._escape + char
        if sequence[0] == "[":
            if len(sequence) > 1 and "@" <= char <= "~":
                self._escape = None
                self._csi(sequence[1:-1], char)
        elif sequence[0] in "()" and len(sequence) < 2:
            pass  # a character-set designation: one more character
        else:
            self._escape = None  # a two-character escape such as ESC = or ESC >

    def _csi(self, parameters: str, final: str) -> None:
        private = parameters.startswith("?")
        numbers = [int(p) if p else 0 for p in parameters.lstrip("?").split(";") if p != ""]
        count = max(1, numbers[0]) if numbers else 1
        mode = numbers[0] if numbers else 0
        if private or final == "m":
            return  # private modes (bracketed paste, keypad) and colours change no cell
        self.wrap_pending = False
        if final in "ABCDG":
            self._move(final, count)
        elif not self._edit(final, count, mode):
            self.unknown.append(parameters + final)

    def _move(self, final: str, count: int) -> None:
        if final == "A":
            self.row = max(0, self.row - count)
        elif final == "B":
            self._down(count)
        elif final == "C":
            self.col = min(self.columns - 1, self.col + count)
        elif final == "D":
            self.col = max(0, self.col - count)
        else:  # G
            self.col = min(self.columns - 1, count - 1)

    def _edit(self, final: str, count: int, mode: int) -> bool:
        """Erase, delete or insert cells; False for a sequence this terminal does not know."""
        row = self.cells[self.row]
        if final == "K":
            spans = {0: (self.col, self.columns), 1: (0, self.col + 1), 2: (0, self.columns)}
            start, end = spans[mode]
            row[start:end] = [" "] * (end - start)
        elif final == "J" and mode == 0:
            row[self.col:] = [" "] * (self.columns - self.col)
            del self.cells[self.row + 1:]
        elif final == "P":
            del row[self.col:self.col + count]
            row.extend([" "] * (self.columns - len(row)))
        elif final == "@":
            row[self.col:self.col] = [" "] * count
            del row[self.columns:]
        elif final == "X":
            end = min(self.columns, self.col + count)
            row[self.col:end] = [" "] * (end - self.col)
        elif final in "hl" and mode == 4:
            self.insert_mode = final == "h"
        else:
            return False
        return True


_SPAWN = (  # make the pty the controlling terminal, so Ctrl+C raises SIGINT, then become the client
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'chatclient'] + sys.argv[1:])"
)
_END = b"@@end-of-client-output@@"


class PtyClient:
    """``python -m chatclient`` in a pseudo-terminal, its screen rendered as it goes."""

    PROMPT = "> "

    def __init__(self, port: int, *args: str, columns: int = 100, **env: str | None) -> None:
        import fcntl
        import termios

        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        settings = {"TERM": "xterm", "NO_COLOR": "1", "LC_ALL": "C.UTF-8", "INPUTRC": os.devnull}
        settings.update(env)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SPAWN, "--port", str(port), *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            cwd=ROOT,
            env=client_environment(**settings),
            start_new_session=True,
        )
        self.screen = VirtualTerminal(columns)
        self.raw = b""

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        """Render output until ``condition()`` holds; else AssertionError showing the screen."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what}: not within {timeout} s; {self.seen()}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                data = os.read(self.master, 65536)
                self.raw += data
                self.screen.feed(data)

    def seen(self) -> str:
        return f"screen:\n{self.screen.text()}\nraw: {self.raw!r}"

    def at_prompt(self, typed: str = "") -> bool:
        """The cursor's row is the prompt and ``typed``, the cursor right after it."""
        shown = self.PROMPT + typed
        return self.screen.line() == shown.rstrip() and self.screen.col == len(shown)

    def wait_exit(self) -> int:
        """The exit status, once every byte the client wrote has been rendered.

        The test's own end marker, written to the terminal after the client
        exited, arrives after all of the client's output; the screen is then
        rendered again without it.
        """
        status = self.process.wait(TIMEOUT * 2)
        os.write(self.slave, _END)
        self.wait_for(lambda: _END in self.raw, "the end of the client's output")
        self.raw = self.raw.replace(_END, b"")
        self.screen = VirtualTerminal(self.screen.columns)
        self.screen.feed(self.raw)
        return status

    def assert_exit(self, expected: int) -> None:
        status = self.wait_exit()
        assert status == expected, f"exit status {status}; {self.seen()}"

    def assert_left_cleanly(self) -> None:
        """No traceback, and the terminal back in line mode with echo, as the shell expects."""
        import termios

        assert b"Traceback" not in self.raw, self.raw
        assert not self.screen.unknown, self.screen.unknown
        local_modes = termios.tcgetattr(self.slave)[3]
        assert local_modes & termios.ICANON and local_modes & termios.ECHO

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty_client():
    """Start clients in pseudo-terminals (POSIX only); every one is killed at the end."""
    pytest.importorskip("pty")
    pytest.importorskip("termios")
    started: list[PtyClient] = []

    def start(port: int, *args: str, **options) -> PtyClient:
        started.append(PtyClient(port, *args, **options))
        return started[-1]

    yield start
    for terminal in started:
        terminal.close()


def logged_in(terminal: PtyClient) -> None:
    terminal.wait_for(
        lambda: terminal.screen.line(-1) == "OK" and terminal.at_prompt(""), "OK, then the prompt"
    )


def test_a_line_received_while_typing_appears_above_the_intact_input(pty_client):
    with threaded_server() as server:
        bob = login(server.port, "bob")
        alice = pty_client(server.port, "--login", "alice")
        logged_in(alice)
        alice.type(b"MSG hel")
        alice.wait_for(lambda: alice.at_prompt("MSG hel"), "the echo of the partial line")

        bob.say("MSG hello alice")
        alice.wait_for(
            lambda: alice.screen.line(-1) == "MSG bob hello alice" and alice.at_prompt("MSG hel"),
            "the message above, the partial line redrawn below",
        )
        assert alice.screen.lines().count("> MSG hel") == 1, alice.screen.text()

        alice.type(b"lo there\r")
        bob.expect("MSG alice hello there")
        alice.wait_for(lambda: alice.at_prompt(""), "a fresh prompt")
        assert alice.screen.line(-1) == "> MSG hello there"

        alice.type(b"\x04")  # Ctrl+D on an empty line
        alice.assert_exit(0)
        bob.expect("INFO alice disconnected")
    assert "Goodbye!" in alice.screen.lines()
    assert not SGR.search(alice.raw), "NO_COLOR=1, yet colours were sent"
    alice.assert_left_cleanly()


@pytest.mark.parametrize("term", ["xterm", "dumb"])
def test_ctrl_c_sends_quit_and_exits_0(pty_client, term):
    with threaded_server() as server:
        bob = login(server.port, "bob")
        alice = pty_client(server.port, "--login", "alice", TERM=term)
        if term == "dumb":
            alice.wait_for(lambda: "OK" in alice.screen.lines(), "OK")
        else:
            logged_in(alice)
        alice.type(b"MSG never sent")
        alice.wait_for(lambda: alice.screen.line().endswith("MSG never sent"), "the echo")
        alice.type(b"\x03")
        alice.assert_exit(0)
        bob.expect("INFO alice disconnected")  # and nothing before it: the half line was not sent
    assert "Goodbye!" in alice.screen.lines()  # QUIT was sent, not just the socket closed
    alice.assert_left_cleanly()


def test_the_cursor_stays_where_the_user_left_it(pty_client):
    """Editing in the middle of the line after a redraw lands in the right place."""
    with threaded_server() as server:
        bob = login(server.port, "bob")
        alice = pty_client(server.port, "--login", "alice")
        logged_in(alice)
        alice.type(b"MSG helo")
        alice.wait_for(lambda: alice.at_prompt("MSG helo"), "the echo")
        alice.type(b"\x1b[D")  # left arrow
        alice.wait_for(lambda: alice.screen.col == len("> MSG hel"), "the cursor moved left")

        bob.say("MSG ping")
        alice.wait_for(
            lambda: alice.screen.line(-1) == "MSG bob ping" and alice.screen.line() == "> MSG helo",
            "the redraw",
        )
        assert alice.screen.col == len("> MSG hel")
        alice.type(b"l")
        alice.wait_for(lambda: alice.screen.line() == "> MSG hello", "the insertion")
        alice.type(b"\r")
        bob.expect("MSG alice hello")


def test_a_paste_while_messages_pour_in_tears_no_line(pty_client):
    """With type-ahead, readline's buffer runs ahead of its screen: nothing may be drawn twice."""
    typed = [f"MSG line {i:02d}" for i in range(20)]
    received = [f"m{i:02d}" for i in range(60)]
    with threaded_server() as server:
        bob = login(server.port, "bob")
        alice = pty_client(server.port, "--login", "alice")
        logged_in(alice)
        alice.type("".join(line + "\r" for line in typed).encode())
        bob.say(*(f"MSG {text}" for text in received))
        bob.expect(*(f"MSG alice {line[4:]}" for line in typed))
        alice.wait_for(
            lambda: {"> " + typed[-1], "MSG bob " + received[-1]} <= set(alice.screen.lines())
            and alice.at_prompt(""),
            "every line drawn",
        )
    rows = alice.screen.lines()[2:-1]  # after the banner and OK, before the last prompt
    assert [row for row in rows if row.startswith("> ")] == ["> " + line for line in typed]
    others = [row for row in rows if not row.startswith("> ")]
    assert others == ["MSG bob " + text for text in received]


def main_thread(pid: int) -> tuple[str, list[str], int]:
    """The client's main thread in /proc: state (S: asleep), system call, times it went to sleep."""
    task = f"/proc/{pid}/task/{pid}"
    with open(f"{task}/stat") as stat:
        state = stat.read().rpartition(")")[2].split()[0]
    with open(f"{task}/syscall") as syscall:
        call = syscall.read().split()
    with open(f"{task}/status") as status:
        sleeps = next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches:"))
    return state, call, sleeps


def wait_for_main_thread(
    pid: int, what: str, predicate: Callable[[str, list[str], int], bool]
) -> tuple[str, list[str], int]:
    """Poll the main thread (/proc has no event to wait on) every 10 ms until ``predicate`` holds."""
    deadline = time.monotonic() + TIMEOUT
    for _ in range(int(TIMEOUT / 0.01) + 1):
        seen = main_thread(pid)
        if predicate(*seen):
            return seen
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    raise AssertionError(f"the client's main thread never {what} within {TIMEOUT} s; it shows {seen}")


def test_output_paused_with_ctrl_s_loses_nothing_readline_wrote(pty_client):
    """Ctrl+S, a line typed, a message, Ctrl+Q: the line, then the message, each on its own row.

    While output is paused, readline's echo of the line waits in write(),
    where the signal asking to draw the message interrupts it.  The write
    must resume: glibc drops a stdio buffer whose write failed with EINTR,
    and the line and its newline would be missing from the screen (though
    sent), the message glued to the prompt.  The client's main thread is
    watched in /proc: asleep writing to the terminal (fd 1, in a call other
    than the one it waits for keys in), then woken there.
    """
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/syscall"):
        pytest.skip("watches the client's main thread in /proc/PID/task: Linux only")
    with threaded_server() as server:
        bob = login(server.port, "bob")
        alice = pty_client(server.port, "--login", "alice")
        logged_in(alice)
        pid = alice.process.pid
        _, waiting, _ = wait_for_main_thread(pid, "slept", lambda state, call, _: state == "S")
        alice.type(b"\x13MSG x\r")  # Ctrl+S (XOFF): the terminal takes no output until Ctrl+Q
        _, _, sleeps = wait_for_main_thread(
            pid,
            "slept writing to the terminal",
            lambda state, call, _: state == "S" and call[0] != waiting[0] and call[1:2] == ["0x1"],
        )
        bob.say("MSG hi")
        wait_for_main_thread(pid, "was woken by the draw signal", lambda state, call, now: now > sleeps)
        alice.type(b"\x11")  # Ctrl+Q (XON)
        bob.expect("MSG alice x")
        alice.wait_for(lambda: "MSG bob hi" in alice.screen.text() and alice.at_prompt(""), "the message")
    assert alice.screen.lines()[2:] == ["> MSG x", "MSG bob hi", ">"], alice.seen()


@pytest.mark.parametrize("typed", ["MSG abcdefghijklmn", "MSG abcdefghijklmnopqrstuvwxyz"])
def test_an_input_longer_than_a_row_is_redrawn_whole(pty_client, typed):
    """On a 20-column terminal: an input that exactly fills a row, and one that wraps."""
    columns = 20
    with threaded_server() as server:
        bob = login(server.port, "bob")
        alice = pty_client(server.port, "--login", "alice", columns=columns)
        logged_in(alice)
        alice.type(typed.encode())
        shown = alice.PROMPT + typed
        rows = [shown[i:i + columns] for i in range(0, len(shown), columns)]
        if len(shown) % columns == 0:
            rows.append("")  # like readline, the cursor waits on the next row
        alice.wait_for(lambda: alice.screen.lines()[-len(rows):] == rows, "the echo")

        bob.say("MSG hi")
        alice.wait_for(
            lambda: alice.screen.lines()[-len(rows) - 1:] == ["MSG bob hi", *rows],
            "the message above the whole input",
        )
        assert alice.screen.lines().count(rows[0]) == 1, alice.screen.text()
        alice.type(b"!")
        alice.wait_for(
            lambda: "".join(alice.screen.lines()[-len(rows) - 1:]).endswith(typed + "!"), "the echo"
        )
        alice.type(b"\r")
        bob.expect(f"MSG alice {typed[4:]}!")


@pytest.mark.parametrize("no_color", [None, ""])
def test_colours_mark_the_kind_of_line(pty_client, no_color):
    with threaded_server() as server:
        bob = login(server.port, "bob")
        alice = pty_client(server.port, "--login", "alice", NO_COLOR=no_color)
        alice.wait_for(lambda: "OK" in alice.screen.lines(), "OK")
        alice.type(b"BOGUS\r")
        alice.wait_for(lambda: "ERR unknown-command" in alice.screen.lines(), "the error")
        bob.say("MSG hi")
        alice.wait_for(lambda: "MSG bob hi" in alice.screen.lines(), "the message")
    assert b"\x1b[1;31mERR unknown-command\x1b[0m" in alice.raw
    assert b"\x1b[36mMSG \x1b[1mbob\x1b[22m hi\x1b[0m" in alice.raw


@pytest.mark.parametrize(
    "term, typed",
    [
        ("xterm", b"MSG half"),  # an unfinished line is no activity
        ("dumb", b""),  # without a redraw, a half line would share its row with ERR
    ],
)
def test_the_server_closing_ends_the_interactive_client(pty_client, term, typed):
    with threaded_server(idle_timeout=0.5) as server:
        alice = pty_client(server.port, "--login", "alice", TERM=term)
        alice.wait_for(lambda: "OK" in alice.screen.lines(), "OK")
        alice.type(typed)
        alice.assert_exit(0)
    lines = alice.screen.lines()
    assert "ERR idle-timeout" in lines
    assert any(line.startswith("chat-client: ") and "idle timeout" in line for line in lines), lines
    alice.assert_left_cleanly()


def test_typed_quit_and_history(pty_client):
    with threaded_server() as server:
        alice = pty_client(server.port)
        alice.wait_for(lambda: alice.at_prompt(""), "the prompt")
        alice.type(b"PING\r")
        alice.wait_for(lambda: alice.screen.line(-1) == "PONG" and alice.at_prompt(""), "PONG")
        alice.type(b"\x1b[A")  # up arrow: the line before
        alice.wait_for(lambda: alice.at_prompt("PING"), "PING recalled")
        alice.type(b"\r")
        alice.wait_for(lambda: alice.screen.lines().count("PONG") == 2, "a second PONG")
        alice.type(b"QUIT\r")
        alice.assert_exit(0)
    assert "Goodbye!" in alice.screen.lines()
    alice.assert_left_cleanly()


def test_a_dumb_terminal_gets_plain_lines(pty_client):
    with threaded_server() as server:
        bob = login(server.port, "bob")
        carol = pty_client(server.port, "--login", "carol", TERM="dumb", NO_COLOR=None)
        carol.wait_for(lambda: "OK" in carol.screen.lines(), "OK")
        bob.say("MSG hi carol")
        carol.wait_for(lambda: "MSG bob hi carol" in carol.screen.lines(), "the message")
        carol.type(b"MSG hey bob\r")
        bob.expect("MSG carol hey bob")
        carol.type(b"\x04")
        carol.assert_exit(0)
        bob.expect("INFO carol disconnected")
    assert b"\x1b" not in carol.raw
    carol.assert_left_cleanly()


def test_the_login_banner_waits_for_ok_and_a_vanishing_server_is_exit_status_1(pty_client):
    """"Connected ... as bob" only once the server said OK; a close without a word is no orderly end."""
    with bare_listener() as listener:
        bob = pty_client(listener.getsockname()[1], "--login", "bob")
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        assert conn.recv(64) == b"LOGIN bob\n"
        bob.wait_for(lambda: not select.select([bob.master], [], [], 0)[0], "nothing more to render")
        assert bob.raw == b"", "something was shown before the answer to LOGIN"
        conn.sendall(b"OK\n")
        bob.wait_for(lambda: bob.screen.line(-1) == "OK" and bob.at_prompt(""), "OK, then the prompt")
        port = listener.getsockname()[1]
        assert bob.screen.lines()[0] == f"Connected to localhost port {port} as bob. Ctrl+D leaves."
        conn.close()
        bob.assert_exit(1)
    assert any("connection lost: the server closed the connection without" in line for line in bob.screen.lines())
    bob.assert_left_cleanly()


def test_a_refused_login_in_a_terminal_is_one_plain_line_and_exit_status_1(pty_client):
    with threaded_server() as server:
        bob = login(server.port, "bob")
        impostor = pty_client(server.port, "--login", "Bob", columns=200)
        impostor.assert_exit(1)
        bob.say("WHO")
        bob.expect("USER bob")
    shown = [line for line in impostor.screen.lines() if line]
    assert shown == ["chat-client: cannot log in as Bob: the name is taken, someone else is logged in under it (ERR username-taken)"]
    impostor.assert_left_cleanly()


def test_a_refused_connection_in_a_terminal_is_one_line_and_exit_status_1(pty_client):
    alice = pty_client(free_port())
    alice.assert_exit(1)
    assert [line for line in alice.screen.lines() if line] == [
        line for line in alice.screen.lines() if "connection refused" in line
    ]
    alice.assert_left_cleanly()
