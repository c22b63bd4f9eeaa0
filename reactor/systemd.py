"""systemd's side of the daemon, with the standard library alone: readiness and socket activation.

Theory of operation
-------------------
systemd speaks to a service through its environment and through file
descriptors; there is no library to link, and this module is the few lines
of the protocol the daemon needs (sd_notify(3), sd_listen_fds(3)).

*Notification.*  ``NOTIFY_SOCKET`` names an ``AF_UNIX`` datagram socket:
a file system path, or ``@name`` for a name in Linux's abstract namespace
(the ``@`` stands for a leading NUL byte).  A message is one datagram of
newline-separated ``NAME=value`` assignments.  The daemon sends
``READY=1`` once it listens (systemd then starts the units ordered after
it), ``STATUS=...`` for ``systemctl status`` to show, ``STOPPING=1`` when a
shutdown begins, and ``WATCHDOG=1`` pings while ``WATCHDOG_USEC`` is set.
Without ``NOTIFY_SOCKET`` (not under systemd, or not ``Type=notify``) a
``Notifier`` sends nothing, so the daemon calls it unconditionally.  A
message that cannot be sent is dropped with one warning: systemd's
bookkeeping never stops the chat.

*The watchdog.*  With ``WatchdogSec=`` systemd sets ``WATCHDOG_USEC`` and
kills (and, with ``Restart=``, restarts) a service that does not ping
within that many microseconds.  The daemon pings at half the interval from
a timer inside the event loop, so a loop that hangs stops the pings.
``WATCHDOG_PID``, when set, must be this process's id.

*Socket activation.*  systemd can open the listening sockets itself (a
``.socket`` unit) and pass them on: ``LISTEN_PID`` is the id of the
process they are meant for, ``LISTEN_FDS`` their number, and they are file
descriptors 3, 4, ...; ``LISTEN_FDNAMES`` optionally names them,
colon-separated.  So the port can be privileged without the server ever
holding a privilege, and connections that arrive while the service
restarts wait in the socket's queue instead of being refused.  Variables
meant for another process (``LISTEN_PID`` differs) are ignored, as
sd_listen_fds does.  Every passed descriptor must be a listening TCP socket
(``Accept=no``); anything else stops the daemon with one line.  The
variables are removed from the environment once read, whoever they were
for, so a child process could not take the sockets for its own.

Imports: the standard library only.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("chat")

LISTEN_FDS_START = 3
"""The first descriptor systemd passes (SD_LISTEN_FDS_START)."""

_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_STREAM_FAMILIES = {socket.AF_INET, socket.AF_INET6}


class ActivationError(Exception):
    """The sockets systemd passed cannot be served; the message is the one line to print."""


def listen_fds(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> list[tuple[socket.socket, str]]:
    """The listening sockets systemd passed to this process, with their names; ``[]`` if none.

    ``environ`` defaults to ``os.environ`` and ``pid`` to ``os.getpid()``.
    A socket without a name in ``LISTEN_FDNAMES`` is named after its
    descriptor (``fd3``).
    """
    env = os.environ if environ is None else environ
    target = env.get("LISTEN_PID", "").strip()
    count_text = env.get("LISTEN_FDS", "").strip()
    names_text = env.get("LISTEN_FDNAMES", "")
    for name in _ACTIVATION_VARIABLES:
        env.pop(name, None)
    if not target or target != str(os.getpid() if pid is None else pid):
        return []  # none, or meant for another process (say, our parent)
    if not count_text.isascii() or not count_text.isdigit():
        raise ActivationError(f"LISTEN_FDS must be a number of sockets, got {count_text!r}")
    count = int(count_text)
    names = names_text.split(":") if names_text else []
    passed = []
    try:
        for index in range(count):
            fd = LISTEN_FDS_START + index
            name = names[index] if index < len(names) and names[index] else f"fd{fd}"
            passed.append((_listening_socket(fd, name), name))
    except ActivationError:
        for sock, _ in passed:
            sock.close()
        raise
    return passed


def _listening_socket(fd: int, name: str) -> socket.socket:
    """Adopt descriptor ``fd``, checking that it is a listening TCP socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise ActivationError(
            f"LISTEN_FDS: descriptor {fd} ({name}) is not a socket: {error.strerror or error}"
        ) from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.family not in _STREAM_FAMILIES or sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()  # not ours to close
        raise ActivationError(
            f"LISTEN_FDS: descriptor {fd} ({name}) is not a listening TCP socket "
            "(the .socket unit needs ListenStream= with an address or a port, and Accept=no)"
        )
    sock.set_inheritable(False)
    return sock


def watchdog_interval(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``); ``None`` when there is no watchdog."""
    env = os.environ if environ is None else environ
    text = env.get("WATCHDOG_USEC", "").strip()
    if not text.isascii() or not text.isdigit() or int(text) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(text) / 2_000_000


class Notifier:
    """Sends state changes to systemd's notification socket, or nothing when there is none."""

    def __init__(self, address: str | None) -> None:
        self._sock: socket.socket | None = None
        self._target: str = ""
        self._warned = False
        if not address:
            return
        if address[0] not in "/@" or not hasattr(socket, "AF_UNIX"):
            log.warning("NOTIFY_SOCKET=%r is not a socket this server can use: not notifying systemd",
                        address)
            return
        self._target = "\0" + address[1:] if address[0] == "@" else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # a full queue drops a message; it never stalls the loop
        self._sock.set_inheritable(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``NAME=value`` assignments in one datagram; whether it was sent."""
        if self._sock is None:
            return False
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            self._sock.sendto(message, self._target)
        except OSError as error:
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot notify systemd at NOTIFY_SOCKET: %s (further failures are not logged)",
                    error.strerror or errno.errorcode.get(error.errno or 0, error),
                )
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
