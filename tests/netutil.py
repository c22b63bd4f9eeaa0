"""Real-socket test tools: a server in a thread or a subprocess, and a line client.

Every wait is bounded (a socket timeout or a deadline), and nothing sleeps to
wait for something that can be waited on: to show that a line did *not*
arrive, a test sends PING and checks that PONG is the next line, which
proves the server handled everything before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from reactor.config import Config
from reactor.logs import LOGGER_NAME
from reactor.loop import Reactor

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 5.0


class LineSource:
    """Lines out of a byte stream that arrives in chunks; subclasses say how to read one."""

    _buffer = b""

    def _read_chunk(self, timeout: float) -> bytes | None:
        """Up to 64 KiB within ``timeout``: ``None`` if nothing came, ``b""`` at the end."""
        raise NotImplementedError

    def line(self, timeout: float = TIMEOUT) -> bytes:
        """The next line, without its LF; AssertionError at end of stream or timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line within {timeout} s (have {self._buffer!r})"
            chunk = self._read_chunk(remaining)
            if chunk is None:
                continue
            assert chunk, f"end of stream while waiting for a line (have {self._buffer!r})"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def expect(self, *lines: str) -> None:
        for expected in lines:
            got = self.line().decode("utf-8", "replace")
            assert got == expected, f"expected {expected!r}, got {got!r}"


class Client(LineSource):
    """A raw TCP client that reads the server's output line by line."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def say(self, *lines: str) -> None:
        """Send each line, LF-terminated, in one segment."""
        self.send("".join(line + "\n" for line in lines).encode())

    def _read_chunk(self, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None

    def sync(self) -> None:
        """PING and expect PONG next: everything sent to us before has arrived."""
        self.say("PING")
        assert self.line() == b"PONG"

    def read_until_closed(self, timeout: float = TIMEOUT) -> bytes:
        """Everything until the server closes; AssertionError if it does not in time."""
        deadline = time.monotonic() + timeout
        data, self._buffer = self._buffer, b""
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"still open after {timeout} s (got {data!r})"
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"still open after {timeout} s (got {data!r})") from None
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    def half_close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class TLSClient(Client):
    """A ``Client`` over TLS, verifying the server's certificate with ``context``."""

    def __init__(self, port: int, context, server_hostname: str = "localhost") -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=server_hostname)


