"""The ``chat-server`` daemon: configuration, logging, the listening sockets, signals, systemd.

Everything here happens once, at start or at stop, or now and then at an
operator's request; the loop itself is in ``reactor.loop``.  The order
matters and is the contract with operators:

1. parse flags and environment (``reactor.config``): a bad value exits 2
   before anything is bound;
2. fit ``--max-clients`` to the descriptor limit (``reactor.limits``);
3. listen: on the sockets systemd passed (``reactor.systemd``), or else on
   each ``--host`` at ``--port``; a port in use is one line and exit
   status 1;
4. print ``Chat server started on port <port>`` on stdout, flushed, so a
   program reading the output through a pipe sees it at once, and tell
   systemd ``READY=1``;
5. serve until SIGINT or SIGTERM (Ctrl+C or Ctrl+Break on Windows), then
   shut down gracefully (telling systemd ``STOPPING=1``) and exit 0;
   meanwhile SIGHUP reloads the TLS certificate and key, and SIGUSR1 logs
   a line of statistics.

Signals reach the loop through a socket pair: ``signal.set_wakeup_fd``
makes the interpreter write a byte to it when a signal arrives, which wakes
``select`` at once; the Python-level handlers only set flags, and the work
they ask for (a shutdown, SIGUSR1's statistics line, systemd's
``STOPPING=1``) is done inside the loop, at the end of the turn
(``_Operator.after_turn``).  Periodic chores (``--stats-interval``,
systemd's status line and watchdog) are the loop's timers
(``Reactor.call_every``).  Logging goes to stderr; message text is never
logged at INFO (users' messages are theirs).

Listening.  ``::`` listens dual-stack, with ``IPV6_V6ONLY`` turned off
explicitly (its default differs between systems).  Where the system has no
IPv6 at all, ``::`` listens on ``0.0.0.0`` instead, with a warning, and an
IPv6 address is an error; where IPv6 exists but a socket cannot be
dual-stack (OpenBSD), ``::`` becomes two sockets, ``::`` for IPv6 and
``0.0.0.0`` for IPv4.  With several hosts and ``--port 0``, the first
socket takes any free port and the others take the same one, so the
startup line names the port of them all.

Several workers.  With ``--workers N`` (cluster mode, Linux) ``main`` hands
over to ``reactor.workers``: a parent process whose N workers each run
``serve``, on listening sockets of their own that share one port.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import systemd
from .config import PROG, Config, parse_config
from .limits import fit_max_clients
from .logs import LOGGER_NAME, configure_logging
from .loop import Reactor

if TYPE_CHECKING:
    import ssl

    from .cluster import ClusterDriver

log = logging.getLogger(LOGGER_NAME)

Address = tuple[Any, ...]
"""A socket address: (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6."""

_ALL_INTERFACES = {"0.0.0.0", "::"}
_ANY_PORT_ATTEMPTS = 8
"""With several hosts and ``--port 0``: tries at finding one port free on every host."""
STATUS_INTERVAL = 1.0
"""Seconds between checks of the user count for systemd's status line."""


class StartupError(Exception):
    """The server cannot start; the message is the one line to print."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# -- listening ------------------------------------------------------------------


def listen(config: Config) -> list[socket.socket]:
    """Listening sockets for every host of ``config`` at ``config.port``.

    With ``--port 0`` the first socket takes any free port and the others
    take the same one; should it be taken on a later host, it starts over
    with another port, a few times.
    """
    attempts = _ANY_PORT_ATTEMPTS if config.port == 0 and len(config.hosts) > 1 else 1
    for attempt in range(attempts):
        listeners: list[socket.socket] = []
        port = config.port
        try:
            for host in config.hosts:
                listeners += _listen_on(host, port, first=not listeners)
                port = listeners[0].getsockname()[1]
            return listeners
        except _TakenOnALaterHost as taken:
            _close_all(listeners)
            if config.port != 0 or attempt == attempts - 1:
                raise taken.error from None
        except BaseException:
            _close_all(listeners)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


class _TakenOnALaterHost(Exception):
    def __init__(self, error: StartupError) -> None:
        super().__init__(str(error))
        self.error = error


def _close_all(listeners: list[socket.socket]) -> None:
    for listener in listeners:
        listener.close()


def _listen_on(host: str, port: int, first: bool) -> list[socket.socket]:
    """The socket(s) for one ``--host`` value; ``::`` may need two, or fall back to IPv4."""
    try:
        if host == "::":
            return _listen_everywhere(port)
        family, address = _resolve(host, port)
        return [_bind(family, address)]
    except OSError as error:
        raise _startup_error(error, host, port, first) from None


def _startup_error(error: OSError, host: str, port: int, first: bool) -> Exception:
    if error.errno == errno.EADDRINUSE or getattr(error, "winerror", None) == 10048:
        if first:
            return StartupError(f"port {port} is already in use (is another server running?)", 1)
        return _TakenOnALaterHost(StartupError(
            f"{host} port {port} is already in use (is another server running, or does an earlier "
            "--host cover it? '::' and 0.0.0.0 take every address)",
            1,
        ))
    if error.errno in (errno.EACCES, errno.EPERM):
        return StartupError(f"not allowed to listen on port {port}: {error.strerror}", 1)
    if error.errno == errno.EAFNOSUPPORT:
        return StartupError(f"cannot listen on {host} port {port}: IPv6 is not available on this system", 1)
    if error.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"cannot listen on {host} port {port}: no network interface has that address", 1)
    return StartupError(f"cannot listen on {host} port {port}: {error.strerror or error}", 1)


def _resolve(host: str, port: int) -> tuple[int, Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError(f"argument --host: cannot resolve {host!r}: {error.strerror}", 2) from None
    family, _, _, _, address = infos[0]
    return family, address


def _bind(family: int, address: Address, v6only: bool = True) -> socket.socket:
    """A listening TCP socket; an IPv6 one takes IPv4 clients too only if ``v6only`` is False."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name not in ("nt", "cygwin"):  # on Windows it would let another process take the port too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


def _listen_everywhere(port: int) -> list[socket.socket]:
    """``--host ::``: one dual-stack socket; two where dual-stack is impossible; IPv4 where IPv6 is absent."""
    try:
        return [_bind(socket.AF_INET6, ("::", port), v6only=False)]
    except OSError as error:
        if error.errno == errno.EAFNOSUPPORT or not socket.has_ipv6:
            log.warning("IPv6 is not available on this system: --host :: listens on IPv4 only, at 0.0.0.0")
            return [_bind(socket.AF_INET, ("0.0.0.0", port))]
        if error.errno not in (errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            raise
    # IPv6 exists but a socket cannot take IPv4 too (IPV6_V6ONLY cannot be turned off).
    log.info("dual-stack sockets are not available: listening on :: for IPv6 and 0.0.0.0 for IPv4")
    ipv6 = _bind(socket.AF_INET6, ("::", port), v6only=True)
    try:
        return [ipv6, _bind(socket.AF_INET, ("0.0.0.0", port if port else ipv6.getsockname()[1]))]
    except BaseException:
        ipv6.close()
        raise


def describe(address: Address) -> str:
    """``0.0.0.0:4000`` or ``[::]:4000``."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the operator's side: signals, statistics, systemd ----------------------------


class _Operator:
    """What the daemon does for the people and programs watching it, from inside the loop.

    Signal handlers only set flags here; ``after_turn``, which the loop
    calls at the end of each turn, does the work.  The signal's wakeup byte
    makes that turn happen at once.
    """

    def __init__(
        self, notifier: systemd.Notifier, flush_log: Callable[[], None], config: Config | None = None
    ) -> None:
        self.reactor: Reactor | None = None
        self._notifier = notifier
        self._flush_log = flush_log
        self._config = config
        self._reload_requested = False
        self._stats_requested = False
        self._stop_requested = False
        self._stopping_told = False
        self._last_status: tuple[int, int] | None = None

    def start(self, reactor: Reactor, config: Config) -> None:
        """Arm the periodic chores and tell systemd the server is ready."""
        self.reactor = reactor
        if config.stats_interval:
            reactor.call_every(config.stats_interval, self.log_stats)
        if self._notifier.enabled:
            reactor.call_every(STATUS_INTERVAL, self.update_status)
            interval = systemd.watchdog_interval()
            if interval is not None:
                reactor.call_every(interval, self.ping_watchdog)
            self._last_status, line = self._status()
            self._notifier.notify("READY=1", line)

    # signal handlers: flags only
    def stats_wanted(self, signum: int, frame: object) -> None:
        self._stats_requested = True

    def reload_wanted(self, signum: int, frame: object) -> None:
        self._reload_requested = True

    def stop_wanted(self, signum: int, frame: object) -> None:
        self._stop_requested = True
        if self.reactor is not None:
            self.reactor.request_shutdown()

    def after_turn(self) -> None:
        """The loop's end-of-turn hook: requested work, then the turn's log lines in one write."""
        if self._stats_requested:
            self._stats_requested = False
            self.log_stats()
        if self._reload_requested:
            self._reload_requested = False
            self.reload_tls()
        if self._stop_requested and not self._stopping_told:
            self._stopping_told = True
            self._notifier.notify("STOPPING=1", "STATUS=Shutting down")
        self._flush_log()

    # the chores
    def reload_tls(self) -> None:
        """SIGHUP: new handshakes use the certificate and key as the files hold them now."""
        config = self._config
        if self.reactor is None or config is None or config.tls_cert is None:
            return
        try:
            context = tls_context(config)
        except StartupError as error:
            log.error("TLS reload failed, the old certificate stays in use: %s", error)
            return
        self.reactor.set_tls_context(context)
        log.info("TLS certificate reloaded from %s", config.tls_cert)

    def log_stats(self) -> None:
        assert self.reactor is not None
        log.info("%s", self.reactor.stats().line())

    def update_status(self) -> None:
        """Tell systemd the user count, when it changed (until the shutdown has begun)."""
        if self._stopping_told:
            return
        counts, line = self._status()
        if counts != self._last_status:
            self._last_status = counts
            self._notifier.notify(line)

    def ping_watchdog(self) -> None:
        self._notifier.notify("WATCHDOG=1")

    def _status(self) -> tuple[tuple[int, int], str]:
        """The counts systemd's status line shows, and the line."""
        assert self.reactor is not None
        stats = self.reactor.stats()
        line = f"STATUS=users: {stats.users}, connections: {stats.connections}"
        return (stats.users, stats.connections), line


def _route_signals(operator: _Operator, wakeup_write: socket.socket) -> None:
    """SIGINT, SIGTERM (and SIGBREAK on Windows) start a graceful shutdown; SIGUSR1 asks for statistics.

    A second shutdown signal during shutdown stops waiting for slow clients.
    """
    wakeup_write.setblocking(False)
    signal.set_wakeup_fd(wakeup_write.fileno(), warn_on_full_buffer=False)
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), operator.stop_wanted)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, operator.stats_wanted)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, operator.reload_wanted)


