"""A real ``redis-server`` per test: started on a free port, stopped, killed, paused, restarted by PID.

Tests of cluster mode run against the real engine, never a mock, and never
against a Redis that happens to run on the machine: each ``RedisServer``
is a child process of the test with its own port (or unix socket) and its
own directory, persistence off unless asked (``--save "" --appendonly
no``; ``appendonly=True`` turns on ``--appendonly yes --appendfsync
always`` in that directory, so a restart keeps every acknowledged write).
Every signal goes to its PID; ``redis_servers()`` kills whatever is left
when the test ends, paused or not.

Waits are bounded and never a bare sleep: readiness is a PING answered
(or NOAUTH, which proves the server is up) before a deadline, polled
between short waits on the process itself, so a server that dies at start
fails the wait at once with the tail of its log.

``command()`` is a plain blocking client for the test's own checks (CLIENT
LIST, GET); it parses with hiredis, the cluster extra's parser, which the
``test`` extra installs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hiredis
from tools import require

from reactor.engine import encode_command

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """One ``redis-server`` child process; see the module doc."""

    def __init__(
        self,
        workdir: Path,
        *,
        unix_socket: bool = False,
        password: str | None = None,
        users: Sequence[tuple[str, str]] = (),
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = require("redis-server")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.users = tuple(users)
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.socket_path: str | None = None
        self._socket_dir: str | None = None
        if unix_socket:
            # A unix socket path has about 100 bytes: pytest's tmp_path can be longer.
            self._socket_dir = tempfile.mkdtemp(prefix="redis-")
            self.socket_path = os.path.join(self._socket_dir, "redis.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "redis.log"

    # -- the command line ------------------------------------------------------

    def argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--logfile", str(self.log_path),
            "--daemonize", "no", "--supervised", "no", "--loglevel", "notice",
            "--save", "",
        ]
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        if self.socket_path is not None:
            argv += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        for name, password in self.users:
            argv += ["--user", name, "on", f">{password}", "~*", "&*", "+@all"]
        return argv + list(self.extra_args)

    def url(self, *, user: str | None = None, password: str | None = None, db: int = 0) -> str:
        """A ``--cluster`` URL for this server (the password percent-encoded by the caller)."""
        credentials = ""
        if password is not None:
            credentials = f"{user or ''}:{password}@"
        if self.socket_path is not None:
            return f"unix://{credentials}{self.socket_path}" + (f"?db={db}" if db else "")
        return f"redis://{credentials}127.0.0.1:{self.port}/{db}"

    # -- life and death ------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisServer:
        """Start it and wait until it answers.

        The port came free from the OS, but another process may take it
        before redis-server binds: a first start that finds it taken tries
        again on a new port (a restart keeps its port, as it must).
        """
        for _ in range(3):
            try:
                return self.restart()
            except AssertionError:
                if "Address already in use" not in self.log_tail() or self.running:
                    raise
                self.port = free_port()
        return self.restart()

    def restart(self) -> RedisServer:
        """Start it on the same port and directory as before, and wait until it answers."""
        assert not self.running, "already running"
        self.process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._answers():
                return
            assert self.process is not None
            try:
                code = self.process.wait(timeout=0.02)  # the pause between polls, and a crash detector
            except subprocess.TimeoutExpired:
                pass
            else:
                raise AssertionError(f"redis-server exited with {code} at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server not ready within {timeout} s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        try:
            with self._connect(timeout=1.0) as sock:
                sock.sendall(encode_command(["PING"]))
                reply = _read_reply(sock, hiredis.Reader())
        except OSError:
            return False
        return reply == b"PONG" or (isinstance(reply, hiredis.ReplyError) and "NOAUTH" in str(reply))

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (after SIGCONT, in case it is paused) and wait for it to exit."""
        assert self.process is not None
        if self.running:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def kill(self) -> int:
        """SIGKILL: the engine vanishes mid-sentence, as in a crash."""
        assert self.process is not None
        if self.running:
            self.process.send_signal(signal.SIGKILL)
        return self._reap(STOP_TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP: the sockets stay open, the kernel still accepts and buffers, nothing answers."""
        assert self.running
        self.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        assert self.running
        self.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    def _reap(self, timeout: float) -> int:
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=STOP_TIMEOUT)
        return code

    def cleanup(self) -> None:
        """Whatever state it is in, it is gone afterwards (SIGKILL works on a stopped process)."""
        if self.process is not None and self.running:
            self.kill()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- a blocking client for the test's own checks ------------------------------

    def _connect(self, timeout: float) -> socket.socket:
        if self.socket_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.socket_path)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def command(self, *args: Any, db: int = 0, timeout: float = 5.0) -> Any:
        """Run one command as the default user (with the server's password) and return its reply."""
        commands: list[list[Any]] = []
        if self.password is not None:
            commands.append(["AUTH", self.password])
        if db:
            commands.append(["SELECT", db])
        commands.append(list(args))
        with self._connect(timeout) as sock:
            sock.sendall(b"".join(encode_command(c) for c in commands))
            reader = hiredis.Reader()
            replies = [_read_reply(sock, reader) for _ in commands]
        for reply in replies[:-1]:
            assert not isinstance(reply, hiredis.ReplyError), reply
        return replies[-1]


def _read_reply(sock: socket.socket, reader: Any) -> Any:
    """One reply from a blocking socket (its timeout bounds the wait)."""
    while True:
        reply = reader.gets()
        if reply is not False:
            return reply
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("redis-server closed the connection")
        reader.feed(data)


@contextlib.contextmanager
def redis_servers(workdir: Path) -> Iterator[Any]:
    """``make(**options)`` starts a ``RedisServer`` in ``workdir``; all are killed at the end."""
    servers: list[RedisServer] = []

    def make(**options: Any) -> RedisServer:
        server = RedisServer(workdir / f"redis{len(servers)}", **options)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.cleanup()
