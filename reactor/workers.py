"""``--workers N``: N cluster nodes on one machine, one port, under one parent process.

Theory of operation
-------------------
One process is one core.  ``chat-server --cluster URL --workers N`` (Linux
only; ``reactor.config`` refuses it elsewhere, and without ``--cluster``)
runs N *workers*, each an ordinary cluster node: the very ``daemon.serve``
of the single-process server, with its own event loop, its own node id and
its own listening socket.  The parent does no chat work at all; it starts
the workers, tells the world when they serve, passes signals on, restarts a
worker that dies, and exits once they have all finished.

*Processes.*  The parent ``fork``s: a worker starts from the parent's
parsed ``Config`` with nothing to re-parse or re-import, and
``python -m reactor`` and the ``chat-server`` script behave alike.  The
parent has no threads and no event loop of the server's, so a fork copies
nothing that could be half-way through something.  The worker never returns
into the parent's code: it ends with ``os._exit`` and ``serve``'s status.

*Sockets.*  The parent opens the listeners as the single-process server
would (``daemon._open_listeners``: every ``--host``, ``::``, one port for
all with ``--port 0``, the TLS port, and the same one-line errors with exit
status 1), closes them and binds, on exactly those addresses, *reservations*:
sockets with ``SO_REUSEADDR`` and ``SO_REUSEPORT`` that never listen.  Each
worker binds its own listener with ``SO_REUSEPORT`` to the same address and
listens; the kernel then spreads new connections over the workers that
listen, by a hash of the client's address and port, each worker with its
own accept queue (no thundering herd).  A reservation is in no accept
queue and gets no connection; it keeps the port number for restarts, and
opening plain listeners first means a port already in use (another server,
even another ``--workers`` group) fails as it always did.  When a worker
dies, its listener goes with it, and connections still in its accept queue
are reset; new ones go to the others until its replacement listens.
Sockets passed by systemd (``LISTEN_FDS``) cannot get ``SO_REUSEPORT``
after the fact, so every worker serves those very sockets, inherited,
from one shared accept queue.

*The startup line.*  A worker prints the usual ``Chat server started on
port P`` once it has joined the cluster, onto a pipe the parent reads:
that line is its "I serve".  The parent prints the startup lines on its
own stdout once, after every worker has said so, so a program waiting for
the line can connect at once and reach any worker; under systemd the
parent sends ``READY=1`` then.  ``NOTIFY_SOCKET`` and the watchdog's
variables are taken out of the environment before the first fork: only
the parent speaks to systemd (readiness, ``STATUS=workers: 2 of 2
serving``, ``STOPPING=1``, the watchdog's pings).

*Logging.*  Workers write to the same stderr as the parent, directly (no
relay through the parent, which could stall them), each line prefixed with
``[worker K]``, K from 1 to N; a replacement keeps its predecessor's K.
The parent's own lines have no prefix and name the worker and its pid.

*Signals.*  Each worker is in a process group of its own, so Ctrl+C in a
terminal reaches the parent alone; the parent passes SIGINT and SIGTERM on
to every worker, exactly once each time it gets one (a second one tells
the workers to stop waiting for slow clients, as it tells the
single-process server), and SIGHUP (reload the TLS certificate) and
SIGUSR1 (a statistics line) too.  A worker asks the kernel for SIGTERM
when the parent dies (``PR_SET_PDEATHSIG``), so ``kill -9`` of the parent
shuts the workers down gracefully rather than orphaning them.  Until a
worker has installed its own handlers, SIGINT and SIGTERM end it at once
(it was asked to stop, and it had no client yet) and SIGHUP and SIGUSR1
are ignored; a SIGHUP missed that way is passed on again when the worker
serves.

*Restarts.*  A worker that ends without being asked (killed, crashed, or
stopped by a signal sent to it rather than to the parent) is logged at
WARNING and started again after a delay: 0.5 s, doubled after each death
that follows a short life, at most 30 s; a worker that lived 60 s or more
restarts after 0.5 s again.  Its users are on a node that is gone: the
other nodes report them gone within ``--cluster-lease``, as for any dead
node.  A worker that ends with status 1 or 2 before it ever served could
not start (a port, a certificate that went bad since: ``serve``'s own
startup failures), and would fail again: the parent then stops the others
and exits with that status rather than loop forever.  (The parent checks
the certificate itself before the first fork, so a bad one at start is
one message and status 2, before anything is bound.)

*Exit status.*  After SIGINT or SIGTERM the parent waits for every worker
to finish its shutdown (its users told, its node's departure in the log)
and exits 0; 1 if a worker ended otherwise (a crash during the shutdown).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from . import systemd
from .config import PROG, Config
from .daemon import StartupError, _open_listeners, serve, tls_context
from .engine import Backoff
from .logs import LOGGER_NAME, LineFormatter

log = logging.getLogger(LOGGER_NAME)

FIRST_RESTART_DELAY = 0.5
"""Seconds before a dead worker is started again, after a long life or the first death."""
MAX_RESTART_DELAY = 30.0
"""The restart delay doubles after each short life, up to this."""
STABLE_AFTER = 60.0
"""A worker that lived this many seconds resets its slot's delay to the first one."""
CANNOT_START = (1, 2)
"""``serve``'s startup failures: a worker ending with one of them before it served could not start."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PASSED_ON = (signal.SIGHUP, signal.SIGUSR1)
"""Signals forwarded to every worker as they are."""

_STARTED = re.compile(rb"Chat server started on port \d+\n")
_KEPT_OUTPUT = 4096
"""Bytes of a worker's stdout kept while looking for its startup line."""
_PR_SET_PDEATHSIG = 1
_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