def tls_context(config: Config) -> ssl.SSLContext:
    """The TLS context ``config`` asks for; a bad file is a ``StartupError`` with status 2."""
    from . import tls  # only a server with TLS imports ssl

    assert config.tls_cert is not None
    try:
        return tls.server_context(config.tls_cert, config.tls_key)
    except tls.TLSSetupError as error:
        raise StartupError(str(error), 2) from None


def _open_listeners(config: Config) -> tuple[list[socket.socket], list[socket.socket], bool]:
    """Plaintext and TLS listening sockets, and whether systemd passed them.

    Passed sockets named ``tls`` (``FileDescriptorName=tls``) serve TLS.
    """
    try:
        passed = systemd.listen_fds()
    except systemd.ActivationError as error:
        raise StartupError(str(error), 1) from None
    if passed:
        log.info(
            "Listening on sockets from systemd (--host and --port are not used): %s",
            ", ".join(f"{describe(sock.getsockname())} ({name})" for sock, name in passed),
        )
        plain = [sock for sock, name in passed if name != "tls"]
        secure = [sock for sock, name in passed if name == "tls"]
        if secure and config.tls_cert is None:
            _close_all(plain + secure)
            raise StartupError("systemd passed a socket named tls, but no --tls-cert was given", 2)
        return plain, secure, True
    plain = [] if config.tls_only else listen(config)
    secure: list[socket.socket] = []
    if config.tls_cert is not None:
        try:
            secure = listen(dataclasses.replace(config, port=config.tls_port))
        except BaseException:
            _close_all(plain)
            raise
    return plain, secure, False