class SmallBufferClient(Client):
    """A ``Client`` whose kernel buffers are set before connecting.

    SO_RCVBUF must be set before ``connect`` to shrink the TCP window the
    client advertises; a client that "really does not read" then stops the
    server's bytes after a few KiB instead of after megabytes.
    """

    def __init__(
        self, port: int, *, rcvbuf: int | None = None, sndbuf: int | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._buffer = b""


def login(port: int, name: str) -> Client:
    client = Client(port)
    client.say(f"LOGIN {name}")
    client.expect("OK")
    return client


class _ErrorRecords(logging.Handler):
    """Collects the server's ERROR records: an internal error fails the test."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ThreadedServer:
    """A Reactor serving on 127.0.0.1 in a background thread of the test process.

    ``stop`` fails the test if the server logged an internal error, which it
    survives in production by closing only the connection concerned.
    """

    def __init__(self, selector=None, tls_context=None, **settings) -> None:
        self._errors = _ErrorRecords()
        logging.getLogger(LOGGER_NAME).addHandler(self._errors)
        self.config = dataclasses.replace(Config(host="127.0.0.1", port=0), **settings)
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        tls_listeners = []
        if tls_context is not None:  # a TLS port beside the plaintext one
            tls_listeners.append(socket.create_server(("127.0.0.1", 0)))
            self.tls_port = tls_listeners[0].getsockname()[1]
        self._wake_read, self._wake_write = socket.socketpair()
        self.reactor = Reactor(
            [listener],
            self.config,
            wakeup=self._wake_read,
            selector=selector,
            tls_listeners=tls_listeners,
            tls_context=tls_context,
            cluster=_cluster_driver(self.config),
        )
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="reactor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.reactor.serve_forever()
        except BaseException as error:  # surfaced by stop()
            self._error.append(error)
        finally:
            self.reactor.close()

    @property
    def errors(self) -> list[logging.LogRecord]:
        """ERROR records logged so far; a test that provokes one must clear it."""
        return self._errors.records

    def stop(self) -> None:
        self.reactor.request_shutdown()
        self._wake_write.send(b"\0")
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the reactor did not stop"
        self._wake_read.close()
        self._wake_write.close()
        logging.getLogger(LOGGER_NAME).removeHandler(self._errors)
        if self._error:
            raise self._error[0]
        assert not self._errors.records, [record.getMessage() for record in self._errors.records]


def _cluster_driver(config: Config):
    """Cluster mode's engine side for a node with ``config.cluster`` (as the daemon makes it)."""
    if config.cluster is None:
        return None
    from reactor.cluster import ClusterDriver

    return ClusterDriver(
        config.cluster, name=config.cluster_name, lease=config.cluster_lease,
        buffer=config.cluster_buffer, max_clients=config.max_clients,
    )


@contextlib.contextmanager
def threaded_server(selector=None, **settings) -> Iterator[ThreadedServer]:
    server = ThreadedServer(selector, **settings)
    try:
        yield server
    finally:
        server.stop()


_STARTED = re.compile(rb"Chat server started on port (\d+)")

SERVER_VARIABLES = (
    "CHAT_HOST", "IDLE_TIMEOUT", "MAX_CLIENTS", "LOG_LEVEL",
    "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES",
    "CHAT_TLS_CERT", "CHAT_TLS_KEY", "CHAT_TLS_PORT", "CHAT_TLS_ONLY",
)
"""Variables the server reads besides PORT; a ServerProcess starts without them unless given."""


class ServerProcess:
    """``python -m reactor`` in a subprocess, started as a user would.

    Its stdout and stderr are read by background threads from the start, so
    a chatty server never blocks on a full pipe.
    """

    def __init__(
        self, *args: str, env: dict | None = None, cwd: pathlib.Path = ROOT,
        command: list[str] | None = None, **popen_options
    ) -> None:
        environment = dict(os.environ)
        environment.pop("PORT", None)
        for variable in SERVER_VARIABLES:  # the developer's own, or a CI runner's systemd's
            environment.pop(variable, None)
        environment.update(env or {})
        self.process = subprocess.Popen(
            (command or [sys.executable, "-m", "reactor"]) + list(args),
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **popen_options,
        )
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self._started = threading.Condition()
        self._readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, self._stdout), daemon=True),
            threading.Thread(target=self._drain, args=(self.process.stderr, self._stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.port = self._wait_for_port()

    def _drain(self, stream, chunks: list[bytes]) -> None:
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            with self._started:
                chunks.append(chunk)
                self._started.notify_all()
        with self._started:
            self._started.notify_all()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 10
        with self._started:
            while True:
                output = b"".join(self._stdout)
                match = _STARTED.search(output)
                if match and b"\n" in output[match.end() :]:
                    return int(match.group(1))
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    break
                self._started.wait(min(remaining, 0.5))
        self.kill()
        raise AssertionError(f"server did not start: {self.stderr.decode(errors='replace')}")

    @property
    def stderr(self) -> bytes:
        with self._started:
            return b"".join(self._stderr)

    @property
    def tls_port(self) -> int:
        """The port of the ``TLS on port N`` line, printed right after the startup line."""
        deadline = time.monotonic() + TIMEOUT
        with self._started:
            while not (match := re.search(rb"TLS on port (\d+)\n", b"".join(self._stdout))):
                remaining = deadline - time.monotonic()
                assert remaining > 0 and self.process.poll() is None, b"".join(self._stdout)
                self._started.wait(min(remaining, 0.5))
        return int(match.group(1))

    def wait_for_stderr(self, pattern: bytes, count: int = 1, timeout: float = TIMEOUT) -> list[re.Match]:
        """The first ``count`` matches of ``pattern`` in stderr, waiting for them; AssertionError if late."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._started:
            while True:
                matches = list(regex.finditer(b"".join(self._stderr)))
                if len(matches) >= count:
                    return matches[:count]
                remaining = deadline - time.monotonic()
                assert remaining > 0 and self.process.poll() is None, (
                    f"{count} x {pattern!r} not in stderr within {timeout} s: {b''.join(self._stderr)!r}"
                )
                self._started.wait(min(remaining, 0.5))

    def _finish(self, timeout: float) -> None:
        self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(TIMEOUT)

    def stop(self, sig: int | None = None, timeout: float = 10) -> tuple:
        """Send ``sig`` (default SIGTERM); return (exit status, stdout, stderr)."""
        import signal as signals

        if self.process.poll() is None:
            self.process.send_signal(sig or signals.SIGTERM)
        self._finish(timeout)
        return self.process.returncode, b"".join(self._stdout), self.stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self._finish(TIMEOUT)


@contextlib.contextmanager
def server_process(*args: str, env: dict | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess("--host", "127.0.0.1", "--port", "0", *args, env=env)
    try:
        yield server
    finally:
        server.kill()


# -- cluster mode: several servers that are one chat ------------------------------------------


class Nodes:
    """The nodes of one cluster, as one server to a test: each new client goes to the next node.

    ``port`` hands out the nodes' ports in turn, so a test written for one
    server (``Client(server.port)``, ``login(server.port, name)``) spreads
    its clients over the cluster without a change.
    """

    def __init__(self, servers: list) -> None:
        self.servers = servers
        self._turn = 0

    @property
    def port(self) -> int:
        server = self.servers[self._turn % len(self.servers)]
        self._turn += 1
        return server.port

    def __len__(self) -> int:
        return len(self.servers)

    def __getitem__(self, index: int):
        return self.servers[index]


def cluster_settings(url: str, name: str = "chat", **settings) -> dict:
    """``Config`` settings for a node of the cluster at ``url`` (a threaded server's ``**settings``)."""
    from reactor.engine import parse_redis_url

    return {"cluster": parse_redis_url(url), "cluster_name": name, **settings}


@contextlib.contextmanager
def threaded_cluster(url: str, nodes: int = 2, name: str = "chat", **settings) -> Iterator[Nodes]:
    """``nodes`` threaded servers in one cluster (Redis at ``url``), each stopped and checked at the end."""
    servers: list[ThreadedServer] = []
    try:
        for _ in range(nodes):
            servers.append(ThreadedServer(**cluster_settings(url, name, **settings)))
        yield Nodes(servers)
    finally:
        failures = []
        for server in servers:
            try:
                server.stop()
            except BaseException as error:  # stop them all, then report the first
                failures.append(error)
        if failures:
            raise failures[0]


def node_process(url: str, *args: str, env: dict | None = None) -> ServerProcess:
    """``python -m reactor --cluster url``, started once it is in the cluster (its startup line)."""
    return ServerProcess("--host", "127.0.0.1", "--port", "0", "--cluster", url, *args, env=env)


@contextlib.contextmanager
def cluster_processes(url: str, nodes: int = 2, *args: str) -> Iterator[Nodes]:
    """``nodes`` node processes of one cluster (Redis at ``url``); killed at the end if still running."""
    servers: list[ServerProcess] = []
    try:
        for _ in range(nodes):
            servers.append(node_process(url, *args))
        yield Nodes(servers)
    finally:
        for server in servers:
            server.kill()