Listeners = tuple[list[socket.socket], list[socket.socket], bool]
"""What ``daemon.serve`` listens on: plaintext sockets, TLS sockets, whether systemd passed them."""


def supervise(config: Config, log_handler: logging.Handler) -> int:
    """Run ``config.workers`` workers until stopped; the return value is the exit status."""
    try:
        if config.tls_cert is not None:
            tls_context(config)  # a bad certificate: one message and status 2, before binding
        sockets = _Sockets.open(config)
    except StartupError as error:
        log_handler.flush()
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.status
    notifier = systemd.Notifier.from_environ()
    watchdog = systemd.watchdog_interval()
    for variable in _SYSTEMD_VARIABLES:  # only the parent speaks to systemd
        os.environ.pop(variable, None)
    supervisor = _Supervisor(config, log_handler, sockets, notifier, watchdog)
    try:
        return supervisor.run()
    finally:
        supervisor.close()


# -- the listening sockets ------------------------------------------------------------


@dataclasses.dataclass
class _Sockets:
    """The parent's sockets: reservations each worker listens beside, or systemd's, which they share."""

    plain: list[socket.socket]
    secure: list[socket.socket]
    shared: bool  # systemd's sockets: every worker accepts on these very ones

    @classmethod
    def open(cls, config: Config) -> _Sockets:
        plain, secure, from_systemd = _open_listeners(config)
        if from_systemd:
            return cls(plain, secure, shared=True)
        reserved: list[socket.socket] = []
        try:
            plain_reserved = [_reserve(listener, reserved) for listener in plain]
            secure_reserved = [_reserve(listener, reserved) for listener in secure]
        except BaseException:
            _close_all(plain + secure + reserved)
            raise
        return cls(plain_reserved, secure_reserved, shared=False)

    @property
    def port(self) -> int:
        return int((self.plain or self.secure)[0].getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        return int(self.secure[0].getsockname()[1]) if self.secure else None

    def for_a_worker(self, config: Config) -> Listeners:
        """``serve``'s ``open_listeners`` in a worker: its own listener beside each reservation."""
        if self.shared:
            return list(self.plain), list(self.secure), True
        made: list[socket.socket] = []
        try:
            plain = [_listen_beside(reservation, made) for reservation in self.plain]
            secure = [_listen_beside(reservation, made) for reservation in self.secure]
        except BaseException:
            _close_all(made)
            raise
        self.close()  # the worker's copies: the parent keeps the port
        return plain, secure, False

    def close(self) -> None:
        _close_all(self.plain + self.secure)


def _reserve(listener: socket.socket, reserved: list[socket.socket]) -> socket.socket:
    """Close ``listener`` and bind, without listening, a ``SO_REUSEPORT`` socket to its address."""
    family, address = listener.family, listener.getsockname()
    v6only = family == socket.AF_INET6 and listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    listener.close()
    try:
        sock = _reuseport_socket(family, bool(v6only))
    except OSError as error:  # a kernel older than 3.9
        raise StartupError(f"--workers needs SO_REUSEPORT: {error.strerror or error}", 1) from None
    reserved.append(sock)
    try:
        sock.bind(address)
    except OSError as error:  # taken in the instant between the two
        raise StartupError(f"cannot keep port {address[1]}: {error.strerror or error}", 1) from None
    return sock


def _listen_beside(reservation: socket.socket, made: list[socket.socket]) -> socket.socket:
    """A worker's listener on the reservation's address, in the kernel's ``SO_REUSEPORT`` group."""
    family, address = reservation.family, reservation.getsockname()
    v6only = family == socket.AF_INET6 and reservation.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    try:
        sock = _reuseport_socket(family, bool(v6only))
        made.append(sock)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as error:
        raise StartupError(f"cannot listen on port {address[1]}: {error.strerror or error}", 1) from None
    return sock


def _reuseport_socket(family: int, v6only: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    except BaseException:
        sock.close()
        raise
    return sock


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# -- the workers ---------------------------------------------------------------------------


def _no_jitter() -> float:
    """The engine's ``Backoff`` without its jitter: the full step, so the log says the delay exactly."""
    return 1.0


@dataclasses.dataclass
class WorkerSlot:
    """One slot, 1 to N, and the process in it (if any)."""

    index: int
    pid: int | None = None
    stdout: int | None = None  # the read end of the pipe its stdout goes to
    output: bytes = b""  # what it printed, until its startup line
    serving: bool = False
    started_at: float = 0.0
    restart_at: float | None = None
    hup_missed: bool = False  # a SIGHUP came while it was starting
    backoff: Backoff = dataclasses.field(
        default_factory=lambda: Backoff(FIRST_RESTART_DELAY, MAX_RESTART_DELAY, random=_no_jitter)
    )

    def __str__(self) -> str:
        return f"worker {self.index} (pid {self.pid})"

    def restart_delay(self, lived: float) -> float:
        """Seconds to wait before the next worker, after one that lived ``lived`` seconds."""
        if lived >= STABLE_AFTER:
            self.backoff.reset()
        return self.backoff.next_delay()


class WorkerSlotFormatter(LineFormatter):
    """The daemon's line format, each line prefixed with ``[worker K]``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self._prefix = f"[worker {index}] "

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(self._prefix + line for line in super().format(record).split("\n"))


def _ended_how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _Supervisor:
    """The parent's loop: a selector over the workers' stdout pipes and a signal wakeup socket."""

    def __init__(
        self,
        config: Config,
        log_handler: logging.Handler,
        sockets: _Sockets,
        notifier: systemd.Notifier,
        watchdog: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._log_handler = log_handler
        self._sockets = sockets
        self._notifier = notifier
        self._watchdog = watchdog
        self._clock = clock
        self._pid = os.getpid()
        self._workers = [WorkerSlot(index) for index in range(1, config.workers + 1)]
        self._selector = selectors.DefaultSelector()
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        self._signals: list[int] = []
        self._stopping = False
        self._status = 0
        self._announced = False
        self._last_status_line = ""
        self._next_ping: float | None = None

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        self._route_signals()
        log.info("Starting %d workers", len(self._workers))
        for worker in self._workers:
            self._start(worker)
        if self._watchdog is not None:
            self._next_ping = self._clock()
        while not (self._stopping and not self._live()):
            self._turn()
        log.info("Server stopped")
        self._log_handler.flush()
        return self._status

    def _turn(self) -> None:
        for key, _ in self._selector.select(self._timeout()):
            key.data(key.fd)
        self._handle_signals()
        self._reap()
        now = self._clock()
        for worker in self._workers:
            if worker.restart_at is not None and worker.restart_at <= now and not self._stopping:
                self._start(worker)
        if self._next_ping is not None and self._next_ping <= now:
            self._notifier.notify("WATCHDOG=1")
            assert self._watchdog is not None
            self._next_ping = now + self._watchdog
        self._tell_systemd()
        self._log_handler.flush()

    def _timeout(self) -> float | None:
        due = [w.restart_at for w in self._workers if w.restart_at is not None and not self._stopping]
        if self._next_ping is not None:
            due.append(self._next_ping)
        return max(0.0, min(due) - self._clock()) if due else None

    def _live(self) -> list[WorkerSlot]:
        return [worker for worker in self._workers if worker.pid is not None]

    # -- signals -------------------------------------------------------------------------------

    def _route_signals(self) -> None:
        self._wakeup_write.setblocking(False)
        self._wakeup_read.setblocking(False)
        self._selector.register(self._wakeup_read, selectors.EVENT_READ, self._drain_wakeup)
        signal.set_wakeup_fd(self._wakeup_write.fileno(), warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, *PASSED_ON, signal.SIGCHLD):
            signal.signal(signum, self._signalled)

    def _signalled(self, signum: int, frame: object) -> None:
        self._signals.append(signum)  # the wakeup byte ends the select; the turn does the work

    def _drain_wakeup(self, fd: int) -> None:
        try:
            while self._wakeup_read.recv(4096):
                pass
        except OSError:
            pass

    def _handle_signals(self) -> None:
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum in STOP_SIGNALS:
                self._stop(signum)
            elif signum in PASSED_ON:
                for worker in self._live():
                    if signum == signal.SIGHUP and not worker.serving:
                        worker.hup_missed = True
                    self._send(worker, signum)

    def _stop(self, signum: int) -> None:
        """Begin the shutdown (or hurry it): the signal to every worker, no more restarts."""
        if not self._stopping:
            self._stopping = True
            log.info("Shutting down: stopping %d workers", len(self._live()))
            self._notifier.notify("STOPPING=1", "STATUS=Shutting down")
            for worker in self._workers:
                worker.restart_at = None
        else:
            log.info("Passing the signal on again: the workers stop waiting for slow clients")
        for worker in self._live():
            self._send(worker, signum)

    @staticmethod
    def _send(worker: WorkerSlot, signum: int) -> None:
        assert worker.pid is not None
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass  # it is a zombie already: the next reap reports it

    # -- starting and ending -----------------------------------------------------------------------

    def _start(self, worker: WorkerSlot) -> None:
        worker.restart_at = None
        _flush_stdio()  # or the child would write the parent's buffered text again
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except OSError as error:
            os.close(read_end)
            os.close(write_end)
            delay = self._schedule_restart(worker, lived=0.0)
            log.error("cannot start worker %d: %s; trying again in %g s", worker.index, error, delay)
            return
        if pid == 0:
            os.close(read_end)
            self._be_worker(worker, write_end)
        os.close(write_end)
        with contextlib.suppress(OSError):  # the child does it too: whichever runs first
            os.setpgid(pid, pid)
        os.set_blocking(read_end, False)
        worker.pid, worker.stdout, worker.output = pid, read_end, b""
        worker.serving = worker.hup_missed = False
        worker.started_at = self._clock()
        self._selector.register(read_end, selectors.EVENT_READ, lambda fd: self._read_stdout(worker))
        log.info("%s started", worker)

    def _read_stdout(self, worker: WorkerSlot) -> None:
        """A worker's stdout: its startup line says it serves; the end means it is ending."""
        assert worker.stdout is not None
        try:
            data = os.read(worker.stdout, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_stdout(worker)
            return
        if worker.serving:
            return
        worker.output = (worker.output + data)[-_KEPT_OUTPUT:]
        if _STARTED.search(worker.output):
            worker.serving = True
            worker.output = b""
            log.info("%s serving", worker)
            if worker.hup_missed:
                self._send(worker, signal.SIGHUP)
            self._announce()

    def _close_stdout(self, worker: WorkerSlot) -> None:
        if worker.stdout is not None:
            self._selector.unregister(worker.stdout)
            os.close(worker.stdout)
            worker.stdout = None

    def _reap(self) -> None:
        for worker in self._live():
            assert worker.pid is not None
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid:
                self._ended(worker, os.waitstatus_to_exitcode(status))

    def _ended(self, worker: WorkerSlot, code: int) -> None:
        if worker.stdout is not None:  # a startup line it printed just before it ended counts
            self._read_stdout(worker)
            self._close_stdout(worker)
        name, served = str(worker), worker.serving
        worker.pid, worker.serving = None, False  # reaped: its pid may belong to another process now
        lived = self._clock() - worker.started_at
        how = _ended_how(code)
        if self._stopping:
            if code == 0 or -code in STOP_SIGNALS:
                log.info("%s stopped", name)
            else:
                log.warning("%s ended during the shutdown (%s)", name, how)
                self._status = self._status or 1
        elif not served and code in CANNOT_START:
            log.error("%s could not start (%s): stopping the other workers", name, how)
            self._status = code
            self._stop(signal.SIGTERM)
        else:
            delay = self._schedule_restart(worker, lived)
            log.warning("%s ended (%s) after %.1f s: restarting it in %g s", name, how, lived, delay)

    def _schedule_restart(self, worker: WorkerSlot, lived: float) -> float:
        """Start the slot's worker again after the backoff; the delay chosen."""
        delay = worker.restart_delay(lived)
        worker.restart_at = self._clock() + delay
        return delay

    # -- telling the world -----------------------------------------------------------------------

    def _announce(self) -> None:
        """Once every worker serves, for the first time: the startup lines and READY=1."""
        if self._announced or self._stopping or not all(w.serving for w in self._workers):
            return
        self._announced = True
        print(f"Chat server started on port {self._sockets.port}", flush=True)
        if self._sockets.tls_port is not None:
            print(f"TLS on port {self._sockets.tls_port}", flush=True)
        print("Waiting for connections... (Press Ctrl+C to stop)", flush=True)
        self._last_status_line = self._status_line()
        self._notifier.notify("READY=1", self._last_status_line)

    def _status_line(self) -> str:
        serving = sum(worker.serving for worker in self._workers)
        return f"STATUS=workers: {serving} of {len(self._workers)} serving"

    def _tell_systemd(self) -> None:
        """systemd's status line, when the count of serving workers changed (before the shutdown)."""
        if not self._announced or self._stopping:
            return
        line = self._status_line()
        if line != self._last_status_line:
            self._last_status_line = line
            self._notifier.notify(line)

    # -- the worker's side of the fork ---------------------------------------------------------------

    def _be_worker(self, worker: WorkerSlot, stdout: int) -> NoReturn:
        """In the child: shed the parent's state, then run ``serve``; never returns."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (*STOP_SIGNALS, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            for signum in (*PASSED_ON, signal.SIGTTOU):  # SIGTTOU: a background group may write to a tty
                signal.signal(signum, signal.SIG_IGN)
            with contextlib.suppress(OSError):  # the parent may have done it already
                os.setpgid(0, 0)
            _end_with_parent(self._pid)
            self._shed_parent_state()
            os.dup2(stdout, 1)
            os.close(stdout)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            self._log_handler.setFormatter(WorkerSlotFormatter(worker.index))
            status = serve(self._config, self._log_handler, self._sockets.for_a_worker)
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            _flush_stdio()
            os._exit(status)

    def _shed_parent_state(self) -> None:
        for other in self._workers:
            if other.stdout is not None:
                os.close(other.stdout)
                other.stdout = None
        self._selector.close()
        self._wakeup_read.close()
        self._wakeup_write.close()
        self._notifier.close()

    def close(self) -> None:
        """The parent's own resources, after the last worker has ended."""
        signal.set_wakeup_fd(-1)
        for worker in self._workers:
            self._close_stdout(worker)
        self._selector.close()
        self._wakeup_read.close()
        self._wakeup_write.close()
        self._sockets.close()
        self._notifier.close()


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a stream gone (a closed pipe): nothing to keep
            stream.flush()


def _end_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the parent dies, so a worker never outlives it by more than its shutdown."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except Exception:  # no ctypes, no prctl: the worker outlives a parent killed with SIGKILL
        return
    if os.getppid() != parent:  # it died before we asked
        raise SystemExit(0)