GC_THRESHOLDS = (10_000, 50, 100)
"""The collector's thresholds for a server whose objects mostly live as long as their connection."""


def tune_garbage_collector() -> None:
    """Spare the loop most of the garbage collector's work, which shows as latency spikes.

    Nearly everything the server allocates per event is freed by reference
    counting at once; what the collector scans is the long-lived: the
    interpreter's and the imports' objects, and each connection's few.
    ``gc.freeze()`` moves what start-up made out of every later collection
    (a full collection with 8,000 connections took 51 ms before, 13 ms
    after), and higher thresholds make young collections rare (108 during
    8,000 logins, 8 after): 8,000 logins took a third less CPU
    (docs/performance.md).  Cycles are still collected: connections that
    close leave some, and they are found as before, only less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _cluster_driver(config: Config) -> ClusterDriver | None:
    """Cluster mode's engine side, when ``--cluster`` is given."""
    if config.cluster is None:
        return None
    from .cluster import ClusterDriver  # imports the engine code only in cluster mode

    return ClusterDriver(
        config.cluster,
        name=config.cluster_name,
        lease=config.cluster_lease,
        buffer=config.cluster_buffer,
        max_clients=config.max_clients,
    )


def _join_cluster(reactor: Reactor, log_handler: logging.Handler) -> bool:
    """Run the loop until the node is in the cluster (the engine may take a while); False if stopped."""
    log.info("Joining the cluster at %s", reactor.cluster_address)
    log_handler.flush()
    while not reactor.serving:
        reactor.run_once()
    return not reactor.shutting_down


