"""The ``chat-server`` daemon: configuration, logging, the listening socket, signals.

Everything here happens once, at start or at stop; the loop itself is in
``reactor.loop``.  The order matters and is the contract with operators:

1. parse flags and environment (``reactor.config``): a bad value exits 2
   before anything is bound;
2. fit ``--max-clients`` to the descriptor limit (``reactor.limits``);
3. bind and listen: a port in use is one line and exit status 1;
4. print ``Chat server started on port <port>`` on stdout, flushed, so a
   program reading the output through a pipe sees it at once;
5. serve until SIGINT or SIGTERM (Ctrl+C or Ctrl+Break on Windows), then
   shut down gracefully and exit 0.

Signals reach the loop through a socket pair: ``signal.set_wakeup_fd``
makes the interpreter write a byte to it when a signal arrives, which wakes
``select`` at once; the Python-level handler only sets a flag.  Logging
goes to stderr; message text is never logged at INFO (users' messages are
theirs).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import signal
import socket
import sys
from collections.abc import Sequence

from .config import PROG, Config, parse_config
from .limits import fit_max_clients
from .logs import configure_logging
from .loop import Reactor

log = logging.getLogger("chat")

_ALL_INTERFACES = {"0.0.0.0", "::", ""}


class StartupError(Exception):
    """The server cannot start; the message is the one line to print."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def listen(config: Config) -> socket.socket:
    """A listening socket for ``config.host`` and ``config.port``.

    ``::`` listens on IPv6 and IPv4 at once where the platform allows it.
    """
    host, port = config.host, config.port
    try:
        if host == "::" and socket.has_dualstack_ipv6():
            return socket.create_server(
                (host, port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=socket.SOMAXCONN
            )
        family = _family_of(host, port)
        return socket.create_server((host, port), family=family, backlog=socket.SOMAXCONN)
    except OSError as error:
        if error.errno == errno.EADDRINUSE or getattr(error, "winerror", None) == 10048:
            raise StartupError(f"port {port} is already in use (is another server running?)", 1) from None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise StartupError(f"not allowed to listen on port {port}: {error.strerror}", 1) from None
        raise StartupError(f"cannot listen on {host} port {port}: {error.strerror or error}", 1) from None


def _family_of(host: str, port: int) -> int:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError(f"argument --host: cannot resolve {host!r}: {error.strerror}", 2) from None
    return infos[0][0]


def _route_signals(reactor: Reactor, wakeup_write: socket.socket) -> None:
    """SIGINT, SIGTERM (and SIGBREAK on Windows) start a graceful shutdown.

    A second signal during shutdown stops waiting for slow clients.
    """
    wakeup_write.setblocking(False)
    signal.set_wakeup_fd(wakeup_write.fileno(), warn_on_full_buffer=False)

    def shutdown(signum: int, frame: object) -> None:
        reactor.request_shutdown()

    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), shutdown)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon; the return value is the exit status."""
    config = parse_config(argv)  # exits 2 on a bad value
    log_handler = configure_logging(config.log_level, sys.stderr)
    max_clients, warning = fit_max_clients(config.max_clients)
    if warning:
        log.warning("%s", warning)
        config = dataclasses.replace(config, max_clients=max_clients)
    try:
        listener = listen(config)
    except StartupError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.status
    wakeup_read, wakeup_write = socket.socketpair()
    reactor = Reactor([listener], config, wakeup=wakeup_read, after_turn=log_handler.flush)
    _route_signals(reactor, wakeup_write)  # before the startup line: a supervisor may signal at once
    port = listener.getsockname()[1]
    print(f"Chat server started on port {port}", flush=True)
    print("Waiting for connections... (Press Ctrl+C to stop)", flush=True)
    if config.host in _ALL_INTERFACES:
        log.warning(
            "listening on all interfaces: anyone who can reach port %d can join "
            "(use --host 127.0.0.1 to accept local clients only)",
            port,
        )
    try:
        reactor.serve_forever()
    finally:
        reactor.close()
        signal.set_wakeup_fd(-1)
        wakeup_read.close()
        wakeup_write.close()
    log.info("Server stopped")
    log_handler.flush()
    return 0