def _release(
    reactor: Reactor, wakeup_read: socket.socket, wakeup_write: socket.socket, notifier: systemd.Notifier
) -> None:
    reactor.close()
    signal.set_wakeup_fd(-1)
    wakeup_read.close()
    wakeup_write.close()
    notifier.close()


def _stopped(
    reactor: Reactor,
    wakeup_read: socket.socket,
    wakeup_write: socket.socket,
    notifier: systemd.Notifier,
    log_handler: logging.Handler,
) -> int:
    """The loop is over (or never began: stopped while joining): release everything, exit 0."""
    _release(reactor, wakeup_read, wakeup_write, notifier)
    log.info("Server stopped")
    log_handler.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon; the return value is the exit status."""
    config = parse_config(argv)  # exits 2 on a bad value
    log_handler = configure_logging(config.log_level, sys.stderr)
    max_clients, warning = fit_max_clients(config.max_clients)
    if warning:
        log.warning("%s", warning)
        config = dataclasses.replace(config, max_clients=max_clients)
    if config.workers > 1:
        from .workers import supervise  # Linux only (config checked): forks the workers, each runs serve()

        return supervise(config, log_handler)
    return serve(config, log_handler)


def serve(
    config: Config,
    log_handler: logging.Handler,
    open_listeners: Callable[
        [Config], tuple[list[socket.socket], list[socket.socket], bool]
    ] = _open_listeners,
) -> int:
    """One server process, from its listening sockets to its exit status (a worker's too)."""
    try:
        context = tls_context(config) if config.tls_cert is not None else None  # before binding
        listeners, tls_listeners, from_systemd = open_listeners(config)
    except StartupError as error:
        log_handler.flush()
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.status
    notifier = systemd.Notifier.from_environ()
    operator = _Operator(notifier, log_handler.flush, config)
    wakeup_read, wakeup_write = socket.socketpair()
    reactor = Reactor(
        listeners,
        config,
        wakeup=wakeup_read,
        after_turn=operator.after_turn,
        tls_listeners=tls_listeners,
        tls_context=context,
        cluster=_cluster_driver(config),
    )
    operator.reactor = reactor
    _route_signals(operator, wakeup_write)  # before the startup line: a supervisor may signal at once
    if config.cluster is not None and not _join_cluster(reactor, log_handler):
        return _stopped(reactor, wakeup_read, wakeup_write, notifier, log_handler)
    addresses = reactor.addresses
    if len(addresses) > 1 and not from_systemd:
        log.info("Listening on %s", ", ".join(describe(address) for address in addresses))
    port = (listeners or tls_listeners)[0].getsockname()[1]
    print(f"Chat server started on port {port}", flush=True)
    if tls_listeners:
        print(f"TLS on port {tls_listeners[0].getsockname()[1]}", flush=True)
    print("Waiting for connections... (Press Ctrl+C to stop)", flush=True)
    for address in addresses:
        if address[0] in _ALL_INTERFACES:
            log.warning(
                "listening on all interfaces: anyone who can reach port %d can join "
                "(use --host 127.0.0.1 to accept local clients only)",
                address[1],
            )
            break
    operator.start(reactor, config)
    tune_garbage_collector()
    log_handler.flush()  # the loop flushes at the end of a turn, and the first may be long in coming
    try:
        reactor.serve_forever()
    except BaseException:  # a crash: release what we hold, and let it be reported
        _release(reactor, wakeup_read, wakeup_write, notifier)
        raise
    return _stopped(reactor, wakeup_read, wakeup_write, notifier, log_handler)
